"""bench/web_hallucination_loop.py: its --smoke runs one multimodal round through the web app
(gunicorn, a Celery worker, the scene oracle over REST) in a subprocess, on a throwaway database;
and a package result of another commit or other settings is refused before any work.

The figures of a smoke run mean nothing: the test checks that every stage ran, that the rounds
API gave both sides' held-out figures, and that rates are rates.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import web_hallucination_loop as bench

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BENCH_LOOP_DB", "tandem_bench_smoke_hloop")
    broker = os.environ.get("TEST_CELERY_BROKER_URL", "")
    if broker.startswith("redis://"):
        env.setdefault("BENCH_LOOP_BROKER", broker)  # this test run's own Redis database
    return env


@pytest.mark.slow
def test_web_hallucination_loop_smoke(tmp_path: Path) -> None:
    out = tmp_path / "web_hallucination.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.web_hallucination_loop", "--smoke", "--json", str(out)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["bench"] == "web_hallucination_loop" and data["smoke"] is True
    assert data["setup"]["settings"]["prompts_per_round"] == 12
    assert "package_reference" not in data  # --smoke skips the package bench
    (one,) = data["rounds"]
    assert one["round"] == 1 and one["status"] == "succeeded"
    assert one["judgements"] > 0
    # Both sides of the blind evaluation: π_1 and π_0, one answer per held-out image each.
    for side, name in ((one["policy"], "round-1"), (one["previous_policy"], None)):
        assert side["judged"] == 6
        assert 0.0 <= side["hallucination_rate"] <= 1.0
        assert set(side["per_category"]) == {"object", "attribute", "count", "relation"}
        assert all(
            v is None or v <= side["hallucination_rate"] for v in side["per_category"].values()
        )
        if name:
            assert name in side["name"]
    assert one["human_win_rate_n"] == 6 and 0.0 <= one["human_win_rate"] <= 1.0
    assert 0.0 <= one["reward_accuracy"] <= 1.0
    assert 0.0 <= one["reward_accuracy_without_facts"] <= 1.0
    assert all(one["latency"][s] > 0 for s in ("reward", "policy", "generate", "select"))
    assert one["latency"]["start_to_first_task"] > 0
    assert "Held-out hallucination through the web app" in proc.stdout


def test_a_package_result_of_other_settings_or_code_is_refused(tmp_path: Path) -> None:
    args = bench.parser().parse_args(["--rounds", "2", "--prompts-per-round", "32"])
    wanted = bench.settings_of(args).__dict__
    head = {"sha": "a" * 40, "dirty": False}
    same = {"commit": dict(head), "settings": {**wanted, "rounds": 3}}
    assert bench.package_problems(same, wanted, head) == []  # more rounds than needed is fine
    other = {"commit": {"sha": "b" * 40}, "settings": {**wanted, "prompts_per_round": 128}}
    problems = bench.package_problems(other, wanted, head)
    assert any("commit" in p for p in problems)
    assert any("prompts_per_round is 128" in p for p in problems)
    assert bench.package_problems({}, wanted, head) == ["no such file"]
    stale = tmp_path / "old.json"
    stale.write_text(json.dumps(other))
    assert bench.main(["--package", "reuse", "--package-json", str(stale)]) == 2


def test_the_web_loop_trains_as_the_package_bench_does() -> None:
    """The web loop's settings (annotation.services.simulation_scenes.SCENE_LOOP) are the package
    bench's recipe: the two columns of `make bench-loop` differ in who labels, not in how it
    trains (they once drifted apart: β 0.5 on the web against 0.12 in the package)."""
    from annotation.services.simulation_scenes import SCENE_LOOP
    from bench.hallucination_loop import Settings

    s = Settings()
    policy, generation = SCENE_LOOP["policy"], SCENE_LOOP["generation"]
    assert (policy["beta"], policy["learning_rate"], policy["epochs"]) == (
        s.dpo_beta,
        s.dpo_lr,
        s.dpo_epochs,
    )
    assert SCENE_LOOP["samples_per_prompt"] == s.k
    assert generation["max_new_tokens"] == s.max_new_tokens
    assert SCENE_LOOP["reward"]["epochs"] == s.reward_epochs
