from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from ..errors import Conflict, InvalidInput, NotFound
from ..feedback import schema_for
from ..models import Membership, Project, Role


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
) -> Project:
    """Creates the project and makes its creator a manager of it."""
    schema_for(kind)
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
            created_by=creator,
        )
        Membership.objects.create(project=project, user=creator, role=Role.MANAGER)
    return project


def membership_set(*, project: Project, username: str, role: str) -> Membership:
    """Gives a user a role in the project, replacing any role they had there."""
    if role not in Role.values:
        raise InvalidInput(
            f"role: must be one of {', '.join(Role.values)}",
            errors=[{"field": "role", "message": "unknown role"}],
        )
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"no user named '{username}'")
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": role}
    )
    return membership
