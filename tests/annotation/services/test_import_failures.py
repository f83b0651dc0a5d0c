"""Imports that fail on the server: marked failed with the reason, nothing kept, never stuck."""

import io
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation import services
from annotation.errors import ServiceUnavailable
from annotation.models import ImportJob, Prompt, Response, Task, TaskResponse
from annotation.services.imports import import_sweep
from tests.factories import ProjectFactory, jsonl, pairwise_lines

CLOSED_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused


def counts():
    return (
        Prompt.objects.count(),
        Response.objects.count(),
        Task.objects.count(),
        TaskResponse.objects.count(),
    )


def create(project, body: bytes):
    return services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )


def queued_job(project, settings, tmp_path, n: int = 20) -> ImportJob:
    """A job spooled to disk and queued, whose message nobody consumes (the test runs it)."""
    settings.MEDIA_ROOT = tmp_path
    settings.TANDEM_IMPORT_INLINE_BYTES = 10
    job = create(project, jsonl(pairwise_lines(n, start=300)))
    assert job.status == ImportJob.Status.QUEUED
    return job


def fail_writes_to_taskresponse(*, sleep: float = 0.0) -> None:
    """A real Postgres fault in the middle of the write: rows before it are already inserted."""
    body = f"PERFORM pg_sleep({sleep});" if sleep else "RAISE EXCEPTION 'disk is full (test)';"
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE OR REPLACE FUNCTION tandem_test_fault() RETURNS trigger AS $$ BEGIN {body} "
            "RETURN NULL; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER tandem_test_fault BEFORE INSERT ON annotation_taskresponse "
            "FOR EACH STATEMENT EXECUTE FUNCTION tandem_test_fault()"
        )


def drop_fault() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS tandem_test_fault ON annotation_taskresponse")
        cursor.execute("DROP FUNCTION IF EXISTS tandem_test_fault()")


@pytest.mark.django_db
def test_an_inline_import_that_fails_while_writing_is_failed_with_the_reason_and_keeps_nothing():
    project = ProjectFactory()
    fail_writes_to_taskresponse()  # undone with the test's transaction
    with pytest.raises(Exception, match="disk is full"):
        create(project, jsonl(pairwise_lines(3)))
    job = ImportJob.objects.get()
    assert job.status == ImportJob.Status.FAILED and job.finished_at is not None
    assert "while writing" in job.errors[0]["message"]
    assert "disk is full" in job.errors[0]["message"]
    assert counts() == (0, 0, 0, 0)


@pytest.mark.django_db
def test_a_queued_import_that_fails_while_writing_is_failed_and_its_file_removed(
    settings, tmp_path
):
    project = ProjectFactory()
    job = queued_job(project, settings, tmp_path)
    fail_writes_to_taskresponse()
    job = services.import_run(job_id=job.pk)
    assert job.status == ImportJob.Status.FAILED
    assert (
        "while writing" in job.errors[0]["message"] and "disk is full" in job.errors[0]["message"]
    )
    assert counts() == (0, 0, 0, 0)
    assert not list(tmp_path.rglob("*.jsonl"))


@pytest.mark.django_db
def test_a_job_runs_once_a_second_delivery_leaves_it_alone(settings, tmp_path):
    project = ProjectFactory()
    job = queued_job(project, settings, tmp_path, n=4)
    assert services.import_run(job_id=job.pk).status == ImportJob.Status.DONE
    again = services.import_run(job_id=job.pk)
    assert again.status == ImportJob.Status.DONE and again.created == 4
    assert counts() == (4, 8, 4, 8)


@pytest.mark.django_db
def test_the_sweep_fails_silent_live_jobs_and_removes_their_files(settings, tmp_path):
    settings.TANDEM_IMPORT_STALE_SECONDS = 600
    project = ProjectFactory()
    jobs = [queued_job(project, settings, tmp_path, n=2) for _ in range(4)]
    fresh = jobs[3]
    stale_statuses = ["queued", "validating", "importing"]
    for job, status in zip(jobs, stale_statuses, strict=False):
        ImportJob.objects.filter(pk=job.pk).update(
            status=status, updated_at=timezone.now() - timedelta(seconds=601)
        )
    settings.TANDEM_IMPORT_INLINE_BYTES = 1 << 20
    done = create(project, jsonl(pairwise_lines(1, start=900)))
    ImportJob.objects.filter(pk=done.pk).update(updated_at=timezone.now() - timedelta(days=1))

    swept = import_sweep()

    assert sorted(swept) == sorted(j.pk for j in jobs[:3])
    for job in jobs[:3]:
        job.refresh_from_db()
        assert job.status == ImportJob.Status.FAILED and "stopped" in job.errors[0]["message"]
        assert not (tmp_path / job.source_path).exists()
    fresh.refresh_from_db()
    done.refresh_from_db()
    assert fresh.status == ImportJob.Status.QUEUED and (tmp_path / fresh.source_path).exists()
    assert done.status == ImportJob.Status.DONE
    assert import_sweep() == []
    # A message delivered late for a swept job does nothing.
    assert services.import_run(job_id=jobs[0].pk).status == ImportJob.Status.FAILED
    assert counts() == (1, 2, 1, 2)


@pytest.mark.django_db(transaction=True)
def test_a_job_swept_while_it_still_writes_rolls_its_write_back(settings, tmp_path):
    """The run and the sweep race for real: the run's last statement waits in Postgres."""
    project = ProjectFactory()
    job = queued_job(project, settings, tmp_path, n=5)
    fail_writes_to_taskresponse(sleep=2.0)
    try:
        result: dict = {}

        def run():
            try:
                result["job"] = services.import_run(job_id=job.pk)
            finally:
                connection.close()

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status == ImportJob.Status.IMPORTING:
                break
            time.sleep(0.02)
        assert job.status == ImportJob.Status.IMPORTING
        ImportJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - timedelta(hours=1))
        assert import_sweep() == [job.pk]
        worker.join(30)
    finally:
        drop_fault()
    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED and "stopped" in job.errors[0]["message"]
    assert result["job"].status == ImportJob.Status.FAILED
    assert counts() == (0, 0, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_broker_outage_refuses_the_import_and_stores_nothing(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.TANDEM_IMPORT_INLINE_BYTES = 10
    settings.CELERY_BROKER_URL = CLOSED_BROKER
    project = ProjectFactory()
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        create(project, jsonl(pairwise_lines(5)))
    assert time.monotonic() - started < 10
    assert ImportJob.objects.count() == 0 and counts() == (0, 0, 0, 0)
    assert not list(tmp_path.rglob("*.jsonl"))
