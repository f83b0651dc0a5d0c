"""Export benchmark: stream 1,000,000 judgements through the REST export of a production-like Tandem.

What it does, all on 127.0.0.1 and bounded in time:
1. drops and recreates the database ``tandem_bench``, migrates it, and creates a staff user,
   the annotators and a pairwise project through the services;
2. writes the judgements straight into the database with set-based SQL (prompts, responses, tasks,
   task slots, submitted assignments, judgements): valid rows matching the models, FK triggers
   off for the load only; commit_seq takes increasing values below the current transaction id
   (several judgements share one value: there are fewer xids than rows on a fresh cluster);
3. starts ``gunicorn webapp.wsgi`` (production settings, ONE sync worker so its memory is clear),
   streams ``GET /api/v1/projects/{id}/export?shape=pairs`` with a client that reads 64 KiB chunks
   and counts lines, and samples the worker's RSS all along;
4. checks exactness: rows == decisive (A/B) judgements, no judgement twice, and a second export
   with ``since=<the last line's cursor>`` returns 0 rows.

The report starts with the commit, the command and how idle the machine was; the figures of
other systems (Label Studio, the bare prototype: measured elsewhere, not in this run) are printed
apart, with their source and date.

    .venv/bin/python -m bench.web_export [--judgements 1000000] [--overlap 2] [--save-result]
    .venv/bin/python -m bench.web_export --smoke    # seconds: 2,000 judgements, 4 annotators
    .venv/bin/python -m bench.web_export --kind hallucination [--shape vision_pairs]  # 100,000

``--kind hallucination``: a hallucination project's judgements instead (bench.web_export_vision).
``--kind hindsight [--shape pairs|hindsight]``: a hindsight project's finished assignments, two
rows each (bench.web_export_hindsight); ``--judgements`` then counts assignments (100,000).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, web_export_hindsight, web_export_vision  # noqa: E402
from bench.common import Server  # noqa: E402

# The report lives in its own module; run_all and the tests find it here, as before the split.
from bench.web_export_report import ANCHORS, TARGETS, comparison, report  # noqa: E402, F401

# The default shape of each kind's export bench.
SHAPES = {"pairwise": "pairs", "hallucination": "vision_pairs", "hindsight": "pairs"}
# The shapes each kind's bench measures (it knows how many rows each must export).
ALLOWED = {
    "pairwise": ["pairs"],
    "hallucination": sorted(web_export_vision.EXPECTED_ROWS),
    "hindsight": sorted(web_export_hindsight.EXPECTED_ROWS),
}
SMOKE = ["--judgements", "2000", "--annotators", "4", "--max-export-s", "30",
         "--max-seconds", "120"]  # fmt: skip


def build_data(
    project: int, annotator_ids: list[int], judgements: int, overlap: int, tie_every: int
) -> dict[str, Any]:
    """Writes `judgements` judgements on judgements/overlap tasks with set-based SQL."""
    if judgements % overlap:
        raise SystemExit("--judgements must be a multiple of --overlap")
    tasks = judgements // overlap
    n_ann = len(annotator_ids)
    if n_ann < overlap:
        raise SystemExit("need at least `overlap` annotators")
    first = annotator_ids[0]
    if annotator_ids != list(range(first, first + n_ann)):
        raise SystemExit("expected consecutive annotator ids")
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    with common.pg_connect(autocommit=True) as conn:
        xid = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])
        seq_values = max(1, min(judgements, xid - 100))
        params = {
            "p": project,
            "t": tasks,
            "j": judgements,
            "o": overlap,
            "a": n_ann,
            "u0": first,
            "s": seq_values,
            "tie": tie_every,
        }
        statements = {
            "prompts": """
                INSERT INTO annotation_prompt (id, project_id, messages, external_id, metadata, image,
                                               context, split, created_at)
                SELECT g, %(p)s,
                       jsonb_build_array(
                         jsonb_build_object('role', 'system', 'content', 'Be helpful and brief.'),
                         jsonb_build_object('role', 'user', 'content',
                           'Question ' || g || ': how would you compute ' || g || ' * 17, step by step?')),
                       'bench-' || g, jsonb_build_object('source', 'bench', 'n', g), '', '{}', 'train', now()
                FROM generate_series(1, %(t)s) g""",
            "responses": """
                INSERT INTO annotation_response (id, prompt_id, text, model_name, created_at)
                SELECT r, (r + 1) / 2,
                       'The short answer is that it depends on the details, so here is a careful walk '
                       || 'through the steps with one worked example. ' || ((r + 1) / 2) || ' * 17 = '
                       || (((r + 1) / 2) * 17 + (r + 1) %% 2) || '.',
                       CASE WHEN r %% 2 = 0 THEN 'policy-r0' ELSE '' END, now()
                FROM generate_series(1, 2 * %(t)s) r""",
            "tasks": """
                INSERT INTO annotation_task (id, project_id, prompt_id, kind, round, priority, overlap,
                    judgement_count, live_leases, next_lease_expiry, is_complete, is_gold, gold_answer,
                    purpose, created_at)
                SELECT g, %(p)s, g, 'pairwise', 0, 0.0, %(o)s, %(o)s, 0, NULL, true, false, NULL, 'label', now()
                FROM generate_series(1, %(t)s) g""",
            "task_slots": """
                INSERT INTO annotation_taskresponse (task_id, response_id, position)
                SELECT (r + 1) / 2, r, (r + 1) %% 2 FROM generate_series(1, 2 * %(t)s) r""",
            "assignments": """
                INSERT INTO annotation_assignment (id, task_id, annotator_id, project_id, status,
                                                   leased_at, expires_at, finished_at)
                SELECT j, (j - 1) / %(o)s + 1, %(u0)s + (((j - 1) / %(o)s) + (j - 1) %% %(o)s) %% %(a)s,
                       %(p)s, 'submitted', now() - interval '1 hour', now() + interval '1 hour',
                       now() - interval '30 minutes'
                FROM generate_series(1, %(j)s) j""",
            "judgements": """
                INSERT INTO annotation_judgement (id, task_id, assignment_id, annotator_id, project_id,
                    kind, payload, answer, rationale, time_spent_ms, idempotency_key, late, commit_seq,
                    created_at)
                SELECT j, (j - 1) / %(o)s + 1, j,
                       %(u0)s + (((j - 1) / %(o)s) + (j - 1) %% %(o)s) %% %(a)s, %(p)s, 'pairwise',
                       CASE WHEN j %% %(tie)s = 0 THEN '{"choice": "tie", "strength": null}'::jsonb
                            WHEN j %% 3 = 0 THEN '{"choice": "B", "strength": 2}'::jsonb
                            ELSE '{"choice": "A", "strength": 1}'::jsonb END,
                       CASE WHEN j %% %(tie)s = 0 THEN 'tie' WHEN j %% 3 = 0 THEN 'B' ELSE 'A' END,
                       '', 4000 + j %% 9000, 'bench-' || j, false,
                       1 + ((j - 1)::bigint * %(s)s) / %(j)s,
                       now() - interval '30 minutes'
                FROM generate_series(1, %(j)s) j""",
            # What submit keeps on each task under its lock, and the export reads for agreement.
            "answer_counts": """
                UPDATE annotation_task t SET answer_counts = c.counts
                FROM (SELECT task_id, jsonb_object_agg(answer, n) AS counts
                      FROM (SELECT task_id, answer, count(*) AS n FROM annotation_judgement
                            WHERE project_id = %(p)s GROUP BY 1, 2) per_answer
                      GROUP BY task_id) c
                WHERE t.id = c.task_id""",
        }
        conn.execute("SET session_replication_role = replica")  # FK triggers off for the bulk load
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        for name, sql in statements.items():
            s0 = time.perf_counter()
            conn.execute(sql, params)
            steps[name] = round(time.perf_counter() - s0, 2)
        conn.execute("SET session_replication_role = origin")
        for table_name in ("prompt", "response", "task", "taskresponse", "assignment", "judgement"):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('annotation_{table_name}', 'id'), "
                f"(SELECT max(id) FROM annotation_{table_name}))"
            )
        s0 = time.perf_counter()
        for table_name in ("prompt", "response", "task", "taskresponse", "assignment", "judgement"):
            conn.execute(f"VACUUM ANALYZE annotation_{table_name}")
        steps["vacuum_analyze"] = round(time.perf_counter() - s0, 2)
        decisive = conn.execute(
            "SELECT count(*) FROM annotation_judgement WHERE project_id = %s AND answer IN ('A', 'B')",
            [project],
        ).fetchone()[0]
        total = conn.execute(
            "SELECT count(*) FROM annotation_judgement WHERE project_id = %s", [project]
        ).fetchone()[0]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {
        "judgements": total,
        "decisive": decisive,
        "tasks": tasks,
        "overlap": overlap,
        "annotators": n_ann,
        "commit_seq_values": seq_values,
        "seconds": round(time.perf_counter() - t0, 1),
        "steps_s": steps,
        "db_mb": round(size / 1e6),
    }


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.stop_evt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop_evt.is_set():
            rss = common.proc_status(self.pid).get("VmRSS")
            if rss:
                self.samples.append((round(time.perf_counter() - self.t0, 2), rss))
            self.stop_evt.wait(self.every)

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(5)


# The row's last judgement id: its only one, or (hindsight shape: [foresight, hindsight]) the row
# that completed the assignment, one per exported row either way.
_ID = re.compile(rb'"judgement_ids":\[(?:\d+,)*(\d+)\]')
_CURSOR = re.compile(rb'"cursor":"([^"]+)"')


def stream_export(
    port: int,
    token: str,
    project: int,
    since: str | None = None,
    collect_ids: bool = True,
    timeout: float = 400,
    shape: str = "pairs",
) -> dict[str, Any]:
    path = f"/api/v1/projects/{project}/export?shape={shape}"
    if since:
        path += f"&since={since}"
    conn = http.client.HTTPConnection(common.HOST, port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Token {token}"})
    resp = conn.getresponse()
    t_headers = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"export: {resp.status} {resp.read()[:300]!r}")
    since_header = resp.getheader("X-Export-Since")
    lines = 0
    nbytes = 0
    first_byte = None
    first_line = b""
    tail = b""
    last_line = b""  # the last complete line: its cursor is where the next export resumes
    ids = bytearray()  # judgement ids seen, as a bitmap
    duplicates = 0
    deadline = t0 + timeout
    complete = True
    while True:
        chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
        if not chunk:
            break
        if first_byte is None:
            first_byte = time.perf_counter() - t0
        nbytes += len(chunk)
        lines += chunk.count(b"\n")
        if not first_line:
            first_line = (tail + chunk).split(b"\n", 1)[0]
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            last_line = data[data.rfind(b"\n", 0, cut - 1) + 1 : cut - 1]
        tail = data[cut:]
        if collect_ids:
            for m in _ID.findall(data, 0, cut):
                i = int(m)
                byte, bit = divmod(i, 8)
                if byte >= len(ids):
                    ids.extend(b"\0" * (byte - len(ids) + 1 + (1 << 16)))
                if ids[byte] >> bit & 1:
                    duplicates += 1
                ids[byte] |= 1 << bit
        if time.perf_counter() > deadline:
            complete = False  # cut off: the figures cover what arrived so far
            break
    seconds = time.perf_counter() - t0
    conn.close()
    sample = json.loads(first_line) if first_line else None
    return {
        "complete": complete,
        "rows": lines,
        "bytes": nbytes,
        "seconds": round(seconds, 2),
        "rows_per_s": round(lines / seconds) if seconds else None,
        "mb_per_s": round(nbytes / 1e6 / seconds, 1) if seconds else None,
        "headers_s": round(t_headers, 4),
        "first_byte_s": round(first_byte, 4) if first_byte is not None else None,
        "since_header": since_header,
        "cursor": (m.group(1).decode() if (m := _CURSOR.search(last_line)) else since_header),
        "distinct_judgements": sum(bin(b).count("1") for b in ids) if collect_ids else None,
        "duplicate_judgements": duplicates if collect_ids else None,
        "first_row_keys": sorted(sample) if sample else None,
    }


def run(args: argparse.Namespace, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fills `result` as it goes, so a caller that hits a time cap still has what finished."""
    result = result if result is not None else {}
    shape = args.shape
    if args.kind != "pairwise":
        result["kind"], result["shape"] = args.kind, shape
    t0 = time.perf_counter()
    common.fresh_db()
    media = None
    if args.kind == "pairwise":
        env = common.server_env()
        setup = common.setup_project(env=env, annotators=args.annotators, overlap=args.overlap)
    else:
        env, setup, media = web_export_vision.setup(args)
    try:
        _build(args, result, env, setup, shape, t0)
        _measure(args, result, env, setup, shape, t0)
    finally:
        if media is not None:
            shutil.rmtree(media, ignore_errors=True)
    if not args.keep_db:
        common.drop_db()
    return result


def _build(
    args: argparse.Namespace,
    result: dict[str, Any],
    env: dict[str, str],
    setup: dict[str, Any],
    shape: str,
    t0: float,
) -> None:
    with common.pg_connect() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM auth_user WHERE username LIKE 'bench-a%' ORDER BY id"
            ).fetchall()
        ]
    result["setup_s"] = round(time.perf_counter() - t0, 1)
    print(f"[web_export] building {args.judgements:,} judgements ...", flush=True)
    if args.kind == "pairwise":
        result["data"] = build_data(
            setup["project"], ids, args.judgements, args.overlap, args.tie_every
        )
    elif args.kind == "hindsight":
        result["data"] = web_export_hindsight.build(args, setup["project"], ids, shape)
    else:
        result["data"] = web_export_vision.build(args, env, setup["project"], ids, shape)
    print(
        f"[web_export] built in {result['data']['seconds']} s ({result['data']['db_mb']} MB)",
        flush=True,
    )


def _measure(
    args: argparse.Namespace,
    result: dict[str, Any],
    env: dict[str, str],
    setup: dict[str, Any],
    shape: str,
    t0: float,
) -> None:
    server = Server(env=env, workers=1, worker_class="sync", timeout=args.worker_timeout)
    with server:
        result["server"] = server.description + f" (--timeout {args.worker_timeout})"
        token = common.token_for(server.port, setup["staff"])
        worker = server.worker_pids()[0]
        # One small request first so the worker has imported and connected like a warm server.
        common.Client(server.port, token).call("GET", f"/api/v1/projects/{setup['project']}")
        baseline = common.proc_status(worker)
        sampler = RssSampler(worker)
        sampler.start()
        # Leave room under the hard cap for the second export and the clean-up.
        budget = min(args.max_export_s, args.max_seconds - (time.perf_counter() - t0) - 40)
        with common.CpuMeter(server.proc.pid) as cpu:
            first = stream_export(
                server.port, token, setup["project"], timeout=max(10.0, budget), shape=shape
            )
        sampler.stop()
        final = common.proc_status(worker)
        second = (
            stream_export(
                server.port,
                token,
                setup["project"],
                since=first["cursor"],
                collect_ids=False,
                shape=shape,
            )
            if first["complete"]
            else {"rows": None, "cursor": None}
        )
    rss = [kb for _, kb in sampler.samples]
    half = rss[len(rss) // 2 :] or rss
    result["export"] = first
    result["export"]["cpu_cores_used"] = cpu.result
    result["memory"] = {
        "baseline_rss_mb": round(baseline.get("VmRSS", 0) / 1024, 1),
        "peak_rss_mb_vmhwm": round(final.get("VmHWM", 0) / 1024, 1),
        "rss_first_sample_mb": round(rss[0] / 1024, 1) if rss else None,
        "rss_max_mb": round(max(rss) / 1024, 1) if rss else None,
        "rss_second_half_spread_mb": round((max(half) - min(half)) / 1024, 1) if half else None,
        # Flat = no growth with rows sent: a leak or an accumulating buffer makes the second half's
        # peak exceed the first half's; one page's transient allocation does not.
        "rss_growth_mb": round((max(half) - max(rss[: len(rss) // 2] or rss)) / 1024, 1)
        if half
        else None,
        "samples": len(rss),
        "timeline_mb": [
            (t, round(kb / 1024, 1)) for t, kb in sampler.samples[:: max(1, len(rss) // 12)]
        ],
    }
    result["exactness"] = {
        "rows": first["rows"],
        "decisive_judgements_in_db": result["data"]["decisive"],
        "complete": first["complete"],
        "rows_equal_decisive": first["rows"] == result["data"]["decisive"],
        "duplicates": first["duplicate_judgements"],
        "second_export_rows": second["rows"],
        "second_export_since_echoed": second.get("since_header") == first["cursor"],
        "cursor": first["cursor"],
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.web_export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--judgements",
        type=int,
        default=None,
        help="judgements to build (default 1000000; 100000 with --kind hallucination; with "
        "--kind hindsight finished assignments, two rows each, default 100000)",
    )
    p.add_argument("--kind", choices=sorted(SHAPES), default="pairwise", help="project's kind")
    p.add_argument(
        "--shape", help="export shape (default: pairs, or vision_pairs for hallucination)"
    )
    p.add_argument("--images", type=int, default=8, help="hallucination: stored images (8)")
    p.add_argument("--image-per-task", action="store_true", help="hallucination: an image each")
    p.add_argument("--overlap", type=int, default=2, help="judgements per task (default 2)")
    p.add_argument(
        "--annotators", type=int, default=50, help="annotators the judgements spread over"
    )
    p.add_argument(
        "--tie-every", type=int, default=50, help="every k-th judgement is a tie (not exported)"
    )
    p.add_argument(
        "--worker-timeout", type=int, default=300, help="gunicorn --timeout for the export worker"
    )
    p.add_argument(
        "--max-export-s", type=float, default=300, help="give up on one export after this long"
    )
    p.add_argument("--keep-db", action="store_true", help="leave tandem_bench in place for EXPLAIN")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--max-seconds", type=float, default=540, help="hard cap for the whole run")
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
    if args.judgements is None:
        args.judgements = 1_000_000 if args.kind == "pairwise" else 100_000
    args.shape = args.shape or SHAPES[args.kind]
    allowed = ALLOWED[args.kind]
    if args.shape not in allowed:
        raise SystemExit(f"--shape: {args.kind} takes {', '.join(allowed)}")
    return args, effective


def main(argv: list[str] | None = None) -> int:
    args, effective = parse(argv)
    result: dict[str, Any] = {}
    with common.RunMeter(db=common.BENCH_DB) as meter:
        try:
            with common.deadline_guard(args.max_seconds, "web_export"):
                run(args, result)
        except TimeoutError as exc:
            result["error"] = str(exc)
            print(f"!! {exc}", flush=True)
            common.drop_db()
    result = common.record(
        "web_export",
        effective,
        meter,
        result,
        json_path=args.json,
        save=args.save_result and args.kind == "pairwise",
        smoke=args.smoke,
    )
    if args.save_result and args.kind != "pairwise":
        # Its own file: web_export.json holds the README's pairs figures.
        suffix = "_per_task" if args.image_per_task else ""
        # hindsight's shapes get the kind's name first: "pairs" alone is pairwise's shape
        prefix = "hindsight_" if args.kind == "hindsight" else ""
        common.save_result(f"web_export_{prefix}{args.shape}{suffix}", result, smoke=args.smoke)
    print()
    print(common.provenance_header(result))
    print(report(result) if "export" in result else f"!! no export figures: {result}")
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
