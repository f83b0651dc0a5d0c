"""Every benchmark still runs: each script's --smoke in a subprocess, on this commit.

Seconds per bench, not minutes; the figures of a smoke run mean nothing, so the tests check the
JSON each writes: provenance (commit = HEAD, machine with its idle share, command, timestamp)
and sane values. The web benches use their own throwaway databases (BENCH_DB, tandem_bench*) and
the Redis database of this test run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BENCH_DB", "tandem_bench_smoke")
    # The broker database this test run owns (flushing it is allowed); the bench default otherwise.
    broker = os.environ.get("TEST_CELERY_BROKER_URL", "")
    if broker.startswith("redis://"):
        env.setdefault("BENCH_BROKER", broker)
        env.setdefault("BENCH_LOOP_BROKER", broker)
    return env


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def _run(args: list[str], json_path: Path, timeout: float = 240) -> dict:
    proc = subprocess.run(
        [sys.executable, *args, "--json", str(json_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(json_path.read_text())


def _check_provenance(data: dict, bench: str) -> None:
    assert data["bench"] == bench
    assert data["smoke"] is True
    assert data["commit"]["sha"] == _head()
    assert isinstance(data["commit"]["dirty"], bool)
    assert data["command"].endswith(" ".join(data["argv"]))
    assert data["started_at"] <= data["finished_at"]
    machine = data["machine"]
    assert machine["cpus"] == os.cpu_count()
    cpu = machine["cpu_over_run"]
    assert 0.0 <= cpu["others_share"] <= 1.0
    assert machine["idle_share"] == pytest.approx(1 - cpu["others_share"], abs=0.002)
    assert cpu["wall_s"] >= 0


def test_run_all_smoke(tmp_path):
    """`make bench --smoke` end to end: `web_load --smoke` then a 2,000-judgement web_export, then
    the image benches' smokes, each with its own provenance (one test for all: a web bench's
    setup is most of its time; tests/bench/test_bench_images.py checks the image benches' figures)."""
    out = tmp_path / "web.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=720,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["failures"] == []
    assert data["commit"]["sha"] == _head()
    load = data["web_load"]
    _check_provenance(load, "web_load")
    _check_provenance(data["web_export"], "web_export")
    assert load["import"]["tasks"] == 2000
    assert load["import"]["path"] == "job", "the smoke takes the production job path"
    assert load["setup"]["differences_from_readme"], "a smoke run differs from the README's setup"
    runs = {r["annotators"]: r for r in load["runs"]}
    assert set(runs) == {1, 2}
    for r in runs.values():
        assert r["loops_per_s"] > 0
        assert r["errors"] == 0
        assert r["db"]["double_assignments"] == 0
    assert load["db_final"]["judgements"] == load["db_final"]["assignments"] > 0
    assert data["web_export"]["export"]["rows"] > 0
    assert "External reference (not measured in this run" in proc.stdout
    # The image benches ran too, under the module that reproduces each.
    _check_provenance(data["image_import"], "image_import")
    _check_provenance(data["web_load_kinds"], "web_load")
    _check_provenance(data["web_export_vision_pairs"], "web_export")
    _check_provenance(data["web_export_vision_pairs_per_task"], "web_export")
    assert data["web_load_kinds"]["kinds"] == ["pairwise", "hallucination"]
    assert data["web_export_vision_pairs"]["shape"] == "vision_pairs"
    _check_provenance(data["web_load_hindsight"], "web_load")
    assert data["web_load_hindsight"]["kinds"] == ["pairwise", "hindsight"]
    for shape in ("pairs", "hindsight"):
        _check_provenance(data[f"web_export_hindsight_{shape}"], "web_export")
        assert data[f"web_export_hindsight_{shape}"]["shape"] == shape


def test_web_export_smoke(tmp_path):
    data = _run(["-m", "bench.web_export", "--smoke"], tmp_path / "web_export.json")
    _check_provenance(data, "web_export")
    assert data["argv"][:2] == ["--judgements", "2000"], "--smoke expands to its sizes"
    assert data["data"]["judgements"] == 2000
    export, exact = data["export"], data["exactness"]
    assert export["rows"] > 0 and export["rows_per_s"] > 0
    assert exact["complete"] is True
    assert exact["rows_equal_decisive"] is True
    assert exact["rows"] == exact["decisive_judgements_in_db"] == data["data"]["decisive"]
    assert exact["duplicates"] == 0
    assert exact["second_export_rows"] == 0
    assert exact["second_export_since_echoed"] is True


def test_oracle_loop_smoke(tmp_path):
    data = _run(["-m", "bench.oracle_loop", "--smoke"], tmp_path / "oracle_loop.json")
    _check_provenance(data, "oracle_loop")
    assert data["settings"]["rounds"] == 1
    (round_one,) = data["rounds"]
    assert round_one["labels"] > 0
    assert 0.0 <= round_one["win_rate_vs_initial"] <= 1.0
    assert data["seconds"] > 0


def test_reward_real_smoke(tmp_path):
    data = _run(["bench/reward_real.py", "--smoke"], tmp_path / "reward_real.json")
    _check_provenance(data, "reward_real")
    assert data["n_train"] == 32 and data["n_held_out"] == 8
    assert data["config"]["reward"]["max_steps"] == 2
    assert data["held_out_accuracy"] is not None


def test_loop_latency_smoke(tmp_path):
    data = _run(["-m", "bench.loop_latency", "--smoke"], tmp_path / "loop_latency.json", 400)
    _check_provenance(data, "loop_latency")
    (round_one,) = data["rounds"]
    assert round_one["round"] == 1
    assert round_one["latency"]["total"] is not None and round_one["latency"]["total"] > 0
    assert data["setup"]["recipe"]["prompts_per_round"] == 16


def test_round_one_replay_smoke(tmp_path):
    data = _run(["-m", "bench.round_one_replay", "--smoke"], tmp_path / "replay.json")
    _check_provenance(data, "round_one_replay")
    assert {r["batch"] for r in data["runs"]} == {
        "web batch (k=2, seed 0)",
        "package batch (k=4, seed 1)",
    }
    assert all(r["pairs"] > 0 for r in data["runs"])


def test_gpu_check_smoke(tmp_path):
    data = _run(["-m", "bench.gpu_check", "--smoke"], tmp_path / "gpu_check.json")
    _check_provenance(data, "gpu_check")
    import torch

    if torch.cuda.is_available():
        assert data["reward"]["tokens_per_s"] > 0
    else:
        assert data["skipped"] == "no CUDA"
