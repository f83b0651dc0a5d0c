"""Is the web loop's weaker first round the web path or the luck of the first batch?

Replays round 1 of the online loop inside the training package, with no web app: the same π_0
(bench/oracle_loop.py's, 120 SFT steps, seed 0), the same 96 first training prompts and the same
DPO settings, on two batches of oracle-labelled pairs:

- "web batch": the two samples per prompt that the web app's round-0 tasks hold
  (annotation.services.simulation: k=2, sampling seed 0);
- "package batch": the first two of the four samples per prompt that bench/oracle_loop.py draws
  for its round 1 (sampling seed 1).

Each is trained with two DPO seeds and judged as bench/oracle_loop.py judges: oracle win rate of
π_1 over π_0 on the 48 held-out prompts, four samples each. If the web batch gives the web loop's
figure here too, the gap is which samples π_0 happened to draw, not the web path.

    .venv/bin/python -m bench.round_one_replay [--json bench/out/round_one_replay.json] [--save-result]
    .venv/bin/python -m bench.round_one_replay --smoke   # tiny sizes: checks it still runs
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import REPO, table  # noqa: E402

SMOKE = ["--prompts-per-round", "8", "--eval-prompts", "8", "--sft-steps", "10",
         "--dpo-seeds", "1", "--dpo-epochs", "1"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--json", type=Path, default=REPO / "bench" / "out" / "round_one_replay.json"
    )
    parser.add_argument(
        "--prompts-per-round", type=int, default=None, help="default: the package's"
    )
    parser.add_argument("--eval-prompts", type=int, default=None, help="default: the package's")
    parser.add_argument("--sft-steps", type=int, default=None, help="default: the package's")
    parser.add_argument("--dpo-seeds", type=int, default=2, help="DPO seeds per batch")
    parser.add_argument("--dpo-epochs", type=float, default=None, help="default: the web loop's")
    parser.add_argument(
        "--smoke", action="store_true", help="seconds, not minutes: " + " ".join(SMOKE)
    )
    common.add_record_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = SMOKE + argv
    args = parser.parse_args(argv)
    with common.RunMeter() as meter:
        figures = run(args)
    data = common.record(
        "round_one_replay",
        argv,
        meter,
        figures,
        json_path=args.json,
        save=args.save_result,
        smoke=args.smoke,
    )
    print(common.provenance_header(data))
    return 0


def run(args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore")
    os.environ["TANDEM_CPU_THREADS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    # The web loop's sizes come from the simulation service, which lives in the Django app.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.dev")
    import django

    django.setup()
    from annotation.services.simulation import TINY_LOOP
    from bench.oracle_loop import Settings, make_prompts, oracle_pair, warm_start, win_rate
    from training.generation import GenerationConfig, TransformersGenerator, set_cpu_threads
    from training.policy import DPOConfig, train_dpo

    set_cpu_threads()
    started = time.perf_counter()
    settings = Settings()
    sizes = {
        "prompts_per_round": args.prompts_per_round,
        "eval_prompts": args.eval_prompts,
        "sft_steps": args.sft_steps,
    }
    settings = replace(settings, **{k: v for k, v in sizes.items() if v is not None})
    work = Path(tempfile.mkdtemp(prefix="tandem-replay-"))
    prompts = make_prompts()
    random.Random(settings.seed).shuffle(prompts)
    held_out, train = prompts[: settings.eval_prompts], prompts[settings.eval_prompts :]
    first = train[: settings.prompts_per_round]
    pi0 = warm_start(work, train, settings)
    judge = GenerationConfig(
        k=settings.k, temperature=1.0, max_new_tokens=settings.max_new_tokens, seed=settings.seed
    )
    baseline = TransformersGenerator(pi0, device="cpu").generate(held_out, judge)
    sampler = TransformersGenerator(pi0, device="cpu")
    batches = {
        "web batch (k=2, seed 0)": sampler.generate(
            first, GenerationConfig(k=2, seed=settings.seed, **TINY_LOOP["generation"])
        ),
        "package batch (k=4, seed 1)": sampler.generate(
            first,
            GenerationConfig(
                k=settings.k,
                temperature=1.0,
                max_new_tokens=settings.max_new_tokens,
                seed=settings.seed + 1,
            ),
        ),
    }
    policy = dict(TINY_LOOP["policy"])
    if args.dpo_epochs is not None:
        policy["epochs"] = args.dpo_epochs
    rows, results = [], []
    for label, samples in batches.items():
        pairs = [
            pair
            for prompt, texts in zip(first, samples, strict=True)
            if (pair := oracle_pair(prompt, texts[0], texts[1])) is not None
        ]
        for dpo_seed in range(args.dpo_seeds):
            trained = train_dpo(
                pairs,
                DPOConfig(loss="sigmoid", seed=dpo_seed, **policy),
                policy_ref=pi0,
                reference_ref=pi0,
                root=work,
                name=f"replay-{len(results)}",
            )
            ours = TransformersGenerator(trained.path, device="cpu").generate(held_out, judge)
            rate = round(win_rate(ours, baseline), 3)
            rows.append([label, len(pairs), dpo_seed, rate])
            results.append(
                {"batch": label, "pairs": len(pairs), "dpo_seed": dpo_seed, "win_rate": rate}
            )
            print(f"{label}: {len(pairs)} pairs, DPO seed {dpo_seed}: {rate}", flush=True)
    print(
        table(
            ["first batch", "decisive pairs", "DPO seed", "oracle win rate of π_1 vs π_0"],
            rows,
            title="Round 1 replayed in the package (same π_0, prompts and DPO settings)",
        )
    )
    return {
        "settings": asdict(settings),
        "runs": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
