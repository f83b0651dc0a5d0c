"""`make bench` for the web side: the annotation-loop load test and the export benchmark.

Runs bench.web_load then bench.web_export, prints their tables and writes the combined figures to
bench/out/web.json. Everything targets 127.0.0.1, uses only the throwaway database tandem_bench
(``BENCH_DB``), and stops by itself (hard cap: --max-seconds, 600 by default). Each bench's part
carries its own command, commit and idle share; --save-result copies each to
bench/results/<date>/web_load.json and web_export.json, the files the README's figures cite.

    .venv/bin/python -m bench.run_all [--quick | --smoke] [--out bench/out/web.json] [--save-result]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, web_export, web_load  # noqa: E402


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
        help="seconds, not minutes: web_load --smoke and a 2,000-judgement export (checks both run)",
    )
    p.add_argument("--out", type=Path, default=common.REPO / "bench" / "out" / "web.json")
    p.add_argument(
        "--workers", default=None, help="web_load server configs, e.g. sync,gthread (default: sync)"
    )
    p.add_argument("--max-seconds", type=float, default=600, help="hard cap for everything")
    common.add_record_args(p)
    args = p.parse_args(argv)

    started = time.monotonic()
    if args.smoke:
        load_args = ["--smoke", "--max-seconds", "150"]
        if args.workers:
            load_args += ["--workers", args.workers]
        # web_export has no --smoke of its own: the same thing through its size flags.
        export_args = ["--judgements", "2000", "--annotators", "4", "--max-export-s", "30"]
        export_args += ["--max-seconds", "120"]
    elif args.quick:
        load_args = [
            "--seconds",
            "5",
            "--warmup",
            "1",
            "--tasks",
            "20000",
            "--workers",
            args.workers or "sync",
            "--max-seconds",
            "150",
        ]
        export_args = ["--judgements", "100000", "--max-export-s", "60", "--max-seconds", "150"]
    else:
        load_args = [
            "--seconds",
            "20",
            "--warmup",
            "3",
            "--workers",
            args.workers or "sync",
            "--max-seconds",
            "250",
        ]
        export_args = ["--max-export-s", "240", "--max-seconds", "330"]

    results: dict = {"quick": args.quick, "smoke": args.smoke}
    failures = []
    with (
        common.RunMeter(db=common.BENCH_DB) as whole,
        common.deadline_guard(args.max_seconds, "run_all"),
    ):
        for name, module, extra in (
            ("web_load", web_load, load_args),
            ("web_export", web_export, export_args),
        ):
            print(f"== {name} {' '.join(extra)}", flush=True)
            t0 = time.monotonic()
            figures: dict = {}
            with common.RunMeter(db=common.BENCH_DB) as meter:
                try:
                    if module is web_load:
                        ns, extra = web_load.parse(extra)
                    else:
                        ns = module.parser().parse_args(extra)
                    with common.deadline_guard(ns.max_seconds, name):
                        module.run(ns, figures)
                except Exception as exc:  # noqa: BLE001 - keep what finished, go on to the next bench
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    figures["error"] = str(exc)
                    common.drop_db()
            figures["wall_s"] = round(time.monotonic() - t0, 1)
            results[name] = common.record(
                name,
                extra,
                meter,
                figures,
                json_path=None,
                save=args.save_result and "error" not in figures,
                smoke=args.smoke,
                run_by="bench.run_all " + " ".join(argv if argv is not None else sys.argv[1:]),
            )
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
