"""A reward model on a vision-language backbone: a scalar head that sees the image itself.

The option for GPU workers beside Fact-RLHF's text reward model (``training.fact_reward``):
instead of reading the image's facts as text, the reward model is the vision-language model
(any ``AutoModelForImageTextToText``, e.g. LLaVA-1.5 as LLaVA-RLHF uses, or the tiny LLaVA of
``training.vision``) with a linear head on the final hidden state of the last real token,
trained with the Bradley–Terry loss (Ouyang et al. 2022, Eq. 1)

    L = −log σ(r(x, I, y_w) − r(x, I, y_l)),

where I is the image. TRL's ``RewardTrainer`` takes text only, so this is a small loop of our
own. Rows are the hallucination kind's ``vision_pairs`` export (``training.vision_dpo``
checks them); images come from a loader (path in the row → PIL image).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["VLMRewardConfig", "VLMRewardModel", "bradley_terry_loss", "train_vlm_reward"]

HEAD_FILE = "reward_head.pt"
CONFIG_FILE = "tandem_vlm_reward.json"


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of −log σ(r⁺ − r⁻) over ``[N]`` rewards."""
    return -F.logsigmoid(chosen - rejected).mean()


class VLMRewardModel(torch.nn.Module):
    """A vision-language model plus a linear head reading the last real token's final hidden state."""

    def __init__(self, vlm: Any) -> None:
        super().__init__()
        self.vlm = vlm
        hidden = vlm.config.get_text_config().hidden_size
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """``[B]`` rewards for a right-padded batch from the model's processor."""
        out = self.vlm(**inputs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        last = inputs["attention_mask"].sum(dim=1) - 1
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(picked.float()).squeeze(-1)  # type: ignore[no-any-return]

    def save(self, path: str | Path, processor: Any) -> None:
        path = Path(path)
        self.vlm.save_pretrained(str(path))
        processor.save_pretrained(str(path))
        torch.save(self.head.state_dict(), path / HEAD_FILE)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> tuple[VLMRewardModel, Any]:
        """The saved reward model (eval mode) and its processor."""
        from training.vision import load_vlm

        vlm, processor = load_vlm(path, device, dtype="float32")
        model = cls(vlm)
        model.head.load_state_dict(torch.load(Path(path) / HEAD_FILE, weights_only=True))
        return model.to(vlm.device).eval(), processor


@dataclass
class VLMRewardConfig:
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs."})
    max_steps: int = field(
        default=-1, metadata={"help": "If > 0, optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=4, metadata={"help": "Pairs per step (two sequences each)."})
    seed: int = field(default=0, metadata={"help": "Head initialisation and data order."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _rendered(
    processor: Any, prompt: list[dict[str, Any]], completion: list[dict[str, Any]]
) -> str:
    return str(processor.apply_chat_template(prompt + completion, tokenize=False))


def _inputs(
    processor: Any, rows: Sequence[Mapping[str, Any]], images: Sequence[Any], key: str
) -> dict[str, torch.Tensor]:
    texts = [_rendered(processor, list(r["prompt"]), list(r[key])) for r in rows]
    processor.tokenizer.padding_side = "right"  # the head reads the last real token
    return dict(processor(text=texts, images=list(images), padding=True, return_tensors="pt"))


def score_pairs(
    model: VLMRewardModel,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    load_image: Callable[[str], Any],
    batch_size: int = 8,
) -> tuple[list[float], list[float]]:
    """Rewards of each row's chosen and rejected response, with its image."""
    chosen: list[float] = []
    rejected: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            pictures = [load_image(r["images"][0]).convert("RGB") for r in batch]
            for key, out in (("chosen", chosen), ("rejected", rejected)):
                inputs = {
                    k: v.to(device) for k, v in _inputs(processor, batch, pictures, key).items()
                }
                out.extend(model(**inputs).tolist())
    return chosen, rejected


def train_vlm_reward(
    rows: Sequence[Mapping[str, Any]],
    config: VLMRewardConfig,
    *,
    backbone: str | Path,
    load_image: Callable[[str], Any],
    output_dir: str | Path,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fit a Bradley–Terry reward head (and the whole backbone) on ``vision_pairs`` rows; save it.

    Rows are checked by ``training.vision_dpo.vision_rows`` first (a bad one raises ``RowError``
    naming its row and field); one image per row. Saved to ``output_dir`` with its processor
    (``VLMRewardModel.load``). Metrics: ``pairs``, ``steps``, ``loss_first``, ``loss_final``,
    ``seconds`` and, with ``eval_rows``, ``eval_accuracy`` (ties count half).
    """
    from transformers import get_scheduler

    from training.generation import resolve_device
    from training.vision import load_vlm
    from training.vision_dpo import vision_rows

    started = time.perf_counter()
    checked = vision_rows(rows)
    held_out = vision_rows(eval_rows) if eval_rows else []
    if any(len(r["images"]) != 1 for r in [*checked, *held_out]):
        raise ValueError("the VLM reward model takes exactly one image per row")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    vlm, processor = load_vlm(backbone, str(device), dtype="float32")
    model = VLMRewardModel(vlm).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    per_epoch = math.ceil(len(checked) / config.batch_size)
    steps = (
        config.max_steps if config.max_steps > 0 else max(1, math.ceil(per_epoch * config.epochs))
    )
    # Warm-up, linear decay and clipped gradients: a fresh head on a small backbone otherwise
    # overshoots and can undo what it learned (measured on the tiny LLaVA).
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=max(1, steps // 10), num_training_steps=steps
    )
    rng = random.Random(config.seed)
    order: list[int] = []
    losses: list[float] = []
    for _ in range(steps):
        if len(order) < config.batch_size:
            fresh = list(range(len(checked)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[: config.batch_size], order[config.batch_size :]
        batch = [checked[i] for i in picked]
        pictures = [load_image(r["images"][0]).convert("RGB") for r in batch]
        rewards = {
            key: model(
                **{k: v.to(device) for k, v in _inputs(processor, batch, pictures, key).items()}
            )
            for key in ("chosen", "rejected")
        }
        loss = bradley_terry_loss(rewards["chosen"], rewards["rejected"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    metrics: dict[str, Any] = {
        "pairs": len(checked),
        "steps": steps,
        "loss_first": losses[0],
        "loss_final": losses[-1],
    }
    if held_out:
        chosen, rejected = score_pairs(model, processor, held_out, load_image)
        wins = [
            1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)
        ]
        metrics["eval_accuracy"] = sum(wins) / len(wins)
    output_dir = Path(output_dir)
    model.save(output_dir, processor)
    (output_dir / CONFIG_FILE).write_text(json.dumps(asdict(config)))
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    return metrics
