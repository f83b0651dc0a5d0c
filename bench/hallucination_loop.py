"""Proof that the multimodal loop reduces hallucination: rounds of vision DPO with an oracle annotator.

The world (bench/hallucination_world.py, on training.scenes): coloured shapes on a grid, drawn
locally, every fact known. π_0 is a tiny LLaVA-style model (training.vision.build_tiny_vlm,
48 px scenes in 16 px patches, pixels centred on the background) warm-started on answers that make
one false claim 40% of the time, beside the scenes' true captions, for 9,000 steps, its random
vision tower fixed (bench/hallucination_world.py says why: with less, π_0 ignored the image, and
DPO could only learn which claims are rarely false, not which are false in THIS image). Each
round r = 1..R:

1. π_{r-1} samples K answers per prompt on a fresh slice of training scenes
   (training.vision_generation).
2. The oracle (training.scenes.claims_of) labels every pair of distinct answers: fewer false
   claims wins, after a tie the more informative (more distinct true claims); ties are dropped.
3. The fact reward model (training.fact_reward, MiniLM) is fitted on the best-vs-worst pair of
   every prompt so far with the scenes' captions and, on the same pairs and split, without them:
   both held-out accuracies (a quarter of the images held out).
4. Vision DPO of π_r from π_{r-1} against the FIXED π_0 on this round's pairs
   (training.vision_dpo), the image encoder frozen. With ``--correction-share S`` the oracle also
   corrects a share S of the hallucinating samples (RLHF-V) and the round trains by dense DPO on
   the pairs and the corrections together (training.vision_dense_dpo), as the web loop does.
5. On held-out scenes: hallucination rate (answers with >= 1 false claim, also per category),
   informativeness (distinct true claims per answer), oracle win rate of π_r over π_0
   (sample i against sample i, ties half).

Run: ``python -m bench.hallucination_loop --json bench/out/hallucination_loop.json``;
``--smoke`` is one tiny round in seconds (it checks the bench runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.hallucination_world import (  # noqa: E402
    Images,
    Prompt,
    best_vs_worst,
    caption_examples,
    correction_rows,
    evaluate,
    labelled_pairs,
    make_prompts,
    sft_examples,
    vision_pair_row,
    warm_start,
    win_rate,
)


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    rounds: int = 3
    image_size: int = 48
    patch: int = 16
    sft_prompts: int = 3000
    sft_steps: int = 9000
    captions: bool = True
    false_rate: float = 0.4
    prompts_per_round: int = 128
    k: int = 4
    eval_prompts: int = 192
    eval_k: int = 2
    max_new_tokens: int = 48
    dpo_beta: float = 0.12
    dpo_lr: float = 5e-4
    dpo_epochs: float = 1.0
    reward_epochs: float = 2.0
    reward_max_steps: int = -1
    # Share of hallucinating samples the oracle also corrects (RLHF-V); > 0 trains each round by
    # dense DPO (training.vision_dense_dpo) on the pairs and the corrections together.
    correction_share: float = 0.0
    gamma: float = 3.0
    threads: int = 1


# Enough SFT steps that π_0 writes sentences of the grammar, so the oracle finds pairs and the
# reward and DPO steps run too.
SMOKE = Settings(
    rounds=1,
    sft_prompts=32,
    sft_steps=200,
    prompts_per_round=8,
    k=4,
    eval_prompts=6,
    max_new_tokens=40,
    dpo_epochs=1.0,
    reward_max_steps=1,
)

TARGETS = (
    ("hallucination rate of π_R <= 60% of π_0's", lambda f: f["halluc_ratio"] <= 0.6),
    ("informativeness of π_R >= 90% of π_0's", lambda f: f["info_ratio"] >= 0.9),
    ("win rate of π_R over π_0 >= 0.7", lambda f: f["win_rate"] >= 0.7),
    ("reward with facts more accurate than without", lambda f: f["reward_gap"] > 0),
)


def _generate(policy: Path, prompts: list[Prompt], images: Images, k: int, s: Settings, seed: int):
    from training.generation import GenerationConfig
    from training.vision_generation import VisionPrompt, VisionTransformersGenerator

    generator = VisionTransformersGenerator(policy, device="cpu")
    return generator.generate(
        [VisionPrompt(p.messages(), [images(p.image_path)]) for p in prompts],
        GenerationConfig(k=k, temperature=1.0, max_new_tokens=s.max_new_tokens, seed=seed),
    )


def _reward_accuracies(rows: list[dict[str, Any]], s: Settings, seed: int) -> tuple[float, float]:
    from training.fact_reward import train_fact_reward
    from training.reward import RewardConfig

    config = RewardConfig(
        backbone="minilm",
        epochs=s.reward_epochs,
        max_steps=s.reward_max_steps,
        learning_rate=1e-4,
        batch_size=16,
        max_length=128,
        warmup=0.05,
        seed=seed,
        cpu_threads=s.threads,
    )
    accuracies = []
    for with_facts in (True, False):
        fitted = train_fact_reward(rows, config, with_facts=with_facts, split_seed=seed)
        accuracies.append(fitted.accuracy if fitted.accuracy is not None else float("nan"))
    return accuracies[0], accuracies[1]


def _train_policy(rows, s: Settings, r: int, images: Images, policy: Path, pi0: Path, work: Path):
    """π_r from π_{r-1} against the fixed π_0: TRL's vision DPO on the pairs, or dense DPO when
    the oracle's corrections join them (as the hallucination kind's loop does)."""
    from training.dpo import DPOConfig

    common_args = dict(
        learning_rate=s.dpo_lr,
        epochs=s.dpo_epochs,
        batch_size=8,
        warmup_ratio=0.0,
        max_length=160,
        seed=s.seed + r,
        device="cpu",
    )
    where = dict(
        images=images,
        policy_ref=policy,
        reference_ref=pi0,
        root=work,
        name=f"policy-r{r}",
        parent=policy.name,
    )
    if any(row.get("correction") for row in rows):
        from training.dense_dpo import DenseDPOConfig
        from training.vision_dense_dpo import train_vision_dense_dpo

        config = DenseDPOConfig(beta=s.dpo_beta, gamma=s.gamma, **common_args)
        return train_vision_dense_dpo(rows, config, **where)
    from training.vision_dpo import train_vision_dpo

    return train_vision_dpo(rows, DPOConfig(beta=s.dpo_beta, **common_args), **where)


def initial_policy(
    work: Path, s: Settings, rng: random.Random, train: list[Prompt], images: Images
):
    """π_0: the tiny VLM built and warm-started on `train` (`rng` right after the prompts were
    drawn, so that bench/web_hallucination_loop.py builds the very same π_0), saved at work/pi0."""
    from training.scenes import BACKGROUND
    from training.vision import build_tiny_vlm, scenes_corpus

    init = build_tiny_vlm(
        work / "init",
        image_size=s.image_size,
        patch=s.patch,
        corpus=scenes_corpus(n_scenes=60, seed=s.seed),
        hidden_size=64,
        intermediate=128,
        vision_hidden_size=64,
        image_mean=[c / 255 for c in BACKGROUND],
        image_std=[0.25] * 3,
        seed=s.seed,
    )
    examples = sft_examples(train, rng, per_prompt=2, false_rate=s.false_rate)
    if s.captions:
        examples += caption_examples(train)
    return warm_start(work / "pi0", init, examples, images, steps=s.sft_steps, seed=s.seed)


def run_loop(work: Path, s: Settings, pi0: Path | None = None) -> dict[str, Any]:
    """The loop's rounds from π_0 (warm-started here unless `pi0` names a saved one)."""
    started = time.perf_counter()
    rng = random.Random(s.seed)
    train = make_prompts(rng, s.sft_prompts, "train-")
    round_prompts = make_prompts(rng, s.rounds * s.prompts_per_round, "round-")
    held_out = make_prompts(rng, s.eval_prompts, "eval-")
    images = Images(s.image_size)
    for group in (train, round_prompts, held_out):
        images.add(group)
    if pi0 is None:
        pi0 = initial_policy(work, s, rng, train, images)
    print(f"warm start: {time.perf_counter() - started:.1f}s", flush=True)
    corrections_rng = random.Random(f"corrections:{s.seed}")
    base = _generate(pi0, held_out, images, s.eval_k, s, seed=10_000)
    base_figures = evaluate(held_out, base)
    print(
        f"{'round':>5} {'labels':>6} {'halluc':>6} {'info':>5} {'win':>5} {'rm+f':>5} {'rm-f':>5}"
        f" {'obj':>5} {'attr':>5} {'count':>5} {'rel':>5} {'sec':>5}"
    )
    _print_row(0, 0, base_figures, 0.5, None, None, time.perf_counter() - started)
    rounds = [_round_record(0, 0, base_figures, 0.5, None, None, {})]
    reward_rows: list[dict[str, Any]] = []
    labels = 0
    policy = pi0
    for r in range(1, s.rounds + 1):
        round_started = time.perf_counter()
        prompts = round_prompts[(r - 1) * s.prompts_per_round : r * s.prompts_per_round]
        samples = _generate(policy, prompts, images, s.k, s, seed=s.seed + r)
        fresh = [vision_pair_row(*pair) for pair in labelled_pairs(prompts, samples)]
        # The reward model reads one pair per prompt (best against worst): MiniLM on every pair
        # of K=4 costs minutes a round on two cores, and more pairs of one prompt add little.
        reward_rows += [vision_pair_row(*pair) for pair in best_vs_worst(prompts, samples)]
        with_facts, without = (
            _reward_accuracies(reward_rows, s, s.seed + r) if reward_rows else (None, None)
        )
        if s.correction_share > 0:
            fresh += correction_rows(prompts, samples, corrections_rng, s.correction_share)
        labels += len(fresh)
        dpo = {}
        if fresh:
            result = _train_policy(fresh, s, r, images, policy, pi0, work)
            policy, dpo = result.path, result.metrics
        ours = _generate(policy, held_out, images, s.eval_k, s, seed=10_000)
        figures = evaluate(held_out, ours)
        rate = win_rate(held_out, ours, base)
        _print_row(
            r, labels, figures, rate, with_facts, without, time.perf_counter() - round_started
        )
        rounds.append(_round_record(r, labels, figures, rate, with_facts, without, dpo))
    return {"rounds": rounds, "seconds": round(time.perf_counter() - started, 1)}


def _round_record(
    r: int,
    labels: int,
    figures: dict[str, Any],
    rate: float,
    with_facts: float | None,
    without: float | None,
    dpo: dict[str, Any],
) -> dict[str, Any]:
    return {
        "round": r,
        "labels": labels,
        "hallucination_rate": round(figures["hallucination_rate"], 4),
        "per_category": {k: round(v, 4) for k, v in figures["per_category"].items()},
        "informativeness": round(figures["informativeness"], 3),
        "win_rate_vs_initial": round(rate, 4),
        "reward_accuracy": None if with_facts is None else round(with_facts, 4),
        "reward_accuracy_without_facts": None if without is None else round(without, 4),
        "dpo_loss_final": dpo.get("loss_final"),
        "dpo_pairs": dpo.get("pairs", 0),
        "dpo_corrections": dpo.get("corrections", 0),
    }


def _print_row(r, labels, figures, rate, with_facts, without, seconds) -> None:
    def fmt(x: float | None) -> str:
        return "    -" if x is None else f"{x:5.3f}"

    cats = figures["per_category"]
    print(
        f"{r:>5} {labels:>6} {figures['hallucination_rate']:6.3f} {figures['informativeness']:5.2f}"
        f" {rate:5.3f} {fmt(with_facts)} {fmt(without)} {cats['object']:5.3f}"
        f" {cats['attribute']:5.3f} {cats['count']:5.3f} {cats['relation']:5.3f} {seconds:5.0f}",
        flush=True,
    )


def check_targets(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its figure and MET/MISSED, the last round against round 0."""
    first, last = rounds[0], rounds[-1]
    base_rate = first["hallucination_rate"]
    facts = {
        "halluc_ratio": last["hallucination_rate"] / base_rate if base_rate else float("inf"),
        "info_ratio": last["informativeness"] / first["informativeness"]
        if first["informativeness"]
        else 0.0,
        "win_rate": last["win_rate_vs_initial"],
        "reward_gap": (last["reward_accuracy"] or 0) - (last["reward_accuracy_without_facts"] or 0),
    }
    return [
        {
            "target": name,
            "met": bool(test(facts)),
            "figures": {k: round(v, 4) for k, v in facts.items()},
        }
        for name, test in TARGETS
    ]


def plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["hallucination_rate"] for r in rounds], "o-", label="hallucination rate")
    for category in rounds[0]["per_category"]:
        left.plot(xs, [r["per_category"][category] for r in rounds], ":", label=category)
    left.plot(xs, [r["win_rate_vs_initial"] for r in rounds], "s--", label="win rate vs π_0")
    left.set(xlabel="round", ylim=(0, 1), title="Held-out scenes")
    left.legend(fontsize=7)
    right.plot(xs, [r["informativeness"] for r in rounds], "o-", label="true claims / answer")
    right.plot(
        xs[1:], [r["reward_accuracy"] for r in rounds[1:]], "s--", label="reward acc. (facts)"
    )
    right.plot(
        xs[1:],
        [r["reward_accuracy_without_facts"] for r in rounds[1:]],
        "^--",
        label="reward acc. (blind)",
    )
    right.set(xlabel="round", title="Informativeness and reward accuracy")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG (default bench/out/hallucination_loop.png)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=Settings.rounds)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument(
        "--correction-share",
        type=float,
        default=Settings.correction_share,
        help="share of hallucinating samples the oracle corrects (dense DPO; 0: pairs only)",
    )
    parser.add_argument(
        "--pi0", type=Path, help="skip the warm start: this saved π_0 (experiments on the rounds)"
    )
    parser.add_argument("--work", type=Path, help="keep models here instead of a temp directory")
    parser.add_argument("--smoke", action="store_true", help="one tiny round in seconds")
    common.add_record_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.plot is None and not args.smoke:
        args.plot = Path("bench/out/hallucination_loop.png")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    from training.generation import set_cpu_threads

    datasets.disable_progress_bars()
    os.environ["TANDEM_CPU_THREADS"] = str(args.threads)
    set_cpu_threads()
    base = SMOKE if args.smoke else Settings()
    settings = replace(base, seed=args.seed, rounds=args.rounds if not args.smoke else 1)
    settings = replace(settings, threads=args.threads, correction_share=args.correction_share)
    work = args.work or Path(tempfile.mkdtemp(prefix="tandem-hallucination-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with common.RunMeter() as meter:
            figures = run_loop(work, settings, args.pi0)
        figures["settings"] = asdict(settings)
        figures["targets"] = check_targets(figures["rounds"])
        for target in figures["targets"]:
            print(f"{'MET   ' if target['met'] else 'MISSED'} {target['target']}")
        print(f"targets' figures: {figures['targets'][0]['figures']}; {figures['seconds']}s")
        if args.plot:
            plot(figures["rounds"], args.plot)
        figures = common.record(
            "hallucination_loop",
            argv,
            meter,
            figures,
            json_path=args.json,
            save=args.save_result,
            smoke=args.smoke,
        )
        print(common.provenance_header(figures))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
