"""The online loop of the hallucination kind: a vision-language policy, a reward model that reads facts.

The round is the pairwise one (annotation/services/round_stages.py): reward, policy, generate,
select, then blind π_r-vs-π_{r-1} evaluation tasks. What images and facts change lives here
(issue 12; LLaVA-RLHF, Sun et al. 2023; RLHF-V, Yu et al. 2024):

- the rows trained on are the `vision_pairs` export (image, question, less and more hallucinated
  answer), each with its prompt's factual context (captions, reference answer) added by
  annotation/selectors/round_data.py;
- reward: Fact-RLHF. The ensemble reads the facts beside the question (training.fact_reward's
  `fact_pairs`), so it can tell a hallucinated claim from a true one; the held-out split is by
  image. The same pairs without the facts train one blind model (`train_fact_reward`), whose
  held-out accuracy the round records beside the ensemble's (`without_facts`): the facts must
  earn their place;
- policy: from π_{r-1} against the fixed π_0, the images opened from the project's storage;
  vision DPO through TRL (training.vision_dpo), or dense DPO when corrections are among the
  round's pairs (below);
- generation: the policy sees each prompt's image (training.vision_generation);
- a blind evaluation counts as the annotators' verdict says: the answer that hallucinates less
  wins, after a tie the more helpful one, a double tie is half a win.

- reward, the vision option (loop setting `reward_model: "vision"`, for GPU workers): instead of
  the text ensemble, a reward model on a vision-language backbone that sees the image, one head
  per ensemble member, on the same split by image, beside the same blind baseline; the select
  stage then scores each candidate with its prompt's image. See vision_reward.py.

- corrections (RLHF-V's fine-grained feedback, the `corrections` export) join the policy's pairs:
  the corrected answer chosen over the original, marked `"correction": true`. A round with any
  trains by dense DPO (training.vision_dense_dpo: the tokens a correction changed weigh γ = 3,
  every other token of every pair 1, so the human and model-labelled pairs get plain DPO's
  loss); γ is not among the policy overrides a manager may set (annotation/loop.py), so it is
  RLHF-V's default. An IPO project keeps TRL's IPO loss: dense DPO is the sigmoid loss only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pairwise_loop import PairwiseLoop, PromptGenerator, Trained, ensemble_config
from .exports import image_path, vision_prompt

if TYPE_CHECKING:
    from ...loop import LoopSettings

# Winners a judgement's agreement key names (payload.agreement_key); "tie" names none.
_WINNERS = {"A": "A", "B": "B", "tie:A": "A", "tie:B": "B"}


@dataclass(frozen=True)
class FactReward:
    """The published Fact-RLHF ensemble, with the blind baseline's figures in its metrics."""

    path: Path
    metrics: dict[str, Any]


class _VisionGenerator:
    """A vision-language model answering the loop's prompts, each with its stored image."""

    def __init__(self, model_ref: str, images: Callable[[str], Any]):
        from training.vision_generation import make_vision_generator

        self.inner = make_vision_generator("transformers", model_ref)
        self.images = images

    def generate(self, prompts: Sequence[Any], config: Any) -> list[list[str]]:
        from training.vision_generation import VisionPrompt

        return self.inner.generate(
            [
                VisionPrompt(
                    messages=prompt.messages,
                    images=[self.images(prompt.image)] if prompt.image else [],
                )
                for prompt in prompts
            ],
            config,
        )


def _reply(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def dense_config(config: Any) -> Any:
    """The round's `training.dpo.DPOConfig` as a `training.dense_dpo.DenseDPOConfig`: every shared
    field (optimisation, precision, LoRA, β) carried over, γ from the config when it has one."""
    from dataclasses import fields

    from training.dense_dpo import DenseDPOConfig

    names = {f.name for f in fields(DenseDPOConfig)}
    return DenseDPOConfig(
        **{f.name: getattr(config, f.name) for f in fields(config) if f.name in names}
    )


class HallucinationLoop(PairwiseLoop):
    """Hooks of the hallucination kind: images and facts in, a less hallucinating policy out.

    Task slots, model labels of the unasked pairs and blind sides are the pairwise ones.
    """

    training_shape = "vision_pairs"
    reads_context = True
    # As training.fact_reward's default: a quarter of the images held out.
    reward_eval_fraction = 0.25
    correction_shape = "corrections"
    reward_models = ("text", "vision")

    def training_pairs(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`vision_pairs` rows (with `context`) as they are: the reward reads their facts and
        text, vision DPO their images. A model-labelled row whose prompt has no stored image
        cannot be trained on by a vision policy and is left out."""
        return [row for row in rows if row.get("images")]

    def correction_pairs(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`corrections` rows as `vision_pairs` rows: the annotator's corrected answer chosen,
        the original rejected. A correction that changes nothing (or empties the answer) carries
        no preference and is left out. `correction` marks the row for dense DPO's weights (TRL's
        path reads only images, prompt, chosen and rejected: training.vision_dpo.vision_rows)."""
        return [
            {
                "images": [row["image"]],
                "prompt": vision_prompt(row["prompt"]),
                "chosen": _reply(row["chosen"]),
                "rejected": _reply(row["rejected"]),
                "correction": True,
            }
            for row in rows
            if row.get("image")
            and row["chosen"].strip()
            and row["chosen"].strip() != row["rejected"].strip()
        ]

    def labelled_row(
        self,
        *,
        prompt: list[dict[str, Any]],
        texts: Sequence[str],
        label: Mapping[str, Any],
        image: Mapping[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A task the reward ensemble labelled, as a `vision_pairs` row with its facts."""
        first, second = texts
        chosen, rejected = (first, second) if label["choice"] == "A" else (second, first)
        path = image_path(dict(image)) if image else None
        return {
            "images": [path] if path else [],
            "prompt": vision_prompt(prompt),
            "chosen": _reply(chosen),
            "rejected": _reply(rejected),
            "context": dict(context or {}),
        }

    def evaluation_score(self, answer: str, *, new_position: int) -> float:
        """1 when π_r's answer hallucinates less (or, as faithful, is more helpful), 0 when
        π_{r-1}'s does, ½ after a double tie."""
        won = _WINNERS.get(answer)
        if won is None:
            return 0.5
        return 1.0 if won == "AB"[new_position] else 0.0

    # --- training -----------------------------------------------------------------------------

    def reward_split(
        self, pairs: list[dict[str, Any]], *, seed: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(train, held out) by image: every pair of an image on one side, so the held-out
        accuracy is measured on images the reward model never saw."""
        from training.data import split_by_prompt

        keyed = [{"prompt": row["images"][0], "row": row} for row in pairs]
        train, held_out = split_by_prompt(keyed, eval_fraction=self.reward_eval_fraction, seed=seed)
        return [item["row"] for item in train], [item["row"] for item in held_out]

    def train_reward(
        self,
        train: list[dict[str, Any]],
        held_out: list[dict[str, Any]],
        *,
        loop: LoopSettings,
        project: Any,
        root: Path,
        name: str,
        progress: Callable[[Any], None],
        data_cursor: str,
    ) -> Trained:
        """The Fact-RLHF ensemble on the rows with their facts, published as `root/name`, and a
        blind model on the same split without them (discarded once scored); with the loop's
        `reward_model` "vision", the reward model that sees the image instead (vision_reward.py).

        Metrics: the ensemble's (`eval.accuracy` is the round's reward accuracy) and
        `without_facts` ({"accuracy", "eval"}: the blind model's held-out figures). An attempt
        that finds the ensemble already published reads its manifest, which does not hold the
        blind figures: they are then missing, not made up.
        """
        if loop.reward_model == "vision":
            from .vision_reward import train_vision_reward

            return train_vision_reward(
                train,
                held_out,
                loop=loop,
                project=project,
                root=root,
                name=name,
                progress=progress,
                data_cursor=data_cursor,
            )
        import training.reward
        from training.fact_reward import fact_pairs, train_fact_reward

        config = ensemble_config(loop)
        published = training.reward.train_reward_ensemble(
            fact_pairs(train),
            config,
            root=root,
            name=name,
            eval_pairs=fact_pairs(held_out),
            progress=progress,
            data_cursor=data_cursor,
        )
        blind = train_fact_reward(
            train, config.member_config(0), with_facts=False, eval_rows=held_out
        )
        metrics = {
            **published.metrics,
            "without_facts": {"accuracy": blind.accuracy, "eval": blind.metrics.get("eval")},
        }
        return FactReward(path=Path(published.path), metrics=metrics)

    def train_policy(
        self,
        pairs: list[dict[str, Any]],
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
        """π_r from π_{r-1} against the fixed π_0, on the rows' stored images: dense DPO when a
        row is a correction (and the loss is DPO's sigmoid), TRL's vision DPO otherwise."""
        from training.vision_dense_dpo import train_vision_dense_dpo
        from training.vision_dpo import train_vision_dpo

        from ...selectors.round_data import image_loader  # the selectors import the kinds

        common: dict[str, Any] = {
            "images": image_loader(project),
            "policy_ref": policy_ref,
            "reference_ref": reference_ref,
            "root": root,
            "name": name,
            "progress": progress,
            "data_cursor": data_cursor,
            "parent": parent,
        }
        if config.loss == "sigmoid" and any(row.get("correction") is True for row in pairs):
            return train_vision_dense_dpo(pairs, dense_config(config), **common)
        return train_vision_dpo(pairs, config, **common)

    # --- generating and scoring ---------------------------------------------------------------

    def generator(self, model_ref: str, *, project: Any) -> PromptGenerator:
        """The vision-language model at `model_ref`, shown each prompt's image."""
        from ...selectors.round_data import image_loader

        return _VisionGenerator(model_ref, image_loader(project))

    def reward_prompt(self, prompt: Any) -> list[dict[str, Any]]:
        """The conversation up to its last question, that question preceded by the image's facts
        (training.fact_reward.fact_prompt): what the Fact-RLHF ensemble was trained to read."""
        from training.fact_reward import fact_prompt

        turns = [{"role": m["role"], "content": m["content"]} for m in prompt.messages]
        last = max(i for i, m in enumerate(turns) if m["role"] == "user")
        turns = turns[: last + 1]
        turns[last] = {
            "role": "user",
            "content": fact_prompt(turns[last]["content"], prompt.context or None),
        }
        return turns

    def candidate_rewards(
        self,
        reward_path: str,
        prompts: Sequence[Any],
        candidates: Sequence[Sequence[str]],
        *,
        project: Any,
    ) -> Any:
        """The text ensemble's rewards (the question after the facts, `reward_prompt`) or, when
        the round published a VLM reward, each head's with the prompt's image."""
        from training.vlm_reward import is_vlm_reward

        if is_vlm_reward(reward_path):
            from .vision_reward import vision_candidate_rewards

            return vision_candidate_rewards(reward_path, prompts, candidates, project=project)
        return super().candidate_rewards(reward_path, prompts, candidates, project=project)
