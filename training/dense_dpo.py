"""Dense DPO on corrections (RLHF-V): the tokens an annotator changed count γ times.

Yu et al. 2024, "RLHF-V: Towards Trustworthy MLLMs via Behavior Alignment from
Fine-grained Correctional Human Feedback", Sec. 3.2 (DDPO). A correction pairs
the annotator's corrected response ``y_w`` (chosen) with the original ``y_l``
(rejected); they share most tokens, and plain DPO spreads its signal over all of
them. Dense DPO replaces each sequence log-probability by a weighted sum over
its tokens,

    ℓ(y | x) = Σ_t w_t · log π(y_t | x, y_<t),    w_t = γ on changed segments, 1 elsewhere,

and then applies the usual DPO sigmoid loss (Rafailov et al. 2023, Eq. 7)

    L = −log σ( β · [ (ℓ_θ(y_w) − ℓ_ref(y_w)) − (ℓ_θ(y_l) − ℓ_ref(y_l)) ] ).

"Changed" tokens come from a token-level diff (``difflib`` on token ids): in
``y_w`` the tokens the annotator wrote, in ``y_l`` the tokens they replaced or
removed (the hallucinated segments). With γ = 1 every weight is 1 and the loss
is plain DPO. RLHF-V also divides ℓ by N = |y_u| + γ·|y_c| (unchanged plus
γ times changed tokens); ``normalize=True`` does that (then γ = 1 is DPO on
mean token log-probabilities, not plain DPO). The default keeps the sum, as
TRL's DPO does, so that γ = 1 is exactly the DPO of ``training.dpo``.

The loss functions are pure (tensors in, tensors out). TRL's ``DPOTrainer`` has
no per-token weights, hence ``dense_dpo_loop``, a small loop of our own around
them that ``train_dense_dpo`` (causal LMs) and ``training.vision_dense_dpo``
(vision-language models) both run.
"""

from __future__ import annotations

import difflib
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.artifacts import Progress, ProgressCallback
from training.policy_base import (
    PolicyResult,
    PolicyTrainingConfig,
    load_causal_lm,
    manifest_config,
    training_run,
)

__all__ = [
    "DenseDPOConfig",
    "DenseDPOLoss",
    "batch_logps",
    "changed_token_weights",
    "dense_dpo_loop",
    "dense_dpo_loss",
    "encode_correction",
    "pair_loss",
    "pair_token_weights",
    "sequence_logps",
    "token_logps",
    "train_dense_dpo",
]


# --- weights ------------------------------------------------------------------------------------


def pair_token_weights(
    original_ids: Sequence[int], corrected_ids: Sequence[int], gamma: float = 3.0
) -> tuple[list[float], list[float]]:
    """Per-token weights ``(corrected, original)``: γ where the two differ, 1 where they agree.

    The diff is ``difflib.SequenceMatcher`` on the token ids (no junk heuristic,
    which would treat frequent tokens as unmatched). In the corrected sequence
    the inserted and replacing tokens are changed; in the original the replaced
    and deleted ones.
    """
    if gamma <= 0 or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    corrected = [1.0] * len(corrected_ids)
    original = [1.0] * len(original_ids)
    matcher = difflib.SequenceMatcher(None, list(original_ids), list(corrected_ids), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        original[i1:i2] = [gamma] * (i2 - i1)
        corrected[j1:j2] = [gamma] * (j2 - j1)
    return corrected, original


def changed_token_weights(
    original_ids: Sequence[int], corrected_ids: Sequence[int], gamma: float = 3.0
) -> list[float]:
    """One weight per token of ``corrected_ids``: γ on tokens the correction changed, 1 elsewhere."""
    return pair_token_weights(original_ids, corrected_ids, gamma)[0]


# --- the loss -----------------------------------------------------------------------------------


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log π(y_t | x, y_<t)`` for each position: ``[B, T]`` from logits ``[B, T, V]``.

    ``labels[b, t]`` is the token at position t; logits at t−1 predict it, so
    position 0 and every label < 0 (prompt, padding) get 0.
    """
    shifted = logits[:, :-1, :].float().log_softmax(dim=-1)
    targets = labels[:, 1:]
    valid = targets >= 0
    picked = shifted.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device)
    out[:, 1:] = picked * valid
    return out


def sequence_logps(
    logps: torch.Tensor, weights: torch.Tensor, *, normalize: bool = False
) -> torch.Tensor:
    """ℓ(y|x) = Σ_t w_t · log π(y_t|x, y_<t) for ``[B, T]`` inputs; weight 0 leaves a token out.

    With ``normalize`` the sum is divided by Σ_t w_t (RLHF-V's N = |y_u| + γ·|y_c|).
    """
    if logps.shape != weights.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and weights {tuple(weights.shape)} differ")
    total = (logps * weights).sum(dim=-1)
    if normalize:
        total = total / weights.sum(dim=-1).clamp(min=1e-8)
    return total


@dataclass(frozen=True)
class DenseDPOLoss:
    """The mean loss and, per pair, its loss and implicit rewards β·(ℓ_θ − ℓ_ref)."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dense_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    chosen_weights: torch.Tensor,
    rejected_weights: torch.Tensor,
    *,
    beta: float = 0.1,
    normalize: bool = False,
) -> DenseDPOLoss:
    """−log σ(β[(ℓ_θ(y_w) − ℓ_ref(y_w)) − (ℓ_θ(y_l) − ℓ_ref(y_l))]), ℓ weighted per token.

    Every argument but β is ``[B, T]``: per-token log-probabilities of the
    chosen (corrected) and rejected (original) completions under the policy and
    the reference, and their weights (γ on changed tokens, 1 on the others, 0
    on prompt and padding). The reference is weighted exactly like the policy,
    so the implicit reward stays a log-ratio.
    """
    chosen_ratio = sequence_logps(policy_chosen, chosen_weights, normalize=normalize) - (
        sequence_logps(reference_chosen, chosen_weights, normalize=normalize)
    )
    rejected_ratio = sequence_logps(policy_rejected, rejected_weights, normalize=normalize) - (
        sequence_logps(reference_rejected, rejected_weights, normalize=normalize)
    )
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return DenseDPOLoss(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


# --- training on corrections rows ---------------------------------------------------------------


@dataclass
class DenseDPOConfig(PolicyTrainingConfig):
    """Dense DPO on corrections rows against a fixed reference (see the module docstring)."""

    gamma: float = field(
        default=3.0,
        metadata={
            "min": 1,
            "max": 100,
            "help": "Weight γ of the tokens a correction changed (RLHF-V); 1 is plain DPO.",
        },
    )
    beta: float = field(
        default=0.1,
        metadata={"min": 0.001, "max": 100, "help": "DPO β: the pull towards the reference."},
    )
    normalize: bool = field(
        default=False,
        metadata={"help": "Divide each weighted log-probability by its total weight (RLHF-V's N)."},
    )


@dataclass(frozen=True)
class EncodedCorrection:
    """Prompt+completion ids of both sides, with labels (−100 on the prompt) and token weights."""

    chosen_ids: list[int]
    chosen_labels: list[int]
    chosen_weights: list[float]
    rejected_ids: list[int]
    rejected_labels: list[int]
    rejected_weights: list[float]


def _prompt_messages(row: Mapping[str, Any], index: int) -> list[dict[str, str]]:
    prompt = row.get("prompt")
    if prompt is None:
        prompt = row.get("question")
    if isinstance(prompt, str) and prompt:
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, Mapping) for m in prompt):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    raise ValueError(f"row {index}: 'prompt' must be a non-empty string or list of messages")


def _completion_text(row: Mapping[str, Any], key: str, index: int) -> str:
    value = row.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        value = value[0].get("content")
    if not isinstance(value, str) or not value:
        raise ValueError(f"row {index}: {key!r} must be a non-empty string")
    return value


def encode_correction(
    tokenizer: Any, row: Mapping[str, Any], *, gamma: float, max_length: int, index: int = 1
) -> EncodedCorrection:
    """Tokenize a corrections row ``{prompt, chosen (corrected), rejected (original)}``.

    Prompt and completion are tokenized apart (as TRL's DPO does) so the diff
    sees the completions alone; the completion ends with EOS, as the chat
    template writes it. Long rows keep the prompt's end and the completions'
    start, within ``max_length``.
    """
    prompt = _prompt_messages(row, index)
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids: list[int] = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    corrected, original = (
        tokenizer(_completion_text(row, key, index) + eos, add_special_tokens=False)["input_ids"]
        for key in ("chosen", "rejected")
    )
    w_corrected, w_original = pair_token_weights(original, corrected, gamma)
    longest = max(len(corrected), len(original))
    kept_prompt = prompt_ids[max(0, len(prompt_ids) - max(1, max_length - longest)) :]
    room = max_length - len(kept_prompt)

    def side(ids: list[int], weights: list[float]) -> tuple[list[int], list[int], list[float]]:
        ids, weights = ids[:room], weights[:room]
        labels = [-100] * len(kept_prompt) + ids
        return kept_prompt + ids, labels, [0.0] * len(kept_prompt) + weights

    c_ids, c_labels, c_weights = side(corrected, w_corrected)
    r_ids, r_labels, r_weights = side(original, w_original)
    return EncodedCorrection(c_ids, c_labels, c_weights, r_ids, r_labels, r_weights)


def _batch(items: Sequence[EncodedCorrection], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded to one width: one forward pass per model."""
    sequences = [(e.chosen_ids, e.chosen_labels, e.chosen_weights) for e in items] + [
        (e.rejected_ids, e.rejected_labels, e.rejected_weights) for e in items
    ]
    width = max(len(ids) for ids, _, _ in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    weights = torch.zeros((n, width), dtype=torch.float32)
    for i, (ids, lab, w) in enumerate(sequences):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
        weights[i, : len(w)] = torch.tensor(w)
    return dict(input_ids=input_ids, attention_mask=attention, labels=labels, weights=weights)


# --- the loop both dense DPO trainers run ------------------------------------------------------


def batch_logps(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``token_logps`` of ``batch["labels"]``, ``[B, T]``. Every key but ``labels`` and
    ``weights`` is a model input (a vision batch's image tensors too); floating ones are cast to
    the model's dtype, so a bf16 reference takes fp32 pixels."""
    dtype = next(model.parameters()).dtype
    inputs = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in batch.items()
        if key not in ("labels", "weights")
    }
    return token_logps(model(**inputs).logits, batch["labels"])


def pair_loss(
    model: Any,
    reference: Any,
    batch: Mapping[str, torch.Tensor],
    *,
    beta: float,
    normalize: bool = False,
) -> DenseDPOLoss:
    """Dense DPO on a batch of n chosen sequences then their n rejected ones (``labels`` −100 on
    prompt and padding, ``weights`` 0 there): the policy's log-probabilities with gradients, the
    reference's without, weighted alike (``dense_dpo_loss``)."""
    n = batch["input_ids"].shape[0] // 2
    policy = batch_logps(model, batch)
    with torch.no_grad():
        ref = batch_logps(reference, batch)
    weights = batch["weights"]
    return dense_dpo_loss(
        policy[:n],
        policy[n:],
        ref[:n],
        ref[n:],
        weights[:n],
        weights[n:],
        beta=beta,
        normalize=normalize,
    )


def _orders(size: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Batches of indices, reshuffled each epoch; a short tail joins the next epoch's start."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(size))
            rng.shuffle(fresh)
            order += fresh
        yield order[:batch_size]
        order = order[batch_size:]


def dense_dpo_loop(
    model: Any,
    reference: Any,
    config: DenseDPOConfig,
    *,
    pairs: int,
    batch: Callable[[list[int]], Mapping[str, torch.Tensor]],
    device: torch.device,
    stage: str,
    progress: ProgressCallback | None = None,
    accumulation: int = 1,
    bf16: bool = False,
) -> dict[str, Any]:
    """Train ``model`` (its weights that require grad) against the frozen ``reference`` by
    ``pair_loss`` with AdamW and ``config``'s schedule; both are on ``device`` already.

    ``batch(indices)`` builds, on the CPU, the ``pair_loss`` batch of those of the ``pairs``
    pairs. A step averages ``accumulation`` micro-batches of ``config.batch_size`` pairs drawn in
    an order reshuffled every epoch; ``config.max_steps`` steps, else ``config.epochs`` epochs.
    ``bf16`` autocasts the forward passes. Returns the metrics ``steps``, ``loss_first``,
    ``loss_final`` and ``reward_accuracy_final`` (share of the last step's pairs whose implicit
    reward prefers the chosen side).
    """
    from transformers import get_scheduler

    per_epoch = math.ceil(pairs / (config.batch_size * accumulation))
    steps = (
        config.max_steps if config.max_steps > 0 else max(1, math.ceil(per_epoch * config.epochs))
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * steps),
        num_training_steps=steps,
    )
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    )
    batches = _orders(pairs, config.batch_size, config.seed)
    losses: list[float] = []
    accuracy = float("nan")
    for step in range(steps):
        optimizer.zero_grad()
        step_loss, wins, seen = 0.0, 0, 0
        for _ in range(accumulation):
            chosen = next(batches)
            inputs = {k: v.to(device) for k, v in batch(chosen).items()}
            with autocast:
                out = pair_loss(
                    model, reference, inputs, beta=config.beta, normalize=config.normalize
                )
            (out.loss / accumulation).backward()
            step_loss += float(out.loss.detach()) / accumulation
            wins += int((out.chosen_rewards > out.rejected_rewards).sum())
            seen += len(chosen)
        optimizer.step()
        scheduler.step()
        losses.append(step_loss)
        accuracy = wins / seen
        if progress is not None and (step + 1) % config.logging_steps == 0:
            progress(Progress(stage=stage, step=step + 1, total=steps, loss=step_loss))
    return {
        "steps": steps,
        "loss_first": losses[0],
        "loss_final": losses[-1],
        "reward_accuracy_final": accuracy,
    }


def train_dense_dpo(
    rows: Sequence[Mapping[str, Any]],
    config: DenseDPOConfig,
    *,
    policy_ref: str | Path,
    reference_ref: str | Path,
    root: str | Path,
    name: str,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> PolicyResult:
    """Train π_r from ``policy_ref`` on corrections rows by dense DPO against ``reference_ref``.

    Rows are the corrections export: ``prompt`` (messages, or a string;
    ``question`` is used when ``prompt`` is missing), ``chosen`` (the corrected
    text) and ``rejected`` (the original). Rows whose correction leaves the text
    unchanged carry no preference and are skipped. CPU or one device, full
    fine-tuning (``lora`` is not supported here). Publishes ``root/name`` (kind
    ``policy-dense-dpo``) atomically. Metrics: ``pairs``, ``skipped_unchanged``,
    ``steps``, ``loss_first``, ``loss_final``, ``reward_accuracy_final`` (share
    of the last step's pairs whose implicit reward prefers the correction),
    ``seconds``.
    """
    from training.generation import resolve_device
    from training.models import load_tokenizer

    if config.lora:
        raise ValueError("train_dense_dpo trains all weights; lora is not supported")
    started = time.perf_counter()
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(policy_ref)
    encoded, skipped = [], 0
    for index, row in enumerate(rows, start=1):
        item = encode_correction(
            tokenizer, row, gamma=config.gamma, max_length=config.max_length, index=index
        )
        if item.chosen_ids == item.rejected_ids:
            skipped += 1
            continue
        encoded.append(item)
    if not encoded:
        raise ValueError("no corrections that change the text to train on")
    run_config = manifest_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="dense_dpo"
    )
    with training_run(
        root,
        name,
        kind="policy-dense-dpo",
        config=run_config,
        data_cursor=data_cursor,
        parent=parent,
    ) as (run, _scratch):
        torch.manual_seed(config.seed)
        model: Any = load_causal_lm(policy_ref)
        model.to(device).train()
        reference: Any = load_causal_lm(reference_ref)
        reference.to(device).eval().requires_grad_(False)
        trained = dense_dpo_loop(
            model,
            reference,
            config,
            pairs=len(encoded),
            batch=lambda chosen: _batch([encoded[i] for i in chosen], tokenizer.pad_token_id),
            device=device,
            stage="dense-dpo",
            progress=progress,
        )
        model.save_pretrained(str(run.path))
        tokenizer.save_pretrained(str(run.path))
        metrics: dict[str, Any] = {
            "pairs": len(encoded),
            "skipped_unchanged": skipped,
            **trained,
            "seconds": round(time.perf_counter() - started, 3),
        }
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)
