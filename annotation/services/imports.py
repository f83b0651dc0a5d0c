"""Importing into a project: validate every line first, then write everything or nothing.

The upload is JSONL, or a zip holding one JSONL file at its root with the images its lines name by
relative path (`annotation.services.archives`). Lines are read by `import_lines`; each line's image
reference is then resolved to a stored, verified image of the project (`images_resolve`), and the
rows are written in one transaction. A refused import keeps nothing: no rows, and no image file
that no committed row names (`ImageBatch`).

Small files are imported inside the request; large ones are saved and run by a Celery job whose
progress the ImportJob row reports. The rows are written by `import_writes` (COPY on Postgres).
"""

import logging
import uuid
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError

from .. import jobs
from ..errors import ServiceUnavailable, TandemError, TooLarge
from ..models import ImportJob, Project
from .archives import ImportArchive, is_zip
from .images import ImageBatch, images_resolve
from .import_lines import ImportLine, LineError, ParsedImport, parse_import, parse_line
from .import_writes import write_tasks
from .outcomes import outcome_job_start

__all__ = ["ImportLine", "LineError", "import_create", "import_run", "import_sweep", "parse_line"]

logger = logging.getLogger(__name__)

# --- jobs ------------------------------------------------------------------------

_LIVE = (ImportJob.Status.QUEUED, ImportJob.Status.VALIDATING, ImportJob.Status.IMPORTING)
# Kept short so a request answers 503 within a few seconds when the broker is down.
_BROKER_CONNECT_SECONDS = 3
_BROKER_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class ImportAbandoned(Exception):
    """The job was failed by import_sweep while this run was still writing: the write is undone."""


def _lines(stream: "IO[bytes] | _Prefixed") -> Iterator[bytes]:
    yield from stream


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TandemError):
        return exc.message  # already says what is wrong, naming the entry or line
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


def _resolve_images(
    project: Project, parsed: ParsedImport, *, archive: ImportArchive | None, batch: ImageBatch
) -> None:
    """Stores (or finds) each line's image and names it "sha256:<hex>" on the line; the lines whose
    image cannot be had are refused. Only new files are written here; their rows come with the
    tasks', inside the import's transaction (`ImageBatch.write_rows`)."""
    refs = [(item.line, item.image) for item in parsed.items if item.image]
    if not refs:
        return
    resolved, errors = images_resolve(project=project, refs=refs, archive=archive, batch=batch)
    for item in parsed.items:
        if item.image:
            item.image = resolved.get(item.image, item.image)
    parsed.refuse(errors)


def _finish(job: ImportJob, parsed: ParsedImport, batch: ImageBatch) -> ImportJob:
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
        batch.write_rows()
        write_tasks(project=job.project, items=items)
        # The write counts only if the job is still ours: a sweep that gave it up meanwhile told
        # the user it failed, so the tasks must not appear after all.
        now = timezone.now()
        done = ImportJob.objects.filter(pk=job.pk, status=ImportJob.Status.IMPORTING).update(
            status=ImportJob.Status.DONE, created=len(items), finished_at=now, updated_at=now
        )
        if not done:
            raise ImportAbandoned(f"import {job.pk} was given up while it was writing")
        # Responses that came without an outcome get a simulated one (hindsight kind), by a job
        # sent on commit: it exists exactly when the tasks do.
        outcome_job_start(project=job.project, import_job=job)
    job.refresh_from_db()
    return job


def _import(
    job: ImportJob,
    lines: Iterable[bytes],
    progress=None,
    archive: ImportArchive | None = None,
) -> ImportJob:
    """Validates then writes; on any error the job is failed with the reason, and it re-raises."""
    stage = "reading the file"
    try:
        # The batch encloses the transaction: on the way out it deletes the image files it wrote
        # that no committed row names, so a refused or failed import leaves no file behind.
        with ImageBatch(project=job.project) as batch:
            parsed = parse_import(lines, project=job.project, progress=progress, seed=job.pk)
            stage = "storing the images"
            _resolve_images(job.project, parsed, archive=archive, batch=batch)
            stage = "writing"
            return _finish(job, parsed, batch)
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
        jobs.enqueue(
            jobs.RUN_IMPORT, job_id, connection=conn, retry=True, retry_policy=_BROKER_RETRY
        )


def import_create(
    *, project: Project, user: AbstractUser, stream: IO[bytes], size: int, filename: str = ""
) -> ImportJob:
    """Imports a JSONL or zip upload: inline when small, as a Celery job (status 'queued') when large.

    Nothing is written to the project unless every line is valid and every image it names is. A
    large file is queued before this returns: if the broker cannot take it, ServiceUnavailable is
    raised and neither the job nor the file is kept. (Called inside the caller's transaction, the
    job is queued on commit instead, and a broker outage then shows as a job that import_sweep
    fails later.) A zip is recognised by its first bytes, whatever its name.
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
    head = stream.read(4)
    try:
        # Uploads and spooled bodies can rewind (and Django's iterate from the start regardless).
        stream.seek(0)
        rest: IO[bytes] | _Prefixed = stream
        head_to_write = b""
    except (AttributeError, OSError, ValueError):
        rest, head_to_write = _Prefixed(head, stream), head
    zipped = is_zip(head)
    if size <= settings.TANDEM_IMPORT_INLINE_BYTES and not zipped:
        job = ImportJob.objects.create(status=ImportJob.Status.VALIDATING, **common)
        return _import(job, _lines(rest))

    directory = Path(settings.MEDIA_ROOT) / "imports"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex}.{'zip' if zipped else 'jsonl'}"
    job = None
    try:
        with path.open("wb") as out:
            out.write(head_to_write)
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                out.write(chunk)
        if size <= settings.TANDEM_IMPORT_INLINE_BYTES:
            # A small zip still has to lie on disk: its directory sits at its end.
            try:
                job = ImportJob.objects.create(status=ImportJob.Status.VALIDATING, **common)
                with ImportArchive(path) as archive:
                    return _import(job, archive.jsonl_lines(), archive=archive)
            except Exception as exc:
                if job is not None and job.status != ImportJob.Status.FAILED:
                    _fail(job, f"the import failed ({_describe(exc)}); nothing was imported")
                raise
            finally:
                path.unlink(missing_ok=True)
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
        if job is not None and job.status == ImportJob.Status.QUEUED:
            if not connection.in_atomic_block:
                job.delete()
        path.unlink(missing_ok=True)
        raise
    return job


class _Prefixed:
    """A stream whose first bytes were already read (to tell a zip from JSONL), given back first."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head, self._rest = head, rest

    def __iter__(self) -> Iterator[bytes]:
        pending = self._head
        for line in self._rest:
            if not pending:
                yield line
                continue
            # The head may itself hold a line break (a blank first line): split as a file would.
            joined, pending = pending + line, b""
            *whole, last = joined.split(b"\n")
            yield from (part + b"\n" for part in whole)
            if last:
                yield last
        if pending:
            yield pending


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
        if is_zip(path):
            with ImportArchive(path) as archive:
                job.lines_total = sum(1 for _ in archive.jsonl_lines())
                job.save(update_fields=["lines_total", "updated_at"])
                job = _import(job, archive.jsonl_lines(), progress, archive=archive)
        else:
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
