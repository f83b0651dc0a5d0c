"""What every kind's loop-dashboard panel holds per policy (Kind.round_stats): a model version of
the loop's policies with the kind's figures held out (the blind evaluation tasks) and over all
tasks, and a table row pairing them with the round's human win rate. The figures themselves are
the kind's (`ScopeFigures` in each kind's round_stats.py), anything with `as_json()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Figures(Protocol):
    def as_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PolicyFigures:
    """One model version of the loop's policies, with its figures held out and over all tasks."""

    round: int
    model_version: int
    name: str
    held_out: Figures
    all_tasks: Figures

    def as_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "name": self.name,
            "round": self.round,
            "held_out": self.held_out.as_json(),
            "all_tasks": self.all_tasks.as_json(),
        }


@dataclass(frozen=True)
class PanelLine:
    """A row of the dashboard's table: a policy, its figures and its round's human win rate."""

    policy: PolicyFigures
    win_rate: str
