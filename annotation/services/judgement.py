"""Submitting judgements: validate, insert once, count, commit. Nothing else on this path.

A kind with phases (`Kind.phases`, e.g. hindsight's foresight then hindsight) gives one judgement
per phase on the same assignment, each its own row: phases go in order (a later one before an
earlier one is a Conflict), a stored phase is locked (the same phase again with another key is a
Conflict; with its own key it is replayed), idempotency keys are per phase, and only the last
phase completes the assignment and counts toward the task's overlap. An earlier phase given after
the lease expired is kept, as any late judgement is; `assignment_acquire` gives the annotator the
same assignment back to finish.
"""

import json
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models.expressions import RawSQL
from django.utils import timezone

from ..errors import Conflict, InvalidInput
from ..feedback import clean_common
from ..kinds import kind_for
from ..kinds.base import Kind, TaskContext
from ..models import Assignment, Judgement, Project, Task, TaskResponse
from .assignment import earliest_live_expiry
from .guards import project_ensure_writable

MAX_IDEMPOTENCY_KEY = 128


def _commit_seq() -> Any:
    # On Postgres the inserting transaction's id orders exports safely (see Judgement.commit_seq);
    # SQLite runs one writer at a time, so ids already arrive in commit order there.
    if connection.vendor == "postgresql":
        return RawSQL("pg_current_xact_id()::text::bigint", [])
    return 0


def judgement_submit(
    *, assignment: Assignment, data: dict[str, Any], idempotency_key: str
) -> tuple[Judgement, bool]:
    """Stores the annotator's judgement for the assignment; returns (judgement, created).

    The same idempotency key again returns the first judgement with created=False and writes
    nothing. A submission after the lease expired is kept and counted (marked late): a human's
    work is never thrown away. Preconditions: the assignment belongs to the caller, who may still
    annotate in its project (`selectors.access_assignment`). Raises Conflict when the project is
    archived.
    """
    key = (idempotency_key or "").strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(
            f"Idempotency-Key header: required, at most {MAX_IDEMPOTENCY_KEY} characters",
            errors=[{"field": "Idempotency-Key", "message": "required"}],
        )
    annotator_id = assignment.annotator_id
    kind = kind_for(assignment.task.kind)
    payload, answer = kind.validate_payload(data, task=_task_context(kind, assignment))
    rationale, time_spent_ms = clean_common(data)
    now = timezone.now()
    phase = _phase_of(kind, data)
    try:
        with transaction.atomic():
            if kind.phases:
                judgement, created = _submit_phase(
                    kind=kind,
                    phase=phase,
                    assignment=assignment,
                    key=key,
                    payload=payload,
                    answer=answer,
                    rationale=rationale,
                    time_spent_ms=time_spent_ms,
                    now=now,
                )
                return judgement, created
            if connection.vendor == "postgresql":
                stored = _submit_postgres(
                    assignment=assignment,
                    key=key,
                    payload=payload,
                    answer=answer,
                    rationale=rationale,
                    time_spent_ms=time_spent_ms,
                    now=now,
                )
                if stored is not None:
                    return stored, True
                # Already submitted or skipped: the general path below says which, under the same locks.
            task = (
                Task.objects.select_for_update(of=("self",))
                .select_related("project")
                .get(pk=assignment.task_id)
            )
            project_ensure_writable(project=task.project)
            current = Assignment.objects.select_for_update().get(pk=assignment.pk)
            if current.status == Assignment.Status.SUBMITTED:
                # A replay finds its judgement here; the first submission never pays for this look-up.
                previous = Judgement.objects.get(assignment=current, phase="")
                if previous.idempotency_key != key:
                    raise Conflict(
                        "this assignment already has a judgement (submitted with another key)"
                    )
                return previous, False
            if current.status == Assignment.Status.SKIPPED:
                raise Conflict("this assignment was skipped; lease the task again to judge it")
            late = current.status == Assignment.Status.EXPIRED or current.expires_at <= now
            judgement = Judgement.objects.create(
                task=task,
                assignment=current,
                annotator_id=annotator_id,
                project_id=task.project_id,
                kind=task.kind,
                payload=payload,
                answer=answer,
                rationale=rationale,
                time_spent_ms=time_spent_ms,
                idempotency_key=key,
                late=late,
                commit_seq=_commit_seq(),
            )
            _finish(task=task, assignment=current, answer=answer, now=now)
    except IntegrityError:
        # The key was used before: by this assignment in a racing retry (its row is the answer),
        # or by another assignment or phase (a conflict).
        previous = _previous(annotator_id=annotator_id, key=key, assignment=assignment, phase=phase)
        if previous is None:
            raise
        return previous, False
    return judgement, True


def _finish(*, task: Task, assignment: Assignment, answer: str, now: Any) -> None:
    """Completes the assignment and counts its judgement on the task. Caller holds both locks."""
    if assignment.status == Assignment.Status.LEASED:
        task.live_leases = max(0, task.live_leases - 1)
    assignment.status = Assignment.Status.SUBMITTED
    assignment.finished_at = now
    assignment.save(update_fields=["status", "finished_at"])
    task.judgement_count += 1
    task.is_complete = task.judgement_count >= task.overlap
    task.answer_counts = {**task.answer_counts, answer: task.answer_counts.get(answer, 0) + 1}
    task.next_lease_expiry = earliest_live_expiry(task)
    task.save(
        update_fields=[
            "live_leases",
            "judgement_count",
            "is_complete",
            "answer_counts",
            "next_lease_expiry",
        ]
    )


def _phase_of(kind: Kind, data: dict[str, Any]) -> str:
    """The phase the body gives: one of the kind's phases, or "" for a kind without phases."""
    if not kind.phases:
        return ""
    phase = data.get("phase")
    if phase not in kind.phases:
        raise InvalidInput(
            f"phase: must be one of {', '.join(kind.phases)}",
            errors=[{"field": "phase", "message": "unknown phase"}],
        )
    return phase


def _submit_phase(
    *,
    kind: Kind,
    phase: str,
    assignment: Assignment,
    key: str,
    payload: dict[str, Any],
    answer: str,
    rationale: str,
    time_spent_ms: int | None,
    now: Any,
) -> tuple[Judgement, bool]:
    """One phase of a phased kind's judgement, under the task's and the assignment's locks (in
    that order, as everywhere). Caller owns the transaction."""
    task = (
        Task.objects.select_for_update(of=("self",))
        .select_related("project")
        .get(pk=assignment.task_id)
    )
    project_ensure_writable(project=task.project)
    current = Assignment.objects.select_for_update().get(pk=assignment.pk)
    stored = {j.phase: j for j in Judgement.objects.filter(assignment=current)}
    if phase in stored:
        if stored[phase].idempotency_key != key:
            raise Conflict(
                f"the {phase} judgement of this assignment is already stored and can no longer "
                "change (it was submitted with another Idempotency-Key)"
            )
        return stored[phase], False
    if current.status == Assignment.Status.SKIPPED:
        raise Conflict("this assignment was skipped; lease the task again to judge it")
    missing = next((p for p in kind.phases[: kind.phases.index(phase)] if p not in stored), None)
    if missing is not None:
        raise Conflict(f"the {missing} judgement of this assignment comes before the {phase} one")
    judgement = Judgement.objects.create(
        task=task,
        assignment=current,
        phase=phase,
        annotator_id=current.annotator_id,
        project_id=task.project_id,
        kind=task.kind,
        payload=payload,
        answer=answer,
        rationale=rationale,
        time_spent_ms=time_spent_ms,
        idempotency_key=key,
        late=current.status == Assignment.Status.EXPIRED or current.expires_at <= now,
        commit_seq=_commit_seq(),
    )
    if phase == kind.phases[-1]:
        _finish(task=task, assignment=current, answer=answer, now=now)
    return judgement, True


def _task_context(kind: Kind, assignment: Assignment) -> TaskContext:
    """What the kind's validation reads of the task, loaded only if the kind reads it (a choice
    between two responses reads nothing, so the pairwise hot path pays no query here)."""
    if not kind.needs_response_texts and not kind.needs_settings:
        return TaskContext()
    responses: tuple[str, ...] = ()
    if kind.needs_response_texts:
        # selectors.access_assignment reads them with the assignment on Postgres.
        preloaded = getattr(assignment, "response_texts", None)
        responses = tuple(
            preloaded
            if preloaded is not None
            else TaskResponse.objects.filter(task_id=assignment.task_id)
            .order_by("position")
            .values_list("response__text", flat=True)
        )
    settings = {}
    if kind.needs_settings:
        # access_assignment loads the project with the assignment; no query when it did.
        settings = kind.settings_of(assignment.project.kind_settings)
    return TaskContext(responses=responses, settings=settings)


# The task row is locked first, as everywhere (no deadlocks with leases and skips); then one
# statement locks the assignment, inserts the judgement and updates both counters.
_SUBMIT_SQL = """
WITH current AS (
    SELECT a.id, a.status, a.expires_at FROM annotation_assignment a WHERE a.id = %(assignment)s FOR UPDATE
), judged AS (
    INSERT INTO annotation_judgement (task_id, assignment_id, annotator_id, project_id, kind, payload, answer,
        rationale, time_spent_ms, idempotency_key, late, commit_seq, created_at)
    SELECT %(task)s, current.id, %(annotator)s, %(project)s, %(kind)s, %(payload)s, %(answer)s, %(rationale)s,
           %(time_spent_ms)s, %(key)s, current.status = 'expired' OR current.expires_at <= %(now)s,
           pg_current_xact_id()::text::bigint, %(now)s
    FROM current WHERE current.status IN ('leased', 'expired')
    RETURNING id, late
), finished AS (
    UPDATE annotation_assignment a SET status = 'submitted', finished_at = %(now)s
    FROM judged WHERE a.id = %(assignment)s
    RETURNING a.id
), counted AS (
    UPDATE annotation_task t
    SET judgement_count = t.judgement_count + 1,
        live_leases = GREATEST(0, t.live_leases - CASE WHEN current.status = 'leased' THEN 1 ELSE 0 END),
        is_complete = t.judgement_count + 1 >= t.overlap,
        answer_counts = t.answer_counts
            || jsonb_build_object(%(answer)s::text, COALESCE((t.answer_counts ->> %(answer)s)::int, 0) + 1),
        next_lease_expiry = (
            SELECT min(o.expires_at) FROM annotation_assignment o
            WHERE o.task_id = t.id AND o.status = 'leased' AND o.id <> %(assignment)s
        )
    FROM judged, current WHERE t.id = %(task)s
    RETURNING t.id
)
SELECT judged.id, judged.late FROM judged, finished, counted
"""


_LOCK_TASK_SQL = """
SELECT p.archived FROM annotation_task t JOIN annotation_project p ON p.id = t.project_id
WHERE t.id = %s FOR UPDATE OF t
"""


def _submit_postgres(
    *,
    assignment: Assignment,
    key: str,
    payload: dict[str, Any],
    answer: str,
    rationale: str,
    time_spent_ms: int | None,
    now: Any,
) -> Judgement | None:
    """The judgement stored in one statement, or None when the assignment is not open any more."""
    with connection.cursor() as cursor:
        # The task lock comes first, as everywhere; the project's archived flag rides along, read
        # under that lock, so an archived project refuses the write at no extra round trip.
        cursor.execute(_LOCK_TASK_SQL, [assignment.task_id])
        (archived,) = cursor.fetchone()
        project_ensure_writable(project=Project(id=assignment.project_id, archived=archived))
        cursor.execute(
            _SUBMIT_SQL,
            {
                "assignment": assignment.pk,
                "task": assignment.task_id,
                "annotator": assignment.annotator_id,
                "project": assignment.project_id,
                "kind": assignment.task.kind,
                "payload": json.dumps(payload),
                "answer": answer,
                "rationale": rationale,
                "time_spent_ms": time_spent_ms,
                "key": key,
                "now": now,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    judgement = Judgement(
        id=row[0],
        task_id=assignment.task_id,
        assignment_id=assignment.pk,
        annotator_id=assignment.annotator_id,
        project_id=assignment.project_id,
        kind=assignment.task.kind,
        payload=payload,
        answer=answer,
        rationale=rationale,
        time_spent_ms=time_spent_ms,
        idempotency_key=key,
        late=row[1],
        created_at=now,
    )
    judgement._state.adding = False
    return judgement


def _previous(
    *, annotator_id: int, key: str, assignment: Assignment, phase: str
) -> Judgement | None:
    previous = Judgement.objects.filter(annotator_id=annotator_id, idempotency_key=key).first()
    if previous is not None and previous.assignment_id != assignment.pk:
        raise Conflict("this Idempotency-Key was already used for another assignment")
    if previous is not None and previous.phase != phase:
        # Keys are per phase: replaying the foresight key as a hindsight body must not pass for
        # a stored hindsight judgement.
        raise Conflict(f"this Idempotency-Key was already used for the {previous.phase} judgement")
    return previous
