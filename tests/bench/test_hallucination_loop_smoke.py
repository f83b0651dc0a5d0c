"""bench/hallucination_loop.py still runs: its --smoke (one tiny round) in a subprocess.

The figures of a smoke run mean nothing; the test checks the JSON's shape, that every step of a
round ran (the oracle found pairs, the reward models and vision DPO trained) and that the rates
are rates.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

ROUND_KEYS = {
    "round",
    "labels",
    "hallucination_rate",
    "per_category",
    "informativeness",
    "win_rate_vs_initial",
    "reward_accuracy",
    "reward_accuracy_without_facts",
}


@pytest.mark.parametrize("correction_share", ["0", "1"], ids=["pairs", "corrections"])
def test_hallucination_loop_smoke(tmp_path: Path, correction_share: str) -> None:
    out = tmp_path / "hallucination.json"
    argv = ["--smoke", "--json", str(out), "--correction-share", correction_share]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hallucination_loop", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["bench"] == "hallucination_loop" and data["smoke"] is True
    assert data["seconds"] > 0
    rounds = data["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert ROUND_KEYS <= set(r)
        assert 0.0 <= r["hallucination_rate"] <= 1.0
        assert 0.0 <= r["win_rate_vs_initial"] <= 1.0
        assert r["informativeness"] >= 0.0
        assert set(r["per_category"]) >= {"object", "attribute", "count", "relation"}
        assert all(r["hallucination_rate"] >= v for v in r["per_category"].values())
    last = rounds[-1]
    assert last["labels"] > 0 and last["dpo_pairs"] > 0  # the oracle labelled, DPO trained
    # With corrections the round trains by dense DPO (its metrics count them), else by TRL's DPO.
    assert (last["dpo_corrections"] > 0) == (correction_share == "1")
    assert last["reward_accuracy"] is not None and last["reward_accuracy_without_facts"] is not None
    assert len(data["targets"]) == 4 and all(isinstance(t["met"], bool) for t in data["targets"])
    for target in data["targets"]:  # every target printed with its verdict
        assert f"{'MET   ' if target['met'] else 'MISSED'} {target['target']}" in proc.stdout
