"""Lease and submit races over real HTTP, where users meet them.

Every request goes through pytest-django's live server (one thread and one database connection
per request) from threads that each hold their own httpx client and API token, so two requests
really are in flight at once: two tabs of one annotator, a double-clicked submit, a skip racing a
submit, many annotators leasing the last free slots, leases expiring while people are slow.
The state is then checked in the database, not only in the status codes.
"""

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from django.db import connection, connections
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Judgement, Project, Role, Task
from annotation.services.tokens import token_issue
from tests.factories import ProjectFactory, UserFactory, import_tasks

# A hard stop besides the bounded waits below: a deadlock fails in minutes, not at the suite's limit.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

# Every wait in these tests is bounded, so a deadlock or a hung request fails instead of stalling.
REQUEST_TIMEOUT = 15.0


@pytest.fixture
def connect(live_server):
    """connect(user) -> an httpx client of its own, with a token of its own, for /api/v1."""
    clients: list[httpx.Client] = []

    def make(user) -> httpx.Client:
        _, secret = token_issue(user=user, name="race")
        client = httpx.Client(
            base_url=f"{live_server.url}/api/v1",
            headers={"Authorization": f"Token {secret}"},
            timeout=REQUEST_TIMEOUT,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def members(project: Project, n: int) -> list:
    users = [UserFactory() for _ in range(n)]
    for user in users:
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return users


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Runs the calls in threads released together; their responses in the order given."""
    barrier = threading.Barrier(len(calls))
    responses: list = [None] * len(calls)
    failures: list[BaseException] = []

    def run(i: int, call: Callable[[], httpx.Response]) -> None:
        try:
            barrier.wait(timeout=REQUEST_TIMEOUT)
            responses[i] = call()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * REQUEST_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert not failures, failures
    return responses


def lease(client: httpx.Client, project: Project) -> httpx.Response:
    return client.post(f"/projects/{project.pk}/assignments")


def submit(client: httpx.Client, assignment_id: int, key: str, choice: str = "A") -> httpx.Response:
    return client.post(
        f"/assignments/{assignment_id}/judgement",
        json={"choice": choice, "strength": 2},
        headers={"Idempotency-Key": key},
    )


def skip(client: httpx.Client, assignment_id: int) -> httpx.Response:
    return client.post(f"/assignments/{assignment_id}/skip")


def assert_counters_consistent(project: Project) -> None:
    """Every counter kept on a task agrees with the rows it counts."""
    for task in Task.objects.filter(project=project):
        judgements = Judgement.objects.filter(task=task)
        leased = Assignment.objects.filter(task=task, status=Assignment.Status.LEASED)
        assert task.judgement_count == judgements.count(), task.pk
        assert task.answer_counts == dict(Counter(judgements.values_list("answer", flat=True)))
        assert task.live_leases == leased.count(), task.pk
        assert task.is_complete == (task.judgement_count >= task.overlap), task.pk
        expiries = list(leased.values_list("expires_at", flat=True))
        assert task.next_lease_expiry == (min(expiries) if expiries else None), task.pk
        annotators = list(judgements.values_list("annotator_id", flat=True))
        assert len(annotators) == len(set(annotators)), "one judgement per annotator and task"


def test_the_same_idempotency_key_sent_twice_at_once_stores_one_judgement(connect):
    project = ProjectFactory(overlap=1)
    import_tasks(project, 8)
    (alice,) = members(project, 1)
    first_tab, second_tab = connect(alice), connect(alice)
    for round_ in range(8):
        leased = lease(first_tab, project)
        assert leased.status_code == 201, leased.text
        assignment_id = leased.json()["id"]
        key = f"double-click-{round_}"
        one, two = at_once(
            lambda a=assignment_id, k=key: submit(first_tab, a, k),
            lambda a=assignment_id, k=key: submit(second_tab, a, k),
        )
        assert sorted([one.status_code, two.status_code]) == [200, 201], (one.text, two.text)
        assert one.json()["id"] == two.json()["id"], "both answers name the same judgement"
        stored = Judgement.objects.get(assignment_id=assignment_id)
        assert stored.pk == one.json()["id"] and stored.idempotency_key == key
        assert Assignment.objects.get(pk=assignment_id).status == Assignment.Status.SUBMITTED
    assert Judgement.objects.filter(project=project).count() == 8
    assert_counters_consistent(project)


def test_skip_racing_submit_on_one_assignment_has_exactly_one_winner(connect):
    project = ProjectFactory(overlap=1)
    import_tasks(project, 10)
    alice, bob = members(project, 2)
    click, other_click = connect(alice), connect(alice)
    outcomes = []
    for round_ in range(10):
        leased = lease(click, project)
        assert leased.status_code == 201, leased.text
        assignment_id, task_id = leased.json()["id"], leased.json()["task"]["id"]
        skipped, judged = at_once(
            lambda a=assignment_id: skip(click, a),
            lambda a=assignment_id, r=round_: submit(other_click, a, f"race-{r}"),
        )
        assignment = Assignment.objects.get(pk=assignment_id)
        task = Task.objects.get(pk=task_id)
        if judged.status_code == 201:
            # The submission won: judged and counted; the skip was refused and changed nothing.
            assert skipped.status_code == 409, skipped.text
            assert assignment.status == Assignment.Status.SUBMITTED
            assert Judgement.objects.get(assignment=assignment).pk == judged.json()["id"]
            assert (task.judgement_count, task.live_leases, task.is_complete) == (1, 0, True)
            assert task.answer_counts == {"A": 1}
            outcomes.append("submitted")
        else:
            # The skip won: nothing stored, the task is back in the queue with its slot free.
            assert (skipped.status_code, judged.status_code) == (204, 409), (skipped, judged.text)
            assert assignment.status == Assignment.Status.SKIPPED
            assert not Judgement.objects.filter(assignment=assignment).exists()
            assert (task.judgement_count, task.live_leases, task.is_complete) == (0, 0, False)
            assert task.next_lease_expiry is None and task.answer_counts == {}
            outcomes.append("skipped")
    assert_counters_consistent(project)

    # Every skipped task really went back to the queue: another annotator gets exactly those.
    bob_client = connect(bob)
    skipped_tasks = set(
        Assignment.objects.filter(annotator=alice, status=Assignment.Status.SKIPPED).values_list(
            "task_id", flat=True
        )
    )
    assert len(skipped_tasks) == outcomes.count("skipped")
    bob_got = set()
    while (leased := lease(bob_client, project)).status_code == 201:
        bob_got.add(leased.json()["task"]["id"])
        assert (
            submit(bob_client, leased.json()["id"], f"bob-{leased.json()['id']}").status_code == 201
        )
    assert leased.status_code == 204
    assert bob_got == skipped_tasks
    assert all(task.is_complete for task in Task.objects.filter(project=project))
    assert_counters_consistent(project)


def test_one_annotator_in_two_tabs_gets_one_lease(connect):
    project = ProjectFactory(overlap=2)
    import_tasks(project, 6)
    alice, _ = members(project, 2)
    tab_one, tab_two = connect(alice), connect(alice)
    for round_ in range(6):
        one, two = at_once(lambda: lease(tab_one, project), lambda: lease(tab_two, project))
        assert sorted([one.status_code, two.status_code]) == [200, 201], (one.text, two.text)
        assert one.json() == two.json(), "the same lease, task and expiry in both tabs"
        live = Assignment.objects.filter(
            annotator=alice, project=project, status=Assignment.Status.LEASED
        )
        assert list(live.values_list("id", flat=True)) == [one.json()["id"]]
        assert Task.objects.get(pk=one.json()["task"]["id"]).live_leases == 1
        assert submit(tab_two, one.json()["id"], f"tab-{round_}").status_code == 201
    # Alice has judged all six tasks; both tabs are told so, and nothing was leased by it.
    one, two = at_once(lambda: lease(tab_one, project), lambda: lease(tab_two, project))
    assert (one.status_code, two.status_code) == (204, 204)
    assert Assignment.objects.filter(annotator=alice).count() == 6
    assert_counters_consistent(project)


@pytest.mark.slow
def test_many_annotators_leasing_the_last_free_slots_at_once_each_get_one(connect):
    """Fewer tasks than requests, but enough slots for each: nobody is told "nothing left"."""
    annotators, tasks_per_round, overlap = 12, 2, 6
    project = ProjectFactory(overlap=overlap)
    users = members(project, annotators)
    clients = [connect(user) for user in users]
    for round_ in range(4):
        import_tasks(project, tasks_per_round, start=100 * round_)
        responses = at_once(*(lambda c=c: lease(c, project) for c in clients))
        codes = Counter(r.status_code for r in responses)
        assert codes == {201: annotators}, f"round {round_}: {dict(codes)}"
        leased_tasks = Counter(r.json()["task"]["id"] for r in responses)
        assert sorted(leased_tasks.values()) == [overlap] * tasks_per_round
        for client, response in zip(clients, responses, strict=True):
            assignment_id = response.json()["id"]
            assert submit(client, assignment_id, f"slot-{assignment_id}").status_code == 201
        assert_counters_consistent(project)
    assert Task.objects.filter(project=project, is_complete=False).count() == 0


OVERFULL_IN_TIME = """
SELECT t.id FROM annotation_task t
WHERE t.project_id = %s
  AND (SELECT count(*) FROM annotation_assignment a
       WHERE a.task_id = t.id AND a.status = 'leased' AND a.expires_at > now())
    + (SELECT count(*) FROM annotation_judgement j WHERE j.task_id = t.id AND NOT j.late) > t.overlap
"""


@pytest.mark.slow
def test_leases_expiring_under_load_lose_nothing_and_never_overfill(connect):
    """Leases of one second; some annotators sleep past theirs. Late work is kept and marked."""
    annotators, tasks, overlap, lease_seconds = 8, 10, 2, 1
    project = ProjectFactory(overlap=overlap)
    # The service refuses leases under 30 s (sensible for people); the test needs expiry now.
    Project.objects.filter(pk=project.pk).update(lease_seconds=lease_seconds)
    import_tasks(project, tasks)
    users = members(project, annotators)
    clients = [connect(user) for user in users]
    deadline = time.monotonic() + 20
    results: list[dict] = []
    failures: list[BaseException] = []
    watcher_failures: list[BaseException] = []
    violations: list = []
    checks = 0
    lock = threading.Lock()
    done = threading.Event()

    def annotate(i: int, user, client: httpx.Client) -> None:
        rng = random.Random(i)
        n = 0
        try:
            while time.monotonic() < deadline:
                leased = lease(client, project)
                if leased.status_code == 204:
                    # Nothing for me now; a lease someone else holds may still expire back into
                    # the queue, so stop only once every unfinished task is one I have seen.
                    mine = Assignment.objects.filter(annotator=user).values("task_id")
                    if not (
                        Task.objects.filter(project=project, is_complete=False)
                        .exclude(pk__in=mine)
                        .exists()
                    ):
                        return
                    time.sleep(0.05)
                    continue
                assert leased.status_code == 201, leased.text
                n += 1
                slow = (i + n) % 3 == 0  # deterministic: about a third of the leases run late
                if slow:
                    time.sleep(lease_seconds * 1.3)
                body = leased.json()
                judged = submit(client, body["id"], f"{i}-{body['id']}", rng.choice("AB"))
                assert judged.status_code == 201, judged.text
                with lock:
                    results.append({"slow": slow, **judged.json()})
            raise AssertionError("the queue did not drain in time")
        except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread below
            failures.append(exc)
        finally:
            connections.close_all()

    def watch() -> None:
        nonlocal checks
        try:
            while not done.is_set():
                with connection.cursor() as cursor:
                    cursor.execute(OVERFULL_IN_TIME, [project.pk])
                    rows = cursor.fetchall()
                checks += 1
                if rows:
                    violations.append(rows)
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the main thread below
            watcher_failures.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=annotate, args=(i, u, c))
        for i, (u, c) in enumerate(zip(users, clients, strict=True))
    ]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    done.set()
    watcher.join(timeout=10)
    assert not any(t.is_alive() for t in [*threads, watcher]), "a thread hung"
    assert not failures, failures[:3]
    assert not watcher_failures, watcher_failures
    assert checks >= 5 and not violations, (checks, violations[:3])

    # Nothing lost, nothing extra: every judgement a client was told it stored, once.
    stored = {j.pk: j for j in Judgement.objects.filter(project=project)}
    assert sorted(stored) == sorted(r["id"] for r in results)
    # Late work is kept and marked; the answer told the annotator what was stored.
    for result in results:
        assert stored[result["id"]].late == result["late"]
        if result["slow"]:
            assert result["late"], "a submission after the lease expired is marked late"
    late = [j for j in stored.values() if j.late]
    assert late, "some leases expired before their judgement"
    # Per task: in-time judgements within the overlap, each annotator once, counters exact.
    for task in Task.objects.filter(project=project):
        in_time = [j for j in stored.values() if j.task_id == task.pk and not j.late]
        assert len(in_time) <= overlap, task.pk
        assert task.is_complete, "the queue drained"
    assert_counters_consistent(project)
    assert not Assignment.objects.filter(
        project=project, status=Assignment.Status.LEASED, expires_at__gt=timezone.now()
    ).exists()
