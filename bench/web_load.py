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
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import Client, Server, percentile, table  # noqa: E402

TASKS = 100_000

# External reference figures: other systems, measured by someone else on another day. They are
# printed apart from this run's figures, with where they come from, never as if measured here.
_ISSUE_2 = (
    "issue 2 (the project brief): measured by its author on the project's 2-core machine with "
    "100,000 tasks; not rerun by this script"
)
ANCHORS = {
    "label_studio_postgres": {
        "system": "Label Studio 1.23, Postgres",
        "source": _ISSUE_2,
        "measured_on": "2026-11-27",
        "n": 32,
        "loops_s": 7.8,
        "lease_p99_s": 3.3,
    },
    "label_studio_sqlite": {
        "system": "Label Studio 1.23, SQLite",
        "source": _ISSUE_2,
        "measured_on": "2026-11-27",
        "loops_s_1": 4.0,
        "loops_s_32": 2.0,
        "lease_p99_s": 27.0,
        "double_assignments_per_min": 40,
    },
    "prototype": {
        "system": "bare prototype (DRF token auth, one SKIP LOCKED query, gunicorn 4 workers, Postgres)",
        "source": _ISSUE_2,
        "measured_on": "2026-11-27",
        "loops_s_1": 103.0,
        "lease_p99_s_1": 0.006,
        "loops_s_32": 167.0,
        "lease_p99_s_32": 0.154,
    },
}
# The README's setup; the report prints every way a run differs from it.
README_SETUP = {
    "tasks": TASKS,
    "server": "gunicorn 4 sync workers",
    "annotators": "1,32",
    "seconds_per_run": 20.0,
}
SMOKE = ["--annotators", "1,2", "--seconds", "2", "--warmup", "0.5", "--tasks", "2000",
         "--num-workers", "2", "--import-path", "job"]  # fmt: skip
TARGETS = {
    "loops_s_32": 100.0,
    "lease_p99_s_32": 0.300,
    "lease_p99_s_1": 0.015,
    "double_assignments": 0,
    "import_s": 60.0,
}


def jsonl_tasks(n: int) -> bytes:
    """n pairwise tasks of realistic size (a short chat, two answers of a few sentences)."""
    out = []
    filler = (
        "The short answer is that it depends on the details, so here is a careful walk through "
        "the steps with one worked example. "
    )
    for i in range(n):
        line: dict[str, Any] = {
            "id": f"bench-{i}",
            "prompt": [
                {"role": "system", "content": "Be helpful and brief."},
                {
                    "role": "user",
                    "content": f"Question {i}: how would you compute {i} * 17, step by step?",
                },
            ],
            "responses": [
                f"{filler}{i} * 17 = {i * 17}.",
                {"text": f"{filler}Probably {i * 17 + 1}.", "model": "policy-r0"},
            ],
            "metadata": {"source": "bench", "n": i},
        }
        out.append(json.dumps(line))
    return ("\n".join(out) + "\n").encode()


def import_tasks(
    port: int, token: str, project: int, n: int, *, timeout: float = 300
) -> dict[str, Any]:
    """POSTs the JSONL and, when the server queued it (202), polls the job until it is done:
    the time is from the first byte sent to the tasks being in the database either way."""
    body = jsonl_tasks(n)
    client = Client(port, token, timeout=timeout)
    t0 = time.perf_counter()
    status, payload = _post_raw(client, f"/api/v1/projects/{project}/imports", body)
    request_s = time.perf_counter() - t0
    path = "inline" if status == 201 else "job"
    if status == 202:
        poller = Client(port, token, timeout=60)
        deadline = t0 + timeout
        while payload.get("status") not in ("done", "failed"):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"import job not done after {timeout:.0f} s: {payload}")
            time.sleep(0.2)
            status, payload = poller.call("GET", f"/api/v1/imports/{payload['import_id']}")
            if status != 200:
                raise RuntimeError(f"import job status: {status} {str(payload)[:500]}")
        poller.close()
    seconds = time.perf_counter() - t0
    if payload.get("status") != "done" or payload.get("created") != n:
        raise RuntimeError(f"import failed: {status} {str(payload)[:500]}")
    return {
        "tasks": n,
        "bytes": len(body),
        "path": path,
        "request_s": round(request_s, 3),
        "seconds": round(seconds, 3),
        "tasks_per_s": round(n / seconds),
        "status": payload["status"],
    }


def _post_raw(client: Client, path: str, body: bytes) -> tuple[int, Any]:
    conn = client.conn
    headers = dict(client.headers, **{"Content-Type": "application/x-ndjson"})
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw)


class Annotator(threading.Thread):
    def __init__(
        self,
        port: int,
        token: str,
        project: int,
        start_evt: threading.Event,
        window: tuple[float, float],
    ):
        super().__init__(daemon=True)
        self.client = Client(port, token, timeout=60)
        self.project = project
        self.start_evt = start_evt
        self.window = window
        self.lease_lat: list[float] = []
        self.judge_lat: list[float] = []
        self.loops = 0
        self.errors: Counter = Counter()
        self.empty = 0
        self.tasks: list[int] = []

    def run(self) -> None:
        begin, end = self.window
        lease_path = f"/api/v1/projects/{self.project}/assignments"
        answer = {"choice": "A", "strength": 2}
        perf = time.perf_counter
        self.start_evt.wait()
        while True:
            t0 = perf()
            if t0 >= end:
                break
            counted = t0 >= begin
            try:
                status, body = self.client.call("POST", lease_path)
            except Exception as exc:  # noqa: BLE001 - a bench counts every failure
                self.errors[f"lease {type(exc).__name__}"] += 1
                time.sleep(0.01)
                continue
            t1 = perf()
            if counted:
                self.lease_lat.append(t1 - t0)
            if status == 204:
                self.empty += 1
                time.sleep(0.05)
                continue
            if status != 201:
                self.errors[f"lease {status}"] += 1
                time.sleep(0.01)
                continue
            self.tasks.append(body["task"]["id"])
            try:
                status, _ = self.client.call(
                    "POST",
                    f"/api/v1/assignments/{body['id']}/judgement",
                    answer,
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
            except Exception as exc:  # noqa: BLE001
                self.errors[f"judgement {type(exc).__name__}"] += 1
                continue
            t2 = perf()
            if status != 201:
                self.errors[f"judgement {status}"] += 1
                continue
            if counted:
                self.judge_lat.append(t2 - t1)
                if t2 <= end:
                    self.loops += 1
        self.client.close()


def drive(
    port: int,
    tokens: list[str],
    project: int,
    n: int,
    seconds: float,
    warmup: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    start_evt = threading.Event()
    t_start = time.perf_counter() + 0.2
    window = (t_start + warmup, t_start + warmup + seconds)
    threads = [Annotator(port, tokens[i], project, start_evt, window) for i in range(n)]
    for t in threads:
        t.start()
    while time.perf_counter() < t_start:
        time.sleep(0.01)
    start_evt.set()
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    with common.CpuMeter(server_pid) as cpu:
        time.sleep(max(0.0, window[1] - time.perf_counter()))
    for t in threads:
        t.join(timeout=warmup + seconds + 90)
    lease = [x for t in threads for x in t.lease_lat]
    judge = [x for t in threads for x in t.judge_lat]
    loops = sum(t.loops for t in threads)
    errors: Counter = Counter()
    for t in threads:
        errors.update(t.errors)
    seen: Counter = Counter(task for t in threads for task in t.tasks)
    return {
        "annotators": n,
        "seconds": seconds,
        "loops": loops,
        "loops_per_s": round(loops / seconds, 1),
        "lease_ms": _pcts(lease),
        "judgement_ms": _pcts(judge),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "empty_queue": sum(t.empty for t in threads),
        "client_seen_twice": sum(1 for c in seen.values() if c > 1),
        "still_running": sum(1 for t in threads if t.is_alive()),
        "cpu_cores_used": cpu.result,
    } | _cpu_cost(cpu.result, loops, seconds)


def _cpu_cost(cpu: dict[str, Any], loops: int, seconds: float) -> dict[str, Any]:
    """CPU spent per loop by this bench (client + gunicorn + its Postgres backends). On a box shared
    with other work this is the load-independent figure; the projection assumes all cores are ours
    and the cost per loop stays the same (it is an estimate, not a measurement)."""
    ours = cpu["bench_client"] + cpu["gunicorn"] + cpu["postgres_bench"]
    if not loops or not ours:
        return {"cpu_ms_per_loop": None, "projected_loops_per_s_idle_box": None}
    per_loop = ours * seconds / loops
    server = (cpu["gunicorn"] + cpu["postgres_bench"]) * seconds / loops
    return {
        "cpu_ms_per_loop": round(per_loop * 1000, 1),
        "server_cpu_ms_per_loop": round(server * 1000, 1),
        "projected_loops_per_s_idle_box": round(cpu["cores"] / per_loop, 1),
    }


def _pcts(values: list[float]) -> dict[str, float | None]:
    return {
        f"p{q}": (None if percentile(values, q) is None else round(percentile(values, q) * 1000, 2))
        for q in (50, 95, 99)
    } | {"max": round(max(values) * 1000, 2) if values else None, "count": len(values)}


DOUBLE_SQL = {
    # more judgements than the task's overlap
    "over_judged_tasks": """
        SELECT count(*) FROM (
          SELECT j.task_id FROM annotation_judgement j JOIN annotation_task t ON t.id = j.task_id
          WHERE j.project_id = %(p)s GROUP BY j.task_id, t.overlap HAVING count(*) > t.overlap) x""",
    # the same (task, annotator) twice, in assignments or judgements
    "same_annotator_twice": """
        SELECT (SELECT count(*) FROM (SELECT 1 FROM annotation_assignment WHERE project_id = %(p)s
                GROUP BY task_id, annotator_id HAVING count(*) > 1) a)
             + (SELECT count(*) FROM (SELECT 1 FROM annotation_judgement WHERE project_id = %(p)s
                GROUP BY task_id, annotator_id HAVING count(*) > 1) b)""",
    # more leases alive at the same moment than the overlap allows (overlap 1: any two that overlap)
    "handed_out_twice_at_once": """
        SELECT count(DISTINCT a.task_id) FROM annotation_assignment a
        JOIN annotation_assignment b ON b.task_id = a.task_id AND b.id > a.id
        JOIN annotation_task t ON t.id = a.task_id AND t.overlap = 1
        WHERE a.project_id = %(p)s AND a.status <> 'skipped' AND b.status <> 'skipped'
          AND a.leased_at < coalesce(b.finished_at, b.expires_at)
          AND b.leased_at < coalesce(a.finished_at, a.expires_at)""",
    # counters on the task row that disagree with the rows they count
    "counter_drift": """
        SELECT count(*) FROM annotation_task t
        LEFT JOIN (SELECT task_id, count(*) c FROM annotation_judgement WHERE project_id = %(p)s
                   GROUP BY task_id) j ON j.task_id = t.id
        WHERE t.project_id = %(p)s AND t.judgement_count <> coalesce(j.c, 0)""",
}


def db_checks(project: int) -> dict[str, int]:
    with common.pg_connect() as conn:
        out = {
            name: conn.execute(sql, {"p": project}).fetchone()[0]
            for name, sql in DOUBLE_SQL.items()
        }
        out["judgements"] = conn.execute(
            "SELECT count(*) FROM annotation_judgement WHERE project_id = %s", [project]
        ).fetchone()[0]
        out["assignments"] = conn.execute(
            "SELECT count(*) FROM annotation_assignment WHERE project_id = %s", [project]
        ).fetchone()[0]
    out["double_assignments"] = (
        out["over_judged_tasks"] + out["same_annotator_twice"] + out["handed_out_twice_at_once"]
    )
    return out


def run(args: argparse.Namespace, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fills `result` as it goes, so a caller that hits a time cap still has the finished runs."""
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


def setup_header(result: dict[str, Any]) -> str:
    s = result.get("setup") or {}
    lines = []
    if result.get("command"):
        lines.append(common.provenance_header(result))
    lines.append(
        f"Setup: {s.get('tasks', 0):,} tasks ({s.get('data')}); import path: {s.get('import_note')}; "
        f"servers: {', '.join(s.get('servers', []))}; {s.get('celery_worker')}; annotators "
        f"{s.get('annotators')}, {s.get('seconds_per_run')} s per run after {s.get('warmup_s')} s "
        f"warm-up; {s.get('settings')}; {s.get('database')}"
    )
    diff = s.get("differences_from_readme")
    lines.append(
        "Differs from the README's setup: " + "; ".join(diff)
        if diff
        else "Same setup as the README states."
    )
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    lines = [setup_header(result), ""]
    imp = result.get("import", {})
    if result.get("error"):
        lines.append(f"!! INCOMPLETE: {result['error']}")
    lines.append(
        f"Import: {imp.get('tasks', 0):,} pairwise tasks ({imp.get('bytes', 0) / 1e6:.1f} MB JSONL) "
        f"through POST /imports ({imp.get('path')}: request {imp.get('request_s')} s) in "
        f"{imp.get('seconds')} s ({imp.get('tasks_per_s', 0):,} tasks/s) "
        f"- target well under 60 s: {common.verdict((imp.get('seconds') or 1e9) < TARGETS['import_s'])}"
    )
    c = imp.get("cpu_cores_used")
    if c:
        lines.append(
            f"  CPU during the import (cores): gunicorn {c['gunicorn']}, celery worker "
            f"{c.get('celery_worker', '-')}, postgres {c['postgres_bench']}, "
            f"OTHER processes {c['other']} (load average {c['loadavg_start']} -> {c['loadavg_end']})"
        )
    rows = []
    for r in result.get("runs", []):
        rows.append(
            [
                r["server"],
                r["annotators"],
                r["loops_per_s"],
                r["lease_ms"]["p50"],
                r["lease_ms"]["p95"],
                r["lease_ms"]["p99"],
                r["judgement_ms"]["p50"],
                r["judgement_ms"]["p95"],
                r["judgement_ms"]["p99"],
                r["errors"],
                r["db"]["double_assignments"],
                r["client_seen_twice"],
                _cpu(r.get("cpu_cores_used")),
                r.get("server_cpu_ms_per_loop"),
                r.get("cpu_ms_per_loop"),
                r.get("projected_loops_per_s_idle_box"),
            ]
        )
    lines.append("")
    lines.append(
        table(
            [
                "server",
                "N",
                "loops/s",
                "lease p50",
                "p95",
                "p99 ms",
                "judge p50",
                "p95",
                "p99 ms",
                "errors",
                "double (db)",
                "seen twice (client)",
                "cores: client/gunicorn/pg/OTHER",
                "server CPU ms/loop",
                "all CPU ms/loop",
                "projected loops/s if idle",
            ],
            rows,
            title=f"Annotation loop, {result.get('seconds_per_run')} s per run after {result.get('warmup_s')} s warm-up "
            f"(client: {result.get('client')})",
        )
    )
    lines.append(
        "cores = CPU used during the measured window, in cores of this box; OTHER is work outside "
        "this bench (a shared machine). 'projected' = cores / CPU-per-loop: an estimate for an idle box."
    )
    final = result.get("db_final", {})
    lines.append(
        f"DB after all runs: {final.get('judgements', 0):,} judgements, {final.get('assignments', 0):,} assignments; "
        f"over-judged tasks {final.get('over_judged_tasks')}, same (task, annotator) twice "
        f"{final.get('same_annotator_twice')}, leased to two at once {final.get('handed_out_twice_at_once')}, "
        f"counter drift {final.get('counter_drift')}"
    )
    lines.append("")
    lines.append(comparison(result))
    return "\n".join(lines)


def _cpu(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    return f"{c['bench_client']}/{c['gunicorn']}/{c['postgres_bench']}/{c['other']}"


def _best(result: dict[str, Any], n: int, server: str | None = None) -> dict[str, Any] | None:
    runs = [
        r
        for r in result["runs"]
        if r["annotators"] == n and (server is None or r["server"] == server)
    ]
    return runs[0] if runs else None


def comparison(result: dict[str, Any]) -> str:
    """This run against the targets, then, apart, the external reference figures with their source."""
    a = ANCHORS
    out = []
    servers = list(dict.fromkeys(r["server"] for r in result.get("runs", [])))
    for server in servers:
        one, many = _best(result, 1, server), _best(result, 32, server)
        ours, ext = [], []
        if many:
            p99 = many["lease_ms"]["p99"] / 1000 if many["lease_ms"]["p99"] is not None else None
            ours.append(
                [
                    "loops/s @32",
                    many["loops_per_s"],
                    f">= {TARGETS['loops_s_32']:.0f}",
                    common.verdict(many["loops_per_s"] >= TARGETS["loops_s_32"]),
                ]
            )
            ours.append(
                [
                    "lease p99 @32 (ms)",
                    many["lease_ms"]["p99"],
                    f"<= {TARGETS['lease_p99_s_32'] * 1000:.0f}",
                    common.verdict(p99 is not None and p99 <= TARGETS["lease_p99_s_32"]),
                ]
            )
            ours.append(
                [
                    "double assignments",
                    many["db"]["double_assignments"],
                    "0",
                    common.verdict(
                        many["db"]["double_assignments"] == 0 and many["client_seen_twice"] == 0
                    ),
                ]
            )
            ext.append(
                [
                    "loops/s @32",
                    many["loops_per_s"],
                    a["label_studio_postgres"]["loops_s"],
                    a["label_studio_sqlite"]["loops_s_32"],
                    a["prototype"]["loops_s_32"],
                    common.ratio(many["loops_per_s"], a["label_studio_postgres"]["loops_s"]),
                ]
            )
            ext.append(
                [
                    "lease p99 @32 (ms)",
                    many["lease_ms"]["p99"],
                    a["label_studio_postgres"]["lease_p99_s"] * 1000,
                    a["label_studio_sqlite"]["lease_p99_s"] * 1000,
                    a["prototype"]["lease_p99_s_32"] * 1000,
                    common.ratio(
                        p99, a["label_studio_postgres"]["lease_p99_s"], lower_is_better=True
                    ),
                ]
            )
            ext.append(
                [
                    "double assignments",
                    many["db"]["double_assignments"],
                    "-",
                    f"{a['label_studio_sqlite']['double_assignments_per_min']}/min",
                    "-",
                    "-",
                ]
            )
        if one:
            p99 = one["lease_ms"]["p99"] / 1000 if one["lease_ms"]["p99"] is not None else None
            ours.append(["loops/s @1", one["loops_per_s"], "-", "-"])
            ours.append(
                [
                    "lease p99 @1 (ms)",
                    one["lease_ms"]["p99"],
                    f"<= {TARGETS['lease_p99_s_1'] * 1000:.0f}",
                    common.verdict(p99 is not None and p99 <= TARGETS["lease_p99_s_1"]),
                ]
            )
            ext.append(
                [
                    "loops/s @1",
                    one["loops_per_s"],
                    "-",
                    a["label_studio_sqlite"]["loops_s_1"],
                    a["prototype"]["loops_s_1"],
                    common.ratio(one["loops_per_s"], a["label_studio_sqlite"]["loops_s_1"])
                    + " (vs LS sqlite)",
                ]
            )
            ext.append(
                [
                    "lease p99 @1 (ms)",
                    one["lease_ms"]["p99"],
                    "-",
                    "-",
                    a["prototype"]["lease_p99_s_1"] * 1000,
                    "-",
                ]
            )
        if ours:
            out.append(
                table(
                    ["figure", "Tandem (this run)", "target", "verdict"],
                    ours,
                    title=f"This run against the targets ({server}):",
                )
            )
            out.append("")
        if ext:
            out.append(
                table(
                    [
                        "figure",
                        "Tandem (this run)",
                        "LS 1.23 pg (external)",
                        "LS sqlite (external)",
                        "prototype (external)",
                        "Tandem vs LS",
                    ],
                    ext,
                    title=f"External reference (not measured in this run; {server} for Tandem):",
                )
            )
            out.append("")
    if servers:
        out.append(external_sources())
    return "\n".join(out)


def external_sources(anchors: dict[str, dict[str, Any]] | None = None) -> str:
    """Where each external figure comes from; `anchors` defaults to this bench's (web_export
    passes its own)."""
    lines = ["External reference figures, where they come from (not measured by this script):"]
    for anchor in (ANCHORS if anchors is None else anchors).values():
        lines.append(
            f"  - {anchor['system']}: measured on {anchor['measured_on']}; {anchor['source']}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.web_load",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--annotators", default="1,32", help="comma-separated N values (default 1,32)")
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
    return parser().parse_args(effective), effective


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
    result = common.record(
        "web_load",
        effective,
        meter,
        result,
        json_path=args.json,
        save=args.save_result,
        smoke=args.smoke,
    )
    print()
    print(report(result))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
