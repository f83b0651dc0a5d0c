"""``python -m training`` commands for images: the hallucination kind's data (issue 12).

Inputs are the hallucination kind's exports (README, "Hallucination labels"): JSONL rows that
name their images ``images/<sha256>.<ext>``, relative to the export directory given as
``--images`` (where the ``export/images`` zip was unpacked). Those paths are attacker input: one
that is absolute, climbs out with ``..``, is a symlink leading out of the directory, is missing
or does not decode is refused.

As in ``training.cli``, a training command publishes one run directory atomically and prints
``{"path": ..., "metrics": ...}`` on stdout. Bad input (a row that breaks the data contract, an
image refused as above, an input file that cannot be read, a run name already taken) ends the
command with its message on stderr and exit status 2, argparse's status for bad options. Every
such check runs before a model loads or anything is written, so a refused command leaves nothing
behind.

Commands: ``vision-dpo`` (DPO of a vision-language policy on ``vision_pairs``), ``vlm-reward``
(a Bradley–Terry head on a vision-language backbone), ``fact-reward`` (Fact-RLHF: a text reward
model that reads the image's facts), ``vision-generate`` (K answers per image prompt).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.artifacts import RunDir, publish_run
from training.cli import (
    _add_run_arguments,
    _emit,
    _write_jsonl,
    add_config_arguments,
    add_generator_arguments,
    config_from_args,
    generator_kwargs,
)
from training.data import ROLES, RowError, read_jsonl, split_by_prompt
from training.dpo import DPOConfig
from training.generation import GenerationConfig, GenerationError
from training.reward import RewardConfig
from training.vision_dpo import _export_loader, vision_dataset, vision_rows
from training.vlm_reward import VLMRewardConfig

if TYPE_CHECKING:
    from training.vision_generation import VisionPrompt

__all__ = ["add_vision_commands"]


@contextmanager
def _refusing(args: argparse.Namespace) -> Iterator[None]:
    """Bad input raised in the block ends the command: message on stderr, exit status 2.

    Wrap only checks that run before anything is written: a refusal must leave nothing behind.
    ``RowError`` is a ``ValueError``; a missing or unreadable file is an ``OSError``.
    """
    try:
        yield
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"python -m training {args.command}: error: {exc}\n")
        raise SystemExit(2) from exc


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


def _check_new_run(args: argparse.Namespace) -> None:
    # publish_run refuses too, but only once the images are checked and the model is loaded.
    if (args.root / args.name).exists():
        raise FileExistsError(f"run {args.root / args.name} already exists; runs are immutable")


def _publish(
    args: argparse.Namespace, kind: str, config: dict[str, Any]
) -> AbstractContextManager[RunDir]:
    """``publish_run`` for the run the options name (``--root``, ``--name``, ...)."""
    return publish_run(
        args.root,
        args.name,
        kind=kind,
        config=config,
        data_cursor=args.data_cursor,
        parent=args.parent,
    )


def _export_dir(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"--images {path} is not a directory")
    return path


def _pairs_with_images(path: Path, images: Path) -> list[dict[str, Any]]:
    """``vision_pairs`` rows of ``path`` checked (``vision_rows``), every image opened inside ``images``.

    Ties are dropped, as the trainers drop them. Errors name the file, row and field.
    """
    try:
        rows = vision_rows(_rows(path))
        # Every image opened (verified, not decoded) now: the trainers decode lazily, mid-run,
        # where a bad one would cost the work done so far. train_vision_dpo checks them again.
        vision_dataset(rows, images)
    except RowError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return rows


def _held_out(
    args: argparse.Namespace, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): ``--eval``'s rows, else ``--eval-fraction`` of ``rows`` split by image.

    Every pair of one image lands on one side, so the held-out accuracy is measured on images
    the model never saw (``training.fact_reward`` splits the same way).
    """
    if args.eval is not None:
        return rows, _pairs_with_images(args.eval, args.images)
    keyed = [{"prompt": row["images"][0], "row": row} for row in rows]
    train, held = split_by_prompt(keyed, eval_fraction=args.eval_fraction, seed=args.split_seed)
    return [item["row"] for item in train], [item["row"] for item in held]


def cmd_vision_dpo(args: argparse.Namespace) -> None:
    from training.vision_dpo import train_vision_dpo

    with _refusing(args):
        config = config_from_args(args, DPOConfig)
        _check_new_run(args)
        images = _export_dir(args.images)
        train = _pairs_with_images(args.train, images)
        if not train:
            raise ValueError(f"{args.train}: no untied vision preference pairs to train on")
        held = _pairs_with_images(args.eval, images) if args.eval is not None else None
    result = train_vision_dpo(
        train,
        config,
        images=images,
        policy_ref=args.policy,
        reference_ref=args.reference or args.policy,
        root=args.root,
        name=args.name,
        eval_rows=held,
        data_cursor=args.data_cursor,
        parent=args.parent,
    )
    _emit({"path": str(result.path), "metrics": result.metrics})


def cmd_vlm_reward(args: argparse.Namespace) -> None:
    from PIL import Image

    from training.vlm_reward import train_vlm_reward

    with _refusing(args):
        config = config_from_args(args, VLMRewardConfig)
        _check_new_run(args)
        images = _export_dir(args.images)
        train, held = _held_out(args, _pairs_with_images(args.train, images))
        if not train:
            raise ValueError(f"{args.train}: no untied vision preference pairs left to train on")
        if any(len(row["images"]) != 1 for row in [*train, *held]):
            raise ValueError("the VLM reward model takes exactly one image per row")
    locate = _export_loader(images)

    def load_image(relative: str) -> Image.Image:
        return Image.open(locate(relative))

    run_config = {
        **dataclasses.asdict(config),
        "backbone": str(args.backbone),
        "eval_fraction": None if args.eval is not None else args.eval_fraction,
        "split_seed": args.split_seed,
    }
    with _publish(args, "reward-vlm", run_config) as run:
        metrics = train_vlm_reward(
            train,
            config,
            backbone=args.backbone,
            load_image=load_image,
            output_dir=run.path,
            eval_rows=held or None,
        )
        metrics["n_eval"] = len(held)
        run.metrics = metrics
    _emit({"path": str(args.root / args.name), "metrics": metrics})


def cmd_fact_reward(args: argparse.Namespace) -> None:
    from training.fact_reward import fact_pairs, train_fact_reward

    with _refusing(args):
        config = config_from_args(args, RewardConfig)
        _check_new_run(args)
        rows = _rows(args.train)
        held = _rows(args.eval) if args.eval is not None else None
        for path, checked in ((args.train, rows), (args.eval, held)):
            try:
                fact_pairs(checked or [])
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
        # The exports carry no facts: they come from the project's import lines, joined by the
        # trainer. Training "with facts" on rows that hold none would be the blind model.
        if args.facts and not any(row.get("context") for row in rows):
            raise ValueError(
                f"{args.train}: no row has a 'context' (captions, reference, choices, answer); "
                "add each image's facts from its import line, or pass --no-facts"
            )
    split = {"eval_rows": held, "eval_fraction": args.eval_fraction, "split_seed": args.split_seed}
    run_config = {
        **dataclasses.asdict(config),
        "with_facts": args.facts,
        "eval_fraction": None if held is not None else args.eval_fraction,
        "split_seed": args.split_seed,
    }
    with _publish(args, "reward-fact", run_config) as run:
        result = train_fact_reward(
            rows, config, with_facts=args.facts, output_dir=run.path, **split
        )
        metrics = dict(result.metrics)
        if args.blind_baseline and args.facts:
            # The same pairs and split without the facts: what the facts must beat (LLaVA-RLHF).
            blind = train_fact_reward(rows, config, with_facts=False, **split)
            metrics["without_facts"] = {
                "accuracy": blind.accuracy,
                "eval": blind.metrics.get("eval"),
            }
        run.metrics = metrics
    _emit({"path": str(args.root / args.name), "metrics": metrics})


def _row_images(row: Mapping[str, Any], index: int) -> list[str]:
    """A row's image paths: ``images`` (``vision_pairs``) or one ``image`` (the other exports)."""
    value = row.get("images", [row["image"]] if "image" in row else None)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RowError(index, "images", "expected a non-empty list of image paths, or an 'image'")
    return value


def _row_messages(row: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if (
        not isinstance(prompt, list)
        or not prompt
        or not all(
            isinstance(m, dict) and m.get("role") in ROLES and "content" in m for m in prompt
        )
    ):
        raise RowError(index, "prompt", "expected a string or a non-empty list of messages")
    return prompt


def _vision_prompts(path: Path, images: Path) -> tuple[list[dict[str, Any]], list[VisionPrompt]]:
    """The rows of ``path`` and one ``VisionPrompt`` each, its images decoded from ``images``."""
    from training.vision_generation import VisionPrompt, vision_messages

    rows = _rows(path)
    try:
        paths = [_row_images(row, index) for index, row in enumerate(rows, start=1)]
        messages = [_row_messages(row, index) for index, row in enumerate(rows, start=1)]
        opened = vision_dataset([{"images": p} for p in paths], images)
        prompts = []
        for index, (conversation, row) in enumerate(zip(messages, opened, strict=True), start=1):
            prompt = VisionPrompt(conversation, row["images"])
            try:
                vision_messages(prompt)
            except GenerationError as exc:
                raise RowError(index, "prompt", str(exc)) from exc
            prompts.append(prompt)
    except RowError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return rows, prompts


def cmd_vision_generate(args: argparse.Namespace) -> None:
    from training.vision_generation import make_vision_generator

    with _refusing(args):
        config = config_from_args(args, GenerationConfig)
        rows, prompts = _vision_prompts(args.prompts, _export_dir(args.images))
        kwargs = generator_kwargs(args)
    generator = make_vision_generator(args.backend, args.model, **kwargs)
    completions = generator.generate(prompts, config)
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


def _add_vision_input(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--train", type=Path, required=True, help=f"JSONL {what}")
    group.add_argument(
        "--images",
        type=Path,
        required=True,
        help="export directory that holds images/<sha256>.<ext> (the unpacked export/images zip); "
        "row image paths must stay inside it",
    )
    group.add_argument("--eval", type=Path, help="held-out JSONL rows for metrics")


def _add_split(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("held-out split (without --eval)")
    group.add_argument(
        "--eval-fraction",
        type=float,
        default=0.25,
        help="share of images held out for accuracy; 0 holds none out (default: %(default)s)",
    )
    group.add_argument(
        "--split-seed", type=int, default=0, help="seed of the split (default: %(default)s)"
    )


def add_vision_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``vision-dpo``, ``vlm-reward``, ``fact-reward`` and ``vision-generate``."""
    dpo = commands.add_parser(
        "vision-dpo",
        help="DPO/IPO of a vision-language policy on vision_pairs rows, fixed --reference",
    )
    _add_vision_input(dpo, "vision_pairs export rows")
    models = dpo.add_argument_group("models")
    models.add_argument(
        "--policy", required=True, help="vision-language model to start from (π_{r-1})"
    )
    models.add_argument(
        "--reference",
        help="fixed reference model (π_0); defaults to --policy (round 1)",
    )
    _add_run_arguments(dpo)
    add_config_arguments(dpo, DPOConfig)
    dpo.set_defaults(func=cmd_vision_dpo)

    vlm = commands.add_parser(
        "vlm-reward",
        help="Bradley-Terry reward head on a vision-language model, on vision_pairs rows",
    )
    _add_vision_input(vlm, "vision_pairs export rows (one image each)")
    _add_split(vlm)
    vlm.add_argument(
        "--backbone", required=True, help="vision-language model (AutoModelForImageTextToText)"
    )
    _add_run_arguments(vlm)
    add_config_arguments(vlm, VLMRewardConfig)
    vlm.set_defaults(func=cmd_vlm_reward)

    fact = commands.add_parser(
        "fact-reward",
        help="Fact-RLHF: a text reward model that reads each image's facts beside the question",
    )
    data = fact.add_argument_group("data")
    data.add_argument(
        "--train",
        type=Path,
        required=True,
        help="JSONL rows (vision_pairs, llava_rlhf or plain pairs) with a 'context': "
        "{captions, reference?, choices?, answer?}, as in the import lines",
    )
    data.add_argument("--eval", type=Path, help="held-out JSONL rows for accuracy")
    data.add_argument(
        "--facts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write each row's facts ahead of its question; --no-facts trains the blind model "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--blind-baseline",
        action="store_true",
        help="also train the same model without the facts (not kept) and report its held-out "
        "accuracy as metrics.without_facts",
    )
    _add_split(fact)
    _add_run_arguments(fact)
    add_config_arguments(fact, RewardConfig)
    fact.set_defaults(func=cmd_fact_reward)

    generate = commands.add_parser(
        "vision-generate", help="sample K answers per prompt about images"
    )
    generate.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help="JSONL rows with 'images' (or one 'image') and a 'prompt' (string or messages)",
    )
    generate.add_argument(
        "--images",
        type=Path,
        required=True,
        help="export directory the rows' image paths are relative to (they must stay inside it)",
    )
    generate.add_argument(
        "--out", type=Path, required=True, help="JSONL output: each row plus 'completions'"
    )
    add_generator_arguments(generate)
    generate.set_defaults(func=cmd_vision_generate)
