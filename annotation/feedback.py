"""The schema of each feedback kind: what a judgement's payload must hold and what an import line must hold.

One registry serves the API, the htmx pages and the importer, so a kind is either fully
accepted everywhere or refused everywhere with the same message.
"""

from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .models import FeedbackKind

MAX_RATIONALE_CHARS = 10_000
MAX_TIME_SPENT_MS = 7 * 24 * 3600 * 1000  # a week: anything longer is a broken client clock
STRENGTH_LABELS = {1: "slightly better", 2: "clearly better", 3: "much better"}


@dataclass(frozen=True)
class KindSchema:
    kind: str
    min_responses: int
    max_responses: int

    def validate_payload(self, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Returns the cleaned payload and its comparable answer (used for agreement)."""
        raise InvalidInput(f"feedback kind '{self.kind}' is not supported yet")


def _field_error(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", errors=[{"field": field, "message": message}])


class PairwiseSchema(KindSchema):
    CHOICES = ("A", "B", "tie", "both_bad")

    def validate_payload(self, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
        choice = data.get("choice")
        if choice not in self.CHOICES:
            raise _field_error("choice", "must be one of A, B, tie, both_bad")
        strength = data.get("strength")
        if choice in ("A", "B"):
            if (
                isinstance(strength, bool)
                or not isinstance(strength, int)
                or not 1 <= strength <= 3
            ):
                raise _field_error(
                    "strength", "must be 1 (slightly), 2 (clearly) or 3 (much better)"
                )
        else:
            # A tie or two bad answers has no direction, so a strength would mean nothing.
            strength = None
        return {"choice": choice, "strength": strength}, choice


SCHEMAS: dict[str, KindSchema] = {
    FeedbackKind.PAIRWISE: PairwiseSchema(
        kind=FeedbackKind.PAIRWISE, min_responses=2, max_responses=2
    ),
}


def schema_for(kind: str) -> KindSchema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise InvalidInput(
            f"feedback kind '{kind}' is not available yet; available: {', '.join(sorted(SCHEMAS))}",
            errors=[{"field": "kind", "message": "not available yet"}],
        ) from None


def clean_common(data: dict[str, Any]) -> tuple[str, int | None]:
    """The columns every kind shares: an optional rationale and the time spent."""
    rationale = data.get("rationale") or ""
    if not isinstance(rationale, str):
        raise _field_error("rationale", "must be a string")
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise _field_error("rationale", f"must be at most {MAX_RATIONALE_CHARS} characters")
    time_spent = data.get("time_spent_ms")
    if time_spent is not None and (
        isinstance(time_spent, bool) or not isinstance(time_spent, int) or time_spent < 0
    ):
        raise _field_error("time_spent_ms", "must be a non-negative integer")
    return rationale.strip(), time_spent
