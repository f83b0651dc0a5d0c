"""The VLM reward model's heads: an ensemble on one vision-language backbone, each head on its own
bootstrap resample, scored member by member as the online loop reads a reward ensemble."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_vlm_reward import _rows
from training.artifacts import publish_run
from training.vision import build_tiny_vlm
from training.vlm_reward import (
    PUBLISHED_KIND,
    VLMRewardConfig,
    VLMRewardModel,
    bootstrap_weights,
    bradley_terry_loss,
    is_vlm_reward,
    score_completions,
    score_pairs,
    train_vlm_reward,
)


def test_the_weighted_loss_by_hand() -> None:
    chosen = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # [pairs, heads]
    rejected = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    weights = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    # (2·log(1 + e^−2) + 0·log(1 + e) + 1·log 2 + 3·log 2) / 4
    expected = (2 * math.log1p(math.exp(-2)) + 4 * math.log(2)) / 4
    assert float(bradley_terry_loss(chosen, rejected, weights)) == pytest.approx(expected)
    # Weight 1 everywhere is the plain mean.
    plain = (math.log1p(math.exp(-2)) + math.log1p(math.e) + 2 * math.log(2)) / 4
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(plain)
    assert float(bradley_terry_loss(chosen, rejected, torch.ones(2, 2))) == pytest.approx(plain)


def test_each_head_draws_its_own_resample_and_one_head_takes_every_pair() -> None:
    assert torch.equal(bootstrap_weights(5, 1, seed=3), torch.ones(5, 1))
    weights = bootstrap_weights(2000, 3, seed=3)
    assert weights.shape == (2000, 3)
    assert torch.equal(weights, bootstrap_weights(2000, 3, seed=3))
    assert not torch.equal(weights, bootstrap_weights(2000, 3, seed=4))
    # Poisson(1): mean 1, a pair left out of a head's resample with probability e^−1.
    assert float(weights.mean()) == pytest.approx(1.0, abs=0.05)
    assert float((weights == 0).float().mean()) == pytest.approx(math.exp(-1), abs=0.03)
    assert not torch.equal(weights[:, 0], weights[:, 1])


def test_only_a_published_vlm_reward_run_counts_as_one(tmp_path: Path) -> None:
    with publish_run(tmp_path, "vlm", kind=PUBLISHED_KIND, config={}):
        pass
    with publish_run(tmp_path, "ensemble", kind="reward_ensemble", config={}):
        pass
    assert is_vlm_reward(tmp_path / "vlm")
    assert not is_vlm_reward(tmp_path / "ensemble")
    assert not is_vlm_reward(tmp_path / "missing")


@pytest.mark.slow
def test_three_heads_learn_the_image_and_score_as_members(tmp_path: Path) -> None:
    train, images = _rows([0, 2, 4, 8])
    held_out, more = _rows([3, 6])
    images.update(more)
    seen = []
    config = VLMRewardConfig(learning_rate=1e-3, max_steps=120, batch_size=8, device="cpu", heads=3)
    metrics = train_vlm_reward(
        train,
        config,
        backbone=build_tiny_vlm(tmp_path / "vlm"),
        load_image=images.__getitem__,
        output_dir=tmp_path / "rm",
        eval_rows=held_out,
        progress=seen.append,
    )
    assert metrics["heads"] == 3 and metrics["steps"] == 120
    assert [p.step for p in seen] == list(range(1, 121)) and seen[-1].stage == "vlm-reward"
    held = metrics["eval"]
    assert held["n"] == len(held_out) and held["accuracy"] == metrics["eval_accuracy"] == 1.0
    assert len(held["member_accuracy"]) == 3 and held["mean_std"] > 0

    model, processor = VLMRewardModel.load(tmp_path / "rm")
    assert model.heads == 3
    completions = [{**row, "completion": row["chosen"]} for row in held_out]
    members = score_completions(model, processor, completions, images.__getitem__)
    assert members.shape == (3, len(held_out))
    assert not np.allclose(members[0], members[1])  # each head its own resample and start
    # The heads' mean is the single reward score_pairs reports.
    chosen, _ = score_pairs(model, processor, held_out, images.__getitem__)
    assert members.mean(axis=0) == pytest.approx(chosen, abs=1e-5)
