"""``python -m training``: every subcommand documents itself, and the round's commands chain end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.conftest_policy import synthetic_pairs, tiny_policy_dir  # noqa: F401  (fixture)
from training.artifacts import is_published, read_manifest
from training.cli import main
from training.generation import GenerationConfig
from training.policy import DPOConfig, KTOConfig, OnPolicyConfig

COMMANDS = ["reward", "dpo", "kto", "rl", "generate", "score", "select"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = help_text(capsys, command)
    assert f"python -m training {command}" in text
    # A literal % in a field's help ("~20% slower") once made argparse print an object's repr.
    assert "object at 0x" not in text


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("generate", GenerationConfig),
        ("dpo", DPOConfig),
        ("kto", KTOConfig),
        ("rl", OnPolicyConfig),
    ],
)
def test_help_is_generated_from_the_config_fields(
    capsys: pytest.CaptureFixture[str], command: str, config: type
) -> None:
    text = help_text(capsys, command)
    for f in dataclasses.fields(config):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["help"].split()) in text


@pytest.mark.slow
def test_module_entry_point_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "training", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert all(command in out for command in COMMANDS)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def export_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Pairs in the export format of DESIGN.md, provenance keys included."""
    return [
        {
            "prompt": p.prompt,
            "chosen": p.chosen,
            "rejected": p.rejected,
            "margin": 1.0,
            "task_id": i,
            "round": 1,
        }
        for i, p in enumerate(synthetic_pairs(n, seed))
    ]


def test_a_round_end_to_end(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_policy_dir: Path,  # noqa: F811
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", export_rows(32, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", export_rows(8, seed=1))
    runs = tmp_path / "runs"

    reward = run(
        capsys, "reward", "--train", str(train), "--eval", str(held), "--root", str(runs), "--name", "rm-1",
        "--members", "2", "--backbone", str(tiny_policy_dir), "--max-steps", "4", "--batch-size", "8",
        "--max-length", "64", "--learning-rate", "3e-3", "--data-cursor", "cur-1",
    )  # fmt: skip
    assert is_published(reward["path"])
    manifest = read_manifest(reward["path"])
    assert manifest.kind == "reward_ensemble" and manifest.data_cursor == "cur-1"
    assert manifest.config["members"] == 2 and manifest.config["reward"]["max_steps"] == 4
    held_out = reward["metrics"]["eval"]
    assert held_out["n"] == 8
    # Four steps already separate "yes" from "no" replies: an untrained head's
    # gaps are ~0.01 (measured 0.41 after training).
    assert held_out["accuracy"] == 1.0 and held_out["mean_margin"] > 0.2, held_out

    dpo = run(
        capsys, "dpo", "--train", str(train), "--policy", str(tiny_policy_dir), "--root", str(runs),
        "--name", "pi-1", "--max-steps", "3", "--batch-size", "8", "--max-length", "64",
        "--learning-rate", "1e-3", "--loss", "ipo", "--no-lora",
    )  # fmt: skip
    assert is_published(dpo["path"]) and dpo["metrics"]["steps"] == 3
    assert read_manifest(dpo["path"]).config["loss"] == "ipo"

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "tell me about cats", "id": 1}, {"prompt": "tell me about tea", "id": 2}],
    )
    candidates = tmp_path / "candidates.jsonl"
    generated = run(
        capsys, "generate", "--prompts", str(prompts), "--out", str(candidates), "--model", dpo["path"],
        "--device", "cpu", "--k", "3", "--max-new-tokens", "6", "--seed", "5",
    )  # fmt: skip
    assert generated["metrics"] == {"prompts": 2, "completions": 6}
    rows = [json.loads(line) for line in candidates.read_text().splitlines()]
    assert [row["id"] for row in rows] == [1, 2] and all(
        len(row["completions"]) == 3 for row in rows
    )

    scored_path = tmp_path / "scored.jsonl"
    run(
        capsys,
        "score",
        "--ensemble",
        reward["path"],
        "--candidates",
        str(candidates),
        "--out",
        str(scored_path),
    )
    scored = [json.loads(line) for line in scored_path.read_text().splitlines()]
    assert all(len(row["scores"]) == 2 and len(row["scores"][0]) == 3 for row in scored)

    # `score --pairs` on the same held-out rows reproduces the metrics `reward` reported.
    metrics = run(capsys, "score", "--ensemble", reward["path"], "--pairs", str(held))["metrics"]
    for key in ("n", "accuracy", "mean_margin", "ece", "member_accuracy"):
        assert metrics[key] == pytest.approx(held_out[key], abs=1e-6), key

    selected_path = tmp_path / "selected.jsonl"
    selected = run(
        capsys, "select", "--candidates", str(scored_path), "--out", str(selected_path),
        "--strategy", "best_vs_worst", "--budget", "1",
    )  # fmt: skip
    assert selected["metrics"]["pairs"] == 1
    (pair,) = [json.loads(line) for line in selected_path.read_text().splitlines()]
    row = scored[pair["prompt_index"]]
    assert pair["first"] == row["completions"][pair["first_index"]]
    # best_vs_worst: the ensemble-mean best and worst candidates, the gap as priority.
    mean = np.asarray(row["scores"]).mean(axis=0)
    assert (pair["first_index"], pair["second_index"]) == (mean.argmax(), mean.argmin())
    assert pair["priority"] == pytest.approx(mean.max() - mean.min(), abs=1e-5)


def test_bad_rows_fail_loudly_before_training(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_policy_dir: Path,  # noqa: F811
) -> None:
    from training.data import RowError

    bad = write_jsonl(
        tmp_path / "bad.jsonl", [export_rows(1, 0)[0], {"prompt": "p", "chosen": "c"}]
    )
    with pytest.raises(RowError, match="row 2, field 'rejected'"):
        main(
            [
                "dpo",
                "--train",
                str(bad),
                "--policy",
                str(tiny_policy_dir),
                "--root",
                str(tmp_path),
                "--name",
                "x",
            ]
        )
    assert not (tmp_path / "x").exists()
