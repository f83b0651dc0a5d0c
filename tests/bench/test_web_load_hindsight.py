"""`web_load --kind pairwise,hindsight` (issue 13): what a hindsight annotator sends and the DB
checks of two phases, fast; then the bench's --smoke in a subprocess, on this commit (slow), like
test_bench_images.py. The bench uses its own throwaway database (BENCH_DB, tandem_bench*) and the
Redis database of this test run."""

import json

import pytest

from annotation.kinds import kind_for
from annotation.kinds.base import TaskContext
from bench import web_load, web_load_hindsight
from tests.bench.test_bench_smoke import _check_provenance, _run

HINDSIGHT = kind_for("hindsight")


@pytest.mark.parametrize("i", range(6))
@pytest.mark.parametrize("phase", ["foresight", "hindsight"])
def test_each_simulated_judgement_is_one_the_kind_accepts(phase, i):
    body = web_load_hindsight._answer(phase, i, phase == "hindsight")
    task = TaskContext(responses=("first reply", "second reply"))
    payload, answer = HINDSIGHT.validate_payload(body, task=task)
    assert payload["ratings"] == body["ratings"] and answer == body["choice"]


def test_some_preferences_flip_once_the_outcome_is_shown():
    pairs = [
        (web_load_hindsight._answer("foresight", i, False)["choice"],
         web_load_hindsight._answer("hindsight", i, True)["choice"])
        for i in range(30)
    ]  # fmt: skip
    assert any(a != b for a, b in pairs)


def test_the_imported_lines_carry_an_outcome_for_every_response():
    lines = [json.loads(x) for x in web_load_hindsight.jsonl(20).decode().splitlines()]
    assert len(lines) == 20
    for line in lines:
        assert len(line["responses"]) == 2
        assert all(r["outcome"] for r in line["responses"])
        assert line["hidden"] and len(line["metadata"]["true_utility"]) == 2


def test_hindsight_is_a_kind_of_the_kinds_bench_and_saves_under_its_own_name():
    args, _ = web_load.parse(["--kind", "pairwise,hindsight"])
    assert args.annotators == "32"
    from bench import web_load_kinds

    assert web_load_kinds.kinds_of(args) == ["pairwise", "hindsight"]
    assert web_load_kinds.setup_of(args, ["pairwise", "hindsight"])["differences_from_readme"] == []


@pytest.mark.slow
def test_web_load_hindsight_smoke(tmp_path):
    data = _run(
        ["-m", "bench.web_load", "--smoke", "--kind", "pairwise,hindsight"],
        tmp_path / "web_load_hindsight.json",
    )
    _check_provenance(data, "web_load")
    assert data["kinds"] == ["pairwise", "hindsight"]
    runs = {(r["variant"], r["annotators"]): r for r in data["runs"]}
    assert set(runs) == {(v, n) for v in ("pairwise", "hindsight") for n in (1, 2)}
    for (variant, _), r in runs.items():
        assert r["loops_per_s"] > 0 and r["requests_per_s"] > 0
        # every foresight/hindsight submit a 201, every reveal carried the outcomes, no lease did
        assert r["errors"] == 0, r["error_kinds"]
        assert r["db"]["double_assignments"] == 0 and r["db"]["counter_drift"] == 0
        if variant == "hindsight":
            assert r["db"]["phase_faults"] == 0
            for name in ("foresight_ms", "reveal_ms", "hindsight_ms"):
                assert r[name]["count"] > 0 and r[name]["p99"] >= r[name]["p50"] > 0
            # four requests a loop: more requests than twice the loops
            assert r["requests_per_s"] >= 2 * r["loops_per_s"]
    final = data["db_final"]["hindsight"]
    assert final["foresight_rows"] == final["hindsight_rows"] == final["submitted_assignments"] > 0
    assert final["judgements"] == final["assignments"] == final["hindsight_rows"]
    assert data["db_final"]["pairwise"]["judgements"] == data["db_final"]["pairwise"]["assignments"]
    ratios = data["comparison"]["2"]["ratios"]["hindsight"]
    assert ratios["loops_ratio"] > 0 and ratios["requests_ratio"] > 0
