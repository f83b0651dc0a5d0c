"""The online loop, one round at a time (DESIGN.md "The online loop").

A round is a chain of stages, each one Celery job and one TrainingRun row:

    reward    fit the reward ensemble on every human judgement so far, evaluate it on held-out ones
    policy    train π_r by DPO from π_{r-1} against the fixed reference π_0, register the ModelVersion
    generate  sample K responses per prompt from π_r for the next prompt batch, and one response each
              from π_r and π_{r-1} on held-out prompts
    select    score the candidates with the ensemble, send pairs to humans by priority (ensemble
              disagreement first), let the ensemble label the rest, and create blind evaluation tasks

Jobs are idempotent: a stage that already succeeded is skipped; a model whose artifact was published
before a crash is registered from its manifest instead of being trained again; a ModelVersion is
unique per (project, kind, round). A worker killed mid-stage leaves the run 'running' with a stale
heartbeat, and `loop_tick` (run by beat) re-queues it. Triggers are derived from the database, never
from a message, so a broker outage delays a round but cannot lose it.

A re-queued run may still be alive (its heartbeat thread lost the database for a while, or the
worker was only frozen), so two attempts of one stage can run at once. Each claim increments the
run's `attempts`, and that number is the attempt's fencing token: every write an attempt makes
(progress, heartbeat, responses, tasks, model versions, artifact publication, success or failure)
happens in a transaction that first locks the run row and checks that `attempts` is still its own.
A superseded attempt raises `Superseded` at its next write and stops, having written nothing; each
attempt trains in its own scratch folder, so neither deletes the other's files.
"""

import gzip
import hashlib
import logging
import os
import random
import shutil
import tarfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.db import IntegrityError, connections, transaction
from django.db.models import Max
from django.utils import timezone

from ..errors import Conflict, InvalidInput, TandemError
from ..loop import LoopSettings, model_reference_check, project_artifact_root
from ..models import (
    FeedbackKind,
    Judgement,
    ModelVersion,
    Project,
    Prompt,
    Response,
    Round,
    Split,
    Task,
    TaskResponse,
    TrainingRun,
)
from ..selectors.export import Position, export_judgements
from .guards import project_ensure_writable

logger = logging.getLogger(__name__)

STAGES = ("reward", "policy", "generate", "select")
MAX_ATTEMPTS = 3
EVALUATION_PRIORITY = (
    1e6  # evaluation tasks are few and carry the round's headline number: ask first
)
# Sides and creation order of blind evaluations: unseeded and not replayable from anything an
# annotator can see (a seed from the project and round numbers could be replayed).
_BLIND = random.SystemRandom()


class StageError(Exception):
    """A stage cannot run with the data at hand; the message is shown on the dashboard as is."""


class Superseded(Exception):
    """A newer attempt of this run was claimed: this attempt may write nothing more."""


_LIVE = (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING)


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
    if project.kind != FeedbackKind.PAIRWISE and loop.enabled:
        raise InvalidInput(
            "the online loop runs on pairwise projects",
            errors=[{"field": "enabled", "message": "pairwise only"}],
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
    from ..tasks import run_round_stage  # the Celery bridge imports services

    try:
        run_round_stage.apply_async(args=[run.pk], queue=queue)
    except Exception:
        # The broker is down: the run stays queued and loop_tick sends it again once it is back.
        logger.warning("could not enqueue run %s; loop_tick will retry", run.pk, exc_info=True)


# --- the tick: triggers and recovery, derived from the database ---------------------------------


def fresh_judgements(*, project: Project) -> int:
    """Human judgements not yet used by any round."""
    last = Round.objects.filter(project=project).exclude(data_cursor="").order_by("-number").first()
    judgements = Judgement.objects.filter(project=project)
    if last is not None:
        judgements = judgements.filter(Position.decode(last.data_cursor).after())
    return judgements.count()


def loop_tick(*, stale_after: timedelta | None = None) -> list[int]:
    """Starts due rounds and revives lost or dead jobs; returns the ids of the rounds it started.

    Each run and each project is handled on its own: one that fails (settings today's checks
    refuse, a database error) is logged and recorded on its run, and the tick goes on with the rest.
    """
    if stale_after is None:  # timedelta(0) is falsy, and means "every live run is stale"
        stale_after = timedelta(seconds=django_settings.TANDEM_LOOP_STALE_SECONDS)
    now = timezone.now()
    for run in TrainingRun.objects.filter(
        status__in=_LIVE, heartbeat_at__lt=now - stale_after
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
    if run.round.status not in Round.ACTIVE or not _is_next(run):
        return
    if run.attempts >= MAX_ATTEMPTS:
        _fail(run, "the job died or was lost three times; see the worker logs", attempt=None)
        # No attempt will follow to clear the dead ones' scratch folders.
        root = project_artifact_root(run.round.project_id)
        for attempt in range(1, run.attempts + 1):
            shutil.rmtree(root / _SCRATCH.format(run=run.pk, attempt=attempt), ignore_errors=True)
        return
    try:
        queue = LoopSettings.of(run.round.project).queue
    except InvalidInput as exc:
        _fail(
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


def _is_next(run: TrainingRun) -> bool:
    """Only the first unfinished stage of a round may run."""
    first_open = (
        run.round.runs.exclude(status=TrainingRun.Status.SUCCEEDED).order_by("position").first()
    )
    return first_open is not None and first_open.pk == run.pk


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
        if not _is_next(run):
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
        with _heartbeat(run) as beating:
            STAGE_BODIES[run.stage](run, loop, _progress_reporter(run, beating))
        with transaction.atomic():
            _fence(run)
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
        _fail(run, message, detail=traceback.format_exc(), attempt=run.attempts)
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


def _fail(run: TrainingRun, message: str, detail: str = "", *, attempt: int | None) -> None:
    """Marks the run and its round failed: from a stage, only while `attempt` is the newest one;
    from loop_tick (`attempt=None`), only if no attempt claimed the run since it was read."""
    now = timezone.now()
    with transaction.atomic():
        failed = TrainingRun.objects.filter(
            pk=run.pk,
            attempts=run.attempts if attempt is None else attempt,
            status__in=_LIVE,
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


def _fence(run: TrainingRun) -> None:
    """Inside the transaction that writes: locks the run row and lets the write go on only while
    this attempt is the newest and the run is still live. The claim of a newer attempt waits on
    the same lock, so an attempt's writes land entirely before that claim or not at all."""
    current = (
        TrainingRun.objects.select_for_update()
        .filter(pk=run.pk)
        .values_list("attempts", "status")
        .first()
    )
    if current is None or current[0] != run.attempts or current[1] not in _LIVE:
        raise Superseded(f"run {run.pk}: attempt {run.attempts} is no longer the current one")


class _Beating:
    """What the heartbeat thread tells the stage: whether a newer attempt took the run over."""

    def __init__(self) -> None:
        self.superseded = threading.Event()


@contextmanager
def _heartbeat(run: TrainingRun) -> Iterator[_Beating]:
    """Keeps the run's heartbeat fresh while its stage works, even through long silent steps.

    The thread dies with the worker process, so a SIGKILLed worker goes stale and loop_tick
    re-queues the run; a live one never looks dead however long generation takes. A database
    error does not end the thread (it retries on a fresh connection at the next beat), and the
    beat is fenced like every other write: once a newer attempt holds the run, it stops beating
    and flags the stage to stop at its next progress report.
    """
    stop = threading.Event()
    beating = _Beating()
    interval = max(1.0, django_settings.TANDEM_LOOP_STALE_SECONDS / 4)

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    alive = TrainingRun.objects.filter(
                        pk=run.pk, attempts=run.attempts, status__in=_LIVE
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


def _progress_reporter(run: TrainingRun, beating: _Beating | None = None) -> Callable[[Any], None]:
    """Turns the training package's progress callbacks into fenced row updates (and a heartbeat).

    Raising here stops a superseded attempt's training at its next step.
    """

    def report(progress: Any) -> None:
        if beating is not None and beating.superseded.is_set():
            raise Superseded(f"run {run.pk}: attempt {run.attempts} was superseded")
        updated = TrainingRun.objects.filter(
            pk=run.pk, attempts=run.attempts, status__in=_LIVE
        ).update(
            progress_step=int(progress.step),
            progress_total=int(progress.total or 0),
            loss=progress.loss,
            heartbeat_at=timezone.now(),
        )
        if not updated:
            raise Superseded(f"run {run.pk}: attempt {run.attempts} was superseded")

    return report


def _artifact_root(project: Project) -> Path:
    root = project_artifact_root(project.pk)
    root.mkdir(parents=True, exist_ok=True)
    return root


_SCRATCH = ".tmp-run-{run}-attempt-{attempt}"


def _scratch(root: Path, run: TrainingRun) -> Path:
    """This attempt's own scratch folder under the project's artifact folder.

    Folders of this run's earlier attempts are removed: those attempts are superseded, so nothing
    they still write there can be published. Other runs' folders are left alone.
    """
    for attempt in range(run.attempts):
        shutil.rmtree(root / _SCRATCH.format(run=run.pk, attempt=attempt), ignore_errors=True)
    scratch = root / _SCRATCH.format(run=run.pk, attempt=run.attempts)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def _publish_once(
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
            _fence(run)
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


def _register(
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


# --- the stages -----------------------------------------------------------------------------------


def human_pairs(
    project: Project, since: str | None = None, until: str | None = None
) -> tuple[list[Any], str, int]:
    """Decisive human judgements on training prompts (after `since`, up to `until`) as pairs, the export cursor, and the count."""
    from training.data import parse_preference_rows

    export = export_judgements(
        project=project,
        shape="pairs",
        since=since or None,
        until=until or None,
        prompt_split=Split.TRAIN,
    )
    rows = list(export.rows())
    return parse_preference_rows(rows), export.cursor, len(rows)


def _stage_reward(run: TrainingRun, loop: LoopSettings, progress: Callable[[Any], None]) -> None:
    from training.artifacts import read_manifest
    from training.data import split_by_prompt
    from training.reward import EnsembleConfig, RewardConfig, train_reward_ensemble

    loop_round, project = run.round, run.round.project
    pairs, cursor, count = human_pairs(project)
    train, held_out = split_by_prompt(pairs, eval_fraction=0.2, seed=project.pk)
    if len(train) < 4 or not held_out:
        raise StageError(
            f"the reward ensemble needs more decisive human judgements: {count} so far "
            "(ties and both-bad answers do not count)"
        )
    config = EnsembleConfig(
        members=loop.ensemble_members,
        reward=RewardConfig(**{"backbone": loop.reward_backbone, **loop.reward}),
    )
    name = f"round-{loop_round.number}-reward"
    path, metrics = _publish_once(
        run,
        _artifact_root(project),
        name,
        lambda scratch: train_reward_ensemble(
            train,
            config,
            root=scratch,
            name=name,
            eval_pairs=held_out,
            progress=progress,
            data_cursor=cursor,
        ),
    )
    trained_to = read_manifest(path).data_cursor
    if trained_to and trained_to != cursor:
        # An attempt that died after publishing trained this model: the round records the data
        # that model saw, not the judgements that arrived since (they belong to the next round).
        cursor, count = trained_to, human_pairs(project, until=trained_to)[2]
    with transaction.atomic():
        _fence(run)
        version = _register(run, ModelVersion.Kind.REWARD, name, path, metrics, parent=None)
        accuracy = (metrics.get("eval") or {}).get("accuracy")
        Round.objects.filter(pk=loop_round.pk).update(
            reward_version=version, reward_accuracy=accuracy, data_cursor=cursor, judgements=count
        )


def _previous_policy(project: Project, number: int) -> ModelVersion:
    return (
        ModelVersion.objects.filter(
            project=project, kind=ModelVersion.Kind.POLICY, round__lt=number
        )
        .order_by("-round")
        .first()
    )


def model_labelled_pairs(project: Project, round_number: int) -> list[Any]:
    """Pairs the reward ensemble labelled for a round's tasks, in the export's pair shape."""
    from training.data import parse_preference_rows

    rows = []
    tasks = Task.objects.filter(
        project=project, round=round_number, auto_label__isnull=False
    ).select_related("prompt")
    slots: dict[int, list[str]] = {}
    for task_id, text in (
        TaskResponse.objects.filter(task__in=tasks)
        .order_by("task_id", "position")
        .values_list("task_id", "response__text")
    ):
        slots.setdefault(task_id, []).append(text)
    for task in tasks:
        first, second = slots[task.pk]
        chosen, rejected = (first, second) if task.auto_label["choice"] == "A" else (second, first)
        rows.append(
            {
                "prompt": task.prompt.messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return parse_preference_rows(rows)


def policy_pairs(project: Project, loop_round: Round) -> tuple[list[Any], str]:
    """The pairs round `loop_round`'s DPO trains on, and the export cursor they end at.

    Iterative DPO trains each round on the pairs the previous policy produced (the Online-RLHF
    recipe): the judgements made since the previous round took its data, and the pairs the
    ensemble labelled for that round. The reward ensemble, by contrast, learns from all of them.
    """
    earlier = Round.objects.filter(project=project, number=loop_round.number - 1).first()
    since = earlier.data_cursor if earlier is not None else None
    # Up to the cursor this round's reward stage took, not a fresh one: a judgement made between
    # the two stages then belongs to the next round's DPO only, instead of training it twice.
    until = Round.objects.values_list("data_cursor", flat=True).get(pk=loop_round.pk)
    pairs, cursor, _ = human_pairs(project, since=since, until=until)
    return pairs + model_labelled_pairs(project, round_number=loop_round.number - 1), cursor


def _stage_policy(run: TrainingRun, loop: LoopSettings, progress: Callable[[Any], None]) -> None:
    from training.policy import DPOConfig, train_dpo

    loop_round, project = run.round, run.round.project
    pairs, cursor = policy_pairs(project, loop_round)
    if not pairs:
        raise StageError(
            f"no new decisive human judgements since round {loop_round.number - 1} to train the policy on"
        )
    previous = _previous_policy(project, loop_round.number)
    base = _previous_policy(project, 1)
    config = DPOConfig(**{"loss": "ipo" if loop.algorithm == "ipo" else "sigmoid", **loop.policy})
    name = f"round-{loop_round.number}-policy"
    path, metrics = _publish_once(
        run,
        _artifact_root(project),
        name,
        lambda scratch: train_dpo(
            pairs,
            config,
            policy_ref=previous.artifact_path,
            reference_ref=base.artifact_path,
            root=scratch,
            name=name,
            progress=progress,
            data_cursor=cursor,
            parent=previous.name,
        ),
    )
    with transaction.atomic():
        _fence(run)
        version = _register(run, ModelVersion.Kind.POLICY, name, path, metrics, parent=previous)
        Round.objects.filter(pk=loop_round.pk).update(policy_version=version)


def prompt_batch(project: Project, number: int, size: int) -> list[Prompt]:
    """Round r's training prompts: slice r of the project's train prompts, wrapping around.

    Slice 0 is what round-0 tasks were usually imported for, so round 1 generates for fresh prompts.
    """
    ids = list(
        Prompt.objects.filter(project=project, split=Split.TRAIN)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if not ids:
        return []
    start = (number * size) % len(ids)
    chosen = [ids[(start + i) % len(ids)] for i in range(min(size, len(ids)))]
    by_id = Prompt.objects.in_bulk(chosen)
    return [by_id[i] for i in chosen]


def _stage_generate(run: TrainingRun, loop: LoopSettings, progress: Callable[[Any], None]) -> None:
    from training.generation import GenerationConfig, TransformersGenerator

    loop_round, project = run.round, run.round.project
    policy = loop_round.policy_version or ModelVersion.objects.get(
        project=project, kind="policy", round=loop_round.number
    )
    previous = _previous_policy(project, loop_round.number)
    if Response.objects.filter(model_version=policy).exists():
        return  # an earlier attempt got this far; the responses are already stored
    prompts = prompt_batch(project, loop_round.number, loop.prompts_per_round)
    if not prompts:
        raise StageError("the project has no training prompts to generate for")
    evaluation = list(
        Prompt.objects.filter(project=project, split=Split.EVAL).order_by("id")[: loop.eval_prompts]
    )
    config = GenerationConfig(
        **{"k": loop.samples_per_prompt, "seed": loop_round.number, **loop.generation}
    )
    current = TransformersGenerator(policy.artifact_path)
    progress_total = len(prompts) + 2 * len(evaluation)
    samples = current.generate([p.messages for p in prompts], config)
    progress(_Progress(len(prompts), progress_total))
    single = GenerationConfig(**{**config.__dict__, "k": 1})
    new_side = current.generate([p.messages for p in evaluation], single) if evaluation else []
    del current
    old_side = (
        TransformersGenerator(previous.artifact_path).generate(
            [p.messages for p in evaluation], single
        )
        if evaluation
        else []
    )
    progress(_Progress(progress_total, progress_total))
    held_out = [
        Response(
            prompt=p, text=storable_text(texts[0]), model_name=version.name, model_version=version
        )
        for version, side in ((policy, new_side), (previous, old_side))
        for p, texts in zip(evaluation, side, strict=True)
    ]
    # Blind evaluation: ids and creation times follow this order, so it must say nothing about
    # which model wrote which response, within a task or across tasks.
    _BLIND.shuffle(held_out)
    with transaction.atomic():
        _fence(run)
        if Response.objects.filter(model_version=policy).exists():
            return
        Response.objects.bulk_create(
            Response(
                prompt=p, text=storable_text(text), model_name=policy.name, model_version=policy
            )
            for p, texts in zip(prompts, samples, strict=True)
            for text in texts
        )
        Response.objects.bulk_create(held_out)
        TrainingRun.objects.filter(pk=run.pk).update(
            metrics={
                "prompts": len(prompts),
                "samples": sum(len(s) for s in samples),
                "evaluation_prompts": len(evaluation),
            }
        )


def storable_text(text: str) -> str:
    """Generated text as Postgres can store it: a small model may emit the NUL byte, which text refuses."""
    return text.replace("\x00", "\ufffd")


class _Progress:
    def __init__(self, step: int, total: int):
        self.step, self.total, self.loss = step, total, None


def _stage_select(run: TrainingRun, loop: LoopSettings, progress: Callable[[Any], None]) -> None:
    import numpy as np

    from training.reward import EnsembleScores, RewardEnsemble
    from training.selection import select_pairs

    loop_round, project = run.round, run.round.project
    if Task.objects.filter(project=project, round=loop_round.number).exists():
        return  # tasks were created by an earlier attempt, in the same transaction as each other
    policy = ModelVersion.objects.get(project=project, kind="policy", round=loop_round.number)
    previous = _previous_policy(project, loop_round.number)
    train_prompt_ids = [
        p.pk for p in prompt_batch(project, loop_round.number, loop.prompts_per_round)
    ]
    responses: dict[int, list[Response]] = {}
    for response in Response.objects.filter(
        model_version=policy, prompt_id__in=train_prompt_ids
    ).order_by("id"):
        # An empty sample is no answer to compare (and no training row): it never reaches a task.
        if response.text.strip():
            responses.setdefault(response.prompt_id, []).append(response)
    prompt_ids = [pid for pid in train_prompt_ids if len(responses.get(pid, [])) >= 2]
    prompts = Prompt.objects.in_bulk(prompt_ids)
    candidates = [[r.text for r in responses[pid]] for pid in prompt_ids]

    ensemble = RewardEnsemble.load(loop_round.reward_version.artifact_path)
    flat_prompts = [
        prompts[pid].messages
        for pid, texts in zip(prompt_ids, candidates, strict=True)
        for _ in texts
    ]
    flat_completions = [text for texts in candidates for text in texts]
    scores = ensemble.score(flat_prompts, flat_completions).members
    # One [members, k_p] block per prompt: k_p varies once empty samples are left out.
    bounds = np.cumsum([0] + [len(texts) for texts in candidates])
    per_prompt = [
        EnsembleScores(members=scores[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    selected = select_pairs(candidates, per_prompt, strategy=loop.selection, seed=loop_round.number)
    humans = round(len(selected) * loop.human_share)
    progress(_Progress(1, 2))

    with transaction.atomic():
        _fence(run)
        if Task.objects.filter(project=project, round=loop_round.number).exists():
            return
        for index, pick in enumerate(selected):
            pid = prompt_ids[pick.prompt_index]
            first, second = responses[pid][pick.first], responses[pid][pick.second]
            auto_label = None
            shown = [first, second]
            if index >= humans:
                mean = per_prompt[pick.prompt_index].members.mean(axis=0)
                # The ensemble's favourite is A: `random` selection does not orient its pairs,
                # and a label must never contradict the scores it comes from.
                if mean[pick.second] > mean[pick.first]:
                    shown.reverse()
                auto_label = {
                    "choice": "A",
                    "margin": float(abs(mean[pick.first] - mean[pick.second])),
                    "reward_version": loop_round.reward_version_id,
                }
            else:
                # Humans see the pair in random order, not the ensemble's favourite always as A.
                _BLIND.shuffle(shown)
            _task_create(
                project,
                prompts[pid],
                shown,
                round_number=loop_round.number,
                priority=pick.priority,
                auto_label=auto_label,
            )
        evaluations = 0
        new_side = {
            r.prompt_id: r
            for r in Response.objects.filter(model_version=policy)
            .exclude(prompt_id__in=train_prompt_ids)
            .select_related("prompt")
        }
        old_side = {
            r.prompt_id: r
            for r in Response.objects.filter(model_version=previous, prompt_id__in=new_side)
        }
        blind = [(r, old_side[pid]) for pid, r in new_side.items() if pid in old_side]
        # Blind: the new policy is A or B at random, from a source no one can replay, and the
        # tasks come in random order too.
        _BLIND.shuffle(blind)
        for response, old in blind:
            pair = [response, old]
            _BLIND.shuffle(pair)
            _task_create(
                project,
                response.prompt,
                pair,
                round_number=loop_round.number,
                priority=EVALUATION_PRIORITY,
                purpose="evaluation",
            )
            evaluations += 1
        TrainingRun.objects.filter(pk=run.pk).update(
            metrics={
                "human_tasks": humans,
                "model_labelled": len(selected) - humans,
                "evaluation_tasks": evaluations,
                "mean_priority": float(np.mean([p.priority for p in selected]))
                if selected
                else 0.0,
            }
        )


def _task_create(
    project: Project,
    prompt: Prompt,
    shown: list[Response],
    *,
    round_number: int,
    priority: float,
    auto_label: dict | None = None,
    purpose: str = "label",
) -> Task:
    task = Task.objects.create(
        project=project,
        prompt=prompt,
        kind=project.kind,
        round=round_number,
        priority=priority,
        overlap=project.overlap,
        purpose=purpose,
        auto_label=auto_label,
        is_complete=auto_label is not None,
    )
    TaskResponse.objects.bulk_create(
        TaskResponse(task=task, response=r, position=i) for i, r in enumerate(shown)
    )
    return task


STAGE_BODIES: dict[str, Callable[[TrainingRun, LoopSettings, Callable[[Any], None]], None]] = {
    "reward": _stage_reward,
    "policy": _stage_policy,
    "generate": _stage_generate,
    "select": _stage_select,
}


# --- model downloads --------------------------------------------------------------------------------

_ARCHIVES = ".downloads"


def model_archive(*, version: ModelVersion, artifact: Path) -> tuple[Path, str]:
    """The .tar.gz of a published artifact and its ETag, built once into a cache file.

    The archive is deterministic (sorted entries, owners and the gzip timestamp zeroed) and the
    artifact is immutable, so every request serves the same bytes: a cut-short download resumes
    with a Range request. The cache lives in the project's artifact folder under `.downloads/`;
    archive and ETag are written to temporary names and renamed into place, ETag first, so a
    reader finds either both complete or no archive (and builds it again).
    """
    cache = artifact.parent / _ARCHIVES
    archive = cache / f"{artifact.name}.tar.gz"
    etag_file = cache / f"{artifact.name}.etag"
    if archive.is_file() and etag_file.is_file():
        return archive, etag_file.read_text().strip()
    cache.mkdir(exist_ok=True)
    token = uuid.uuid4().hex
    temp = cache / f".tmp-{artifact.name}-{token}.tar.gz"
    digest = hashlib.sha256()
    try:
        with open(temp, "wb") as raw:
            hashing = _HashingWriter(raw, digest)
            with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, compresslevel=1) as zipped:
                with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for path in _artifact_entries(artifact):
                        tar.add(
                            path,
                            arcname=f"{artifact.name}/{path.relative_to(artifact)}",
                            recursive=False,
                            filter=_anonymous,
                        )
            raw.flush()
            os.fsync(raw.fileno())
        etag = f'"{digest.hexdigest()[:32]}"'
        etag_temp = cache / f".tmp-{artifact.name}-{token}.etag"
        etag_temp.write_text(etag)
        os.replace(etag_temp, etag_file)
        os.replace(temp, archive)
    finally:
        for leftover in cache.glob(f".tmp-{artifact.name}-{token}.*"):
            leftover.unlink(missing_ok=True)
    return archive, etag


class _HashingWriter:
    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest = raw, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _artifact_entries(artifact: Path) -> list[Path]:
    """Directories and regular files of the artifact, sorted; symlinks are left out."""
    entries = []
    for directory, subdirs, files in os.walk(artifact, followlinks=False):
        base = Path(directory)
        subdirs[:] = [d for d in subdirs if not (base / d).is_symlink()]
        entries += [base / d for d in subdirs]
        entries += [base / f for f in files if (base / f).is_file() and not (base / f).is_symlink()]
    return sorted(entries)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    return info
