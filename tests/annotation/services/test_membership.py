"""Removing members and changing roles: the last manager stays, open leases go back at once."""

import pytest

from annotation import selectors, services
from annotation.errors import Conflict, Forbidden, InvalidInput, NotFound
from annotation.models import Assignment, Judgement, Membership, Project, Role, Task
from tests.factories import ProjectFactory, UserFactory, import_tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def team():
    """A project (overlap 1, three tasks) with a manager and two annotators."""
    project = ProjectFactory(overlap=1)
    import_tasks(project, 3)
    manager, alice, bob = UserFactory(), UserFactory(), UserFactory()
    services.membership_set(project=project, username=manager.username, role=Role.MANAGER)
    for user in (alice, bob):
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return project, manager, alice, bob


def snapshot(project):
    return (
        sorted(Membership.objects.filter(project=project).values_list("user_id", "role")),
        sorted(Assignment.objects.filter(project=project).values_list("id", "status")),
        sorted(Task.objects.filter(project=project).values_list("id", "live_leases")),
    )


def submit(assignment, key):
    return services.judgement_submit(
        assignment=assignment, data={"choice": "A", "strength": 1}, idempotency_key=key
    )


def test_removing_a_member_returns_their_live_lease_and_keeps_their_judgements(team):
    project, _, alice, bob = team
    done = services.assignment_lease(annotator=alice, project=project)
    judgement, _ = submit(done, "k1")
    live = services.assignment_lease(annotator=alice, project=project)
    assert Task.objects.get(pk=live.task_id).live_leases == 1

    services.membership_remove(project=project, username=alice.username)

    assert not Membership.objects.filter(project=project, user=alice).exists()
    live.refresh_from_db()
    assert live.status == Assignment.Status.SKIPPED and live.finished_at is not None
    task = Task.objects.get(pk=live.task_id)
    assert (task.live_leases, task.next_lease_expiry) == (0, None)
    # The task is back in the queue at once: with overlap 1, bob can take it now.
    taken = {services.assignment_lease(annotator=bob, project=project).task_id}
    submit(Assignment.objects.get(annotator=bob, status="leased"), "b1")
    taken.add(services.assignment_lease(annotator=bob, project=project).task_id)
    assert live.task_id in taken
    # Her judgement stays, still hers.
    assert Judgement.objects.get(pk=judgement.pk).annotator_id == alice.pk


def test_a_removed_member_can_no_longer_submit_through_an_old_lease(team):
    project, _, alice, _ = team
    lease = services.assignment_lease(annotator=alice, project=project)
    assert selectors.access_assignment(user=alice, assignment_id=lease.pk).pk == lease.pk
    services.membership_remove(project=project, username=alice.username)
    with pytest.raises(NotFound):
        selectors.access_assignment(user=alice, assignment_id=lease.pk)
    # A submission that passed its access check just before the removal still finds the lease
    # closed: nothing is stored.
    with pytest.raises(Conflict):
        submit(lease, "late")
    assert not Judgement.objects.filter(annotator=alice).exists()


def test_demotion_to_trainer_returns_live_leases_and_refuses_writes(team):
    project, _, alice, _ = team
    lease = services.assignment_lease(annotator=alice, project=project)
    membership = services.membership_set(
        project=project, username=alice.username, role=Role.TRAINER
    )
    assert membership.role == Role.TRAINER
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.SKIPPED
    assert Task.objects.get(pk=lease.task_id).live_leases == 0
    with pytest.raises(Forbidden):
        selectors.access_assignment(user=alice, assignment_id=lease.pk)


def test_a_change_between_annotating_roles_keeps_the_lease(team):
    project, _, alice, _ = team
    lease = services.assignment_lease(annotator=alice, project=project)
    services.membership_set(project=project, username=alice.username, role=Role.REVIEWER)
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.LEASED
    assert selectors.access_assignment(user=alice, assignment_id=lease.pk).pk == lease.pk


def test_the_last_manager_can_be_neither_removed_nor_demoted(team):
    project, manager, alice, _ = team
    creator = project.created_by
    services.membership_remove(project=project, username=creator.username)
    before = snapshot(project)
    with pytest.raises(Conflict, match="at least one manager"):
        services.membership_remove(project=project, username=manager.username)
    with pytest.raises(Conflict, match="at least one manager"):
        services.membership_set(project=project, username=manager.username, role=Role.ANNOTATOR)
    assert snapshot(project) == before
    # With a second manager, the first may go.
    services.membership_set(project=project, username=alice.username, role=Role.MANAGER)
    services.membership_remove(project=project, username=manager.username)
    assert Membership.objects.filter(project=project, role=Role.MANAGER).count() == 1


def test_non_members_and_unknown_users_are_not_found(team):
    project, _, _, _ = team
    outsider = UserFactory()
    before = snapshot(project)
    with pytest.raises(NotFound, match="not a member"):
        services.membership_remove(project=project, username=outsider.username)
    with pytest.raises(NotFound, match="no user named"):
        services.membership_remove(project=project, username="nobody-at-all")
    with pytest.raises(NotFound, match="not a member"):
        services.membership_set(
            project=project, username=outsider.username, role=Role.ANNOTATOR, create=False
        )
    with pytest.raises(InvalidInput):
        services.membership_set(project=project, username=outsider.username, role="king")
    assert snapshot(project) == before


def test_archived_projects_refuse_member_changes(team):
    project, _, alice, _ = team
    Project.objects.filter(pk=project.pk).update(archived=True)
    project.refresh_from_db()
    before = snapshot(project)
    with pytest.raises(Conflict, match="archived"):
        services.membership_remove(project=project, username=alice.username)
    with pytest.raises(Conflict, match="archived"):
        services.membership_set(project=project, username=alice.username, role=Role.TRAINER)
    with pytest.raises(Conflict, match="archived"):
        services.membership_set(
            project=project, username=UserFactory().username, role=Role.ANNOTATOR
        )
    assert snapshot(project) == before


def test_the_admin_removes_members_through_the_service(team, client):
    project, _, alice, _ = team
    lease = services.assignment_lease(annotator=alice, project=project)
    membership = Membership.objects.get(project=project, user=alice)
    admin = UserFactory(is_staff=True)
    admin.is_superuser = True
    admin.save(update_fields=["is_superuser"])
    client.force_login(admin)
    response = client.post(f"/admin/annotation/membership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.SKIPPED
    assert Task.objects.get(pk=lease.task_id).live_leases == 0
