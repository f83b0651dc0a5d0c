"""The hindsight judgement and import line (RLHS, "Mitigating Misalignment in RLHF with Hindsight
Simulation").

A judgement is given twice on the same assignment, as two rows: in foresight (the interaction as
the user saw it) and in hindsight (after the outcome of acting on each response is revealed). Both
phases take the same form: a 1-5 satisfaction rating per response and, with two responses, which
one satisfied more (A, B or tie), with an optional reason. The phase order and locking are the
core's (`Kind.phases`, `annotation/services/judgement.py`); this module checks one phase's form.
The import line is read in `lines.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...feedback import text_problem
from ..base import TaskContext, field_error

PHASES = ("foresight", "hindsight")
CHOICES = ("A", "B", "tie")
RATING_LABELS = {
    1: "Very dissatisfied",
    2: "Dissatisfied",
    3: "Neither",
    4: "Satisfied",
    5: "Very satisfied",
}
MAX_REASON_CHARS = 2000


def _ratings(value: Any, count: int) -> list[int]:
    if not isinstance(value, list) or len(value) != count:
        one = "one rating" if count == 1 else f"{count} ratings"
        raise field_error("ratings", f"must be a list of {one}, one per response")
    for i, rating in enumerate(value):
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise field_error(
                f"ratings[{i}]",
                "must be an integer from 1 (very dissatisfied) to 5 (very satisfied)",
            )
    return list(value)


def validate_payload(data: Mapping[str, Any], *, task: TaskContext) -> tuple[dict[str, Any], str]:
    """The stored payload {"ratings", "choice", "reason"} and its agreement key (the choice, "" with
    one response). `task.responses` gives the number of responses shown."""
    if data.get("phase") not in PHASES:
        raise field_error("phase", f"must be one of {', '.join(PHASES)}")
    count = len(task.responses)
    ratings = _ratings(data.get("ratings"), count)
    choice = data.get("choice")
    if count == 2:
        if choice not in CHOICES:
            raise field_error("choice", "must be A, B or tie (which satisfied more)")
    elif choice not in (None, ""):
        raise field_error("choice", "only a task with two responses takes a choice")
    else:
        choice = None
    reason = data.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise field_error("reason", "must be a string")
    if len(reason) > MAX_REASON_CHARS:
        raise field_error("reason", f"must be at most {MAX_REASON_CHARS} characters")
    problem = text_problem(reason)
    if problem:
        raise field_error("reason", problem)
    return {"ratings": ratings, "choice": choice, "reason": reason.strip()}, choice or ""


def payload_from_form(post: Mapping[str, Any]) -> dict[str, Any]:
    """The page form's fields: phase, rating_0, rating_1 (1..5), choice, reason."""
    ratings: list[Any] = []
    for i in range(2):
        raw = post.get(f"rating_{i}")
        if raw is None:
            break
        raw = raw.strip()
        ratings.append(int(raw) if raw.isdigit() and len(raw) < 4 else raw or None)
    return {
        "phase": post.get("phase") or "",
        "ratings": ratings,
        "choice": post.get("choice") or None,
        "reason": post.get("reason") or "",
    }
