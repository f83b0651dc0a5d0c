"""Celery bridge: take ids, call one service, record status. Nothing else lives here."""

from celery import shared_task

from . import services


@shared_task(name="annotation.tasks.run_import", acks_late=True)
def run_import(job_id: int) -> str:
    return services.import_run(job_id=job_id).status
