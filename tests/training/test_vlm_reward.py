"""The reward model on the vision-language backbone learns a preference only the image decides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.training.vision_support import COLOURS, colour_row, square, square_path
from training.data import RowError
from training.vision import build_tiny_vlm
from training.vlm_reward import (
    VLMRewardConfig,
    VLMRewardModel,
    bradley_terry_loss,
    score_pairs,
    train_vlm_reward,
)


def _rows(offsets: list[int]) -> tuple[list[dict[str, Any]], dict[str, Image.Image]]:
    """vision_pairs rows (the true colour chosen) and their images, held in memory: a large red
    or blue square (``tests.training.vision_support``), so only the pixels tell the pairs apart.
    """
    rows, images = [], {}
    for offset in offsets:
        for colour in COLOURS:
            path = square_path(colour, offset)
            images[path] = square(colour, offset)
            rows.append(colour_row(path, colour))
    return rows, images


def test_bradley_terry_loss_by_hand() -> None:
    # −log σ(2 − 0) = log(1 + e^−2) ≈ 0.12693;  −log σ(0 − 1) = log(1 + e^1) ≈ 1.31326
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert float(loss) == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.e)) / 2)


@pytest.mark.slow
def test_vlm_reward_learns_what_only_the_image_decides(tmp_path: Path) -> None:
    train, images = _rows([0, 2, 4, 8])
    held_out, more = _rows([3, 6])
    images.update(more)
    backbone = build_tiny_vlm(tmp_path / "vlm")
    config = VLMRewardConfig(learning_rate=1e-3, max_steps=120, batch_size=8, device="cpu")
    metrics = train_vlm_reward(
        train,
        config,
        backbone=backbone,
        load_image=images.__getitem__,
        output_dir=tmp_path / "rm",
        eval_rows=held_out,
    )
    assert metrics["pairs"] == 8 and metrics["steps"] == 120
    # The texts alone cannot bring the loss below ln 2 on average; the pixels must.
    assert metrics["loss_final"] < 0.45, metrics
    assert metrics["eval_accuracy"] == 1.0, metrics
    model, processor = VLMRewardModel.load(tmp_path / "rm")
    chosen, rejected = score_pairs(model, processor, held_out, images.__getitem__)
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))


def test_rows_are_checked_before_any_model_loads(tmp_path: Path) -> None:
    rows, images = _rows([0])
    with pytest.raises(RowError, match="images"):
        train_vlm_reward(
            [{**rows[0], "images": ["/etc/passwd"]}],
            VLMRewardConfig(max_steps=1),
            backbone=tmp_path / "missing",
            load_image=images.__getitem__,
            output_dir=tmp_path / "rm",
        )
