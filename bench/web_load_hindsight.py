"""`web_load --kind hindsight`: the hindsight kind's annotation loop, as a person's client runs it.

One loop is one task through both phases, four requests on one keep-alive connection:

1. lease (``POST /projects/{id}/assignments``): the task without any outcome;
2. foresight judgement (``POST /assignments/{id}/judgement`` with ``"phase": "foresight"`` and an
   Idempotency-Key): ratings per response and a choice;
3. reveal (``GET /assignments/{id}``): the same assignment, its responses now carrying ``outcome``
   (a reveal without one is counted as an error: the server would have shown nothing to judge);
4. hindsight judgement (``"phase": "hindsight"``, its own key): the second row, which completes the
   assignment.

The tasks are marketplace lines (``training.marketplace.import_lines(n, seed, outcomes=True)``:
a customer's request, two scripted replies, each with its imported outcome), imported through the
same production path as the pairwise ones; with imported outcomes no simulation runs and every
task is ready at once. A pairwise loop is two requests, a hindsight loop four: the report gives
loops/s and requests/s side by side for that reason. The database checks add what a phase makes
possible to get wrong (`PHASE_SQL`): exactly two rows per submitted assignment, none per live one
beyond its foresight, no hindsight row without its foresight row.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

from bench.common import Client

KIND = "hindsight"
FORESIGHT, HINDSIGHT = "foresight", "hindsight"
SEED = 13


def jsonl(n: int, seed: int = SEED) -> bytes:
    """n marketplace import lines with their outcomes, as a manager with real outcomes imports."""
    from training.marketplace import import_lines  # torch-free; imported only for this kind

    return "".join(
        json.dumps(line) + "\n" for line in import_lines(n, seed, outcomes=True)
    ).encode()


def _answer(phase: str, i: int, outcomes: bool) -> dict[str, Any]:
    """A plausible judgement: after the outcome some preferences flip, as the kind expects."""
    choice = ("A", "B", "tie")[(i + (1 if outcomes else 0)) % 3]
    return {
        "phase": phase,
        "ratings": [1 + i % 5, 1 + (i + 2) % 5],
        "choice": choice,
        "reason": "" if i % 4 else f"judged in {phase}",
        "time_spent_ms": 2000 + i % 5000,
    }


class HindsightAnnotator(threading.Thread):
    """One annotator: lease -> foresight -> reveal GET -> hindsight, timed request by request.

    `lease_lat` and `judge_lat` (the hindsight submit, the one that completes the assignment) keep
    the names the generic `drive` reads; the four requests also have their own lists. A request counts when it started inside the window; a
    loop counts when its hindsight submit started inside it and ended before its end."""

    def __init__(
        self,
        port: int,
        token: str,
        project: int,
        start_evt: threading.Event,
        window: tuple[float, float],
    ):
        super().__init__(daemon=True)
        self.kind = KIND
        self.client = Client(port, token, timeout=60)
        self.project = project
        self.start_evt = start_evt
        self.window = window
        self.lease_lat: list[float] = []
        self.judge_lat: list[float] = []
        self.foresight_lat: list[float] = []
        self.reveal_lat: list[float] = []
        self.hindsight_lat: list[float] = []
        self.loops = 0
        self.errors: Counter = Counter()
        self.empty = 0
        self.tasks: list[int] = []
        self.judged = 0

    def _timed(
        self,
        name: str,
        lat: list[float],
        method: str,
        path: str,
        body: Any = None,
        key: bool = False,
    ) -> tuple[int | None, Any, float]:
        """(status, body, end time); status None after a transport error (counted)."""
        headers = {"Idempotency-Key": uuid.uuid4().hex} if key else None
        t0 = time.perf_counter()
        try:
            status, payload = self.client.call(method, path, body, headers=headers)
        except Exception as exc:  # noqa: BLE001 - a bench counts every failure
            self.errors[f"{name} {type(exc).__name__}"] += 1
            return None, None, time.perf_counter()
        t1 = time.perf_counter()
        if self.window[0] <= t0 < self.window[1]:
            lat.append(t1 - t0)
        return status, payload, t1

    def run(self) -> None:
        lease_path = f"/api/v1/projects/{self.project}/assignments"
        end = self.window[1]
        self.start_evt.wait()
        while time.perf_counter() < end:
            status, body, _ = self._timed("lease", self.lease_lat, "POST", lease_path)
            if status == 204:
                self.empty += 1
                time.sleep(0.05)
                continue
            if status not in (200, 201):  # 200: a lease this annotator already holds
                if status is not None:
                    self.errors[f"lease {status}"] += 1
                time.sleep(0.01)
                continue
            if "outcome" in json.dumps(body["task"]["responses"]):
                self.errors["lease showed an outcome"] += 1
            self.tasks.append(body["task"]["id"])
            self._both_phases(body["id"], body.get("phase") or FORESIGHT, end)
        self.client.close()

    def _both_phases(self, assignment: int, due: str, end: float) -> None:
        base = f"/api/v1/assignments/{assignment}"
        self.judged += 1
        if due == FORESIGHT:
            status, _, _ = self._timed(
                "foresight",
                self.foresight_lat,
                "POST",
                base + "/judgement",
                _answer(FORESIGHT, self.judged, False),
                key=True,
            )
            if status != 201:
                if status is not None:
                    self.errors[f"foresight {status}"] += 1
                return
        status, shown, _ = self._timed("reveal", self.reveal_lat, "GET", base)
        if status != 200:
            if status is not None:
                self.errors[f"reveal {status}"] += 1
            return
        if shown.get("phase") != HINDSIGHT or not all(
            r.get("outcome") for r in shown["task"]["responses"]
        ):
            self.errors["reveal without outcome"] += 1
            return
        t0 = time.perf_counter()
        status, _, t1 = self._timed(
            "hindsight",
            self.hindsight_lat,
            "POST",
            base + "/judgement",
            _answer(HINDSIGHT, self.judged, True),
            key=True,
        )
        if status != 201:
            if status is not None:
                self.errors[f"hindsight {status}"] += 1
            return
        if self.window[0] <= t0 < end:
            self.judge_lat.append(t1 - t0)
            if t1 <= end:
                self.loops += 1


def figures(threads: list[Any], seconds: float, pcts: Any) -> dict[str, Any]:
    """The per-request latencies of a hindsight run and its requests/s (all four kinds of request
    counted; a pairwise run's requests/s is its leases and submits, see `requests_per_s`)."""
    return {
        "foresight_ms": pcts([x for t in threads for x in t.foresight_lat]),
        "reveal_ms": pcts([x for t in threads for x in t.reveal_lat]),
        "hindsight_ms": pcts([x for t in threads for x in t.hindsight_lat]),
        "requests_per_s": round(
            sum(
                len(t.lease_lat) + len(t.foresight_lat) + len(t.reveal_lat) + len(t.hindsight_lat)
                for t in threads
            )
            / seconds,
            1,
        ),
    }


# What two phases per assignment could break, on top of web_load_traffic.DOUBLE_SQL (which counts
# only the last phase's rows toward the overlap for this kind).
PHASE_SQL = {
    # a submitted assignment must hold exactly its two rows, foresight and hindsight
    "submitted_without_two_rows": """
        SELECT count(*) FROM annotation_assignment a
        WHERE a.project_id = %(p)s AND a.status = 'submitted'
          AND (SELECT count(*) FROM annotation_judgement j WHERE j.assignment_id = a.id
               AND j.phase IN ('foresight', 'hindsight')) <> 2""",
    # a hindsight row whose assignment has no foresight row (the order the core enforces)
    "hindsight_without_foresight": """
        SELECT count(*) FROM annotation_judgement h
        WHERE h.project_id = %(p)s AND h.phase = 'hindsight' AND NOT EXISTS (
          SELECT 1 FROM annotation_judgement f WHERE f.assignment_id = h.assignment_id
            AND f.phase = 'foresight')""",
    # an assignment not submitted that already holds its hindsight row (it completes on that row)
    "hindsight_row_on_open_assignment": """
        SELECT count(*) FROM annotation_judgement h JOIN annotation_assignment a
          ON a.id = h.assignment_id
        WHERE h.project_id = %(p)s AND h.phase = 'hindsight' AND a.status <> 'submitted'""",
    "foresight_rows": """
        SELECT count(*) FROM annotation_judgement WHERE project_id = %(p)s AND phase = 'foresight'""",
    "hindsight_rows": """
        SELECT count(*) FROM annotation_judgement WHERE project_id = %(p)s AND phase = 'hindsight'""",
    "submitted_assignments": """
        SELECT count(*) FROM annotation_assignment WHERE project_id = %(p)s AND status = 'submitted'""",
}
PHASE_FAULTS = (
    "submitted_without_two_rows",
    "hindsight_without_foresight",
    "hindsight_row_on_open_assignment",
)


def phase_checks(conn: Any, project: int) -> dict[str, int]:
    out = {name: conn.execute(sql, {"p": project}).fetchone()[0] for name, sql in PHASE_SQL.items()}
    out["phase_faults"] = sum(out[name] for name in PHASE_FAULTS)
    return out


def db_line(db: dict[str, Any]) -> str:
    """The phase rows after a run, for the report's DB line (empty for a kind without phases)."""
    if "phase_faults" not in db:
        return ""
    return (
        f"; {db['foresight_rows']:,} foresight + {db['hindsight_rows']:,} hindsight rows for "
        f"{db['submitted_assignments']:,} submitted assignments, phase faults "
        f"{db['phase_faults']} (submitted without two rows {db['submitted_without_two_rows']}, "
        f"hindsight without foresight {db['hindsight_without_foresight']}, hindsight row on an "
        f"open assignment {db['hindsight_row_on_open_assignment']})"
    )


def phase_table(result: dict[str, Any], table: Any) -> str:
    """Per hindsight run: each of the loop's four requests, p50/p99 in ms, and requests/s."""
    rows = []
    for r in result.get("runs", []):
        if r.get("kind") != KIND:
            continue
        rows.append(
            [r["round"], r["annotators"], r["loops_per_s"], r["requests_per_s"]]
            + [
                r[name]["p50"] if i == 0 else r[name]["p99"]
                for name in ("lease_ms", "foresight_ms", "reveal_ms", "hindsight_ms")
                for i in (0, 1)
            ]
            + [r["errors"], r["db"].get("phase_faults")]
        )
    if not rows:
        return ""
    pairwise = [r for r in result.get("runs", []) if r.get("kind", r.get("variant")) == "pairwise"]
    note = ""
    if pairwise:
        mean = sum(r.get("requests_per_s") or 0 for r in pairwise) / len(pairwise)
        note = f" (pairwise in the same rounds: {mean:.1f} requests/s, 2 per loop)"
    return table(
        [
            "round",
            "N",
            "loops/s",
            "requests/s",
            "lease p50",
            "p99 ms",
            "foresight p50",
            "p99 ms",
            "reveal GET p50",
            "p99 ms",
            "hindsight p50",
            "p99 ms",
            "errors",
            "phase faults (db)",
        ],  # fmt: skip
        rows,
        title="Hindsight loop, request by request (one loop = lease, foresight submit, reveal "
        "GET, hindsight submit)" + note + ":",
    )
