"""`web_export --kind hindsight`: a hindsight project's judgement pairs, built in SQL, exported.

As `web_export.build_data` does for pairs: valid rows matching the models, written set-based with
FK triggers off. ``--judgements N`` is N finished assignments, each with its two rows as the core
stores them (`annotation/services/judgement.py`): a foresight row, then a hindsight row with a
later commit_seq, which completed the assignment. The columns the kind added are written as an
import with real outcomes leaves them: `Response.outcome` (the marketplace's outcome text),
`outcome_source` "imported", `true_utility` null (imported utilities stay in the prompt's
metadata), `Prompt.hidden` the store's facts, `Task.ready` and `Judgement.phase` as stored.

Payloads are what the kind's validator stores ({"ratings", "choice", "reason"}, the choice as the
answer). One hindsight choice in three differs from its foresight one (a flip), and every
`--tie-every`-th hindsight row is a tie, which `pairs` leaves out.

Rows each shape exports (the export's own filters), on the hindsight phase, its default:
``pairs`` one per decisive (A/B) hindsight row; ``hindsight`` one per finished assignment.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import common

EXPECTED_ROWS = {
    "pairs": "phase = 'hindsight' AND answer IN ('A', 'B')",
    "hindsight": "phase = 'hindsight'",
}

_PROMPT = (
    "I want a {product} with wifi. My budget is $90. Option A costs $15. Option B costs $50. "
    "Option C costs $85. Which should I buy?"
)
_OUTCOME = (
    "You bought Option {o} for ${price}. It turned out to have bluetooth, gps. It does not have "
    "wifi. It did not meet your need. Option C would have met your need for $85."
)


def payloads() -> dict[str, str]:
    """The stored payloads by choice (the validator's form: ratings, choice, reason)."""
    out = {
        "A": {"ratings": [4, 2], "choice": "A", "reason": ""},
        "B": {"ratings": [2, 4], "choice": "B", "reason": "the second one was honest"},
        "tie": {"ratings": [3, 3], "choice": "tie", "reason": ""},
    }
    return {k: json.dumps(v) for k, v in out.items()}


def build_data(
    project: int, annotator_ids: list[int], assignments: int, overlap: int, tie_every: int
) -> dict[str, Any]:
    """Writes `assignments` finished hindsight assignments (two rows each) on
    assignments/overlap tasks with set-based SQL."""
    if assignments % overlap:
        raise SystemExit("--judgements must be a multiple of --overlap")
    tasks = assignments // overlap
    n_ann = len(annotator_ids)
    if n_ann < overlap:
        raise SystemExit("need at least `overlap` annotators")
    first = annotator_ids[0]
    if annotator_ids != list(range(first, first + n_ann)):
        raise SystemExit("expected consecutive annotator ids")
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    p = payloads()
    # The choice of assignment j in each phase, as SQL: foresight A/B by j; hindsight flips it
    # when j % 6 = 0 and is a tie every tie_every-th assignment.
    foresight = "CASE WHEN j %% 3 = 0 THEN 'B' ELSE 'A' END"
    hindsight = (
        "CASE WHEN j %% %(tie)s = 0 THEN 'tie' WHEN j %% 6 = 0 THEN 'A' WHEN j %% 3 = 0 THEN 'B' "
        "WHEN j %% 6 = 1 THEN 'B' ELSE 'A' END"
    )
    with common.pg_connect(autocommit=True) as conn:
        xid = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])
        seq_values = max(2, min(2 * assignments, xid - 100))
        params = {
            "p": project,
            "t": tasks,
            "j": assignments,
            "o": overlap,
            "a": n_ann,
            "u0": first,
            "s": seq_values,
            "tie": tie_every,
            "prompt": _PROMPT,
            "outcome": _OUTCOME,
            "pa": p["A"],
            "pb": p["B"],
            "pt": p["tie"],
        }
        judgement = """
                INSERT INTO annotation_judgement (id, task_id, assignment_id, annotator_id, project_id,
                    kind, phase, payload, answer, rationale, time_spent_ms, idempotency_key, late,
                    commit_seq, created_at)
                SELECT 2 * j - OFFSET, (j - 1) / %(o)s + 1, j,
                       %(u0)s + (((j - 1) / %(o)s) + (j - 1) %% %(o)s) %% %(a)s, %(p)s, 'hindsight',
                       'PHASE', CASE CHOICE WHEN 'A' THEN %(pa)s::jsonb WHEN 'B' THEN %(pb)s::jsonb
                                ELSE %(pt)s::jsonb END,
                       CHOICE, '', 3000 + j %% 9000, 'bench-PHASE-' || j, false,
                       -- the foresight row commits before its hindsight row
                       1 + ((2 * j - 1 - OFFSET)::bigint * %(s)s) / (2 * %(j)s),
                       now() - interval '30 minutes'
                FROM generate_series(1, %(j)s) j"""
        statements = {
            "prompts": """
                INSERT INTO annotation_prompt (id, project_id, messages, external_id, metadata, image,
                                               context, split, hidden, created_at)
                SELECT g, %(p)s,
                       jsonb_build_array(jsonb_build_object('role', 'user', 'content',
                           replace(%(prompt)s, '{product}', 'lamp ' || g))),
                       'market-' || g,
                       jsonb_build_object('true_utility', jsonb_build_array(-1.0, 0.1765)),
                       '', '{}', 'train',
                       jsonb_build_object('world', 'marketplace', 'product', 'lamp ' || g,
                                          'requirement', 'wifi', 'budget', 90),
                       now()
                FROM generate_series(1, %(t)s) g""",
            "responses": """
                INSERT INTO annotation_response (id, prompt_id, text, model_name, outcome,
                                                 outcome_source, true_utility, created_at)
                SELECT r, (r + 1) / 2,
                       CASE WHEN r %% 2 = 1 THEN 'I recommend Option A. It has wifi.'
                            ELSE 'I recommend Option C. It is the only one with wifi.' END,
                       CASE WHEN r %% 2 = 1 THEN 'scripted-deceptive' ELSE 'scripted-honest' END,
                       CASE WHEN r %% 2 = 1
                            THEN replace(replace(%(outcome)s, '{o}', 'A'), '{price}', '15')
                            ELSE 'You bought Option C for $85. It has wifi. It met your need.' END,
                       'imported', NULL, now()
                FROM generate_series(1, 2 * %(t)s) r""",
            "tasks": """
                INSERT INTO annotation_task (id, project_id, prompt_id, kind, round, priority, overlap,
                    judgement_count, live_leases, next_lease_expiry, is_complete, is_gold, gold_answer,
                    purpose, created_at)
                SELECT g, %(p)s, g, 'hindsight', 0, 0.0, %(o)s, %(o)s, 0, NULL, true, false, NULL,
                       'label', now()
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
            "foresight_rows": judgement.replace("OFFSET", "1")
            .replace("PHASE", "foresight")
            .replace("CHOICE", foresight),
            "hindsight_rows": judgement.replace("OFFSET", "0")
            .replace("PHASE", "hindsight")
            .replace("CHOICE", hindsight),
            # What submit keeps on each task: the answers of the phase that completes it.
            "answer_counts": """
                UPDATE annotation_task t SET answer_counts = c.counts
                FROM (SELECT task_id, jsonb_object_agg(answer, n) AS counts
                      FROM (SELECT task_id, answer, count(*) AS n FROM annotation_judgement
                            WHERE project_id = %(p)s AND phase = 'hindsight' GROUP BY 1, 2) x
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
        tables = ("prompt", "response", "task", "taskresponse", "assignment", "judgement")
        for table_name in tables:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('annotation_{table_name}', 'id'), "
                f"(SELECT max(id) FROM annotation_{table_name}))"
            )
        s0 = time.perf_counter()
        for table_name in tables:
            conn.execute(f"VACUUM ANALYZE annotation_{table_name}")
        steps["vacuum_analyze"] = round(time.perf_counter() - s0, 2)
        counts = {
            shape: conn.execute(
                f"SELECT count(*) FROM annotation_judgement WHERE project_id = %s AND {where}",
                [project],
            ).fetchone()[0]
            for shape, where in EXPECTED_ROWS.items()
        }
        answers = {
            f"{phase}:{answer}": n
            for phase, answer, n in conn.execute(
                "SELECT phase, answer, count(*) FROM annotation_judgement WHERE project_id = %s "
                "GROUP BY 1, 2 ORDER BY 1, 2",
                [project],
            ).fetchall()
        }
        flips = conn.execute(
            """SELECT count(*) FROM annotation_judgement f JOIN annotation_judgement h
               ON h.assignment_id = f.assignment_id AND h.phase = 'hindsight'
               WHERE f.project_id = %s AND f.phase = 'foresight' AND f.answer IN ('A', 'B')
                 AND h.answer IN ('A', 'B') AND h.answer <> f.answer""",
            [project],
        ).fetchone()[0]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {
        "kind": "hindsight",
        "judgements": sum(answers.values()),
        "assignments": assignments,
        # "decisive": the rows the measured shape exports (web_export's exactness check reads it)
        "expected_rows": counts,
        "answers": answers,
        "flips": flips,
        "tasks": tasks,
        "overlap": overlap,
        "annotators": n_ann,
        "commit_seq_values": seq_values,
        "seconds": round(time.perf_counter() - t0, 1),
        "steps_s": steps,
        "db_mb": round(size / 1e6),
    }


def build(args: Any, project: int, ids: list[int], shape: str) -> dict[str, Any]:
    data = build_data(project, ids, args.judgements, args.overlap, args.tie_every)
    data["decisive"] = data["expected_rows"][shape]
    return data
