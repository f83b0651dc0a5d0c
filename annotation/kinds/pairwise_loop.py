"""The online loop's pairwise parts: what a round trains on, what it asks, how it scores a round.

The round stages (annotation/services/round_stages.py) and the win-rate read
(annotation/selectors/rounds.py) are written for any kind whose judgements yield preference pairs;
what is pairwise about them lives here, reached through the kind's `loop` attribute. A kind the
loop does not serve has `loop = None`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

Shown = TypeVar("Shown")  # a Response (services) or anything else placed in a task's slots


class PairwiseLoop:
    """Hooks of the pairwise kind: A/B judgements in, preference pairs out."""

    # The export shape the reward and policy stages train on: prompt/chosen/rejected rows
    # (annotation/selectors/export.py), the rows training.data parses.
    training_shape = "pairs"

    def training_pairs(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Rows of `training_shape` (human or model-labelled) as training.data preference pairs.

        Ties and both-bad answers carry no preference and are left out.
        """
        from training.data import parse_preference_rows  # keep `training` off import paths

        return parse_preference_rows(rows)

    def labelled_row(
        self, *, prompt: list[dict[str, Any]], texts: Sequence[str], label: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A task the reward ensemble labelled (`label` is its `auto_label`), as a training row.

        `texts` are the task's responses in slot order; the label names the chosen slot.
        """
        first, second = texts
        chosen, rejected = (first, second) if label["choice"] == "A" else (second, first)
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    def labelled_task(
        self,
        first: Shown,
        second: Shown,
        *,
        rewards: tuple[float, float],
        reward_version: int | None,
    ) -> tuple[list[Shown], dict[str, Any]]:
        """A selected pair the ensemble labels: its slots in order and the task's `auto_label`.

        `rewards` are the ensemble's mean rewards of `first` and `second`. Its favourite is A:
        `random` selection does not orient its pairs, and a label must never contradict the
        scores it comes from.
        """
        shown = [first, second]
        if rewards[1] > rewards[0]:
            shown.reverse()
        label = {
            "choice": "A",
            "margin": float(abs(rewards[0] - rewards[1])),
            "reward_version": reward_version,
        }
        return shown, label

    def shown_order(self, responses: Sequence[Shown], *, rng: random.Random) -> list[Shown]:
        """The slots of a task humans judge: in random order, so that the position tells them
        neither the ensemble's favourite nor, in a blind evaluation, which model wrote what."""
        shown = list(responses)
        rng.shuffle(shown)
        return shown

    def evaluation_score(self, answer: str, *, new_position: int) -> float:
        """One blind evaluation judgement as a win of π_r: 1 when its answer was chosen, 0 when
        π_{r-1}'s was, ½ otherwise (tie or both bad)."""
        if answer == "AB"[new_position]:
            return 1.0
        return 0.0 if answer in ("A", "B") else 0.5
