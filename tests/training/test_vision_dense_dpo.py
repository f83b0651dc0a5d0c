"""Dense DPO on vision_pairs rows (RLHF-V): where γ lands in an encoded row, the loss of a plain
row against DPO worked out from the models' own log-probabilities, learning on the tiny LLaVA,
and rows refused before anything is published."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.training.vision_support import export_squares, reply
from training.artifacts import read_manifest
from training.data import RowError
from training.dense_dpo import DenseDPOConfig
from training.vision import build_tiny_vlm
from training.vision_dense_dpo import (
    EncodedVisionPair,
    encode_vision_pair,
    pair_batch,
    pair_loss,
    train_vision_dense_dpo,
)


def _corrections(export_dir: Path, offsets: list[int]) -> list[dict[str, Any]]:
    """One correction per image: the annotator replaced the wrong colour by the true one."""
    return export_squares(export_dir, offsets, correction=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """π_0, a second tiny LLaVA of another seed on the same tokenizer, and an export directory."""
    from transformers import AutoProcessor

    base = tmp_path_factory.mktemp("vision-dense")
    pi0 = build_tiny_vlm(base / "pi0", seed=0)
    other = build_tiny_vlm(base / "other", seed=1)
    processor = AutoProcessor.from_pretrained(str(pi0))
    assert (
        processor.tokenizer.get_vocab()
        == AutoProcessor.from_pretrained(str(other)).tokenizer.get_vocab()
    )
    export_dir = base / "export"
    return {"pi0": pi0, "other": other, "processor": processor, "export": export_dir}


def _open(world: dict[str, Any], row: dict[str, Any]) -> list[Image.Image]:
    return [Image.open(world["export"] / path).convert("RGB") for path in row["images"]]


def _encode(world: dict[str, Any], row: dict[str, Any], gamma: float = 3.0, max_length: int = 256):
    return encode_vision_pair(
        world["processor"], row, _open(world, row), gamma=gamma, max_length=max_length
    )


# --- encoding -----------------------------------------------------------------------------------


def test_gamma_lands_on_the_tokens_the_correction_changed(world: dict[str, Any]) -> None:
    tokenizer = world["processor"].tokenizer
    row = _corrections(world["export"], [0])[0]  # red image: "... is red." over "... is blue."
    item = _encode(world, row, gamma=3.0)
    assert item.correction
    changed = [t for t, w in zip(item.chosen_ids, item.chosen_weights, strict=True) if w == 3.0]
    replaced = [
        t for t, w in zip(item.rejected_ids, item.rejected_weights, strict=True) if w == 3.0
    ]
    assert "red" in tokenizer.decode(changed) and "blue" in tokenizer.decode(replaced)
    assert "square" not in tokenizer.decode(changed)  # the shared words keep weight 1
    assert set(item.chosen_weights) == {1.0, 3.0}
    assert item.chosen_ids[-1] == tokenizer.eos_token_id  # the template's end of turn
    # The image placeholder became one token per patch: (32 px / 8 px)² = 16.
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    assert item.prompt_ids.count(image_token) == 16
    # The same row without the flag is a plain pair: every completion token weighs 1.
    plain = _encode(world, {**row, "correction": False}, gamma=3.0)
    assert set(plain.chosen_weights) == set(plain.rejected_weights) == {1.0}
    assert (plain.chosen_ids, plain.prompt_ids) == (item.chosen_ids, item.prompt_ids)
    # Completions are cut to the room the whole prompt leaves; the prompt is never cut.
    short = _encode(world, row, max_length=len(item.prompt_ids) + 3)
    assert short.prompt_ids == item.prompt_ids
    assert (
        short.chosen_ids == item.chosen_ids[:3] and short.chosen_weights == item.chosen_weights[:3]
    )
    assert _encode(world, row, max_length=len(item.prompt_ids)).chosen_ids == []


def test_a_batch_masks_the_prompt_and_padding_and_repeats_each_rows_image(
    world: dict[str, Any],
) -> None:
    red, blue = _corrections(world["export"], [0])
    blue["rejected"] = reply("There is no square in the picture, only a large green circle.")
    items = [_encode(world, red), _encode(world, blue)]
    batch = pair_batch(items, [_open(world, red), _open(world, blue)], world["processor"])
    assert batch["input_ids"].shape[0] == 4  # chosen, chosen, rejected, rejected
    assert batch["pixel_values"].shape[0] == 4
    assert torch.equal(batch["pixel_values"][0], batch["pixel_values"][2])
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])
    sides = [items[0].chosen_ids, items[1].chosen_ids, items[0].rejected_ids, items[1].rejected_ids]
    weights = [
        items[0].chosen_weights,
        items[1].chosen_weights,
        items[0].rejected_weights,
        items[1].rejected_weights,
    ]
    for i, (ids, w) in enumerate(zip(sides, weights, strict=True)):
        p = len(items[i % 2].prompt_ids)
        end = p + len(ids)
        assert batch["input_ids"][i, :end].tolist() == items[i % 2].prompt_ids + ids
        assert batch["labels"][i, :p].eq(-100).all() and batch["labels"][i, end:].eq(-100).all()
        assert batch["labels"][i, p:end].tolist() == ids
        assert batch["weights"][i, p:end].tolist() == w
        assert batch["weights"][i, :p].eq(0).all() and batch["weights"][i, end:].eq(0).all()
        assert batch["attention_mask"][i].sum() == end


# --- the loss against DPO worked out from the models' own log-probabilities ----------------------


def _completion_logp(model: Any, world: dict[str, Any], item: EncodedVisionPair, side: str, row):
    """Σ_t log π(y_t | x, I, y_<t) over one completion, the sequence run alone (no batch, no
    padding): position t's logits predict token t+1."""
    completion = getattr(item, f"{side}_ids")
    inputs = world["processor"](
        images=_open(world, row),
        text=[item.prompt_text],
        add_special_tokens=False,
        return_tensors="pt",
    )
    ids = torch.tensor([item.prompt_ids + completion])
    with torch.no_grad():
        logits = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"]
        ).logits[0]
    start = len(item.prompt_ids)
    logps = logits.float().log_softmax(-1)
    return sum(float(logps[start + k - 1, token]) for k, token in enumerate(completion))


def test_a_plain_row_is_dpo_on_summed_log_probs(world: dict[str, Any]) -> None:
    from transformers import AutoModelForImageTextToText

    policy = AutoModelForImageTextToText.from_pretrained(str(world["other"])).eval()
    reference = AutoModelForImageTextToText.from_pretrained(str(world["pi0"])).eval()
    red, blue = _corrections(world["export"], [4])
    plain = {**red, "correction": False, "rejected": reply("I see a big blue circle.")}
    rows = [plain, blue]
    beta = 0.5
    expected = []
    for row in rows:
        item = _encode(world, row, gamma=1.0)
        lp = {
            (m, side): _completion_logp(model, world, item, side, row)
            for m, model in (("policy", policy), ("ref", reference))
            for side in ("chosen", "rejected")
        }
        z = beta * (
            (lp["policy", "chosen"] - lp["ref", "chosen"])
            - (lp["policy", "rejected"] - lp["ref", "rejected"])
        )
        expected.append(float(-F.logsigmoid(torch.tensor(z, dtype=torch.float64))))
    # γ = 1 on the correction and weight 1 on the plain row: both are exactly DPO's loss.
    items = [_encode(world, row, gamma=1.0) for row in rows]
    images = [_open(world, row) for row in rows]
    out = pair_loss(policy, reference, pair_batch(items, images, world["processor"]), beta=beta)
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert float(out.loss.detach()) == pytest.approx(sum(expected) / 2, rel=1e-4)
    assert not math.isclose(expected[0], math.log(2), abs_tol=1e-3)  # π ≠ π_0: a real test
    # γ = 3 changes the correction's loss only.
    dense = [_encode(world, row, gamma=3.0) for row in rows]
    weighted = pair_loss(
        policy, reference, pair_batch(dense, images, world["processor"]), beta=beta
    )
    assert float(weighted.losses[0]) == pytest.approx(expected[0], rel=1e-4, abs=1e-5)
    assert float(weighted.losses[1]) != pytest.approx(expected[1], rel=1e-3)


# --- training -----------------------------------------------------------------------------------


def _margins(model_path: Path, world: dict[str, Any], rows: list[dict[str, Any]]) -> torch.Tensor:
    """log π(corrected) − log π(original) per row, unweighted."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_path)).eval()
    out = []
    for row in rows:
        item = _encode(world, row, gamma=1.0)
        out.append(
            _completion_logp(model, world, item, "chosen", row)
            - _completion_logp(model, world, item, "rejected", row)
        )
    return torch.tensor(out)


@pytest.mark.slow
def test_training_on_corrections_raises_the_corrected_answers_margin(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from training.generation import GenerationConfig
    from training.vision_generation import VisionPrompt, make_vision_generator

    train = _corrections(world["export"], [0, 2, 4, 8])
    # The same text with both answers, once per colour: only the pixels can raise every margin.
    unchanged = {**train[0], "chosen": train[0]["rejected"]}
    tie = {**train[1], "tie": True}
    seen: list[Any] = []
    config = DenseDPOConfig(
        learning_rate=5e-3,
        beta=0.5,
        gamma=3.0,
        max_steps=16,
        batch_size=4,
        warmup_ratio=0.0,
        device="cpu",
    )
    result = train_vision_dense_dpo(
        [*train, unchanged, tie],
        config,
        images=world["export"],
        policy_ref=world["pi0"],
        reference_ref=world["pi0"],
        root=tmp_path / "runs",
        name="vision-dense-1",
        progress=seen.append,
        data_cursor="c1.1.8",
        parent="round-0",
    )
    metrics = result.metrics
    assert (metrics["pairs"], metrics["corrections"], metrics["steps"]) == (8, 8, 16)
    assert (metrics["skipped_unchanged"], metrics["skipped_too_long"]) == (1, 0)
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-4)  # π = π_0 at step 0
    assert metrics["loss_final"] < 0.45 and metrics["reward_accuracy_final"] == 1.0
    assert [p.step for p in seen] == list(range(1, 17)) and seen[-1].stage == "vision-dense-dpo"
    gain = _margins(result.path, world, train) - _margins(world["pi0"], world, train)
    assert bool((gain > 0).all()), gain.tolist()
    manifest = read_manifest(result.path)
    assert (manifest.kind, manifest.data_cursor, manifest.parent) == (
        "policy-vision-dense-dpo",
        "c1.1.8",
        "round-0",
    )
    assert manifest.config["gamma"] == 3.0 and manifest.config["reference_ref"] == str(world["pi0"])
    # Published with its processor: the loop's generator reloads it and answers about an image.
    generator = make_vision_generator("transformers", result.path, device="cpu")
    prompt = VisionPrompt(messages=train[0]["prompt"], images=_open(world, train[0]))
    answers = generator.generate([prompt], GenerationConfig(k=2, max_new_tokens=6, seed=1))
    assert len(answers) == 1 and len(answers[0]) == 2
    assert all(isinstance(text, str) for text in answers[0])


@pytest.mark.slow
def test_lora_trains_an_adapter_published_merged(world: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    rows = _corrections(world["export"], [0, 2])
    config = DenseDPOConfig(
        learning_rate=1e-2,
        max_steps=2,
        batch_size=2,
        warmup_ratio=0.0,
        lora=True,
        lora_r=4,
        device="cpu",
    )
    result = train_vision_dense_dpo(
        rows,
        config,
        images=world["export"],
        policy_ref=world["pi0"],
        reference_ref=world["pi0"],
        root=tmp_path,
        name="lora",
    )
    assert (result.path / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForImageTextToText.from_pretrained(str(result.path)).state_dict()
    base = AutoModelForImageTextToText.from_pretrained(str(world["pi0"])).state_dict()
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], base[k]) for k in base)


# --- rows refused at the door -------------------------------------------------------------------


def test_bad_rows_name_their_row_and_nothing_is_published(
    world: dict[str, Any], tmp_path: Path
) -> None:
    good = _corrections(world["export"], [0])[0]
    tie = {**good, "tie": True}
    cases = [
        # Row 3 of the caller's list, though the tie before it is not trained on.
        ([good, tie, {**good, "images": ["images/missing.png"]}], 3, "images", "not a file"),
        ([good, {**good, "chosen": reply("  ")}], 2, "chosen", "no text"),
        ([good, {**good, "rejected": []}], 2, "rejected", "non-empty list"),
        ([good, {**good, "images": []}], 2, "images", "non-empty list"),
    ]
    root = tmp_path / "runs"

    def train(rows: list[dict[str, Any]]) -> Any:
        return train_vision_dense_dpo(
            rows,
            DenseDPOConfig(max_steps=1, device="cpu"),
            images=world["export"],
            policy_ref=world["pi0"],
            reference_ref=world["pi0"],
            root=root,
            name="bad",
        )

    for rows, number, field, message in cases:
        with pytest.raises(RowError, match=message) as caught:
            train(rows)
        assert (caught.value.row, caught.value.field) == (number, field)
    with pytest.raises(ValueError, match="no vision pairs"):
        train([{**good, "chosen": good["rejected"]}])
    assert not root.exists() or not any(root.iterdir())
