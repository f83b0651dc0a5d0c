"""Rules every write service checks before it writes."""

from ..errors import Conflict
from ..models import Project


def project_ensure_writable(*, project: Project) -> None:
    """Archived projects are read-only: their data can be read and exported, never changed.

    Costs no query: callers already hold the project row.
    """
    if project.archived:
        raise Conflict(
            "this project is archived and read-only",
            errors=[{"field": "project", "message": "archived"}],
        )
