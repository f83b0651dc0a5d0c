"""Atomic run directories and progress reporting.

A run is published all at once or not at all: its files are written into a
hidden temporary directory, ``manifest.json`` is written last, and the
directory is renamed into place. ``rename`` within one filesystem is atomic
on POSIX, so a reader sees either no run or a complete one, and a worker
killed mid-run (DESIGN.md: "a killed worker loses at most the current job's
progress, never data or a half-written model version") leaves only a
``.tmp-*`` directory, which ``clean_stale_temp`` removes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from training import __version__

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


@dataclass
class RunDir:
    """The run being written: put files under ``path`` and set ``metrics`` before the body ends."""

    path: Path
    name: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """What a published run is: written last, so its presence marks a complete run."""

    kind: str
    name: str
    config: dict[str, Any]
    data_cursor: str | None
    metrics: dict[str, Any]
    parent: str | None
    created_at: str
    training_version: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))


@contextmanager
def publish_run(
    root: Path,
    name: str,
    *,
    kind: str,
    config: dict[str, Any],
    data_cursor: str | None = None,
    parent: str | None = None,
) -> Iterator[RunDir]:
    """Create ``root/name`` atomically from what the body writes into ``run.path``.

    Preconditions: ``name`` is a plain directory name and ``root/name`` does not
    exist (``FileExistsError`` otherwise, before any work is done; a published
    run is never overwritten). ``config`` and ``run.metrics`` must be
    JSON-serialisable. On an exception in the body the temporary directory is
    deleted and the exception propagates; on success the manifest is written
    last, everything is fsynced and the directory renamed into place.
    """
    root = Path(root)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"run name must be a plain, non-hidden directory name, got {name!r}")
    final = root / name
    if final.exists():
        raise FileExistsError(f"run {final} already exists; runs are immutable")
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex}"
    temp.mkdir()
    run = RunDir(path=temp, name=name)
    try:
        yield run
        manifest = Manifest(
            kind=kind,
            name=name,
            config=config,
            data_cursor=data_cursor,
            metrics=run.metrics,
            parent=parent,
            created_at=datetime.now(UTC).isoformat(),
            training_version=__version__,
        )
        (temp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
        _fsync_tree(temp)
        # os.rename would silently replace an empty directory created by a
        # concurrent run of the same name; refuse instead.
        if final.exists():
            raise FileExistsError(f"run {final} appeared while this run was being written")
        os.rename(temp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def read_manifest(path: str | Path) -> Manifest:
    """Read a published run's manifest; ``FileNotFoundError`` if the run is unfinished or absent."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} has no {MANIFEST}: not a published run")
    data = json.loads(manifest_path.read_text())
    return Manifest(**data)


def is_published(path: str | Path) -> bool:
    """True when ``path`` is a complete, published run (not a temporary one)."""
    path = Path(path)
    return not path.name.startswith(_TMP_PREFIX) and (path / MANIFEST).is_file()


def clean_stale_temp(root: str | Path) -> list[Path]:
    """Delete the temporary directories of runs that died under ``root``; returns what was removed.

    Precondition: no run under ``root`` is in progress (call it when a worker
    starts, before it takes a job).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith(_TMP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class Progress:
    """One progress report: ``step`` of ``total`` in ``stage`` (e.g. ``"reward[2/5]"``), last logged loss."""

    stage: str
    step: int
    total: int
    loss: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


ProgressCallback = Callable[[Progress], None]


@cache
def _progress_reporter_class() -> type:
    # Built on first use so that reading manifests (the web app does) never
    # imports transformers and torch.
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):  # type: ignore[misc]
        """A ``transformers`` callback that forwards each step and log to a ``ProgressCallback``.

        ``ProgressReporter(callback, stage)``; pass it in a Trainer's
        ``callbacks``. The web app stores the reports to draw a progress bar,
        so ``callback`` must be cheap: it runs on every optimizer step.
        """

        def __init__(self, callback: ProgressCallback, stage: str) -> None:
            self.callback = callback
            self.stage = stage
            self._loss: float | None = None

        def _report(self, state: Any) -> None:
            self.callback(
                Progress(self.stage, int(state.global_step), int(state.max_steps), self._loss)
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._report(state)

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            if logs and "loss" in logs:
                self._loss = float(logs["loss"])
                self._report(state)

    return ProgressReporter


def __getattr__(name: str) -> Any:
    if name == "ProgressReporter":
        return _progress_reporter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
