"""`make bench` for the web side: the annotation-loop load test and the export benchmark.

Runs bench.web_load then bench.web_export, prints their tables and writes the combined figures to
bench/out/web.json. Everything targets 127.0.0.1, uses only the throwaway database tandem_bench,
and stops by itself (hard cap: --max-seconds, 600 by default).

    .venv/bin/python -m bench.run_all [--quick] [--out bench/out/web.json]
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
    p.add_argument("--out", type=Path, default=common.REPO / "bench" / "out" / "web.json")
    p.add_argument(
        "--workers", default=None, help="web_load server configs, e.g. sync,gthread (default: sync)"
    )
    p.add_argument("--max-seconds", type=float, default=600, help="hard cap for everything")
    args = p.parse_args(argv)

    started = time.monotonic()
    if args.quick:
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

    results: dict = {"quick": args.quick, "machine": common.machine()}
    failures = []
    with common.deadline_guard(args.max_seconds, "run_all"):
        for name, module, extra in (
            ("web_load", web_load, load_args),
            ("web_export", web_export, export_args),
        ):
            print(f"== {name} {' '.join(extra)}", flush=True)
            t0 = time.monotonic()
            try:
                ns = module.parser().parse_args(extra)
                results[name] = {}
                with common.deadline_guard(ns.max_seconds, name):
                    module.run(ns, results[name])
            except Exception as exc:  # noqa: BLE001 - keep what finished, go on to the next bench
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                results[name]["error"] = str(exc)
                common.drop_db()
            results[name]["wall_s"] = round(time.monotonic() - t0, 1)
            # deadline_guard nesting: re-arm the outer cap for what is left of it
            common.signal_alarm_left(args.max_seconds - (time.monotonic() - started))

    print()
    if results.get("web_load", {}).get("runs"):
        print("=" * 30, "web_load", "=" * 30)
        print(web_load.report(results["web_load"]))
    if "export" in results.get("web_export", {}):
        print("=" * 30, "web_export", "=" * 30)
        print(web_export.report(results["web_export"]))
    results["failures"] = failures
    results["wall_s"] = round(time.monotonic() - started, 1)
    common.write_json(args.out, results)
    print(f"\nwrote {args.out} ({results['wall_s']} s)")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
