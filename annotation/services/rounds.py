"""The online loop, one round at a time (DESIGN.md "The online loop"): settings, start, tick, run.

A round is a chain of stages (round_stages.STAGES: reward, policy, generate, select), each one
Celery job and one TrainingRun row. This module starts rounds, claims and finishes stage runs,
and revives lost ones; the stage bodies are in round_stages.py, the fencing of one attempt in
round_attempts.py, the loop's data reads in annotation/selectors/round_data.py.

Jobs are idempotent: a stage that already succeeded is skipped; a model whose artifact was published
before a crash is registered from its manifest instead of being trained again; a ModelVersion is
unique per (project, kind, round). A worker killed mid-stage leaves the run 'running' with a stale
heartbeat, and `loop_tick` (run by beat) re-queues it. Triggers are derived from the database, never
from a message, so a broker outage delays a round but cannot lose it. Two attempts of one stage may
run at once; round_attempts.py says how the older one is stopped before it writes anything.

Stage messages are sent by task name (annotation.jobs), so this module never imports the Celery
bridge that imports it.
"""

import logging
import traceback
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from .. import jobs
from ..errors import Conflict, InvalidInput, TandemError
from ..loop import LoopSettings, model_reference_check, project_artifact_root
from ..models import ModelVersion, Project, Round, TrainingRun
from ..selectors.round_data import fresh_judgements, loop_hooks, run_is_next
from .guards import project_ensure_writable
from .round_archives import model_archive
from .round_attempts import (
    LIVE,
    StageError,
    Superseded,
    progress_reporter,
    run_fail,
    run_fence,
    run_heartbeat,
    scratch_remove,
)
from .round_stages import STAGE_BODIES, STAGES, storable_text

# Names callers import from here (views, the REST API, simulation, management commands).
__all__ = [
    "STAGES",
    "loop_configure",
    "loop_tick",
    "model_archive",
    "round_run_inline",
    "round_start",
    "stage_run",
    "storable_text",
]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


# --- settings and starting ---------------------------------------------------------------------


def loop_configure(*, project: Project, data: dict[str, Any]) -> LoopSettings:
    """Validates and stores the loop settings (merged over the current ones).

    The merge starts from the stored values unchecked, so settings that today's rules refuse can
    still be fixed: the error then names the stored field that needs a new value.
    """
    project_ensure_writable(project=project)
    if not isinstance(data, dict):
        raise InvalidInput("the loop settings must be a JSON object")
    merged = {**LoopSettings.stored(project.loop), **data}
    loop = LoopSettings.parse(merged, project_id=project.pk)
    hooks = loop_hooks(project.kind)
    if loop.enabled and hooks is None:
        raise InvalidInput(
            f"the online loop does not serve {project.kind} projects",
            errors=[{"field": "enabled", "message": f"not available for {project.kind}"}],
        )
    offered = hooks.reward_models if hooks is not None else ("text",)
    if loop.reward_model not in offered:
        message = f"{project.kind} projects offer {', '.join(offered)}"
        raise InvalidInput(
            f"reward_model: {message}", errors=[{"field": "reward_model", "message": message}]
        )
    project.loop = loop.as_json()
    project.save(update_fields=["loop"])
    return loop


def round_start(*, project: Project, trigger: str = "manual") -> Round:
    """Queues the project's next round; Conflict when one is already queued or running."""
    project_ensure_writable(project=project)
    loop = LoopSettings.of(project)
    if not loop.policy_model:
        raise InvalidInput(
            "set the loop's base policy before starting a round",
            errors=[{"field": "policy_model", "message": "required"}],
        )
    try:
        with transaction.atomic():
            _base_policy(project, loop)
            number = (
                Round.objects.filter(project=project).aggregate(m=Max("number"))["m"] or 0
            ) + 1
            loop_round = Round.objects.create(project=project, number=number, trigger=trigger)
            runs = TrainingRun.objects.bulk_create(
                TrainingRun(round=loop_round, stage=stage, position=i, heartbeat_at=timezone.now())
                for i, stage in enumerate(STAGES)
            )
            first = runs[0]
            transaction.on_commit(lambda: _enqueue(first, loop.queue))
    except IntegrityError:
        raise Conflict("a round of this project is already queued or running") from None
    return loop_round


def _base_policy(project: Project, loop: LoopSettings) -> ModelVersion:
    """π_0 is registered as the round-0 policy version so every response can name its source.

    Only a checked reference is registered (a path as it resolves now, so a symlink swapped later
    changes nothing); a version registered before references were checked is corrected.
    """
    reference = model_reference_check("policy_model", loop.policy_model, project_id=project.pk)
    version, created = ModelVersion.objects.get_or_create(
        project=project,
        kind=ModelVersion.Kind.POLICY,
        round=0,
        defaults={"name": "π0 (base)", "artifact_path": reference},
    )
    if not created:
        try:
            model_reference_check("policy_model", version.artifact_path, project_id=project.pk)
        except InvalidInput:
            version.artifact_path = reference
            version.save(update_fields=["artifact_path"])
    return version


def _enqueue(run: TrainingRun, queue: str) -> None:
    try:
        jobs.enqueue(jobs.RUN_ROUND_STAGE, run.pk, queue=queue)
    except Exception:
        # The broker is down: the run stays queued and loop_tick sends it again once it is back.
        logger.warning("could not enqueue run %s; loop_tick will retry", run.pk, exc_info=True)


# --- the tick: triggers and recovery, derived from the database ---------------------------------


def loop_tick(*, stale_after: timedelta | None = None) -> list[int]:
    """Starts due rounds and revives lost or dead jobs; returns the ids of the rounds it started.

    Each run and each project is handled on its own: one that fails (settings today's checks
    refuse, a database error) is logged and recorded on its run, and the tick goes on with the rest.
    """
    if stale_after is None:  # timedelta(0) is falsy, and means "every live run is stale"
        stale_after = timedelta(seconds=django_settings.TANDEM_LOOP_STALE_SECONDS)
    now = timezone.now()
    for run in TrainingRun.objects.filter(
        status__in=LIVE, heartbeat_at__lt=now - stale_after
    ).select_related("round__project"):
        try:
            _revive(run, now=now, stale_before=now - stale_after)
        except Exception:
            logger.exception("loop_tick: could not revive run %s", run.pk)

    started = []
    for project in Project.objects.filter(archived=False, loop__enabled=True):
        try:
            with transaction.atomic():
                round_id = _start_if_due(project)
        except Exception:
            logger.exception("loop_tick: could not check project %s for a due round", project.pk)
            continue
        if round_id is not None:
            started.append(round_id)
    return started


def _revive(run: TrainingRun, *, now: Any, stale_before: Any) -> None:
    if run.round.status not in Round.ACTIVE or not run_is_next(run):
        return
    if run.attempts >= MAX_ATTEMPTS:
        run_fail(run, "the job died or was lost three times; see the worker logs", attempt=None)
        # No attempt will follow to clear the dead ones' scratch folders.
        root = project_artifact_root(run.round.project_id)
        scratch_remove(root, run.pk, range(1, run.attempts + 1))
        return
    try:
        queue = LoopSettings.of(run.round.project).queue
    except InvalidInput as exc:
        run_fail(
            run,
            f"the project's loop settings are refused ({exc.message}); fix them and start a new round",
            attempt=None,
        )
        return
    # Only if nothing changed since the read: a run that just reported or finished stays as it is.
    revived = TrainingRun.objects.filter(
        pk=run.pk, status=run.status, attempts=run.attempts, heartbeat_at__lt=stale_before
    ).update(status=TrainingRun.Status.QUEUED, heartbeat_at=now)
    if revived:
        _enqueue(run, queue)


def _start_if_due(project: Project) -> int | None:
    loop = LoopSettings.of(project)
    if (
        loop.trigger_judgements <= 0
        or Round.objects.filter(project=project, status__in=Round.ACTIVE).exists()
    ):
        return None
    if fresh_judgements(project=project) < loop.trigger_judgements:
        return None
    try:
        return round_start(project=project, trigger="auto").pk
    except Conflict:
        return None


# --- running a stage ------------------------------------------------------------------------------


def stage_run(*, run_id: int) -> str:
    """Runs one stage of a round (the Celery job's body). Safe to call again for the same run."""
    with transaction.atomic():
        run = (
            TrainingRun.objects.select_for_update().select_related("round__project").get(pk=run_id)
        )
        # Only a queued run is claimed: a duplicate message (redelivery after a crash, or a re-send by
        # loop_tick) finds it running or finished and leaves it alone.
        if run.status != TrainingRun.Status.QUEUED or run.round.status not in Round.ACTIVE:
            return run.status
        if not run_is_next(run):
            return "not-next"
        now = timezone.now()
        run.status = TrainingRun.Status.RUNNING
        run.attempts += 1
        run.started_at = run.started_at or now
        run.heartbeat_at = now
        run.error = ""
        run.save()
        loop_round = run.round
        if loop_round.status == Round.Status.QUEUED:
            loop_round.status = Round.Status.RUNNING
            loop_round.started_at = now
            loop_round.save(update_fields=["status", "started_at"])

    try:
        loop = LoopSettings.of(loop_round.project)
        with run_heartbeat(run) as beating:
            STAGE_BODIES[run.stage](run, loop, progress_reporter(run, beating))
        with transaction.atomic():
            run_fence(run)
            finished = timezone.now()
            TrainingRun.objects.filter(pk=run.pk).update(
                status=TrainingRun.Status.SUCCEEDED, finished_at=finished, heartbeat_at=finished
            )
            following = (
                loop_round.runs.filter(position__gt=run.position).order_by("position").first()
            )
            if following is None:
                Round.objects.filter(pk=loop_round.pk).update(
                    status=Round.Status.SUCCEEDED, finished_at=finished
                )
            else:
                TrainingRun.objects.filter(pk=following.pk).update(heartbeat_at=finished)
                transaction.on_commit(lambda: _enqueue(following, loop.queue))
    except Superseded:
        logger.warning(
            "round %s stage %s: attempt %s was superseded by a newer one and stopped",
            loop_round.pk,
            run.stage,
            run.attempts,
        )
        return "superseded"
    except Exception as exc:
        logger.exception("round %s stage %s failed", loop_round.pk, run.stage)
        if isinstance(exc, StageError | TandemError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        run_fail(run, message, detail=traceback.format_exc(), attempt=run.attempts)
        return TrainingRun.Status.FAILED
    return TrainingRun.Status.SUCCEEDED


def round_run_inline(*, loop_round: Round) -> Round:
    """Runs every remaining stage of a queued round in this process, in order (demos, tools).

    The messages round_start and each stage send still reach the broker; a worker that gets them
    later finds the stages finished and leaves them alone.
    """
    for run in loop_round.runs.order_by("position"):
        if stage_run(run_id=run.pk) == TrainingRun.Status.FAILED:
            break
    loop_round.refresh_from_db()
    return loop_round
