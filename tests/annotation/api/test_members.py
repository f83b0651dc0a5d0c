"""/api/v1 members: list, add, change, remove — for every role, with nothing changed on refusal."""

import pytest

from annotation.models import Assignment, Judgement, Membership, Project, Task
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

ROLES = ["annotator", "other", "manager", "trainer", "outsider", "removed", "anonymous"]
REFUSED = {
    "annotator": 403,
    "other": 403,
    "trainer": 403,
    "outsider": 404,
    "removed": 404,
    "anonymous": 401,
}


def who(cast, name):
    return None if name == "anonymous" else getattr(cast, name)


def memberships(project):
    return sorted(Membership.objects.filter(project=project).values_list("user_id", "role"))


def url(cast, username=None):
    base = f"/api/v1/projects/{cast.project.pk}/members"
    return base if username is None else f"{base}/{username}"


@pytest.mark.parametrize("name", ROLES)
def test_list_members(cast, api, name):
    response = api(who(cast, name)).get(url(cast))
    assert response.status_code == REFUSED.get(name, 200)
    if response.status_code == 200:
        listed = {m["username"]: m["role"] for m in response.json()}
        assert listed == {
            m.user.username: m.role
            for m in Membership.objects.filter(project=cast.project).select_related("user")
        }
        assert cast.removed.username not in listed and cast.outsider.username not in listed


@pytest.mark.parametrize("name", ROLES)
def test_add_member(cast, api, name):
    newcomer = UserFactory()
    before = memberships(cast.project)
    response = api(who(cast, name)).post(
        url(cast), {"username": newcomer.username, "role": "annotator"}, format="json"
    )
    assert response.status_code == REFUSED.get(name, 201)
    if response.status_code == 201:
        assert response.json() == {"username": newcomer.username, "role": "annotator"}
        assert Membership.objects.get(project=cast.project, user=newcomer).role == "annotator"
    else:
        assert memberships(cast.project) == before


@pytest.mark.parametrize("name", ROLES)
def test_change_role(cast, api, name):
    before = memberships(cast.project)
    response = api(who(cast, name)).patch(
        url(cast, cast.other.username), {"role": "trainer"}, format="json"
    )
    assert response.status_code == REFUSED.get(name, 200)
    if response.status_code == 200:
        assert response.json() == {"username": cast.other.username, "role": "trainer"}
        assert Membership.objects.get(project=cast.project, user=cast.other).role == "trainer"
    else:
        assert memberships(cast.project) == before


@pytest.mark.parametrize("name", ROLES)
def test_remove_member(cast, api, name):
    lease = api(cast.other).post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    before = memberships(cast.project)
    response = api(who(cast, name)).delete(url(cast, cast.other.username))
    assert response.status_code == REFUSED.get(name, 204)
    assignment = Assignment.objects.get(pk=lease["id"])
    task = Task.objects.get(pk=assignment.task_id)
    if response.status_code == 204:
        assert not Membership.objects.filter(project=cast.project, user=cast.other).exists()
        assert assignment.status == "skipped" and task.live_leases == 0
    else:
        assert memberships(cast.project) == before
        assert assignment.status == "leased" and task.live_leases == 1


def test_member_errors_are_clear(cast, api):
    manager = api(cast.manager)
    absent = manager.delete(url(cast, cast.outsider.username))
    assert absent.status_code == 404 and "not a member" in absent.json()["detail"]
    unknown = manager.patch(url(cast, "nobody-here"), {"role": "annotator"}, format="json")
    assert unknown.status_code == 404 and "nobody-here" in unknown.json()["detail"]
    # PATCH changes a role; it never adds anyone.
    not_member = manager.patch(
        url(cast, cast.outsider.username), {"role": "annotator"}, format="json"
    )
    assert not_member.status_code == 404
    assert not Membership.objects.filter(user=cast.outsider).exists()
    bad = manager.patch(url(cast, cast.other.username), {"role": "king"}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "role"


def test_the_last_manager_stays(cast, api):
    manager = api(cast.manager)
    assert manager.delete(url(cast, cast.project.created_by.username)).status_code == 204
    before = memberships(cast.project)
    removed = manager.delete(url(cast, cast.manager.username))
    demoted = manager.patch(url(cast, cast.manager.username), {"role": "annotator"}, format="json")
    assert (removed.status_code, demoted.status_code) == (409, 409)
    assert "at least one manager" in removed.json()["detail"]
    assert memberships(cast.project) == before


def test_a_removed_member_loses_their_lease_and_cannot_write_through_it(cast, api):
    client = api(cast.annotator)
    done = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    assert (
        client.post(
            f"/api/v1/assignments/{done['id']}/judgement",
            {"choice": "A", "strength": 1},
            format="json",
            HTTP_IDEMPOTENCY_KEY="first",
        ).status_code
        == 201
    )
    lease = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    assert api(cast.manager).delete(url(cast, cast.annotator.username)).status_code == 204

    judged = client.post(
        f"/api/v1/assignments/{lease['id']}/judgement",
        {"choice": "B", "strength": 2},
        format="json",
        HTTP_IDEMPOTENCY_KEY="after-removal",
    )
    skipped = client.post(f"/api/v1/assignments/{lease['id']}/skip")
    leased = client.post(f"/api/v1/projects/{cast.project.pk}/assignments")
    assert (judged.status_code, skipped.status_code, leased.status_code) == (404, 404, 404)
    assert list(Judgement.objects.values_list("annotator_id", flat=True)) == [cast.annotator.pk]
    assert Task.objects.get(pk=lease["task"]["id"]).live_leases == 0


def test_a_member_demoted_to_trainer_cannot_write_through_their_lease(cast, api):
    client = api(cast.annotator)
    lease = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    api(cast.manager).patch(url(cast, cast.annotator.username), {"role": "trainer"}, format="json")
    judged = client.post(
        f"/api/v1/assignments/{lease['id']}/judgement",
        {"choice": "B", "strength": 2},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert judged.status_code == 403 and not Judgement.objects.exists()
    assert client.post(f"/api/v1/assignments/{lease['id']}/skip").status_code == 403
    assert Assignment.objects.get(pk=lease["id"]).status == "skipped"


@pytest.mark.django_db(transaction=True)
def test_an_archived_project_is_read_only_over_the_api(cast, api):
    client = api(cast.annotator)
    lease = client.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
    Project.objects.filter(pk=cast.project.pk).update(archived=True)
    before = (
        memberships(cast.project),
        sorted(Assignment.objects.values_list("id", "status")),
        sorted(Task.objects.values_list("id", "live_leases", "judgement_count")),
    )
    writes = {
        "lease": client.post(f"/api/v1/projects/{cast.project.pk}/assignments"),
        "judgement": client.post(
            f"/api/v1/assignments/{lease['id']}/judgement",
            {"choice": "A", "strength": 1},
            format="json",
            HTTP_IDEMPOTENCY_KEY="k",
        ),
        "skip": client.post(f"/api/v1/assignments/{lease['id']}/skip"),
        "add": api(cast.manager).post(
            url(cast), {"username": cast.outsider.username, "role": "annotator"}, format="json"
        ),
        "change": api(cast.manager).patch(
            url(cast, cast.other.username), {"role": "trainer"}, format="json"
        ),
        "remove": api(cast.manager).delete(url(cast, cast.other.username)),
    }
    assert {k: r.status_code for k, r in writes.items()} == dict.fromkeys(writes, 409)
    assert all("archived" in r.json()["detail"] for r in writes.values())
    after = (
        memberships(cast.project),
        sorted(Assignment.objects.values_list("id", "status")),
        sorted(Task.objects.values_list("id", "live_leases", "judgement_count")),
    )
    assert after == before and not Judgement.objects.exists()
    # Reads and exports still work.
    assert api(cast.manager).get(f"/api/v1/projects/{cast.project.pk}").status_code == 200
    assert api(cast.manager).get(url(cast)).status_code == 200
    export = api(cast.trainer).get(f"/api/v1/projects/{cast.project.pk}/export?shape=pairs")
    assert export.status_code == 200
    b"".join(export.streaming_content)
