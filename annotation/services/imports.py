"""Importing JSONL into a project: validate every line first, then write everything or nothing.

A line: {"prompt": "text" | [{"role", "content"}...], "responses": ["text" | {"text", "model"?}...],
"id"?: external id, "metadata"?: {...}, "split"?: "train" | "eval"}.

Small files are imported inside the request; large ones are saved and run by a Celery job whose
progress the ImportJob row reports. On Postgres rows go in through COPY with ids drawn from the
tables' sequences up front, which is what lets 100,000 tasks land in seconds.
"""

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import connection, models, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from ..errors import ServiceUnavailable, TooLarge
from ..feedback import MAX_JSON_DEPTH, find_unstorable, may_be_unstorable, schema_for
from ..models import ImportJob, Project, Prompt, Response, Split, Task, TaskResponse

logger = logging.getLogger(__name__)

MAX_ERRORS_LISTED = 200
MAX_TEXT_CHARS = 200_000
MAX_EXTERNAL_ID = 200
ROLES = ("system", "user", "assistant")
_PROGRESS_EVERY = 5000
_BATCH = 5000


@dataclass
class ImportLine:
    line: int
    messages: list[dict[str, str]]
    responses: list[tuple[str, str]]
    external_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    split: str = Split.TRAIN


class LineError(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}" if field_name else message)


def _messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise LineError("prompt", "must not be empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise LineError(
            "prompt", "must be a string or a non-empty list of {role, content} messages"
        )
    messages = []
    for i, message in enumerate(value):
        where = f"prompt[{i}]"
        if not isinstance(message, dict):
            raise LineError(where, "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise LineError(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LineError(f"{where}.content", "must be a string")
        if len(content) > MAX_TEXT_CHARS:
            raise LineError(f"{where}.content", f"longer than {MAX_TEXT_CHARS} characters")
        messages.append({"role": role, "content": content})
    return messages


def _responses(value: Any, *, minimum: int, maximum: int) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise LineError("responses", "must be a list")
    if not value:
        return []  # a prompt for the online loop to generate for: no task until it has responses
    if not minimum <= len(value) <= maximum:
        wanted = str(minimum) if minimum == maximum else f"{minimum} to {maximum}"
        raise LineError(
            "responses", f"this project's kind takes {wanted} responses (or none), got {len(value)}"
        )
    out = []
    for i, item in enumerate(value):
        where = f"responses[{i}]"
        if isinstance(item, str):
            text, model = item, ""
        elif isinstance(item, dict):
            text, model = item.get("text"), item.get("model", "") or ""
            if not isinstance(text, str):
                raise LineError(f"{where}.text", "must be a string")
            if not isinstance(model, str):
                raise LineError(f"{where}.model", "must be a string")
        else:
            raise LineError(where, "must be a string or an object with text")
        if not text.strip():
            raise LineError(where, "must not be empty")
        if len(text) > MAX_TEXT_CHARS:
            raise LineError(where, f"longer than {MAX_TEXT_CHARS} characters")
        out.append((text, model[:200]))
    return out


def parse_line(raw: bytes | str, *, line: int, kind: str) -> ImportLine:
    schema = schema_for(kind)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LineError("", f"not valid JSON ({exc})") from None
    except RecursionError:
        raise LineError("", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise LineError("", "must be a JSON object")
    if may_be_unstorable(raw):
        fault = find_unstorable(obj)
        if fault is not None:
            raise LineError(*fault)
    if "prompt" not in obj:
        raise LineError("prompt", "required")
    if "responses" not in obj:
        raise LineError("responses", "required")
    external_id = obj.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, str | int):
            raise LineError("id", "must be a string or an integer")
        external_id = str(external_id)
        if not external_id or len(external_id) > MAX_EXTERNAL_ID:
            raise LineError("id", f"must be 1 to {MAX_EXTERNAL_ID} characters")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise LineError("metadata", "must be an object")
    split = obj.get("split", Split.TRAIN)
    if split not in Split.values:
        raise LineError("split", f"must be one of {', '.join(Split.values)}")
    return ImportLine(
        line=line,
        messages=_messages(obj["prompt"]),
        responses=_responses(
            obj["responses"], minimum=schema.min_responses, maximum=schema.max_responses
        ),
        external_id=external_id,
        metadata=metadata,
        split=split,
    )


@dataclass
class ParsedImport:
    items: list[ImportLine]
    errors: list[dict[str, Any]]
    error_count: int
    lines: int


def parse_import(
    lines: Iterable[bytes], *, project: Project, progress: Callable[[int], None] | None = None
) -> ParsedImport:
    """Validates every line; blank lines are skipped. Errors name the line and the field."""
    parsed: list[ImportLine] = []
    errors: list[dict[str, Any]] = []
    error_count = 0
    seen_ids: dict[str, int] = {}

    def fail(line: int, message: str) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < MAX_ERRORS_LISTED:
            errors.append({"line": line, "message": message})

    number = 0
    for number, raw in enumerate(lines, start=1):
        if progress and number % _PROGRESS_EVERY == 0:
            progress(number)
        if not raw.strip():
            continue
        try:
            item = parse_line(raw, line=number, kind=project.kind)
        except LineError as exc:
            fail(number, str(exc))
            continue
        if item.external_id is not None:
            first = seen_ids.setdefault(item.external_id, number)
            if first != number:
                fail(number, f"id: '{item.external_id}' repeats the id of line {first}")
                continue
        parsed.append(item)
    if progress:
        progress(number)

    if seen_ids:
        existing = _existing_external_ids(project, list(seen_ids))
        for external_id in sorted(existing, key=seen_ids.__getitem__):
            fail(seen_ids[external_id], f"id: '{external_id}' is already in this project")
    if not parsed and not error_count:
        fail(0, "the file holds no lines")
    errors.sort(key=lambda e: e["line"])
    return ParsedImport(items=parsed, errors=errors, error_count=error_count, lines=number)


def _existing_external_ids(project: Project, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 10_000):
        chunk = ids[start : start + 10_000]
        found.update(
            Prompt.objects.filter(project=project, external_id__in=chunk).values_list(
                "external_id", flat=True
            )
        )
    return found


# --- writing -------------------------------------------------------------------


def _reserve_ids(model: type[models.Model], count: int) -> list[int]:
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [table, count],
        )
        return [row[0] for row in cursor.fetchall()]


def _copy_rows(model: type[models.Model], columns: list[str], rows: Iterable[tuple]) -> None:
    table = connection.ops.quote_name(model._meta.db_table)
    column_sql = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({column_sql}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _write_postgres(project: Project, items: list[ImportLine]) -> None:
    now = timezone.now()
    prompt_ids = _reserve_ids(Prompt, len(items))
    with_tasks = [
        (item, pid) for item, pid in zip(items, prompt_ids, strict=True) if item.responses
    ]
    task_ids = _reserve_ids(Task, len(with_tasks))
    response_ids = iter(_reserve_ids(Response, sum(len(i.responses) for i in items)))
    response_rows, slot_rows = [], []
    for (item, prompt_id), task_id in zip(with_tasks, task_ids, strict=True):
        for position, (text, model) in enumerate(item.responses):
            response_id = next(response_ids)
            response_rows.append((response_id, prompt_id, text, model, now))
            slot_rows.append((task_id, response_id, position))
    _copy_rows(
        Prompt,
        [
            "id",
            "project_id",
            "messages",
            "external_id",
            "metadata",
            "image",
            "context",
            "split",
            "created_at",
        ],
        (
            (
                pid,
                project.pk,
                json.dumps(i.messages),
                i.external_id,
                json.dumps(i.metadata),
                "",
                "{}",
                i.split,
                now,
            )
            for pid, i in zip(prompt_ids, items, strict=True)
        ),
    )
    _copy_rows(Response, ["id", "prompt_id", "text", "model_name", "created_at"], response_rows)
    _copy_rows(
        Task,
        [
            "id",
            "project_id",
            "prompt_id",
            "kind",
            "round",
            "priority",
            "overlap",
            "judgement_count",
            "live_leases",
            "is_complete",
            "is_gold",
            "purpose",
            "created_at",
        ],
        (
            (
                tid,
                project.pk,
                pid,
                project.kind,
                0,
                0.0,
                project.overlap,
                0,
                0,
                False,
                False,
                "label",
                now,
            )
            for tid, (_, pid) in zip(task_ids, with_tasks, strict=True)
        ),
    )
    _copy_rows(TaskResponse, ["task_id", "response_id", "position"], slot_rows)
    # Fresh planner statistics: right after a bulk load the tables look empty to the planner, and
    # the lease and task queries would scan them until autovacuum caught up.
    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE annotation_prompt, annotation_response, annotation_task, annotation_taskresponse"
        )


def _write_portable(project: Project, items: list[ImportLine]) -> None:
    for start in range(0, len(items), _BATCH):
        batch = items[start : start + _BATCH]
        prompts = Prompt.objects.bulk_create(
            Prompt(
                project=project,
                messages=i.messages,
                external_id=i.external_id,
                metadata=i.metadata,
                split=i.split,
            )
            for i in batch
        )
        responses = Response.objects.bulk_create(
            Response(prompt=p, text=text, model_name=model)
            for p, i in zip(prompts, batch, strict=True)
            for text, model in i.responses
        )
        asked = [(p, i) for p, i in zip(prompts, batch, strict=True) if i.responses]
        tasks = Task.objects.bulk_create(
            Task(project=project, prompt=p, kind=project.kind, overlap=project.overlap)
            for p, _ in asked
        )
        slots, cursor = [], iter(responses)
        for task, (_, item) in zip(tasks, asked, strict=True):
            for position in range(len(item.responses)):
                slots.append(TaskResponse(task=task, response=next(cursor), position=position))
        TaskResponse.objects.bulk_create(slots)


def write_tasks(*, project: Project, items: list[ImportLine]) -> None:
    """Writes prompts, responses and tasks for validated lines. Caller owns the transaction."""
    if connection.vendor == "postgresql":
        _write_postgres(project, items)
    else:
        _write_portable(project, items)


# --- jobs ------------------------------------------------------------------------

_LIVE = (ImportJob.Status.QUEUED, ImportJob.Status.VALIDATING, ImportJob.Status.IMPORTING)
# Kept short so a request answers 503 within a few seconds when the broker is down.
_BROKER_CONNECT_SECONDS = 3
_BROKER_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class ImportAbandoned(Exception):
    """The job was failed by import_sweep while this run was still writing: the write is undone."""


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    yield from stream


def _describe(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _fail(job: ImportJob, message: str) -> ImportJob:
    """Marks a live job failed; a job already finished (or swept, with its own reason) keeps its end."""
    now = timezone.now()
    ImportJob.objects.filter(pk=job.pk, status__in=_LIVE).update(
        status=ImportJob.Status.FAILED,
        errors=[{"line": 0, "message": message}],
        created=0,
        finished_at=now,
        updated_at=now,
    )
    job.refresh_from_db()
    return job


def _finish(job: ImportJob, parsed: ParsedImport) -> ImportJob:
    items, errors, error_count = parsed.items, parsed.errors, parsed.error_count
    job.lines_total = job.lines_done = parsed.lines
    if error_count:
        job.status = ImportJob.Status.FAILED
        job.errors = errors
        if error_count > len(errors):
            job.errors.append(
                {"line": 0, "message": f"{error_count - len(errors)} more errors not listed"}
            )
        job.created = 0
        job.finished_at = timezone.now()
        job.save()
        return job
    job.status = ImportJob.Status.IMPORTING
    job.save(update_fields=["status", "lines_total", "lines_done", "updated_at"])
    with transaction.atomic():
        write_tasks(project=job.project, items=items)
        # The write counts only if the job is still ours: a sweep that gave it up meanwhile told
        # the user it failed, so the tasks must not appear after all.
        now = timezone.now()
        done = ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.IMPORTING).update(
            status=ImportJob.Status.DONE, created=len(items), finished_at=now, updated_at=now
        )
        if not done:
            raise ImportAbandoned(f"import {job.pk} was given up while it was writing")
    job.refresh_from_db()
    return job


def _import(job: ImportJob, lines: Iterable[bytes], progress=None) -> ImportJob:
    """Validates then writes; on any error the job is failed with the reason, and it re-raises."""
    stage = "reading the file"
    try:
        parsed = parse_import(lines, project=job.project, progress=progress)
        stage = "writing"
        return _finish(job, parsed)
    except Exception as exc:
        _fail(job, f"the import failed while {stage} ({_describe(exc)}); nothing was imported")
        raise


def _enqueue_run(job_id: int) -> None:
    """Hands the job to the broker before returning, on a connection of its own.

    The shared producer pool would retry for a long time and, behind on_commit, fail only after
    the caller had answered; a fresh connection with a short timeout fails here, in the request.
    """
    from celery import current_app

    with current_app.connection_for_write(
        url=settings.CELERY_BROKER_URL, connect_timeout=_BROKER_CONNECT_SECONDS
    ) as conn:
        current_app.send_task(
            "annotation.tasks.run_import",
            args=[job_id],
            connection=conn,
            retry=True,
            retry_policy=_BROKER_RETRY,
        )


def import_create(
    *, project: Project, user: AbstractUser, stream: IO[bytes], size: int, filename: str = ""
) -> ImportJob:
    """Imports a JSONL upload: inline when small, as a Celery job (status 'queued') when large.

    Nothing is written to the project unless every line is valid. A large file is queued before
    this returns: if the broker cannot take it, ServiceUnavailable is raised and neither the job
    nor the file is kept. (Called inside the caller's transaction, the job is queued on commit
    instead, and a broker outage then shows as a job that import_sweep fails later.)
    """
    if size > settings.TANDEM_IMPORT_MAX_BYTES:
        raise TooLarge(
            f"the file is {size} bytes; the limit is {settings.TANDEM_IMPORT_MAX_BYTES} bytes "
            "(split it into several imports)"
        )
    common = {
        "project": project,
        "created_by": user,
        "filename": filename[:300],
        "size_bytes": size,
    }
    if size <= settings.TANDEM_IMPORT_INLINE_BYTES:
        job = ImportJob.objects.create(status=ImportJob.Status.VALIDATING, **common)
        return _import(job, _lines(stream))

    directory = Path(settings.MEDIA_ROOT) / "imports"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex}.jsonl"
    job = None
    try:
        with path.open("wb") as out:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                out.write(chunk)
        job = ImportJob.objects.create(source_path=str(path), **common)
        if connection.in_atomic_block:
            job_id = job.pk
            transaction.on_commit(lambda: _enqueue_run(job_id))
            return job
        try:
            _enqueue_run(job.pk)
        except (KombuOperationalError, OSError) as exc:
            logger.warning("import refused: the broker is unavailable (%s)", _describe(exc))
            raise ServiceUnavailable(
                "the job queue is unavailable, so the import was not stored; try again shortly"
            ) from exc
    except BaseException:
        # Whatever went wrong, the caller hears of it now: no job row or file stays behind.
        if job is not None and not connection.in_atomic_block:
            job.delete()
        path.unlink(missing_ok=True)
        raise
    return job


def import_run(*, job_id: int) -> ImportJob:
    """Runs a queued import job once; any other job (finished, or claimed by an earlier run that
    died) is left alone and import_sweep fails it when it goes stale.

    Never raises for a fault of the import: the job is failed with the reason instead.
    """
    now = timezone.now()
    claimed = ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.QUEUED).update(
        status=ImportJob.Status.VALIDATING, updated_at=now
    )
    job = ImportJob.objects.select_related("project").get(pk=job_id)
    if not claimed:
        return job
    path = Path(job.source_path)

    def progress(done: int) -> None:
        # Touching updated_at is the heartbeat import_sweep reads.
        ImportJob.objects.filter(pk=job.pk).update(lines_done=done, updated_at=timezone.now())

    try:
        with path.open("rb") as counting:
            job.lines_total = sum(1 for _ in counting)
        job.save(update_fields=["lines_total", "updated_at"])
        with path.open("rb") as stream:
            job = _import(job, stream, progress)
    except Exception as exc:
        logger.exception("import %s failed", job.pk)
        job = _fail(job, f"the import failed ({_describe(exc)}); nothing was imported")
    finally:
        path.unlink(missing_ok=True)
    return job


def import_sweep() -> list[int]:
    """Fails every live import job silent for TANDEM_IMPORT_STALE_SECONDS: its worker died.

    Returns the ids failed. A run that is in fact still writing finds its job given up when it
    tries to finish and rolls its write back, so a swept job never gains tasks.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.TANDEM_IMPORT_STALE_SECONDS)
    with transaction.atomic():
        stale = list(
            ImportJob.objects.select_for_update(skip_locked=True)
            .filter(status__in=_LIVE, updated_at__lt=cutoff)
            .values_list("pk", "source_path")
        )
        ImportJob.objects.filter(pk__in=[pk for pk, _ in stale]).update(
            status=ImportJob.Status.FAILED,
            errors=[
                {
                    "line": 0,
                    "message": "the import stopped on the server (no progress for "
                    f"{settings.TANDEM_IMPORT_STALE_SECONDS} s); nothing was imported",
                }
            ],
            created=0,
            finished_at=now,
            updated_at=now,
        )
    for _, source in stale:
        if source:
            Path(source).unlink(missing_ok=True)
    return [pk for pk, _ in stale]
