"""What a hindsight project's page shows: how often seeing the outcome changes a judgement.

RLHS (Liang et al.) argues that foresight feedback rests on predicted consequences that a policy
can learn to manipulate; the manager's first question is therefore how often, and for which
models, the judgement given before the outcome differs from the one given after it.

Definitions (what the page says and the tests hold the numbers to):

- A *paired judgement* is one annotator's two rows on one task: the foresight and the hindsight
  judgement. They are matched by (task, annotator), not by assignment: a lease that expires between
  the phases leaves the foresight row on the old assignment and the hindsight row on the new one.
  Every number below is computed over paired judgements only, so both phases are compared on the
  same tasks; a foresight row still waiting for its hindsight is counted as *awaiting* and nothing
  else.
- A *decisive* choice is "A" or "B"; "tie" is not decisive (it gives no preference pair to train
  on), and a one-response task has no choice at all.
- A *flip* is a paired judgement of a two-response task whose choice is decisive in both phases
  and differs: A then B, or B then A. The *flip rate* is flips over the paired judgements decisive
  in both phases. A move to or from a tie (A then tie, tie then B) is not a flip: it withdraws or
  creates a preference rather than reversing one. It is counted by the *change rate*: paired
  judgements of two-response tasks whose choice differs in any way, over all paired judgements of
  two-response tasks. `flipped` and `changed` are the two rules, for every caller.
- *Mean satisfaction* of a phase: the mean of that phase's 1..5 ratings over the responses judged
  in paired judgements (a two-response task gives two ratings per phase).
- *Agreement with the true utility*: over a phase's decisive choices on tasks whose two
  responses' utilities are known and differ, the share choosing the response of higher utility.
  Equal utilities name no better response and are left out.
- A response's *true utility* (`known_utilities`): its `Response.true_utility` where set (an
  exact world model wrote it with the outcome, see `annotation/services/outcomes.py`), else, on a
  task the import made (round 0), the import's `metadata.true_utility` at its position (one number
  per response, in the order the responses are shown). The prompt's imported utilities describe
  the responses imported with it, not the answers a loop task on that prompt shows.
- A response's *source* is its model version's name where it has one, else its `model_name`, else
  "imported". A paired judgement counts under each distinct source of its task's responses (once
  when both responses share one); its ratings count under the source of the response rated.

The pure functions at the top take payloads; `hindsight_stats` reads the judgements once, streamed
in (task, annotator) order, so memory holds one task's rows and a tally per annotator and source.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from numbers import Real
from typing import Any

FORESIGHT = "foresight"
HINDSIGHT = "hindsight"
PHASES = (FORESIGHT, HINDSIGHT)
DECISIVE = ("A", "B")
IMPORTED = "imported"
KIND = "hindsight"
CHUNK = 2000  # judgements fetched per round trip of the stream


# --- the rules -------------------------------------------------------------------------------


def choice_of(payload: Mapping[str, Any]) -> str:
    """The payload's choice: "A", "B", "tie", or "" (a one-response task has none)."""
    choice = payload.get("choice")
    return choice if isinstance(choice, str) else ""


def flipped(foresight: str, hindsight: str) -> bool | None:
    """Whether the decisive choice reversed between the phases; None when either is not decisive
    (a tie, or no choice): there is no preference in both phases to compare."""
    if foresight not in DECISIVE or hindsight not in DECISIVE:
        return None
    return foresight != hindsight


def changed(foresight: str, hindsight: str) -> bool | None:
    """Whether the choice differs in any way (ties included); None without a choice in both."""
    if not foresight or not hindsight:
        return None
    return foresight != hindsight


def utility_agrees(choice: str, utilities: Any) -> bool | None:
    """Whether a decisive choice picked the response of higher true utility; None when the choice
    is not decisive, the utilities are not two numbers, or they are equal."""
    if choice not in DECISIVE or not _two_numbers(utilities):
        return None
    a, b = float(utilities[0]), float(utilities[1])
    if a == b:
        return None
    return (choice == "A") == (a > b)


def utility_at(utilities: Any, position: int) -> float | None:
    """The imported true utility of the response shown at `position` (`metadata.true_utility`,
    one number per response in the order shown), or None when the import gave no number there."""
    if not isinstance(utilities, list | tuple) or not 0 <= position < len(utilities):
        return None
    value = utilities[position]
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else None


def known_utilities(stored: Sequence[float | None], imported: Any) -> Any:
    """The true utilities of a task's responses by position: each response's stored
    `true_utility` where set, else the imported one at that position (`imported`: the prompt's
    `metadata.true_utility`, or None where it does not apply). With none stored, `imported` as it
    is (unchecked: `utility_at` and `utility_agrees` read it defensively)."""
    if all(value is None for value in stored):
        return imported
    return [
        float(value) if value is not None else utility_at(imported, position)
        for position, value in enumerate(stored)
    ]


def _two_numbers(value: Any) -> bool:
    # An importer's JSON: a bool is an int to Python, but not a utility.
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in value)
    )


def _ratings(payload: Mapping[str, Any]) -> list[int | None]:
    ratings = payload.get("ratings")
    if not isinstance(ratings, list):
        return []
    return [r if isinstance(r, int) and not isinstance(r, bool) else None for r in ratings]


# --- the tally ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedJudgement:
    """One annotator's foresight and hindsight judgements of one task."""

    annotator: str
    sources: tuple[str, ...]  # of the task's responses, in position order
    foresight: Mapping[str, Any]
    hindsight: Mapping[str, Any]
    true_utility: Any = None  # per position, `known_utilities` (imported parts unchecked)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(share: float | None) -> float | None:
    return None if share is None else 100.0 * share


@dataclass
class PhaseTally:
    rating_sum: int = 0
    ratings: int = 0
    utility_decisive: int = 0  # decisive choices on tasks with two different true utilities
    utility_agreeing: int = 0

    @property
    def mean_satisfaction(self) -> float | None:
        return _share(self.rating_sum, self.ratings)

    @property
    def utility_agreement(self) -> float | None:
        return _share(self.utility_agreeing, self.utility_decisive)

    @property
    def utility_agreement_percent(self) -> float | None:
        return _percent(self.utility_agreement)


@dataclass
class Tally:
    """The counts behind one line of the page (all, one annotator or one source)."""

    paired: int = 0
    two_responses: int = 0  # paired judgements with a choice in both phases
    decisive: int = 0  # ... decisive in both phases
    flips: int = 0
    changes: int = 0
    phases: dict[str, PhaseTally] = field(
        default_factory=lambda: {phase: PhaseTally() for phase in PHASES}
    )

    def add(self, pair: PairedJudgement, positions: Iterable[int] | None = None) -> None:
        """Counts `pair`; its ratings only at `positions` (all when None)."""
        self.paired += 1
        before, after = choice_of(pair.foresight), choice_of(pair.hindsight)
        change = changed(before, after)
        if change is not None:
            self.two_responses += 1
            self.changes += change
        flip = flipped(before, after)
        if flip is not None:
            self.decisive += 1
            self.flips += flip
        for phase, payload in ((FORESIGHT, pair.foresight), (HINDSIGHT, pair.hindsight)):
            tally = self.phases[phase]
            ratings = _ratings(payload)
            wanted = range(len(ratings)) if positions is None else positions
            for position in wanted:
                if position < len(ratings) and ratings[position] is not None:
                    tally.rating_sum += ratings[position]
                    tally.ratings += 1
            agrees = utility_agrees(choice_of(payload), pair.true_utility)
            if agrees is not None:
                tally.utility_decisive += 1
                tally.utility_agreeing += agrees

    @property
    def flip_rate(self) -> float | None:
        return _share(self.flips, self.decisive)

    @property
    def flip_percent(self) -> float | None:
        return _percent(self.flip_rate)

    @property
    def change_rate(self) -> float | None:
        return _share(self.changes, self.two_responses)

    @property
    def change_percent(self) -> float | None:
        return _percent(self.change_rate)

    @property
    def foresight(self) -> PhaseTally:
        return self.phases[FORESIGHT]

    @property
    def hindsight(self) -> PhaseTally:
        return self.phases[HINDSIGHT]

    @property
    def satisfaction_shift(self) -> float | None:
        """Hindsight minus foresight mean satisfaction: negative when outcomes disappoint."""
        before, after = self.foresight.mean_satisfaction, self.hindsight.mean_satisfaction
        return None if before is None or after is None else after - before


@dataclass(frozen=True)
class Row:
    name: str
    tally: Tally


@dataclass(frozen=True)
class HindsightStats:
    overall: Tally
    by_annotator: list[Row]
    by_source: list[Row]
    awaiting: int = 0  # foresight judgements whose hindsight is not given yet

    @property
    def has_utility(self) -> bool:
        return any(self.overall.phases[p].utility_decisive for p in PHASES)


def hindsight_summary(pairs: Iterable[PairedJudgement], *, awaiting: int = 0) -> HindsightStats:
    """The page's numbers from paired judgements; see the module docstring for each definition."""
    overall = Tally()
    annotators: dict[str, Tally] = {}
    sources: dict[str, Tally] = {}
    for pair in pairs:
        overall.add(pair)
        annotators.setdefault(pair.annotator, Tally()).add(pair)
        for source in dict.fromkeys(pair.sources):
            positions = [i for i, s in enumerate(pair.sources) if s == source]
            sources.setdefault(source, Tally()).add(pair, positions)
    return HindsightStats(
        overall=overall,
        by_annotator=[Row(name, annotators[name]) for name in sorted(annotators)],
        by_source=[Row(name, sources[name]) for name in sorted(sources)],
        awaiting=awaiting,
    )


def pair_rows(
    rows: Iterable[tuple[Any, str, str, Mapping[str, Any], Sequence[str], Any]],
) -> tuple[list[PairedJudgement], int]:
    """Paired judgements from rows (group key, annotator, phase, payload, sources, true utility)
    sorted by group key, where a group is one annotator's rows on one task; and how many groups
    hold a foresight row only. The first row of each phase counts (the service stores one)."""
    pairs: list[PairedJudgement] = []
    awaiting = 0
    for _, group in groupby(rows, key=lambda row: row[0]):
        by_phase: dict[str, tuple[Any, ...]] = {}
        for row in group:
            by_phase.setdefault(row[2], row)
        before, after = by_phase.get(FORESIGHT), by_phase.get(HINDSIGHT)
        if before is None:
            continue  # a hindsight row alone cannot be stored; nothing to compare if it were
        if after is None:
            awaiting += 1
            continue
        pairs.append(
            PairedJudgement(
                annotator=after[1],
                sources=tuple(after[4]),
                foresight=before[3],
                hindsight=after[3],
                true_utility=after[5],
            )
        )
    return pairs, awaiting


# --- the database read -------------------------------------------------------------------------


def _judgement_rows(project: Any) -> Iterator[tuple[Any, str, str, Mapping[str, Any], list, Any]]:
    """The project's hindsight judgements as pair_rows reads them, streamed in (task, annotator,
    phase) order; the sources of positions 0 and 1 come from one subquery each."""
    from django.db.models import CharField, FloatField, OuterRef, QuerySet, Subquery, Value
    from django.db.models.functions import Coalesce, NullIf

    from ...models import Judgement, TaskResponse

    def slot(position: int) -> QuerySet:
        return TaskResponse.objects.filter(task_id=OuterRef("task_id"), position=position)

    def source(position: int) -> Subquery:
        return Subquery(
            slot(position).values(
                source=Coalesce(
                    NullIf("response__model_version__name", Value("")),
                    NullIf("response__model_name", Value("")),
                    Value(IMPORTED),
                    output_field=CharField(),
                )
            )[:1],
            output_field=CharField(),
        )

    def stored_utility(position: int) -> Subquery:
        return Subquery(
            slot(position).values("response__true_utility")[:1], output_field=FloatField()
        )

    rows = (
        Judgement.objects.filter(project=project, kind=KIND, phase__in=PHASES)
        .annotate(
            source_0=source(0),
            source_1=source(1),
            utility_0=stored_utility(0),
            utility_1=stored_utility(1),
        )
        .order_by("task_id", "annotator_id", "phase", "id")
        .values_list(
            "task_id",
            "annotator_id",
            "annotator__username",
            "phase",
            "payload",
            "source_0",
            "source_1",
            "task__prompt__metadata__true_utility",
            "task__round",
            "utility_0",
            "utility_1",
        )
        .iterator(chunk_size=CHUNK)
    )
    for row in rows:
        task_id, annotator_id, username, phase, payload, s0, s1, imported, round_number = row[:9]
        sources = [s for s in (s0, s1) if s is not None]
        # The prompt's utilities are those of the responses imported with it, which only the
        # import's own tasks (round 0) show; a loop task on that prompt shows generated answers.
        if round_number:
            imported = None
        stored = row[9 : 9 + len(sources)]
        utility = known_utilities(stored, imported)
        yield (task_id, annotator_id), username, phase, payload, sources, utility


def hindsight_stats(*, project: Any) -> HindsightStats:
    """The project's numbers; see the module docstring for every definition."""
    pairs, awaiting = pair_rows(_judgement_rows(project))
    return hindsight_summary(pairs, awaiting=awaiting)


def satisfaction_chart(stats: HindsightStats) -> Any:
    """Grouped bars: mean satisfaction before and after the outcome, overall and per source."""
    from ...charts import Series, grouped_bar_chart

    rows = [Row("all", stats.overall), *stats.by_source] if stats.overall.paired else []
    groups = [row.name for row in rows]

    def series(label: str, phase: str) -> Series:
        values = [row.tally.phases[phase].mean_satisfaction for row in rows]
        notes = [
            f"{row.name} · {label}: {value:.2f} over {row.tally.phases[phase].ratings} ratings"
            if value is not None
            else ""
            for row, value in zip(rows, values, strict=True)
        ]
        return Series(label=label, values=values, notes=notes)

    return grouped_bar_chart(
        groups,
        [series("Foresight", FORESIGHT), series("Hindsight", HINDSIGHT)],
        title="Mean satisfaction before and after the outcome",
        x_label="response source",
        y_label="mean rating (1–5)",
        empty="no paired judgements yet",
    )


def hindsight_dashboard(project: Any) -> dict[str, Any]:
    """The context of `annotation/kinds/hindsight_stats.html` (the kind's `stats`)."""
    stats = hindsight_stats(project=project)
    return {
        "stats": stats,
        "chart": satisfaction_chart(stats),
        "tables": [("source", stats.by_source), ("annotator", stats.by_annotator)],
    }
