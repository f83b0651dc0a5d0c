"""Leasing tasks to annotators: the hot path of the queue.

Invariant: for every task, live leases + judgements from in-time leases never exceed its overlap.
Every write that changes a task's leases or judgements holds the task's row lock first (then,
if needed, assignment rows), so counting under that lock is exact and the lock order is the same
everywhere (task before assignment: no deadlocks between leases, skips and submissions).
"""

from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractUser
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, Min, OuterRef, Q
from django.utils import timezone

from ..errors import Conflict
from ..models import Assignment, Project, Task
from ..selectors import live_assignment_for

# A lease attempt can lose a race (same annotator in two tabs) or land on a task whose expired
# leases turn out to be still live; a few retries cover both without looping forever.
_LEASE_ATTEMPTS = 5


def _queue_head(*, annotator: AbstractUser, project: Project, now: datetime) -> Task | None:
    """The highest-priority task this annotator may take, row-locked; locked rows are skipped.

    Runs inside the caller's transaction. On SQLite (no row locks) the IMMEDIATE transaction mode
    set in settings serialises leases instead.
    """
    has_room = Q(judgement_count__lt=F("overlap") - F("live_leases")) | Q(
        next_lease_expiry__lte=now
    )
    seen_before = Assignment.objects.filter(task=OuterRef("pk"), annotator=annotator)
    return (
        Task.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("prompt")
        .filter(has_room, project=project, is_complete=False)
        .exclude(Exists(seen_before))
        .order_by("-priority", "id")
        .first()
    )


def _refresh_leases(task: Task, now: datetime) -> None:
    """Returns expired leases to the queue. Caller holds the task's row lock."""
    reclaimed = Assignment.objects.filter(
        task=task, status=Assignment.Status.LEASED, expires_at__lte=now
    ).update(status=Assignment.Status.EXPIRED, finished_at=now)
    task.live_leases = max(0, task.live_leases - reclaimed)
    task.next_lease_expiry = earliest_live_expiry(task)


def earliest_live_expiry(task: Task) -> datetime | None:
    if task.live_leases == 0:
        return None
    return Assignment.objects.filter(task=task, status=Assignment.Status.LEASED).aggregate(
        m=Min("expires_at")
    )["m"]


def assignment_lease(*, annotator: AbstractUser, project: Project) -> Assignment | None:
    """Leases the next task to the annotator, or returns None when nothing is left for them.

    Preconditions: the annotator may annotate in the project (checked by the caller's access selector).
    """
    for _ in range(_LEASE_ATTEMPTS):
        now = timezone.now()
        try:
            with transaction.atomic():
                task = _queue_head(annotator=annotator, project=project, now=now)
                if task is None:
                    return None
                if task.next_lease_expiry is not None and task.next_lease_expiry <= now:
                    _refresh_leases(task, now)
                if task.judgement_count + task.live_leases >= task.overlap:
                    task.save(update_fields=["live_leases", "next_lease_expiry"])
                    continue
                expires_at = now + timedelta(seconds=project.lease_seconds)
                assignment = Assignment.objects.create(
                    task=task,
                    annotator=annotator,
                    project=project,
                    leased_at=now,
                    expires_at=expires_at,
                )
                task.live_leases += 1
                if task.next_lease_expiry is None or expires_at < task.next_lease_expiry:
                    task.next_lease_expiry = expires_at
                task.save(update_fields=["live_leases", "next_lease_expiry"])
                assignment.task = task
                return assignment
        except IntegrityError:
            # The same annotator leased this task in a parallel request: take the next one.
            continue
    return None


def assignment_skip(*, assignment: Assignment) -> None:
    """Gives the task back to the queue; the annotator will not be offered it again.

    Preconditions: the assignment belongs to the caller (checked by the access selector).
    """
    now = timezone.now()
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=assignment.task_id)
        current = Assignment.objects.select_for_update().get(pk=assignment.pk)
        if current.status == Assignment.Status.SUBMITTED:
            raise Conflict("this assignment was already submitted")
        if current.status == Assignment.Status.SKIPPED:
            return
        was_live = current.status == Assignment.Status.LEASED
        current.status = Assignment.Status.SKIPPED
        current.finished_at = now
        current.save(update_fields=["status", "finished_at"])
        if was_live:
            task.live_leases = max(0, task.live_leases - 1)
            task.next_lease_expiry = earliest_live_expiry(task)
            task.save(update_fields=["live_leases", "next_lease_expiry"])


def assignment_current_or_lease(*, annotator: AbstractUser, project: Project) -> Assignment | None:
    """The lease the annotator already holds in the project (a reload shows the same task), else a new one."""
    return live_assignment_for(annotator=annotator, project=project) or assignment_lease(
        annotator=annotator, project=project
    )
