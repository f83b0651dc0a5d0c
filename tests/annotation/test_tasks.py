"""The Celery bridge: beat's names resolve to registered tasks that call their service."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from annotation import tasks  # noqa: F401  (registers the tasks, as the worker's autodiscovery does)
from annotation.models import ImportJob
from tests.factories import ProjectFactory
from webapp.celery import app


def test_every_beat_entry_names_a_registered_task():
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]


@pytest.mark.django_db
def test_the_import_sweep_task_fails_stale_jobs(settings):
    project = ProjectFactory()
    stale = ImportJob.objects.create(project=project, created_by=project.created_by)
    fresh = ImportJob.objects.create(project=project, created_by=project.created_by)
    ImportJob.objects.filter(pk=stale.pk).update(
        updated_at=timezone.now() - timedelta(seconds=settings.TANDEM_IMPORT_STALE_SECONDS + 1)
    )
    result = app.tasks["annotation.tasks.import_sweep"].apply()
    assert result.get() == [stale.pk]
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == ImportJob.Status.FAILED and fresh.status == ImportJob.Status.QUEUED


@pytest.mark.django_db
def test_the_token_sweep_task_deletes_expired_tokens_only():
    from annotation.models import ApiToken
    from annotation.services.tokens import token_issue
    from tests.factories import UserFactory

    user = UserFactory()
    expired, _ = token_issue(user=user, name="old")
    live, _ = token_issue(user=user, name="new")
    ApiToken.objects.filter(pk=expired.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert app.tasks["annotation.tasks.token_sweep"].apply().get() == 1
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["new"]
