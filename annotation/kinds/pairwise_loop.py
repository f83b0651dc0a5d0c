"""The online loop's pairwise parts: what a round trains on, what it asks, how it scores a round.

The round stages (annotation/services/round_stages.py) and the win-rate read
(annotation/selectors/rounds.py) are written for any kind whose judgements yield preference pairs;
what is particular to a kind lives in its hooks, reached through the kind's `loop` attribute:
the export shape trained on, how the reward model and the policy are trained, how a model answers
a prompt, what the reward model reads, how a selected pair becomes a task and how a blind
evaluation counts. `PairwiseLoop` holds the text loop's; the hallucination kind's
(`annotation/kinds/hallucination/loop.py`) override what images and facts change. A kind the loop
does not serve has `loop = None`.

`training` is imported inside the methods, at call time: it costs torch, which the web process
never pays, and tests replace its entry points on the module.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from ..loop import LoopSettings

Shown = TypeVar("Shown")  # a Response (services) or anything else placed in a task's slots


class Trained(Protocol):
    """What a training entry point returns: where it published, and its metrics."""

    path: Path
    metrics: dict[str, Any]


class PromptGenerator(Protocol):
    """A model that answers the loop's prompts: K samples for each, `[len(prompts)][k]` texts."""

    def generate(self, prompts: Sequence[Any], config: Any) -> list[list[str]]: ...


def ensemble_config(loop: LoopSettings) -> Any:
    """The reward ensemble a project's loop settings ask for (training.reward.EnsembleConfig)."""
    from training.reward import EnsembleConfig, RewardConfig

    return EnsembleConfig(
        members=loop.ensemble_members,
        reward=RewardConfig(**{"backbone": loop.reward_backbone, **loop.reward}),
    )


class _MessagesGenerator:
    """A text generator over the loop's prompts: each prompt is its conversation."""

    def __init__(self, inner: Any):
        self.inner = inner

    def generate(self, prompts: Sequence[Any], config: Any) -> list[list[str]]:
        return self.inner.generate([p.messages for p in prompts], config)


class PairwiseLoop:
    """Hooks of the pairwise kind: A/B judgements in, preference pairs out."""

    # The export shape the reward and policy stages train on: prompt/chosen/rejected rows
    # (annotation/selectors/export.py), the rows training.data parses.
    training_shape = "pairs"
    # Whether the training rows need their prompt's factual context (`context`) added.
    reads_context = False
    # Share of the human pairs held out to measure the reward model.
    reward_eval_fraction = 0.2
    # The export shape of annotators' corrections the policy also trains on ("" for none), turned
    # into pairs by `correction_pairs`.
    correction_shape = ""
    # Whether a new answer needs a simulated outcome before it is shown (the hindsight kind): the
    # select stage then simulates them before it makes tasks.
    simulates_outcomes = False
    # The loop settings' `reward_model` values the kind's reward stage can train.
    reward_models: tuple[str, ...] = ("text",)

    def training_pairs(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Rows of `training_shape` (human or model-labelled) as training.data preference pairs.

        Ties and both-bad answers carry no preference and are left out.
        """
        from training.data import parse_preference_rows  # keep `training` off import paths

        return parse_preference_rows(rows)

    def labelled_row(
        self,
        *,
        prompt: list[dict[str, Any]],
        texts: Sequence[str],
        label: Mapping[str, Any],
        image: Mapping[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A task the reward ensemble labelled (`label` is its `auto_label`), as a training row.

        `texts` are the task's responses in slot order; the label names the chosen slot. A text
        prompt has no `image` (its {"sha256", "format"}) or `context` to add.
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

    # --- training -----------------------------------------------------------------------------

    def reward_split(self, pairs: list[Any], *, seed: int) -> tuple[list[Any], list[Any]]:
        """(train, held out) for the reward model: whole prompts on one side, fixed by `seed`
        (the project's id), so a prompt stays on its side round after round."""
        from training.data import split_by_prompt

        return split_by_prompt(pairs, eval_fraction=self.reward_eval_fraction, seed=seed)

    def train_reward(
        self,
        train: list[Any],
        held_out: list[Any],
        *,
        loop: LoopSettings,
        project: Any,
        root: Path,
        name: str,
        progress: Callable[[Any], None],
        data_cursor: str,
    ) -> Trained:
        """Fits the Bradley–Terry reward ensemble and publishes it as `root/name`; its metrics'
        `eval.accuracy` (on `held_out`) is the round's reward accuracy."""
        import training.reward

        return training.reward.train_reward_ensemble(
            train,
            ensemble_config(loop),
            root=root,
            name=name,
            eval_pairs=held_out,
            progress=progress,
            data_cursor=data_cursor,
        )

    def train_policy(
        self,
        pairs: list[Any],
        config: Any,
        *,
        project: Any,
        policy_ref: str,
        reference_ref: str,
        root: Path,
        name: str,
        progress: Callable[[Any], None],
        data_cursor: str,
        parent: str,
    ) -> Trained:
        """π_r by DPO (`config`: training.policy.DPOConfig) from π_{r-1} (`policy_ref`) against
        the fixed π_0 (`reference_ref`), published as `root/name`."""
        from training.policy import train_dpo

        return train_dpo(
            pairs,
            config,
            policy_ref=policy_ref,
            reference_ref=reference_ref,
            root=root,
            name=name,
            progress=progress,
            data_cursor=data_cursor,
            parent=parent,
        )

    # --- generating and scoring ---------------------------------------------------------------

    def generator(self, model_ref: str, *, project: Any) -> PromptGenerator:
        """The model at `model_ref` answering the loop's prompts (annotation Prompt rows)."""
        import training.generation

        return _MessagesGenerator(training.generation.TransformersGenerator(model_ref))

    def reward_prompt(self, prompt: Any) -> list[dict[str, Any]]:
        """What the reward model reads before a candidate answer to `prompt`: its conversation."""
        return prompt.messages

    def candidate_rewards(
        self,
        reward_path: str,
        prompts: Sequence[Any],
        candidates: Sequence[Sequence[str]],
        *,
        project: Any,
    ) -> Any:
        """`[members, Σ_p k_p]` rewards (numpy) of every candidate answer, prompt by prompt in
        order, under the round's published reward model at `reward_path` (each member's row: the
        select stage orders pairs by their disagreement and labels by their mean)."""
        from training.reward import RewardEnsemble

        ensemble = RewardEnsemble.load(reward_path)
        read = [
            self.reward_prompt(prompt)
            for prompt, texts in zip(prompts, candidates, strict=True)
            for _ in texts
        ]
        return ensemble.score(read, [text for texts in candidates for text in texts]).members
