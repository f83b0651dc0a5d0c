"""The hindsight kind's import line, beyond the core's prompt and responses.

{"prompt": conversation or text, "responses": [text | {"text", "model"?, "outcome"?}] (1 or 2),
 "hidden"?: {...facts for the outcome simulator}, "metadata"?: {"true_utility"?: [number per
 response], ...}}. A response's outcome is what happened when the user acted on it; with outcomes
the task's responses are stored with outcome_source "imported" and no simulator ever runs for
them. The hidden facts are stored on the prompt (`Prompt.hidden`) and never shown nor exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..base import LineExtras, field_error

MAX_OUTCOME_CHARS = 200_000
# Import-line keys other kinds read that this one does not show.
_NOT_SHOWN = ("image", "context")


def line_extras(obj: Mapping[str, Any]) -> LineExtras:
    """The line's hidden facts and the responses' outcomes: all of them or none.

    A line with outcomes for some responses and not others is refused (a task would show some
    outcomes real and leave others to a simulator, mixing two sources in one comparison).
    """
    for name in _NOT_SHOWN:
        if obj.get(name) not in (None, "", {}):
            raise field_error(name, "a hindsight task shows no image or context")
    hidden = obj.get("hidden", {})
    if hidden is None:
        hidden = {}
    if not isinstance(hidden, dict):
        raise field_error("hidden", "must be an object of facts for the outcome simulator")
    responses = obj.get("responses")
    outcomes: list[str | None] = []
    for i, item in enumerate(responses if isinstance(responses, list) else []):
        outcome = item.get("outcome") if isinstance(item, dict) else None
        if outcome is not None and not isinstance(outcome, str):
            raise field_error(f"responses[{i}].outcome", "must be a string")
        if isinstance(outcome, str):
            if len(outcome) > MAX_OUTCOME_CHARS:
                raise field_error(
                    f"responses[{i}].outcome", f"longer than {MAX_OUTCOME_CHARS} characters"
                )
            outcome = outcome.strip() or None
        outcomes.append(outcome)
    given = [i for i, outcome in enumerate(outcomes) if outcome is not None]
    if given and len(given) != len(outcomes):
        missing = next(i for i, outcome in enumerate(outcomes) if outcome is None)
        raise field_error(
            f"responses[{missing}].outcome",
            "missing: give an outcome for every response of the line, or for none "
            "(then a simulator writes them from the hidden facts)",
        )
    metadata = obj.get("metadata")
    utility = metadata.get("true_utility") if isinstance(metadata, dict) else None
    if utility is not None:
        if (
            not isinstance(utility, list)
            or len(utility) != len(outcomes)
            or not all(isinstance(u, int | float) and not isinstance(u, bool) for u in utility)
        ):
            raise field_error(
                "metadata.true_utility", "must be a list of numbers, one per response"
            )
    if 1 <= len(outcomes) <= 2 and not given and not hidden:
        # Its task would wait for an outcome nothing can write: step 2 would never come.
        raise field_error(
            "responses",
            "no outcomes and no hidden facts: give each response its outcome, or the task "
            '"hidden" facts from which the project\'s simulator writes them',
        )
    return LineExtras(hidden=hidden, outcomes=tuple(o for o in outcomes if o is not None))
