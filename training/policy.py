"""Policy training for a round: iterative DPO (default), KTO, and on-policy RLOO/GRPO.

Step 4 of the online loop (DESIGN.md). Each entry point turns validated
examples (``training.data``) into a TRL dataset, runs one TRL trainer, and
publishes the trained policy atomically through ``artifacts.publish_run``:

- ``train_dpo``: iterative DPO (Rafailov et al. 2023, "Direct Preference
  Optimization"; the iterative recipe of Dong et al. 2024, "RLHF Workflow:
  From Reward Modeling to Online RLHF"): round r warm-starts from
  π_{r-1} (``policy_ref``) and is regularised towards a FIXED reference
  π_0 (``reference_ref``), not towards π_{r-1}. ``loss="ipo"`` swaps the
  logistic loss for IPO's squared one (Azar et al. 2023).
- ``train_kto``: KTO on unpaired desirable/undesirable labels (Ethayarajh et
  al. 2024), for rating feedback.
- ``train_on_policy``: RLOO (Ahmadian et al. 2024) or GRPO (Shao et al. 2024)
  with the reward ensemble as the reward function, aggregated by its mean,
  its worst member (WCO) or mean − λ·std (UWO) (Coste et al. 2024, "Reward
  Model Ensembles Help Mitigate Overoptimization").

LoRA (``lora=True``) and the reference. TRL computes the reference of a
fresh adapter by disabling it, which is only π_0 when the adapter sits on
π_0 itself. So, per round:

- ``policy_ref == reference_ref`` (round 1): a new adapter on π_0; reference =
  the adapter-disabled model (no second copy in memory).
- ``policy_ref != reference_ref`` (later rounds): π_{r-1} is loaded as a full
  model (a LoRA round publishes its adapter *merged* into the weights, see
  below), a new adapter goes on top, and π_0 is loaded as an explicit
  ``ref_model`` so the reference stays fixed.

A LoRA round publishes the merged full model (so every generation backend,
vLLM included, loads it like any checkpoint, and the next round can
warm-start from it) and the adapter alone under ``adapter/``, the small
delta from ``policy_ref`` for inspection or reuse.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from training.artifacts import ProgressCallback, ProgressReporter, publish_run
from training.data import Message, PreferencePair, UnpairedExample, render_messages
from training.generation import resolve_device

if TYPE_CHECKING:
    import numpy as np
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


@dataclass(frozen=True)
class PolicyResult:
    """A published policy run: ``path`` is loadable with ``from_pretrained``; ``metrics`` is also in its manifest."""

    path: Path
    metrics: dict[str, Any]


def _lora_config(config: PolicyTrainingConfig) -> Any:
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


def _load_causal_lm(ref: str | Path) -> PreTrainedModel:
    """Load a policy in fp32: mixed precision (bf16 on CUDA) keeps fp32 master weights for AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(ref), dtype=torch.float32)
    return model


def _same_model(a: str | Path, b: str | Path) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


def _summarise(trainer: Trainer, seconds: float, prefixes: Sequence[str]) -> dict[str, Any]:
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


def _publish_model(
    trainer: Trainer, tokenizer: PreTrainedTokenizerBase, path: Path, lora: bool
) -> None:
    """Save the trained policy as a full model (LoRA merged) plus, for LoRA, the adapter under ``adapter/``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        model.save_pretrained(str(path / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def _run_config(config: Any, **refs: Any) -> dict[str, Any]:
    return {
        **asdict(config),
        **{key: str(value) if value is not None else None for key, value in refs.items()},
    }


def _callbacks(progress: ProgressCallback | None, stage: str) -> list[Any]:
    return [ProgressReporter(progress, stage)] if progress is not None else []


def _train(trainer: Trainer) -> float:
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
def _training_run(
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
    run_config = _run_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="trl.DPOTrainer"
    )
    with _training_run(
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
        model = _load_causal_lm(policy_ref)
        same = _same_model(policy_ref, reference_ref)
        # A fresh LoRA adapter on π_0 needs no second model: disabling it gives π_0.
        ref_model = None if (config.lora and same) else _load_causal_lm(reference_ref)
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list([_pair_row(p) for p in eval_pairs if not p.tie])
            if eval_pairs
            else None,
            processing_class=tokenizer,
            callbacks=_callbacks(progress, "dpo"),
            peft_config=_lora_config(config) if config.lora else None,
        )
        metrics = _summarise(trainer, _train(trainer), ("rewards/", "logps/"))
        if eval_pairs:
            evaluation = trainer.evaluate()
            metrics.update({k: float(v) for k, v in evaluation.items() if k.startswith("eval_")})
        metrics["pairs"] = len(train_rows)
        _publish_model(trainer, tokenizer, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)


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
    run_config = _run_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="trl.KTOTrainer"
    )
    with _training_run(
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
        same = _same_model(policy_ref, reference_ref)
        trainer = KTOTrainer(
            model=_load_causal_lm(policy_ref),
            ref_model=None if (config.lora and same) else _load_causal_lm(reference_ref),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=_callbacks(progress, "kto"),
            peft_config=_lora_config(config) if config.lora else None,
        )
        metrics = _summarise(trainer, _train(trainer), ("rewards/", "logps/", "kl"))
        metrics["examples"] = len(rows)
        _publish_model(trainer, tokenizer, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)


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
    run_config = _run_config(
        config,
        policy_ref=policy_ref,
        algorithm=algorithm,
        aggregation=aggregation,
        trainer=TRLTrainer.__name__,
    )
    with _training_run(
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
            model=_load_causal_lm(policy_ref),
            reward_funcs=ensemble_reward_function(reward, aggregation, config.uncertainty_lambda),
            args=args,
            train_dataset=Dataset.from_list([{"prompt": list(p)} for p in prompts]),
            processing_class=tokenizer,
            callbacks=_callbacks(progress, algorithm),
            peft_config=_lora_config(config) if config.lora else None,
        )
        metrics = _summarise(trainer, _train(trainer), ("reward", "kl", "completions/mean_length"))
        rewards = [float(e["reward"]) for e in trainer.state.log_history if "reward" in e]
        if rewards:
            metrics["reward_first"], metrics["reward_final"] = rewards[0], rewards[-1]
        _publish_model(trainer, tokenizer, run.path, config.lora)
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)


def completion_logprobs(
    model: PreTrainedModel | str | Path,
    prompts: Sequence[list[Message]],
    completions: Sequence[list[Message] | str],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Sum of log π(completion tokens | prompt) per example, shape ``[n]`` (fp64).

    The quantity DPO moves: its implicit reward is β·(log π − log π_ref).
    The completion starts where the rendered prompt (with the generation
    prompt) ends, as in TRL's preprocessing.
    """
    import numpy as np
    import torch

    from training.models import load_tokenizer

    if isinstance(model, str | Path):
        tokenizer = tokenizer or load_tokenizer(model)
        model = _load_causal_lm(model)
    if tokenizer is None:
        raise ValueError("pass tokenizer= with a loaded model")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            prompt_lengths, sequences = [], []
            for i in chunk:
                prompt_text = tokenizer.apply_chat_template(
                    prompts[i], tokenize=False, add_generation_prompt=True
                )
                full_text = render_messages(tokenizer, prompts[i], completions[i])
                prompt_lengths.append(
                    len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
                )
                sequences.append(tokenizer(full_text, add_special_tokens=False)["input_ids"])
            width = max(len(s) for s in sequences)
            ids = torch.full((len(sequences), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(sequences):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(
                -1, ids[:, 1:, None].to(device)
            )[..., 0]
            for row, seq in enumerate(sequences):
                totals.append(float(logps[row, prompt_lengths[row] - 1 : len(seq) - 1].sum()))
    model.train(was_training)
    return np.asarray(totals, dtype=np.float64)
