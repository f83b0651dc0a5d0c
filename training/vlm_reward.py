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

``heads`` > 1 makes the head an ensemble on the shared backbone (the linear-layer ensemble of
Zhang et al. 2024, "Improving RLHF with Efficient Reward Model Ensemble"): one copy of the
vision-language model, H linear heads, so H members cost one member's memory. Heads on the
same features trained on the same pairs would agree, so each head h trains on its own bootstrap
resample (Osband et al. 2016, bootstrapped heads on a shared network): a weight w_{h,i} ~
Poisson(1) per head and pair, drawn once from the seed, and

    L = (1 / (N·H)) Σ_i Σ_h w_{h,i} · −log σ(r_h(x_i, I_i, y_w) − r_h(x_i, I_i, y_l)),

which is the plain loss above in expectation (E[w] = 1). One head trains on every pair with
weight 1. The heads' spread is the disagreement the online loop orders its queue by; they share
the backbone, so it measures less of the model's uncertainty than independent members would.
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

import numpy as np
import torch
import torch.nn.functional as F

from training.artifacts import Progress, ProgressCallback, read_manifest

__all__ = [
    "PUBLISHED_KIND",
    "VLMRewardConfig",
    "VLMRewardModel",
    "bootstrap_weights",
    "bradley_terry_loss",
    "is_vlm_reward",
    "score_completions",
    "score_pairs",
    "train_vlm_reward",
]

HEAD_FILE = "reward_head.pt"
CONFIG_FILE = "tandem_vlm_reward.json"
# The manifest kind of a published VLM reward run (the CLI's ``vlm-reward`` and the online loop).
PUBLISHED_KIND = "reward-vlm"


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of w · −log σ(r⁺ − r⁻) over rewards of any shape (``[N]``, or ``[N, H]`` for H heads),
    ``weights`` w of the same shape (the heads' bootstrap weights; none: every w = 1)."""
    losses = -F.logsigmoid(chosen - rejected)
    return losses.mean() if weights is None else (weights * losses).mean()


def bootstrap_weights(pairs: int, heads: int, seed: int) -> torch.Tensor:
    """``[pairs, heads]`` weights of each pair in each head's loss: Poisson(1) draws (the online
    form of resampling the pairs with replacement), fixed by ``seed``; all 1 for one head."""
    if heads == 1:
        return torch.ones(pairs, 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(pairs, heads), generator=generator)


def is_vlm_reward(path: str | Path) -> bool:
    """Whether ``path`` is a published VLM reward run (not a text reward ensemble)."""
    try:
        return read_manifest(path).kind == PUBLISHED_KIND
    except FileNotFoundError:
        return False


class VLMRewardModel(torch.nn.Module):
    """A vision-language model plus ``heads`` linear heads reading the last real token's final
    hidden state."""

    def __init__(self, vlm: Any, heads: int = 1) -> None:
        super().__init__()
        self.vlm = vlm
        hidden = vlm.config.get_text_config().hidden_size
        self.head = torch.nn.Linear(hidden, heads)

    @property
    def heads(self) -> int:
        return int(self.head.out_features)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """``[B, heads]`` rewards for a right-padded batch from the model's processor."""
        out = self.vlm(**inputs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        last = inputs["attention_mask"].sum(dim=1) - 1
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(picked.float())  # type: ignore[no-any-return]

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
        state = torch.load(Path(path) / HEAD_FILE, weights_only=True)
        model = cls(vlm, heads=int(state["weight"].shape[0]))
        model.head.load_state_dict(state)
        return model.to(vlm.device).eval(), processor


@dataclass
class VLMRewardConfig:
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the pairs."})
    max_steps: int = field(
        default=-1, metadata={"help": "If > 0, optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=4, metadata={"help": "Pairs per step (two sequences each)."})
    seed: int = field(
        default=0, metadata={"help": "Head initialisation, bootstrap weights and data order."}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    heads: int = field(
        default=1,
        metadata={
            "help": "Linear heads on the shared backbone, each on its own bootstrap resample: "
            "an ensemble whose spread is the loop's disagreement (1: one plain reward model)."
        },
    )


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


def _rewards(
    model: VLMRewardModel,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    load_image: Callable[[str], Any],
    keys: Sequence[str],
    batch_size: int,
) -> list[torch.Tensor]:
    """``[N, heads]`` rewards of each row's completion under each of ``keys``, with its image."""
    out: list[list[torch.Tensor]] = [[] for _ in keys]
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            pictures = [load_image(r["images"][0]).convert("RGB") for r in batch]
            for key, found in zip(keys, out, strict=True):
                inputs = {
                    k: v.to(device) for k, v in _inputs(processor, batch, pictures, key).items()
                }
                found.append(model(**inputs).cpu())
    return [torch.cat(found) if found else torch.zeros(0, model.heads) for found in out]


def score_pairs(
    model: VLMRewardModel,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    load_image: Callable[[str], Any],
    batch_size: int = 8,
) -> tuple[list[float], list[float]]:
    """Rewards (the heads' mean) of each row's chosen and rejected response, with its image."""
    chosen, rejected = _rewards(
        model, processor, rows, load_image, ("chosen", "rejected"), batch_size
    )
    return chosen.mean(dim=1).tolist(), rejected.mean(dim=1).tolist()


def score_completions(
    model: VLMRewardModel,
    processor: Any,
    rows: Sequence[Mapping[str, Any]],
    load_image: Callable[[str], Any],
    batch_size: int = 8,
) -> np.ndarray:
    """``[heads, N]`` rewards of each row's ``completion`` (assistant messages) after its
    ``prompt``, with its one image (``images``): each head's, as a reward ensemble's members."""
    (rewards,) = _rewards(model, processor, rows, load_image, ("completion",), batch_size)
    return rewards.T.double().numpy()


def _held_out_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, Any]:
    """``training.reward_ensemble.evaluate_pairs``' figures for ``[N, heads]`` rewards: the mean
    reward's accuracy (a tie counts half), margin and ECE, each head's accuracy, the mean spread."""
    from training.losses import expected_calibration_error, mean_margin, pairwise_accuracy

    c, r = chosen.double(), rejected.double()
    return {
        "n": int(c.shape[0]),
        "accuracy": pairwise_accuracy(c.mean(dim=1), r.mean(dim=1)),
        "mean_margin": mean_margin(c.mean(dim=1), r.mean(dim=1)),
        "ece": expected_calibration_error(c.mean(dim=1), r.mean(dim=1)),
        "member_accuracy": [pairwise_accuracy(c[:, h], r[:, h]) for h in range(c.shape[1])],
        "mean_std": float(torch.cat([c, r]).std(dim=1, unbiased=False).mean()),
    }


def train_vlm_reward(
    rows: Sequence[Mapping[str, Any]],
    config: VLMRewardConfig,
    *,
    backbone: str | Path,
    load_image: Callable[[str], Any],
    output_dir: str | Path,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Fit Bradley–Terry reward heads (and the whole backbone) on ``vision_pairs`` rows; save it.

    Rows are checked by ``training.vision_dpo.vision_rows`` first (a bad one raises ``RowError``
    naming its row and field); one image per row. Saved to ``output_dir`` with its processor
    (``VLMRewardModel.load``); not atomic by itself (publish through
    ``training.artifacts.publish_run``). ``progress`` hears of every step (stage
    ``"vlm-reward"``) and may raise to stop the training. Metrics: ``pairs``, ``heads``,
    ``steps``, ``loss_first``, ``loss_final``, ``seconds`` and, with ``eval_rows``,
    ``eval_accuracy`` (the heads' mean reward; ties count half) and ``eval`` (as
    ``evaluate_pairs``: n, accuracy, mean_margin, ece, member_accuracy, mean_std).
    """
    from transformers import get_scheduler

    from training.generation import resolve_device
    from training.vision import load_vlm
    from training.vision_dpo import vision_rows

    if config.heads < 1:
        raise ValueError(f"the VLM reward model needs at least one head, got {config.heads}")
    started = time.perf_counter()
    checked = vision_rows(rows)
    held_out = vision_rows(eval_rows) if eval_rows else []
    if any(len(r["images"]) != 1 for r in [*checked, *held_out]):
        raise ValueError("the VLM reward model takes exactly one image per row")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    vlm, processor = load_vlm(backbone, str(device), dtype="float32")
    model = VLMRewardModel(vlm, heads=config.heads).to(device).train()
    weights = bootstrap_weights(len(checked), config.heads, config.seed).to(device)
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
        loss = bradley_terry_loss(rewards["chosen"], rewards["rejected"], weights[picked])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(Progress("vlm-reward", len(losses), steps, losses[-1]))
    model.eval()
    metrics: dict[str, Any] = {
        "pairs": len(checked),
        "heads": config.heads,
        "steps": steps,
        "loss_first": losses[0],
        "loss_final": losses[-1],
    }
    if held_out:
        chosen, rejected = _rewards(
            model, processor, held_out, load_image, ("chosen", "rejected"), 8
        )
        metrics["eval"] = _held_out_metrics(chosen, rejected)
        metrics["eval_accuracy"] = metrics["eval"]["accuracy"]
    output_dir = Path(output_dir)
    model.save(output_dir, processor)
    (output_dir / CONFIG_FILE).write_text(json.dumps(asdict(config)))
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    return metrics
