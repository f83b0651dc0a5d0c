"""The hindsight kind (RLHS, Liang et al., "Mitigating Misalignment in RLHF with Hindsight
Simulation"): judge an interaction, see what came of it, judge again.

One assignment takes two judgements, stored as two rows (`Kind.phases`): in foresight the
annotator sees what the user saw and rates each response 1-5 (and, with two, says which satisfied
more); in hindsight the outcome of acting on each response is revealed, the foresight answer is
shown locked, and the same form is given again. The core enforces the order and the lock and
never sends an outcome before the foresight row exists (`selectors.assignment_view`); the lease
never carries one. Outcomes are imported with the line (`lines.py`) or written by a simulator from
the prompt's hidden facts (`settings.py`, `annotation/services/outcomes.py`); exports in
`exports.py`; the project page's flip rates in `stats.py`, the loop dashboard's per policy in
`round_stats.py`; the online loop trains on hindsight pairs and simulates the outcomes of the
answers it generates (`loop.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import register
from ..base import Key, Kind, LineExtras, SettingField, TaskContext
from . import lines as _lines
from . import payload as _payload
from . import settings as _settings
from .exports import SHAPES
from .loop import HindsightLoop
from .payload import CHOICES, PHASES, RATING_LABELS

# The page's keyboard map. Ratings on the digit row (as pairwise and hallucination put their
# choices there), for the response at the cursor; the choice on the letters A, B and T.
KEYS = (
    *(Key(str(value), f"Rate: {label.lower()}") for value, label in RATING_LABELS.items()),
    Key("[", "Cursor to response A"),
    Key("]", "Cursor to response B"),
    Key("a", "A satisfied more"),
    Key("b", "B satisfied more"),
    Key("t", "Tie: as satisfying"),
    Key("n", "Write a reason"),
)
CHOICE_LABELS = {"A": "A satisfied more", "B": "B satisfied more", "tie": "Tie"}
CHOICE_KEYS = {"A": "a", "B": "b", "tie": "t"}


class Hindsight(Kind):
    name = "hindsight"
    label = "Hindsight feedback"
    min_responses = 1
    max_responses = 2
    template = "annotation/kinds/hindsight.html"
    # The number of ratings a judgement must give is the number of responses shown.
    needs_response_texts = True
    export_shapes = SHAPES
    phases = PHASES
    shows_outcomes = True
    loop = HindsightLoop()
    oracle_annotator = "annotation.kinds.hindsight.simulation.MarketplaceCustomer"
    stats_template = "annotation/kinds/hindsight_stats.html"
    round_stats_template = "annotation/kinds/hindsight_rounds.html"
    form_fields = ("phase", "ratings", "choice", "reason")

    # --- project settings: the outcome simulator's -----------------------------------------

    def default_settings(self) -> dict[str, Any]:
        return _settings.default_settings()

    def clean_settings(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        return _settings.clean_settings(data)

    def settings_fields(self) -> list[SettingField]:
        return _settings.settings_fields()

    # --- import and judging ----------------------------------------------------------------

    def line_extras(self, obj: Mapping[str, Any]) -> LineExtras:
        return _lines.line_extras(obj)

    def validate_payload(
        self, data: Mapping[str, Any], *, task: TaskContext
    ) -> tuple[dict[str, Any], str]:
        return _payload.validate_payload(data, task=task)

    def payload_from_form(self, post: Mapping[str, Any]) -> dict[str, Any]:
        return _payload.payload_from_form(post)

    def judgement_serializers(self) -> list[type]:
        from .rest import HindsightJudgementSerializer

        return [HindsightJudgementSerializer]

    # --- the page --------------------------------------------------------------------------

    def keys(self) -> list[Key]:
        return list(KEYS)

    def page_context(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The form's options: `rating_options` [{value, label, key}] and `choice_options`."""
        return {
            "rating_options": [
                {"value": value, "label": label, "key": str(value)}
                for value, label in RATING_LABELS.items()
            ],
            "choice_options": [
                {"value": c, "label": CHOICE_LABELS[c], "key": CHOICE_KEYS[c]} for c in CHOICES
            ],
        }

    def assignment_context(self, *, assignment: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
        """What the page shows of this assignment's phases:

        - `phase`: the phase due ("foresight" or "hindsight"; None when both are stored);
        - `phase_responses`: [{"label", "text", "model"}] in order, each with "outcome" only once
          the foresight judgement is stored ("" while the simulator has not written it yet);
        - `locked_foresight`: the stored foresight {"ratings", "choice", "reason"} once the
          hindsight phase is due, else None (the page shows it read-only).
        """
        from ...selectors import assignment_view

        view = assignment_view(assignment=assignment)
        foresight = view.earlier.get(PHASES[0])
        return {
            "phase": view.phase,
            "phase_responses": [
                {
                    "label": r.label,
                    "text": r.text,
                    "model": r.model,
                    **({"outcome": r.outcome} if r.outcome is not None else {}),
                }
                for r in view.task.responses
            ],
            "locked_foresight": foresight,
        }

    # --- what a manager sees ----------------------------------------------------------------

    def stats(self, project: Any) -> dict[str, Any]:
        """Flip rates, mean satisfaction per phase and agreement with the true utility."""
        from .stats import hindsight_dashboard

        return hindsight_dashboard(project)

    def round_stats(
        self,
        judged: Iterable[Any],
        *,
        policies: Iterable[tuple[int, int, str]],
        settings: Mapping[str, Any],
    ) -> Any:
        """Per policy (model version): the flip rate, the mean satisfaction in each phase and the
        true utility of its answers where imported, held out and over all tasks; `judged` holds
        every phase's row (`selectors.rounds.phased_answers`). See `round_stats.py`."""
        from .round_stats import policy_round_stats

        return policy_round_stats(judged, policies=policies)

    def gold_score(self, payload: Mapping[str, Any], gold: Mapping[str, Any]) -> float | None:
        """1.0 when a choice matches the gold choice, else 0.0; None without a gold choice."""
        if not isinstance(gold, Mapping) or gold.get("choice") not in CHOICES:
            return None
        return 1.0 if payload.get("choice") == gold["choice"] else 0.0

    def training_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # "pairs" rows are the text DPO / reward rows `training.data` reads, as pairwise's.
        return rows


register(Hindsight())
