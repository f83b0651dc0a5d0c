"""Bradley–Terry reward models and reward-model ensembles.

One member is trained by TRL's ``RewardTrainer`` on pairs we tokenize
ourselves (so decoder backbones with a chat template and encoder backbones
such as MiniLM, which has no EOS token and no template, take the same path).
An ensemble is K members that differ in seed and data order, published as one
atomic run; its spread across members is the disagreement signal that orders
the annotation queue (DESIGN.md, "The online loop", step 3) and its
conservative aggregations follow Coste et al. 2024, "Reward Model Ensembles
Help Mitigate Overoptimization".
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.artifacts import ProgressCallback, ProgressReporter, publish_run
from training.data import PreferencePair
from training.models import load_reward_backbone, load_tokenizer, minilm_path
from training.reward_encoding import ENCODING_FILE, Encoding, encode
from training.reward_ensemble import EnsembleScores, RewardEnsemble, evaluate_pairs

__all__ = [
    "ENCODING_FILE",
    "EnsembleConfig",
    "EnsembleResult",
    "EnsembleScores",
    "RewardConfig",
    "RewardEnsemble",
    "RewardResult",
    "cpu_has_fast_bf16",
    "evaluate_pairs",
    "resolve_backbone",
    "train_reward_ensemble",
    "train_reward_model",
]


@dataclass
class RewardConfig:
    """One Bradley–Terry reward model (Ouyang et al. 2022, Eq. 1) trained with TRL."""

    backbone: str = field(
        default="minilm",
        metadata={
            "help": "Model id or local path loaded as a one-output sequence classifier; 'minilm' is the "
            "bundled all-MiniLM-L6-v2 encoder."
        },
    )
    epochs: float = field(
        default=1.0, metadata={"min": 0, "max": 1000, "help": "Passes over the training pairs."}
    )
    max_steps: int = field(
        default=-1,
        metadata={
            "min": -1,
            "max": 1000000,
            "help": "If > 0, stop after this many optimizer steps (overrides epochs).",
        },
    )
    learning_rate: float = field(
        default=3e-5, metadata={"min": 0, "max": 1, "help": "Peak AdamW learning rate."}
    )
    warmup: float = field(
        default=0.1,
        metadata={
            "min": 0,
            "max": 1,
            "help": "Linear warmup, as a fraction of all steps, before linear decay.",
        },
    )
    weight_decay: float = field(
        default=0.0, metadata={"min": 0, "max": 1, "help": "AdamW weight decay."}
    )
    batch_size: int = field(
        default=16,
        metadata={
            "min": 1,
            "max": 4096,
            "help": "Pairs per optimizer step (each pair is two sequences).",
        },
    )
    max_length: int = field(
        default=384,
        metadata={
            "min": 8,
            "max": 32768,
            "help": "Tokens kept per prompt+completion sequence; longer ones are truncated.",
        },
    )
    truncation_side: Literal["left", "right"] = field(
        default="left",
        metadata={
            "help": "Which end to cut long sequences from. 'left' drops the oldest turns and keeps the "
            "final replies, which are where chosen and rejected differ."
        },
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "min": 1,
            "max": 32768,
            "help": "If set, long sequences keep the completion's first tokens (at least this many) and "
            "the end of the prompt, instead of one cut on truncation_side.",
        },
    )
    use_margin: bool = field(
        default=True,
        metadata={
            "help": "Subtract each pair's margin inside the loss, −log σ(r⁺ − r⁻ − m) (Llama 2, Eq. 2); "
            "pairs without one get m = 0."
        },
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={
            "min": 0,
            "max": 10,
            "help": "If set, adds coef · mean((r⁺ + r⁻)²) to keep rewards centred near 0 (Eisenstein et al. "
            "2023); 0.01 is the usual value.",
        },
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={
            "help": "Keep the input embeddings fixed: faster steps, less overfitting on small data."
        },
    )
    freeze_layers: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": 1000,
            "help": "Keep the lowest N transformer blocks fixed (0 trains all).",
        },
    )
    mean_pooling: bool | None = field(
        default=None,
        metadata={
            "help": "Encoders only: score the mean of the final hidden states instead of the first "
            "token's pooled output. Unset follows the checkpoint: on for sentence-transformers "
            "checkpoints that declare mean pooling (the bundled MiniLM), off otherwise."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": 4294967295,
            "help": "Seed for the new head's initialisation, dropout and data order.",
        },
    )
    cpu_threads: int = field(
        default=2,
        metadata={
            "min": 1,
            "max": 256,
            "help": "torch threads when training on CPU (the CI machines have 2 cores).",
        },
    )
    bf16: bool = field(
        default=False,
        metadata={
            "help": "Train in bf16 mixed precision: on a GPU with bf16 support, or on a CPU with "
            "AMX or AVX512-BF16 (measured 1.4x faster for MiniLM on such a CPU)."
        },
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch pairs of similar length together (shuffled within groups of 50 batches) "
            "so less of each batch is padding. Faster, but each batch then holds one kind of "
            "conversation: on HH-RLHF it cut CPU time by a third and held-out accuracy by 0.03."
        },
    )
    logging_steps: int = field(
        default=5, metadata={"min": 1, "max": 1000000, "help": "Optimizer steps between loss logs."}
    )


@dataclass
class EnsembleConfig:
    """K reward models that differ in seed (head initialisation, data order) and optionally in data.

    Coste et al. 2024 train members from the same pretrained model with
    different seeds; member k uses seed ``reward.seed + k``. With ``bootstrap``
    each member also fits its own resample of the pairs (query by bagging, Abe &
    Mamitsuka 1998).
    """

    members: int = field(default=3, metadata={"help": "Ensemble size K."})
    bootstrap: bool = field(
        default=False,
        metadata={
            "help": "Train each member on a bootstrap resample of the pairs (drawn with replacement, "
            "seeded by the member's seed). On small data seed-only members share one fit, so their "
            "spread is mostly head-initialisation noise; resampling makes disagreement track what "
            "the labels leave undetermined, which is what disagreement-first selection needs."
        },
    )
    lambda_std: float = field(
        default=1.0,
        metadata={
            "help": "λ of the uncertainty-weighted reward mean − λ·std, used when the ensemble scores "
            "for optimisation (Coste et al. 2024, UWO)."
        },
    )
    reward: RewardConfig = field(
        default_factory=RewardConfig, metadata={"help": "How each member is trained."}
    )

    def member_config(self, k: int) -> RewardConfig:
        return replace(self.reward, seed=self.reward.seed + k)

    def member_pairs(self, k: int, pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
        """The pairs member k trains on: all of them, or its seeded bootstrap resample."""
        if not self.bootstrap:
            return list(pairs)
        rng = np.random.default_rng(self.member_config(k).seed)
        return [pairs[i] for i in rng.integers(0, len(pairs), size=len(pairs))]


@dataclass(frozen=True)
class RewardResult:
    path: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class EnsembleResult:
    path: Path
    metrics: dict[str, Any]


def resolve_backbone(backbone: str) -> str:
    return str(minilm_path()) if backbone == "minilm" else backbone


def _freeze(model: Any, config: RewardConfig) -> None:
    if config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if config.freeze_layers:
        base = model.base_model
        blocks = getattr(base, "layers", None)
        if blocks is None:
            blocks = base.encoder.layer
        for block in blocks[: config.freeze_layers]:
            block.requires_grad_(False)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AMX or AVX512-BF16) through oneDNN.

    Where it does not, bf16 autocast on CPU is emulated and slower than fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _set_threads(config: RewardConfig) -> None:
    if not torch.cuda.is_available():
        torch.set_num_threads(config.cpu_threads)


def train_reward_model(
    pairs: Sequence[PreferencePair],
    config: RewardConfig,
    *,
    output_dir: str | Path,
    progress: ProgressCallback | None = None,
    stage: str = "reward",
) -> RewardResult:
    """Fit one Bradley–Terry reward model on ``pairs`` with TRL's ``RewardTrainer``; save it to ``output_dir``.

    Tied pairs are skipped (they carry no Bradley–Terry signal). The saved
    directory holds the model, its tokenizer and ``ENCODING_FILE``, and loads
    with ``RewardEnsemble.load``. Not atomic by itself: publish through
    ``train_reward_ensemble`` (or ``artifacts.publish_run``).

    Metrics: ``n_train``, ``n_ties_skipped``, ``train_loss`` (mean over
    training), ``loss_first``/``loss_last`` (first and last logged loss),
    ``train_accuracy_last``, ``steps``, ``tokens`` (token positions through
    the model, padding included), ``seconds``.
    """
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    started = time.perf_counter()
    _set_threads(config)
    usable = [pair for pair in pairs if not pair.tie]
    if not usable:
        raise ValueError("no untied preference pairs to train on")
    backbone = resolve_backbone(config.backbone)
    tokenizer = load_tokenizer(backbone)
    encoding = Encoding(config.max_length, config.truncation_side, config.max_completion_length)
    with_margin = config.use_margin and any(pair.margin is not None for pair in usable)
    rows = []
    for pair in usable:
        row: dict[str, Any] = {
            "chosen_ids": encode(tokenizer, pair.prompt, pair.chosen, encoding),
            "rejected_ids": encode(tokenizer, pair.prompt, pair.rejected, encoding),
        }
        if with_margin:
            row["margin"] = pair.margin or 0.0
        if config.group_by_length:
            # The collator pads chosen and rejected to one length: the longer one is what costs.
            row["length"] = max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        rows.append(row)

    # The new head's initialisation depends on the seed: it is what makes
    # ensemble members start apart from one shared backbone.
    set_seed(config.seed)
    model = load_reward_backbone(backbone, mean_pooling=config.mean_pooling)
    _freeze(model, config)
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="tandem-reward-") as scratch:
        args = TRLRewardConfig(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup,
            weight_decay=config.weight_decay,
            lr_scheduler_type="linear",
            per_device_train_batch_size=config.batch_size,
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            length_column_name="length",
            # TRL would drop "length" before the sampler reads it; its collator ignores it.
            remove_unused_columns=not config.group_by_length,
            # Padded tokens through the model: what a step costs, reported as ``tokens``.
            include_num_input_tokens_seen="all",
            # Sequences are already cut to max_length above; TRL would drop, not cut, longer ones.
            max_length=None,
            center_rewards_coefficient=config.center_rewards_coefficient,
            seed=config.seed,
            data_seed=config.seed,
            bf16=config.bf16,
            use_cpu=not torch.cuda.is_available(),
            # Checkpointing trades compute for memory; tiny CPU runs need the compute.
            gradient_checkpointing=False,
            logging_steps=config.logging_steps,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        callbacks = [ProgressReporter(progress, stage)] if progress is not None else None
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        # The printer echoes every log dict to stdout; progress goes through ``progress``.
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    (output_dir / ENCODING_FILE).write_text(json.dumps(asdict(encoding)))
    metrics: dict[str, Any] = {
        "n_train": len(usable),
        "n_ties_skipped": len(pairs) - len(usable),
        "train_loss": float(output.training_loss),
        "loss_first": float(history[0]["loss"]) if history else None,
        "loss_last": float(history[-1]["loss"]) if history else None,
        "train_accuracy_last": float(history[-1]["accuracy"]) if history else None,
        "steps": int(output.global_step),
        "tokens": int(trainer.state.num_input_tokens_seen),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return RewardResult(path=output_dir, metrics=metrics)


def train_reward_ensemble(
    pairs: Sequence[PreferencePair],
    config: EnsembleConfig,
    *,
    root: Path,
    name: str,
    eval_pairs: Sequence[PreferencePair] | None = None,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> EnsembleResult:
    """Train ``config.members`` reward models and publish them atomically as ``root/name``.

    Layout: ``members/<k>/`` per member plus ``manifest.json`` (kind
    ``"reward_ensemble"``). Metrics: ``members`` (each member's training
    metrics), ``eval`` (``evaluate_pairs`` on ``eval_pairs``, if given),
    ``seconds``. Either the whole ensemble is published or nothing is.
    """
    if config.members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {config.members}")
    started = time.perf_counter()
    with publish_run(
        Path(root),
        name,
        kind="reward_ensemble",
        config=asdict(config),
        data_cursor=data_cursor,
        parent=parent,
    ) as run:
        member_metrics = []
        for k in range(config.members):
            result = train_reward_model(
                config.member_pairs(k, pairs),
                config.member_config(k),
                output_dir=run.path / "members" / str(k),
                progress=progress,
                stage=f"reward member {k + 1}/{config.members}",
            )
            member_metrics.append(result.metrics)
        metrics: dict[str, Any] = {"members": member_metrics}
        if eval_pairs:
            ensemble = RewardEnsemble.load(run.path)
            metrics["eval"] = evaluate_pairs(ensemble, eval_pairs, lam=config.lambda_std)
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        run.metrics = metrics
    return EnsembleResult(path=Path(root) / name, metrics=metrics)
