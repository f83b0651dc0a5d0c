"""What every policy trainer shares: the common config fields, the result, and the TRL plumbing.

``PolicyTrainingConfig`` holds the optimisation, precision and LoRA fields
that DPO (``training.dpo``), KTO (``training.kto``) and RLOO/GRPO
(``training.on_policy``) all take; the helpers below turn it into TRL
arguments, load policies, run a trainer quietly and publish its model
atomically through ``artifacts.publish_run``. Why a LoRA round is published
merged, and which reference each round uses: ``training.policy``'s docstring.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from training.artifacts import ProgressCallback, ProgressReporter, publish_run
from training.generation import resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer


@dataclass
class PolicyTrainingConfig:
    """Fields shared by every policy trainer (optimisation, precision, LoRA)."""

    learning_rate: float = field(
        default=1e-6,
        metadata={
            "min": 0,
            "max": 1,
            "help": "AdamW learning rate (Online-RLHF uses 5e-7 for 8B models; tiny models need ~1e-3).",
        },
    )
    epochs: float = field(
        default=1.0,
        metadata={
            "min": 0,
            "max": 1000,
            "help": "Passes over the data (ignored when max_steps > 0).",
        },
    )
    max_steps: int = field(
        default=-1,
        metadata={"min": -1, "max": 1000000, "help": "Optimizer steps; > 0 overrides epochs."},
    )
    batch_size: int = field(
        default=8, metadata={"min": 1, "max": 4096, "help": "Examples per device per step."}
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"min": 1, "max": 1024, "help": "Micro-batches accumulated per optimizer step."},
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={
            "min": 0,
            "max": 1,
            "help": "Fraction of steps with linear LR warm-up, in [0, 1).",
        },
    )
    lr_scheduler: str = field(
        default="linear",
        metadata={
            "choices": (
                "linear",
                "cosine",
                "cosine_with_restarts",
                "polynomial",
                "constant",
                "constant_with_warmup",
                "inverse_sqrt",
                "cosine_with_min_lr",
                "warmup_stable_decay",
            ),
            "help": "transformers LR schedule: linear, cosine, constant, ...",
        },
    )
    max_length: int = field(
        default=1024,
        metadata={
            "min": 8,
            "max": 32768,
            "help": "Longest prompt+completion in tokens; longer ones are truncated.",
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": 4294967295,
            "help": "Seed for initialisation, shuffling and sampling.",
        },
    )
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto", metadata={"help": "auto = bf16 mixed precision on CUDA, fp32 on CPU."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in backward: less memory, ~20% slower."},
    )
    device: str = field(
        default="auto", metadata={"choices": ("auto", "cpu", "cuda"), "help": "auto, cpu or cuda."}
    )
    lora: bool = field(
        default=False,
        metadata={
            "help": "Train a LoRA adapter instead of all weights (published merged; see module docs)."
        },
    )
    train_image_encoder: bool = field(
        default=False,
        metadata={
            "help": "Vision-language policies: train the image encoder too (by default it stays "
            "frozen, as in LLaVA-RLHF and RLHF-V); text policies ignore it."
        },
    )
    lora_r: int = field(default=16, metadata={"min": 1, "max": 1024, "help": "LoRA rank."})
    lora_alpha: int = field(
        default=32,
        metadata={"min": 1, "max": 4096, "help": "LoRA scaling alpha (update scaled by alpha/r)."},
    )
    lora_dropout: float = field(
        default=0.0, metadata={"min": 0, "max": 1, "help": "Dropout on the LoRA input."}
    )
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "max_length": 500,
            "pattern": r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*",
            "help": "Comma-separated module names to adapt, or all-linear (the LM head is always excluded).",
        },
    )
    logging_steps: int = field(
        default=1,
        metadata={"min": 1, "max": 1000000, "help": "Log metrics every N optimizer steps."},
    )


@dataclass(frozen=True)
class PolicyResult:
    """A published policy run: ``path`` is loadable with ``from_pretrained``; ``metrics`` is also in its manifest."""

    path: Path
    metrics: dict[str, Any]


def lora_config(config: PolicyTrainingConfig) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = config.lora_target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in str(targets).split(",") if name.strip()]
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def trl_training_args(
    cls: type, config: PolicyTrainingConfig, output_dir: str, **specific: Any
) -> Any:
    """Build a TRL config (a ``TrainingArguments`` subclass) from ours; nothing is written to ``output_dir``."""
    device = resolve_device(config.device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    return cls(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=config.lr_scheduler,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=device.type == "cpu",
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        **specific,
    )


def load_causal_lm(ref: str | Path) -> PreTrainedModel:
    """Load a policy in fp32: mixed precision (bf16 on CUDA) keeps fp32 master weights for AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(ref), dtype=torch.float32)
    return model


def same_model(a: str | Path, b: str | Path) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


def summarise_metrics(trainer: Trainer, seconds: float, prefixes: Sequence[str]) -> dict[str, Any]:
    """Metrics for the manifest: first and final loss, the last logged TRL metrics, steps, seconds."""
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "steps": int(trainer.state.global_step),
        "seconds": round(seconds, 3),
        "loss_first": float(history[0]["loss"]) if history else None,
        "loss_final": float(history[-1]["loss"]) if history else None,
    }
    if history:
        for key, value in history[-1].items():
            if any(key.startswith(prefix) for prefix in prefixes) and isinstance(
                value, int | float
            ):
                metrics[key] = float(value)
    return {
        key: value
        for key, value in metrics.items()
        if not (isinstance(value, float) and math.isnan(value))
    }


def publish_model(
    trainer: Trainer, tokenizer: PreTrainedTokenizerBase, path: Path, lora: bool
) -> None:
    """Save the trained policy as a full model (LoRA merged) plus, for LoRA, the adapter under ``adapter/``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        model.save_pretrained(str(path / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def manifest_config(config: Any, **refs: Any) -> dict[str, Any]:
    return {
        **asdict(config),
        **{key: str(value) if value is not None else None for key, value in refs.items()},
    }


def progress_callbacks(progress: ProgressCallback | None, stage: str) -> list[Any]:
    return [ProgressReporter(progress, stage)] if progress is not None else []


def train_quietly(trainer: Trainer) -> float:
    """Run ``trainer.train()`` quietly and return its wall time in seconds.

    With tqdm disabled transformers prints every log dict to stdout, which is
    where the CLI writes its JSON result; progress goes through
    ``ProgressReporter`` instead.
    """
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


@contextmanager
def training_run(
    root: str | Path,
    name: str,
    *,
    kind: str,
    config: dict[str, Any],
    data_cursor: str | None,
    parent: str | None,
) -> Iterator[tuple[Any, str]]:
    """A run published atomically under ``root/name`` plus a scratch directory for the trainer's own files."""
    with (
        publish_run(
            Path(root), name, kind=kind, config=config, data_cursor=data_cursor, parent=parent
        ) as run,
        tempfile.TemporaryDirectory() as scratch,
    ):
        yield run, scratch
