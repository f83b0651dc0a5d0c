"""The lease and the submit cost a hallucination project no more round trips than a pairwise one.

A hallucination lease needs the image's facts and a submit needs the responses' texts (span
offsets are checked against them); both ride along in the queries every kind already makes.
"""

import io
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation import services
from annotation.models import Role
from annotation.services.images import image_upload
from tests.annotation.image_support import drawn, media  # noqa: F401  (media: the fixture)
from tests.factories import ProjectFactory, UserFactory, import_tasks

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media")]

TEXTS = ("There are two red circles. 😀 A blue square.", "There is one green triangle.")


def _hallucination_project():
    project = ProjectFactory(kind="hallucination")
    image, _ = image_upload(project=project, data=drawn((64, 48)), name="scene.png")
    body = "".join(
        json.dumps(
            {
                "prompt": f"What is in picture {i}?",
                "image": f"sha256:{image.sha256}",
                "responses": list(TEXTS),
                "context": {"captions": ["Two red circles and a blue square."]},
            }
        )
        + "\n"
        for i in range(3)
    ).encode()
    job = services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project, {
        "choice": "A",
        "spans": [{"response": 1, "start": 0, "end": 28, "category": "object"}],
    }


def _pairwise_project():
    project = ProjectFactory()
    import_tasks(project, 3)
    return project, {"choice": "A", "strength": 2}


def _round_trips(api, project, payload) -> tuple[int, int, dict]:
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    client = api(annotator)
    client.get(f"/api/v1/projects/{project.pk}")  # warm: the token's first use
    with CaptureQueriesContext(connection) as lease_queries:
        leased = client.post(f"/api/v1/projects/{project.pk}/assignments")
    assert leased.status_code == 201, leased.content
    with CaptureQueriesContext(connection) as submit_queries:
        done = client.post(
            f"/api/v1/assignments/{leased.json()['id']}/judgement",
            payload,
            format="json",
            HTTP_IDEMPOTENCY_KEY="k1",
        )
    assert done.status_code == 201, done.content
    return len(lease_queries), len(submit_queries), leased.json()


def test_a_hallucination_lease_and_submit_make_as_many_queries_as_pairwise(api):
    pairwise = _round_trips(api, *_pairwise_project())
    hallucination = _round_trips(api, *_hallucination_project())
    assert hallucination[:2] == pairwise[:2]
    task = hallucination[2]["task"]
    assert task["image"]["width"] == 64 and task["image"]["height"] == 48
    assert "/images/sha256:" in task["image"]["url"]
    assert task["context"] == {"captions": ["Two red circles and a blue square."]}
