"""Every endpoint for every role: annotator, another annotator, manager, trainer, outsider, anonymous."""

import json

import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

from annotation.models import ApiToken, Assignment, Judgement, Membership, Task
from tests.factories import PASSWORD, UserFactory, jsonl, pairwise_lines, wait_for_export_horizon

pytestmark = pytest.mark.django_db


def who(cast, name):
    return None if name == "anonymous" else getattr(cast, name)


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 200), ("manager", 200), ("trainer", 200), ("outsider", 200), ("anonymous", 401)],
)
def test_project_list_shows_only_own_projects(cast, api, name, code):
    response = api(who(cast, name)).get("/api/v1/projects")
    assert response.status_code == code
    if code == 200:
        ids = [p["id"] for p in response.json()]
        assert ids == ([] if name == "outsider" else [cast.project.pk])
        if ids:
            assert response.json()[0]["role"] == Membership.objects.get(user=who(cast, name)).role


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 200), ("manager", 200), ("trainer", 200), ("outsider", 404), ("anonymous", 401)],
)
def test_project_detail(cast, api, name, code):
    response = api(who(cast, name)).get(f"/api/v1/projects/{cast.project.pk}")
    assert response.status_code == code
    if code == 200:
        assert response.json()["progress"]["tasks"] == 10


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 403), ("manager", 201), ("trainer", 403), ("outsider", 404), ("anonymous", 401)],
)
def test_add_member(cast, api, name, code):
    newcomer = UserFactory()
    response = api(who(cast, name)).post(
        f"/api/v1/projects/{cast.project.pk}/members",
        {"username": newcomer.username, "role": "annotator"},
        format="json",
    )
    assert response.status_code == code
    assert Membership.objects.filter(user=newcomer).exists() == (code == 201)


def test_add_member_errors_are_clear(cast, api):
    manager = api(cast.manager)
    url = f"/api/v1/projects/{cast.project.pk}/members"
    missing = manager.post(url, {"username": "nobody-here", "role": "annotator"}, format="json")
    assert missing.status_code == 404 and "nobody-here" in missing.json()["detail"]
    bad_role = manager.post(
        url, {"username": cast.outsider.username, "role": "king"}, format="json"
    )
    assert bad_role.status_code == 400 and bad_role.json()["errors"][0]["field"] == "role"


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 403), ("manager", 201), ("trainer", 403), ("outsider", 404), ("anonymous", 401)],
)
def test_import_jsonl_body(cast, api, name, code):
    body = jsonl(pairwise_lines(3, start=100))
    response = api(who(cast, name)).post(
        f"/api/v1/projects/{cast.project.pk}/imports", body, content_type="application/x-ndjson"
    )
    assert response.status_code == code, response.content
    assert Task.objects.filter(project=cast.project).count() == (13 if code == 201 else 10)
    if code == 201:
        data = response.json()
        assert data["status"] == "done" and data["created"] == 3 and data["errors"] == []
        job = api(who(cast, name)).get(f"/api/v1/imports/{data['import_id']}")
        assert job.status_code == 200 and job.json()["created"] == 3


def test_import_file_upload_and_errors(cast, api):
    manager = api(cast.manager)
    url = f"/api/v1/projects/{cast.project.pk}/imports"
    from django.core.files.uploadedfile import SimpleUploadedFile

    good = SimpleUploadedFile("tasks.jsonl", jsonl(pairwise_lines(2, start=200)))
    response = manager.post(url, {"file": good}, format="multipart")
    assert response.status_code == 201 and response.json()["created"] == 2
    bad = jsonl(pairwise_lines(1, start=300)) + b'{"prompt": "x", "responses": "nope"}\n'
    failed = manager.post(url, bad, content_type="application/x-ndjson")
    assert failed.status_code == 400
    assert failed.json()["errors"] == [{"line": 2, "message": "responses: must be a list"}]
    assert failed.json()["created"] == 0


@pytest.mark.parametrize(
    ("name", "code"), [("annotator", 403), ("trainer", 403), ("outsider", 404)]
)
def test_import_status_visibility(cast, api, name, code):
    created = api(cast.manager).post(
        f"/api/v1/projects/{cast.project.pk}/imports",
        jsonl(pairwise_lines(1, start=400)),
        content_type="application/x-ndjson",
    )
    assert (
        api(who(cast, name)).get(f"/api/v1/imports/{created.json()['import_id']}").status_code
        == code
    )


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 201),
        ("other", 201),
        ("manager", 201),
        ("trainer", 403),
        ("outsider", 404),
        ("removed", 404),
        ("anonymous", 401),
    ],
)
def test_lease(cast, api, name, code):
    response = api(who(cast, name)).post(f"/api/v1/projects/{cast.project.pk}/assignments")
    assert response.status_code == code
    if code == 201:
        assignment = Assignment.objects.get()
        assert assignment.annotator == who(cast, name) and response.json()["id"] == assignment.pk
        assert Task.objects.get(pk=assignment.task_id).live_leases == 1
    else:
        # A refused lease wrote nothing.
        assert not Assignment.objects.exists()
        assert not Task.objects.filter(live_leases__gt=0).exists()


def test_leasing_again_returns_the_same_lease_with_200(cast, api):
    client = api(cast.annotator)
    url = f"/api/v1/projects/{cast.project.pk}/assignments"
    first = client.post(url)
    again = [client.post(url) for _ in range(5)]
    assert first.status_code == 201
    assert {r.status_code for r in again} == {200}
    assert all(r.json() == first.json() for r in again)
    assert Assignment.objects.count() == 1


def test_lease_answers_204_when_nothing_is_left(cast, api):
    client = api(cast.annotator)
    for _ in range(10):
        lease = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
        client.post(
            f"/api/v1/assignments/{lease['id']}/judgement",
            {"choice": "A", "strength": 1},
            format="json",
            HTTP_IDEMPOTENCY_KEY=str(lease["id"]),
        )
    assert client.post(f"/api/v1/projects/{cast.project.pk}/assignments").status_code == 204


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 201),
        ("other", 404),
        ("manager", 404),
        ("trainer", 404),
        ("outsider", 404),
        ("removed", 404),
        ("anonymous", 401),
    ],
)
def test_judgement_only_by_the_lease_holder(cast, api, name, code):
    lease = api(cast.annotator).post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    response = api(who(cast, name)).post(
        f"/api/v1/assignments/{lease['id']}/judgement",
        {"choice": "B", "strength": 2},
        format="json",
        HTTP_IDEMPOTENCY_KEY="key",
    )
    assert response.status_code == code
    assert Judgement.objects.count() == (1 if code == 201 else 0)
    task = Task.objects.get(pk=lease["task"]["id"])
    status = Assignment.objects.get(pk=lease["id"]).status
    if code == 201:
        assert (status, task.judgement_count, task.live_leases) == ("submitted", 1, 0)
    else:
        assert (status, task.judgement_count, task.live_leases) == ("leased", 0, 1)


def test_judgement_validation_and_idempotency_over_http(cast, api):
    client = api(cast.annotator)
    lease = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    url = f"/api/v1/assignments/{lease['id']}/judgement"
    no_key = client.post(url, {"choice": "A", "strength": 1}, format="json")
    assert no_key.status_code == 400 and "Idempotency-Key" in no_key.json()["detail"]
    bad = client.post(url, {"choice": "A", "strength": 9}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "strength"
    first = client.post(
        url, {"choice": "A", "strength": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    again = client.post(
        url, {"choice": "A", "strength": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert (first.status_code, again.status_code) == (201, 200) and first.json() == again.json()
    other_key = client.post(
        url, {"choice": "A", "strength": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k2"
    )
    assert other_key.status_code == 409
    assert Judgement.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 204),
        ("other", 404),
        ("manager", 404),
        ("trainer", 404),
        ("outsider", 404),
        ("removed", 404),
        ("anonymous", 401),
    ],
)
def test_skip(cast, api, name, code):
    lease = api(cast.annotator).post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    assert api(who(cast, name)).post(f"/api/v1/assignments/{lease['id']}/skip").status_code == code
    assignment = Assignment.objects.get(pk=lease["id"])
    task = Task.objects.get(pk=assignment.task_id)
    if code == 204:
        assert (assignment.status, task.live_leases) == ("skipped", 0)
    else:
        assert (assignment.status, task.live_leases) == ("leased", 1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 403), ("manager", 200), ("trainer", 200), ("outsider", 404), ("anonymous", 401)],
)
def test_export(cast, api, name, code):
    lease = api(cast.annotator).post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    api(cast.annotator).post(
        f"/api/v1/assignments/{lease['id']}/judgement",
        {"choice": "A", "strength": 2},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    wait_for_export_horizon()
    response = api(who(cast, name)).get(f"/api/v1/projects/{cast.project.pk}/export?shape=pairs")
    assert response.status_code == code
    if code == 200:
        rows = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
        assert len(rows) == 1 and rows[0]["cursor"] and response["X-Export-Since"] == "c1.0.0"


def test_export_bad_parameters(cast, api):
    trainer = api(cast.trainer)
    assert trainer.get(f"/api/v1/projects/{cast.project.pk}/export?shape=xml").status_code == 400
    assert trainer.get(f"/api/v1/projects/{cast.project.pk}/export?since=zzz").status_code == 400


@pytest.mark.parametrize(("staff", "code"), [(True, 201), (False, 403)])
def test_create_user_is_staff_only(api, db, staff, code):
    caller = UserFactory(is_staff=staff)
    response = api(caller).post(
        "/api/v1/users", {"username": "newbie", "password": PASSWORD}, format="json"
    )
    assert response.status_code == code
    if code == 201:
        assert response.json()["username"] == "newbie" and response.json()["id"]
        weak = api(caller).post(
            "/api/v1/users", {"username": "weak", "password": "123"}, format="json"
        )
        assert weak.status_code == 400 and weak.json()["errors"][0]["field"] == "password"
        taken = api(caller).post(
            "/api/v1/users", {"username": "newbie", "password": PASSWORD}, format="json"
        )
        assert taken.status_code == 409


def test_create_user_anonymous_is_401(api, db):
    assert (
        api()
        .post("/api/v1/users", {"username": "x", "password": PASSWORD}, format="json")
        .status_code
        == 401
    )


def test_project_create(api, db):
    staff = UserFactory(is_staff=True)
    created = api(staff).post(
        "/api/v1/projects",
        {
            "name": "Helpfulness",
            "kind": "pairwise",
            "overlap": 3,
            "lease_seconds": 300,
            "instructions": "Be fair",
        },
        format="json",
    )
    assert created.status_code == 201
    assert created.json()["overlap"] == 3 and created.json()["role"] == "manager"
    unsupported = api(staff).post(
        "/api/v1/projects", {"name": "R", "kind": "ranking"}, format="json"
    )
    assert unsupported.status_code == 400 and "not available yet" in unsupported.json()["detail"]
    bad = api(staff).post("/api/v1/projects", {"name": "R", "overlap": 0}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "overlap"
    assert (
        api(UserFactory()).post("/api/v1/projects", {"name": "N"}, format="json").status_code == 403
    )


def test_token_and_session_auth(api, db):
    user = UserFactory()
    token = api().post(
        "/api/v1/auth/token", {"username": user.username, "password": PASSWORD}, format="json"
    )
    assert token.status_code == 200 and len(token.json()["token"]) == 64
    wrong = api().post(
        "/api/v1/auth/token", {"username": user.username, "password": "nope"}, format="json"
    )
    assert wrong.status_code == 400


def test_openapi_schema_and_docs(api, db, client):
    schema = client.get("/api/schema/")
    assert (
        schema.status_code == 200
        and b"/api/v1/assignments/{assignment_id}/judgement" in schema.content
    )
    assert client.get("/api/docs/").status_code == 200


# --- throttles (the test settings leave every scope unthrottled; these put rates back) ------------


@pytest.fixture
def throttle(monkeypatch):
    """throttle(scope) limits that one scope to two requests a minute; the others stay open."""

    def limit(scope: str) -> None:
        rates = {"token": None, "lease": None, "submit": None, scope: "2/min"}
        monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", rates)
        cache.clear()

    return limit


def test_the_token_scope_throttles(throttle, api, db):
    throttle("token")
    user = UserFactory()
    body = {"username": user.username, "password": PASSWORD}
    codes = [api().post("/api/v1/auth/token", body, format="json").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert ApiToken.objects.filter(user=user).count() == 2


def test_the_lease_scope_throttles(throttle, cast, api):
    throttle("lease")
    client = api(cast.annotator)
    url = f"/api/v1/projects/{cast.project.pk}/assignments"
    first = client.post(url)
    assert client.post(f"/api/v1/assignments/{first.json()['id']}/skip").status_code == 204
    assert client.post(url).status_code == 201
    assert client.post(url).status_code == 429
    assert Assignment.objects.count() == 2
    # Per user: another annotator is not slowed down by the first one.
    assert api(cast.other).post(url).status_code == 201


def test_the_submit_scope_throttles(throttle, cast, api):
    throttle("submit")
    client = api(cast.annotator)
    codes = []
    for i in range(3):
        lease = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
        codes.append(
            client.post(
                f"/api/v1/assignments/{lease['id']}/judgement",
                {"choice": "A", "strength": 1},
                format="json",
                HTTP_IDEMPOTENCY_KEY=f"k{i}",
            ).status_code
        )
    assert codes == [201, 201, 429]
    assert Judgement.objects.count() == 2
    # Skips share the scope.
    assert client.post(f"/api/v1/assignments/{lease['id']}/skip").status_code == 429
    assert Assignment.objects.get(pk=lease["id"]).status == "leased"
