"""The image benches (issue 11): the zip import, web_load --kind and web_export --kind
hallucination. Fast checks of what they send and how they are called; then each one's --smoke in a
subprocess, on this commit (slow), like test_bench_smoke.py. The web benches use their own
throwaway database (BENCH_DB, tandem_bench*) and the Redis database of this test run.
"""

import json

import pytest

from annotation.kinds import kind_for
from annotation.kinds.base import TaskContext
from bench import run_all, vision_data, web_export, web_export_vision, web_load
from tests.bench.test_bench_smoke import _check_provenance, _run

HALLUCINATION = kind_for("hallucination")


def _validate(payload: dict, texts: list[str]) -> tuple[dict, str]:
    task = TaskContext(responses=tuple(texts), settings=HALLUCINATION.default_settings())
    return HALLUCINATION.validate_payload(payload, task=task)


@pytest.mark.parametrize("loop", range(8))
def test_a_simulated_annotators_judgement_is_one_the_kind_accepts(loop):
    texts = vision_data.responses(1234)
    payload, _ = _validate(
        vision_data.judgement({"responses": [{"text": t} for t in texts]}, loop), texts
    )
    assert 1 <= len(payload["spans"]) <= 2
    for span in payload["spans"]:
        marked = texts[span["response"]][span["start"] : span["end"]]
        assert marked in ("red circle", "number")


def test_the_sql_built_payloads_are_what_the_validator_stores_with_their_answer():
    texts = vision_data.responses(77)
    for answer, raw in web_export_vision.payloads().items():
        stored, key = _validate(json.loads(raw), texts)
        assert key == answer
        assert stored == json.loads(raw), "the export reads what submit would have stored"


def test_pictures_are_distinct_per_task_and_photo_sized_ones_weigh_like_photos():
    small = {
        vision_data.picture(i, (128, 96), vision_data.image_format(i, "mixed")) for i in range(40)
    }
    assert len(small) == 40
    photo = vision_data.picture(3, (640, 480), "jpeg")
    assert photo[:2] == b"\xff\xd8" and len(photo) > 40_000


def test_the_zip_holds_one_jsonl_at_its_root_naming_its_pictures(tmp_path):
    import zipfile

    path = tmp_path / "t.zip"
    built = vision_data.write_zip(path, 5, size=(64, 48), formats="mixed")
    assert built["zip_bytes"] == path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        lines = [json.loads(x) for x in archive.read("tasks.jsonl").splitlines()]
    assert [n for n in names if "/" not in n] == ["tasks.jsonl"]
    assert {x["image"] for x in lines} == names - {"tasks.jsonl"}
    assert all(len(x["responses"]) == 2 for x in lines)


def test_the_default_benches_are_called_as_before_and_the_kinds_as_the_readme_will_say():
    args, _ = web_load.parse([])
    assert (args.kind, args.annotators) == ("pairwise", "1,32")
    args, _ = web_load.parse(["--kind", "pairwise,hallucination"])
    assert (args.annotators, args.ab_rounds, args.tasks) == ("32", 2, 100_000)
    args, _ = web_export.parse([])
    assert (args.kind, args.shape, args.judgements) == ("pairwise", "pairs", 1_000_000)
    args, _ = web_export.parse(["--kind", "hallucination"])
    assert (args.shape, args.judgements) == ("vision_pairs", 100_000)
    with pytest.raises(SystemExit):
        web_export.parse(["--shape", "vision_pairs"])  # not a pairwise shape


def test_make_bench_runs_every_bench_and_keeps_the_readme_files_for_the_pairwise_ones():
    for mode, plan in run_all.PLANS.items():
        keys = [key for key, _ in plan]
        assert keys == [
            "web_load",
            "web_export",
            "image_import",
            "web_load_kinds",
            "web_export_vision_pairs",
            "web_export_vision_pairs_per_task",
            "web_load_hindsight",
            "web_export_hindsight_pairs",
            "web_export_hindsight_hindsight",
        ], mode
    full = dict(run_all.PLANS["full"])
    assert "--kind" not in full["web_load"] and "--kind" not in full["web_export"]
    assert full["web_load_kinds"][:2] == ["--kind", "pairwise,hallucination"]


# --- the benches themselves, in seconds ---------------------------------------------------------


@pytest.mark.slow
def test_image_import_smoke(tmp_path):
    data = _run(["-m", "bench.image_import", "--smoke"], tmp_path / "image_import.json")
    _check_provenance(data, "image_import")
    small, photos = data["imports"]
    assert (small["tasks"], photos["tasks"]) == (200, 50)
    for r in (small, photos):
        assert r["exact"] is True, r["db"]
        assert r["import"]["path"] == "job", "the smoke takes the production job path"
        assert r["import"]["tasks_per_s"] > 0
        assert r["memory"]["worker_peak_rss_mb_vmhwm"] >= r["memory"]["worker_baseline_rss_mb"] > 0
    assert photos["zip"]["zip_bytes"] > 5 * small["zip"]["zip_bytes"] / 4


@pytest.mark.slow
def test_web_load_kinds_smoke(tmp_path):
    data = _run(
        ["-m", "bench.web_load", "--smoke", "--kind", "pairwise,hallucination"],
        tmp_path / "web_load_kinds.json",
    )
    _check_provenance(data, "web_load")
    runs = {(r["variant"], r["annotators"]): r for r in data["runs"]}
    variants = ("pairwise", "hallucination", "hallucination, no image requests")
    assert set(runs) == {(v, n) for v in variants for n in (1, 2)}
    for (variant, _), r in runs.items():
        assert r["loops_per_s"] > 0
        assert r["errors"] == 0, r["error_kinds"]  # every judgement, spans included, was a 201
        assert r["db"]["double_assignments"] == 0
        if variant == "hallucination":
            assert r["image_requests"] > 0 and r["image_errors"] == 0
            assert r["image_bytes"] > 0 and r["image_ms"]["p50"] is not None
        elif r["kind"] == "hallucination":
            assert r["image_requests"] == 0, "the loop-only variant sends no image request"
    for db in data["db_final"].values():
        assert db["judgements"] == db["assignments"] > 0
    assert set(data["comparison"]["2"]["ratios"]) == set(variants[1:])


@pytest.mark.slow
def test_web_export_vision_pairs_smoke(tmp_path):
    data = _run(
        ["-m", "bench.web_export", "--smoke", "--kind", "hallucination"],
        tmp_path / "web_export_vision.json",
    )
    _check_provenance(data, "web_export")
    assert (data["kind"], data["shape"]) == ("hallucination", "vision_pairs")
    assert data["data"]["answers"]["tie"] > 0, "some judgements are tied on both questions"
    exact = data["exactness"]
    assert exact["complete"] and exact["rows_equal_decisive"]
    assert exact["rows"] == data["data"]["decisive"] < data["data"]["judgements"]
    assert exact["duplicates"] == 0 and exact["second_export_rows"] == 0
    assert {"images", "prompt", "chosen", "rejected", "cursor"} <= set(
        data["export"]["first_row_keys"]
    )
