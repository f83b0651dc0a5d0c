"""The hindsight kind over REST: both phases through the judgement endpoint, the outcome never
sent before the foresight judgement is stored (every phase-1 body is read), GET
/api/v1/assignments/{id}, the export's `phase` parameter, and a role matrix for both."""

import json

import pytest
from django.template import TemplateDoesNotExist
from django.template.loader import get_template

from annotation import services
from annotation.models import Role
from tests.annotation.services.test_judgement_phases import FORESIGHT, HINDSIGHT, hindsight_project
from tests.factories import UserFactory, wait_for_export_horizon

pytestmark = pytest.mark.django_db

OUTCOME_MARK = "OUTCOME-"


@pytest.fixture
def crew(db):
    project = hindsight_project(3)
    other_project = hindsight_project(1)
    people = {}
    for name, role in (
        ("annotator", Role.ANNOTATOR),
        ("other", Role.ANNOTATOR),
        ("manager", Role.MANAGER),
        ("trainer", Role.TRAINER),
    ):
        people[name] = UserFactory()
        services.membership_set(project=project, username=people[name].username, role=role)
    people["stranger"] = UserFactory()  # an annotator of another project
    services.membership_set(
        project=other_project, username=people["stranger"].username, role=Role.ANNOTATOR
    )
    return project, people


def _post(client, assignment_id, body, key):
    return client.post(
        f"/api/v1/assignments/{assignment_id}/judgement",
        body,
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_both_phases_over_rest_and_no_outcome_before_foresight(crew, api):
    project, people = crew
    client = api(people["annotator"])
    lease = client.post(f"/api/v1/projects/{project.pk}/assignments")
    assert lease.status_code == 201
    body = lease.json()
    assert body["phase"] == "foresight"
    assert [set(r) for r in body["task"]["responses"]] == [{"id", "text"}] * 2
    detail = client.get(f"/api/v1/assignments/{body['id']}")
    assert detail.status_code == 200 and detail.json()["phase"] == "foresight"
    assert [set(r) for r in detail.json()["task"]["responses"]] == [{"id", "text", "model"}] * 2
    # A reload of the lease, and the hindsight tried too early: still no outcome anywhere.
    again = client.post(f"/api/v1/projects/{project.pk}/assignments")
    early = _post(client, body["id"], HINDSIGHT, "h-early")
    assert early.status_code == 409
    for phase_one in (lease, detail, again, early):
        assert OUTCOME_MARK not in phase_one.content.decode()

    stored = _post(client, body["id"], FORESIGHT, "f")
    assert stored.status_code == 201
    assert OUTCOME_MARK not in stored.content.decode()
    revealed = client.get(f"/api/v1/assignments/{body['id']}").json()
    assert revealed["phase"] == "hindsight"
    outcomes = [r["outcome"] for r in revealed["task"]["responses"]]
    assert all(o.startswith(OUTCOME_MARK) for o in outcomes)
    # The lease never carries an outcome, even once revealed.
    held = client.post(f"/api/v1/projects/{project.pk}/assignments")
    assert held.status_code == 200 and held.json()["phase"] == "hindsight"
    assert OUTCOME_MARK not in held.content.decode()

    # The foresight is locked; its own key replays it.
    assert _post(client, body["id"], {**FORESIGHT, "ratings": [1, 1]}, "f2").status_code == 409
    assert _post(client, body["id"], FORESIGHT, "f").status_code == 200
    done = _post(client, body["id"], HINDSIGHT, "h")
    assert done.status_code == 201 and done.json()["payload"]["choice"] == "B"
    finished = client.get(f"/api/v1/assignments/{body['id']}").json()
    assert finished["phase"] is None and finished["status"] == "submitted"


def test_a_bad_phase_is_a_400_naming_it(crew, api):
    project, people = crew
    client = api(people["annotator"])
    lease = client.post(f"/api/v1/projects/{project.pk}/assignments").json()
    response = _post(client, lease["id"], {**FORESIGHT, "phase": "afterwards"}, "x")
    assert response.status_code == 400
    assert "phase" in json.dumps(response.json())


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 200),
        ("other", 404),
        ("stranger", 404),
        ("manager", 404),
        ("trainer", 404),
        ("anonymous", 401),
    ],
)
def test_assignment_detail_roles(crew, api, name, code):
    project, people = crew
    lease = api(people["annotator"]).post(f"/api/v1/projects/{project.pk}/assignments").json()
    client = api(people.get(name))
    response = client.get(f"/api/v1/assignments/{lease['id']}")
    assert response.status_code == code
    assert OUTCOME_MARK not in response.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 403),
        ("other", 403),
        ("stranger", 404),
        ("manager", 200),
        ("trainer", 200),
        ("anonymous", 401),
    ],
)
def test_export_phase_parameter_roles(crew, api, name, code):
    project, people = crew
    client = api(people["annotator"])
    lease = client.post(f"/api/v1/projects/{project.pk}/assignments").json()
    _post(client, lease["id"], FORESIGHT, "f")
    _post(client, lease["id"], HINDSIGHT, "h")
    wait_for_export_horizon()
    url = f"/api/v1/projects/{project.pk}/export?shape=pairs"
    foresight = api(people.get(name)).get(url + "&phase=foresight")
    default = api(people.get(name)).get(url)
    assert (foresight.status_code, default.status_code) == (code, code)
    if code == 200:
        rows = [json.loads(line) for line in b"".join(foresight.streaming_content).splitlines()]
        assert [(r["phase"], r["chosen"][0]["content"]) for r in rows] == [
            ("foresight", "Option 0 has everything.")
        ]
        rows = [json.loads(line) for line in b"".join(default.streaming_content).splitlines()]
        assert [(r["phase"], r["chosen"][0]["content"]) for r in rows] == [
            ("hindsight", "Option 1 fits the budget.")
        ]
        refused = api(people.get(name)).get(
            f"/api/v1/projects/{project.pk}/export?shape=hindsight&phase=foresight"
        )
        assert refused.status_code == 400


def _has_page_template() -> bool:
    try:
        get_template("annotation/kinds/hindsight.html")
    except TemplateDoesNotExist:
        return False
    return True


@pytest.mark.skipif(not _has_page_template(), reason="the page partial (H6) is not there yet")
def test_the_annotate_page_shows_no_outcome_before_foresight(crew, client):
    project, people = crew
    client.force_login(people["annotator"])
    page = client.get(f"/projects/{project.pk}/annotate")
    assert page.status_code == 200
    html = page.content.decode()
    assert "foresight" in html and OUTCOME_MARK not in html
    assignment = people["annotator"].assignments.get()
    posted = client.post(
        f"/projects/{project.pk}/assignments/{assignment.pk}/judgement",
        {
            "phase": "foresight",
            "rating_0": "5",
            "rating_1": "2",
            "choice": "A",
            "idempotency_key": "page-f",
        },
        follow=True,
    )
    assert posted.status_code == 200
    assert OUTCOME_MARK in posted.content.decode()  # the reveal: phase 2 shows the outcomes
