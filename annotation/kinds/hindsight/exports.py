"""The hindsight kind's export shapes (the core adds "raw", which for a kind with phases carries
each row's `phase` and the responses' outcomes; never the prompt's hidden facts).

- `pairs`: TRL-ready prompt/chosen/rejected rows, as the pairwise kind's, one per decisive choice
  of one phase: hindsight by default (RLHS: preferences given after seeing the outcome are the
  ones to train on), foresight with the export's `phase=foresight`.
- `hindsight`: one row per finished assignment with both phases side by side, the outcomes, and
  whether the preference flipped (`stats.flipped`: decisive in both phases and different).

Both are built from the hindsight row; the core hands each record its assignment's earlier
phases (`ExportRecord.earlier`), read for the whole batch in one query.
"""

from __future__ import annotations

from typing import Any

from ..base import ExportRecord, ExportShape
from .payload import PHASES
from .stats import flipped

FORESIGHT, HINDSIGHT = PHASES
DECISIVE = ("A", "B")


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
    if record.kind != "hindsight" or choice not in DECISIVE or len(record.responses) != 2:
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
    if record.kind != "hindsight" or record.phase != HINDSIGHT or before is None:
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


PAIRS = ExportShape(
    name="pairs",
    description="prompt/chosen/rejected (+margin) per decisive choice of one phase: hindsight by "
    "default, foresight with phase=foresight; ties are left out (raw keeps them)",
    row=pair_row,
    phases=(HINDSIGHT, FORESIGHT),
)
HINDSIGHT_SHAPE = ExportShape(
    name="hindsight",
    description="one row per finished assignment: both phases' ratings and choices, the "
    "outcomes, and whether the preference flipped",
    row=hindsight_row,
    phases=(HINDSIGHT,),
)
SHAPES = {"pairs": PAIRS, "hindsight": HINDSIGHT_SHAPE}
