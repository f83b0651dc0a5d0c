"""Every read with a rule in it: who sees what, what a task looks like, how far a project is.

Visibility is decided here and only here. A user outside a project gets NotFound for all of its
objects (never a 403 that would confirm they exist).
"""

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.db import connection
from django.db.models import Avg, Count, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.expressions import RawSQL
from django.utils import timezone

from ..errors import Forbidden, NotFound
from ..kinds import kind_for, registered
from ..models import (
    ApiToken,
    Assignment,
    Image,
    ImportJob,
    Judgement,
    Membership,
    Project,
    Role,
    Task,
    TaskResponse,
)

ANNOTATE = frozenset({Role.ANNOTATOR, Role.REVIEWER, Role.MANAGER})
EXPORT = frozenset({Role.TRAINER, Role.MANAGER})
MANAGE = frozenset({Role.MANAGER})


def project_visible_to(*, user: AbstractUser) -> QuerySet[Project]:
    projects = Project.objects.filter(archived=False)
    if user.is_staff:
        return projects
    return projects.filter(memberships__user=user)


def roles_of(*, user: AbstractUser, projects: list[Project]) -> dict[int, str]:
    """The user's role in each project, in one query."""
    if user.is_staff:
        return {p.pk: Role.MANAGER for p in projects}
    return dict(
        Membership.objects.filter(user=user, project__in=projects).values_list("project_id", "role")
    )


def access_project(
    *, user: AbstractUser, project_id: int, roles: frozenset[str] | None = None
) -> tuple[Project, str]:
    """The project and the user's role in it, or NotFound / Forbidden."""
    if user.is_staff:
        project = Project.objects.filter(pk=project_id).first()
        role: str | None = Role.MANAGER
    else:
        membership = (
            Membership.objects.select_related("project")
            .filter(project_id=project_id, user=user)
            .first()
        )
        project = membership.project if membership else None
        role = membership.role if membership else None
    if project is None or role is None:
        raise NotFound("project not found")
    if roles is not None and role not in roles:
        raise Forbidden(f"your role in this project ({role}) does not allow this")
    return project, role


_RESPONSE_TEXTS_SQL = """CASE WHEN "annotation_task"."kind" = ANY(%s) THEN (
    SELECT array_agg(r.text ORDER BY s.position) FROM annotation_taskresponse s
    JOIN annotation_response r ON r.id = s.response_id
    WHERE s.task_id = "annotation_assignment"."task_id") END"""


def access_assignment(*, user: AbstractUser, assignment_id: int) -> Assignment:
    """The caller's own assignment, while they may still annotate in its project.

    Anyone else's assignment, or one in a project the caller was removed from, looks absent; a
    member demoted to a role that does not annotate gets Forbidden. Every write through a lease
    re-checks the membership here, in the same single query that loads the assignment.
    """
    member_role = Membership.objects.filter(project=OuterRef("project_id"), user=user).values(
        "role"
    )[:1]
    assignments = Assignment.objects.select_related("task", "project").annotate(
        member_role=Subquery(member_role)
    )
    reading_texts = [kind.name for kind in registered() if kind.needs_response_texts]
    if reading_texts and connection.vendor == "postgresql":
        # Kinds whose payload names places in the texts (spans) get them in this same query; the
        # CASE leaves every other kind's submit without the subquery.
        assignments = assignments.annotate(
            response_texts=RawSQL(_RESPONSE_TEXTS_SQL, [reading_texts])
        )
    assignment = assignments.filter(pk=assignment_id, annotator=user).first()
    if assignment is None:
        raise NotFound("assignment not found")
    if user.is_staff:
        return assignment
    if assignment.member_role is None:
        raise NotFound("assignment not found")
    if assignment.member_role not in ANNOTATE:
        raise Forbidden(
            f"your role in this project ({assignment.member_role}) does not allow annotating"
        )
    return assignment


def access_import(*, user: AbstractUser, import_id: int) -> ImportJob:
    job = ImportJob.objects.select_related("project").filter(pk=import_id).first()
    if job is None:
        raise NotFound("import not found")
    access_project(user=user, project_id=job.project_id, roles=MANAGE)
    return job


@dataclass(frozen=True)
class ShownResponse:
    id: int
    text: str
    label: str
    model: str = ""
    # What came of acting on the response: None unless revealed (see `assignment_view`).
    outcome: str | None = None


@dataclass(frozen=True)
class TaskView:
    id: int
    kind: str
    round: int
    prompt: list[dict[str, str]]
    responses: list[ShownResponse]
    # What the kind shows beyond prompt and responses (Kind.task_extras), e.g. its image.
    extras: dict[str, Any] = field(default_factory=dict)


IMAGE_REF_PREFIX = "sha256:"


def prompt_image(ref: str) -> dict[str, Any] | None:
    """The stored image a prompt names ("sha256:<hex>"), as {"sha256", "format", "width",
    "height"}; None for a prompt without one. One primary-key query, only when there is one."""
    if not ref:
        return None
    sha256 = ref.removeprefix(IMAGE_REF_PREFIX)
    row = Image.objects.filter(pk=sha256).values("sha256", "format", "width", "height").first()
    return row


def task_view(*, task: Task, project: Project | None = None, reveal: bool = False) -> TaskView:
    """A task as the annotator sees it: the conversation and its responses labelled A, B, ...

    Pass the task with its prompt loaded (the lease query loads it) and its project to spare
    queries; the kind's extras cost a query only when the prompt has an image. The responses'
    outcomes are read only with `reveal` (never for a lease: see `assignment_view`).
    """
    project = project or task.project
    kind = kind_for(task.kind)
    columns = ["response_id", "response__text", "position", "response__model_name"]
    slots = (
        TaskResponse.objects.filter(task_id=task.pk)
        .order_by("position")
        .values_list(*columns, *(["response__outcome"] if reveal else []))
    )
    prompt = task.prompt
    return TaskView(
        id=task.pk,
        kind=task.kind,
        round=task.round,
        prompt=prompt.messages,
        responses=[
            ShownResponse(
                id=slot[0],
                text=slot[1],
                label=chr(ord("A") + slot[2]),
                model=slot[3],
                outcome=slot[4] if reveal else None,
            )
            for slot in slots
        ],
        extras=kind.task_extras(
            project_id=project.pk,
            # The lease query already read the image's facts; other callers look them up.
            image=getattr(prompt, "image_facts", None) or prompt_image(prompt.image),
            context=prompt.context or {},
            settings=kind.settings_of(project.kind_settings),
        ),
    )


@dataclass(frozen=True)
class AssignmentView:
    """An annotator's assignment with the phase due and what the stored phases reveal."""

    assignment: Assignment
    task: TaskView
    # The phase due next: one of the kind's phases, "" for an open single-phase assignment,
    # None when nothing is due (submitted, or skipped).
    phase: str | None
    # The stored phases' payloads by phase ({} for single-phase kinds).
    earlier: dict[str, dict[str, Any]]


def phase_due(*, phases: tuple[str, ...], stored: set[str], status: str) -> str | None:
    """The phase an assignment waits for: the first of `phases` not stored, in order."""
    if status in (Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED):
        return None
    return next((p for p in phases if p not in stored), None) if phases else ""


def assignment_view(*, assignment: Assignment) -> AssignmentView:
    """The assignment as its annotator may see it now.

    The rule that keeps hindsight honest lives here: the responses' outcomes are read, and so
    shown, only once the assignment's first phase is stored, so no foresight judgement is ever
    given with an outcome in view. Precondition: the caller owns the assignment (access selector).
    """
    kind = kind_for(assignment.task.kind)
    stored: dict[str, dict[str, Any]] = {}
    if kind.phases:
        stored = dict(
            Judgement.objects.filter(assignment=assignment).values_list("phase", "payload")
        )
    reveal = bool(kind.phases) and kind.phases[0] in stored
    return AssignmentView(
        assignment=assignment,
        task=task_view(task=assignment.task, project=assignment.project, reveal=reveal),
        phase=phase_due(phases=kind.phases, stored=set(stored), status=assignment.status),
        earlier=stored,
    )


def live_assignment_for(*, annotator: AbstractUser, project: Project) -> Assignment | None:
    """The lease the annotator already holds here, so a reload shows the same task, not a new one."""
    return (
        Assignment.objects.select_related("task__prompt")
        .filter(
            annotator=annotator,
            project=project,
            status=Assignment.Status.LEASED,
            expires_at__gt=timezone.now(),
        )
        .order_by("leased_at")
        .first()
    )


@dataclass(frozen=True)
class ProjectProgress:
    tasks: int
    complete: int
    judgements_wanted: int
    judgements: int
    live_leases: int

    @property
    def percent(self) -> float:
        return 100.0 * self.judgements / self.judgements_wanted if self.judgements_wanted else 0.0


def project_progress(*, project: Project) -> ProjectProgress:
    totals = Task.objects.filter(project=project).aggregate(
        tasks=Count("id"),
        complete=Count("id", filter=Q(is_complete=True)),
        wanted=Sum("overlap"),
        judgements=Sum("judgement_count"),
        live=Sum("live_leases"),
    )
    return ProjectProgress(
        tasks=totals["tasks"] or 0,
        complete=totals["complete"] or 0,
        judgements_wanted=totals["wanted"] or 0,
        judgements=totals["judgements"] or 0,
        live_leases=totals["live"] or 0,
    )


def annotator_judgement_count(*, project: Project, annotator: AbstractUser) -> int:
    """Tasks the annotator judged here: a kind with phases stores a row per phase of one task."""
    return Judgement.objects.filter(project=project, annotator=annotator).aggregate(
        n=Count("assignment", distinct=True)
    )["n"]


def annotator_table(*, project: Project) -> list[dict[str, Any]]:
    """Judgements per annotator with how many came in late and the mean time spent."""
    return list(
        Judgement.objects.filter(project=project)
        .values("annotator__username")
        .annotate(
            judgements=Count("id"),
            late=Count("id", filter=Q(late=True)),
            mean_ms=Avg("time_spent_ms"),
        )
        .order_by("-judgements")
    )


def imports_of(*, project: Project) -> QuerySet[ImportJob]:
    return ImportJob.objects.filter(project=project).order_by("-id")


def members_of(*, project: Project) -> QuerySet[Membership]:
    """The project's members with their roles, for its managers."""
    return (
        Membership.objects.filter(project=project).select_related("user").order_by("user__username")
    )


def tokens_of(*, user: AbstractUser) -> QuerySet[ApiToken]:
    """The user's own API tokens that still work: unexpired and issued under the current password."""
    from ..services.tokens import password_fingerprint

    return ApiToken.objects.filter(
        Q(expiry__isnull=True) | Q(expiry__gt=timezone.now()),
        user=user,
        password_fingerprint=password_fingerprint(user),
    ).order_by("-created")


def tasks_awaiting_outcomes(*, project_id: int) -> int:
    """Tasks not yet leased because their responses wait for simulated outcomes (Task.ready)."""
    return Task.objects.filter(project_id=project_id, ready=False, is_complete=False).count()
