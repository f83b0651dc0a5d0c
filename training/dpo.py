"""Iterative DPO against a fixed reference (the default policy trainer of a round).

Rafailov et al. 2023, "Direct Preference Optimization", with the iterative
recipe of Dong et al. 2024, "RLHF Workflow: From Reward Modeling to Online
RLHF": round r warm-starts from π_{r-1} (``policy_ref``) and is regularised
towards a FIXED reference π_0 (``reference_ref``), not towards π_{r-1}.
``loss="ipo"`` swaps the logistic loss for IPO's squared one (Azar et al.
2023). How LoRA rounds find that reference: ``training.policy``'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from training.artifacts import ProgressCallback
from training.data import PreferencePair
from training.policy_base import (
    PolicyResult,
    PolicyTrainingConfig,
    load_causal_lm,
    lora_config,
    manifest_config,
    progress_callbacks,
    publish_model,
    same_model,
    summarise_metrics,
    train_quietly,
    training_run,
    trl_training_args,
)


@dataclass
class DPOConfig(PolicyTrainingConfig):
    """Iterative DPO against a fixed reference (see the module docstring)."""

    loss: Literal["sigmoid", "ipo"] = field(
        default="sigmoid",
        metadata={
            "help": "sigmoid: DPO's -log σ(β·Δ) (Rafailov et al. 2023); ipo: (Δ - 1/(2β))² (Azar et al. 2023)."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={
            "min": 0.001,
            "max": 100,
            "help": "Strength of the pull towards the reference (IPO's τ). Higher = stay closer to π_0.",
        },
    )


def _pair_row(pair: PreferencePair) -> dict[str, Any]:
    return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}


def train_dpo(
    pairs: Sequence[PreferencePair],
    config: DPOConfig,
    *,
    policy_ref: str | Path,
    reference_ref: str | Path,
    root: str | Path,
    name: str,
    eval_pairs: Sequence[PreferencePair] | None = None,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> PolicyResult:
    """Train π_r from π_{r-1} (``policy_ref``) on preference pairs with DPO/IPO against π_0 (``reference_ref``).

    Ties are skipped (DPO has no tie term). Metrics: ``loss_first``,
    ``loss_final``, TRL's last ``rewards/accuracies``, ``rewards/margins``,
    ``logps/*``, ``steps``, ``seconds``; with ``eval_pairs`` also ``eval_*``.
    Publishes ``root/name`` (kind ``policy-dpo``) atomically.
    """
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from training.models import load_tokenizer

    train_rows = [_pair_row(pair) for pair in pairs if not pair.tie]
    if not train_rows:
        raise ValueError("no untied preference pairs to train on")
    tokenizer = load_tokenizer(policy_ref)
    run_config = manifest_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="trl.DPOTrainer"
    )
    with training_run(
        root, name, kind="policy-dpo", config=run_config, data_cursor=data_cursor, parent=parent
    ) as (
        run,
        scratch,
    ):
        args = trl_training_args(
            TRLDPOConfig,
            config,
            scratch,
            loss_type=[config.loss],
            beta=config.beta,
            max_length=config.max_length,
        )
        model = load_causal_lm(policy_ref)
        same = same_model(policy_ref, reference_ref)
        # A fresh LoRA adapter on π_0 needs no second model: disabling it gives π_0.
        ref_model = None if (config.lora and same) else load_causal_lm(reference_ref)
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list([_pair_row(p) for p in eval_pairs if not p.tie])
            if eval_pairs
            else None,
            processing_class=tokenizer,
            callbacks=progress_callbacks(progress, "dpo"),
            peft_config=lora_config(config) if config.lora else None,
        )
        if len(cast(Sized, trainer.train_dataset)) == 0:
            # TRL drops a pair whose prompt leaves no room for its answer within max_length;
            # its own error ("num_samples=0") would not say which setting to change.
            raise ValueError(
                f"all {len(train_rows)} pairs were dropped: their prompts fill max_length "
                f"({config.max_length} tokens) and leave no room for the answers; raise "
                "the policy's max_length"
            )
        metrics = summarise_metrics(trainer, train_quietly(trainer), ("rewards/", "logps/"))
        if eval_pairs:
            evaluation = trainer.evaluate()
            metrics.update({k: float(v) for k, v in evaluation.items() if k.startswith("eval_")})
        metrics["pairs"] = len(train_rows)
        publish_model(trainer, tokenizer, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)
