"""bench/hindsight_loop.py still runs: its --smoke (one tiny round of one seed) in a subprocess.

The figures of a smoke run mean nothing; the test checks the JSON has exactly the issue's shape,
that the oracle customer found pairs and DPO trained on them in the round, that the figures are
in their ranges, and that every target is printed with its verdict.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

METRICS = {"true_utility", "false_claim_rate", "foresight_satisfaction", "hindsight_satisfaction"}


def test_hindsight_loop_smoke(tmp_path: Path) -> None:
    out = tmp_path / "hindsight.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.hindsight_loop", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    # The keys, beside the provenance every bench records (commit, machine, load).
    assert {"rounds", "seeds", "seconds"} <= set(data) and data["commit"]["sha"]
    assert data["bench"] == "hindsight_loop" and "--smoke" in data["argv"]
    assert data["seeds"] == [0] and data["seconds"] > 0
    assert [r["round"] for r in data["rounds"]] == [0, 1]
    for r in data["rounds"]:
        assert set(r) == {"round", "foresight", "hindsight"}
        for arm in ("foresight", "hindsight"):
            figures = r[arm]
            assert set(figures) == METRICS
            assert -1.0 <= figures["true_utility"] <= 1.0
            assert 0.0 <= figures["false_claim_rate"] <= 1.0
            assert 1.0 <= figures["foresight_satisfaction"] <= 5.0
            assert 1.0 <= figures["hindsight_satisfaction"] <= 5.0
    assert data["rounds"][0]["foresight"] == data["rounds"][0]["hindsight"]  # the same π_0
    # The seed's table: "round arm pairs ..."; each arm of round 1 trained on some pairs.
    pairs = dict(re.findall(r"^\s+1\s+(foresight|hindsight)\s+(\d+)\s", proc.stdout, re.M))
    assert set(pairs) == {"foresight", "hindsight"} and all(int(n) > 0 for n in pairs.values())
    verdicts = re.findall(r"^(MET   |MISSED) ", proc.stdout, re.M)
    assert len(verdicts) == 3
