"""PATCH /api/v1/projects/{id}: a manager changes the project's kind settings after creation.

Every role, every way a body can be wrong (a 400 naming the setting, nothing saved), an archived
project (409), what the change does to the next task shown (show_context) and what it does not do
to judgements already stored (a span keeps its category name, in the export too).
"""

import io
import json

import pytest

from annotation import services
from annotation.kinds import registered
from annotation.kinds.hallucination.payload import DEFAULT_CATEGORIES
from annotation.models import Judgement, Project, Role
from annotation.services.images import image_upload
from tests.annotation import image_support
from tests.annotation.image_support import drawn
from tests.factories import UserFactory, wait_for_export_horizon

pytestmark = pytest.mark.django_db
media = image_support.media

CAPTIONS = ["A red square and a blue circle on white."]


class Cast:
    """A hallucination project with one user in every role, an outsider and a staff member."""


@pytest.fixture
def hallu(media):
    c = Cast()
    c.staff = UserFactory(is_staff=True)
    c.project = services.project_create(
        creator=c.staff, name="Shapes", kind="hallucination", overlap=2
    )
    for name, role in [
        ("manager", Role.MANAGER),
        ("annotator", Role.ANNOTATOR),
        ("reviewer", Role.REVIEWER),
        ("trainer", Role.TRAINER),
    ]:
        setattr(c, name, UserFactory())
        services.membership_set(project=c.project, username=getattr(c, name).username, role=role)
    c.outsider = UserFactory()
    image, _ = image_upload(project=c.project, data=drawn((64, 48)), name="shapes.png")
    line = {
        "prompt": "How many shapes are in the picture?",
        "image": f"sha256:{image.sha256}",
        "responses": ["Two shapes.", "Five shapes."],
        "context": {"captions": CAPTIONS},
    }
    body = (json.dumps(line) + "\n").encode()
    job = services.import_create(
        project=c.project, user=c.staff, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return c


def url(project) -> str:
    return f"/api/v1/projects/{project.pk}"


def patch(client, project, body, **extra):
    return client.patch(url(project), body, format="json", **extra)


def stored_settings(project) -> dict:
    return Project.objects.get(pk=project.pk).kind_settings


def defaults() -> dict:
    return {"categories": list(DEFAULT_CATEGORIES), "show_context": True}


# --- who may ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [("manager", 200), ("staff", 200), ("annotator", 403), ("reviewer", 403), ("trainer", 403),
     ("outsider", 404), ("anonymous", 401)],
)  # fmt: skip
def test_only_managers_change_kind_settings(hallu, api, name, code):
    user = None if name == "anonymous" else getattr(hallu, name)
    response = patch(api(user), hallu.project, {"kind_settings": {"show_context": False}})
    assert response.status_code == code, response.content
    expected = {**defaults(), "show_context": code != 200}
    assert stored_settings(hallu.project) == expected


def test_the_answer_is_the_project_as_get_shows_it(hallu, api):
    client = api(hallu.manager)
    response = patch(client, hallu.project, {"kind_settings": {"categories": ["count", "colour"]}})
    assert response.status_code == 200, response.content
    assert response.json() == client.get(url(hallu.project)).json()
    project = response.json()["project"]
    assert (project["role"], project["kind"]) == ("manager", "hallucination")
    assert project["kind_settings"] == {"categories": ["count", "colour"], "show_context": True}
    assert response.json()["progress"]["tasks"] == 1


def test_settings_left_out_keep_their_values(hallu, api):
    client = api(hallu.manager)
    assert (
        patch(client, hallu.project, {"kind_settings": {"show_context": False}}).status_code == 200
    )
    assert (
        patch(client, hallu.project, {"kind_settings": {"categories": ["object"]}}).status_code
        == 200
    )
    assert stored_settings(hallu.project) == {"categories": ["object"], "show_context": False}
    # An empty patch changes nothing and is not an error.
    assert patch(client, hallu.project, {"kind_settings": {}}).status_code == 200
    assert patch(client, hallu.project, {}).status_code == 200
    assert stored_settings(hallu.project) == {"categories": ["object"], "show_context": False}


# --- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind_settings": {"categories": []}}, "kind_settings.categories"),
        ({"kind_settings": {"categories": "object"}}, "kind_settings.categories"),
        ({"kind_settings": {"categories": ["object", "Colour"]}}, "kind_settings.categories[1]"),
        ({"kind_settings": {"categories": ["object", "object"]}}, "kind_settings.categories[1]"),
        ({"kind_settings": {"categories": ["a\u0000b"]}}, "kind_settings.categories[0]"),
        (
            {"kind_settings": {"categories": [f"c{i}" for i in range(21)]}},
            "kind_settings.categories",
        ),
        ({"kind_settings": {"show_context": "no"}}, "kind_settings.show_context"),
        ({"kind_settings": {"colour": True}}, "kind_settings.colour"),
        ({"kind_settings": ["object"]}, "kind_settings"),
        ({"kind_settings": None}, "kind_settings"),
        ({"name": "Renamed", "kind_settings": {}}, "name"),
        (["kind_settings"], None),
    ],
)
def test_a_bad_body_is_a_400_naming_the_setting_and_saves_nothing(hallu, api, body, field):
    response = patch(api(hallu.manager), hallu.project, body)
    assert response.status_code == 400, response.content
    if field is not None:
        fields = [error["field"] for error in response.json()["errors"]]
        assert field in fields, response.json()
    assert stored_settings(hallu.project) == defaults()
    assert Project.objects.get(pk=hallu.project.pk).name == "Shapes"


def test_a_pairwise_project_takes_no_settings(cast, api):
    response = patch(api(cast.manager), cast.project, {"kind_settings": {"categories": ["x"]}})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "kind_settings"
    assert "takes no settings" in response.json()["detail"]
    assert patch(api(cast.manager), cast.project, {"kind_settings": {}}).status_code == 200
    assert stored_settings(cast.project) == {}


def test_a_form_encoded_body_is_refused(hallu, api):
    # Settings are typed (lists, booleans): a form could only send strings.
    response = api(hallu.manager).patch(
        url(hallu.project), "kind_settings=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert stored_settings(hallu.project) == defaults()


def test_an_archived_project_refuses_the_change(hallu, api):
    Project.objects.filter(pk=hallu.project.pk).update(archived=True)
    response = patch(api(hallu.manager), hallu.project, {"kind_settings": {"show_context": False}})
    assert response.status_code == 409, response.content
    assert "archived" in response.json()["detail"]
    assert stored_settings(hallu.project) == defaults()


# --- what the change does, and does not do -------------------------------------------------------


def test_the_lease_shows_or_hides_the_context_as_the_setting_says(hallu, api):
    annotator, manager = api(hallu.annotator), api(hallu.manager)
    lease_url = f"/api/v1/projects/{hallu.project.pk}/assignments"
    first = annotator.post(lease_url)
    assert first.status_code == 201, first.content
    assert first.json()["task"]["context"] == {"captions": CAPTIONS}

    assert (
        patch(manager, hallu.project, {"kind_settings": {"show_context": False}}).status_code == 200
    )
    # The same lease, shown again, now comes without the context (and still with its image).
    again = annotator.post(lease_url)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert "context" not in again.json()["task"]
    assert again.json()["task"]["image"]["width"] == 64

    assert (
        patch(manager, hallu.project, {"kind_settings": {"show_context": True}}).status_code == 200
    )
    assert annotator.post(lease_url).json()["task"]["context"] == {"captions": CAPTIONS}


# The export reads committed judgements only: this test commits for real.
@pytest.mark.django_db(transaction=True)
def test_stored_spans_keep_their_category_after_the_categories_change(hallu, api):
    """Judgements are insert-only: renaming or dropping a category rewrites none of them."""
    annotator, manager = api(hallu.annotator), api(hallu.manager)
    lease = annotator.post(f"/api/v1/projects/{hallu.project.pk}/assignments").json()
    span = {"response": 1, "start": 0, "end": 4, "category": "count"}
    judged = annotator.post(
        f"/api/v1/assignments/{lease['id']}/judgement",
        {"choice": "A", "spans": [span]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert judged.status_code == 201, judged.content

    response = patch(manager, hallu.project, {"kind_settings": {"categories": ["number"]}})
    assert response.status_code == 200, response.content
    assert Judgement.objects.get().payload["spans"] == [span]
    wait_for_export_horizon()
    export = manager.get(f"/api/v1/projects/{hallu.project.pk}/export?shape=raw")
    assert export.status_code == 200, export.content
    rows = [json.loads(line) for line in b"".join(export.streaming_content).splitlines()]
    assert [row["payload"]["spans"][0]["category"] for row in rows] == ["count"]

    # A new judgement is held to the new categories.
    reviewer = api(hallu.reviewer)
    lease = reviewer.post(f"/api/v1/projects/{hallu.project.pk}/assignments").json()
    refused = reviewer.post(
        f"/api/v1/assignments/{lease['id']}/judgement",
        {"choice": "A", "spans": [span]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "spans[0].category"


def test_every_kinds_settings_fields_name_its_settings():
    """The page's card is built from settings_fields: each must be a setting the kind has."""
    for kind in registered():
        names = [f.name for f in kind.settings_fields()]
        assert len(names) == len(set(names)), kind.name
        assert set(names) <= set(kind.default_settings()), kind.name
    assert [
        f.type for f in next(k for k in registered() if k.name == "pairwise").settings_fields()
    ] == []


@pytest.mark.django_db(transaction=True)
def test_two_managers_changing_different_settings_at_once_keep_both(hallu):
    """Each change merges over the settings as stored when it holds the row, not as its caller
    loaded them: neither manager's change is lost, whichever commits first."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from django.db import connection

    stale = [Project.objects.get(pk=hallu.project.pk) for _ in range(2)]
    changes = [{"show_context": False}, {"categories": ["object", "count"]}]
    barrier = Barrier(2)

    def change(i):
        try:
            barrier.wait()
            services.project_kind_settings_set(project=stale[i], kind_settings=changes[i])
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(change, range(2)))
    assert stored_settings(hallu.project) == {
        "categories": ["object", "count"],
        "show_context": False,
    }
