"""Every write in Tandem goes through a function here, split by sub-domain."""

from .assignment import (
    assignment_acquire,
    assignment_current_or_lease,
    assignment_lease,
    assignment_skip,
)
from .imports import import_create, import_run
from .judgement import judgement_submit
from .projects import (
    membership_remove,
    membership_set,
    project_create,
    project_kind_settings_set,
    user_create,
)
from .tokens import token_issue, token_revoke, token_sweep

__all__ = [
    "assignment_acquire",
    "assignment_current_or_lease",
    "assignment_lease",
    "assignment_skip",
    "import_create",
    "import_run",
    "judgement_submit",
    "membership_remove",
    "membership_set",
    "project_create",
    "project_kind_settings_set",
    "token_issue",
    "token_revoke",
    "token_sweep",
    "user_create",
]
