"""The online loop's hindsight figures: for each policy π_r (its model version), how often seeing
the outcome reverses a judgement of its answers, the mean satisfaction its answers get before and
after the outcome, and their true utility where it was imported (pure: the rows come from
`annotation.selectors.rounds.phased_answers`).

Every definition is the project page's (`stats.py`, which this module calls rather than restates):
paired judgements are matched by (task, annotator) with `pair_rows`; flips, changes, mean
satisfaction and agreement with the true utility are counted by `Tally.add`, and a paired judgement
counts under each policy whose answer its task shows, its ratings under the policy of the response
rated (as `stats.py` counts a source). What is particular to the loop:

- *π_r's answers* are the responses whose model version is the policy of round r (π_0 is the base
  model the loop started from); imported responses without a model version are no policy's.
- *Held out*: judged on the loop's blind evaluation tasks (Task.purpose "evaluation"), whose prompts
  are the held-out split, the same every round: π_r's answers there are judged in round r (beside
  π_{r-1}'s) and in round r+1, so π_0's are judged in round 1. *All tasks* adds every other task.
- *True utility* of an answer (`stats.known_utilities`): its `Response.true_utility` where an
  exact world model wrote it with the outcome (backend "world": so the loop's own answers on a
  world-simulated project have one); else the prompt's `metadata.true_utility` at the answer's
  position, on a task the import made (round 0), whose slots are the import line's responses in
  line order. On a task the loop made, the prompt's imported utilities describe other responses,
  so without a stored one the answer's utility is unknown (and no agreement with it is counted).
  The mean is over the distinct answers judged in the scope (in either phase) with a known
  utility; "unknown" when there is none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from django.utils.safestring import SafeString

from ...charts import Series, grouped_bar_chart
from ..round_figures import PanelLine, PolicyFigures
from .stats import FORESIGHT, HINDSIGHT, PHASES, Tally, known_utilities, pair_rows, utility_at

HELD_OUT = "evaluation"  # the Task.purpose of the loop's blind evaluation tasks
UTILITY_KEY = "true_utility"  # the import metadata's per-response utilities (lines.py)
IMPORTED_ROUND = 0  # Task.round of the tasks the import made


class _Cell:
    """One (policy, scope) while the rows stream by."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.awaiting = 0
        self.answers: set[int] = set()
        self.utilities: dict[int, float] = {}  # response id -> its known true utility

    def figures(self) -> ScopeFigures:
        known = list(self.utilities.values())
        return ScopeFigures(
            tally=self.tally,
            awaiting=self.awaiting,
            answers=len(self.answers),
            utility_answers=len(known),
            true_utility=sum(known) / len(known) if known else None,
        )


def _percent(share: float | None) -> float | None:
    return None if share is None else 100.0 * share


@dataclass(frozen=True)
class ScopeFigures:
    """A policy's figures over one scope of tasks (see the module docstring)."""

    tally: Tally  # stats.py's counts over the paired judgements showing the policy's answers
    awaiting: int  # foresight judgements showing its answers whose hindsight is not given yet
    answers: int  # distinct answers of the policy judged in either phase
    utility_answers: int  # ... of which the true utility is known
    true_utility: float | None  # their mean; None: unknown

    @property
    def satisfaction_shift(self) -> float | None:
        return self.tally.satisfaction_shift

    def as_json(self) -> dict[str, Any]:
        t = self.tally
        return {
            "answers": self.answers,
            "paired": t.paired,
            "awaiting": self.awaiting,
            "decisive": t.decisive,
            "flips": t.flips,
            "flip_rate": t.flip_rate,
            "two_responses": t.two_responses,
            "changes": t.changes,
            "change_rate": t.change_rate,
            "satisfaction": {p: t.phases[p].mean_satisfaction for p in PHASES},
            "ratings": {p: t.phases[p].ratings for p in PHASES},
            "utility_agreement": {p: t.phases[p].utility_agreement for p in PHASES},
            "true_utility": self.true_utility,
            "true_utility_answers": self.utility_answers,
        }


@dataclass(frozen=True)
class HindsightRounds:
    """What the kind's `round_stats` hook returns: every policy's figures, oldest round first."""

    policies: list[PolicyFigures] = field(default_factory=list)

    def policy_json(self, round_number: int) -> dict[str, Any] | None:
        """π_r's figures in the rounds API, or None when round r registered no policy."""
        policy = next((p for p in self.policies if p.round == round_number), None)
        return policy.as_json() if policy else None

    def previous_policy_json(self, round_number: int) -> dict[str, Any] | None:
        """The figures of the newest policy before round r: the other side of its evaluation."""
        earlier = [p for p in self.policies if p.round < round_number]
        return earlier[-1].as_json() if earlier else None

    @property
    def any_utility(self) -> bool:
        return any(p.all_tasks.utility_answers for p in self.policies)

    def chart(self) -> SafeString:
        """Grouped bars: per policy, the held-out mean satisfaction in foresight and in hindsight."""
        judged = [p for p in self.policies if p.held_out.tally.paired]
        groups = [f"π{p.round} · {p.name}" for p in judged]

        def series(label: str, phase: str) -> Series:
            tallies = [p.held_out.tally.phases[phase] for p in judged]
            return Series(
                label=label,
                values=[t.mean_satisfaction for t in tallies],
                notes=[
                    f"{group} · {label.lower()}: {t.mean_satisfaction:.2f} mean of {t.ratings}"
                    f" held-out rating{'s' if t.ratings != 1 else ''}"
                    if t.mean_satisfaction is not None
                    else ""
                    for group, t in zip(groups, tallies, strict=True)
                ],
            )

        return grouped_bar_chart(
            groups,
            [series("Foresight", FORESIGHT), series("Hindsight", HINDSIGHT)],
            title="Held-out satisfaction before and after the outcome, per policy",
            x_label="policy",
            y_label="mean rating (1–5)",
            empty="no held-out paired judgements yet",
        )

    def panel(self, win_rates: Mapping[int, str]) -> dict[str, Any]:
        """The context of `annotation/kinds/hindsight_rounds.html`; `win_rates` holds each
        round's human win rate as the rounds table writes it."""
        return {
            "lines": [PanelLine(p, win_rates.get(p.round, "–")) for p in self.policies],
            "chart": self.chart(),
            "any_utility": self.any_utility,
        }


def _utilities(row: Any) -> Any:
    """The true utilities of the row's task by position (`stats.known_utilities`): each answer's
    stored one, else the import's where it applies (the import's own tasks); None: none known."""
    imported = row.prompt_metadata.get(UTILITY_KEY) if row.task_round == IMPORTED_ROUND else None
    return known_utilities(row.slot_utilities, imported)


def policy_round_stats(
    judged: Iterable[Any],
    *,
    policies: Iterable[tuple[int, int, str]],
) -> HindsightRounds:
    """Every policy's figures from the phase rows of tasks that show a model version's answer.

    `judged` yields `annotation.selectors.rounds.PhasedAnswers` in (task, annotator) order;
    `policies` (round, model version id, name) for the project's policies.
    """
    policy_list = sorted(policies)
    names = {vid: name for _, vid, name in policy_list}
    cells = {vid: (_Cell(), _Cell()) for vid in names}
    for _, group in groupby(judged, key=lambda row: (row.task_id, row.annotator_id)):
        rows = list(group)
        first = rows[0]
        slots = first.slots
        utilities = _utilities(first)
        # stats.py's pairing and tally; a source is the policy's name, as the project page's.
        sources = tuple(names.get(vid, "") if vid is not None else "" for _, vid in slots)
        pairs, awaiting = pair_rows(
            (None, str(row.annotator_id), row.phase, row.payload, sources, utilities)
            for row in rows
        )
        for vid in dict.fromkeys(vid for _, vid in slots):
            if vid not in cells:
                continue
            positions = [i for i, (_, v) in enumerate(slots) if v == vid]
            held_out, every = cells[vid]
            for cell in (every, held_out) if first.purpose == HELD_OUT else (every,):
                cell.awaiting += awaiting
                for pair in pairs:
                    cell.tally.add(pair, positions)
                for position in positions:
                    response_id = slots[position][0]
                    cell.answers.add(response_id)
                    utility = utility_at(utilities, position)
                    if utility is not None:
                        cell.utilities[response_id] = utility
    return HindsightRounds(
        policies=[
            PolicyFigures(
                round=number,
                model_version=vid,
                name=name,
                held_out=cells[vid][0].figures(),
                all_tasks=cells[vid][1].figures(),
            )
            for number, vid, name in policy_list
        ]
    )
