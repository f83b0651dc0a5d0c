"""Leasing tasks to annotators: the hot path of the queue.

Invariant: for every task, live leases + judgements from in-time leases never exceed its overlap.
Every write that changes a task's leases or judgements holds the task's row lock first (then,
if needed, assignment rows), so counting under that lock is exact and the lock order is the same
everywhere (task before assignment: no deadlocks between leases, skips and submissions).
"""

import json
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, Min, OuterRef, Q
from django.utils import timezone

from ..errors import Conflict
from ..kinds import kind_for
from ..models import Assignment, Judgement, Project, Prompt, Task
from ..selectors import live_assignment_for
from .guards import project_ensure_writable


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
        .filter(has_room, project=project, is_complete=False, ready=True)
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


# On Postgres the whole lease is one round trip. The first statement serialises leases of one
# annotator (a transaction-scoped advisory lock, released at commit), so two parallel requests of
# the same annotator cannot each take a task. The second statement, which runs after the lock is
# granted and so sees the other request's committed lease, returns the annotator's live lease in
# the project if there is one (leasing is idempotent: looping on "lease" cannot drain the queue);
# otherwise it locks the queue head (skipping rows others hold), inserts the assignment, counts it
# on the task, and returns what the annotator is shown. A head whose leases have expired is left to
# the general path below, under the lock this statement already took. When every task with room is
# row-locked by other requests at that instant (skipped, not waited for), the statement names the
# first of them instead, for the general path to wait for: "nothing left" is only ever said when no
# task has room, never because others were leasing the same tasks at the same moment.
_LEASE_LOCK_SQL = "SELECT pg_advisory_xact_lock(%(lock_space)s, %(annotator)s)"
# A task this annotator may lease now (t is annotation_task).
_OPEN_TO_ANNOTATOR = """t.project_id = %(project)s AND NOT t.is_complete AND t.ready
      AND (t.judgement_count < t.overlap - t.live_leases OR t.next_lease_expiry <= %(now)s)
      AND NOT EXISTS (
          SELECT 1 FROM annotation_assignment a WHERE a.task_id = t.id AND a.annotator_id = %(annotator)s
      )"""
# The prompt's image ref with its stored facts, "sha256:<hex>|<format>|<width>|<height>", read in the
# lease's own round trip (a primary-key probe, and none at all for prompts without an image).
_IMAGE_FACTS = """CASE WHEN p.image = '' THEN '' ELSE p.image || COALESCE((
           SELECT '|' || i.format || '|' || i.width || '|' || i.height FROM annotation_image i
           WHERE i.sha256 = substr(p.image, 8)), '') END"""
_LEASE_SQL = f"""
WITH held AS (
    SELECT a.id, a.task_id, a.leased_at, a.expires_at FROM annotation_assignment a
    WHERE a.annotator_id = %(annotator)s AND a.project_id = %(project)s AND a.status = 'leased'
      AND a.expires_at > %(now)s
    ORDER BY a.leased_at
    LIMIT 1
), head AS (
    SELECT t.id, t.next_lease_expiry FROM annotation_task t
    WHERE NOT EXISTS (SELECT 1 FROM held) AND {_OPEN_TO_ANNOTATOR}
    ORDER BY t.priority DESC, t.id
    LIMIT 1
    FOR UPDATE OF t SKIP LOCKED
), leased AS (
    INSERT INTO annotation_assignment (task_id, annotator_id, project_id, status, leased_at, expires_at)
    SELECT head.id, %(annotator)s, %(project)s, 'leased', %(now)s, %(expires)s FROM head
    WHERE head.next_lease_expiry IS NULL OR head.next_lease_expiry > %(now)s
    RETURNING id, task_id
), counted AS (
    UPDATE annotation_task t
    SET live_leases = t.live_leases + 1,
        next_lease_expiry = LEAST(COALESCE(t.next_lease_expiry, %(expires)s), %(expires)s)
    FROM leased WHERE t.id = leased.task_id
    RETURNING t.id, t.prompt_id, t.kind, t.round, t.priority, t.overlap, t.judgement_count, t.live_leases,
              t.next_lease_expiry, t.purpose
)
SELECT false, head.id, leased.id, counted.prompt_id, counted.kind, counted.round, counted.priority,
       counted.overlap, counted.judgement_count, counted.live_leases, counted.next_lease_expiry, counted.purpose,
       p.messages, {_IMAGE_FACTS}, p.context, %(now)s, %(expires)s
FROM head
LEFT JOIN leased ON true
LEFT JOIN counted ON true
LEFT JOIN annotation_prompt p ON p.id = counted.prompt_id
UNION ALL
SELECT true, t.id, held.id, t.prompt_id, t.kind, t.round, t.priority, t.overlap, t.judgement_count,
       t.live_leases, t.next_lease_expiry, t.purpose, p.messages, {_IMAGE_FACTS}, p.context, held.leased_at,
       held.expires_at
FROM held
JOIN annotation_task t ON t.id = held.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
UNION ALL
SELECT false, contended.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL
FROM (
    SELECT t.id FROM annotation_task t
    WHERE NOT EXISTS (SELECT 1 FROM held) AND NOT EXISTS (SELECT 1 FROM head) AND {_OPEN_TO_ANNOTATOR}
    ORDER BY t.priority DESC, t.id
    LIMIT 1
) contended
"""
# The advisory-lock key space of leases ("tand"), so it cannot collide with other advisory locks.
_LEASE_LOCK_SPACE = 0x74616E64


def _lease_in_one_statement(
    *, annotator: AbstractUser, project: Project, now: datetime, expires_at: datetime
) -> tuple[Assignment | None, bool, int | None]:
    """(assignment, created, None); or (None, False, id of a head to lease on the general path: one
    this statement locked because its leases expired, or one other requests held locked); or
    (None, False, None) when nothing is left for the annotator."""
    params = {
        "project": project.pk,
        "annotator": annotator.pk,
        "now": now,
        "expires": expires_at,
        "lock_space": _LEASE_LOCK_SPACE,
    }
    with connection.cursor() as cursor:
        if connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
            # Server-side binding takes one statement per call: pay a second round trip.
            cursor.execute(_LEASE_LOCK_SQL, params)
            cursor.execute(_LEASE_SQL, params)
        else:
            # Client-side binding (Django's default) sends both statements in one round trip.
            cursor.execute(f"{_LEASE_LOCK_SQL};{_LEASE_SQL}", params)
            cursor.nextset()
        row = cursor.fetchone()
    if row is None:
        return None, False, None
    (
        existing,
        head_id,
        assignment_id,
        prompt_id,
        kind,
        round_,
        priority,
        overlap,
        judged,
        live,
        next_expiry,
        purpose,
        messages,
        image,
        context,
        leased_at,
        lease_expires_at,
    ) = row
    if assignment_id is None:
        return None, False, head_id
    # The prompt's image ref and context are cheap columns of the row already read: kinds that
    # show them (task_extras) need no query of their own for the prompt.
    if isinstance(messages, str):
        messages = json.loads(messages)
    if isinstance(context, str):
        context = json.loads(context)
    task = Task(
        id=head_id, project=project, prompt_id=prompt_id, kind=kind, round=round_, priority=priority,
        overlap=overlap, judgement_count=judged, live_leases=live, next_lease_expiry=next_expiry, purpose=purpose,
    )  # fmt: skip
    ref, *facts = (image or "").split("|")
    task.prompt = Prompt(
        id=prompt_id, project=project, messages=messages, image=ref, context=context or {}
    )
    if len(facts) == 3:
        # What selectors.prompt_image would read again: the view takes it from here.
        task.prompt.image_facts = {
            "sha256": ref.removeprefix("sha256:"),
            "format": facts[0],
            "width": int(facts[1]),
            "height": int(facts[2]),
        }
    task._state.adding = task.prompt._state.adding = False
    assignment = Assignment(
        id=assignment_id, task=task, annotator=annotator, project=project, status=Assignment.Status.LEASED,
        leased_at=leased_at, expires_at=lease_expires_at,
    )  # fmt: skip
    assignment._state.adding = False
    return assignment, not existing, None


def _lease_locked(
    *, task: Task, annotator: AbstractUser, project: Project, now: datetime
) -> Assignment | None:
    """Leases `task` after returning its expired leases; None if it has no room. Caller holds its lock."""
    if task.next_lease_expiry is not None and task.next_lease_expiry <= now:
        _refresh_leases(task, now)
    if task.judgement_count + task.live_leases >= task.overlap:
        task.save(update_fields=["live_leases", "next_lease_expiry"])
        return None
    expires_at = now + timedelta(seconds=project.lease_seconds)
    assignment = Assignment.objects.create(
        task=task, annotator=annotator, project=project, leased_at=now, expires_at=expires_at
    )
    task.live_leases += 1
    if task.next_lease_expiry is None or expires_at < task.next_lease_expiry:
        task.next_lease_expiry = expires_at
    task.save(update_fields=["live_leases", "next_lease_expiry"])
    assignment.task = task
    return assignment


def assignment_acquire(
    *, annotator: AbstractUser, project: Project
) -> tuple[Assignment | None, bool]:
    """The annotator's live lease in the project, or else a new lease on the next task.

    Returns (assignment, created): created is False when the annotator already held a live lease
    here (it comes back unchanged), and the assignment is None when nothing is left for them. One
    live lease per annotator and project, so looping on this cannot drain the queue.
    Preconditions: the annotator may annotate in the project (checked by the caller's access
    selector). Raises Conflict when the project is archived.
    """
    project_ensure_writable(project=project)
    phases = kind_for(project.kind).phases
    if phases:
        resumed = _resume_between_phases(annotator=annotator, project=project, first=phases[0])
        if resumed is not None:
            return resumed
    # No fixed number of attempts: a pass that does not return either lost the last slot of the
    # task it waited for to a transaction that committed meanwhile, or refreshed (and saved) a
    # stale lease expiry. Both are progress, so this ends; and a bound would answer "nothing left"
    # while tasks remain, which is what a busy queue must never be told.
    while True:
        now = timezone.now()
        try:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    expires_at = now + timedelta(seconds=project.lease_seconds)
                    assignment, created, head = _lease_in_one_statement(
                        annotator=annotator, project=project, now=now, expires_at=expires_at
                    )
                    if assignment is not None:
                        return assignment, created
                    if head is None:
                        return None, False
                    # Waits for the request that holds the row (a no-op when the statement above
                    # locked it); `_lease_locked` then checks the room under the lock.
                    task = (
                        Task.objects.select_for_update(of=("self",))
                        .select_related("prompt")
                        .get(pk=head)
                    )
                else:
                    # SQLite's IMMEDIATE transactions serialise writers, so this look-up and the
                    # lease below cannot interleave with another request of the same annotator.
                    held = live_assignment_for(annotator=annotator, project=project)
                    if held is not None:
                        return held, False
                    task = _queue_head(annotator=annotator, project=project, now=now)
                    if task is None:
                        return None, False
                assignment = _lease_locked(task=task, annotator=annotator, project=project, now=now)
                if assignment is not None:
                    return assignment, True
        except IntegrityError:
            # The same annotator leased this task in a parallel request: take the next one.
            continue


def _resume_between_phases(
    *, annotator: AbstractUser, project: Project, first: str
) -> tuple[Assignment, bool] | None:
    """For a kind with phases: the annotator's live lease, else their assignment whose lease
    expired between the phases, leased to them again (the stored phases stay, the next one is
    due), else None. Only where the task still has room: its overlap may have been filled by
    others meanwhile, and then the annotator moves on (a late last phase is still accepted).
    """
    held = live_assignment_for(annotator=annotator, project=project)
    if held is not None:
        return held, False
    waiting = (
        Assignment.objects.filter(
            annotator=annotator,
            project=project,
            status__in=(Assignment.Status.LEASED, Assignment.Status.EXPIRED),
            task__is_complete=False,
        )
        .filter(Exists(Judgement.objects.filter(assignment=OuterRef("pk"), phase=first)))
        .order_by("leased_at")
        .values_list("pk", "task_id")
    )
    for assignment_id, task_id in waiting:
        now = timezone.now()
        with transaction.atomic():
            task = (
                Task.objects.select_for_update(of=("self",))
                .select_related("prompt")
                .get(pk=task_id)
            )
            current = Assignment.objects.select_for_update().get(pk=assignment_id)
            if current.status not in (Assignment.Status.LEASED, Assignment.Status.EXPIRED):
                continue  # finished meanwhile (a late last phase from another tab)
            if current.status == Assignment.Status.LEASED or (
                task.next_lease_expiry is not None and task.next_lease_expiry <= now
            ):
                # Our own lease, past its expiry but not yet reclaimed, is reclaimed here first.
                _refresh_leases(task, now)
                current.refresh_from_db(fields=["status"])
            if task.is_complete or task.judgement_count + task.live_leases >= task.overlap:
                task.save(update_fields=["live_leases", "next_lease_expiry"])
                continue
            current.status = Assignment.Status.LEASED
            current.leased_at = now
            current.expires_at = now + timedelta(seconds=project.lease_seconds)
            current.save(update_fields=["status", "leased_at", "expires_at"])
            task.live_leases += 1
            if task.next_lease_expiry is None or current.expires_at < task.next_lease_expiry:
                task.next_lease_expiry = current.expires_at
            task.save(update_fields=["live_leases", "next_lease_expiry"])
            current.task = task
            return current, True
    return None


def assignment_lease(*, annotator: AbstractUser, project: Project) -> Assignment | None:
    """The annotator's live lease in the project, else a new one, else None (nothing left).

    Preconditions as `assignment_acquire`.
    """
    return assignment_acquire(annotator=annotator, project=project)[0]


def assignment_skip(*, assignment: Assignment) -> None:
    """Gives the task back to the queue; the annotator will not be offered it again.

    Preconditions: the assignment belongs to the caller, who may still annotate in its project
    (checked by the access selector). Raises Conflict when the project is archived.
    """
    now = timezone.now()
    with transaction.atomic():
        task = (
            Task.objects.select_for_update(of=("self",))
            .select_related("project")
            .get(pk=assignment.task_id)
        )
        project_ensure_writable(project=task.project)
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
    """The lease the annotator already holds in the project (a reload shows the same task), else a new one.

    Kept for the pages; leasing itself is idempotent now, so this is `assignment_lease`.
    """
    return assignment_lease(annotator=annotator, project=project)
