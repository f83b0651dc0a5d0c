"""The import page shows the outcome simulation an import of a hindsight project started: its
progress while it runs (and keeps polling), what it wrote once done, and why it failed, escaped."""

import io

import pytest
from django.utils import timezone

from annotation import services
from annotation.models import OutcomeJob
from tests.factories import UserFactory, jsonl

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def imported(tmp_path, settings):
    """A hindsight project whose simulator is a model path inside a model root (never loaded
    here: no worker runs), and an import of two lines without outcomes."""
    model = tmp_path / "simulator"
    model.mkdir()
    settings.TANDEM_MODEL_ROOTS = [tmp_path]
    manager = UserFactory()
    project = services.project_create(
        creator=manager,
        name="Outcomes",
        kind="hindsight",
        kind_settings={"simulator_model": str(model)},
    )
    lines = [
        {
            "prompt": f"Which kettle {i}?",
            "responses": ["K1 is great.", "K2 fits."],
            "hidden": {"i": i},
        }
        for i in range(2)
    ]
    body = jsonl(lines)
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return manager, job


def test_a_running_simulation_shows_its_progress_and_keeps_polling(client, imported):
    manager, job = imported
    simulation = OutcomeJob.objects.get(import_job=job)
    assert simulation.status == "queued"
    OutcomeJob.objects.filter(pk=simulation.pk).update(status="running", total=4, done=1)
    client.force_login(manager)
    page = client.get(f"/imports/{job.pk}", **HTMX).content.decode()
    assert "Simulating outcomes: 1 of 4 written" in page
    assert '<progress max="4" value="1"' in page
    assert 'hx-trigger="every 1s"' in page  # the import is done, the simulation is not


def test_a_finished_simulation_stops_polling_and_a_failed_one_says_why_escaped(client, imported):
    manager, job = imported
    simulation = OutcomeJob.objects.get(import_job=job)
    client.force_login(manager)
    OutcomeJob.objects.filter(pk=simulation.pk).update(
        status="done", total=4, done=4, finished_at=timezone.now()
    )
    page = client.get(f"/imports/{job.pk}", **HTMX).content.decode()
    assert "Simulated outcomes: <strong>4</strong> written" in page
    assert "hx-trigger" not in page
    OutcomeJob.objects.filter(pk=simulation.pk).update(
        status="failed", error="<script>alert(1)</script> broke"
    )
    page = client.get(f"/imports/{job.pk}", **HTMX).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; broke" in page


def test_another_projects_member_cannot_see_the_import(client, imported):
    _, job = imported
    client.force_login(UserFactory())
    assert client.get(f"/imports/{job.pk}", **HTMX).status_code == 404
