"""Reads that only the htmx pages need: the home list, a manager's member list, the annotate panel.

The rules (who sees what) stay in `annotation.selectors`; these compose them into what one screen
shows, in a fixed number of queries whatever the size of the project.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractUser
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTextTransform

from ..errors import NotFound
from ..models import Assignment, Judgement, Membership, Project, Task
from . import (
    ANNOTATE,
    EXPORT,
    MANAGE,
    access_assignment,
    project_visible_to,
    roles_of,
)


def can_create_project(*, user: AbstractUser) -> bool:
    return user.is_staff or user.has_perm("annotation.add_project")


@dataclass(frozen=True)
class ProjectRow:
    project: Project
    role: str
    my_judgements: int
    tasks: int
    percent: float

    @property
    def can_annotate(self) -> bool:
        return self.role in ANNOTATE

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGE

    @property
    def can_watch_loop(self) -> bool:
        return self.role in EXPORT


def project_rows_for(*, user: AbstractUser) -> list[ProjectRow]:
    """The user's projects with their role, their own judgements and each project's completion."""
    projects = list(project_visible_to(user=user))
    if not projects:
        return []
    roles = roles_of(user=user, projects=projects)
    mine = dict(
        Judgement.objects.filter(annotator=user, project__in=projects)
        .values("project_id")
        # Per task judged: a kind with phases stores one row per phase of the same assignment.
        .annotate(n=Count("assignment", distinct=True))
        .values_list("project_id", "n")
    )
    totals = {
        row["project_id"]: row
        for row in Task.objects.filter(project__in=projects)
        .values("project_id")
        .annotate(tasks=Count("id"), wanted=Sum("overlap"), done=Sum("judgement_count"))
    }
    rows = []
    for project in projects:
        total = totals.get(project.pk, {})
        wanted = total.get("wanted") or 0
        rows.append(
            ProjectRow(
                project=project,
                role=roles[project.pk],
                my_judgements=mine.get(project.pk, 0),
                tasks=total.get("tasks") or 0,
                percent=100.0 * (total.get("done") or 0) / wanted if wanted else 0.0,
            )
        )
    return rows


def members_of(*, project: Project) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(project=project)
        .select_related("user")
        .order_by("role", "user__username")
    )


def access_project_assignment(
    *, user: AbstractUser, project_id: int, assignment_id: int
) -> tuple[Project, Assignment]:
    """The caller's own assignment in a project where they may still annotate.

    Checking the membership as well as the owner means someone removed from a project cannot
    keep submitting through a lease they held before.
    """
    assignment = access_assignment(user=user, assignment_id=assignment_id)
    if assignment.project_id != project_id:
        raise NotFound("assignment not found")
    return assignment.project, assignment


@dataclass(frozen=True)
class OriginalAgreement:
    """How often annotators chose what an imported preference dataset (HH-RLHF, TRL) preferred."""

    tasks: int  # tasks whose prompt carries the dataset's preference
    judgements: int  # decisive judgements (A or B) on them
    agreeing: int

    @property
    def percent(self) -> float:
        return 100.0 * self.agreeing / self.judgements if self.judgements else 0.0


def original_preference_agreement(*, project: Project) -> OriginalAgreement | None:
    """Share of decisive judgements whose answer is the position the dataset preferred
    (`metadata["original_preference"]`, set at import); None when no task carries one."""
    tasks = Task.objects.filter(
        project=project, prompt__metadata__original_preference__in=["A", "B"]
    ).count()
    if not tasks:
        return None
    counts = (
        Judgement.objects.filter(project=project, answer__in=["A", "B"])
        .annotate(original=KeyTextTransform("original_preference", "task__prompt__metadata"))
        .filter(original__in=["A", "B"])
        .aggregate(judgements=Count("id"), agreeing=Count("id", filter=Q(answer=F("original"))))
    )
    return OriginalAgreement(tasks=tasks, **counts)
