"""32 annotators as threads against the real Postgres: no over-assignment, nothing lost."""

import random
import threading
import time

import pytest
from django.db import connection, connections

from annotation import services
from annotation.models import Assignment, Judgement, Role, Task
from tests.factories import ProjectFactory, UserFactory, import_tasks

ANNOTATORS = 32
TASKS = 150
OVERLAP = 3

OVERFULL_TASKS = """
SELECT t.id FROM annotation_task t
WHERE t.project_id = %s
  AND (SELECT count(*) FROM annotation_assignment a
       WHERE a.task_id = t.id AND a.status = 'leased' AND a.expires_at > now())
    + (SELECT count(*) FROM annotation_judgement j WHERE j.task_id = t.id) > t.overlap
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_annotators_never_overfill_a_task_and_lose_nothing():
    project = ProjectFactory(overlap=OVERLAP, lease_seconds=3600)
    import_tasks(project, TASKS)
    users = [UserFactory() for _ in range(ANNOTATORS)]
    for user in users:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)

    submitted: list[int] = []
    skipped: list[int] = []
    violations: list[list] = []
    failures: list[BaseException] = []
    watcher_failures: list[BaseException] = []
    checks = 0
    lock = threading.Lock()
    done = threading.Event()
    start = threading.Barrier(ANNOTATORS + 1)

    def annotate(user, seed):
        rng = random.Random(seed)
        try:
            start.wait()
            while True:
                lease = services.assignment_lease(annotator=user, project=project)
                if lease is None:
                    # Nothing for me now; a task someone else holds may still be skipped back
                    # into the queue, so stop only once no lease is live (as a real annotator
                    # polling an empty queue would find work again).
                    if not Assignment.objects.filter(
                        project=project, status=Assignment.Status.LEASED
                    ).exists():
                        break
                    time.sleep(0.02)
                    continue
                if rng.random() < 0.1:
                    services.assignment_skip(assignment=lease)
                    with lock:
                        skipped.append(lease.pk)
                    continue
                judgement, created = services.judgement_submit(
                    assignment=lease,
                    data={"choice": rng.choice("AB"), "strength": rng.randint(1, 3)},
                    idempotency_key=f"{user.pk}-{lease.pk}",
                )
                assert created
                with lock:
                    submitted.append(judgement.pk)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread below
            failures.append(exc)
        finally:
            connections.close_all()

    def watch():
        # An exception here would only be a warning from pytest, and `violations` would stay
        # empty: it is collected and fails the test below, as does a watcher that never looked.
        nonlocal checks
        try:
            while not done.is_set():
                with connection.cursor() as cursor:
                    cursor.execute(OVERFULL_TASKS, [project.pk])
                    rows = cursor.fetchall()
                checks += 1
                if rows:
                    violations.append(rows)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread below
            watcher_failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(u, i)) for i, u in enumerate(users)]
    watcher = threading.Thread(target=watch)
    for thread in threads:
        thread.start()
    watcher.start()
    start.wait()
    for thread in threads:
        thread.join(timeout=300)
    done.set()
    watcher.join(timeout=30)

    assert not any(thread.is_alive() for thread in threads), "an annotator thread hung"
    assert not watcher.is_alive(), "the watcher hung"
    assert not failures, failures[:3]
    assert not watcher_failures, watcher_failures
    assert checks >= 5, f"the watcher checked the invariant only {checks} times"
    assert not violations, violations[:3]
    # Nothing lost: every judgement a thread was told it stored is in the database, once.
    stored = set(Judgement.objects.filter(project=project).values_list("id", flat=True))
    assert stored == set(submitted) and len(submitted) == len(stored)
    # The queue drained completely: every task got exactly its overlap, from distinct annotators.
    assert len(stored) == TASKS * OVERLAP
    for task in Task.objects.filter(project=project):
        assert task.judgement_count == OVERLAP and task.is_complete and task.live_leases == 0
    assert Assignment.objects.filter(project=project, status=Assignment.Status.LEASED).count() == 0
    assert Assignment.objects.filter(
        project=project, status=Assignment.Status.SKIPPED
    ).count() == len(skipped)
