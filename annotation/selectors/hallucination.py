"""Reads of a hallucination project's panel: how often each response source hallucinates, and how
far annotators agree.

Definitions (what the manager sees, and what the tests hold the numbers to):

- A *source* is a response's model version's name where it has one, else its `model_name`, else
  "imported".
- A *judged response* is one response as one annotator judged it: a judgement of a two-response
  task judges two. A response judged by three annotators counts three times, so a rate is the share
  an annotator flags, the same whatever the project's overlap.
- *With a hallucination*: the share of judged responses with at least one marked span; *the rate of
  a category*: the share with at least one span of that category (MMHal-Bench reports the share of
  responses with a hallucination; a response with two object spans counts once for "object").
  *Spans per response*: the mean number of spans of a judged response.
- *Agreement on the choice*: over every pair of judgements of one task, the share of pairs giving
  the same answer to "which hallucinates less" (A, B or tie; the helpfulness tie-break aside).
- *Span F1*: for every pair of judgements of one task and each response of it, the F1 between the
  two annotators' spans on that response, then the mean over those (pair, response) units (macro).
  "Overlap" F1 counts marked code points (two marks of "a red car" and "red car" mostly agree),
  "exact" F1 counts spans equal in start, end and category; both are
  `annotation.kinds.hallucination.stats.span_f1`. A unit where neither annotator marked anything
  is left out: it has nothing to match, and counting it as agreement would make every
  hallucination-free response look like a success of the span tool (the choice covers it).

The rates and the choice agreement are counted by the database where a GROUP BY can; the span parts
read payloads once, streamed in task order in chunks, so memory holds one task's judgements and a
small tally per source whatever the project's size.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, groupby
from typing import Any

from django.db.models import CharField, Count, Exists, OuterRef, Subquery, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, NullIf
from django.utils.safestring import SafeString

from ..charts import Series, grouped_bar_chart
from ..kinds.hallucination.payload import DEFAULT_CATEGORIES
from ..kinds.hallucination.stats import category_rates, hallucination_counts, span_f1
from ..models import Judgement, Project, TaskResponse

KIND = "hallucination"
IMPORTED = "imported"
POSITIONS = (0, 1)  # the kind shows two responses; spans name them by position
CHUNK = 2000  # judgements fetched per round trip of the payload stream


def _source(prefix: str = "") -> Coalesce:
    """The SQL of a response's source; `prefix` is the path from the queried model to Response."""
    return Coalesce(
        NullIf(f"{prefix}model_version__name", Value("")),
        NullIf(f"{prefix}model_name", Value("")),
        Value(IMPORTED),
        output_field=CharField(),
    )


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(share: float | None) -> float | None:
    return None if share is None else 100.0 * share


@dataclass(frozen=True)
class CategoryRate:
    category: str
    share: float | None  # of judged responses with at least one span of the category

    @property
    def percent(self) -> float | None:
        return _percent(self.share)


@dataclass(frozen=True)
class SourceRow:
    """One response source's line of the table."""

    source: str
    responses: int  # distinct responses of this source with at least one judgement
    judged: int  # judged responses: one per (judgement, response) pair
    hallucinated: float | None
    rates: list[CategoryRate]
    spans_per_response: float | None
    span_f1: float | None  # overlap F1, macro over (judgement pair, response) units of the source
    span_pairs: int

    @property
    def hallucinated_percent(self) -> float | None:
        return _percent(self.hallucinated)


@dataclass(frozen=True)
class Agreement:
    """Agreement between annotators of the same task (shares over pairs of judgements)."""

    choice_pairs: int = 0
    choice_agreeing: int = 0
    span_units: int = 0
    span_f1: float | None = None
    span_exact_f1: float | None = None

    @property
    def choice(self) -> float | None:
        return _share(self.choice_agreeing, self.choice_pairs)

    @property
    def choice_percent(self) -> float | None:
        return _percent(self.choice)


@dataclass(frozen=True)
class HallucinationStats:
    categories: list[str]
    judgements: int
    sources: list[SourceRow] = field(default_factory=list)
    agreement: Agreement = Agreement()


def choice_agreement(*, project: Project) -> tuple[int, int]:
    """(pairs of judgements on one task, pairs of them with the same choice), counted by the
    database: n judgements of a task make n(n-1)/2 pairs, and those sharing a choice agree."""
    per_choice = (
        Judgement.objects.filter(project=project, kind=KIND)
        .values("task_id", choice=KT("payload__choice"))
        .annotate(n=Count("id"))
        .order_by("task_id")
        .values_list("task_id", "n")
        .iterator(chunk_size=CHUNK)
    )
    pairs = agreeing = 0
    for _, rows in groupby(per_choice, key=lambda row: row[0]):
        counts = [n for _, n in rows]
        total = sum(counts)
        pairs += total * (total - 1) // 2
        agreeing += sum(n * (n - 1) // 2 for n in counts)
    return pairs, agreeing


def _responses_per_source(project: Project) -> dict[str, int]:
    judged = Judgement.objects.filter(task_id=OuterRef("task_id"), kind=KIND)
    return dict(
        TaskResponse.objects.filter(task__project=project)
        .filter(Exists(judged))
        .values(source=_source("response__"))
        .annotate(n=Count("response_id", distinct=True))
        .values_list("source", "n")
    )


def _judgements_with_sources(project: Project) -> Iterable[tuple[int, dict[str, Any], list[str]]]:
    """(task id, payload, [source of position 0, of position 1]) in task order, streamed."""
    sources = {
        f"source_{p}": Subquery(
            TaskResponse.objects.filter(task_id=OuterRef("task_id"), position=p).values(
                source=_source("response__")
            )[:1],
            output_field=CharField(),
        )
        for p in POSITIONS
    }
    rows = (
        Judgement.objects.filter(project=project, kind=KIND)
        .annotate(**sources)
        .order_by("task_id", "id")
        .values_list("task_id", "payload", *sources)
        .iterator(chunk_size=CHUNK)
    )
    for task_id, payload, *names in rows:
        yield task_id, payload, [name or IMPORTED for name in names]


class _Tally:
    """Per source: how many judged responses showed each pattern of {category: spans}, and the
    span F1 of each pair unit. Patterns repeat, so this stays small on any project."""

    def __init__(self) -> None:
        self.patterns: dict[str, Counter[tuple[tuple[str, int], ...]]] = defaultdict(Counter)
        self.f1: dict[str, list[float]] = defaultdict(list)
        self.overall_f1: list[float] = []
        self.exact_f1: list[float] = []

    def judgement(self, payload: Mapping[str, Any], sources: Sequence[str]) -> None:
        counts = hallucination_counts(payload)
        for position, source in zip(POSITIONS, sources, strict=True):
            pattern = tuple(sorted(counts.get(position, {}).items()))
            self.patterns[source][pattern] += 1

    def pair(self, a: Mapping[str, Any], b: Mapping[str, Any], sources: Sequence[str]) -> None:
        for position, source in zip(POSITIONS, sources, strict=True):
            spans_a = [s for s in a.get("spans") or [] if s["response"] == position]
            spans_b = [s for s in b.get("spans") or [] if s["response"] == position]
            overlap = span_f1(spans_a, spans_b)
            if overlap is None:
                continue
            self.f1[source].append(overlap)
            self.overall_f1.append(overlap)
            exact = span_f1(spans_a, spans_b, mode="exact")
            self.exact_f1.append(exact if exact is not None else 0.0)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def hallucination_stats(*, project: Project) -> HallucinationStats:
    """The panel's numbers; see the module docstring for every definition."""
    settings = project.kind_settings or {}
    categories = list(settings.get("categories") or DEFAULT_CATEGORIES)
    tally = _Tally()
    judgements = 0
    for _, group in groupby(_judgements_with_sources(project), key=lambda row: row[0]):
        rows = list(group)  # one task's judgements: a handful, bounded by the overlap
        judgements += len(rows)
        for _, payload, sources in rows:
            tally.judgement(payload, sources)
        for (_, a, sources), (_, b, _) in combinations(rows, 2):
            tally.pair(a, b, sources)
    # A category found in spans but since removed from the settings still shows, after the rest.
    seen = {c for patterns in tally.patterns.values() for p in patterns for c, _ in p}
    categories += sorted(seen - set(categories))
    distinct = _responses_per_source(project) if judgements else {}
    rows = []
    for source in sorted(tally.patterns):
        patterns = tally.patterns[source]
        expanded = (dict(p) for p, times in patterns.items() for _ in range(times))
        rates = category_rates(expanded, categories)
        judged = rates["responses"]
        spans = sum(sum(n for _, n in p) * times for p, times in patterns.items())
        rows.append(
            SourceRow(
                source=source,
                responses=distinct.get(source, 0),
                judged=judged,
                hallucinated=rates["hallucinated"],
                rates=[CategoryRate(c, rates["by_category"][c]) for c in categories],
                spans_per_response=_share(spans, judged),
                span_f1=_mean(tally.f1[source]),
                span_pairs=len(tally.f1[source]),
            )
        )
    pairs, agreeing = choice_agreement(project=project) if judgements else (0, 0)
    return HallucinationStats(
        categories=categories,
        judgements=judgements,
        sources=rows,
        agreement=Agreement(
            choice_pairs=pairs,
            choice_agreeing=agreeing,
            span_units=len(tally.overall_f1),
            span_f1=_mean(tally.overall_f1),
            span_exact_f1=_mean(tally.exact_f1),
        ),
    )


def category_rate_chart(stats: HallucinationStats) -> SafeString:
    """Grouped bars: for each category, the share of each source's judged responses with it."""
    return grouped_bar_chart(
        stats.categories,
        [
            Series(
                label=row.source,
                values=[rate.percent for rate in row.rates],
                notes=[
                    f"{row.source} · {rate.category}: {rate.percent:.1f}% of {row.judged} judged responses"
                    if rate.percent is not None
                    else ""
                    for rate in row.rates
                ],
            )
            for row in stats.sources
        ],
        title="Responses with a hallucination, by category",
        x_label="category",
        y_label="% of judged responses",
        unit="%",
        empty="no judgements yet",
    )


def hallucination_dashboard(project: Project) -> dict[str, Any]:
    """The context of `annotation/kinds/hallucination_stats.html` (the kind's `stats`)."""
    stats = hallucination_stats(project=project)
    return {"stats": stats, "chart": category_rate_chart(stats)}
