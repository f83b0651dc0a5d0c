"""The generic phase rules of the judgement service, on the hindsight kind (Kind.phases =
("foresight", "hindsight")): order, locking, idempotency per phase, completion by the last phase
only, and a lease that expires between the phases."""

import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import services
from annotation.errors import Conflict, InvalidInput
from annotation.models import Assignment, Judgement, Response, Role, Task
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

FORESIGHT = {"phase": "foresight", "ratings": [5, 2], "choice": "A", "time_spent_ms": 1000}
HINDSIGHT = {"phase": "hindsight", "ratings": [1, 4], "choice": "B", "time_spent_ms": 700}


def hindsight_lines(n: int, *, outcomes: bool = True) -> list[dict]:
    lines = []
    for i in range(n):
        first = {"text": f"Option {i} has everything.", "model": "pi-0"}
        second = {"text": f"Option {i + 1} fits the budget.", "model": "pi-1"}
        if outcomes:
            first["outcome"] = f"OUTCOME-{i}-A: it lacked the feature."
            second["outcome"] = f"OUTCOME-{i}-B: it worked."
        lines.append(
            {"prompt": f"Which option {i}?", "responses": [first, second], "hidden": {"i": i}}
        )
    return lines


def hindsight_project(n: int = 1, *, overlap: int = 1, lease_seconds: int = 600, **kw):
    project = ProjectFactory(kind="hindsight", overlap=overlap, lease_seconds=lease_seconds)
    body = "".join(json.dumps(line) + "\n" for line in hindsight_lines(n, **kw)).encode()
    job = services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project


def annotator(project):
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    return user


def test_foresight_then_hindsight_are_two_rows_and_only_the_last_completes():
    project = hindsight_project()
    user = annotator(project)
    lease = services.assignment_lease(annotator=user, project=project)
    first, created = services.judgement_submit(
        assignment=lease, data=dict(FORESIGHT), idempotency_key="f"
    )
    assert created and first.phase == "foresight" and first.time_spent_ms == 1000
    task = Task.objects.get(pk=lease.task_id)
    # Foresight leaves the assignment open and the task uncounted.
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.LEASED
    assert (task.judgement_count, task.live_leases, task.is_complete) == (0, 1, False)
    assert task.answer_counts == {}
    # The same lease comes back (the hindsight phase is due on it).
    assert services.assignment_lease(annotator=user, project=project).pk == lease.pk
    second, created = services.judgement_submit(
        assignment=lease, data=dict(HINDSIGHT), idempotency_key="h"
    )
    assert created and second.phase == "hindsight" and second.time_spent_ms == 700
    task.refresh_from_db()
    assert (task.judgement_count, task.live_leases, task.is_complete) == (1, 0, True)
    assert task.answer_counts == {"B": 1}
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.SUBMITTED
    assert list(
        Judgement.objects.filter(assignment=lease).order_by("id").values_list("phase", "answer")
    ) == [
        ("foresight", "A"),
        ("hindsight", "B"),
    ]


def test_hindsight_before_foresight_is_a_conflict_and_writes_nothing():
    project = hindsight_project()
    lease = services.assignment_lease(annotator=annotator(project), project=project)
    with pytest.raises(Conflict, match="foresight judgement of this assignment comes before"):
        services.judgement_submit(assignment=lease, data=dict(HINDSIGHT), idempotency_key="h")
    assert not Judgement.objects.exists()


def test_a_stored_foresight_is_locked_and_replayed_by_its_own_key():
    project = hindsight_project()
    lease = services.assignment_lease(annotator=annotator(project), project=project)
    first, _ = services.judgement_submit(
        assignment=lease, data=dict(FORESIGHT), idempotency_key="f"
    )
    changed = {**FORESIGHT, "ratings": [1, 1], "choice": "B"}
    with pytest.raises(Conflict, match="already stored and can no longer change"):
        services.judgement_submit(assignment=lease, data=changed, idempotency_key="f2")
    # After the outcome was revealed too (hindsight stored), the foresight stays as it was.
    services.judgement_submit(assignment=lease, data=dict(HINDSIGHT), idempotency_key="h")
    with pytest.raises(Conflict):
        services.judgement_submit(assignment=lease, data=changed, idempotency_key="f3")
    replay, created = services.judgement_submit(
        assignment=lease, data=dict(FORESIGHT), idempotency_key="f"
    )
    assert (replay.pk, created) == (first.pk, False)
    assert Judgement.objects.get(pk=first.pk).payload["ratings"] == [5, 2]
    assert Judgement.objects.count() == 2


def test_idempotency_keys_are_per_phase():
    project = hindsight_project()
    lease = services.assignment_lease(annotator=annotator(project), project=project)
    services.judgement_submit(assignment=lease, data=dict(FORESIGHT), idempotency_key="k")
    # The foresight key replayed as a hindsight body is not taken for a hindsight judgement.
    with pytest.raises(Conflict, match="already used for the foresight judgement"):
        services.judgement_submit(assignment=lease, data=dict(HINDSIGHT), idempotency_key="k")
    assert Judgement.objects.filter(phase="hindsight").count() == 0
    second, created = services.judgement_submit(
        assignment=lease, data=dict(HINDSIGHT), idempotency_key="k2"
    )
    again, created_again = services.judgement_submit(
        assignment=lease, data=dict(HINDSIGHT), idempotency_key="k2"
    )
    assert created and not created_again and again.pk == second.pk
    assert Task.objects.get(pk=lease.task_id).judgement_count == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"ratings": [1, 2], "choice": "A"}, "phase"),
        ({"phase": "later", "ratings": [1, 2], "choice": "A"}, "phase"),
        ({"phase": "foresight", "ratings": [1], "choice": "A"}, "ratings"),
        ({"phase": "foresight", "ratings": [0, 6], "choice": "A"}, "ratings[0]"),
        ({"phase": "foresight", "ratings": [True, 2], "choice": "A"}, "ratings[0]"),
        ({"phase": "foresight", "ratings": [1, 2]}, "choice"),
        ({"phase": "foresight", "ratings": [1, 2], "choice": "both_bad"}, "choice"),
        ({"phase": "foresight", "ratings": [1, 2], "choice": "A", "reason": "x" * 2001}, "reason"),
    ],
)
def test_bad_bodies_name_the_field(data, field):
    project = hindsight_project()
    lease = services.assignment_lease(annotator=annotator(project), project=project)
    with pytest.raises(InvalidInput) as refused:
        services.judgement_submit(assignment=lease, data=data, idempotency_key="bad")
    assert refused.value.errors[0]["field"] == field
    assert not Judgement.objects.exists()


def _expire(lease):
    past = timezone.now() - timedelta(seconds=1)
    Assignment.objects.filter(pk=lease.pk).update(expires_at=past)
    Task.objects.filter(pk=lease.task_id).update(next_lease_expiry=past)


def test_a_lease_expiring_between_phases_keeps_the_foresight_and_comes_back_at_hindsight():
    project = hindsight_project(2)
    user = annotator(project)
    lease = services.assignment_lease(annotator=user, project=project)
    foresight, _ = services.judgement_submit(
        assignment=lease, data=dict(FORESIGHT), idempotency_key="f"
    )
    _expire(lease)
    again, created = services.assignment_acquire(annotator=user, project=project)
    # The same assignment, leased again: hindsight is due on it, the foresight row kept.
    assert again.pk == lease.pk and again.task_id == lease.task_id and created
    assert again.status == Assignment.Status.LEASED and again.expires_at > timezone.now()
    task = Task.objects.get(pk=lease.task_id)
    assert task.live_leases == 1
    from annotation.selectors import assignment_view

    assert assignment_view(assignment=again).phase == "hindsight"
    hindsight, _ = services.judgement_submit(
        assignment=again, data=dict(HINDSIGHT), idempotency_key="h"
    )
    assert not hindsight.late and Judgement.objects.get(pk=foresight.pk).phase == "foresight"
    task.refresh_from_db()
    assert (task.judgement_count, task.live_leases, task.is_complete) == (1, 0, True)


def test_a_late_hindsight_after_expiry_is_kept_and_counted_like_any_late_judgement():
    project = hindsight_project()
    user = annotator(project)
    lease = services.assignment_lease(annotator=user, project=project)
    services.judgement_submit(assignment=lease, data=dict(FORESIGHT), idempotency_key="f")
    _expire(lease)
    late, created = services.judgement_submit(
        assignment=lease, data=dict(HINDSIGHT), idempotency_key="h"
    )
    assert created and late.late
    task = Task.objects.get(pk=lease.task_id)
    assert (task.judgement_count, task.live_leases, task.is_complete) == (1, 0, True)


def test_a_task_filled_by_others_meanwhile_is_not_leased_back():
    project = hindsight_project(1, overlap=1)
    first, second = annotator(project), annotator(project)
    lease = services.assignment_lease(annotator=first, project=project)
    services.judgement_submit(assignment=lease, data=dict(FORESIGHT), idempotency_key="f")
    _expire(lease)
    other = services.assignment_lease(annotator=second, project=project)
    assert other is not None and other.task_id == lease.task_id
    # The task's one slot is the other annotator's now: the first moves on (nothing left here).
    assert services.assignment_lease(annotator=first, project=project) is None
    assert Judgement.objects.filter(phase="foresight", annotator=first).count() == 1


def test_imported_outcomes_are_stored_and_partial_ones_refused():
    project = hindsight_project(1)
    assert set(
        Response.objects.filter(prompt__project=project).values_list("outcome_source", flat=True)
    ) == {"imported"}
    bare = hindsight_project(1, outcomes=False)
    assert set(
        Response.objects.filter(prompt__project=bare).values_list("outcome_source", "outcome")
    ) == {("", "")}
    assert bare.prompts.get().hidden == {"i": 0}
    partial = hindsight_lines(1)
    del partial[0]["responses"][1]["outcome"]
    body = (json.dumps(hindsight_lines(1)[0]) + "\n" + json.dumps(partial[0]) + "\n").encode()
    job = services.import_create(
        project=bare, user=bare.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "failed"
    assert job.errors == [
        {
            "line": 2,
            "message": "responses[1].outcome: missing: give an outcome for every response of the "
            "line, or for none (then a simulator writes them from the hidden facts)",
        }
    ]
    assert bare.prompts.count() == 1  # nothing of the refused file was kept
