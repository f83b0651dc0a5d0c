"""Ensemble aggregation and held-out pair metrics, as pure tensor functions.

TRL's ``RewardTrainer`` computes the Bradley–Terry training loss (with the
optional per-pair margin, Llama 2 Eq. 2); these functions cover what TRL does
not provide: combining ensemble members and scoring held-out pairs.
Shapes: ``N`` pairs, ``K`` ensemble members.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["mean", "worst", "uncertainty_weighted"]


def aggregate_ensemble(
    rewards: torch.Tensor, how: Aggregation = "mean", *, lam: float = 0.0
) -> torch.Tensor:
    """Combine ``K`` members' rewards ``[K, N]`` into one reward per item ``[N]``.

    From Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization", Sec. 3:

    - ``"mean"``: ``R̄ = (1/K) Σₖ Rₖ``;
    - ``"worst"`` (worst-case optimisation, WCO): ``min_k Rₖ``;
    - ``"uncertainty_weighted"`` (UWO): ``R̄ − λ · Var_k(Rₖ)`` in the paper;
      we subtract ``λ`` times the standard deviation instead, so that ``λ``
      is in reward units and does not depend on the scale of the rewards.
      The standard deviation is the population one (divide by ``K``), which
      stays defined for ``K = 1`` (then zero).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [K, N], got {tuple(rewards.shape)}")
    if how == "mean":
        return rewards.mean(dim=0)
    if how == "worst":
        return rewards.min(dim=0).values
    if how == "uncertainty_weighted":
        return rewards.mean(dim=0) - lam * rewards.std(dim=0, correction=0)
    raise ValueError(f"unknown aggregation {how!r}")


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs ranked correctly, ``mean 1[r⁺ > r⁻]``, for ``[N]`` rewards; an exact tie counts as half."""
    if chosen.numel() == 0:
        raise ValueError("accuracy of zero pairs is undefined")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return float(wins.mean())


def mean_margin(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Mean reward gap ``mean(r⁺ − r⁻)`` over ``[N]`` pairs (TRL logs the same as ``margin``)."""
    if chosen.numel() == 0:
        raise ValueError("mean margin of zero pairs is undefined")
    return float((chosen - rejected).mean())


def expected_calibration_error(
    chosen: torch.Tensor, rejected: torch.Tensor, *, bins: int = 10
) -> float:
    """Expected calibration error of the Bradley–Terry probability ``p = σ(r⁺ − r⁻)``.

    Each pair is shown both ways round, (``p``, outcome 1) and (``1 − p``,
    outcome 0), so the confidences cover [0, 1] and a model that always says
    0.5 scores 0, not 0.5 (the symmetric form used for reward models, e.g.
    Zhu et al. 2023, "On the Calibration of Reward Models"). Predictions go to
    ``bins`` equal-width bins on [0, 1]; with ``n_b`` predictions in bin b,

    ``ECE = Σ_b (n_b / 2N) · |mean(outcome)_b − mean(p)_b|``   (Guo et al. 2017, Eq. 3)

    ``chosen``/``rejected`` are ``[N]``; returns a value in [0, 1].
    """
    if chosen.numel() == 0:
        raise ValueError("calibration of zero pairs is undefined")
    p = torch.sigmoid((chosen - rejected).double())
    confidence = torch.cat([p, 1 - p])
    outcome = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    # p = 1.0 belongs in the last bin, not a bin of its own.
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    total = confidence.numel()
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        in_bin = index == b
        count = int(in_bin.sum())
        if count:
            gap = (outcome[in_bin].mean() - confidence[in_bin].mean()).abs()
            ece += count / total * gap
    return float(ece)
