"""The contract every registered feedback kind keeps (annotation/kinds/base.py).

Runs over `registered()`: a new kind is checked the moment it registers. Its export shapes are
held to golden files (tests/annotation/kinds/golden/<kind>_<shape>.jsonl, rewritten with
TANDEM_UPDATE_GOLDEN=1) and the Postgres lines to the portable path's, row for row, on the
example data below: a kind without an example here fails, so add one with the kind.
"""

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.template.loader import get_template

from annotation import services
from annotation.errors import InvalidInput
from annotation.kinds import registered
from annotation.kinds.base import CORE_KEYS, Kind, TaskContext
from annotation.models import Judgement, Response, Role, Task
from annotation.selectors.export import Position, _python_blocks, _sql_blocks, shapes_of
from annotation.services.images import image_store
from tests.annotation.image_support import drawn, media  # noqa: F401  (media: the fixture)
from tests.factories import ProjectFactory, UserFactory

GOLDEN = Path(__file__).with_name("golden")
KINDS = registered()
IDS = [kind.name for kind in KINDS]


@dataclass(frozen=True)
class Example:
    """A deterministic project of the kind: its import lines, then each annotator's payloads in
    the order the queue serves them."""

    lines: list[dict[str, Any]]
    judgements: list[list[dict[str, Any]]]
    overlap: int = 2
    # Pictures uploaded to the project before the import; a line names the i-th as "image": "@i".
    images: tuple[bytes, ...] = ()


_SHAPES_SEEN = "Two red circles sit left of a blue square. 😀 The square is large."
_SHAPES_OTHER = "Three green triangles float above a café table."


def _hindsight_example() -> Example:
    # Imported here: that module imports this one's helpers.
    from tests.annotation.kinds.test_hindsight_exports import hindsight_example

    return hindsight_example()


EXAMPLES: dict[str, Callable[[], Example]] = {
    "hindsight": _hindsight_example,
    "pairwise": lambda: Example(
        lines=[
            {
                "prompt": "What is 2 + 2?",
                "responses": ["4.", {"text": "Five, surely.", "model": "guess-1"}],
                "id": "q1",
            },
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": 'Quote "this" \\ please\n'},
                ],
                "responses": ['He said "hi"\n\tand left \\ \u2028 é 😀 </script>', "plain"],
                "metadata": {"source": "golden"},
            },
            {"prompt": "Name a colour.", "responses": ["Blue.", "A colour."], "split": "eval"},
            {"prompt": "Say hi.", "responses": ["Hi!", "Hello there."]},
        ],
        judgements=[
            [
                {"choice": "A", "strength": 2, "rationale": "right", "time_spent_ms": 1200},
                {"choice": "B", "strength": 3, "time_spent_ms": 800},
                {"choice": "tie", "time_spent_ms": 500},
                {"choice": "A", "strength": 1, "time_spent_ms": 400},
            ],
            [
                {"choice": "A", "strength": 1, "time_spent_ms": 900},
                {"choice": "both_bad", "rationale": "neither", "time_spent_ms": 700},
                {"choice": "B", "strength": 2, "time_spent_ms": 600},
                {"choice": "A", "strength": 3, "time_spent_ms": 300},
            ],
        ],
    ),
    "hallucination": lambda: Example(
        images=(drawn((96, 64), seed=1), drawn((80, 80), fmt="JPEG", seed=2)),
        lines=[
            {
                "prompt": "What is in the picture?",
                "image": "@0",
                "responses": [
                    {"text": _SHAPES_SEEN, "model": "sim-a"},
                    {"text": _SHAPES_OTHER, "model": "sim-b"},
                ],
                "context": {"captions": ["A red circle and a blue square."]},
                "id": "scene-1",
            },
            {
                "prompt": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": 'Describe "it" \\ please'},
                ],
                "image": "@1",
                "responses": ["A square.", "A square and a dog </script>."],
                "context": {
                    "reference": "A square.",
                    "choices": ["square", "dog"],
                    "answer": "square",
                },
            },
        ],
        judgements=[
            [
                {
                    "choice": "A",
                    "spans": [
                        {"response": 0, "start": 45, "end": 64, "category": "attribute"},
                        {
                            "response": 1,
                            "start": 0,
                            "end": 21,
                            "category": "object",
                            "note": "no triangles",
                        },
                    ],
                    "rationale": "B invents triangles",
                    "time_spent_ms": 2100,
                },
                {
                    "choice": "tie",
                    "helpful_choice": "B",
                    "spans": [],
                    "correction": {"response": 1, "text": "A square."},
                    "time_spent_ms": 900,
                },
            ],
            [
                {
                    "choice": "B",
                    "spans": [{"response": 0, "start": 0, "end": 15, "category": "count"}],
                    "time_spent_ms": 1500,
                },
                {"choice": "tie", "helpful_choice": "tie", "spans": [], "time_spent_ms": 400},
            ],
        ],
    ),
}


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_a_kind_is_named_and_its_templates_exist(kind: Kind):
    assert kind.name and kind.label and kind.template
    assert 1 <= kind.min_responses <= kind.max_responses
    for part in ("task-body", "answer"):
        get_template(f"{kind.template}#{part}")
    if kind.stats_template:
        get_template(kind.stats_template)
    if kind.round_stats_template:
        get_template(kind.round_stats_template)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_keys_are_unique_and_leave_the_core_keys_alone(kind: Kind):
    keys = [k.key for k in kind.keys()]
    assert len(keys) == len(set(keys)), keys
    assert not set(keys) & set(CORE_KEYS)
    assert all(k.label for k in kind.keys())


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_default_settings_are_clean_settings(kind: Kind):
    defaults = kind.default_settings()
    assert kind.clean_settings(defaults) == defaults
    assert kind.clean_settings(None) == defaults
    with pytest.raises(InvalidInput) as refused:
        kind.clean_settings({"no_such_setting": 1})
    assert refused.value.errors and refused.value.errors[0]["field"].startswith("kind_settings")


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_an_empty_payload_is_refused_naming_a_field(kind: Kind):
    texts = tuple(f"Response {i} text." for i in range(kind.max_responses))
    context = TaskContext(responses=texts, settings=kind.default_settings())
    with pytest.raises(InvalidInput) as refused:
        kind.validate_payload({}, task=context)
    field = refused.value.errors[0]["field"]
    assert field and refused.value.message.startswith(field)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_task_extras_are_a_dict(kind: Kind):
    extras = kind.task_extras(
        project_id=1, image=None, context={}, settings=kind.default_settings()
    )
    assert isinstance(extras, dict)


def _example_project(kind: Kind):
    if kind.name not in EXAMPLES:
        pytest.fail(f"kind {kind.name!r} has no example in {__file__}: add one with the kind")
    example = EXAMPLES[kind.name]()
    project = ProjectFactory(kind=kind.name, overlap=example.overlap)
    refs = {
        f"@{i}": "sha256:" + image_store(project=project, data=data, name=f"example-{i}").sha256
        for i, data in enumerate(example.images)
    }
    lines = [
        {**line, "image": refs[line["image"]]} if "image" in line else line
        for line in example.lines
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
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


def _lines(blocks) -> list[dict[str, Any]]:
    return [json.loads(line) for block in blocks for line in block.split("\n") if line]


def _normalise(rows: list[dict[str, Any]], project) -> list[dict[str, Any]]:
    """Ids, pseudonyms, cursors and times differ from run to run: ids become their rank within
    the project, pseudonyms the annotator's rank, and cursors and times are dropped."""
    rank = {
        "judgement": {
            pk: i
            for i, pk in enumerate(
                Judgement.objects.filter(project=project)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        },
        "task": {
            pk: i
            for i, pk in enumerate(
                Task.objects.filter(project=project).order_by("pk").values_list("pk", flat=True)
            )
        },
        "response": {
            pk: i
            for i, pk in enumerate(
                Response.objects.filter(prompt__project=project)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        },
    }
    annotators: dict[str, str] = {}
    for row in rows:
        for pseudonym in [row.get("annotator")] if row.get("annotator") else []:
            annotators.setdefault(pseudonym, f"annotator-{len(annotators)}")

    def fix(row: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in row.items() if k not in ("cursor", "created_at")}
        if "judgement_id" in row:
            row["judgement_id"] = rank["judgement"][row["judgement_id"]]
        if "judgement_ids" in row:
            row["judgement_ids"] = [rank["judgement"][pk] for pk in row["judgement_ids"]]
        if "task_id" in row:
            row["task_id"] = rank["task"][row["task_id"]]
        if isinstance(row.get("id"), str) and row["id"].isdigit():
            # A shape's own id falls back to the task id when the line had no external id.
            row["id"] = f"task-{rank['task'][int(row['id'])]}"
        if "annotator" in row:
            row["annotator"] = annotators[row["annotator"]]
        if isinstance(row.get("responses"), list):
            row["responses"] = [
                {**r, "id": rank["response"][r["id"]]} if isinstance(r, dict) and "id" in r else r
                for r in row["responses"]
            ]
        return row

    return [fix(row) for row in rows]


@pytest.mark.django_db
@pytest.mark.usefixtures("media")
@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_every_export_shape_matches_its_golden_file_on_both_paths(kind: Kind):
    project = _example_project(kind)
    last = (
        Judgement.objects.filter(project=project)
        .order_by("-commit_seq", "-id")
        .values_list("commit_seq", "id")
        .first()
    )
    end = Position(*last)
    for name, shape in shapes_of(project=project).items():
        portable = _lines(_python_blocks(project, name, Position(0, 0), end, 3, None))
        assert portable, f"{name}: the example yields no rows"
        if shape.sql is not None:
            from_sql = _lines(_sql_blocks(project, name, Position(0, 0), end, 3, None))
            assert from_sql == portable, name
        assert all(row["cursor"] for row in portable), name
        golden = GOLDEN / f"{kind.name}_{name}.jsonl"
        got = _normalise(portable, project)
        if os.environ.get("TANDEM_UPDATE_GOLDEN"):
            golden.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in got))
        assert golden.exists(), f"no golden file {golden.name}: run with TANDEM_UPDATE_GOLDEN=1"
        want = [json.loads(line) for line in golden.read_text().split("\n") if line]
        assert got == want, name
