"""Pure statistics over hallucination payloads, for the project page (no database here).

The dashboard reads judgements through its selector and hands their payloads to these functions:
`hallucination_counts` per judgement, `category_rates` per response source (MMHal-Bench reports the
share of responses with a hallucination), and `span_f1` for the agreement between two annotators
of one task. The page shows the overlap F1: two annotators who mark "a red car" and "red car"
agree that the phrase hallucinates, and exact matching would count that as no agreement at all;
the exact F1 is there for a strict view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal


def hallucination_counts(payload: Mapping[str, Any]) -> dict[int, dict[str, int]]:
    """{response position: {category: spans}}, for the responses with at least one span."""
    counts: dict[int, dict[str, int]] = {}
    for span in payload.get("spans") or []:
        per = counts.setdefault(span["response"], {})
        per[span["category"]] = per.get(span["category"], 0) + 1
    return counts


def category_rates(
    responses: Iterable[Mapping[str, int]], categories: Sequence[str]
) -> dict[str, Any]:
    """MMHal-style rates over judged responses, each given as its {category: spans} (empty: none).

    Returns {"responses": n, "hallucinated": share with at least one span, "by_category":
    {category: share with at least one span of it}}; shares are None when n is 0.
    """
    n = 0
    hallucinated = 0
    with_category = dict.fromkeys(categories, 0)
    for counts in responses:
        n += 1
        if any(counts.values()):
            hallucinated += 1
        for category, spans in counts.items():
            if spans and category in with_category:
                with_category[category] += 1
    return {
        "responses": n,
        "hallucinated": hallucinated / n if n else None,
        "by_category": {c: (k / n if n else None) for c, k in with_category.items()},
    }


def _f1(a: set[Any], b: set[Any]) -> float | None:
    if not a and not b:
        return None
    if not a or not b:
        return 0.0
    both = len(a & b)
    return 2 * both / (len(a) + len(b))


def span_f1(
    a: Iterable[Mapping[str, Any]],
    b: Iterable[Mapping[str, Any]],
    *,
    mode: Literal["overlap", "exact"] = "overlap",
) -> float | None:
    """F1 between two annotators' spans on the same task; None when neither marked anything.

    "exact": spans match when response, start, end and category are all equal. "overlap": F1 over
    the marked code points (response, offset), categories aside, so partly overlapping marks earn
    partial credit. F1 is symmetric, so neither annotator is taken as the reference. None rather
    than 1.0 for two empty sets: averaging those in would make agreement look high on every task
    without hallucinations.
    """
    if mode == "exact":
        return _f1(
            {(s["response"], s["start"], s["end"], s["category"]) for s in a},
            {(s["response"], s["start"], s["end"], s["category"]) for s in b},
        )
    if mode == "overlap":
        # Interval arithmetic, not sets of offsets: a response may be 200,000 code points long.
        # A judgement's spans never overlap within a response, so the sums count each point once.
        a, b = list(a), list(b)
        size_a = sum(s["end"] - s["start"] for s in a)
        size_b = sum(s["end"] - s["start"] for s in b)
        if not size_a and not size_b:
            return None
        both = sum(
            max(0, min(x["end"], y["end"]) - max(x["start"], y["start"]))
            for x in a
            for y in b
            if x["response"] == y["response"]
        )
        return 2 * both / (size_a + size_b)
    raise ValueError(f"mode must be 'overlap' or 'exact', not {mode!r}")
