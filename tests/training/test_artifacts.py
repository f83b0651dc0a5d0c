"""Runs are published whole or not at all, even when the worker is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from training import __version__
from training.artifacts import (
    Progress,
    ProgressReporter,
    clean_stale_temp,
    is_published,
    publish_run,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[2]


def test_successful_run_is_renamed_into_place_with_manifest(tmp_path: Path) -> None:
    with publish_run(
        tmp_path,
        "rm-1",
        kind="reward_ensemble",
        config={"lr": 1e-4},
        data_cursor="c9",
        parent="rm-0",
    ) as run:
        assert run.path.parent == tmp_path
        assert run.path.name.startswith(".tmp-rm-1-")
        assert not (run.path / "manifest.json").exists()
        (run.path / "weights.bin").write_bytes(b"\x00" * 16)
        run.metrics = {"accuracy": 0.7}
    final = tmp_path / "rm-1"
    assert (final / "weights.bin").read_bytes() == b"\x00" * 16
    assert is_published(final)
    manifest = read_manifest(final)
    assert manifest.kind == "reward_ensemble"
    assert manifest.name == "rm-1"
    assert manifest.config == {"lr": 1e-4}
    assert manifest.data_cursor == "c9"
    assert manifest.parent == "rm-0"
    assert manifest.metrics == {"accuracy": 0.7}
    assert manifest.training_version == __version__
    assert manifest.created_at
    assert [p.name for p in tmp_path.iterdir()] == ["rm-1"]


def test_failed_body_leaves_nothing_and_reraises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with publish_run(tmp_path, "rm-2", kind="reward_ensemble", config={}) as run:
            (run.path / "half.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    with publish_run(tmp_path, "rm-3", kind="k", config={}) as run:
        run.metrics = {"v": 1}
    with pytest.raises(FileExistsError):
        with publish_run(tmp_path, "rm-3", kind="k", config={}):
            pytest.fail("the body must not run")
    assert read_manifest(tmp_path / "rm-3").metrics == {"v": 1}


@pytest.mark.parametrize("name", ["", ".hidden", "a/b"])
def test_run_names_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        with publish_run(tmp_path, name, kind="k", config={}):
            pass


def test_unfinished_directory_has_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    assert not is_published(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="not a published run"):
        read_manifest(tmp_path / "half")


def test_sigkill_midway_leaves_no_published_run(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from training.artifacts import publish_run
        with publish_run(Path({str(tmp_path)!r}), "killed", kind="reward_ensemble", config={{}}) as run:
            (run.path / "members").mkdir()
            (run.path / "members" / "weights.bin").write_bytes(b"x" * 1024)
            run.metrics = {{"accuracy": 1.0}}
            print("written", flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists()
    assert not list(tmp_path.rglob("manifest.json"))
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".tmp-killed-")
    assert not is_published(leftover)
    assert clean_stale_temp(tmp_path) == [leftover]
    assert list(tmp_path.iterdir()) == []


def test_clean_stale_temp_keeps_published_runs(tmp_path: Path) -> None:
    with publish_run(tmp_path, "keep", kind="k", config={}):
        pass
    (tmp_path / ".tmp-dead-123").mkdir()
    clean_stale_temp(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]
    assert clean_stale_temp(tmp_path / "missing") == []


def test_manifest_is_plain_json(tmp_path: Path) -> None:
    with publish_run(tmp_path, "j", kind="k", config={"a": [1, 2]}) as run:
        run.metrics = {"loss": 0.5}
    data = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert data["config"] == {"a": [1, 2]}
    assert data["metrics"] == {"loss": 0.5}


class _State:
    def __init__(self, step: int, total: int) -> None:
        self.global_step, self.max_steps = step, total


def test_progress_reporter_forwards_steps_and_last_loss() -> None:
    seen: list[Progress] = []
    reporter: Any = ProgressReporter(seen.append, "reward member 1/3")
    reporter.on_step_end(None, _State(1, 4), None)
    reporter.on_log(None, _State(2, 4), None, logs={"loss": 0.6})
    reporter.on_log(None, _State(2, 4), None, logs={"learning_rate": 1e-4})
    reporter.on_step_end(None, _State(3, 4), None)
    assert seen == [
        Progress("reward member 1/3", 1, 4, None),
        Progress("reward member 1/3", 2, 4, 0.6),
        Progress("reward member 1/3", 3, 4, 0.6),
    ]
    assert seen[-1].fraction == 0.75
    from transformers import TrainerCallback

    assert isinstance(reporter, TrainerCallback)
