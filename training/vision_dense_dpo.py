"""Dense DPO for vision-language policies: RLHF-V's corrections, weighted γ, with the image.

Yu et al. 2024 ("RLHF-V", Sec. 3.2) train LLaVA-style models on an annotator's correction of a
hallucinated answer: the corrected answer ``y_w`` over the original ``y_l``, the tokens the
correction changed counting γ times. The loss is ``training.dense_dpo``'s, imported from there:

    ℓ(y | x, I) = Σ_t w_t · log π(y_t | x, I, y_<t),   w_t = γ on changed tokens, 1 elsewhere,
    L = −log σ( β · [ (ℓ_θ(y_w) − ℓ_ref(y_w)) − (ℓ_θ(y_l) − ℓ_ref(y_l)) ] ),

where I is the image, seen by policy and reference alike. Rows are the hallucination kind's
``vision_pairs`` (``training.vision_dpo``): a row with ``"correction": true`` gets γ on the tokens
its correction changed (``pair_token_weights`` on the completions' token ids), every other row
weight 1 on each completion token. With γ = 1, or on rows that are not corrections, the loss is
exactly DPO's sigmoid loss on summed log-probabilities, TRL's ``DPOTrainer`` default, so human
pairs, corrections and model-labelled pairs train together in one loop.

Rows are encoded as TRL's vision collator does (``trl.data_utils.apply_chat_template``): the
prompt rendered by the processor's chat template and passed through the processor with its
images (which expands each image placeholder into the model's visual tokens), each completion
as the template writes it after the prompt (end-of-turn included), tokenized on its own. The
diff sees the completions alone. Any ``AutoModelForImageTextToText`` with an ``AutoProcessor``
trains here: the tiny LLaVA of the tests, LLaVA-1.5 or Qwen2-VL on a GPU. TRL has no per-token
weights, hence a loop of our own, ``training.dense_dpo.dense_dpo_loop``, which the text-only
trainer runs too; the reference π_0 is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.artifacts import ProgressCallback
from training.data import RowError
from training.dense_dpo import DenseDPOConfig, dense_dpo_loop, pair_loss, pair_token_weights
from training.policy_base import PolicyResult, lora_config, manifest_config, training_run
from training.vision_dpo import (
    ImageLoader,
    load_vlm_for_training,
    vision_dataset,
    vision_rows,
)

__all__ = [
    "DenseDPOConfig",
    "EncodedVisionPair",
    "encode_vision_pair",
    "pair_batch",
    "pair_loss",
    "train_vision_dense_dpo",
]

# Processor outputs aligned with the prompt's tokens (Gemma 3's token types, Qwen2.5-VL's
# multimodal ones): they run on over the completion with zeros, as TRL's collator writes them.
# Every other output (pixel values, grid sizes) is per image and is stacked along dimension 0.
_SEQUENCE_KEYS = ("token_type_ids", "mm_token_type_ids")


@dataclass(frozen=True)
class EncodedVisionPair:
    """One row ready for the model: the rendered prompt, its token ids, both completions' ids
    with one weight per token (γ on a correction's changed tokens, 1 elsewhere).

    The image tensors are not kept: ``pair_batch`` runs the processor again on the row's images,
    so a round holds token ids in memory, not every image's pixels.
    """

    index: int
    correction: bool
    prompt_text: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_weights: list[float]
    rejected_ids: list[int]
    rejected_weights: list[float]


def _prompt_inputs(processor: Any, prompt_text: str, images: Sequence[Any]) -> dict[str, Any]:
    """The processor's tensors for one rendered prompt and its images, batch dimension 1."""
    return dict(
        processor(
            images=list(images),
            text=[prompt_text],
            add_special_tokens=False,  # the chat template wrote BOS already
            return_tensors="pt",
        )
    )


def _text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of checked assistant messages (a string, or text parts)."""
    return "".join(
        m["content"]
        if isinstance(m["content"], str)
        else "".join(part.get("text") or "" for part in m["content"])
        for m in messages
    )


def encode_vision_pair(
    processor: Any,
    row: Mapping[str, Any],
    images: Sequence[Any],
    *,
    gamma: float,
    max_length: int,
    index: int = 1,
) -> EncodedVisionPair:
    """Encode a checked ``vision_pairs`` row (``vision_rows``) with its opened PIL ``images``.

    ``row["correction"] is True`` marks a correction (chosen = the corrected answer, rejected =
    the original): γ lands on the tokens the diff finds changed, computed before truncation.
    Completions are cut to the room ``max_length`` leaves after the whole prompt (image tokens
    cannot be cut); a prompt that fills ``max_length`` leaves empty completions. An answer with
    no text raises ``RowError`` for row ``index``.
    """
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    for name in ("chosen", "rejected"):
        if not _text(row[name]).strip():
            raise RowError(index, name, "the answer has no text")
    rendered = apply_chat_template(
        {
            "prompt": prepare_multimodal_messages(list(row["prompt"]), images=list(images)),
            "chosen": prepare_multimodal_messages(list(row["chosen"])),
            "rejected": prepare_multimodal_messages(list(row["rejected"])),
        },
        processor,
    )
    inputs = _prompt_inputs(processor, rendered["prompt"], images)
    prompt_ids: list[int] = inputs["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    chosen, rejected = (
        list(tokenizer(rendered[key], add_special_tokens=False)["input_ids"])
        for key in ("chosen", "rejected")
    )
    correction = row.get("correction") is True
    if correction:
        w_chosen, w_rejected = pair_token_weights(rejected, chosen, gamma)
    else:
        w_chosen, w_rejected = [1.0] * len(chosen), [1.0] * len(rejected)
    room = max(0, max_length - len(prompt_ids))
    return EncodedVisionPair(
        index=index,
        correction=correction,
        prompt_text=rendered["prompt"],
        prompt_ids=prompt_ids,
        chosen_ids=chosen[:room],
        chosen_weights=w_chosen[:room],
        rejected_ids=rejected[:room],
        rejected_weights=w_rejected[:room],
    )


def pair_batch(
    items: Sequence[EncodedVisionPair],
    images: Sequence[Sequence[Any]],
    processor: Any,
) -> dict[str, torch.Tensor]:
    """The chosen sequences of ``items`` then their rejected ones, right-padded to one width,
    with each row's image tensors (repeated for its two sequences): one forward pass per model.

    ``images[i]`` are item i's opened images. Keys: the model's inputs (``input_ids``,
    ``attention_mask``, the processor's image tensors) plus ``labels`` (−100 on prompt and
    padding) and ``weights`` (0 on prompt and padding).
    """
    inputs = [
        _prompt_inputs(processor, it.prompt_text, im) for it, im in zip(items, images, strict=True)
    ]
    sides = [(it.chosen_ids, it.chosen_weights) for it in items] + [
        (it.rejected_ids, it.rejected_weights) for it in items
    ]
    prompts = [it.prompt_ids for it in items] * 2
    width = max(len(p) + len(ids) for p, (ids, _) in zip(prompts, sides, strict=True))
    n = len(sides)
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    batch: dict[str, torch.Tensor] = {
        "input_ids": torch.full((n, width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, width), dtype=torch.long),
        "labels": torch.full((n, width), -100, dtype=torch.long),
        "weights": torch.zeros((n, width), dtype=torch.float32),
    }
    aligned = [k for k in _SEQUENCE_KEYS if k in inputs[0]]
    for key in aligned:
        batch[key] = torch.zeros((n, width), dtype=inputs[0][key].dtype)
    for i, (prompt, (ids, weights)) in enumerate(zip(prompts, sides, strict=True)):
        p, end = len(prompt), len(prompt) + len(ids)
        batch["input_ids"][i, :end] = torch.tensor(prompt + ids)
        batch["attention_mask"][i, :end] = 1
        batch["labels"][i, p:end] = torch.tensor(ids, dtype=torch.long)
        batch["weights"][i, p:end] = torch.tensor(weights)
        for key in aligned:
            batch[key][i, :p] = inputs[i % len(items)][key][0]
    for key in inputs[0]:
        if key not in ("input_ids", "attention_mask", *aligned):
            batch[key] = torch.cat([row[key] for row in inputs] * 2)
    return batch


def _publish(model: Any, processor: Any, path: Path, lora: bool) -> None:
    """The full model (a LoRA adapter merged, and kept under ``adapter/``) with its processor."""
    if lora:
        model.save_pretrained(str(path / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))


def train_vision_dense_dpo(
    rows: Iterable[Mapping[str, Any]],
    config: DenseDPOConfig,
    *,
    images: str | Path | ImageLoader,
    policy_ref: str | Path,
    reference_ref: str | Path,
    root: str | Path,
    name: str,
    progress: ProgressCallback | None = None,
    data_cursor: str | None = None,
    parent: str | None = None,
) -> PolicyResult:
    """Train π_r from ``policy_ref`` on ``vision_pairs`` rows by dense DPO against π_0.

    ``images``: the export directory or an ``ImageLoader`` (``training.vision_dpo.vision_dataset``).
    Every row is checked and encoded before a model loads, and a bad one (no image, a missing
    image, an answer without text) raises ``RowError`` naming its row: nothing is published.
    Ties are skipped, as are rows whose answers tokenize alike (within ``max_length``) or whose
    prompt fills ``max_length``. One device; ``precision`` bf16 autocasts (π_0 then held in
    bf16); ``lora`` trains an adapter, published merged. Publishes ``root/name`` (kind
    ``policy-vision-dense-dpo``), model and processor, atomically. Metrics: ``pairs``,
    ``corrections`` (of those pairs), ``skipped_unchanged``, ``skipped_too_long``, ``steps``,
    ``loss_first``, ``loss_final``, ``reward_accuracy_final`` (share of the last step's pairs
    whose implicit reward prefers the chosen answer), ``seconds``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.generation import resolve_device

    started = time.perf_counter()
    rows = list(rows)
    checked = vision_rows(rows)
    # vision_rows keeps the untied rows, in order, without their other keys: their numbers and
    # correction flags come from the caller's list.
    untied = [(i, r) for i, r in enumerate(rows, start=1) if r.get("tie") is not True]
    try:
        dataset = vision_dataset(checked, images)
    except RowError as exc:
        raise RowError(untied[exc.row - 1][0], exc.field, str(exc).partition(": ")[2]) from exc
    processor = AutoProcessor.from_pretrained(str(policy_ref))
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    encoded: list[EncodedVisionPair] = []
    opened: list[int] = []  # the dataset row of each encoded pair
    unchanged = too_long = 0
    for position, ((index, original), row) in enumerate(zip(untied, checked, strict=True)):
        item = encode_vision_pair(
            processor,
            {**row, "correction": original.get("correction")},
            dataset[position]["images"],
            gamma=config.gamma,
            max_length=config.max_length,
            index=index,
        )
        if not item.chosen_ids or not item.rejected_ids:
            too_long += 1
        elif item.chosen_ids == item.rejected_ids:
            unchanged += 1
        else:
            encoded.append(item)
            opened.append(position)
    if not encoded:
        raise ValueError("no vision pairs with differing answers that fit max_length to train on")

    device = resolve_device(config.device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    run_config = manifest_config(
        config, policy_ref=policy_ref, reference_ref=reference_ref, trainer="vision_dense_dpo"
    )
    with training_run(
        root,
        name,
        kind="policy-vision-dense-dpo",
        config=run_config,
        data_cursor=data_cursor,
        parent=parent,
    ) as (run, _scratch):
        torch.manual_seed(config.seed)
        model: Any = load_vlm_for_training(
            policy_ref, train_image_encoder=config.train_image_encoder
        )
        if config.lora:
            from peft import get_peft_model

            model = get_peft_model(model, lora_config(config))
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.to(device).train()
        # Frozen, so it needs no fp32 master copy: under bf16 autocast it runs in bf16 anyway.
        reference: Any = AutoModelForImageTextToText.from_pretrained(
            str(reference_ref), dtype=torch.bfloat16 if bf16 else torch.float32
        )
        reference.to(device).eval().requires_grad_(False)
        trained = dense_dpo_loop(
            model,
            reference,
            config,
            pairs=len(encoded),
            batch=lambda chosen: pair_batch(
                [encoded[i] for i in chosen],
                [dataset[opened[i]]["images"] for i in chosen],
                processor,
            ),
            device=device,
            stage="vision-dense-dpo",
            progress=progress,
            accumulation=config.gradient_accumulation_steps,
            bf16=bf16,
        )
        _publish(model, processor, run.path, config.lora)
        metrics: dict[str, Any] = {
            "pairs": len(encoded),
            "corrections": sum(item.correction for item in encoded),
            "skipped_unchanged": unchanged,
            "skipped_too_long": too_long,
            **trained,
            "seconds": round(time.perf_counter() - started, 3),
        }
        run.metrics = metrics
    return PolicyResult(path=Path(root) / name, metrics=metrics)
