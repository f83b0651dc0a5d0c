"""Incremental, streamed export of judgements in the TRL-ready shape of DESIGN.md.

Exactly-once across successive exports, even while annotators keep submitting: rows are read in
(commit_seq, id) order, where commit_seq is the inserting transaction's id on Postgres, and only up
to the oldest transaction still running when the export starts (pg_snapshot_xmin). Any judgement
that commits later has a transaction id at or above that horizon, so it sorts after every row this
export sends and is picked up by the next one, never skipped.

Every line carries its own `cursor` (its (commit_seq, id) position), so a body cut short by a
dropped connection or a killed worker resumes exactly after its last complete line: resuming from
any line's cursor yields exactly the lines after it. Nothing about the end of an export is sent
ahead of the body (a header that promised "everything up to here" would be wrong whenever the body
is cut). Rows are fetched in keyset-paged chunks, so memory stays flat.
"""

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL

from ..errors import InvalidInput
from ..kinds import kind_for
from ..kinds.base import ExportRecord, ExportShape
from ..models import Image, Judgement, Project, TaskResponse

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
                "since: not a cursor this server issued (use the `cursor` of the last line you received)",
                errors=[{"field": "since", "message": "invalid cursor"}],
            ) from None

    def after(self) -> Q:
        return Q(commit_seq__gt=self.commit_seq) | Q(commit_seq=self.commit_seq, id__gt=self.id)

    def up_to(self) -> Q:
        return Q(commit_seq__lt=self.commit_seq) | Q(commit_seq=self.commit_seq, id__lte=self.id)


def _pseudonym_salt(project_id: int) -> str:
    # Keyed by the project too, so one person's pseudonyms differ between projects and two
    # projects' exports cannot be joined on them.
    return hmac.new(
        settings.SECRET_KEY.encode(),
        f"tandem-annotator-pseudonym:{project_id}".encode(),
        hashlib.sha256,
    ).hexdigest()


def annotator_pseudonym(*, project_id: int, user_id: int) -> str:
    """A pseudonym stable within one project, so exports never carry usernames.

    md5 over a per-project salt derived from SECRET_KEY (HMAC-SHA256), because Postgres computes the
    same value inside the export query without an extension; without the secret neither the user
    ids nor the link between projects can be recovered.
    """
    salt = _pseudonym_salt(project_id)
    return f"a-{hashlib.md5((salt + str(user_id)).encode()).hexdigest()[:8]}"


def _of(project: Project, prompt_split: str | None, phase: str | None = None):
    judgements = Judgement.objects.filter(project=project)
    if prompt_split is not None:
        judgements = judgements.filter(task__prompt__split=prompt_split)
    if phase is not None:
        judgements = judgements.filter(phase=phase)
    return judgements


def _phase_read(shape: ExportShape, phase: str | None) -> str | None:
    """The phase whose judgements the shape reads: the asked one, or the shape's default."""
    if phase in (None, ""):
        return shape.phases[0] if shape.phases else None
    if phase not in shape.phases:
        offered = f"one of {', '.join(shape.phases)}" if shape.phases else "not given"
        raise InvalidInput(
            f"phase: the {shape.name} shape takes {offered}",
            errors=[{"field": "phase", "message": "not offered by this shape"}],
        )
    return phase


def _settled(project: Project, prompt_split: str | None = None, phase: str | None = None):
    judgements = _of(project, prompt_split, phase)
    if connection.vendor == "postgresql":
        judgements = judgements.filter(
            commit_seq__lt=RawSQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint", [])
        )
    return judgements


@dataclass
class Export:
    """The rows as newline-terminated JSON in blocks, each row with its own `cursor`.

    `since` is where this export starts (the normalised `since` it was given): a reader that got no
    complete line resumes from it. `cursor` is the position of the last row the export will read;
    only an in-process caller that consumes every block may pass it on as the next `since` (the
    HTTP API never sends it, as a cut body would make it skip rows).
    """

    since: str
    cursor: str
    blocks: Iterator[str]

    def rows(self) -> Iterator[dict[str, Any]]:
        for block in self.blocks:
            # Split on newline only: str.splitlines would also cut at U+2028 and friends, which
            # JSON leaves unescaped inside strings.
            for line in block.split("\n"):
                if line:
                    yield json.loads(line)


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
    "phase",
    "assignment_id",
    "task__round",
    "task__answer_counts",
    "task__judgement_count",
    "task__prompt__messages",
    "task__prompt__external_id",
    "task__prompt__image",
    "task__prompt__context",
    "task__prompt__metadata",
)


def export_judgements(
    *,
    project: Project,
    shape: str,
    since: str | None,
    until: str | None = None,
    chunk: int | None = None,
    prompt_split: str | None = None,
    phase: str | None = None,
) -> Export:
    """Judgements of the project after `since`, as TRL-ready rows each carrying its `cursor`.

    Passing any row's `cursor` as `since` yields exactly the rows after that row, so a reader cut
    short resumes from its last complete row and sees every judgement once.

    `until` (a cursor an earlier export returned) stops the export there, so the rows are exactly
    those between two earlier exports; the returned cursor is then at most `until`.

    `shape` is "raw" (every judgement with its payload and the responses it was given) or one of
    the export shapes of the project's kind (pairwise: "pairs", one {prompt, chosen, rejected,
    margin, ...} row per decisive judgement); `shapes_of` lists them. `prompt_split` keeps only
    judgements on prompts of that split (the loop trains on "train" prompts only, so its held-out
    evaluation stays held out). `phase`, for a kind with phases, picks which phase's judgements a
    shape reads among those it offers (`ExportShape.phases`; None: the shape's default).
    Preconditions: the caller may export this project.
    """
    available = shapes_of(project=project)
    if shape not in available:
        raise InvalidInput(
            f"shape: must be one of {', '.join(available)} (the shapes of a {project.kind} project)",
            errors=[{"field": "shape", "message": "unknown"}],
        )
    export_shape = available[shape]
    phase = _phase_read(export_shape, phase)
    start = Position.decode(since)
    settled = _settled(project, prompt_split, phase).filter(start.after())
    if until:
        settled = settled.filter(Position.decode(until).up_to())
    last = settled.order_by("-commit_seq", "-id").values_list("commit_seq", "id").first()
    if last is None:
        return Export(since=start.encode(), cursor=start.encode(), blocks=iter(()))
    end = Position(*last)
    chunk = chunk or settings.TANDEM_EXPORT_CHUNK
    if connection.vendor == "postgresql" and export_shape.sql is not None:
        blocks = _sql_blocks(project, shape, start, end, chunk, prompt_split, phase)
    else:
        blocks = _python_blocks(project, shape, start, end, chunk, prompt_split, phase)
    return Export(since=start.encode(), cursor=end.encode(), blocks=blocks)


# On Postgres each line is built by the database in the same keyset-paged query that finds it,
# so Python only joins text: that is what lets one worker stream tens of thousands of rows a second.
_ANNOTATOR_SQL = "'a-' || left(md5(%(salt)s || j.annotator_id::text), 8)"
# Position.encode, in SQL: each line names its own resume point.
_CURSOR_SQL = f"'{_CURSOR_PREFIX}.' || j.commit_seq::text || '.' || j.id::text"
# One keyset page of the export, after `since` and up to the cursor fixed when it started.
_PAGE_SQL = """  AND (j.commit_seq, j.id) > (%(seq)s, %(id)s) AND (j.commit_seq, j.id) <= (%(end_seq)s, %(end_id)s)
  AND (%(split)s::text IS NULL OR p.split = %(split)s::text)
  AND (%(phase)s::text IS NULL OR j.phase = %(phase)s::text)
ORDER BY j.commit_seq, j.id
LIMIT %(limit)s
"""
# The core's shape, which serves every kind; it fits the same frame as a kind's shape SQL.
_RAW_SQL = """
SELECT j.commit_seq, j.id, json_build_object(
    'judgement_id', j.id,
    'task_id', j.task_id,
    'external_id', p.external_id,
    'kind', j.kind,
    'prompt', p.messages,
    'responses', (SELECT json_agg(json_build_object('id', r.id, 'text', r.text, 'model', r.model_name)
                                  ORDER BY s.position)
                  FROM annotation_taskresponse s JOIN annotation_response r ON r.id = s.response_id
                  WHERE s.task_id = j.task_id),
    'payload', j.payload,
    'rationale', j.rationale,
    'annotator', {annotator},
    'time_spent_ms', j.time_spent_ms,
    'late', j.late,
    'round', t.round,
    'created_at', to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
    'cursor', {cursor}
)::text
FROM annotation_judgement j
JOIN annotation_task t ON t.id = j.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
WHERE j.project_id = %(project)s
{page}"""
# The first page is small so the first byte leaves quickly; later pages are large for throughput.
_FIRST_PAGE = 200
_BLOCK = 1000


def _sql_blocks(
    project: Project,
    shape: str,
    start: Position,
    end: Position,
    chunk: int,
    prompt_split: str | None,
    phase: str | None = None,
) -> Iterator[str]:
    export_shape = shapes_of(project=project)[shape]
    sql = _frame(export_shape.sql or "")
    params = {
        "phase": _phase_read(export_shape, phase),
        "project": project.pk,
        "kind": project.kind,
        "salt": _pseudonym_salt(project.pk),
        "end_seq": end.commit_seq,
        "end_id": end.id,
        "split": prompt_split,
    }
    position, limit = start, min(chunk, _FIRST_PAGE)
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            # A page is one index range scan plus key look-ups; parallel workers only add start-up
            # cost and take the second core from the web worker streaming the rows.
            cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            cursor.execute(
                sql, {**params, "seq": position.commit_seq, "id": position.id, "limit": limit}
            )
            page = cursor.fetchall()
        if not page:
            return
        # Sent in slices so a large page never sits in memory twice (as rows and as one string).
        for offset in range(0, len(page), _BLOCK):
            # A shape's SQL yields NULL for a row it cannot build (as `row` returns None).
            lines = [row[2] for row in page[offset : offset + _BLOCK] if row[2] is not None]
            if lines:
                yield "\n".join(lines) + "\n"
        if len(page) < limit:
            return
        position, limit = Position(page[-1][0], page[-1][1]), chunk


def _python_blocks(
    project: Project,
    shape: str,
    start: Position,
    end: Position,
    chunk: int,
    prompt_split: str | None,
    phase: str | None = None,
) -> Iterator[str]:
    """The portable path (SQLite, the demo's embedded database)."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for batch in _batches(project, shape, start, end, chunk, prompt_split, phase):
        if batch:
            yield "".join(dumps(row) + "\n" for row in batch)


def _batches(
    project: Project,
    shape: str,
    start: Position,
    end: Position,
    chunk: int,
    prompt_split: str | None,
    phase: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    export_shape = shapes_of(project=project)[shape]
    row_of, phase = export_shape.row, _phase_read(export_shape, phase)
    phases = kind_for(project.kind).phases
    base = _of(project, prompt_split, phase).filter(end.up_to()).order_by("commit_seq", "id")
    if shape != RAW.name:
        # A kind's shape reads its own kind's judgements only, as its SQL does (`j.kind`).
        base = base.filter(kind=project.kind)
    position = start
    pseudonyms: dict[int, str] = {}
    while True:
        batch = list(base.filter(position.after()).values_list(*_FIELDS)[:chunk])
        if not batch:
            return
        fields = [dict(zip(_FIELDS, row, strict=True)) for row in batch]
        responses = _responses_of({f["task_id"] for f in fields}, outcomes=bool(phases))
        images = _images_of({f["task__prompt__image"] for f in fields if f["task__prompt__image"]})
        # A kind's own shapes see each row's earlier phases (the hindsight row its foresight).
        earlier = _earlier_of(fields, phases) if phases and shape != RAW.name else {}
        out = []
        for f in fields:
            annotator = pseudonyms.get(f["annotator_id"])
            if annotator is None:
                annotator = pseudonyms[f["annotator_id"]] = annotator_pseudonym(
                    project_id=project.pk, user_id=f["annotator_id"]
                )
            record = _record(f, responses.get(f["task_id"], []), annotator, images)
            if earlier:
                record = replace(record, earlier=earlier.get(f["assignment_id"], {}))
            row = row_of(record)
            if row is not None:
                out.append(row)
        yield out
        position = Position(batch[-1][1], batch[-1][0])


def _record(
    f: dict[str, Any],
    shown: list[dict[str, Any]],
    annotator: str,
    images: dict[str, dict[str, str]],
) -> ExportRecord:
    # Share of the task's judgements that gave this answer, from the counts submit keeps on the task.
    agreement = f["task__answer_counts"].get(f["answer"], 0) / max(f["task__judgement_count"], 1)
    return ExportRecord(
        judgement_id=f["id"],
        task_id=f["task_id"],
        cursor=Position(f["commit_seq"], f["id"]).encode(),
        kind=f["kind"],
        payload=f["payload"],
        answer=f["answer"],
        rationale=f["rationale"],
        annotator=annotator,
        agreement=round(agreement, 4),
        round=f["task__round"],
        prompt=f["task__prompt__messages"],
        responses=shown,
        external_id=f["task__prompt__external_id"],
        image=images.get(f["task__prompt__image"]),
        context=f["task__prompt__context"] or {},
        metadata=f["task__prompt__metadata"] or {},
        time_spent_ms=f["time_spent_ms"],
        late=f["late"],
        created_at=f["created_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
        phase=f["phase"],
    )


def _earlier_of(
    fields: list[dict[str, Any]], phases: tuple[str, ...]
) -> dict[int, dict[str, dict[str, Any]]]:
    """{assignment id: {phase: row}} of the batch's rows' earlier phases, in one query."""
    wanted = {f["assignment_id"] for f in fields if f["phase"] != phases[0]}
    out: dict[int, dict[str, dict[str, Any]]] = {}
    rows = Judgement.objects.filter(assignment_id__in=wanted, phase__in=phases[:-1]).values_list(
        "assignment_id", "phase", "id", "payload", "rationale", "time_spent_ms", "late"
    )
    for assignment_id, phase, pk, payload, rationale, time_spent_ms, late in rows:
        out.setdefault(assignment_id, {})[phase] = {
            "judgement_id": pk,
            "payload": payload,
            "rationale": rationale,
            "time_spent_ms": time_spent_ms,
            "late": late,
        }
    return out


def _responses_of(task_ids: set[int], *, outcomes: bool = False) -> dict[int, list[dict[str, Any]]]:
    shown: dict[int, list[dict[str, Any]]] = {}
    columns = ["task_id", "response_id", "response__text", "response__model_name"]
    slots = (
        TaskResponse.objects.filter(task_id__in=task_ids)
        .order_by("task_id", "position")
        .values_list(*columns, *(["response__outcome"] if outcomes else []))
    )
    for task_id, response_id, text, model, *outcome in slots:
        response = {"id": response_id, "text": text, "model": model}
        if outcomes:
            response["outcome"] = outcome[0]
        shown.setdefault(task_id, []).append(response)
    return shown


def _images_of(refs: set[str]) -> dict[str, dict[str, str]]:
    """{"sha256:<hex>": {"sha256", "format"}} of the batch's prompt images, in one query."""
    if not refs:
        return {}
    rows = Image.objects.filter(pk__in=[ref.removeprefix("sha256:") for ref in refs]).values_list(
        "sha256", "format"
    )
    return {f"sha256:{sha}": {"sha256": sha, "format": fmt} for sha, fmt in rows}


def _raw_row(record: ExportRecord) -> dict[str, Any]:
    return {
        "judgement_id": record.judgement_id,
        "task_id": record.task_id,
        "external_id": record.external_id,
        "kind": record.kind,
        "prompt": record.prompt,
        "responses": record.responses,
        "payload": record.payload,
        "rationale": record.rationale,
        "annotator": record.annotator,
        "time_spent_ms": record.time_spent_ms,
        "late": record.late,
        "round": record.round,
        "created_at": record.created_at,
        "cursor": record.cursor,
    }


RAW = ExportShape(
    name="raw",
    description="every judgement with its payload and the responses it was given",
    row=_raw_row,
    sql=_RAW_SQL,
)


def _raw_phased_row(record: ExportRecord) -> dict[str, Any]:
    return {**_raw_row(record), "phase": record.phase}


# A kind with phases: every row names its phase, and its responses carry their outcomes (the
# prompt's hidden facts never leave the server).
RAW_PHASED = ExportShape(
    name="raw",
    description="every judgement (one per phase) with its phase, payload and the responses it "
    "was given, with their outcomes",
    row=_raw_phased_row,
    sql=_RAW_SQL.replace("'kind', j.kind,", "'kind', j.kind,\n    'phase', j.phase,").replace(
        "'model', r.model_name)", "'model', r.model_name, 'outcome', r.outcome)"
    ),
)


def shapes_of(*, project: Project) -> dict[str, ExportShape]:
    """The export shapes of the project: its kind's, then the core's "raw"."""
    kind = kind_for(project.kind)
    return {**kind.export_shapes, RAW.name: RAW_PHASED if kind.phases else RAW}


def _frame(sql: str) -> str:
    """A shape's SQL with the core's parts in place (str.replace: JSON braces need no doubling)."""
    return (
        sql.replace("{page}", _PAGE_SQL)
        .replace("{annotator}", _ANNOTATOR_SQL)
        .replace("{cursor}", _CURSOR_SQL)
    )
