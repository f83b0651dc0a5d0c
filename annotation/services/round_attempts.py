"""One attempt of a round's stage: its fence, heartbeat, progress, scratch folder and publication.

A re-queued run may still be alive (its heartbeat thread lost the database for a while, or the
worker was only frozen), so two attempts of one stage can run at once. Each claim increments the
run's `attempts`, and that number is the attempt's fencing token: every write an attempt makes
(progress, heartbeat, responses, tasks, model versions, artifact publication, success or failure)
happens in a transaction that first locks the run row and checks that `attempts` is still its own.
A superseded attempt raises `Superseded` at its next write and stops, having written nothing; each
attempt trains in its own scratch folder, so neither deletes the other's files.
"""

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.db import connections, transaction
from django.utils import timezone

from ..loop import project_artifact_root
from ..models import ModelVersion, Project, Round, TrainingRun

logger = logging.getLogger(__name__)

LIVE = (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING)


class StageError(Exception):
    """A stage cannot run with the data at hand; the message is shown on the dashboard as is."""


class Superseded(Exception):
    """A newer attempt of this run was claimed: this attempt may write nothing more."""


def run_fence(run: TrainingRun) -> None:
    """Inside the transaction that writes: locks the run row and lets the write go on only while
    this attempt is the newest and the run is still live. The claim of a newer attempt waits on
    the same lock, so an attempt's writes land entirely before that claim or not at all."""
    current = (
        TrainingRun.objects.select_for_update()
        .filter(pk=run.pk)
        .values_list("attempts", "status")
        .first()
    )
    if current is None or current[0] != run.attempts or current[1] not in LIVE:
        raise Superseded(f"run {run.pk}: attempt {run.attempts} is no longer the current one")


def run_fail(run: TrainingRun, message: str, detail: str = "", *, attempt: int | None) -> None:
    """Marks the run and its round failed: from a stage, only while `attempt` is the newest one;
    from loop_tick (`attempt=None`), only if no attempt claimed the run since it was read."""
    now = timezone.now()
    with transaction.atomic():
        failed = TrainingRun.objects.filter(
            pk=run.pk,
            attempts=run.attempts if attempt is None else attempt,
            status__in=LIVE,
        ).update(
            status=TrainingRun.Status.FAILED,
            error=message,
            log=(run.log + "\n" + detail).strip(),
            finished_at=now,
        )
        if failed:
            Round.objects.filter(pk=run.round_id).update(
                status=Round.Status.FAILED, error=f"{run.stage}: {message}", finished_at=now
            )


class Beating:
    """What the heartbeat thread tells the stage: whether a newer attempt took the run over."""

    def __init__(self) -> None:
        self.superseded = threading.Event()


@contextmanager
def run_heartbeat(run: TrainingRun) -> Iterator[Beating]:
    """Keeps the run's heartbeat fresh while its stage works, even through long silent steps.

    The thread dies with the worker process, so a SIGKILLed worker goes stale and loop_tick
    re-queues the run; a live one never looks dead however long generation takes. A database
    error does not end the thread (it retries on a fresh connection at the next beat), and the
    beat is fenced like every other write: once a newer attempt holds the run, it stops beating
    and flags the stage to stop at its next progress report.
    """
    stop = threading.Event()
    beating = Beating()
    interval = max(1.0, django_settings.TANDEM_LOOP_STALE_SECONDS / 4)

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    alive = TrainingRun.objects.filter(
                        pk=run.pk, attempts=run.attempts, status__in=LIVE
                    ).update(heartbeat_at=timezone.now())
                except Exception:
                    logger.warning("heartbeat of run %s failed; retrying", run.pk, exc_info=True)
                    connections.close_all()
                    continue
                if not alive:
                    beating.superseded.set()
                    return
        finally:
            connections.close_all()

    thread = threading.Thread(target=beat, name=f"heartbeat-run-{run.pk}", daemon=True)
    thread.start()
    try:
        yield beating
    finally:
        stop.set()
        thread.join(timeout=10)


def progress_reporter(run: TrainingRun, beating: Beating | None = None) -> Callable[[Any], None]:
    """Turns the training package's progress callbacks into fenced row updates (and a heartbeat).

    Raising here stops a superseded attempt's training at its next step.
    """

    def report(progress: Any) -> None:
        if beating is not None and beating.superseded.is_set():
            raise Superseded(f"run {run.pk}: attempt {run.attempts} was superseded")
        updated = TrainingRun.objects.filter(
            pk=run.pk, attempts=run.attempts, status__in=LIVE
        ).update(
            progress_step=int(progress.step),
            progress_total=int(progress.total or 0),
            loss=progress.loss,
            heartbeat_at=timezone.now(),
        )
        if not updated:
            raise Superseded(f"run {run.pk}: attempt {run.attempts} was superseded")

    return report


# --- artifacts ------------------------------------------------------------------------------------


def artifact_root(project: Project) -> Path:
    root = project_artifact_root(project.pk)
    root.mkdir(parents=True, exist_ok=True)
    return root


_SCRATCH = ".tmp-run-{run}-attempt-{attempt}"


def scratch_remove(root: Path, run_id: int, attempts: range) -> None:
    """Removes the scratch folders of the given attempts of a run (those that exist)."""
    for attempt in attempts:
        shutil.rmtree(root / _SCRATCH.format(run=run_id, attempt=attempt), ignore_errors=True)


def _scratch(root: Path, run: TrainingRun) -> Path:
    """This attempt's own scratch folder under the project's artifact folder.

    Folders of this run's earlier attempts are removed: those attempts are superseded, so nothing
    they still write there can be published. Other runs' folders are left alone.
    """
    scratch_remove(root, run.pk, range(run.attempts + 1))
    scratch = root / _SCRATCH.format(run=run.pk, attempt=run.attempts)
    scratch.mkdir(parents=True)
    return scratch


def publish_once(
    run: TrainingRun, root: Path, name: str, train: Callable[[Path], Any]
) -> tuple[Path, dict[str, Any]]:
    """Trains unless a previous attempt already published this artifact (then reads its manifest).

    `train(scratch)` publishes `scratch/name` (training.artifacts.publish_run); the finished run
    is then moved to `root/name` under the fence, so only the newest attempt publishes.
    """
    from training.artifacts import is_published, read_manifest

    path = root / name
    if is_published(path):
        return path, dict(read_manifest(path).metrics)
    if path.exists():
        raise StageError(f"{path} exists but holds no manifest: remove it to retrain")
    scratch = _scratch(root, run)
    try:
        result = train(scratch)
        built = Path(result.path)
        with transaction.atomic():
            run_fence(run)
            if path.exists():
                raise StageError(f"{path} appeared while this attempt trained")
            # Same file system, so the rename is atomic: readers see no run or a complete one.
            os.rename(built, path)
            fd = os.open(root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path, dict(result.metrics)


def version_register(
    run: TrainingRun,
    kind: str,
    name: str,
    path: Path,
    metrics: dict[str, Any],
    parent: ModelVersion | None,
) -> ModelVersion:
    """Registers the published model; the caller holds the fence in the same transaction."""
    version, _ = ModelVersion.objects.get_or_create(
        project=run.round.project,
        kind=kind,
        round=run.round.number,
        defaults={"name": name, "artifact_path": str(path), "metrics": metrics, "parent": parent},
    )
    TrainingRun.objects.filter(pk=run.pk).update(model_version=version, metrics=metrics)
    return version
