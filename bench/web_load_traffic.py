"""The web load bench's traffic: the tasks it imports, the annotators it simulates, and the
database checks of what they left behind (double assignments, counter drift)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

from bench import common, vision_data, web_load_hindsight
from bench.common import Client, percentile


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
    port: int, token: str, project: int, n: int, *, timeout: float = 300, body: bytes | None = None
) -> dict[str, Any]:
    """POSTs the JSONL (`body`, pairwise tasks by default) and, when the server queued it (202),
    polls the job until it is done: the time is from the first byte sent to the tasks being in the
    database either way."""
    body = jsonl_tasks(n) if body is None else body
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
        kind: str = "pairwise",
        fetch_images: bool = True,
    ):
        super().__init__(daemon=True)
        # A hallucination annotator marks spans in the leased texts and, unless told not to,
        # fetches the leased task's image as its browser would (bench.vision_data.ImageCache).
        self.kind = kind
        self.vision = kind == "hallucination"
        self.images = vision_data.ImageCache() if self.vision and fetch_images else None
        self.image_lat: list[float] = []
        self.judged = 0
        self.t_submit = 0.0
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
            if self.vision:
                answer = self._look(body["task"], counted)
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
                self.judge_lat.append(t2 - self.t_submit if self.vision else t2 - t1)
                if t2 <= end:
                    self.loops += 1
        self.client.close()

    def _look(self, task: dict[str, Any], counted: bool) -> dict[str, Any]:
        """What the annotator's browser does between the lease and the submit: fetch the image
        (its own request, cached), then the judgement built from the leased texts. Image time is
        counted apart from the lease and the submit; the loop's time includes it."""
        url = (task.get("image") or {}).get("url")
        if url and self.images is not None:
            before = len(self.images.fetches)
            self.images.get(self.client, url, time.perf_counter)
            if counted and len(self.images.fetches) > before:
                self.image_lat.append(self.images.fetches[-1])
        self.t_submit = time.perf_counter()
        self.judged += 1
        return vision_data.judgement(task, self.judged)


def drive(
    port: int,
    tokens: list[str],
    project: int,
    n: int,
    seconds: float,
    warmup: float,
    server_pid: int | None = None,
    kind: str = "pairwise",
    fetch_images: bool = True,
) -> dict[str, Any]:
    start_evt = threading.Event()
    t_start = time.perf_counter() + 0.2
    window = (t_start + warmup, t_start + warmup + seconds)
    threads: list[Any] = [
        web_load_hindsight.HindsightAnnotator(port, tokens[i], project, start_evt, window)
        if kind == web_load_hindsight.KIND
        else Annotator(port, tokens[i], project, start_evt, window, kind, fetch_images)
        for i in range(n)
    ]
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
    if kind == web_load_hindsight.KIND:
        extra = web_load_hindsight.figures(threads, seconds, _pcts) | {"kind": kind}
    elif kind != "pairwise":
        extra = _image_figures(threads)
    else:
        # Leases and submits started in the window: what a hindsight run's requests/s compares to.
        extra = {"requests_per_s": round((len(lease) + len(judge)) / seconds, 1)}
    return (
        extra
        | {
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
        }
        | _cpu_cost(cpu.result, loops, seconds)
    )


def _image_figures(threads: list[Annotator]) -> dict[str, Any]:
    """The image requests of a hallucination run, apart from the loop's lease and submit."""
    caches = [t.images for t in threads if t.images is not None]
    return {
        "kind": threads[0].kind if threads else None,
        "image_requests_sent": bool(caches),
        "image_ms": _pcts([x for t in threads for x in t.image_lat]),
        "image_requests": sum(len(c.fetches) for c in caches),
        "image_cache_hits": sum(c.hits for c in caches),
        "image_not_modified": sum(c.not_modified for c in caches),
        "image_errors": sum(c.errors for c in caches),
        "image_bytes": sum(c.bytes for c in caches),
    }


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
          WHERE j.project_id = %(p)s AND j.phase = %(last)s
          GROUP BY j.task_id, t.overlap HAVING count(*) > t.overlap) x""",
    # the same (task, annotator) twice, in assignments or judgements
    "same_annotator_twice": """
        SELECT (SELECT count(*) FROM (SELECT 1 FROM annotation_assignment WHERE project_id = %(p)s
                GROUP BY task_id, annotator_id HAVING count(*) > 1) a)
             + (SELECT count(*) FROM (SELECT 1 FROM annotation_judgement WHERE project_id = %(p)s
                AND phase = %(last)s GROUP BY task_id, annotator_id HAVING count(*) > 1) b)""",
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
                   AND phase = %(last)s GROUP BY task_id) j ON j.task_id = t.id
        WHERE t.project_id = %(p)s AND t.judgement_count <> coalesce(j.c, 0)""",
}


def db_checks(project: int, kind: str = "pairwise") -> dict[str, int]:
    """The checks of DOUBLE_SQL; for a kind with phases (hindsight) only the last phase's rows
    count toward the overlap and the counters (the core counts an assignment once, on its last
    phase), and `web_load_hindsight.PHASE_SQL` checks the rows of the phases themselves."""
    last = web_load_hindsight.HINDSIGHT if kind == web_load_hindsight.KIND else ""
    with common.pg_connect() as conn:
        out = {
            name: conn.execute(sql, {"p": project, "last": last}).fetchone()[0]
            for name, sql in DOUBLE_SQL.items()
        }
        if kind == web_load_hindsight.KIND:
            out |= web_load_hindsight.phase_checks(conn, project)
        # The assignments' judgements: one row each (the last phase's, for a kind with phases).
        out["judgements"] = conn.execute(
            "SELECT count(*) FROM annotation_judgement WHERE project_id = %s AND phase = %s",
            [project, last],
        ).fetchone()[0]
        out["assignments"] = conn.execute(
            "SELECT count(*) FROM annotation_assignment WHERE project_id = %s", [project]
        ).fetchone()[0]
    out["double_assignments"] = (
        out["over_judged_tasks"] + out["same_annotator_twice"] + out["handed_out_twice_at_once"]
    )
    return out
