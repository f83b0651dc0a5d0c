"""Proof that the online loop learns: three rounds of iterative DPO with a hidden oracle as the human.

The task. Prompts ask to "describe" a topic; a reply names the topic and then
six words. Some words are *warm* (``GOOD``); the oracle's utility is the
number of warm words in the reply, and it prefers the reply with more (equal
counts are a tie, which a human would also report). The warm-start policy
π_0 is a tiny Llama fitted with TRL's ``SFTTrainer`` on replies whose words
are warm with probability 0.25, so it only sometimes has the property.

Each round r = 1..3 (the Online-RLHF recipe, Dong et al. 2024, "RLHF
Workflow"; DESIGN.md "The online loop"):

1. π_{r-1} samples K replies for a fresh slice of training prompts
   (``TransformersGenerator``).
2. Pairs are selected: round 1 at random (no reward model yet), later rounds
   best-vs-worst by the ensemble mean (``training.selection``).
3. The oracle labels them; ties are dropped, as the export drops them.
4. The reward ensemble is fitted on all labels so far
   (``training.reward.train_reward_ensemble``, backbone = π_0 with a fresh
   scalar head).
5. DPO from π_{r-1} against the FIXED reference π_0 (``training.policy.train_dpo``).
6. On held-out prompts: (a) the ensemble's accuracy against the oracle on
   pairs of π_{r-1}'s samples with different utility, (b) the oracle win rate
   of π_r against π_0, sample i against sample i, ties counted as half.

The selection experiment: from a pool of π_0 samples on training prompts,
labels are bought in steps; "disagreement" fits the ensemble on the labels
so far and buys the pairs its members disagree on most, "random" buys
uniformly. Both start from the same random seed set, and the ensemble
accuracy on a fixed held-out pair set is recorded after every step.

Run: ``python -m bench.oracle_loop --json bench/out/oracle_loop.json [--save-result]``;
``--smoke`` runs one round on a handful of prompts in seconds (it checks the bench still runs; its
figures mean nothing). The JSON carries the command, the commit, the machine's idle share and the
recipe (``settings``), so bench/loop_latency.py can tell whether it ran on the same commit.
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
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

# The recipe and the selection experiment live in their own modules; callers
# (bench.round_one_replay, the tests) find every name here, as before the split.
from bench.oracle_recipe import (  # noqa: E402, F401
    ORACLE,
    Settings,
    distinct_utility_pairs,
    ensemble_config,
    make_prompts,
    oracle_pair,
    oracle_utility,
    score_candidates,
    warm_start,
    win_rate,
)
from bench.oracle_selection import (  # noqa: E402, F401
    ACQUISITIONS,
    labels_to_reach,
    learner_noise,
    selection_experiment,
)
from training.data import Message, PreferencePair
from training.generation import GenerationConfig, TransformersGenerator, set_cpu_threads
from training.policy import DPOConfig, train_dpo
from training.reward import RewardEnsemble, evaluate_pairs, train_reward_ensemble
from training.selection import select_pairs


def online_loop(
    work: Path,
    pi0: Path,
    train_prompts: list[list[Message]],
    eval_prompts: list[list[Message]],
    settings: Settings,
) -> list[dict[str, Any]]:
    gen_config = GenerationConfig(
        k=settings.k, temperature=1.0, max_new_tokens=settings.max_new_tokens, seed=settings.seed
    )
    base_eval = TransformersGenerator(pi0, device="cpu").generate(eval_prompts, gen_config)
    labels: list[PreferencePair] = []
    ensemble: RewardEnsemble | None = None
    policy = pi0
    rounds = []
    print(
        f"{'round':>5} {'labels':>6} {'reward_acc':>10} {'win_vs_pi0':>10} {'utility':>7} {'seconds':>7}"
    )
    print(
        f"{0:>5} {0:>6} {'-':>10} {0.5:>10.3f} {np.mean([oracle_utility(t) for s in base_eval for t in s]):>7.2f}"
    )
    for r in range(1, settings.rounds + 1):
        started = time.perf_counter()
        prompts = train_prompts[
            (r - 1) * settings.prompts_per_round : r * settings.prompts_per_round
        ]
        generator = TransformersGenerator(policy, device="cpu")
        samples = generator.generate(
            prompts, GenerationConfig(**{**gen_config.__dict__, "seed": settings.seed + r})
        )
        if ensemble is None:
            selected = select_pairs(
                samples, np.zeros((1, len(prompts), settings.k)), strategy="random", seed=r
            )
        else:
            scores = score_candidates(ensemble, prompts, samples)
            selected = select_pairs(samples, scores, strategy="best_vs_worst", seed=r)
        fresh = [
            pair
            for s in selected
            if (
                pair := oracle_pair(
                    prompts[s.prompt_index],
                    samples[s.prompt_index][s.first],
                    samples[s.prompt_index][s.second],
                )
            )
        ]
        labels += fresh
        # The held-out check pairs come from the policy being judged this round.
        eval_samples = generator.generate(
            eval_prompts, GenerationConfig(**{**gen_config.__dict__, "seed": 10_000 + r})
        )
        eval_pairs = distinct_utility_pairs(eval_prompts, eval_samples)
        fitted = train_reward_ensemble(
            labels,
            ensemble_config(settings, pi0, settings.seed + 100 * r),
            root=work,
            name=f"reward-r{r}",
        )
        ensemble = RewardEnsemble.load(fitted.path)
        accuracy = evaluate_pairs(ensemble, eval_pairs)["accuracy"]
        result = train_dpo(
            fresh,
            DPOConfig(
                loss="sigmoid",
                beta=settings.dpo_beta,
                learning_rate=settings.dpo_lr,
                epochs=settings.dpo_epochs,
                batch_size=16,
                max_length=64,
                seed=settings.seed + r,
            ),
            policy_ref=policy,
            reference_ref=pi0,
            root=work,
            name=f"policy-r{r}",
            parent=policy.name,
        )
        policy = result.path
        ours = TransformersGenerator(policy, device="cpu").generate(eval_prompts, gen_config)
        rate = win_rate(ours, base_eval)
        utility = float(np.mean([oracle_utility(t) for s in ours for t in s]))
        seconds = time.perf_counter() - started
        print(
            f"{r:>5} {len(labels):>6} {accuracy:>10.3f} {rate:>10.3f} {utility:>7.2f} {seconds:>7.1f}",
            flush=True,
        )
        rounds.append(
            {
                "round": r,
                "labels": len(labels),
                "new_pairs": len(fresh),
                "reward_accuracy": round(accuracy, 4),
                "win_rate_vs_initial": round(rate, 4),
                "mean_utility": round(utility, 3),
                "dpo_loss_final": result.metrics.get("loss_final"),
                "seconds": round(seconds, 1),
            }
        )
    return rounds


def plot(rounds: list[dict[str, Any]], curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [0] + [r["round"] for r in rounds]
    left.plot(
        xs, [0.5] + [r["win_rate_vs_initial"] for r in rounds], "o-", label="win rate of π_r vs π_0"
    )
    left.plot(
        xs[1:], [r["reward_accuracy"] for r in rounds], "s--", label="reward ensemble accuracy"
    )
    left.axhline(0.75, color="grey", lw=0.5)
    left.axhline(0.85, color="grey", lw=0.5, ls=":")
    left.set(xlabel="round", ylim=(0.4, 1.02), title="Online loop with an oracle")
    left.legend(loc="lower right")
    for strategy, curve in curves.items():
        right.plot([c[0] for c in curve], [c[1] for c in curve], "o-", label=strategy)
    right.set(xlabel="labels bought", ylabel="held-out accuracy", title="Which pairs to label")
    right.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


SMOKE = ["--rounds", "1", "--prompts-per-round", "8", "--eval-prompts", "8", "--sft-steps", "10",
         "--skip-selection"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--plot",
        type=Path,
        help="PNG plot path (default bench/out/oracle_loop.png; none in --smoke)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole experiment")
    parser.add_argument("--skip-selection", action="store_true", help="run the online loop only")
    parser.add_argument(
        "--skip-loop", action="store_true", help="run the selection experiment only"
    )
    parser.add_argument(
        "--acquisitions",
        default="disagreement,random",
        help="comma-separated pair acquisitions to compare: random, " + ", ".join(ACQUISITIONS),
    )
    parser.add_argument(
        "--selection-seeds", type=int, default=Settings.selection_seeds, help="seeds to average"
    )
    parser.add_argument(
        "--learner-noise",
        action="store_true",
        help="also fit the same labels with 4 training seeds and print the accuracy spread",
    )
    parser.add_argument(
        "--work", type=Path, help="keep models here instead of a temporary directory"
    )
    parser.add_argument(
        "--bagging",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bootstrap-resample each ensemble member's labels (query by bagging; default on)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest for these tiny models)",
    )
    recipe = parser.add_argument_group("recipe (defaults: the README's)")
    recipe.add_argument("--rounds", type=int, default=Settings.rounds)
    recipe.add_argument("--prompts-per-round", type=int, default=Settings.prompts_per_round)
    recipe.add_argument("--eval-prompts", type=int, default=Settings.eval_prompts)
    recipe.add_argument("--sft-steps", type=int, default=Settings.sft_steps, help="π_0's SFT steps")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: " + " ".join(SMOKE) + " with 2 members and 1 epoch each",
    )
    common.add_record_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = SMOKE + argv
    args = parser.parse_args(argv)
    if args.plot is None and not args.smoke:
        args.plot = Path("bench/out/oracle_loop.png")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    os.environ["TANDEM_CPU_THREADS"] = str(args.threads)
    set_cpu_threads()

    settings = Settings(
        seed=args.seed,
        threads=args.threads,
        bagging=args.bagging,
        selection_seeds=args.selection_seeds,
        rounds=args.rounds,
        prompts_per_round=args.prompts_per_round,
        eval_prompts=args.eval_prompts,
        sft_steps=args.sft_steps,
    )
    if args.smoke:
        settings = replace(settings, members=2, reward_epochs=1.0, dpo_epochs=1.0)
    acquisitions = [a.strip() for a in args.acquisitions.split(",") if a.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="tandem-oracle-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with common.RunMeter() as meter:
            figures = _run(args, settings, acquisitions, work)
        figures = common.record(
            "oracle_loop",
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


def _run(
    args: argparse.Namespace, settings: Settings, acquisitions: list[str], work: Path
) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.process_time()
    prompts = make_prompts()
    random.Random(settings.seed).shuffle(prompts)
    eval_prompts = prompts[: settings.eval_prompts]
    train_prompts = prompts[settings.eval_prompts :]
    needed = settings.rounds * settings.prompts_per_round
    if len(train_prompts) < needed:
        raise SystemExit(f"need {needed} training prompts, have {len(train_prompts)}")
    pi0 = warm_start(work, train_prompts, settings)
    print(f"warm start done in {time.perf_counter() - started:.1f}s", flush=True)
    rounds = [] if args.skip_loop else online_loop(work, pi0, train_prompts, eval_prompts, settings)
    curves: dict[str, list[list[float]]] = {a: [] for a in acquisitions}
    noise: dict[int, list[float]] = {}
    if args.learner_noise:
        print("learner noise (same labels, different training seeds):", flush=True)
        noise = learner_noise(work, pi0, train_prompts[:needed], eval_prompts, settings)
    if not args.skip_selection:
        print("selection experiment (labels, accuracy averaged over seeds):", flush=True)
        curves = selection_experiment(
            work, pi0, train_prompts[:needed], eval_prompts, settings, acquisitions
        )
        for strategy, curve in curves.items():
            print(f"  {strategy:>12}: " + "  ".join(f"{int(b)}:{a:.3f}" for b, a in curve))
        for target in (0.8, 0.85, 0.9):
            print(
                f"  labels to reach {target:.2f}: "
                + ", ".join(f"{a} {labels_to_reach(c, target)}" for a, c in curves.items())
            )
    seconds = round(time.perf_counter() - started, 1)
    # CPU seconds of this process: on a shared machine wall time also counts other jobs.
    cpu_seconds = round(time.process_time() - cpu_started, 1)
    print(f"total {seconds}s wall, {cpu_seconds}s CPU")
    if args.plot:
        plot(rounds, curves, args.plot)
    return {
        # The recipe, so a comparison (bench/loop_latency.py) can check it compares like with like.
        "settings": asdict(settings),
        "rounds": rounds,
        "selection": curves,
        "learner_noise": {str(n): accs for n, accs in noise.items()},
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


if __name__ == "__main__":
    sys.exit(main())
