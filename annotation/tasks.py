"""Celery bridge: take ids, call one service, record status. Nothing else lives here.

Services are imported inside each task, and services enqueue work by name (`annotation.jobs`), so
neither module imports the other at load time: there is no services ↔ tasks import cycle.
"""

from celery import shared_task

from . import jobs


@shared_task(name=jobs.RUN_IMPORT, acks_late=True)
def run_import(job_id: int) -> str:
    from .services.imports import import_run

    return import_run(job_id=job_id).status


@shared_task(name="annotation.tasks.import_sweep", ignore_result=True)
def import_sweep() -> list[int]:
    from .services.imports import import_sweep as sweep

    return sweep()


@shared_task(name=jobs.RUN_OUTCOMES, acks_late=True)
def run_outcomes(job_id: int) -> str:
    from .services.outcomes import outcome_job_run

    return outcome_job_run(job_id=job_id).status


@shared_task(name="annotation.tasks.outcome_sweep", ignore_result=True)
def outcome_sweep() -> list[int]:
    from .services.outcomes import outcome_sweep as sweep

    return sweep()


@shared_task(name=jobs.RUN_ROUND_STAGE, acks_late=True, reject_on_worker_lost=True)
def run_round_stage(run_id: int) -> str:
    from .services.rounds import stage_run

    return stage_run(run_id=run_id)


@shared_task(name="annotation.tasks.loop_tick", ignore_result=True)
def loop_tick() -> list[int]:
    from .services.rounds import loop_tick as tick

    return tick()


@shared_task(name="annotation.tasks.token_sweep", ignore_result=True)
def token_sweep() -> int:
    from .services.tokens import token_sweep as sweep

    return sweep()
