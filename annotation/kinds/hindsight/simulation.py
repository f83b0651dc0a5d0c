"""The hindsight kind's simulated annotator: the marketplace's oracle customer (training.marketplace).

`simulate_annotators` finds it through the kind's `oracle_annotator`. It judges from what the
REST API shows an annotator and nothing else (no database read, no hidden facts), so it is a fair
stand-in for a person playing the customer:

- foresight, from the task as leased: the customer's message (requirement, budget, prices) and
  the replies; it believes what each reply claims and rates what it expects (RLHS's foresight
  feedback, the one a reply can game with a false claim);
- hindsight, from GET /api/v1/assignments/{id} once its foresight row is stored: each reply's
  outcome, which says what the bought option turned out to be; it rates what it got.

Both phases give a 1..5 rating per reply and, with two, the reply that satisfied it more (by the
utility behind the ratings, so a tie of rounded ratings can still be a choice). It judges projects
whose prompts are marketplace customers' messages (`training.marketplace.import_lines`) and whose
outcomes are `simulate_outcome`'s sentences, imported or simulated by that world model; any other
task is an InvalidInput naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training import marketplace

from ...errors import InvalidInput
from ...models import Project
from .payload import PHASES


def _invalid(task_id: Any, problem: str) -> InvalidInput:
    return InvalidInput(
        f"task {task_id}: {problem}, so the marketplace customer cannot judge it (simulated "
        "annotators need a project imported from training.marketplace.import_lines)",
        errors=[{"field": "task", "message": f"task {task_id}: {problem}"}],
    )


def customer_view(task: Mapping[str, Any]) -> marketplace.CustomerView:
    """The customer's side of the task's conversation: its last user message."""
    prompt = task.get("prompt") or []
    said = [
        m.get("content", "") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    try:
        return marketplace.CustomerView.parse(said[-1] if said else "")
    except ValueError:
        raise _invalid(task.get("id"), "its prompt is no marketplace customer's message") from None


def phase_due(task: Mapping[str, Any]) -> str:
    """The phase to answer: the one the server says is due (`phase` of the lease or the
    assignment), else foresight unless an outcome is already shown."""
    phase = task.get("phase")
    if phase in PHASES:
        return phase
    shown = any("outcome" in r for r in task.get("responses", []))
    return PHASES[1] if shown else PHASES[0]


def judge(task: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """The customer's judgement payload of one phase for a task as the API shows it."""
    responses = task.get("responses") or []
    if phase == PHASES[0]:
        view = customer_view(task)
        utilities = [marketplace.foresight_utility(view, r["text"]) for r in responses]
        reason = "what I expect, taking the assistant at its word"
    else:
        utilities = []
        for position, response in enumerate(responses):
            outcome = response.get("outcome") or ""
            try:
                utilities.append(marketplace.hindsight_utility(outcome))
            except ValueError:
                raise _invalid(
                    task.get("id"),
                    f"response {position + 1} shows no outcome of the marketplace's world model"
                    + (" yet" if not outcome else ""),
                ) from None
        reason = "what I got"
    payload: dict[str, Any] = {
        "phase": phase,
        "ratings": [marketplace.satisfaction(u) for u in utilities],
        "reason": reason,
    }
    if len(utilities) == 2:
        payload["choice"] = marketplace.prefer(*utilities)
    return payload


class MarketplaceCustomer:
    """The simulated annotator of one hindsight project (shared by the command's threads: it
    holds no per-annotator state). It takes no options."""

    def __init__(self, *, project: Project, options: Mapping[str, Any]):
        self.project_id = project.pk

    def answer(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The payload for the phase due: `task` is the lease's or the assignment's "task", with
        the body's "phase" added where the caller has it."""
        return judge(task, phase_due(task))

    def report(self) -> list[str]:
        """The project page's figures as text: per response source, paired judgements, flip
        rate, mean satisfaction in each phase and agreement of each phase's choices with the
        imported true utility."""
        from .stats import hindsight_stats

        stats = hindsight_stats(project=Project.objects.get(pk=self.project_id))
        lines = [
            f"{'source':<24} {'paired':>6} {'flips':>6} {'fore sat':>8} {'hind sat':>8}"
            f" {'fore=utility':>12} {'hind=utility':>12}"
        ]
        for name, tally in [("all", stats.overall)] + [(r.name, r.tally) for r in stats.by_source]:
            lines.append(
                f"{name[:24]:<24} {tally.paired:>6} {_fmt(tally.flip_rate):>6}"
                f" {_fmt(tally.foresight.mean_satisfaction):>8}"
                f" {_fmt(tally.hindsight.mean_satisfaction):>8}"
                f" {_fmt(tally.foresight.utility_agreement):>12}"
                f" {_fmt(tally.hindsight.utility_agreement):>12}"
            )
        return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
