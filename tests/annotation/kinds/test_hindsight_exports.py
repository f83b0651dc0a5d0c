"""The hindsight kind's export shapes against golden files, on the example the contract test runs
(tests/annotation/kinds/test_contract.py takes `hindsight_example` into its EXAMPLES), and the
`phase` choice of the pairs shape."""

import io
import json
import os

import pytest

from annotation import services
from annotation.errors import InvalidInput
from annotation.models import Judgement, Response, Role, Task
from annotation.selectors.export import (
    Position,
    _python_blocks,
    _sql_blocks,
    export_judgements,
    shapes_of,
)
from tests.annotation.kinds.test_contract import GOLDEN, Example, _lines, _normalise
from tests.factories import ProjectFactory, UserFactory

OUTCOME_A = "The laptop arrived: 8 GB of RAM, not the 16 GB promised. Returned it."
OUTCOME_B = "The tablet did everything needed; the customer kept it."


def hindsight_example() -> Example:
    """Three tasks with imported outcomes (two responses, one response, two responses with
    hidden facts that never leave the server); two annotators give both phases on each. (A task
    whose outcomes a simulator writes is not leased before they exist: test_outcomes.py.)"""
    return Example(
        lines=[
            {
                "prompt": [{"role": "user", "content": "Which laptop fits 16 GB under $900?"}],
                "responses": [
                    {
                        "text": "Laptop X: 16 GB, $850 </script>",
                        "model": "pi-0",
                        "outcome": OUTCOME_A,
                    },
                    {"text": "Tablet Y has what you need.", "model": "pi-1", "outcome": OUTCOME_B},
                ],
                "hidden": {"x_ram_gb": 8, "secret": "never exported"},
                "metadata": {"true_utility": [-1.0, 0.8]},
                "id": "market-1",
            },
            {
                "prompt": "Is option C cheaper?",
                "responses": [
                    {"text": "Yes, C is cheapest.", "outcome": "C cost more at checkout."}
                ],
            },
            {
                "prompt": "Recommend a phone.",
                "responses": [
                    {"text": "Phone P.", "outcome": "P died by noon."},
                    {"text": "Phone Q \u00e9 \U0001f600", "model": "pi-0", "outcome": "Q lasted."},
                ],
                "hidden": {"p_battery_h": 20},
            },
        ],
        judgements=[
            [
                {
                    "phase": "foresight",
                    "ratings": [5, 2],
                    "choice": "A",
                    "reason": "16 GB!",
                    "time_spent_ms": 3000,
                },
                {
                    "phase": "hindsight",
                    "ratings": [1, 4],
                    "choice": "B",
                    "reason": "lied",
                    "time_spent_ms": 2000,
                },
                {"phase": "foresight", "ratings": [4], "time_spent_ms": 900},
                {"phase": "hindsight", "ratings": [1], "reason": "cost more", "time_spent_ms": 700},
                {"phase": "foresight", "ratings": [3, 3], "choice": "tie", "time_spent_ms": 500},
                {"phase": "hindsight", "ratings": [3, 4], "choice": "B", "time_spent_ms": 400},
            ],
            [
                {"phase": "foresight", "ratings": [4, 3], "choice": "A", "time_spent_ms": 2500},
                {"phase": "hindsight", "ratings": [4, 3], "choice": "A", "time_spent_ms": 1500},
                {"phase": "foresight", "ratings": [5], "time_spent_ms": 800},
                {"phase": "hindsight", "ratings": [2], "time_spent_ms": 600},
                {"phase": "foresight", "ratings": [2, 5], "choice": "B", "time_spent_ms": 650},
                {
                    "phase": "hindsight",
                    "ratings": [2, 5],
                    "choice": "B",
                    "rationale": "same",
                    "time_spent_ms": 450,
                },
            ],
        ],
    )


def _project():
    example = hindsight_example()
    project = ProjectFactory(kind="hindsight", overlap=example.overlap)
    body = "".join(json.dumps(line) + "\n" for line in example.lines).encode()
    job = services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    for n, payloads in enumerate(example.judgements):
        user = UserFactory()
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
        for i, payload in enumerate(payloads):
            lease = services.assignment_lease(annotator=user, project=project)
            services.judgement_submit(
                assignment=lease, data=dict(payload), idempotency_key=f"golden-{n}-{i}"
            )
    return project


@pytest.mark.django_db
def test_hindsight_shapes_match_their_golden_files_on_both_paths():
    project = _project()
    last = Judgement.objects.filter(project=project).order_by("-commit_seq", "-id").first()
    end = Position(last.commit_seq, last.id)
    assert set(shapes_of(project=project)) == {"pairs", "hindsight", "raw"}
    for name, shape in shapes_of(project=project).items():
        portable = _lines(_python_blocks(project, name, Position(0, 0), end, 3, None))
        assert portable, name
        if shape.sql is not None:
            assert _lines(_sql_blocks(project, name, Position(0, 0), end, 3, None)) == portable
        got = _normalise(portable, project)
        golden = GOLDEN / f"hindsight_{name}.jsonl"
        if os.environ.get("TANDEM_UPDATE_GOLDEN"):
            golden.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in got))
        want = [json.loads(line) for line in golden.read_text().split("\n") if line]
        assert got == want, name
        # The prompt's hidden facts never leave the server, in any shape.
        text = "".join(json.dumps(row) for row in portable)
        assert "never exported" not in text and "x_ram_gb" not in text and "p_battery_h" not in text


@pytest.mark.django_db(transaction=True)
def test_pairs_read_hindsight_by_default_and_foresight_on_request():
    project = _project()
    hindsight = list(export_judgements(project=project, shape="pairs", since=None).rows())
    foresight = list(
        export_judgements(project=project, shape="pairs", since=None, phase="foresight").rows()
    )
    # Hand-counted from the example: decisive two-response choices per phase.
    assert [(r["phase"], r["chosen"][0]["content"][:6]) for r in hindsight] == [
        ("hindsight", "Tablet"),
        ("hindsight", "Phone "),
        ("hindsight", "Laptop"),
        ("hindsight", "Phone "),
    ]
    assert [(r["phase"], r["chosen"][0]["content"][:6]) for r in foresight] == [
        ("foresight", "Laptop"),
        ("foresight", "Laptop"),
        ("foresight", "Phone "),
    ]
    assert hindsight[0]["margin"] == 3.0  # ratings [1, 4]: B by three steps
    rows = list(export_judgements(project=project, shape="hindsight", since=None).rows())
    assert [r["flipped"] for r in rows] == [True, None, None, False, None, False]
    with pytest.raises(InvalidInput) as refused:
        export_judgements(project=project, shape="hindsight", since=None, phase="foresight")
    assert refused.value.errors[0]["field"] == "phase"
    with pytest.raises(InvalidInput):
        export_judgements(project=project, shape="raw", since=None, phase="hindsight")


# --- the SQL paths against the portable rows ---------------------------------------------------


def _end(project) -> Position:
    last = Judgement.objects.filter(project=project).order_by("-commit_seq", "-id").first()
    return Position(last.commit_seq, last.id)


def _texts(blocks) -> list[str]:
    """Each line re-serialised the same way: whitespace differs between the paths, but this keeps
    key order and int-versus-float apart ("3" and "3.0" stay different)."""
    return [
        json.dumps(json.loads(line), ensure_ascii=False)
        for block in blocks
        for line in block.split("\n")
        if line
    ]


def _both(project, shape: str, *, chunk: int = 3, phase: str | None = None):
    end = _end(project)
    sql = _texts(_sql_blocks(project, shape, Position(0, 0), end, chunk, None, phase))
    portable = _texts(_python_blocks(project, shape, Position(0, 0), end, chunk, None, phase))
    return sql, portable


@pytest.mark.django_db
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_both_shapes_sql_lines_equal_the_portable_lines_in_each_phase_and_page_size(chunk):
    project = _project()
    for shape, phase in [
        ("pairs", None),
        ("pairs", "hindsight"),
        ("pairs", "foresight"),
        ("hindsight", None),
    ]:
        sql, portable = _both(project, shape, chunk=chunk, phase=phase)
        assert portable, (shape, phase)
        assert sql == portable, (shape, phase)
    foresight = [json.loads(line) for line in _both(project, "pairs", phase="foresight")[0]]
    assert {row["phase"] for row in foresight} == {"foresight"}
    # A foresight row has no agreement to share; margins are floats on both paths.
    assert [row["agreement"] for row in foresight] == [None, None, None]
    assert all(type(row["margin"]) is float for row in foresight)


@pytest.mark.django_db
def test_the_one_response_task_is_no_pair_but_a_hindsight_row_on_the_sql_path():
    project = _project()
    # The first annotator's hindsight on "Is option C cheaper?", its only response rated 1.
    one = Judgement.objects.get(project=project, phase="hindsight", payload__ratings=[1])
    pairs = [json.loads(line) for line in _both(project, "pairs")[0]]
    assert one.id not in {pk for row in pairs for pk in row["judgement_ids"]}
    rows = [json.loads(line) for line in _both(project, "hindsight")[0]]
    (row,) = [r for r in rows if r["judgement_ids"][1] == one.id]
    assert row["responses"] == [
        {"text": "Yes, C is cheapest.", "model": "", "outcome": "C cost more at checkout."}
    ]
    assert row["foresight"]["choice"] is None and row["hindsight"]["choice"] is None
    assert row["foresight"]["reason"] == "" and row["hindsight"]["reason"] == "cost more"
    assert row["flipped"] is None


@pytest.mark.django_db
def test_true_utility_is_the_prompts_imported_one_on_both_paths_not_the_response_column():
    project = _project()
    # A world model writes the column with simulated outcomes; the export reads only what the
    # import put in the prompt's metadata (stated on Response.true_utility), on either path.
    Response.objects.filter(prompt__project=project).update(true_utility=0.25)
    sql, portable = _both(project, "hindsight")
    assert sql == portable
    utilities = {
        row["external_id"]: row["true_utility"] for row in (json.loads(line) for line in sql)
    }
    assert utilities == {"market-1": [-1.0, 0.8], None: None}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("count", "judgements", "agreement"),
    # 1/32 = 0.03125 is an exact tie: Python rounds it to even (0.0312), as must the SQL.
    [(2, 3, 0.6667), (1, 32, 0.0312), (3, 32, 0.0938), (0, 0, 0.0), (4, 4, 1.0)],
)
def test_pairs_agreement_is_rounded_as_python_rounds_it_on_the_sql_path(
    count, judgements, agreement
):
    project = _project()
    pair = Judgement.objects.filter(project=project, phase="hindsight", answer="B").first()
    Task.objects.filter(pk=pair.task_id).update(
        answer_counts={"B": count} if count else {}, judgement_count=judgements
    )
    sql, portable = _both(project, "pairs")
    assert sql == portable
    (row,) = [r for r in map(json.loads, sql) if r["judgement_ids"] == [pair.id]]
    assert row["agreement"] == agreement and type(row["agreement"]) is float


@pytest.mark.django_db
def test_the_sql_lines_never_carry_the_hidden_facts():
    project = _project()
    end = _end(project)
    for shape in shapes_of(project=project):
        for phase in [None, "foresight"] if shape == "pairs" else [None]:
            text = "".join(_sql_blocks(project, shape, Position(0, 0), end, 1000, None, phase))
            assert text, shape
            for secret in ("never exported", "x_ram_gb", "p_battery_h", "hidden"):
                assert secret not in text, (shape, secret)
