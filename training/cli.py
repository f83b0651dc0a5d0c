"""``python -m training <command>``: the trainer's entry points from a shell.

Inputs are JSONL files of export rows (DESIGN.md, "Export contract"); every
training command publishes one run directory (``--root``/``--name``, atomic,
with ``manifest.json``) and prints ``{"path": ..., "metrics": ...}`` as JSON
on stdout. Logs and warnings go to stderr, so stdout can be piped to ``jq``.

Options of each config come from its dataclass fields and their ``help``
metadata, so ``--help`` and the configs cannot drift apart.

Commands: ``reward`` (fit a reward ensemble), ``dpo`` and ``kto`` (train a
policy), ``rl`` (RLOO/GRPO against a reward ensemble), ``generate`` (K
candidates per prompt), ``score`` (ensemble rewards for candidates, or
held-out metrics for pairs), ``select`` (pairs to label next); for images
(``training.cli_vision``) ``vision-dpo``, ``vlm-reward``, ``fact-reward``, ``vision-generate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from training.data import parse_preference_rows, parse_unpaired_rows, read_jsonl
from training.generation import GenerationConfig
from training.policy import DPOConfig, KTOConfig, OnPolicyConfig
from training.selection import select_pairs

_CONFIG_DEST = "__config__"


def _scalar_type(hint: Any) -> tuple[Any, list[Any] | None]:
    """(argparse type, choices) for a field type: int/float/str/Literal, possibly ``| None``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            return _scalar_type(inner[0])
    if origin is Literal:
        choices = list(typing.get_args(hint))
        return type(choices[0]), choices
    if hint in (int, float, str):
        return hint, None
    raise TypeError(f"no command-line form for field type {hint!r}")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: Sequence[str] = ()
) -> None:
    """Add one ``--option`` per field of dataclass ``cls``, documented by the field's ``help`` metadata.

    Nested dataclass fields are skipped (add their class separately); the
    defaults shown are the dataclass defaults.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        f"{cls.__name__} options", (cls.__doc__ or "").strip().split("\n")[0]
    )
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name in skip or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        # argparse formats help with %: a literal one in the text ("~20% slower") must be doubled.
        help_text = f.metadata.get("help", "").replace("%", "%%") + " (default: %(default)s)"
        dest = f"{_CONFIG_DEST}{cls.__name__}.{f.name}"
        if hint is bool or hint == (bool | None):
            group.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue
        kind, choices = _scalar_type(hint)
        group.add_argument(
            flag,
            dest=dest,
            metavar=None if choices else f.name.upper(),
            type=kind,
            choices=choices,
            default=default,
            help=help_text,
        )


def config_from_args(args: argparse.Namespace, cls: type, **nested: Any) -> Any:
    """Build ``cls`` from the options ``add_config_arguments`` added; ``nested`` fills dataclass-typed fields."""
    values = {
        f.name: getattr(args, f"{_CONFIG_DEST}{cls.__name__}.{f.name}")
        for f in dataclasses.fields(cls)
        if hasattr(args, f"{_CONFIG_DEST}{cls.__name__}.{f.name}")
    }
    return cls(**values, **nested)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--root", type=Path, required=True, help="directory that holds published runs"
    )
    group.add_argument(
        "--name", required=True, help="name of the new run directory (must not exist)"
    )
    group.add_argument(
        "--data-cursor", help="export cursor of the data consumed, stored in the manifest"
    )
    group.add_argument("--parent", help="run this one continues from, stored in the manifest")


def _add_preference_input(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train", type=Path, required=True, help="JSONL export rows (pairs or rankings)"
    )
    group.add_argument("--eval", type=Path, help="held-out JSONL export rows for metrics")
    group.add_argument(
        "--ranking-pairs",
        choices=["all", "best_vs_worst"],
        default="all",
        help="how ranking rows become pairs (default: %(default)s)",
    )


def _pairs(path: Path | None, ranking_pairs: str) -> Any:
    if path is None:
        return None
    return parse_preference_rows(read_jsonl(path), ranking_pairs=ranking_pairs)  # type: ignore[arg-type]


def _emit(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    # Replace in one step so a reader never sees half a file.
    os.replace(temp, path)


def _prompt_rows(path: Path) -> list[dict[str, Any]]:
    """Rows with a conversational ``prompt`` (a plain string becomes one user message)."""
    rows = []
    for index, row in enumerate(read_jsonl(path), start=1):
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not prompt:
            raise SystemExit(f"{path}: row {index} needs a 'prompt' (string or list of messages)")
        rows.append({**row, "prompt": prompt})
    return rows


def cmd_reward(args: argparse.Namespace) -> None:
    from training.reward import EnsembleConfig, RewardConfig, train_reward_ensemble

    config = config_from_args(args, EnsembleConfig, reward=config_from_args(args, RewardConfig))
    result = train_reward_ensemble(
        _pairs(args.train, args.ranking_pairs),
        config,
        root=args.root,
        name=args.name,
        eval_pairs=_pairs(args.eval, args.ranking_pairs),
        data_cursor=args.data_cursor,
        parent=args.parent,
    )
    _emit({"path": str(result.path), "metrics": result.metrics})


def cmd_dpo(args: argparse.Namespace) -> None:
    from training.policy import train_dpo

    result = train_dpo(
        _pairs(args.train, args.ranking_pairs),
        config_from_args(args, DPOConfig),
        policy_ref=args.policy,
        reference_ref=args.reference or args.policy,
        root=args.root,
        name=args.name,
        eval_pairs=_pairs(args.eval, args.ranking_pairs),
        data_cursor=args.data_cursor,
        parent=args.parent,
    )
    _emit({"path": str(result.path), "metrics": result.metrics})


def cmd_kto(args: argparse.Namespace) -> None:
    from training.policy import train_kto

    result = train_kto(
        parse_unpaired_rows(read_jsonl(args.train)),
        config_from_args(args, KTOConfig),
        policy_ref=args.policy,
        reference_ref=args.reference or args.policy,
        root=args.root,
        name=args.name,
        data_cursor=args.data_cursor,
        parent=args.parent,
    )
    _emit({"path": str(result.path), "metrics": result.metrics})


def cmd_rl(args: argparse.Namespace) -> None:
    from training.policy import train_on_policy
    from training.reward import RewardEnsemble

    result = train_on_policy(
        [row["prompt"] for row in _prompt_rows(args.prompts)],
        config_from_args(args, OnPolicyConfig),
        policy_ref=args.policy,
        reward=RewardEnsemble.load(args.ensemble),
        algorithm=args.algorithm,
        aggregation=args.aggregation,
        root=args.root,
        name=args.name,
        data_cursor=args.data_cursor,
        parent=args.parent,
    )
    _emit({"path": str(result.path), "metrics": result.metrics})


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--model`` and the backends' options, plus ``GenerationConfig``'s."""
    parser.add_argument(
        "--backend",
        choices=["transformers", "vllm", "openai"],
        default="transformers",
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--model", required=True, help="model directory, or the served model name for openai"
    )
    parser.add_argument("--device", default="auto", help="transformers backend: auto, cpu or cuda")
    parser.add_argument(
        "--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="openai backend: environment variable holding the API key",
    )
    add_config_arguments(parser, GenerationConfig)


def generator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``make_generator`` (or ``make_vision_generator``) for ``--backend``."""
    if args.backend == "openai":
        if not args.base_url:
            raise SystemExit("--backend openai needs --base-url")
        return {
            "base_url": args.base_url,
            "api_key": os.environ.get(args.api_key_env) if args.api_key_env else None,
        }
    if args.backend == "transformers":
        return {"device": args.device}
    return {}


def cmd_generate(args: argparse.Namespace) -> None:
    from training.generation import make_generator

    config = config_from_args(args, GenerationConfig)
    rows = _prompt_rows(args.prompts)
    generator = make_generator(args.backend, args.model, **generator_kwargs(args))
    completions = generator.generate([row["prompt"] for row in rows], config)
    _write_jsonl(
        args.out,
        [{**row, "completions": texts} for row, texts in zip(rows, completions, strict=True)],
    )
    _emit(
        {
            "path": str(args.out),
            "metrics": {"prompts": len(rows), "completions": sum(map(len, completions))},
        }
    )


def cmd_score(args: argparse.Namespace) -> None:
    from training.reward import RewardEnsemble, evaluate_pairs

    ensemble = RewardEnsemble.load(args.ensemble)
    if args.pairs is not None:
        pairs = parse_preference_rows(read_jsonl(args.pairs), ranking_pairs=args.ranking_pairs)
        _emit({"path": str(args.ensemble), "metrics": evaluate_pairs(ensemble, pairs)})
        return
    if args.candidates is None or args.out is None:
        raise SystemExit("give --pairs, or --candidates with --out")
    rows = _prompt_rows(args.candidates)
    flat_prompts = [row["prompt"] for row in rows for _ in row["completions"]]
    flat_texts = [text for row in rows for text in row["completions"]]
    members = ensemble.score(flat_prompts, flat_texts).members
    scored, offset = [], 0
    for row in rows:
        k = len(row["completions"])
        # One [members][k] block per row: what `select` reads back.
        scored.append({**row, "scores": members[:, offset : offset + k].round(6).tolist()})
        offset += k
    _write_jsonl(args.out, scored)
    _emit(
        {"path": str(args.out), "metrics": {"prompts": len(rows), "members": int(members.shape[0])}}
    )


@dataclasses.dataclass(frozen=True)
class _RowScores:
    members: Any


def cmd_select(args: argparse.Namespace) -> None:
    import numpy as np

    rows = _prompt_rows(args.candidates)
    if any("scores" not in row for row in rows):
        raise SystemExit(
            f"{args.candidates}: every row needs 'scores' (run `python -m training score` first)"
        )
    selected = select_pairs(
        [row["completions"] for row in rows],
        [_RowScores(np.asarray(row["scores"], dtype=np.float64)) for row in rows],
        strategy=args.strategy,
        budget=args.budget,
        seed=args.seed,
        per_prompt=args.per_prompt,
    )
    out = [
        {
            "prompt": rows[s.prompt_index]["prompt"],
            "first": rows[s.prompt_index]["completions"][s.first],
            "second": rows[s.prompt_index]["completions"][s.second],
            "prompt_index": s.prompt_index,
            "first_index": s.first,
            "second_index": s.second,
            "priority": s.priority,
        }
        for s in selected
    ]
    _write_jsonl(args.out, out)
    _emit({"path": str(args.out), "metrics": {"pairs": len(out), "strategy": args.strategy}})


def build_parser() -> argparse.ArgumentParser:
    from training.reward import EnsembleConfig, RewardConfig

    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reward = commands.add_parser(
        "reward", help="fit a Bradley-Terry reward ensemble on preference rows"
    )
    _add_preference_input(reward)
    _add_run_arguments(reward)
    add_config_arguments(reward, EnsembleConfig)
    add_config_arguments(reward, RewardConfig)
    reward.set_defaults(func=cmd_reward)

    dpo = commands.add_parser(
        "dpo", help="iterative DPO/IPO: warm start from --policy, fixed --reference"
    )
    _add_preference_input(dpo)
    for sub, kind in (
        (dpo, "DPO"),
        (commands.add_parser("kto", help="KTO on desirable/undesirable rows"), "KTO"),
    ):
        models = sub.add_argument_group("models")
        models.add_argument(
            "--policy", required=True, help="model directory to start from (π_{r-1})"
        )
        models.add_argument(
            "--reference",
            help="fixed reference model directory (π_0); defaults to --policy (round 1)",
        )
        if kind == "KTO":
            sub.add_argument(
                "--train", type=Path, required=True, help="JSONL rows {prompt, completion, label}"
            )
        _add_run_arguments(sub)
        add_config_arguments(sub, DPOConfig if kind == "DPO" else KTOConfig)
        sub.set_defaults(func=cmd_dpo if kind == "DPO" else cmd_kto)

    rl = commands.add_parser("rl", help="RLOO or GRPO against a reward ensemble")
    rl.add_argument("--prompts", type=Path, required=True, help="JSONL rows with a 'prompt'")
    rl.add_argument(
        "--policy", required=True, help="model directory to start from (also the KL reference)"
    )
    rl.add_argument("--ensemble", type=Path, required=True, help="published reward ensemble run")
    rl.add_argument(
        "--algorithm",
        choices=["rloo", "grpo"],
        default="rloo",
        help="TRL trainer (default: %(default)s)",
    )
    rl.add_argument(
        "--aggregation",
        choices=["mean", "worst", "uncertainty_weighted"],
        default="mean",
        help="how member rewards combine: mean, worst (WCO) or mean - λ·std (UWO) (default: %(default)s)",
    )
    _add_run_arguments(rl)
    add_config_arguments(rl, OnPolicyConfig)
    rl.set_defaults(func=cmd_rl)

    generate = commands.add_parser("generate", help="sample K completions per prompt")
    generate.add_argument("--prompts", type=Path, required=True, help="JSONL rows with a 'prompt'")
    generate.add_argument(
        "--out", type=Path, required=True, help="JSONL output: each row plus 'completions'"
    )
    add_generator_arguments(generate)
    generate.set_defaults(func=cmd_generate)

    score = commands.add_parser(
        "score", help="ensemble rewards for candidates, or held-out metrics for pairs"
    )
    score.add_argument("--ensemble", type=Path, required=True, help="published reward ensemble run")
    score.add_argument(
        "--candidates", type=Path, help="JSONL from `generate` (rows with 'completions')"
    )
    score.add_argument("--out", type=Path, help="JSONL output: each row plus 'scores' [members][k]")
    score.add_argument(
        "--pairs", type=Path, help="JSONL preference rows: print accuracy, margin, ECE instead"
    )
    score.add_argument(
        "--ranking-pairs",
        choices=["all", "best_vs_worst"],
        default="all",
        help="(default: %(default)s)",
    )
    score.set_defaults(func=cmd_score)

    select = commands.add_parser("select", help="choose candidate pairs to label next")
    select.add_argument(
        "--candidates", type=Path, required=True, help="JSONL from `score` (rows with 'scores')"
    )
    select.add_argument(
        "--out", type=Path, required=True, help="JSONL output: one selected pair per row"
    )
    select.add_argument(
        "--strategy",
        choices=["best_vs_worst", "disagreement", "random"],
        default="disagreement",
        help="best_vs_worst: ensemble-mean extremes (Online-RLHF); disagreement: members' preference "
        "probabilities disagree most (active learning); random: seeded baseline (default: %(default)s)",
    )
    select.add_argument("--budget", type=int, help="at most this many pairs (default: all)")
    select.add_argument(
        "--per-prompt", type=int, default=1, help="at most this many pairs per prompt (default: 1)"
    )
    select.add_argument(
        "--seed", type=int, default=0, help="seed of the random strategy (default: 0)"
    )
    select.set_defaults(func=cmd_select)

    from training.cli_vision import add_vision_commands

    add_vision_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0
