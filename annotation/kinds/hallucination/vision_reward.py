"""The hallucination loop's reward model that sees the image (loop setting `reward_model: vision`).

Issue 12's option for GPU workers beside Fact-RLHF's text ensemble: the reward model is a
vision-language model with a scalar head (training.vlm_reward, Bradley–Terry loss
L = −log σ(r(x, I, y_w) − r(x, I, y_l)), I the image), trained on the round's `vision_pairs` rows
with the project's stored images. What the round does with it:

- backbone: `vision_reward_backbone` when set (a hub id or a path inside a model root, checked
  again here as every reference is), else the base policy π_0, as LLaVA-RLHF starts its reward
  model from the SFT policy;
- members: one backbone with `ensemble_members` linear heads, each on its own bootstrap resample
  of the pairs (training.vlm_reward). The select stage's `disagreement` then orders pairs by the
  heads' spread, exactly as it does the text ensemble's members; the heads share the backbone,
  so that spread measures less uncertainty than independent models would (K full copies of a
  vision-language model are what a GPU worker cannot afford). One member: no spread, and pairs
  come in the candidates' order, as with a text ensemble of one;
- optimisation: VLMRewardConfig's defaults, except the loop's `reward` overrides the two configs
  share (learning rate, epochs, max steps, batch size, seed);
- held out: the same split by image as the text ensemble's (HallucinationLoop.reward_split), the
  same figures under `eval` (accuracy of the heads' mean, margin, ECE, each head's accuracy);
- baseline: `without_facts` is, as for the text option, one text reward model on the same pairs
  and split that reads neither facts nor image (the reward backbone, the `reward` overrides).
  The vision model reads no facts either, so its lead over this baseline is what seeing the
  image earns;
- published atomically (training.artifacts.publish_run, manifest kind "reward-vlm", every figure
  in the manifest, the baseline's too), so a retried attempt reads them back;
- scoring: the select stage's candidates, each after its prompt's question and with its prompt's
  stored image, one reward per head (`vision_candidate_rewards`); the loop dispatches on what the
  round published, so a setting changed mid-round cannot make a text ensemble be read as a VLM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...loop import model_reference_check
from ..pairwise_loop import ensemble_config
from .exports import vision_prompt

if TYPE_CHECKING:
    from ...loop import LoopSettings

# The `reward` overrides (annotation/loop.py OVERRIDES) that mean the same in VLMRewardConfig.
SHARED_OVERRIDES = ("learning_rate", "epochs", "max_steps", "batch_size", "seed")


@dataclass(frozen=True)
class VisionReward:
    """The published VLM reward run, with the blind baseline's figures in its metrics."""

    path: Path
    metrics: dict[str, Any]


def vision_config(loop: LoopSettings) -> Any:
    """The round's training.vlm_reward.VLMRewardConfig: one head per ensemble member."""
    from training.vlm_reward import VLMRewardConfig

    shared = {key: value for key, value in loop.reward.items() if key in SHARED_OVERRIDES}
    return VLMRewardConfig(heads=loop.ensemble_members, **shared)


def vision_backbone(loop: LoopSettings, project: Any) -> str:
    """The reference the vision reward model starts from: the setting, or π_0's."""
    from ...selectors.round_data import previous_policy  # the selectors import the kinds

    if loop.vision_reward_backbone:
        return model_reference_check(
            "vision_reward_backbone", loop.vision_reward_backbone, project_id=project.pk
        )
    # Registered, as a checked reference, when the project's first round started.
    return str(previous_policy(project, 1).artifact_path)


def train_vision_reward(
    train: list[dict[str, Any]],
    held_out: list[dict[str, Any]],
    *,
    loop: LoopSettings,
    project: Any,
    root: Path,
    name: str,
    progress: Callable[[Any], None],
    data_cursor: str,
) -> VisionReward:
    """The VLM reward model on `train` (vision_pairs rows), measured on `held_out`, and the blind
    text baseline on the same split, published together as `root/name`.

    Metrics: train_vlm_reward's (`eval.accuracy` is the round's reward accuracy), `reward_model`
    ("vision"), `backbone` and `without_facts` ({"accuracy", "eval"}).
    """
    from training.artifacts import publish_run
    from training.fact_reward import train_fact_reward
    from training.vlm_reward import PUBLISHED_KIND, train_vlm_reward

    from ...selectors.round_data import image_loader

    config = vision_config(loop)
    backbone = vision_backbone(loop, project)
    with publish_run(
        root,
        name,
        kind=PUBLISHED_KIND,
        config={**asdict(config), "backbone": backbone},
        data_cursor=data_cursor,
    ) as run:
        metrics = train_vlm_reward(
            train,
            config,
            backbone=backbone,
            load_image=image_loader(project),
            output_dir=run.path,
            eval_rows=held_out,
            progress=progress,
        )
        blind = train_fact_reward(
            train, ensemble_config(loop).member_config(0), with_facts=False, eval_rows=held_out
        )
        run.metrics = {
            **metrics,
            "reward_model": "vision",
            "backbone": backbone,
            "without_facts": {"accuracy": blind.accuracy, "eval": blind.metrics.get("eval")},
        }
    return VisionReward(path=Path(root) / name, metrics=run.metrics)


def _reply(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def vision_candidate_rewards(
    reward_path: str,
    prompts: Sequence[Any],
    candidates: Sequence[Sequence[str]],
    *,
    project: Any,
) -> Any:
    """`[heads, Σ_p k_p]` rewards of every candidate under the published VLM reward model, each
    read after its prompt's conversation and with its prompt's stored image."""
    from training.vlm_reward import VLMRewardModel, score_completions

    from ...selectors.round_data import image_loader

    model, processor = VLMRewardModel.load(reward_path, device="auto")
    rows = [
        {
            "images": [prompt.image],
            "prompt": vision_prompt(prompt.messages),
            "completion": _reply(text),
        }
        for prompt, texts in zip(prompts, candidates, strict=True)
        for text in texts
    ]
    return score_completions(model, processor, rows, image_loader(project))
