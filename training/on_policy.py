"""On-policy RLOO/GRPO with the reward ensemble as the reward function.

RLOO (Ahmadian et al. 2024) or GRPO (Shao et al. 2024) through TRL, the
ensemble's rewards aggregated by their mean, their worst member (WCO) or
mean − λ·std (UWO) (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.artifacts import ProgressCallback
from training.data import Message
from training.policy_base import (
    PolicyResult,
    PolicyTrainingConfig,
    load_causal_lm,
    lora_config,
    manifest_config,
    progress_callbacks,
    publish_model,
    summarise_metrics,
    train_quietly,
    training_run,
    trl_training_args,
)


@dataclass
class OnPolicyConfig(PolicyTrainingConfig):
    """RLOO/GRPO with the reward ensemble as the reward (Ahmadian et al. 2024; Shao et al. 2024)."""

    num_generations: int = field(
        default=4,
        metadata={"help": "Completions sampled per prompt per step (the RLOO/GRPO group size)."},
    )
    max_completion_length: int = field(
        default=128, metadata={"help": "Maximum tokens per sampled completion."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature during training."}
    )
    beta: float = field(
        default=0.05,
        metadata={
            "help": "KL coefficient towards the starting policy; 0 skips loading a reference model."
        },
    )
    uncertainty_lambda: float = field(
        default=0.5,
        metadata={
            "help": "λ of uncertainty-weighted aggregation: reward = mean - λ·std over members (Coste et al. 2024)."
        },
    )


Aggregation = Literal["mean", "worst", "uncertainty_weighted"]


def ensemble_reward_function(
    reward: Any, aggregation: Aggregation = "mean", lam: float = 0.5
) -> Callable[..., list[float | None]]:
    """Wrap a ``RewardEnsemble`` as a TRL reward function ``f(prompts, completions, **kw) -> list[float]``.

    ``mean`` is the plain ensemble; ``worst`` (WCO) and
    ``uncertainty_weighted`` (UWO: mean − λ·std) are the conservative
    objectives of Coste et al. 2024 that curb reward over-optimisation.
    TRL passes conversational prompts and completions (lists of messages).
    """
    if aggregation not in ("mean", "worst", "uncertainty_weighted"):
        raise ValueError(f"unknown aggregation {aggregation!r}")

    def ensemble_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float | None]:
        scores = reward.score(list(prompts), list(completions))
        if aggregation == "mean":
            values = scores.mean
        elif aggregation == "worst":
            values = scores.worst
        else:
            values = scores.uncertainty_weighted(lam)
        return [float(v) for v in values]

    ensemble_reward.__name__ = f"ensemble_{aggregation}"
    return ensemble_reward


def train_on_policy(
    prompts: Sequence[list[Message]],
    config: OnPolicyConfig,
    *,
    policy_ref: str | Path,
    reward: Any,
    algorithm: Literal["rloo", "grpo"] = "rloo",
    aggregation: Aggregation = "mean",
    root: str | Path,
    name: str,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> PolicyResult:
    """Optimise the policy online against the reward ensemble with TRL's RLOO or GRPO trainer.

    ``reward`` is a ``training.reward.RewardEnsemble`` (anything with
    ``score(prompts, completions) -> EnsembleScores``). The KL term (``beta``)
    is towards ``policy_ref``, TRL's initial-model reference for these
    trainers. Metrics: ``reward_first``/``reward_final`` (mean aggregated
    reward of the first and last logged steps), ``loss_final``, ``steps``,
    ``seconds``. Publishes ``root/name`` (kind ``policy-rloo``/``policy-grpo``).
    """
    from datasets import Dataset

    from training.models import load_tokenizer

    if algorithm == "rloo":
        from trl import RLOOConfig as TRLConfig
        from trl import RLOOTrainer as TRLTrainer
    elif algorithm == "grpo":
        from trl import GRPOConfig as TRLConfig  # type: ignore[assignment]
        from trl import GRPOTrainer as TRLTrainer  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected rloo or grpo")
    if not prompts:
        raise ValueError("no prompts")
    tokenizer = load_tokenizer(policy_ref)
    run_config = manifest_config(
        config,
        policy_ref=policy_ref,
        algorithm=algorithm,
        aggregation=aggregation,
        trainer=TRLTrainer.__name__,
    )
    with training_run(
        root,
        name,
        kind=f"policy-{algorithm}",
        config=run_config,
        data_cursor=data_cursor,
        parent=parent,
    ) as (
        run,
        scratch,
    ):
        args = trl_training_args(
            TRLConfig,
            config,
            scratch,
            num_generations=config.num_generations,
            max_completion_length=config.max_completion_length,
            temperature=config.temperature,
            beta=config.beta,
        )
        trainer = TRLTrainer(
            model=load_causal_lm(policy_ref),
            reward_funcs=ensemble_reward_function(reward, aggregation, config.uncertainty_lambda),
            args=args,
            train_dataset=Dataset.from_list([{"prompt": list(p)} for p in prompts]),
            processing_class=tokenizer,
            callbacks=progress_callbacks(progress, algorithm),
            peft_config=lora_config(config) if config.lora else None,
        )
        metrics = summarise_metrics(
            trainer, train_quietly(trainer), ("reward", "kl", "completions/mean_length")
        )
        rewards = [float(e["reward"]) for e in trainer.state.log_history if "reward" in e]
        if rewards:
            metrics["reward_first"], metrics["reward_final"] = rewards[0], rewards[-1]
        publish_model(trainer, tokenizer, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)
