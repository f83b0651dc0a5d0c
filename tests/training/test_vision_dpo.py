"""Vision DPO on `vision_pairs` rows: the tiny LLaVA learns a preference only the image can decide
with its image encoder frozen (trained only when asked), and rows are checked at the door (paths
that leave the export, wrong image counts, broken files)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.training.vision_support import colour_row, export_squares
from training.artifacts import read_manifest
from training.data import RowError
from training.dpo import DPOConfig
from training.vision import build_tiny_vlm, freeze_image_encoder, image_encoder
from training.vision_dpo import train_vision_dpo, vision_dataset, vision_rows


def _row(image: str, colour: str) -> dict[str, Any]:
    """A vision_pairs row as the export writes it: the true colour chosen, the other rejected."""
    return colour_row(image, colour, task_id=1, cursor="c1.1.1")


def _export(export_dir: Path, offsets: list[int]) -> list[dict[str, Any]]:
    """A red and a blue square per offset (``tests.training.vision_support``), saved in
    ``export_dir``."""
    return export_squares(export_dir, offsets, task_id=1, cursor="c1.1.1")


@pytest.mark.slow
def test_vision_dpo_learns_what_only_the_image_decides(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    train = _export(export_dir, [0, 2, 4, 8])
    held_out = _export(export_dir, [3, 6])
    # The same text with both answers, once per colour: without the image the loss cannot fall
    # below ln 2 on average, so falling well below it means the pixels decided.
    assert {r["chosen"][0]["content"][0]["text"] for r in train} == {
        r["rejected"][0]["content"][0]["text"] for r in train
    }
    pi0 = build_tiny_vlm(tmp_path / "pi0")
    config = DPOConfig(
        learning_rate=5e-3, beta=0.5, max_steps=16, batch_size=4, warmup_ratio=0.0, device="cpu"
    )
    result = train_vision_dpo(
        train,
        config,
        images=export_dir,
        policy_ref=pi0,
        reference_ref=pi0,
        root=tmp_path / "runs",
        name="vision-dpo-1",
        eval_rows=held_out,
        data_cursor="c1.1.8",
    )
    metrics = result.metrics
    assert metrics["steps"] == 16 and metrics["pairs"] == 8
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-3)  # π = π_0 at step 0
    assert metrics["loss_final"] < 0.45
    assert metrics["rewards/accuracies"] == 1.0
    # Images it never saw: the trained policy still prefers the answer the pixels support.
    assert metrics["eval_rewards/accuracies"] == 1.0
    assert metrics["eval_loss"] < math.log(2)
    manifest = read_manifest(result.path)
    assert (manifest.kind, manifest.data_cursor) == ("policy-vision-dpo", "c1.1.8")
    assert manifest.config["reference_ref"] == str(pi0)
    from training.vision import load_vlm

    model, processor = load_vlm(result.path, "cpu")  # published with its processor
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index
    # The image encoder stayed as π_0's (frozen by default); the rest learnt.
    before, _ = load_vlm(pi0, "cpu")
    assert _same_weights(image_encoder(model), image_encoder(before))
    assert not _same_weights(model.model.multi_modal_projector, before.model.multi_modal_projector)


def _same_weights(a: Any, b: Any) -> bool:
    import torch

    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.slow
def test_the_image_encoder_trains_only_when_asked(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    train = _export(export_dir, [0, 2])
    pi0 = build_tiny_vlm(tmp_path / "pi0")
    config = DPOConfig(
        learning_rate=5e-3,
        max_steps=2,
        batch_size=4,
        warmup_ratio=0.0,
        device="cpu",
        train_image_encoder=True,
    )
    result = train_vision_dpo(
        train,
        config,
        images=export_dir,
        policy_ref=pi0,
        reference_ref=pi0,
        root=tmp_path / "runs",
        name="with-encoder",
    )
    from training.vision import load_vlm

    trained, _ = load_vlm(result.path, "cpu")
    before, _ = load_vlm(pi0, "cpu")
    assert not _same_weights(image_encoder(trained), image_encoder(before))
    assert freeze_image_encoder(trained) == sum(
        p.numel() for p in image_encoder(trained).parameters()
    )
    assert not any(p.requires_grad for p in image_encoder(trained).parameters())


def test_rows_are_checked_at_the_door(tmp_path: Path) -> None:
    good = _row("images/a.png", "red")
    assert vision_rows([good, {**good, "tie": True}]) == [
        {k: good[k] for k in ("images", "prompt", "chosen", "rejected")}
    ]
    bad_rows = [
        ({**good, "images": ["/etc/passwd"]}, "images", "relative path"),
        ({**good, "images": ["images/../../secret.png"]}, "images", "relative path"),
        ({**good, "images": []}, "images", "non-empty list"),
        ({**good, "images": ["a.png", "b.png"]}, "prompt", "1 image parts for 2 images"),
        (
            {**good, "chosen": [{"role": "user", "content": "x"}]},
            "chosen",
            "assistant messages",
        ),
        (
            {**good, "rejected": [{"role": "assistant", "content": [{"type": "image"}]}]},
            "rejected",
            "each part must be {'type': 'text'",
        ),
        ({**good, "prompt": [{"role": "robot", "content": "hi"}]}, "prompt", "role"),
    ]
    for row, field, message in bad_rows:
        with pytest.raises(RowError, match=message) as caught:
            vision_rows([good, row])
        assert (caught.value.row, caught.value.field) == (2, field)


def test_images_must_exist_inside_the_export_and_open(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    (export_dir / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(export_dir / "images" / "ok.png")
    (export_dir / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "outside.png").write_bytes((export_dir / "images" / "ok.png").read_bytes())
    (export_dir / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    rows = vision_rows([_row("images/ok.png", "red")])
    dataset = vision_dataset(rows, export_dir)
    assert type(dataset.features["images"].feature).__name__ == "Image"
    assert dataset[0]["images"][0].size == (8, 8)
    for name, message in [
        ("missing.png", "not a file inside"),
        ("link.png", "not a file inside"),  # a symlink out of the export
        ("broken.png", "cannot open"),
    ]:
        with pytest.raises(RowError, match=message):
            vision_dataset(vision_rows([_row(f"images/{name}", "red")]), export_dir)
    # A loader instead of a directory (e.g. images fetched from the web app's store).
    seen: list[str] = []

    def load(path: str) -> Image.Image:
        seen.append(path)
        return Image.new("L", (5, 4))

    loaded = vision_dataset(rows, load)
    assert seen == ["images/ok.png"] and loaded[0]["images"][0].size == (5, 4)
    assert loaded[0]["images"][0].mode == "RGB"
    assert json.dumps(rows)  # validated rows stay plain JSON
