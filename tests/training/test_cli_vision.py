"""``python -m training`` on the hallucination kind's exports: vision DPO, the VLM and Fact-RLHF
reward models and generation with images run in-process on a tiny LLaVA, and image paths that
leave the export (or are missing or broken) are refused with exit status 2 before anything loads
or is written."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.training.test_cli import help_text, run, write_jsonl
from tests.training.test_fact_reward import swapped_pairs
from tests.training.test_vision_dpo import _export
from tests.training.test_vision_generation import tiny_vlm  # noqa: F401  (fixture)
from training.artifacts import is_published, read_manifest
from training.cli import main
from training.dpo import DPOConfig
from training.generation import GenerationConfig
from training.reward import RewardConfig
from training.vlm_reward import VLMRewardConfig

COMMANDS = {
    "vision-dpo": DPOConfig,
    "vlm-reward": VLMRewardConfig,
    "fact-reward": RewardConfig,
    "vision-generate": GenerationConfig,
}


@pytest.mark.parametrize(("command", "config"), COMMANDS.items())
def test_help_lists_the_command_and_its_config_fields(
    capsys: pytest.CaptureFixture[str], command: str, config: type
) -> None:
    assert command in help_text(capsys)
    text = help_text(capsys, command)
    assert f"python -m training {command}" in text and "object at 0x" not in text
    # argparse may wrap a line after a hyphen ("sentence- transformers"): compare without spaces.
    squeezed = "".join(text.split())
    for f in dataclasses.fields(config):
        assert "--" + f.name.replace("_", "-") in text
        assert "".join(f.metadata["help"].split()) in squeezed


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must be refused as bad input; return what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no JSON result: nothing was made
    return " ".join(captured.err.split())


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_vision_dpo_publishes_a_policy_that_vision_generate_loads(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_vlm: Path,  # noqa: F811
) -> None:
    export_dir = tmp_path / "export"
    train = write_jsonl(tmp_path / "vision_pairs.jsonl", _export(export_dir, [0, 2, 4, 8]))
    held = write_jsonl(tmp_path / "held.jsonl", _export(export_dir, [3, 6]))
    dpo = run(
        capsys, "vision-dpo", "--train", str(train), "--eval", str(held), "--images",
        str(export_dir), "--policy", str(tiny_vlm), "--root", str(tmp_path / "runs"), "--name",
        "pi-1", "--data-cursor", "c1.1.8", "--max-steps", "8", "--batch-size", "4",
        "--learning-rate", "5e-3", "--beta", "0.5", "--warmup-ratio", "0", "--device", "cpu",
    )  # fmt: skip
    metrics = dpo["metrics"]
    assert is_published(dpo["path"]) and metrics["steps"] == 8 and metrics["pairs"] == 8
    # Each answer is chosen once and rejected once: without the pixels the loss stays at ln 2
    # (measured: 0.31 after 8 steps, and 0.30 on the held-out images).
    assert metrics["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    assert metrics["loss_final"] < 0.45 and metrics["eval_loss"] < 0.45, metrics
    assert metrics["eval_rewards/accuracies"] == 1.0
    manifest = read_manifest(dpo["path"])
    assert (manifest.kind, manifest.data_cursor) == ("policy-vision-dpo", "c1.1.8")
    assert manifest.config["reference_ref"] == str(tiny_vlm) and manifest.config["beta"] == 0.5

    out = tmp_path / "answers.jsonl"
    generated = run(
        capsys, "vision-generate", "--prompts", str(held), "--images", str(export_dir), "--out",
        str(out), "--model", dpo["path"], "--device", "cpu", "--k", "2", "--max-new-tokens", "4",
    )  # fmt: skip
    assert generated["metrics"] == {"prompts": 4, "completions": 8}
    assert all(len(row["completions"]) == 2 for row in _lines(out))


def test_vision_generate_writes_k_seeded_answers_per_prompt(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_vlm: Path,  # noqa: F811
) -> None:
    export_dir = tmp_path / "export"
    pairs = _export(export_dir, [0])
    # A vision_pairs row as exported, and a corrections-style row: one 'image', a plain prompt
    # (the image part goes before the question's text).
    rows = [
        {**pairs[0], "id": "a"},
        {"image": pairs[1]["images"][0], "prompt": "Describe the image.", "id": "b"},
    ]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)

    def generate(name: str, seed: int) -> list[dict[str, Any]]:
        out = tmp_path / name
        result = run(
            capsys, "vision-generate", "--prompts", str(prompts), "--images", str(export_dir),
            "--out", str(out), "--model", str(tiny_vlm), "--device", "cpu", "--k", "3",
            "--max-new-tokens", "6", "--seed", str(seed),
        )  # fmt: skip
        assert result == {"path": str(out), "metrics": {"prompts": 2, "completions": 6}}
        return _lines(out)

    first = generate("first.jsonl", seed=5)
    assert [row["id"] for row in first] == ["a", "b"]
    assert all(len(row["completions"]) == 3 for row in first)
    assert first[1]["image"] == rows[1]["image"]  # rows come back whole
    assert len({text for row in first for text in row["completions"]}) > 3
    assert generate("again.jsonl", seed=5) == first
    assert generate("other.jsonl", seed=6) != first


@pytest.mark.slow
def test_vlm_reward_publishes_the_model_whose_held_out_accuracy_it_reports(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_vlm: Path,  # noqa: F811
) -> None:
    from training.vision_dpo import vision_rows
    from training.vlm_reward import VLMRewardModel, score_pairs

    export_dir = tmp_path / "export"
    train = write_jsonl(tmp_path / "vision_pairs.jsonl", _export(export_dir, [0, 2, 4, 8]))
    held_rows = _export(export_dir, [3, 6])
    held = write_jsonl(tmp_path / "held.jsonl", held_rows)
    result = run(
        capsys, "vlm-reward", "--train", str(train), "--eval", str(held), "--images",
        str(export_dir), "--backbone", str(tiny_vlm), "--root", str(tmp_path / "runs"), "--name",
        "rm-1", "--max-steps", "40", "--batch-size", "8", "--learning-rate", "1e-3", "--device",
        "cpu",
    )  # fmt: skip
    metrics = result["metrics"]
    assert is_published(result["path"]) and read_manifest(result["path"]).kind == "reward-vlm"
    assert (metrics["pairs"], metrics["steps"], metrics["n_eval"]) == (8, 40, 4)
    # Only the pixels tell chosen from rejected (measured: loss 0.69 -> 0.35, held-out 4/4).
    assert metrics["loss_final"] < 0.45 and metrics["eval_accuracy"] == 1.0, metrics
    # The published model scores the held-out pairs exactly as the reported accuracy says.
    model, processor = VLMRewardModel.load(result["path"])
    chosen, rejected = score_pairs(
        model, processor, vision_rows(held_rows), lambda p: Image.open(export_dir / p)
    )
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    assert metrics["eval_accuracy"] == pytest.approx(sum(wins) / len(wins))

    # Without --eval a quarter of the images is held out, every pair of an image on one side.
    split = run(
        capsys, "vlm-reward", "--train", str(train), "--images", str(export_dir), "--backbone",
        str(tiny_vlm), "--root", str(tmp_path / "runs"), "--name", "rm-2", "--max-steps", "1",
        "--eval-fraction", "0.5", "--split-seed", "3", "--device", "cpu",
    )["metrics"]  # fmt: skip
    assert 0 < split["n_eval"] < 8 and split["pairs"] + split["n_eval"] == 8
    assert "eval_accuracy" in split


@pytest.mark.slow
def test_fact_reward_reports_held_out_accuracy_with_and_without_facts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_lm_path: Path
) -> None:
    from training.fact_reward import fact_pairs
    from training.reward import RewardEnsemble, evaluate_pairs

    train = write_jsonl(tmp_path / "train.jsonl", swapped_pairs(40, seed=2))
    held_rows = swapped_pairs(20, seed=3)
    held = write_jsonl(tmp_path / "held.jsonl", held_rows)
    result = run(
        capsys, "fact-reward", "--train", str(train), "--eval", str(held), "--blind-baseline",
        "--root", str(tmp_path / "runs"), "--name", "fact-1", "--backbone", str(tiny_lm_path),
        "--max-steps", "2", "--batch-size", "4", "--max-length", "96",
    )  # fmt: skip
    metrics = result["metrics"]
    manifest = read_manifest(result["path"])
    assert manifest.kind == "reward-fact" and manifest.config["with_facts"] is True
    assert metrics["with_facts"] is True and metrics["n_eval"] == len(held_rows)
    assert metrics["train"]["steps"] == 2
    # The published model is the one measured: it reads the facts, and scores as reported.
    again = evaluate_pairs(RewardEnsemble.load(result["path"]), fact_pairs(held_rows))
    assert metrics["eval"]["accuracy"] == pytest.approx(again["accuracy"])
    assert 0.0 <= metrics["without_facts"]["accuracy"] <= 1.0
    assert metrics["without_facts"]["eval"]["n"] == len(held_rows)

    # Rows without any facts cannot train the fact-reading model; --no-facts is the blind one.
    blind_rows = [{k: v for k, v in row.items() if k != "context"} for row in swapped_pairs(8, 4)]
    blind = write_jsonl(tmp_path / "blind.jsonl", blind_rows)
    message = refused(
        capsys, "fact-reward", "--train", str(blind), "--root", str(tmp_path / "runs"), "--name",
        "fact-2", "--backbone", str(tiny_lm_path),
    )  # fmt: skip
    assert "no row has a 'context'" in message and "--no-facts" in message
    assert not (tmp_path / "runs" / "fact-2").exists()
    good = swapped_pairs(4, 5)
    bad = write_jsonl(tmp_path / "bad.jsonl", [*good, {"prompt": "q", "chosen": "a"}])
    message = refused(
        capsys, "fact-reward", "--train", str(bad), "--root", str(tmp_path / "runs"), "--name",
        "fact-3", "--backbone", str(tiny_lm_path),
    )  # fmt: skip
    assert f"{bad}: row {len(good) + 1}: 'rejected'" in message


@pytest.fixture
def hostile_export(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """An export with one good row, and a file outside it that escaping paths could reach."""
    export_dir = tmp_path / "export"
    rows = _export(export_dir, [0])
    Image.new("RGB", (8, 8), "red").save(tmp_path / "outside.png")
    (export_dir / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    (export_dir / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    return export_dir, rows


BAD_PATHS = {
    "climbs out": ("../outside.png", "inside"),
    "absolute": ("{outside}", "inside"),
    "missing": ("images/missing.png", "not a file inside"),
    "symlink out": ("images/link.png", "not a file inside"),
    "not an image": ("images/broken.png", "cannot open"),
}


@pytest.mark.parametrize("command", ["vision-dpo", "vlm-reward", "vision-generate"])
@pytest.mark.parametrize("case", BAD_PATHS)
def test_an_image_path_outside_the_export_is_refused_before_anything_loads(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    hostile_export: tuple[Path, list[dict[str, Any]]],
    command: str,
    case: str,
) -> None:
    export_dir, rows = hostile_export
    path, expected = BAD_PATHS[case]
    path = path.format(outside=tmp_path / "outside.png")
    bad_row = {**rows[1], "images": [path]}
    data = write_jsonl(tmp_path / "rows.jsonl", [rows[0], bad_row])
    runs, out = tmp_path / "runs", tmp_path / "out.jsonl"
    # The model does not exist: a refusal must come before any model is loaded.
    model = str(tmp_path / "no-model")
    where = {
        "vision-dpo": ["--train", str(data), "--policy", model],
        "vlm-reward": ["--train", str(data), "--backbone", model],
        "vision-generate": ["--prompts", str(data), "--model", model, "--out", str(out)],
    }[command]
    run_args = [] if command == "vision-generate" else ["--root", str(runs), "--name", "x"]
    message = refused(capsys, command, *where, "--images", str(export_dir), *run_args)
    assert f"python -m training {command}: error: {data}: row 2, field 'images'" in message
    assert repr(path) in message and expected in message
    assert not runs.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "outside.png", "rows.jsonl"]


def test_an_existing_run_and_a_missing_export_dir_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    export_dir = tmp_path / "export"
    data = write_jsonl(tmp_path / "rows.jsonl", _export(export_dir, [0]))
    (tmp_path / "runs" / "x").mkdir(parents=True)
    common = ["--train", str(data), "--backbone", "none", "--root", str(tmp_path / "runs")]
    message = refused(capsys, "vlm-reward", *common, "--name", "x", "--images", str(export_dir))
    assert "already exists" in message
    assert list((tmp_path / "runs" / "x").iterdir()) == []
    message = refused(
        capsys, "vlm-reward", *common, "--name", "y", "--images", str(tmp_path / "nowhere")
    )
    assert f"--images {tmp_path / 'nowhere'} is not a directory" in message
    message = refused(
        capsys, "vision-dpo", "--train", str(tmp_path / "absent.jsonl"), "--images",
        str(export_dir), "--policy", "none", "--root", str(tmp_path / "runs"), "--name", "z",
    )  # fmt: skip
    assert "No such file or directory" in message and "absent.jsonl" in message
