"""Every write in Tandem goes through a function here, split by sub-domain."""

from .assignment import assignment_current_or_lease, assignment_lease, assignment_skip
from .imports import import_create, import_run
from .judgement import judgement_submit
from .projects import membership_set, project_create, user_create

__all__ = [
    "assignment_current_or_lease",
    "assignment_lease",
    "assignment_skip",
    "import_create",
    "import_run",
    "judgement_submit",
    "membership_set",
    "project_create",
    "user_create",
]
