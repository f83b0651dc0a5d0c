"""The hindsight kind's export shapes (the core adds "raw", which for a kind with phases carries
each row's `phase` and the responses' outcomes; never the prompt's hidden facts).

- `pairs`: TRL-ready prompt/chosen/rejected rows, as the pairwise kind's, one per decisive choice
  of one phase: hindsight by default (RLHS: preferences given after seeing the outcome are the
  ones to train on), foresight with the export's `phase=foresight`.
- `hindsight`: one row per finished assignment with both phases side by side, the outcomes, and
  whether the preference flipped (`stats.flipped`: decisive in both phases and different).

Both are built from the hindsight row; the core hands each record its assignment's earlier
phases (`ExportRecord.earlier`), read for the whole batch in one query.

On Postgres each shape's line is built by its SQL instead (the frame is
`annotation/selectors/export.py`'s: it returns (commit_seq, id, line text), the core fills in
`{page}`, `{annotator}` and `{cursor}`, and no `%` may appear but the core's parameters). Each
SQL mirrors its `row` clause by clause; the golden files and tests/annotation/kinds hold the two
paths to the same rows. Neither ever reads `Prompt.hidden`.
"""

from __future__ import annotations

from typing import Any

from ..base import ExportRecord, ExportShape
from .payload import PHASES
from .stats import flipped

FORESIGHT, HINDSIGHT = PHASES
DECISIVE = ("A", "B")
KIND = "hindsight"


def _margin(payload: dict[str, Any], chosen: int, rejected: int) -> float:
    # The satisfaction gap between the two responses, at least 1: a decisive choice between two
    # equally rated responses still says which is better, by the smallest step the scale has.
    ratings = payload.get("ratings") or []
    if len(ratings) != 2:
        return 1.0
    return float(max(1, ratings[chosen] - ratings[rejected]))


def pair_row(record: ExportRecord) -> dict[str, Any] | None:
    """One DPO row per decisive choice of the record's phase (the core filters the phase)."""
    choice = record.payload.get("choice")
    if record.kind != KIND or choice not in DECISIVE or len(record.responses) != 2:
        return None
    first, second = record.responses
    chosen, rejected = (first, second) if choice == "A" else (second, first)
    order = (0, 1) if choice == "A" else (1, 0)
    return {
        "prompt": record.prompt,
        "chosen": [{"role": "assistant", "content": chosen["text"]}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
        "margin": _margin(record.payload, *order),
        "phase": record.phase,
        "task_id": record.task_id,
        "judgement_ids": [record.judgement_id],
        "annotator": record.annotator,
        # The task's answer counts are kept from the last phase; a foresight row has none to share.
        "agreement": record.agreement if record.phase == HINDSIGHT else None,
        "round": record.round,
        "cursor": record.cursor,
    }


def _phase(payload: dict[str, Any], time_spent_ms: int | None) -> dict[str, Any]:
    return {
        "ratings": payload.get("ratings"),
        "choice": payload.get("choice"),
        "reason": payload.get("reason") or "",
        "time_spent_ms": time_spent_ms,
    }


def hindsight_row(record: ExportRecord) -> dict[str, Any] | None:
    """Both phases of one assignment, emitted with its hindsight row."""
    before = record.earlier.get(FORESIGHT)
    if record.kind != KIND or record.phase != HINDSIGHT or before is None:
        return None
    foresight = _phase(before["payload"], before["time_spent_ms"])
    hindsight = _phase(record.payload, record.time_spent_ms)
    return {
        "task_id": record.task_id,
        "external_id": record.external_id,
        "prompt": record.prompt,
        "responses": [
            {"text": r["text"], "model": r["model"], "outcome": r.get("outcome", "")}
            for r in record.responses
        ],
        "foresight": foresight,
        "hindsight": hindsight,
        "flipped": flipped(foresight["choice"] or "", hindsight["choice"] or ""),
        "true_utility": record.metadata.get("true_utility"),
        "annotator": record.annotator,
        "judgement_ids": [before["judgement_id"], record.judgement_id],
        "late": record.late,
        "round": record.round,
        "cursor": record.cursor,
    }


# --- the same rows, built by Postgres -----------------------------------------------------------


def _float_json(x: str) -> str:
    """SQL rendering the float8 `x` as Python's json does: "3.0", not Postgres's "3"; below 1e16
    an integral value gets ".0", otherwise Postgres's shortest round-trip text is Python's repr."""
    return (
        f"CASE WHEN {x} = trunc({x}) AND abs({x}) < 1e16 THEN trunc({x})::bigint::text || '.0' "
        f"ELSE {x}::text END"
    )


# pair_row, in SQL. Pairs are the hot export, so the line is concatenated text (as pairwise's
# PAIRS_SQL: every part non-null, texts through to_json for escaping). `v` names the parts:
# - margin: _margin's max(1, chosen - rejected rating) in float8, 1.0 without two ratings;
# - agreement: _record's round(count / max(judgements, 1), 4) in float8 as Python computes it
#   (round(float8) rounds half to even, as Python's round does on an exact tie).
# The kind takes at most two responses per task, so the slots at positions 0 and 1 are all of them.
# Rows are found by `j.answer`, the agreement key validate_payload stores (the choice, "" with one
# response), not by the payload: the column has statistics, so the planner walks the export index
# under the LIMIT; its blind estimate for `payload ->> 'choice'` made it join and sort every
# remaining row for each page (bench.web_export: 10k rows/s, against 24k on the same busy box).
# The line still follows the payload as pair_row does, NULL (left out) should the two disagree.
PAIRS_SQL = f"""
SELECT j.commit_seq, j.id, CASE WHEN v.choice IN ('A', 'B') THEN
    '{{"prompt":' || p.messages::text
    || ',"chosen":[{{"role":"assistant","content":'
    || to_json(CASE WHEN v.choice = 'A' THEN ra.text ELSE rb.text END)::text
    || '}}],"rejected":[{{"role":"assistant","content":'
    || to_json(CASE WHEN v.choice = 'A' THEN rb.text ELSE ra.text END)::text
    || '}}],"margin":' || ({_float_json("v.margin")})
    || ',"phase":' || to_json(j.phase)::text
    || ',"task_id":' || j.task_id::text
    || ',"judgement_ids":[' || j.id::text
    || '],"annotator":"' || {{annotator}}
    || '","agreement":'
    || CASE WHEN j.phase = '{HINDSIGHT}' THEN {_float_json("v.agreement")} ELSE 'null' END
    || ',"round":' || t.round::text
    || ',"cursor":"' || {{cursor}} || '"}}' END
FROM annotation_judgement j
JOIN annotation_task t ON t.id = j.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
JOIN annotation_taskresponse sa ON sa.task_id = j.task_id AND sa.position = 0
JOIN annotation_response ra ON ra.id = sa.response_id
JOIN annotation_taskresponse sb ON sb.task_id = j.task_id AND sb.position = 1
JOIN annotation_response rb ON rb.id = sb.response_id
CROSS JOIN LATERAL (
    SELECT j.payload ->> 'choice' AS choice,
        CASE WHEN jsonb_typeof(j.payload -> 'ratings') = 'array'
                  AND jsonb_array_length(j.payload -> 'ratings') = 2
             THEN GREATEST(1.0::float8, CASE WHEN j.payload ->> 'choice' = 'A'
                 THEN (j.payload -> 'ratings' ->> 0)::float8 - (j.payload -> 'ratings' ->> 1)::float8
                 ELSE (j.payload -> 'ratings' ->> 1)::float8 - (j.payload -> 'ratings' ->> 0)::float8
                 END)
             ELSE 1.0::float8 END AS margin,
        round(COALESCE((t.answer_counts ->> j.answer)::float8, 0)
              / GREATEST(t.judgement_count, 1) * 10000) / 10000 AS agreement
) v
WHERE j.project_id = %(project)s AND j.kind = '{KIND}' AND j.answer IN ('A', 'B')
{{page}}"""


def _phase_sql(j: str) -> str:
    """_phase's object, as JSON text, of the judgement aliased `j` ("reason": "" when falsy)."""
    reason = f"{j}.payload -> 'reason'"
    return f"""'{{"ratings":' || COALESCE(({j}.payload -> 'ratings')::text, 'null')
    || ',"choice":' || COALESCE(({j}.payload -> 'choice')::text, 'null')
    || ',"reason":' || CASE WHEN {reason} IS NULL
                              OR {reason} IN ('null', 'false', '0', '""', '[]', '{{}}')
                            THEN '""' ELSE ({reason})::text END
    || ',"time_spent_ms":' || COALESCE({j}.time_spent_ms::text, 'null') || '}}'"""


def _response_sql(r: str) -> str:
    """One response as the row gives it, JSON text; NULL when the slot is empty."""
    return (
        f"""'{{"text":' || to_json({r}.text)::text || ',"model":' || to_json({r}.model_name)::text"""
        f"""\n        || ',"outcome":' || to_json({r}.outcome)::text || '}}'"""
    )


# hindsight_row, in SQL, concatenated as PAIRS_SQL (nullable parts through COALESCE to null).
# The hindsight row is joined to its assignment's foresight row (one per assignment and phase: a
# unique index), which an inner join requires as the row does. The responses are the task's slots
# 0 and 1, all of them (the kind takes one or two; concat_ws skips an empty slot), with their
# outcomes; `flipped` is stats.flipped; `true_utility` the prompt's metadata, as the row reads it.
HINDSIGHT_SQL = f"""
SELECT j.commit_seq, j.id,
    '{{"task_id":' || j.task_id::text
    || ',"external_id":' || COALESCE(to_json(p.external_id)::text, 'null')
    || ',"prompt":' || p.messages::text
    || ',"responses":[' || concat_ws(',', {_response_sql("ra")}, {_response_sql("rb")}) || ']'
    || ',"foresight":' || {_phase_sql("f")}
    || ',"hindsight":' || {_phase_sql("j")}
    || ',"flipped":' || CASE
        WHEN f.payload ->> 'choice' IN ('A', 'B') AND j.payload ->> 'choice' IN ('A', 'B')
        THEN CASE WHEN f.payload ->> 'choice' <> j.payload ->> 'choice' THEN 'true' ELSE 'false' END
        ELSE 'null' END
    || ',"true_utility":' || COALESCE((p.metadata -> 'true_utility')::text, 'null')
    || ',"annotator":"' || {{annotator}}
    || '","judgement_ids":[' || f.id::text || ',' || j.id::text
    || '],"late":' || CASE WHEN j.late THEN 'true' ELSE 'false' END
    || ',"round":' || t.round::text
    || ',"cursor":"' || {{cursor}} || '"}}'
FROM annotation_judgement j
JOIN annotation_judgement f ON f.assignment_id = j.assignment_id AND f.phase = '{FORESIGHT}'
JOIN annotation_task t ON t.id = j.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
LEFT JOIN annotation_taskresponse sa ON sa.task_id = j.task_id AND sa.position = 0
LEFT JOIN annotation_response ra ON ra.id = sa.response_id
LEFT JOIN annotation_taskresponse sb ON sb.task_id = j.task_id AND sb.position = 1
LEFT JOIN annotation_response rb ON rb.id = sb.response_id
WHERE j.project_id = %(project)s AND j.kind = '{KIND}' AND j.phase = '{HINDSIGHT}'
{{page}}"""


PAIRS = ExportShape(
    name="pairs",
    description="prompt/chosen/rejected (+margin) per decisive choice of one phase: hindsight by "
    "default, foresight with phase=foresight; ties are left out (raw keeps them)",
    row=pair_row,
    sql=PAIRS_SQL,
    phases=(HINDSIGHT, FORESIGHT),
)
HINDSIGHT_SHAPE = ExportShape(
    name="hindsight",
    description="one row per finished assignment: both phases' ratings and choices, the "
    "outcomes, and whether the preference flipped",
    row=hindsight_row,
    sql=HINDSIGHT_SQL,
    phases=(HINDSIGHT,),
)
SHAPES = {"pairs": PAIRS, "hindsight": HINDSIGHT_SHAPE}
