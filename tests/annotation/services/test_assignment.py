from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import services
from annotation.errors import Conflict
from annotation.models import Assignment, Project, Role, Task
from tests.factories import ProjectFactory, UserFactory, import_tasks

pytestmark = pytest.mark.django_db


def annotators(project, n):
    users = [UserFactory() for _ in range(n)]
    for user in users:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return users


def submit(assignment, key="k", **data):
    data.setdefault("choice", "A")
    data.setdefault("strength", 1)
    return services.judgement_submit(assignment=assignment, data=data, idempotency_key=key)


def test_lease_follows_priority_then_age():
    project = ProjectFactory()
    import_tasks(project, 5)
    tasks = list(Task.objects.filter(project=project).order_by("id"))
    Task.objects.filter(pk=tasks[3].pk).update(priority=2.0)
    Task.objects.filter(pk=tasks[1].pk).update(priority=1.0)
    (alice,) = annotators(project, 1)
    order = []
    while (a := services.assignment_lease(annotator=alice, project=project)) is not None:
        order.append(a.task_id)
        submit(a, key=f"k{a.pk}")
    assert order == [tasks[3].pk, tasks[1].pk, tasks[0].pk, tasks[2].pk, tasks[4].pk]


def test_overlap_needs_distinct_annotators_and_never_repeats_a_task():
    project = ProjectFactory(overlap=2)
    import_tasks(project, 3)
    alice, bob, carol = annotators(project, 3)
    seen_by_alice = []
    while (a := services.assignment_lease(annotator=alice, project=project)) is not None:
        seen_by_alice.append(a.task_id)
        submit(a, key=f"a{a.pk}")
    assert len(seen_by_alice) == 3 == len(set(seen_by_alice))
    for _ in range(3):
        submit(services.assignment_lease(annotator=bob, project=project), key="b" + str(_))
    assert services.assignment_lease(annotator=bob, project=project) is None
    # Every task has its two judgements: carol gets nothing.
    assert services.assignment_lease(annotator=carol, project=project) is None
    assert all(
        t.is_complete and t.judgement_count == 2 for t in Task.objects.filter(project=project)
    )


def test_a_live_lease_holds_the_slot_and_an_expired_one_returns_it():
    project = ProjectFactory(overlap=1, lease_seconds=60)
    import_tasks(project, 1)
    alice, bob = annotators(project, 2)
    lease = services.assignment_lease(annotator=alice, project=project)
    assert services.assignment_lease(annotator=bob, project=project) is None

    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    Task.objects.filter(pk=lease.task_id).update(
        next_lease_expiry=timezone.now() - timedelta(seconds=1)
    )
    second = services.assignment_lease(annotator=bob, project=project)
    assert second is not None and second.task_id == lease.task_id
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.EXPIRED

    # Alice's late work is kept and counted, and marked late; Bob's in-time work too.
    late, created = submit(lease, key="late")
    assert created and late.late
    on_time, _ = submit(second, key="on-time")
    assert not on_time.late
    task = Task.objects.get(pk=lease.task_id)
    assert task.judgement_count == 2 and task.live_leases == 0 and task.is_complete


def test_skip_returns_the_task_to_others_but_not_to_the_skipper():
    project = ProjectFactory()
    import_tasks(project, 1)
    alice, bob = annotators(project, 2)
    lease = services.assignment_lease(annotator=alice, project=project)
    services.assignment_skip(assignment=lease)
    services.assignment_skip(assignment=lease)  # twice is harmless
    assert services.assignment_lease(annotator=alice, project=project) is None
    assert services.assignment_lease(annotator=bob, project=project).task_id == lease.task_id
    with pytest.raises(Conflict):
        submit(lease, key="after-skip")


def test_skip_after_submit_is_refused():
    project = ProjectFactory()
    import_tasks(project, 1)
    (alice,) = annotators(project, 1)
    lease = services.assignment_lease(annotator=alice, project=project)
    submit(lease)
    with pytest.raises(Conflict):
        services.assignment_skip(assignment=lease)


# --- one live lease per annotator (issue 9, item 3) ----------------------------------------------


def test_leasing_again_returns_the_live_lease_instead_of_draining_the_queue():
    project = ProjectFactory()
    import_tasks(project, 5)
    (alice,) = annotators(project, 1)
    first, created = services.assignment_acquire(annotator=alice, project=project)
    assert created
    for _ in range(10):
        again, created_again = services.assignment_acquire(annotator=alice, project=project)
        assert (again.pk, again.task_id, created_again) == (first.pk, first.task_id, False)
        assert again.expires_at == first.expires_at
        assert again.task.prompt.messages == first.task.prompt.messages
    # One assignment written, one slot taken: the other four tasks stay in the queue.
    assert Assignment.objects.filter(annotator=alice).count() == 1
    assert sum(Task.objects.filter(project=project).values_list("live_leases", flat=True)) == 1
    # Once the lease is finished, the next call leases the next task.
    submit(first)
    following, created = services.assignment_acquire(annotator=alice, project=project)
    assert created and following.task_id != first.task_id


def test_the_live_lease_is_per_project():
    first_project, second_project = ProjectFactory(), ProjectFactory()
    import_tasks(first_project, 2)
    import_tasks(second_project, 2)
    (alice,) = annotators(first_project, 1)
    services.membership_set(project=second_project, username=alice.username, role=Role.ANNOTATOR)
    here = services.assignment_lease(annotator=alice, project=first_project)
    there = services.assignment_lease(annotator=alice, project=second_project)
    assert here.project_id == first_project.pk and there.project_id == second_project.pk


def test_an_expired_lease_is_not_returned_a_new_one_is_made():
    project = ProjectFactory(lease_seconds=60)
    import_tasks(project, 2)
    (alice,) = annotators(project, 1)
    old = services.assignment_lease(annotator=alice, project=project)
    Assignment.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    new, created = services.assignment_acquire(annotator=alice, project=project)
    assert created and new.pk != old.pk and new.task_id != old.task_id


def test_lease_and_submit_stay_one_round_trip_each(django_assert_num_queries):
    project = ProjectFactory()
    import_tasks(project, 3)
    (alice,) = annotators(project, 1)
    # Inside the test's transaction atomic() is a savepoint pair around the one statement; in
    # production it is BEGIN/COMMIT. Before this change: 3 and 4, the same.
    with django_assert_num_queries(3):
        lease = services.assignment_lease(annotator=alice, project=project)
    with django_assert_num_queries(3):
        assert services.assignment_lease(annotator=alice, project=project).pk == lease.pk
    with django_assert_num_queries(4):
        submit(lease)


@pytest.mark.django_db(transaction=True)
def test_parallel_lease_requests_of_one_annotator_get_one_lease():
    import threading

    from django.db import connections

    project = ProjectFactory()
    import_tasks(project, 20)
    (alice,) = annotators(project, 1)
    start = threading.Barrier(8)
    got, failures = [], []

    def lease():
        try:
            start.wait()
            got.append(services.assignment_lease(annotator=alice, project=project).pk)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=lease) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert len(set(got)) == 1 and len(got) == 8
    assert Assignment.objects.filter(annotator=alice).count() == 1


def test_an_archived_project_leases_nothing_and_refuses_skips():
    project = ProjectFactory()
    import_tasks(project, 2)
    (alice,) = annotators(project, 1)
    lease = services.assignment_lease(annotator=alice, project=project)
    Project.objects.filter(pk=project.pk).update(archived=True)
    project.refresh_from_db()
    with pytest.raises(Conflict, match="archived"):
        services.assignment_lease(annotator=alice, project=project)
    with pytest.raises(Conflict, match="archived"):
        services.assignment_skip(assignment=lease)
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.LEASED
    assert Assignment.objects.filter(project=project).count() == 1
