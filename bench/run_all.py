"""`make bench` for the web side: the annotation-loop load test, the export benchmark and the
image benches.

Runs bench.web_load, bench.web_export, bench.image_import (a zip of 10,000 image tasks), bench.web_load
--kind pairwise,hallucination (both kinds interleaved at 32 annotators) and bench.web_export --kind
hallucination --shape vision_pairs (100,000 judgements), prints their tables and writes the combined
figures to bench/out/web.json. Everything targets 127.0.0.1, uses only the throwaway database
tandem_bench (``BENCH_DB``), and stops by itself (hard cap: --max-seconds, 1,500 by default). Each
bench's part carries its own command, commit and idle share; --save-result copies each to
bench/results/<date>/: web_load.json and web_export.json (the README's pairwise figures),
image_import.json, web_load_kinds.json, web_export_vision_pairs.json (8 images shared by the
prompts) and web_export_vision_pairs_per_task.json (an image per prompt).

    .venv/bin/python -m bench.run_all [--quick | --smoke] [--out bench/out/web.json] [--save-result]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, image_import, web_export, web_load, web_load_kinds  # noqa: E402

# What each bench runs as, by mode: (file key, module name, extra arguments).
_KINDS = ["--kind", "pairwise,hallucination"]
_VISION = ["--kind", "hallucination", "--shape", "vision_pairs"]
_HINDSIGHT = ["--kind", "pairwise,hindsight"]
_HS_EXPORT = ["--kind", "hindsight", "--shape"]
PLANS = {
    "smoke": [
        ("web_load", ["--smoke", "--max-seconds", "150"]),
        # web_export has no --smoke of its own here: the same thing through its size flags.
        ("web_export", ["--judgements", "2000", "--annotators", "4", "--max-export-s", "30",
                        "--max-seconds", "120"]),
        ("image_import", ["--smoke"]),
        ("web_load_kinds", ["--smoke", *_KINDS, "--max-seconds", "150"]),
        ("web_export_vision_pairs", [*_VISION, "--judgements", "2000", "--annotators", "4",
                                     "--max-export-s", "30", "--max-seconds", "120"]),
        ("web_export_vision_pairs_per_task", [*_VISION, "--image-per-task", "--judgements", "2000",
                                              "--annotators", "4", "--max-export-s", "30",
                                              "--max-seconds", "120"]),
        ("web_load_hindsight", ["--smoke", *_HINDSIGHT, "--max-seconds", "150"]),
        ("web_export_hindsight_pairs", ["--smoke", *_HS_EXPORT, "pairs", "--max-seconds", "120"]),
        ("web_export_hindsight_hindsight", ["--smoke", *_HS_EXPORT, "hindsight",
                                            "--max-seconds", "120"]),
    ],
    "quick": [
        ("web_load", ["--seconds", "5", "--warmup", "1", "--tasks", "20000", "--workers", "{workers}",
                      "--max-seconds", "150"]),
        ("web_export", ["--judgements", "100000", "--max-export-s", "60", "--max-seconds", "150"]),
        ("image_import", ["--tasks", "1000,1000:640x480:jpeg", "--max-seconds", "150"]),
        ("web_load_kinds", [*_KINDS, "--seconds", "5", "--warmup", "1", "--tasks", "20000",
                            "--images", "200", "--max-seconds", "200"]),
        ("web_export_vision_pairs", [*_VISION, "--max-export-s", "60", "--max-seconds", "150"]),
        ("web_export_vision_pairs_per_task", [*_VISION, "--image-per-task", "--max-export-s", "60",
                                              "--max-seconds", "150"]),
        ("web_load_hindsight", [*_HINDSIGHT, "--seconds", "5", "--warmup", "1", "--tasks", "20000",
                                "--max-seconds", "200"]),
        ("web_export_hindsight_pairs", [*_HS_EXPORT, "pairs", "--judgements", "20000",
                                        "--max-export-s", "60", "--max-seconds", "150"]),
        ("web_export_hindsight_hindsight", [*_HS_EXPORT, "hindsight", "--judgements", "20000",
                                            "--max-export-s", "60", "--max-seconds", "150"]),
    ],
    "full": [
        ("web_load", ["--seconds", "20", "--warmup", "3", "--workers", "{workers}",
                      "--max-seconds", "250"]),
        ("web_export", ["--max-export-s", "240", "--max-seconds", "330"]),
        # 1,000 and 10,000 tasks of small pictures, 1,000 of photo-sized ones (see image_import).
        ("image_import", ["--max-seconds", "300"]),
        # Pairwise and hallucination at 32 annotators, interleaved twice (A/B/A/B).
        ("web_load_kinds", [*_KINDS, "--annotators", "32", "--seconds", "20", "--warmup", "3",
                            "--ab-rounds", "2", "--max-seconds", "480"]),
        # 8 images shared by all prompts, then one image per prompt: the same rows, two plans.
        ("web_export_vision_pairs", [*_VISION, "--judgements", "100000", "--max-export-s", "120",
                                     "--max-seconds", "200"]),
        ("web_export_vision_pairs_per_task", [*_VISION, "--image-per-task", "--judgements",
                                              "100000", "--max-export-s", "120",
                                              "--max-seconds", "200"]),
        # Hindsight (two phases, four requests a loop) and pairwise at 32, interleaved twice.
        ("web_load_hindsight", [*_HINDSIGHT, "--annotators", "32", "--seconds", "20", "--warmup",
                                "3", "--ab-rounds", "2", "--max-seconds", "480"]),
        ("web_export_hindsight_pairs", [*_HS_EXPORT, "pairs", "--judgements", "100000",
                                        "--max-export-s", "240", "--max-seconds", "330"]),
        ("web_export_hindsight_hindsight", [*_HS_EXPORT, "hindsight", "--judgements", "100000",
                                            "--max-export-s", "240", "--max-seconds", "330"]),
    ],
}  # fmt: skip
_MODULES = {
    "web_load": ("web_load", web_load),
    "web_export": ("web_export", web_export),
    "image_import": ("image_import", image_import),
    "web_load_kinds": ("web_load", web_load),
    "web_export_vision_pairs": ("web_export", web_export),
    "web_export_vision_pairs_per_task": ("web_export", web_export),
    "web_load_hindsight": ("web_load", web_load),
    "web_export_hindsight_pairs": ("web_export", web_export),
    "web_export_hindsight_hindsight": ("web_export", web_export),
}


def _plan(args: argparse.Namespace) -> list[tuple[str, str, Any, list[str]]]:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = []
    for key, extra in PLANS[mode]:
        extra = [args.workers or "sync" if x == "{workers}" else x for x in extra]
        if args.smoke and args.workers and key == "web_load":
            extra += ["--workers", args.workers]
        name, module = _MODULES[key]
        plan.append((key, name, module, extra))
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.run_all",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short run: 5 s per N, 20,000 tasks, 100,000 judgements to export",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: each bench's smoke size (checks they all run)",
    )
    p.add_argument("--out", type=Path, default=common.REPO / "bench" / "out" / "web.json")
    p.add_argument(
        "--workers", default=None, help="web_load server configs, e.g. sync,gthread (default: sync)"
    )
    p.add_argument("--max-seconds", type=float, default=1500, help="hard cap for everything")
    common.add_record_args(p)
    args = p.parse_args(argv)

    started = time.monotonic()
    plan = _plan(args)
    results: dict = {"quick": args.quick, "smoke": args.smoke}
    failures = []
    with (
        common.RunMeter(db=common.BENCH_DB) as whole,
        common.deadline_guard(args.max_seconds, "run_all"),
    ):
        for key, name, module, extra in plan:
            print(f"== {key}: {name} {' '.join(extra)}", flush=True)
            t0 = time.monotonic()
            figures: dict = {}
            with common.RunMeter(db=common.BENCH_DB) as meter:
                try:
                    ns, extra = module.parse(extra)
                    with common.deadline_guard(ns.max_seconds, key):
                        module.run(ns, figures)
                except Exception as exc:  # noqa: BLE001 - keep what finished, go on to the next bench
                    failures.append(f"{key}: {type(exc).__name__}: {exc}")
                    figures["error"] = str(exc)
                    common.drop_db()
            figures["wall_s"] = round(time.monotonic() - t0, 1)
            # `name` is the module (the command that reproduces it); `key` the file it is saved
            # as: web_load.json keeps the README's pairwise figures, the kinds' A/B its own file.
            results[key] = common.record(
                name,
                extra,
                meter,
                figures,
                json_path=None,
                save=False,
                smoke=args.smoke,
                run_by="bench.run_all " + " ".join(argv if argv is not None else sys.argv[1:]),
            )
            if args.save_result and "error" not in figures:
                common.save_result(key, results[key], smoke=args.smoke)
            # deadline_guard nesting: re-arm the outer cap for what is left of it
            common.signal_alarm_left(args.max_seconds - (time.monotonic() - started))

    print()
    if results.get("web_load", {}).get("runs"):
        print("=" * 30, "web_load", "=" * 30)
        print(web_load.report(results["web_load"]))
    if "export" in results.get("web_export", {}):
        print("=" * 30, "web_export", "=" * 30)
        print(common.provenance_header(results["web_export"]))
        print(web_export.report(results["web_export"]))
    if results.get("image_import", {}).get("imports"):
        print("=" * 30, "image_import", "=" * 30)
        print(common.provenance_header(results["image_import"]))
        print(image_import.report(results["image_import"]))
    if results.get("web_load_kinds", {}).get("runs"):
        print("=" * 30, "web_load --kind pairwise,hallucination", "=" * 30)
        print(web_load_kinds.report(results["web_load_kinds"]))
    for key, images in (
        ("web_export_vision_pairs", "8 shared images"),
        ("web_export_vision_pairs_per_task", "--image-per-task"),
    ):
        if "export" in results.get(key, {}):
            print("=" * 30, " ".join(["web_export", *_VISION]), f"({images})", "=" * 30)
            print(common.provenance_header(results[key]))
            print(web_export.report(results[key]))
    results["failures"] = failures
    results["wall_s"] = round(time.monotonic() - started, 1)
    results = (
        common.provenance("run_all", argv if argv is not None else sys.argv[1:], whole) | results
    )
    common.write_json(args.out, results)
    print(f"\nwrote {args.out} ({results['wall_s']} s)")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
