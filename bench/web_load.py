"""Annotation-loop load test: N simulated annotators against a production-like Tandem.

What it does, all on 127.0.0.1 and bounded in time:
1. drops and recreates the database ``tandem_bench`` (``BENCH_DB``) and migrates it;
2. creates a staff user, the annotators and a pairwise project with overlap 1;
3. starts ``gunicorn webapp.wsgi`` with ``webapp.settings.production`` (4 sync workers by default)
   and a Celery worker on the ``cpu`` queue (Redis database ``BENCH_BROKER``), as production runs;
4. imports 100,000 pairwise tasks through ``POST /api/v1/projects/{id}/imports`` (JSONL body):
   above TANDEM_IMPORT_INLINE_BYTES (2 MiB by default) the server answers 202 and the Celery
   worker runs the import job, which the bench polls until it is done (``--import-path inline``
   raises the limit instead, and the report says so);
5. for each N, drives N annotators (one thread and one keep-alive http.client connection each,
   the cheapest client on a 2-core box) through lease -> judgement loops for a fixed time after
   a short warm-up, and prints loops/s and p50/p95/p99 latencies;
6. checks the database for double assignments and prints the external reference figures
   (Label Studio, the bare prototype: measured elsewhere, not in this run) next to them.

The report starts with the setup it ran and the commit, the command and how idle the machine was.

    .venv/bin/python -m bench.web_load [--annotators 1,32] [--seconds 20] [--workers sync,gthread]
    .venv/bin/python -m bench.web_load --smoke      # seconds: 2 annotators x 2 s over 2,000 tasks
    .venv/bin/python -m bench.web_load --kind pairwise,hallucination   # both kinds, A/B at 32
    .venv/bin/python -m bench.web_load --kind pairwise,hindsight       # both phases per loop

``--kind`` (bench.web_load_kinds) sets up a project per kind and runs them interleaved; without
it the bench is the pairwise one above, its output unchanged.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import Server  # noqa: E402

# The report and the traffic live in their own modules; callers (run_all, web_export, the tests)
# find every name here, as before the split.
from bench.web_load_report import (  # noqa: E402, F401
    ANCHORS,
    TARGETS,
    comparison,
    external_sources,
    report,
    setup_header,
)
from bench.web_load_traffic import (  # noqa: E402, F401
    DOUBLE_SQL,
    Annotator,
    db_checks,
    drive,
    import_tasks,
    jsonl_tasks,
)

TASKS = 100_000

# The README's setup; the report prints every way a run differs from it.
README_SETUP = {
    "tasks": TASKS,
    "server": "gunicorn 4 sync workers",
    "annotators": "1,32",
    "seconds_per_run": 20.0,
}
SMOKE = ["--annotators", "1,2", "--seconds", "2", "--warmup", "0.5", "--tasks", "2000",
         "--num-workers", "2", "--import-path", "job"]  # fmt: skip


def run(args: argparse.Namespace, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fills `result` as it goes, so a caller that hits a time cap still has the finished runs."""
    if args.kind != "pairwise":
        from bench import web_load_kinds

        return web_load_kinds.run(args, result if result is not None else {})
    counts = [int(x) for x in args.annotators.split(",") if x]
    configs = [c.strip() for c in args.workers.split(",") if c.strip()]
    result = result if result is not None else {}
    inline_limit = {"auto": None, "job": "0", "inline": str(1 << 30)}[args.import_path]
    result |= {
        "setup": setup_of(args),
        "tasks": args.tasks,
        "seconds_per_run": args.seconds,
        "warmup_s": args.warmup,
        "client": "one thread + one http.client keep-alive connection per annotator, in the bench process (same 2 cores as the server)",
        "runs": [],
    }
    t0 = time.perf_counter()
    common.fresh_db()
    result["setup_db_s"] = round(time.perf_counter() - t0, 2)
    extra = {"CELERY_BROKER_URL": args.broker}
    if inline_limit:
        extra["TANDEM_IMPORT_INLINE_BYTES"] = inline_limit
    env = common.server_env(**extra)
    setup = common.setup_project(env=env, annotators=max(counts))
    project = setup["project"]
    log = common.REPO / "bench" / "out" / "web_load-worker.log"
    with common.CeleryWorker(env=env, log_path=log) as worker:
        assert worker.proc is not None
        _serve(args, result, env, setup, configs, counts, worker.proc.pid)
    result["db_final"] = db_checks(project)
    if not args.keep_db:
        common.drop_db()
    return result


def _serve(
    args: argparse.Namespace,
    result: dict[str, Any],
    env: dict[str, str],
    setup: dict[str, Any],
    configs: list[str],
    counts: list[int],
    worker_pid: int,
) -> None:
    project = setup["project"]
    for i, config in enumerate(configs):
        kind, _, threads = config.partition("x")
        server = Server(
            env=env,
            workers=args.num_workers,
            worker_class=kind,
            threads=int(threads or args.threads) if kind == "gthread" else 1,
        )
        with server:
            print(f"[web_load] {server.description} on port {server.port}", flush=True)
            staff = common.token_for(server.port, setup["staff"])
            if i == 0:
                with common.CpuMeter(server.proc.pid, worker_pid=worker_pid) as cpu:
                    result["import"] = import_tasks(server.port, staff, project, args.tasks)
                result["import"]["cpu_cores_used"] = cpu.result
                print(
                    f"[web_load] imported {args.tasks:,} tasks in {result['import']['seconds']} s "
                    f"({result['import']['path']})",
                    flush=True,
                )
            tokens = _tokens(server.port, setup["annotators"])
            for n in counts:
                r = drive(
                    server.port, tokens, project, n, args.seconds, args.warmup, server.proc.pid
                )
                r["server"] = server.description
                r["db"] = db_checks(project)
                result["runs"].append(r)
                print(
                    f"[web_load] {server.description}, N={n}: {r['loops_per_s']} loops/s, "
                    f"lease p99 {r['lease_ms']['p99']} ms, errors {r['errors']}, "
                    f"double assignments {r['db']['double_assignments']}",
                    flush=True,
                )


def _tokens(port: int, usernames: list[str]) -> list[str]:
    # Password checks are deliberately slow (PBKDF2): fetch the tokens in parallel.
    tokens: list[str | None] = [None] * len(usernames)

    def fetch(i: int) -> None:
        tokens[i] = common.token_for(port, usernames[i])

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(usernames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if any(t is None for t in tokens):
        raise RuntimeError("could not get a token for every annotator")
    return tokens  # type: ignore[return-value]


def setup_of(args: argparse.Namespace) -> dict[str, Any]:
    """What this run sets up, in the README's terms, and every way it differs from the README's."""
    configs = [c.strip() for c in args.workers.split(",") if c.strip()]
    servers = []
    for config in configs:
        kind, _, threads = config.partition("x")
        if kind == "gthread":
            servers.append(
                f"gunicorn {args.num_workers} gthread workers x {int(threads or args.threads)} threads"
            )
        else:
            servers.append(f"gunicorn {args.num_workers} {kind} workers")
    setup = {
        "tasks": args.tasks,
        "data": "synthetic JSONL built by bench.web_load.jsonl_tasks (a 2-message chat, two "
        "answers of about 140 characters, metadata), imported over REST",
        "import_path": args.import_path,
        "import_note": {
            "inline": "TANDEM_IMPORT_INLINE_BYTES raised to 1 GiB: the import runs inside the "
            "request, NOT the production path",
            "job": "TANDEM_IMPORT_INLINE_BYTES lowered to 0: even a small body runs as a Celery "
            "job, the path a large import takes in production",
            "auto": "production path: above TANDEM_IMPORT_INLINE_BYTES (2 MiB) the server answers "
            "202 and a Celery worker runs the job; smaller bodies import inline",
        }[args.import_path],
        "servers": servers,
        "celery_worker": "celery -A webapp worker -Q cpu -P solo (Redis broker)",
        "annotators": args.annotators,
        "seconds_per_run": args.seconds,
        "warmup_s": args.warmup,
        "settings": "webapp.settings.production, throttles lifted (TANDEM_THROTTLE_*=100000/min)",
        "database": f"Postgres, fresh database {common.BENCH_DB}",
    }
    differences = []
    if args.tasks != README_SETUP["tasks"]:
        differences.append(f"{args.tasks:,} tasks, not {README_SETUP['tasks']:,}")
    if servers != [README_SETUP["server"]]:
        differences.append(f"server {', '.join(servers)}, not {README_SETUP['server']}")
    if args.import_path == "inline":
        differences.append("import inline (raised TANDEM_IMPORT_INLINE_BYTES), not the job path")
    elif args.import_path == "job":
        differences.append("TANDEM_IMPORT_INLINE_BYTES lowered to 0 (job path for any size)")
    elif args.tasks < 5000:
        # A small body is under the inline limit: production imports it inline too.
        differences.append("a body this small imports inline (production does the same)")
    if args.annotators != README_SETUP["annotators"]:
        differences.append(f"annotators {args.annotators}, not {README_SETUP['annotators']}")
    if args.seconds != README_SETUP["seconds_per_run"]:
        differences.append(f"{args.seconds:g} s per run, not {README_SETUP['seconds_per_run']:g}")
    setup["differences_from_readme"] = differences
    return setup


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.web_load",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--annotators",
        default=None,
        help="comma-separated N values (default 1,32; 32 with --kind)",
    )
    p.add_argument(
        "--seconds", type=float, default=20.0, help="measured seconds per N (default 20)"
    )
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per N (default 3)")
    p.add_argument("--tasks", type=int, default=TASKS, help="tasks to import (default 100000)")
    p.add_argument(
        "--workers",
        default="sync",
        help="server configs to try, comma-separated: sync, gthread, gthreadx8 (default sync)",
    )
    p.add_argument(
        "--num-workers", type=int, default=4, help="gunicorn worker processes (default 4)"
    )
    p.add_argument("--threads", type=int, default=4, help="threads per gthread worker (default 4)")
    p.add_argument(
        "--import-path",
        choices=["auto", "job", "inline"],
        default="auto",
        help="auto: as production (a body over TANDEM_IMPORT_INLINE_BYTES, 2 MiB, runs as a "
        "Celery job); job: limit 0, so even a small body takes the job path; inline: limit "
        "1 GiB, the import runs inside the request (NOT the production path; the report says so)",
    )
    p.add_argument(
        "--broker",
        default=common.BENCH_BROKER,
        help="Redis database of the Celery worker; flushed first (default $BENCH_BROKER or %(default)s)",
    )
    p.add_argument(
        "--kind",
        default="pairwise",
        help="pairwise (the default, as the README's figures), hallucination, hindsight, or "
        "several comma-separated: one project per kind, the runs interleaved (see "
        "bench.web_load_kinds; hindsight: bench.web_load_hindsight)",
    )
    p.add_argument(
        "--ab-rounds",
        type=int,
        default=2,
        help="with --kind: how many times each kind runs per N, interleaved (default 2)",
    )
    p.add_argument(
        "--image-fetch",
        choices=["browser", "none", "both"],
        default="both",
        help="with --kind hallucination: annotators fetch each leased image as a browser would "
        "(browser), never (none: the lease-and-submit loop alone), or both, as two variants "
        "interleaved (default both)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=1000,
        help="with --kind hallucination: distinct images uploaded once (default 1000)",
    )
    p.add_argument("--keep-db", action="store_true", help="leave tandem_bench in place for EXPLAIN")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--max-seconds", type=float, default=480, help="hard cap for the whole run")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, not minutes: " + " ".join(SMOKE) + " (checks the bench still runs)",
    )
    common.add_record_args(p)
    return p


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The arguments, with --smoke expanded into its sizes (later flags still win)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    effective = (SMOKE + argv) if "--smoke" in argv else argv
    args = parser().parse_args(effective)
    if args.kind != "pairwise" and "--smoke" in argv:
        # 50 images and one round: the smoke checks the kinds' path runs, in seconds.
        effective = SMOKE + ["--images", "50", "--ab-rounds", "1"] + argv
        args = parser().parse_args(effective)
    if args.annotators is None:
        args.annotators = "1,32" if args.kind == "pairwise" else "32"
    return args, effective


def main(argv: list[str] | None = None) -> int:
    args, effective = parse(argv)
    result: dict[str, Any] = {}
    with common.RunMeter(db=common.BENCH_DB) as meter:
        try:
            with common.deadline_guard(args.max_seconds, "web_load"):
                run(args, result)
        except TimeoutError as exc:
            result["error"] = str(exc)
            print(f"!! {exc}: printing the runs that finished", flush=True)
            common.drop_db()
    kinds = args.kind != "pairwise"
    result = common.record(
        "web_load",
        effective,
        meter,
        result,
        json_path=args.json,
        save=args.save_result and not kinds,
        smoke=args.smoke,
    )
    print()
    if kinds:
        from bench import web_load_kinds

        # Its own file: web_load.json holds the README's pairwise figures; the hindsight A/B
        # has its own too, so neither kind's run overwrites the other's.
        if args.save_result:
            name = "web_load_hindsight" if "hindsight" in args.kind else "web_load_kinds"
            common.save_result(name, result, smoke=args.smoke)
        print(web_load_kinds.report(result))
        return 1 if result.get("error") else 0
    print(report(result))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
