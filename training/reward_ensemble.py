"""Scoring with a trained reward ensemble: per-member rewards, their aggregations, held-out metrics.

``RewardEnsemble.load`` reads what ``training.reward.train_reward_ensemble``
publishes; its spread across members is the disagreement signal that orders
the annotation queue, and its conservative aggregations follow Coste et al.
2024, "Reward Model Ensembles Help Mitigate Overoptimization".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.data import Message, PreferencePair
from training.losses import (
    aggregate_ensemble,
    expected_calibration_error,
    mean_margin,
    pairwise_accuracy,
)
from training.models import load_reward_backbone, load_tokenizer
from training.reward_encoding import ENCODING_FILE, Encoding, encode


@dataclass(frozen=True)
class EnsembleScores:
    """Rewards of ``K`` members for ``N`` items; ``members`` has shape ``[K, N]``."""

    members: np.ndarray

    def _aggregate(
        self, how: Literal["mean", "worst", "uncertainty_weighted"], lam: float = 0.0
    ) -> np.ndarray:
        return aggregate_ensemble(torch.from_numpy(self.members), how, lam=lam).numpy()

    @property
    def mean(self) -> np.ndarray:
        """``[N]`` mean over members."""
        return self._aggregate("mean")

    @property
    def std(self) -> np.ndarray:
        """``[N]`` population standard deviation over members: the disagreement signal."""
        return self.members.std(axis=0)

    @property
    def worst(self) -> np.ndarray:
        """``[N]`` minimum over members (worst-case optimisation, Coste et al. 2024)."""
        return self._aggregate("worst")

    def uncertainty_weighted(self, lam: float) -> np.ndarray:
        """``[N]`` mean − λ·std (uncertainty-weighted optimisation, Coste et al. 2024, with std for Var)."""
        return self._aggregate("uncertainty_weighted", lam)


class RewardEnsemble:
    """K trained reward models that score (prompt, completion) pairs together.

    ``load`` accepts a published ensemble run (``members/0``, ``members/1``, ...)
    or a single model directory (then K = 1).
    """

    def __init__(
        self, models: list[Any], tokenizers: list[Any], encodings: list[Encoding], device: str
    ) -> None:
        self.models = models
        self.tokenizers = tokenizers
        self.encodings = encodings
        self.device = device

    def __len__(self) -> int:
        return len(self.models)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> RewardEnsemble:
        path = Path(path)
        members_dir = path / "members"
        if members_dir.is_dir():
            dirs = sorted(
                (d for d in members_dir.iterdir() if d.is_dir()), key=lambda d: int(d.name)
            )
        else:
            dirs = [path]
        if not dirs:
            raise FileNotFoundError(f"{path} holds no reward models")
        models: list[Any] = []
        tokenizers, encodings = [], []
        for member in dirs:
            model: Any = load_reward_backbone(member)
            models.append(model.to(device).eval())
            tokenizers.append(load_tokenizer(member))
            settings = json.loads((member / ENCODING_FILE).read_text())
            encodings.append(Encoding(**settings))
        return cls(models, tokenizers, encodings, device)

    @torch.no_grad()
    def _score_member(
        self,
        k: int,
        prompts: Sequence[Sequence[Message]],
        completions: Sequence[Any],
        batch_size: int,
    ) -> np.ndarray:
        model, tokenizer, encoding = self.models[k], self.tokenizers[k], self.encodings[k]
        ids = [encode(tokenizer, p, c, encoding) for p, c in zip(prompts, completions, strict=True)]
        # Batching by length wastes less compute on padding; results go back in input order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = np.empty(len(ids), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                attention[row, : len(ids[i])] = 1
            logits = model(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
            ).logits
            scores[batch] = logits[:, 0].float().cpu().numpy()
        return scores

    def score(
        self,
        prompts: Sequence[Sequence[Message]],
        completions: Sequence[Sequence[Message] | str],
        batch_size: int = 32,
    ) -> EnsembleScores:
        """Reward of each ``completions[i]`` given ``prompts[i]`` under every member: ``members`` is ``[K, N]``.

        A string completion is one assistant message.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return EnsembleScores(np.zeros((len(self), 0)))
        members = [
            self._score_member(k, prompts, completions, batch_size) for k in range(len(self))
        ]
        return EnsembleScores(np.stack(members))


def _pair_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    c, r = torch.from_numpy(chosen), torch.from_numpy(rejected)
    return {
        "accuracy": pairwise_accuracy(c, r),
        "mean_margin": mean_margin(c, r),
        "ece": expected_calibration_error(c, r),
    }


def evaluate_pairs(
    ensemble: RewardEnsemble,
    pairs: Sequence[PreferencePair],
    *,
    lam: float = 1.0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Held-out metrics of an ensemble on untied human pairs.

    ``accuracy``, ``mean_margin`` and ``ece`` use the mean reward;
    ``accuracy_worst`` and ``accuracy_uncertainty_weighted`` (mean − ``lam``·std)
    the conservative aggregations of Coste et al. 2024; ``member_accuracy``
    lists each member's own; ``mean_std`` is the average member disagreement
    over both completions; ``n`` counts the pairs (ties are ignored).
    """
    usable = [pair for pair in pairs if not pair.tie]
    if not usable:
        raise ValueError("no untied pairs to evaluate")
    prompts = [pair.prompt for pair in usable]
    chosen = ensemble.score(prompts, [pair.chosen for pair in usable], batch_size)
    rejected = ensemble.score(prompts, [pair.rejected for pair in usable], batch_size)
    metrics: dict[str, Any] = {"n": len(usable), **_pair_metrics(chosen.mean, rejected.mean)}
    metrics["accuracy_worst"] = _pair_metrics(chosen.worst, rejected.worst)["accuracy"]
    metrics["accuracy_uncertainty_weighted"] = _pair_metrics(
        chosen.uncertainty_weighted(lam), rejected.uncertainty_weighted(lam)
    )["accuracy"]
    metrics["member_accuracy"] = [
        _pair_metrics(chosen.members[k], rejected.members[k])["accuracy"]
        for k in range(len(ensemble))
    ]
    metrics["mean_std"] = float(np.concatenate([chosen.std, rejected.std]).mean())
    return metrics
