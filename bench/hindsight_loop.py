"""Proof that hindsight feedback trains a policy that serves the customer better than foresight
feedback does (RLHS, Liang et al. 2025), on a miniature of the paper's marketplace, on CPU.

The world (training.marketplace): a customer wants a product with one feature within a budget;
three options, cheapest first, whose features only the store (the policy) knows. π_0 is a tiny
Llama (a config and a tokenizer trained here, no download) warm-started on scripted replies: 45%
recommend the best buy and say it has the feature, 35% recommend the cheapest option and claim
the feature whether it has it or not (false two times in three), 20% recommend any affordable
option and say nothing of the feature. Then, per seed, two arms from the same π_0, with the same
customers and the same number of labels per round:

1. π_{r-1} samples K replies for each of this round's customers.
2. The oracle customer rates every reply: the foresight arm by what it expects on reading the
   reply (believing its claims), the hindsight arm after reading the simulated outcome
   (``simulate_outcome``: what the bought option turned out to be). Per customer, the most
   satisfying reply against the least satisfying one is a pair (none on a tie).
3. DPO of π_r from π_{r-1} against the FIXED π_0 (training.dpo, TRL).
4. On held-out customers: mean true utility (−1 when the purchase misses the need, else the
   cheapest compliant price over the price paid), the share of replies with a false claim, and
   the mean foresight and hindsight satisfaction (1..5).

Targets (last round, paired over the seeds): the hindsight arm's true utility exceeds the
foresight arm's by more than the seed spread (the larger standard deviation of either arm across
seeds), its false-claim rate is lower, and the foresight arm's foresight satisfaction is the
higher (the misalignment the paper reports).

Run: ``python -m bench.hindsight_loop --jobs 2 --json bench/out/hindsight_loop.json`` (3 seeds,
two at a time on two cores);
``--smoke`` is one tiny round of one seed in seconds (it checks the bench runs; its figures mean
nothing).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.hindsight_world import (  # noqa: E402
    ARMS,
    build_init,
    dpo_round,
    evaluate,
    labelled_pairs,
    sample,
    scratch_dir,
    sft_examples,
    warm_start,
)
from training import marketplace as world  # noqa: E402

METRICS = ("true_utility", "false_claim_rate", "foresight_satisfaction", "hindsight_satisfaction")


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 3
    hidden: int = 64
    sft_scenarios: int = 3000
    # Measured: the SFT loss sits near 0.38 until the model learns to copy the requirement from
    # the customer's message, then falls to about 0.22-0.27; seeds 0 and 1 got there within 1200
    # steps, seed 2 had not.
    sft_steps: int = 1500
    style_weights: tuple[float, float, float] = (0.45, 0.35, 0.2)
    prompts_per_round: int = 96
    k: int = 4
    eval_scenarios: int = 128
    eval_k: int = 2
    max_new_tokens: int = 20
    # Measured on seed 0: lr 2e-3 x 3 epochs (bench/oracle_loop.py's) broke both arms' grammar
    # within a round ("IIII recommend Option A"); 5e-4 x 2 epochs with beta 0.2 moves the mixture
    # of reply styles and keeps the sentences.
    dpo_beta: float = 0.2
    dpo_lr: float = 5e-4
    dpo_epochs: float = 2.0
    threads: int = 1


SMOKE = Settings(
    seeds=(0,),
    rounds=1,
    sft_scenarios=64,
    # Enough steps that π_0 writes "I recommend Option X", so the customer tells replies apart
    # and both arms have pairs to train on.
    sft_steps=150,
    prompts_per_round=12,
    eval_scenarios=8,
    dpo_epochs=1.0,
)


def run_seed(work: Path, seed: int, s: Settings) -> list[dict[str, Any]]:
    """Both arms from one π_0; a record per round (round 0 is π_0, the same for both arms)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    sft = [world.random_scenario(rng) for _ in range(s.sft_scenarios)]
    customers = [world.random_scenario(rng) for _ in range(s.rounds * s.prompts_per_round)]
    held_out = [world.random_scenario(rng) for _ in range(s.eval_scenarios)]
    init = build_init(work / "init", sft, seed=seed, hidden=s.hidden)
    pi0 = warm_start(
        work / "pi0", init, sft_examples(sft, rng, s.style_weights), steps=s.sft_steps, seed=seed
    )
    print(f"seed {seed}: π_0 warm-started in {time.perf_counter() - started:.0f}s", flush=True)

    def figures(policy: Path) -> dict[str, float]:
        texts = sample(
            policy, held_out, k=s.eval_k, seed=10_000 + seed, max_new_tokens=s.max_new_tokens
        )
        return evaluate(held_out, texts)

    base = figures(pi0)
    records = [{"round": 0, "labels": {arm: 0 for arm in ARMS}, **{arm: base for arm in ARMS}}]
    records += [{"round": r, "labels": {}} for r in range(1, s.rounds + 1)]
    for arm in ARMS:
        policy = pi0
        for r in range(1, s.rounds + 1):
            batch = customers[(r - 1) * s.prompts_per_round : r * s.prompts_per_round]
            texts = sample(
                policy, batch, k=s.k, seed=100 * seed + r, max_new_tokens=s.max_new_tokens
            )
            pairs = labelled_pairs(arm, batch, texts)
            policy, _ = dpo_round(
                pairs,
                policy=policy,
                reference=pi0,
                root=work,
                name=f"{arm}-r{r}",
                settings=s,
                seed=seed + r,
            )
            records[r][arm] = figures(policy)
            records[r]["labels"][arm] = len(pairs)
    print(_table(f"seed {seed} ({time.perf_counter() - started:.0f}s)", records), flush=True)
    return records


def _table(title: str, records: list[dict[str, Any]]) -> str:
    """The per-round table as one string (seeds run in parallel print whole tables)."""
    lines = [
        title,
        f"{'round':>5} {'arm':>9} {'pairs':>5} {'utility':>8} {'false':>6} {'f.need':>6}"
        f" {'fore':>5} {'hind':>5}",
    ]
    for record in records:
        for arm in ARMS:
            f = record[arm]
            pairs = record.get("labels", {}).get(arm, "-")
            lines.append(
                f"{record['round']:>5} {arm:>9} {pairs:>5} {f['true_utility']:8.3f}"
                f" {f['false_claim_rate']:6.3f} {f.get('false_need_rate', float('nan')):6.3f}"
                f" {f['foresight_satisfaction']:5.2f}"
                f" {f['hindsight_satisfaction']:5.2f}"
            )
    return "\n".join(lines)


def mean_rounds(
    per_seed: list[list[dict[str, Any]]], metrics: tuple[str, ...] = METRICS
) -> list[dict[str, Any]]:
    """The issue's JSON rounds (with the default ``metrics``): each figure the mean over seeds."""
    out = []
    for r, record in enumerate(per_seed[0]):
        out.append(
            {
                "round": record["round"],
                **{
                    arm: {
                        m: round(statistics.fmean(seed[r][arm][m] for seed in per_seed), 4)
                        for m in metrics
                    }
                    for arm in ARMS
                },
            }
        )
    return out


def check_targets(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's three targets on the last round, with the figures they rest on."""

    def last(arm: str, metric: str) -> list[float]:
        return [seed[-1][arm][metric] for seed in per_seed]

    fore_u, hind_u = last("foresight", "true_utility"), last("hindsight", "true_utility")
    spread = max(statistics.stdev(fore_u), statistics.stdev(hind_u)) if len(per_seed) > 1 else 0.0
    gap = statistics.fmean(hind_u) - statistics.fmean(fore_u)
    paired = [h - f for h, f in zip(hind_u, fore_u, strict=True)]
    fore_false = statistics.fmean(last("foresight", "false_claim_rate"))
    hind_false = statistics.fmean(last("hindsight", "false_claim_rate"))
    fore_sat = statistics.fmean(last("foresight", "foresight_satisfaction"))
    hind_sat = statistics.fmean(last("hindsight", "foresight_satisfaction"))
    return [
        {
            "target": "hindsight-trained true utility > foresight-trained by more than the seed "
            "spread",
            "met": len(per_seed) >= 3 and gap > spread and min(paired) > 0,
            "figures": {
                "gap": round(gap, 4),
                "seed_spread": round(spread, 4),
                "paired_gaps": [round(p, 4) for p in paired],
            },
        },
        {
            "target": "hindsight-trained false-claim rate lower",
            "met": hind_false < fore_false,
            "figures": {
                "foresight_arm": round(fore_false, 4),
                "hindsight_arm": round(hind_false, 4),
            },
        },
        {
            "target": "foresight-trained foresight satisfaction higher",
            "met": fore_sat > hind_sat,
            "figures": {"foresight_arm": round(fore_sat, 3), "hindsight_arm": round(hind_sat, 3)},
        },
    ]


def plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    titles = (
        ("true_utility", "True utility (−1..1)"),
        ("false_claim_rate", "Replies with a false claim (any; about the need)"),
        (None, "Customer satisfaction (1..5)"),
    )
    for ax, (metric, title) in zip(axes, titles, strict=True):
        for arm, colour in zip(ARMS, ("tab:red", "tab:blue"), strict=True):
            if metric is None:
                for phase, style in (("foresight", "o--"), ("hindsight", "s-")):
                    ax.plot(
                        xs,
                        [r[arm][f"{phase}_satisfaction"] for r in rounds],
                        style,
                        color=colour,
                        label=f"{arm}-trained, {phase} rating",
                    )
            else:
                ax.plot(
                    xs, [r[arm][metric] for r in rounds], "o-", color=colour, label=f"{arm}-trained"
                )
                if metric == "false_claim_rate" and "false_need_rate" in rounds[0][arm]:
                    ax.plot(
                        xs,
                        [r[arm]["false_need_rate"] for r in rounds],
                        "^:",
                        color=colour,
                        label=f"{arm}-trained, about the need",
                    )
        ax.set_xticks(xs)
        ax.set(xlabel="DPO round", title=title)
        ax.legend(fontsize=7)
    fig.suptitle("Iterative DPO on foresight vs hindsight labels (mean over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _quiet(threads: int) -> None:
    """No progress bars or warnings; ``threads`` torch threads (in each worker process too)."""
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    from training.generation import set_cpu_threads

    datasets.disable_progress_bars()
    os.environ["TANDEM_CPU_THREADS"] = str(threads)
    set_cpu_threads()


def run_seeds(work: Path, s: Settings, jobs: int) -> list[list[dict[str, Any]]]:
    """Every seed's records, in seed order; ``jobs`` > 1 runs seeds in that many processes."""
    if jobs <= 1 or len(s.seeds) == 1:
        return [run_seed(work / f"seed-{seed}", seed, s) for seed in s.seeds]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_quiet,
        initargs=(s.threads,),
    ) as pool:
        futures = [pool.submit(run_seed, work / f"seed-{seed}", seed, s) for seed in s.seeds]
        return [future.result() for future in futures]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the issue's JSON figures here")
    parser.add_argument("--plot", type=Path, help="PNG (default bench/out/hindsight_loop.png)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds))
    parser.add_argument("--rounds", type=int, default=Settings.rounds)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run in parallel processes (one per core)"
    )
    parser.add_argument("--work", type=Path, help="keep models here instead of a temp directory")
    parser.add_argument("--smoke", action="store_true", help="one tiny round of one seed")
    parser.add_argument(
        "--save-result", action="store_true", help="also save under bench/results/<date>/"
    )
    args = parser.parse_args(argv)
    if args.plot is None and not args.smoke:
        args.plot = Path("bench/out/hindsight_loop.png")
    _quiet(args.threads)
    settings = (
        SMOKE if args.smoke else replace(Settings(), seeds=tuple(args.seeds), rounds=args.rounds)
    )
    settings = replace(settings, threads=args.threads)
    # The CPU is shared: the load says how much of it this run had.
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    started = time.perf_counter()
    work = args.work or scratch_dir()
    try:
        with common.RunMeter() as meter:
            per_seed = run_seeds(work, settings, args.jobs)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 1)
    rounds = mean_rounds(per_seed)
    shown = mean_rounds(per_seed, (*METRICS, "false_need_rate"))
    print(_table(f"mean over seeds {list(settings.seeds)}", shown))
    for target in check_targets(per_seed):
        print(f"{'MET   ' if target['met'] else 'MISSED'} {target['target']}: {target['figures']}")
    print(f"{seconds}s; load average at end: {os.getloadavg()[0]:.2f}; settings {asdict(settings)}")
    if args.plot:
        plot(shown, args.plot)
    figures = {"rounds": rounds, "seeds": list(settings.seeds), "seconds": seconds}
    figures["per_seed"] = per_seed
    figures["targets"] = check_targets(per_seed)
    figures["settings"] = asdict(settings)
    # Provenance first (commit, machine, load), then the keys: rounds, seeds, seconds.
    data = common.record(
        "hindsight_loop",
        list(sys.argv[1:] if argv is None else argv),
        meter,
        figures,
        json_path=args.json,
        save=args.save_result,
        smoke=args.smoke,
    )
    print(common.provenance_header(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
