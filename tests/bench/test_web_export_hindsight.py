"""`web_export --kind hindsight --shape pairs|hindsight` (issue 13): the SQL-built rows are what
the kind stores, fast; then each shape's --smoke in a subprocess, on this commit (slow), like
test_bench_images.py (own throwaway database, BENCH_DB)."""

import json

import pytest

from annotation.kinds import kind_for
from annotation.kinds.base import TaskContext
from bench import web_export, web_export_hindsight
from tests.bench.test_bench_smoke import _check_provenance, _run

HINDSIGHT = kind_for("hindsight")


@pytest.mark.parametrize("choice", ["A", "B", "tie"])
@pytest.mark.parametrize("phase", ["foresight", "hindsight"])
def test_the_sql_built_payloads_are_what_the_validator_stores_with_their_answer(choice, phase):
    stored = json.loads(web_export_hindsight.payloads()[choice])
    task = TaskContext(responses=("first reply", "second reply"))
    payload, answer = HINDSIGHT.validate_payload(stored | {"phase": phase}, task=task)
    assert (payload, answer) == (stored, choice)


def test_the_kind_takes_its_two_shapes_and_counts_assignments():
    args, _ = web_export.parse(["--kind", "hindsight"])
    assert (args.shape, args.judgements) == ("pairs", 100_000)
    args, _ = web_export.parse(["--kind", "hindsight", "--shape", "hindsight"])
    assert args.shape == "hindsight"
    with pytest.raises(SystemExit):
        web_export.parse(["--kind", "hindsight", "--shape", "vision_pairs"])


def test_a_hindsight_rows_last_judgement_id_is_the_one_counted():
    line = b'{"judgement_ids":[7,8],"cursor":"c1.2.8"}\n{"judgement_ids":[9]}'
    assert web_export._ID.findall(line) == [b"8", b"9"]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["pairs", "hindsight"])
def test_web_export_hindsight_smoke(tmp_path, shape):
    data = _run(
        ["-m", "bench.web_export", "--smoke", "--kind", "hindsight", "--shape", shape],
        tmp_path / f"web_export_hindsight_{shape}.json",
    )
    _check_provenance(data, "web_export")
    assert (data["kind"], data["shape"]) == ("hindsight", shape)
    built = data["data"]
    assert built["judgements"] == 2 * built["assignments"] == 4000, "two rows per assignment"
    assert built["answers"]["hindsight:tie"] > 0 and built["flips"] > 0
    exact = data["exactness"]
    assert exact["complete"] and exact["rows_equal_decisive"]
    expected = built["expected_rows"][shape]
    assert exact["rows"] == expected == data["data"]["decisive"]
    assert expected == (built["assignments"] if shape == "hindsight" else
                        built["answers"]["hindsight:A"] + built["answers"]["hindsight:B"])  # fmt: skip
    assert exact["duplicates"] == 0 and exact["second_export_rows"] == 0
    keys = set(data["export"]["first_row_keys"])
    if shape == "pairs":
        assert {"prompt", "chosen", "rejected", "phase", "cursor"} <= keys
    else:
        assert {"foresight", "hindsight", "flipped", "responses", "true_utility"} <= keys
