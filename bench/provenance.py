"""Provenance: which commit, which machine, how idle, which command; and where results are saved.

Every bench result is written through ``record``: provenance first, then the figures, to
``--json`` and, with ``--save-result``, to bench/results/<date>/<bench>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.meters import RunMeter
from bench.sandbox import BENCH_DB, REPO, pg_connect

RESULTS = REPO / "bench" / "results"


def git_commit() -> dict[str, Any]:
    """HEAD and whether the tree differs from it (bench/results/ and bench/out/ do not count:
    a run that saves its own result must not make the next bench of the same run 'dirty')."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        changed = [
            line[3:]
            for line in git(
                "status", "--porcelain", "--", ".", ":!bench/results", ":!bench/out"
            ).splitlines()
            if line.strip()
        ]
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None, "changed": []}
    return {
        "sha": sha,
        "dirty": bool(changed),
        "changed_count": len(changed),
        "changed": changed[:20],
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, Python and Postgres versions (None where there is no Postgres:
    the training benches do not need one)."""
    try:
        with pg_connect("postgres", connect_timeout=3) as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        pg = None
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "postgres": pg,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def provenance(
    name: str, argv: Sequence[str], meter: RunMeter | None = None, **extra: Any
) -> dict[str, Any]:
    """What a result must carry to be cited: the bench, the exact command, the commit, the
    machine (with how idle it was over the run) and when it ran."""
    started = meter.started_at if meter else time.time()
    info = machine()
    if meter is not None and hasattr(meter, "result"):
        info |= {"cpu_over_run": meter.result, "idle_share": meter.result["idle_share"]}
    return {
        "bench": name,
        "command": " ".join(
            [Path(sys.executable).relative_to(REPO).as_posix() if _under_repo() else "python"]
            + ["-m", f"bench.{name}", *argv]
        ),
        "argv": list(argv),
        "commit": git_commit(),
        "machine": info,
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
        "bench_db": BENCH_DB,
        **extra,
    }


def _under_repo() -> bool:
    try:
        Path(sys.executable).relative_to(REPO)
    except ValueError:
        return False
    return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def result_path(name: str, started_at: str) -> Path:
    """bench/results/<UTC date the run started>/<name>.json"""
    return RESULTS / started_at[:10] / f"{name}.json"


def save_result(name: str, data: dict[str, Any], *, smoke: bool = False) -> Path | None:
    """Copies a finished result into bench/results/<date>/ for committing; smoke runs are not results."""
    if smoke:
        print(f"[{name}] --smoke: not saved to bench/results (smoke figures are not results)")
        return None
    path = result_path(name, data.get("started_at") or _iso(time.time()))
    write_json(path, data)
    commit = data.get("commit") or {}
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(
        f"[{name}] saved {shown} (commit {str(commit.get('sha'))[:10]}"
        f"{', DIRTY tree' if commit.get('dirty') else ''})"
    )
    return path


def provenance_header(data: dict[str, Any]) -> str:
    """The lines every report starts with: command, commit, machine and how idle it was."""
    commit = data.get("commit") or {}
    m = data.get("machine") or {}
    cpu = m.get("cpu_over_run") or {}
    lines = [
        f"Command: {data.get('command')}",
        f"Commit: {commit.get('sha')}"
        + (
            f" + UNCOMMITTED CHANGES ({', '.join(commit.get('changed', [])[:5])})"
            if commit.get("dirty")
            else ""
        ),
        f"Machine: {m.get('cpus')} cores, Python {m.get('python')}, Postgres {m.get('postgres')}; "
        f"run {data.get('started_at')} -> {data.get('finished_at')}",
    ]
    if cpu:
        lines.append(
            f"CPU over the run: other processes left {cpu['idle_share']:.0%} of the {cpu['cores']} cores "
            f"to this bench (others {cpu['others_share']:.0%}, this bench {cpu['bench_share']:.0%}, "
            f"load average {cpu['loadavg_start']} -> {cpu['loadavg_end']})"
            + ("  !! NOT AN IDLE MACHINE: rerun before citing" if cpu["idle_share"] < 0.9 else "")
        )
    return "\n".join(lines)


def add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save-result",
        action="store_true",
        help="also copy the JSON to bench/results/<date>/<bench>.json, to commit with the README",
    )


def record(
    name: str,
    argv: Sequence[str],
    meter: RunMeter | None,
    figures: dict[str, Any],
    *,
    json_path: Path | None,
    save: bool,
    smoke: bool,
    **extra: Any,
) -> dict[str, Any]:
    """The result as written: provenance first, then the figures; to --json and, with
    --save-result, to bench/results/<date>/<name>.json."""
    data = provenance(name, argv, meter, smoke=smoke, **extra)
    # Provenance first and authoritative (a bench's own "machine" has no idle share).
    data |= {k: v for k, v in figures.items() if k not in data}
    if json_path:
        write_json(json_path, data)
    if save:
        save_result(name, data, smoke=smoke)
    return data
