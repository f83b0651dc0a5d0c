"""KTO on unpaired desirable/undesirable labels, for rating feedback.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization", through TRL's ``KTOTrainer``; the reference is handled as for
DPO (``training.policy``'s docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.artifacts import ProgressCallback
from training.data import UnpairedExample
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
class KTOConfig(PolicyTrainingConfig):
    """KTO on unpaired labels (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization")."""

    beta: float = field(
        default=0.1, metadata={"help": "Strength of the pull towards the reference."}
    )
    desirable_weight: float = field(
        default=1.0,
        metadata={
            "help": "Loss weight of desirable examples; raise it when they are rarer (paper: keep λ_D·n_D/λ_U·n_U in [1, 4/3])."
        },
    )
    undesirable_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of undesirable examples."}
    )


def train_kto(
    examples: Sequence[UnpairedExample],
    config: KTOConfig,
    *,
    policy_ref: str | Path,
    reference_ref: str | Path,
    root: str | Path,
    name: str,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> PolicyResult:
    """Train a policy on desirable/undesirable completions with TRL's ``KTOTrainer``.

    KTO estimates its KL baseline from mismatched pairs within a batch, so TRL
    samples sequentially; the examples are shuffled here, seeded, so batches
    still mix prompts and labels. ``batch_size`` must be > 1 for the same reason.
    Publishes ``root/name`` (kind ``policy-kto``).
    """
    import random

    from datasets import Dataset
    from trl import KTOConfig as TRLKTOConfig
    from trl import KTOTrainer

    from training.models import load_tokenizer

    if config.batch_size < 2:
        raise ValueError(
            "KTO needs batch_size >= 2: its KL estimate pairs each prompt with another's completion"
        )
    labels = {example.label for example in examples}
    if labels != {True, False}:
        raise ValueError(
            "KTO needs both desirable (label=true) and undesirable (label=false) examples"
        )
    rows = [{"prompt": e.prompt, "completion": e.completion, "label": e.label} for e in examples]
    random.Random(config.seed).shuffle(rows)
    tokenizer = load_tokenizer(policy_ref)
    run_config = manifest_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="trl.KTOTrainer"
    )
    with training_run(
        root, name, kind="policy-kto", config=run_config, data_cursor=data_cursor, parent=parent
    ) as (
        run,
        scratch,
    ):
        args = trl_training_args(
            TRLKTOConfig,
            config,
            scratch,
            beta=config.beta,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
            max_length=config.max_length,
        )
        same = same_model(policy_ref, reference_ref)
        trainer = KTOTrainer(
            model=load_causal_lm(policy_ref),
            ref_model=None if (config.lora and same) else load_causal_lm(reference_ref),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=progress_callbacks(progress, "kto"),
            peft_config=lora_config(config) if config.lora else None,
        )
        metrics = summarise_metrics(trainer, train_quietly(trainer), ("rewards/", "logps/", "kl"))
        metrics["examples"] = len(rows)
        publish_model(trainer, tokenizer, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)
