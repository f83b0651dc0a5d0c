"""The online loop's hallucination figures: how often each policy π_r's answers hallucinate, by
category, as humans marked them, per model version (pure: the rows come from
`annotation.selectors.rounds.kind_round_stats`).

Definitions (the same as the project page's panel, `annotation/selectors/hallucination.py`):

- *π_r's answers* are the responses whose model version is the policy of round r (π_0 is the base
  model the loop started from). Imported responses without a model version are no policy's.
- A *judged answer* is one answer as one annotator judged it: an answer judged by two annotators
  counts twice, so a rate is the share an annotator flags whatever the project's overlap.
- *With a hallucination*: the share of judged answers with at least one marked span; *a category's
  rate*: the share with at least one span of that category (MMHal-Bench's measure: two object
  spans in one answer count once for "object"). *Spans* counts every span, per category.
- *Held out*: judged on the loop's blind evaluation tasks (Task.purpose "evaluation"), whose prompts
  are the held-out split, the same every round: π_r's answers there are judged in round r (beside
  π_{r-1}'s) and in round r+1 (beside π_{r+1}'s), so π_0's are judged in round 1. This is the rate
  the dashboard compares across rounds; *all tasks* adds the training prompts' tasks, whose prompts
  change from round to round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils.safestring import SafeString

from ...charts import Series, grouped_bar_chart
from ..round_figures import PanelLine, PolicyFigures
from .payload import DEFAULT_CATEGORIES
from .stats import category_rates, hallucination_counts

HELD_OUT = "evaluation"  # the Task.purpose of the loop's blind evaluation tasks
ANY = "any"  # the chart's first group: answers with a span of any category


class _Tally:
    """One (policy, scope) cell while the judgements stream by: how many judged answers showed
    each pattern of {category: spans} (patterns repeat, so this stays small), and the ids of the
    answers seen."""

    def __init__(self) -> None:
        self.patterns: Counter[tuple[tuple[str, int], ...]] = Counter()
        self.answers: set[int] = set()

    def add(self, response_id: int, counts: Mapping[str, int]) -> None:
        self.patterns[tuple(sorted(counts.items()))] += 1
        self.answers.add(response_id)

    def figures(self, categories: Sequence[str]) -> ScopeFigures:
        expanded = (dict(p) for p, times in self.patterns.items() for _ in range(times))
        rates = category_rates(expanded, categories)
        spans: Counter[str] = Counter()
        for pattern, times in self.patterns.items():
            for category, n in pattern:
                spans[category] += n * times
        return ScopeFigures(
            answers=len(self.answers),
            judged=rates["responses"],
            hallucinated=rates["hallucinated"],
            by_category=rates["by_category"],
            spans={c: spans.get(c, 0) for c in categories},
        )


def _percent(share: float | None) -> float | None:
    return None if share is None else 100.0 * share


@dataclass(frozen=True)
class ScopeFigures:
    """A policy's figures over one scope of tasks (see the module docstring)."""

    answers: int  # distinct answers judged at least once
    judged: int  # judged answers: one per (judgement, answer)
    hallucinated: float | None  # share with at least one span; None before any judgement
    by_category: dict[str, float | None]  # share with at least one span of the category
    spans: dict[str, int]  # every span, per category

    @property
    def hallucinated_percent(self) -> float | None:
        return _percent(self.hallucinated)

    def cells(self) -> list[tuple[str, float | None, int]]:
        """(category, percent, spans) in the categories' order, for the table."""
        return [(c, _percent(share), self.spans[c]) for c, share in self.by_category.items()]

    def as_json(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "judged": self.judged,
            "hallucinated": self.hallucinated,
            "by_category": dict(self.by_category),
            "spans": dict(self.spans),
        }


@dataclass(frozen=True)
class HallucinationRounds:
    """What the kind's `round_stats` hook returns: every policy's figures, oldest round first."""

    categories: list[str]
    policies: list[PolicyFigures] = field(default_factory=list)

    def policy_json(self, round_number: int) -> dict[str, Any] | None:
        """π_r's figures in the rounds API, or None when round r registered no policy."""
        policy = next((p for p in self.policies if p.round == round_number), None)
        return policy.as_json() if policy else None

    def previous_policy_json(self, round_number: int) -> dict[str, Any] | None:
        """The figures of the newest policy before round r: the other side of its evaluation."""
        earlier = [p for p in self.policies if p.round < round_number]
        return earlier[-1].as_json() if earlier else None

    def chart(self) -> SafeString:
        """Grouped bars: for "any" and each category, one bar per policy's held-out rate."""
        judged = [p for p in self.policies if p.held_out.judged]
        marked = any(p.held_out.hallucinated for p in judged)
        groups = [ANY, *self.categories]
        series = []
        for p in judged:
            label = f"π{p.round} · {p.name}"
            shares = [
                p.held_out.hallucinated,
                *(p.held_out.by_category[c] for c in self.categories),
            ]
            spans = [
                sum(p.held_out.spans.values()),
                *(p.held_out.spans[c] for c in self.categories),
            ]
            series.append(
                Series(
                    label=label,
                    values=[_percent(s) for s in shares],
                    notes=[
                        f"{label} · {group}: {100.0 * share:.1f}% of {p.held_out.judged} judged"
                        f" held-out answers, {n} span{'s' if n != 1 else ''}"
                        for group, share, n in zip(groups, shares, spans, strict=True)
                    ],
                )
            )
        return grouped_bar_chart(
            groups,
            series,
            title="Held-out answers with a hallucination, per policy",
            x_label="category (any: at least one span)",
            y_label="% of judged answers",
            unit="%",
            empty=(
                f"no hallucination marked in {sum(p.held_out.judged for p in judged)} judged"
                " held-out answers"
                if judged and not marked
                else "no held-out answers judged yet"
            ),
        )

    def panel(self, win_rates: Mapping[int, str]) -> dict[str, Any]:
        """The context of `annotation/kinds/hallucination_rounds.html`; `win_rates` holds each
        round's human win rate as the rounds table writes it."""
        return {
            "categories": self.categories,
            "lines": [PanelLine(p, win_rates.get(p.round, "–")) for p in self.policies],
            "chart": self.chart(),
        }


def policy_round_stats(
    judged: Iterable[tuple[str, Mapping[str, Any], Sequence[tuple[int, int | None]]]],
    *,
    policies: Iterable[tuple[int, int, str]],
    settings: Mapping[str, Any],
) -> HallucinationRounds:
    """Every policy's figures from the judgements of tasks that show a model version's answer.

    `judged` yields (task purpose, payload, [(response id, model version id or None) by position]);
    `policies` (round, model version id, name) for the project's policies. Categories are the
    project's, then any found in spans but since removed from its settings, as the project page does.
    """
    policy_list = sorted(policies)
    tallies = {vid: (_Tally(), _Tally()) for _, vid, _ in policy_list}
    seen: set[str] = set()
    for purpose, payload, slots in judged:
        counts = hallucination_counts(payload)
        for position, (response_id, version_id) in enumerate(slots):
            if version_id not in tallies:
                continue
            answer = counts.get(position, {})
            seen.update(answer)
            held_out, every = tallies[version_id]
            every.add(response_id, answer)
            if purpose == HELD_OUT:
                held_out.add(response_id, answer)
    categories = list(settings.get("categories") or DEFAULT_CATEGORIES)
    categories += sorted(seen - set(categories))
    return HallucinationRounds(
        categories=categories,
        policies=[
            PolicyFigures(
                round=number,
                model_version=vid,
                name=name,
                held_out=tallies[vid][0].figures(categories),
                all_tasks=tallies[vid][1].figures(categories),
            )
            for number, vid, name in policy_list
        ],
    )
