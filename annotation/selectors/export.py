"""Incremental, streamed export of judgements in the TRL-ready shape of DESIGN.md.

Exactly-once across successive exports, even while annotators keep submitting: rows are read in
(commit_seq, id) order, where commit_seq is the inserting transaction's id on Postgres, and only up
to the oldest transaction still running when the export starts (pg_snapshot_xmin). Any judgement
that commits later has a transaction id at or above that horizon, so it is picked up by the next
export and never skipped. The cursor is fixed before the first byte is sent, so it can travel in a
response header, and rows are fetched in keyset-paged chunks, so memory stays flat.
"""

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.db.models.expressions import RawSQL

from ..errors import InvalidInput
from ..models import Judgement, Project, TaskResponse

SHAPES = ("pairs", "raw")
_CURSOR_PREFIX = "c1"


@dataclass(frozen=True)
class Position:
    commit_seq: int
    id: int

    def encode(self) -> str:
        return f"{_CURSOR_PREFIX}.{self.commit_seq}.{self.id}"

    @classmethod
    def decode(cls, value: str | None) -> "Position":
        if not value:
            return cls(0, 0)
        try:
            prefix, seq, pk = value.split(".")
            if prefix != _CURSOR_PREFIX:
                raise ValueError
            return cls(int(seq), int(pk))
        except ValueError:
            raise InvalidInput(
                "since: not a cursor this server issued (use the X-Export-Cursor header of a previous export)",
                errors=[{"field": "since", "message": "invalid cursor"}],
            ) from None

    def after(self) -> Q:
        return Q(commit_seq__gt=self.commit_seq) | Q(commit_seq=self.commit_seq, id__gt=self.id)

    def up_to(self) -> Q:
        return Q(commit_seq__lt=self.commit_seq) | Q(commit_seq=self.commit_seq, id__lte=self.id)


def annotator_pseudonym(user_id: int) -> str:
    """A stable per-install pseudonym, so exports never carry usernames."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), str(user_id).encode(), hashlib.sha256
    ).hexdigest()
    return f"a-{digest[:8]}"


def _of(project: Project, prompt_split: str | None):
    judgements = Judgement.objects.filter(project=project)
    if prompt_split is not None:
        judgements = judgements.filter(task__prompt__split=prompt_split)
    return judgements


def _settled(project: Project, prompt_split: str | None = None):
    judgements = _of(project, prompt_split)
    if connection.vendor == "postgresql":
        judgements = judgements.filter(
            commit_seq__lt=RawSQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint", [])
        )
    return judgements


@dataclass
class Export:
    cursor: str
    rows: Iterator[dict[str, Any]]


_FIELDS = (
    "id",
    "commit_seq",
    "task_id",
    "annotator_id",
    "payload",
    "answer",
    "rationale",
    "time_spent_ms",
    "late",
    "created_at",
    "kind",
    "task__round",
    "task__prompt__messages",
    "task__prompt__external_id",
)


def export_judgements(
    *,
    project: Project,
    shape: str,
    since: str | None,
    chunk: int | None = None,
    prompt_split: str | None = None,
) -> Export:
    """Judgements of the project after `since`, as TRL-ready rows, and the cursor to pass next time.

    shape "pairs": one {prompt, chosen, rejected, margin, ...} row per decisive pairwise judgement
    (ties and both-bad are left out, as DPO cannot use them); "raw": every judgement with its
    payload and the responses it was given. `prompt_split` keeps only judgements on prompts of that
    split (the loop trains on "train" prompts only, so its held-out evaluation stays held out).
    Preconditions: the caller may export this project.
    """
    if shape not in SHAPES:
        raise InvalidInput(
            f"shape: must be one of {', '.join(SHAPES)}",
            errors=[{"field": "shape", "message": "unknown"}],
        )
    start = Position.decode(since)
    last = (
        _settled(project, prompt_split)
        .filter(start.after())
        .order_by("-commit_seq", "-id")
        .values_list("commit_seq", "id")
        .first()
    )
    if last is None:
        return Export(cursor=start.encode(), rows=iter(()))
    end = Position(*last)
    return Export(
        cursor=end.encode(),
        rows=_rows(project, shape, start, end, chunk or settings.TANDEM_EXPORT_CHUNK, prompt_split),
    )


def _rows(
    project: Project,
    shape: str,
    start: Position,
    end: Position,
    chunk: int,
    prompt_split: str | None,
) -> Iterator[dict[str, Any]]:
    base = _of(project, prompt_split).filter(end.up_to()).order_by("commit_seq", "id")
    position = start
    pseudonyms: dict[int, str] = {}
    while True:
        batch = list(base.filter(position.after()).values_list(*_FIELDS)[:chunk])
        if not batch:
            return
        task_ids = {row[2] for row in batch}
        responses = _responses_of(task_ids)
        agreement = _agreement_of(task_ids) if shape == "pairs" else {}
        for row in batch:
            record = dict(zip(_FIELDS, row, strict=True))
            annotator = pseudonyms.get(record["annotator_id"])
            if annotator is None:
                annotator = pseudonyms[record["annotator_id"]] = annotator_pseudonym(
                    record["annotator_id"]
                )
            shown = responses.get(record["task_id"], [])
            if shape == "pairs":
                out = _pair_row(record, shown, annotator, agreement.get(record["task_id"]))
                if out is not None:
                    yield out
            else:
                yield _raw_row(record, shown, annotator)
        position = Position(batch[-1][1], batch[-1][0])


def _responses_of(task_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    shown: dict[int, list[dict[str, Any]]] = {}
    slots = (
        TaskResponse.objects.filter(task_id__in=task_ids)
        .order_by("task_id", "position")
        .values_list("task_id", "response_id", "response__text", "response__model_name")
    )
    for task_id, response_id, text, model in slots:
        shown.setdefault(task_id, []).append({"id": response_id, "text": text, "model": model})
    return shown


def _agreement_of(task_ids: set[int]) -> dict[int, Counter]:
    counts: dict[int, Counter] = {}
    for task_id, answer in Judgement.objects.filter(task_id__in=task_ids).values_list(
        "task_id", "answer"
    ):
        counts.setdefault(task_id, Counter())[answer] += 1
    return counts


def _pair_row(
    record: dict[str, Any], shown: list[dict[str, Any]], annotator: str, answers: Counter | None
) -> dict[str, Any] | None:
    choice = record["payload"].get("choice")
    if choice not in ("A", "B") or len(shown) != 2:
        return None
    chosen, rejected = (shown[0], shown[1]) if choice == "A" else (shown[1], shown[0])
    agreement = answers[choice] / sum(answers.values()) if answers else 1.0
    return {
        "prompt": record["task__prompt__messages"],
        "chosen": [{"role": "assistant", "content": chosen["text"]}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
        "margin": float(record["payload"].get("strength") or 1),
        "task_id": record["task_id"],
        "judgement_ids": [record["id"]],
        "annotator": annotator,
        "agreement": round(agreement, 4),
        "round": record["task__round"],
    }


def _raw_row(record: dict[str, Any], shown: list[dict[str, Any]], annotator: str) -> dict[str, Any]:
    return {
        "judgement_id": record["id"],
        "task_id": record["task_id"],
        "external_id": record["task__prompt__external_id"],
        "kind": record["kind"],
        "prompt": record["task__prompt__messages"],
        "responses": shown,
        "payload": record["payload"],
        "rationale": record["rationale"],
        "annotator": annotator,
        "time_spent_ms": record["time_spent_ms"],
        "late": record["late"],
        "round": record["task__round"],
        "created_at": record["created_at"].isoformat(),
    }
