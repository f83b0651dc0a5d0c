from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ..errors import Conflict, InvalidInput, NotFound
from ..feedback import find_unstorable
from ..kinds import kind_for
from ..models import Assignment, Membership, Project, Role, Task
from ..selectors import ANNOTATE
from .assignment import earliest_live_expiry
from .guards import project_ensure_writable
from .outcomes import outcome_job_start


def user_create(*, username: str, password: str, is_staff: bool = False) -> AbstractUser:
    User = get_user_model()
    username = (username or "").strip()
    if not username:
        raise InvalidInput(
            "username: required", errors=[{"field": "username", "message": "required"}]
        )
    try:
        validate_password(password)
    except ValidationError as exc:
        message = " ".join(exc.messages)
        raise InvalidInput(
            f"password: {message}", errors=[{"field": "password", "message": message}]
        ) from None
    try:
        with transaction.atomic():
            return User.objects.create_user(username=username, password=password, is_staff=is_staff)
    except IntegrityError:
        raise Conflict(f"username '{username}' is taken") from None


def project_create(
    *,
    creator: AbstractUser,
    name: str,
    kind: str,
    overlap: int = 1,
    lease_seconds: int = 600,
    instructions: str = "",
    kind_settings: dict | None = None,
) -> Project:
    """Creates the project and makes its creator a manager of it.

    Only registered kinds are accepted; `kind_settings` are validated and completed by the kind.
    """
    settings = _clean_kind_settings(kind, kind_settings)
    if not name.strip():
        raise InvalidInput("name: required", errors=[{"field": "name", "message": "required"}])
    if not 1 <= overlap <= 50:
        raise InvalidInput(
            "overlap: must be between 1 and 50",
            errors=[{"field": "overlap", "message": "must be between 1 and 50"}],
        )
    if not 30 <= lease_seconds <= 7 * 24 * 3600:
        raise InvalidInput(
            "lease_seconds: must be between 30 seconds and 7 days",
            errors=[{"field": "lease_seconds", "message": "must be between 30 seconds and 7 days"}],
        )
    with transaction.atomic():
        project = Project.objects.create(
            name=name.strip(),
            kind=kind,
            overlap=overlap,
            lease_seconds=lease_seconds,
            instructions=instructions,
            kind_settings=settings,
            created_by=creator,
        )
        Membership.objects.create(project=project, user=creator, role=Role.MANAGER)
    return project


def _clean_kind_settings(kind: str, data: dict | None) -> dict:
    # The kind validates what its settings mean; whatever it keeps must also be storable.
    if data is not None and not isinstance(data, dict):
        raise InvalidInput(
            "kind_settings: must be an object",
            errors=[{"field": "kind_settings", "message": "must be an object"}],
        )
    fault = find_unstorable(data or {})
    if fault is not None:
        where = f"kind_settings.{fault[0]}" if fault[0] else "kind_settings"
        raise InvalidInput(f"{where}: {fault[1]}", errors=[{"field": where, "message": fault[1]}])
    return kind_for(kind).clean_settings(data)


def project_kind_settings_set(*, project: Project, kind_settings: dict | None) -> Project:
    """Changes the project's kind settings: those named in `kind_settings` replace the stored
    ones, the others keep their values (a PATCH), and the kind validates the result.

    Stored judgements are insert-only and stay as they were: a span keeps the category name it
    was given even after that category is renamed or dropped, and exports carry it as stored.
    Raises Conflict when the project is archived, InvalidInput naming the setting otherwise.
    """
    if not isinstance(kind_settings, dict):
        raise InvalidInput(
            "kind_settings: must be an object",
            errors=[{"field": "kind_settings", "message": "must be an object"}],
        )
    with transaction.atomic():
        # The row lock orders two managers' changes (neither loses the other's settings) and
        # reads the archived flag as it is now, not as the caller loaded it.
        locked = Project.objects.select_for_update().get(pk=project.pk)
        project_ensure_writable(project=locked)
        merged = {**(locked.kind_settings or {}), **kind_settings}
        locked.kind_settings = _clean_kind_settings(locked.kind, merged)
        locked.save(update_fields=["kind_settings"])
    project.kind_settings = locked.kind_settings
    if kind_for(project.kind).shows_outcomes:
        # Responses imported before a simulator was named wait for their outcomes (their tasks
        # are not leased): naming one starts their simulation. Nothing is waiting: no job.
        outcome_job_start(project=project)
    return project


def _release_leases(*, project: Project, user: AbstractUser) -> int:
    """Returns the user's open leases in the project to the queue; their judgements stay theirs.

    Open leases (live, or expired and not yet reclaimed) become skipped, so no submission through
    them can land later, even one racing this call. Caller holds a transaction. Task rows are
    locked before assignment rows, in id order, as everywhere.
    """
    open_statuses = [Assignment.Status.LEASED, Assignment.Status.EXPIRED]
    task_ids = list(
        Assignment.objects.filter(
            project=project, annotator=user, status__in=open_statuses
        ).values_list("task_id", flat=True)
    )
    if not task_ids:
        return 0
    now = timezone.now()
    tasks = list(Task.objects.select_for_update().filter(pk__in=task_ids).order_by("pk"))
    live_on = set(
        Assignment.objects.select_for_update()
        .filter(task__in=tasks, annotator=user, status=Assignment.Status.LEASED)
        .values_list("task_id", flat=True)
    )
    released = Assignment.objects.filter(
        task__in=tasks, annotator=user, status__in=open_statuses
    ).update(status=Assignment.Status.SKIPPED, finished_at=now)
    for task in tasks:
        if task.pk in live_on:
            task.live_leases = max(0, task.live_leases - 1)
            task.next_lease_expiry = earliest_live_expiry(task)
            task.save(update_fields=["live_leases", "next_lease_expiry"])
    return released


def _user_named(username: str) -> AbstractUser:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"no user named '{username}'")
    return user


def _lock_membership(*, project: Project, user: AbstractUser) -> tuple[Membership | None, int]:
    """(the user's membership, how many other managers the project has), read with those rows
    locked so that two managers demoting each other at once cannot leave the project with none.
    Caller holds a transaction."""
    locked = list(
        Membership.objects.select_for_update()
        .filter(Q(role=Role.MANAGER) | Q(user=user), project=project)
        .order_by("pk")
    )
    membership = next((m for m in locked if m.user_id == user.pk), None)
    if membership is not None:
        membership.user = user
    other_managers = sum(1 for m in locked if m.role == Role.MANAGER and m.user_id != user.pk)
    return membership, other_managers


def _ensure_another_manager(*, membership: Membership, other_managers: int) -> None:
    if membership.role == Role.MANAGER and other_managers == 0:
        raise Conflict(
            "a project needs at least one manager: make someone else manager first",
            errors=[{"field": "username", "message": "last manager"}],
        )


def membership_set(
    *, project: Project, username: str, role: str, create: bool = True
) -> Membership:
    """Gives a user a role in the project, replacing any role they had there.

    With create=False only an existing member's role changes (NotFound otherwise). Demoting the
    project's last manager is a Conflict. A member whose new role does not annotate loses their
    open leases at once (the tasks go back to the queue). Raises Conflict when the project is
    archived.
    """
    project_ensure_writable(project=project)
    if role not in Role.values:
        raise InvalidInput(
            f"role: must be one of {', '.join(Role.values)}",
            errors=[{"field": "role", "message": "unknown role"}],
        )
    user = _user_named(username)
    with transaction.atomic():
        membership, other_managers = _lock_membership(project=project, user=user)
        if membership is None:
            if not create:
                raise NotFound(f"'{username}' is not a member of this project")
            try:
                with transaction.atomic():
                    return Membership.objects.create(project=project, user=user, role=role)
            except IntegrityError:
                # Added by a parallel request a moment ago: change that role instead.
                membership, other_managers = _lock_membership(project=project, user=user)
                assert membership is not None
        if membership.role == role:
            return membership
        if role != Role.MANAGER:
            _ensure_another_manager(membership=membership, other_managers=other_managers)
        if membership.role in ANNOTATE and role not in ANNOTATE:
            _release_leases(project=project, user=user)
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def membership_remove(*, project: Project, username: str) -> None:
    """Removes the user from the project; their open leases return to the queue at once, their
    judgements stay (still theirs).

    NotFound for someone who is not a member; Conflict for the project's last manager and for an
    archived project.
    """
    project_ensure_writable(project=project)
    with transaction.atomic():
        user = _user_named(username)
        membership, other_managers = _lock_membership(project=project, user=user)
        if membership is None:
            raise NotFound(f"'{username}' is not a member of this project")
        _ensure_another_manager(membership=membership, other_managers=other_managers)
        _release_leases(project=project, user=user)
        membership.delete()
