"""What makes a benchmark figure citable: provenance in every result, external figures kept apart,
the web loop compared only with a package run on the same commit, the setup printed as run."""

import subprocess
import sys

import pytest

from bench import common, loop_latency, provenance, web_load

HEAD = {"sha": "a" * 40, "dirty": False}
RECIPE = {"prompts_per_round": 96, "eval_prompts": 48, "sft_steps": 120, "rounds": 3, "seed": 0}


def _package(**commit) -> dict:
    settings = RECIPE | {"members": 3}
    return {"commit": HEAD | commit, "settings": settings, "rounds": [], "smoke": False}


def test_package_result_from_the_same_clean_commit_and_recipe_is_accepted():
    assert loop_latency.package_problems(_package(), RECIPE, HEAD) == []


@pytest.mark.parametrize(
    ("package", "head", "expected"),
    [
        (_package(sha="b" * 40), HEAD, "ran on commit bbbbbbbbbb"),
        (_package(dirty=True), HEAD, "uncommitted changes"),
        (_package(), HEAD | {"dirty": True}, "uncommitted changes"),
        ({"settings": RECIPE, "rounds": []}, HEAD, "records no commit"),
        (_package() | {"settings": RECIPE | {"prompts_per_round": 48}}, HEAD, "prompts_per_round"),
        (_package() | {"smoke": True}, HEAD, "--smoke run"),
        ({}, HEAD, "no such file"),
    ],
)
def test_package_result_from_elsewhere_is_refused(package, head, expected):
    problems = loop_latency.package_problems(package, RECIPE, head)
    assert any(expected in p for p in problems), problems


def test_reuse_refuses_a_stale_package_json_before_running_anything(tmp_path, capsys):
    stale = tmp_path / "oracle_loop.json"
    stale.write_text('{"rounds": [{"round": 1, "win_rate_vs_initial": 0.9}]}')
    code = loop_latency.main(["--package", "reuse", "--package-json", str(stale)])
    assert code == 2
    assert "records no commit" in capsys.readouterr().err


def test_every_external_anchor_names_its_source_and_date():
    for anchor in web_load.ANCHORS.values():
        assert anchor["source"] and anchor["measured_on"][:4].isdigit()


def _result() -> dict:
    run = {
        "server": "gunicorn 4 sync workers",
        "loops_per_s": 130.0,
        "lease_ms": {"p50": 50.0, "p95": 120.0, "p99": 170.0},
        "judgement_ms": {"p50": 50.0, "p95": 120.0, "p99": 170.0},
        "errors": 0,
        "db": {"double_assignments": 0},
        "client_seen_twice": 0,
    }
    args, _ = web_load.parse([])
    return {
        "setup": web_load.setup_of(args),
        "runs": [run | {"annotators": 1}, run | {"annotators": 32}],
    }


def test_external_figures_are_printed_apart_from_this_runs():
    text = web_load.comparison(_result())
    ours, _, external = text.partition("External reference (not measured in this run")
    assert "This run against the targets" in ours
    # Label Studio's 7.8 loops/s and the prototype's 167 appear only in the external section.
    assert "7.80" not in ours and "167" not in ours
    assert "7.80" in external and "167" in external
    assert "measured on 2026-11-27" in external and "issue 2" in external


def test_the_readme_setup_has_no_differences_and_an_inline_import_is_called_out():
    assert _result()["setup"]["differences_from_readme"] == []
    assert "Same setup as the README states." in web_load.setup_header(_result())
    args, _ = web_load.parse(["--import-path", "inline", "--tasks", "1000"])
    diff = web_load.setup_of(args)["differences_from_readme"]
    assert any("import inline" in d for d in diff) and any("1,000 tasks" in d for d in diff)


def test_smoke_expands_to_its_sizes_and_later_flags_win():
    args, effective = web_load.parse(["--smoke", "--seconds", "3"])
    assert (args.tasks, args.annotators, args.seconds) == (2000, "1,2", 3.0)
    assert effective[-3:] == ["--smoke", "--seconds", "3"]


def test_result_carries_commit_machine_command_and_idle_share(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "RESULTS", tmp_path / "results")
    with common.RunMeter() as meter:
        # CPU spent by a child process counts as the bench's own, not as others'.
        subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    data = common.record(
        "demo", ["--x", "1"], meter, {"figure": 1}, json_path=tmp_path / "out.json",
        save=True, smoke=False,
    )  # fmt: skip
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=common.REPO, capture_output=True, text=True
    ).stdout.strip()
    assert data["commit"]["sha"] == head
    assert data["command"].endswith("-m bench.demo --x 1")
    cpu = data["machine"]["cpu_over_run"]
    assert cpu["bench_share"] > 0
    assert data["machine"]["idle_share"] == cpu["idle_share"]
    saved = tmp_path / "results" / data["started_at"][:10] / "demo.json"
    assert saved.read_text() == (tmp_path / "out.json").read_text()


def test_smoke_results_are_never_saved_as_results(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "RESULTS", tmp_path / "results")
    common.record("demo", [], None, {}, json_path=None, save=True, smoke=True)
    assert not (tmp_path / "results").exists()
