"""Simulated outcomes (hindsight kind): a job writes what happened when the user acted on each
response, for responses that came without one, from the prompt's hidden facts.

RLHS's world model ("Mitigating Misalignment in RLHF with Hindsight Simulation"): the annotator's
second judgement rests on the consequence, not on the prediction the response invited. An import
line may bring real outcomes (outcome_source "imported"); those are never simulated nor touched.
Otherwise, when the prompt holds hidden facts and the project names a simulator
(`kind_settings.simulator_model`, see `annotation/kinds/hindsight/settings.py`), an `OutcomeJob`
runs `training.outcome_simulator` over the responses with outcome_source "" and writes each
outcome with outcome_source "simulated".

How a run behaves:
- Batch by batch: the model runs outside any transaction; each batch's outcomes are written in
  one transaction that re-checks, under row locks, that each response is still without outcome.
  A failure rolls back the batch it was in and fails the job with the reason; the batches written
  before it stay (each is whole). No response ever holds an outcome without its source or the
  reverse: both columns change in the same UPDATE.
- True utility: a world model known exactly (backend "world") also knows what the response was
  worth to the user; it is written to `Response.true_utility` in that same UPDATE. A language
  model's outcome is a guess, so its responses keep true_utility null (unknown). This column is
  written by nothing else: utilities an import brings stay in the prompt's `metadata.true_utility`,
  where the hindsight panels read them for the import's own tasks.
- Idempotent: a second message for the same job finds it claimed and does nothing; a new job
  after a failure writes only what is still missing; two jobs racing write each response once.
- Progress (`done` of `total`) and a heartbeat (`updated_at`) are on the job row, which the
  import page reads; `outcome_sweep` fails a job whose worker died.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from .. import jobs
from ..errors import TandemError
from ..kinds import kind_for
from ..models import ImportJob, OutcomeJob, Project, Response, Task

logger = logging.getLogger(__name__)

# Responses per generate() call and per write transaction: small enough that a batch of a large
# model finishes well inside the stale limit (the heartbeat is written between batches).
BATCH_SIZE = 8
_LIVE = (OutcomeJob.Status.QUEUED, OutcomeJob.Status.RUNNING)


def _pending(project: Project) -> QuerySet[Response]:
    """The project's responses still without an outcome whose prompt holds hidden facts."""
    return (
        Response.objects.filter(prompt__project=project, outcome_source="")
        .exclude(Q(prompt__hidden={}) | Q(prompt__hidden__isnull=True))
        .order_by("pk")
    )


def _simulator_settings(project: Project) -> dict[str, Any]:
    return kind_for(project.kind).settings_of(project.kind_settings)


def outcome_job_start(
    *, project: Project, import_job: ImportJob | None = None
) -> OutcomeJob | None:
    """Queues a simulation of the project's missing outcomes; None when there is nothing to do
    (the project names no simulator, or no response waits for an outcome).

    A job already queued or running for the project is returned instead of a second one. The job
    is sent to the broker on commit (at once outside a transaction); if the broker cannot take it,
    the job is failed with that reason, so the page says so and a later start tries again.
    Callable by hand (a shell, an admin action) and after every import.
    """
    settings = _simulator_settings(project)
    if not settings.get("simulator_model"):
        return None
    with transaction.atomic():
        # The project row lock orders two starts, so at most one live job exists per project.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        live = OutcomeJob.objects.filter(project=project, status__in=_LIVE).first()
        if live is not None:
            return live
        if not _pending(project).exists():
            return None
        job = OutcomeJob.objects.create(project=project, import_job=import_job)
        queue = "gpu" if settings.get("simulator_backend") == "vllm" else None
        transaction.on_commit(lambda: _enqueue(job.pk, queue))
    return job


def _enqueue(job_id: int, queue: str | None) -> None:
    try:
        jobs.enqueue_promptly(jobs.RUN_OUTCOMES, job_id, queue=queue)
    except Exception as exc:  # the broker's errors vary by transport; all mean "not queued"
        logger.warning("outcome job %s not queued: %s", job_id, exc)
        _fail(job_id, f"the job queue is unavailable ({type(exc).__name__}); start it again")


def _fail(job_id: int, message: str) -> None:
    now = timezone.now()
    OutcomeJob.objects.filter(pk=job_id, status__in=_LIVE).update(
        status=OutcomeJob.Status.FAILED, error=message[:2000], finished_at=now, updated_at=now
    )


def _build_simulator(settings: dict[str, Any], batch_size: int) -> Any:
    """The simulator the settings name, checked again now: a model root or the operator's list of
    servers may have changed since the settings were saved."""
    from training.outcome_simulator import SimulatorConfig, make_outcome_simulator

    from ..kinds.hindsight.settings import allowed_base_urls
    from ..loop import model_reference_check

    config = SimulatorConfig(
        template=settings["simulator_prompt"],
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["simulator_temperature"],
        seed=settings["simulator_seed"],
        batch_size=batch_size,
    )
    backend = settings["simulator_backend"]
    model = settings["simulator_model"]
    if backend == "openai":
        url = settings["simulator_base_url"]
        if url not in allowed_base_urls():
            raise TandemError(f"the server {url} is no longer allowed (TANDEM_SIMULATOR_URLS)")
        key = getattr(django_settings, "TANDEM_SIMULATOR_API_KEY", "") or os.environ.get(
            "TANDEM_SIMULATOR_API_KEY", ""
        )
        return make_outcome_simulator(backend, model, config, base_url=url, api_key=key or None)
    if backend == "world":
        return make_outcome_simulator(backend, model, config)
    reference = model_reference_check("kind_settings.simulator_model", model)
    return make_outcome_simulator(backend, reference, config)


def _claim(job_id: int) -> OutcomeJob | None:
    now = timezone.now()
    claimed = OutcomeJob.objects.filter(pk=job_id, status=OutcomeJob.Status.QUEUED).update(
        status=OutcomeJob.Status.RUNNING, updated_at=now
    )
    return OutcomeJob.objects.select_related("project").get(pk=job_id) if claimed else None


def _write(job: OutcomeJob, outcomes: dict[int, tuple[str, float | None]]) -> int:
    """Writes one batch of (outcome, true utility or None) by response id in one transaction;
    returns how many responses took their outcome. A known utility goes in the same UPDATE as its
    outcome; a batch with none known leaves the column alone.

    Responses that got an outcome meanwhile (imported, or another job's) are left as they are.
    Raises when the job is no longer running (swept as dead): the batch is then rolled back.
    """
    with transaction.atomic():
        alive = OutcomeJob.objects.select_for_update().filter(
            pk=job.pk, status=OutcomeJob.Status.RUNNING
        )
        if not alive.exists():
            raise TandemError("the job was given up while it was writing")
        rows = list(
            Response.objects.select_for_update()
            .filter(pk__in=outcomes, outcome_source="")
            .order_by("pk")
            .only("pk")
        )
        columns = ["outcome", "outcome_source"]
        if any(utility is not None for _, utility in outcomes.values()):
            columns.append("true_utility")
        for row in rows:
            row.outcome, row.true_utility = outcomes[row.pk]
            row.outcome_source = "simulated"
        Response.objects.bulk_update(rows, columns)
        # A task is leased once every response it shows has its outcome (Task.ready): opened in
        # the transaction that wrote the last of them, so no annotator ever sees one missing.
        Task.objects.filter(ready=False, slots__response_id__in=[r.pk for r in rows]).exclude(
            slots__response__outcome_source=""
        ).update(ready=True)
        OutcomeJob.objects.filter(pk=job.pk).update(
            done=F("done") + len(rows), updated_at=timezone.now()
        )
    return len(rows)


def outcome_job_run(*, job_id: int, batch_size: int = BATCH_SIZE) -> OutcomeJob:
    """Runs a queued job once (the Celery job's body); any other job is left as it is.

    Never raises for a fault of the simulation: the job is failed with the reason, and the
    outcomes of the batches written before the fault stay.
    """
    from training.outcome_simulator import OutcomeCase

    job = _claim(job_id)
    if job is None:
        return OutcomeJob.objects.get(pk=job_id)
    project = job.project
    written, last_pk = 0, 0
    try:
        OutcomeJob.objects.filter(pk=job.pk).update(total=_pending(project).count())
        simulator = _build_simulator(_simulator_settings(project), batch_size)
        while True:
            # Keyset order: each response is tried at most once per run, whatever happens to it.
            batch = list(
                _pending(project)
                .filter(pk__gt=last_pk)
                .select_related("prompt")
                .only("pk", "text", "prompt__messages", "prompt__hidden")[:batch_size]
            )
            if not batch:
                break
            last_pk = batch[-1].pk
            cases = [
                OutcomeCase(conversation=r.prompt.messages, response=r.text, hidden=r.prompt.hidden)
                for r in batch
            ]
            results = simulator.simulate_with_utility(cases)
            written += _write(job, {r.pk: res for r, res in zip(batch, results, strict=True)})
    except Exception as exc:
        logger.exception("outcome job %s failed", job.pk)
        reason = exc.message if isinstance(exc, TandemError) else f"{type(exc).__name__}: {exc}"
        reason = (reason.strip().splitlines() or [type(exc).__name__])[0][:500]
        _fail(
            job.pk,
            f"the simulation stopped ({reason}); {written} outcome{'s' * (written != 1)} were "
            "written and kept, the others are still missing: start the simulation again",
        )
    else:
        now = timezone.now()
        OutcomeJob.objects.filter(pk=job.pk, status=OutcomeJob.Status.RUNNING).update(
            status=OutcomeJob.Status.DONE, finished_at=now, updated_at=now
        )
    job.refresh_from_db()
    return job


def outcome_sweep() -> list[int]:
    """Fails every live job silent for TANDEM_IMPORT_STALE_SECONDS (its worker died); returns
    their ids. The outcomes they wrote stay; a new start writes the rest."""
    cutoff = timezone.now() - timedelta(seconds=django_settings.TANDEM_IMPORT_STALE_SECONDS)
    stale = list(
        OutcomeJob.objects.filter(status__in=_LIVE, updated_at__lt=cutoff).values_list(
            "pk", flat=True
        )
    )
    for pk in stale:
        _fail(
            pk,
            "the simulation stopped on the server (no progress for "
            f"{django_settings.TANDEM_IMPORT_STALE_SECONDS} s); outcomes already written are "
            "kept: start it again to write the rest",
        )
    return stale


def outcomes_simulate_now(*, project: Project) -> OutcomeJob | None:
    """Simulates the project's missing outcomes in this process and returns the finished job;
    None when none is missing. The online loop's select stage calls it before it makes tasks of
    new answers, so that no task of the loop ever reveals an empty outcome.

    Raises TandemError when the project names no simulator, when a job queued elsewhere is still
    live (the stage is retried later), or when the simulation failed (the job says why; the
    outcomes it wrote stay).
    """
    if not _pending(project).exists():
        return None
    if not _simulator_settings(project).get("simulator_model"):
        raise TandemError(
            "new answers need simulated outcomes: set the project's simulator_model "
            "(feedback settings) before running the loop"
        )
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if OutcomeJob.objects.filter(project=project, status__in=_LIVE).exists():
            raise TandemError("an outcome simulation of this project is still running; retry later")
        job = OutcomeJob.objects.create(project=project)
    job = outcome_job_run(job_id=job.pk)
    if job.status != OutcomeJob.Status.DONE:
        raise TandemError(job.error or "the outcome simulation failed")
    return job
