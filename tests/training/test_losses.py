"""Ensemble aggregation and pair metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    aggregate_ensemble,
    expected_calibration_error,
    mean_margin,
    pairwise_accuracy,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


REWARDS = _t(1.0, 2.0, 0.0, 4.0, 3.0, 2.0).reshape(2, 3).T.contiguous()  # [K=3, N=2]
# member rewards for item 0: 1, 2, 0; for item 1: 4, 3, 2.


def test_ensemble_aggregations() -> None:
    assert aggregate_ensemble(REWARDS, "mean").tolist() == pytest.approx([1.0, 3.0])
    assert aggregate_ensemble(REWARDS, "worst").tolist() == [0.0, 2.0]
    # Population std of (1, 2, 0) and (4, 3, 2) is sqrt(2/3).
    std = math.sqrt(2 / 3)
    assert aggregate_ensemble(REWARDS, "uncertainty_weighted", lam=0.5).tolist() == pytest.approx(
        [1.0 - 0.5 * std, 3.0 - 0.5 * std]
    )
    assert aggregate_ensemble(REWARDS, "uncertainty_weighted", lam=0.0).tolist() == pytest.approx(
        [1.0, 3.0]
    )
    single = _t(5.0, 6.0).reshape(1, 2)
    assert aggregate_ensemble(single, "uncertainty_weighted", lam=3.0).tolist() == [5.0, 6.0]


def test_ensemble_rejects_wrong_shape_and_unknown_aggregation() -> None:
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        aggregate_ensemble(_t(1.0, 2.0))
    with pytest.raises(ValueError, match="unknown"):
        aggregate_ensemble(REWARDS, "median")  # type: ignore[arg-type]


def test_accuracy_counts_ties_as_half_and_margin_is_the_mean_gap() -> None:
    chosen, rejected = _t(2.0, 1.0, 0.0, 5.0), _t(1.0, 1.0, 3.0, 1.0)
    assert pairwise_accuracy(chosen, rejected) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert mean_margin(chosen, rejected) == pytest.approx((1 + 0 - 3 + 4) / 4)
    with pytest.raises(ValueError):
        pairwise_accuracy(_t(), _t())


def test_ece_by_hand() -> None:
    # Gap log 3 gives p = 0.75 twice and 0.25 twice (each pair shown both ways):
    # one pair right, one wrong. Bin [0.7, 0.8): confidence 0.75, outcomes {1, 0}
    # -> |0.5 − 0.75| = 0.25 on half the predictions; bin [0.2, 0.3) likewise.
    chosen, rejected = _t(math.log(3), 0.0), _t(0.0, math.log(3))
    assert expected_calibration_error(chosen, rejected) == pytest.approx(0.25)
    # Always right with p = 0.75: the gap is |1 − 0.75| and |0 − 0.25|, both 0.25.
    assert expected_calibration_error(_t(math.log(3)), _t(0.0)) == pytest.approx(0.25)


def test_ece_is_zero_for_a_coin_flip_model_and_perfect_confidence() -> None:
    assert expected_calibration_error(_t(0.0, 0.0), _t(0.0, 0.0)) == pytest.approx(0.0)
    assert expected_calibration_error(_t(100.0), _t(0.0)) == pytest.approx(0.0, abs=1e-12)


def test_ece_depends_on_bins() -> None:
    # p = 0.6 and 0.9, both right: with 1 bin (both sides pooled) the errors cancel;
    # with 10 bins each prediction is off by 0.4 or 0.1.
    chosen = _t(math.log(1.5), math.log(9))
    rejected = _t(0.0, 0.0)
    assert expected_calibration_error(chosen, rejected, bins=1) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(chosen, rejected, bins=10) == pytest.approx((0.4 + 0.1) / 2)
