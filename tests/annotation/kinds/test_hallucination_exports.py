"""The hallucination kind's export shapes: golden files for the portable rows, and on Postgres the
SQL lines equal to the portable rows, row for row, from judgements stored through the services.

The golden files here (`hallucination_records_<shape>.jsonl`) hold rows built from hand-made
ExportRecords, so they cover cases the services cannot produce (another kind's record, a prompt
without a stored image); `hallucination_<shape>.jsonl` belong to the contract test.

Regenerate the golden files after an intended change with
`TANDEM_UPDATE_GOLDEN=1 pytest tests/annotation/kinds/test_hallucination_exports.py` and read
the diff before committing it.
"""

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from django.db import connection
from PIL import Image as PILImage

from annotation import services
from annotation.kinds import kind_for
from annotation.kinds.base import ExportRecord
from annotation.kinds.hallucination.exports import SHAPES
from annotation.models import Role
from annotation.selectors.export import export_judgements
from annotation.services.images import image_upload
from tests.factories import ProjectFactory, UserFactory, jsonl, wait_for_export_horizon

GOLDEN = Path(__file__).parent / "golden"
PNG = {"sha256": "a1" * 32, "format": "png"}
JPEG = {"sha256": "b2" * 32, "format": "jpeg"}
WEBP = {"sha256": "c3" * 32, "format": "webp"}
EMOJI = "A 🐶 sits by cafe\u0301 tables; 3 cubes."


def record(judgement_id: int, **fields) -> ExportRecord:
    base = {
        "judgement_id": judgement_id,
        "task_id": 100 + judgement_id,
        "cursor": f"c1.900.{judgement_id}",
        "kind": "hallucination",
        "payload": {"choice": "A", "helpful_choice": None, "spans": [], "correction": None},
        "answer": "A",
        "rationale": "",
        "annotator": "a-0c0ffee0",
        "agreement": 1.0,
        "round": 0,
        "prompt": [{"role": "user", "content": "How many cubes are there?"}],
        "responses": [
            {"id": 1, "text": "There are three red cubes.", "model": "llava-7b"},
            {"id": 2, "text": EMOJI, "model": "llava-13b"},
        ],
        "external_id": f"scene-{judgement_id}",
        "image": PNG,
        "context": {},
        "metadata": {},
        "time_spent_ms": 1200,
        "late": False,
        "created_at": "2026-12-01T22:00:00.000000+00:00",
    }
    return ExportRecord(**{**base, **fields})


def span(response, start, end, category, note=None):
    out = {"response": response, "start": start, "end": end, "category": category}
    if note:
        out["note"] = note
    return out


RECORDS = [
    # One question; A hallucinates less; spans in B, one on an emoji and one on "é" (e + U+0301).
    record(
        1,
        payload={
            "choice": "A",
            "helpful_choice": None,
            "spans": [span(1, 2, 3, "object", "no dog"), span(1, 12, 17, "environment")],
            "correction": None,
        },
    ),
    # A conversation with a system turn and an earlier exchange; tied, B more helpful; a correction.
    record(
        2,
        answer="tie:B",
        agreement=0.5,
        round=2,
        external_id=None,
        image=JPEG,
        prompt=[
            {"role": "system", "content": "Answer about the image only."},
            {"role": "user", "content": "What is in the picture?"},
            {"role": "assistant", "content": 'Shapes on a grey "table".'},
            {"role": "user", "content": "And their colours?\nBe exact."},
        ],
        payload={
            "choice": "tie",
            "helpful_choice": "B",
            "spans": [],
            "correction": {"response": 1, "text": "A cat sits by cafe\u0301 tables; 3 cubes."},
        },
    ),
    # Tied on both questions: no pair, but its spans are kept.
    record(
        3,
        answer="tie",
        agreement=0.3333,
        image=WEBP,
        payload={
            "choice": "tie",
            "helpful_choice": "tie",
            "spans": [span(0, 10, 15, "count"), span(1, 26, 34, "count", "two, not three")],
            "correction": None,
        },
    ),
    # B hallucinates less; A corrected.
    record(
        4,
        answer="B",
        payload={
            "choice": "B",
            "helpful_choice": None,
            "spans": [span(0, 16, 19, "attribute")],
            "correction": {"response": 0, "text": "There are three blue cubes."},
        },
    ),
    # Another kind's judgement is never this kind's row.
    record(5, kind="pairwise", payload={"choice": "A", "strength": 2}),
    # A judgement whose prompt has no stored image: only the spans shape keeps it.
    record(6, image=None),
]


def lines(shape: str) -> str:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    rows = [SHAPES[shape].row(r) for r in RECORDS]
    return "".join(dumps(row) + "\n" for row in rows if row is not None)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shape_matches_its_golden_file(shape):
    path = GOLDEN / f"hallucination_records_{shape}.jsonl"
    if os.environ.get("TANDEM_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(lines(shape), encoding="utf-8")
    assert lines(shape) == path.read_text(encoding="utf-8")


def test_every_shape_names_images_and_ends_lines_with_the_cursor():
    for shape in SHAPES.values():
        assert shape.has_images and shape.sql and shape.description
        for line in lines(shape.name).splitlines():
            row = json.loads(line)
            assert list(row)[-1] == "cursor"


def test_llava_rlhf_rows_fit_their_reward_model_loader():
    rows = [json.loads(line) for line in lines("llava_rlhf").splitlines()]
    assert [(r["id"], r["preference"], r["hallucination"]) for r in rows] == [
        ("scene-1", 1, True),
        ("102", 2, False),
        ("scene-4", 2, True),
    ]
    for row in rows:
        turns = row["conversations"]
        # The loader writes output_1 / output_2 into the last turn, which must be the gpt's.
        assert turns[-1] == {"from": "gpt", "value": ""}
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
        assert row["output_1"]["from"] == row["output_2"]["from"] == "gpt"
        assert row["image"].startswith("images/") and row["image"].rsplit(".")[-1] in ("jpg", "png")
    # The system turn is left out; the earlier exchange stays in order.
    assert [t["from"] for t in rows[1]["conversations"]] == ["human", "gpt", "human", "gpt"]


def test_vision_pairs_put_the_image_before_the_first_question_and_leave_out_double_ties():
    rows = [json.loads(line) for line in lines("vision_pairs").splitlines()]
    assert [r["judgement_ids"] for r in rows] == [[1], [2], [4]]
    first = rows[0]
    assert first["images"] == [f"images/{'a1' * 32}.png"]
    assert first["prompt"] == [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "How many cubes are there?"}],
        }
    ]
    assert first["chosen"][0]["content"][0]["text"] == "There are three red cubes."
    assert rows[1]["images"] == [f"images/{'b2' * 32}.jpg"]
    assert rows[1]["chosen"][0]["content"][0]["text"] == EMOJI  # tie, B more helpful
    assert [len(m["content"]) for m in rows[1]["prompt"]] == [1, 2, 1, 1]


def test_spans_rows_carry_the_text_each_span_covers():
    rows = [json.loads(line) for line in lines("spans").splitlines()]
    assert [r["judgement_id"] for r in rows] == [1, 2, 3, 4, 6]
    assert [s["text"] for s in rows[0]["spans"]] == ["🐶", "cafe\u0301"]
    assert rows[2]["spans"][1] == {
        "response": 1,
        "start": 26,
        "end": 34,
        "category": "count",
        "note": "two, not three",
        "text": "3 cubes.",
    }
    assert rows[4]["image"] is None


def test_corrections_are_rlhf_v_pairs():
    rows = [json.loads(line) for line in lines("corrections").splitlines()]
    assert [(r["question"], r["chosen"], r["rejected"]) for r in rows] == [
        ("And their colours?\nBe exact.", "A cat sits by cafe\u0301 tables; 3 cubes.", EMOJI),
        ("How many cubes are there?", "There are three blue cubes.", "There are three red cubes."),
    ]


# --- Postgres: the SQL lines are the portable rows ---------------------------------------------


def _image_bytes(fmt: str, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (24, 16), colour).save(out, format=fmt)
    return out.getvalue()


def _portable(project, shape: str) -> list[dict]:
    """The same export with the shape's SQL taken away, so the core runs its portable path."""
    kind = kind_for("hallucination")
    portable = {name: dataclasses.replace(s, sql=None) for name, s in kind.export_shapes.items()}
    original = kind.export_shapes
    kind.export_shapes = portable
    try:
        return list(export_judgements(project=project, shape=shape, since=None, chunk=3).rows())
    finally:
        kind.export_shapes = original


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the SQL path runs on Postgres")
def test_sql_lines_equal_portable_rows_for_stored_judgements():
    manager = UserFactory(is_staff=True)
    project = ProjectFactory(kind="hallucination", overlap=2, creator=manager)
    alice, bob = UserFactory(), UserFactory()
    for user in (alice, bob):
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    png, _ = image_upload(project=project, data=_image_bytes("PNG", (200, 0, 0)), name="a.png")
    jpeg, _ = image_upload(project=project, data=_image_bytes("JPEG", (0, 0, 200)), name="b.jpg")
    texts = ("There are three red cubes.", EMOJI)
    body = jsonl(
        [
            {
                "id": "one",
                "prompt": "How many cubes are there?",
                "image": f"sha256:{png.sha256}",
                "responses": list(texts),
                "context": {"captions": ["three red cubes"]},
            },
            {
                "prompt": [
                    {"role": "system", "content": "Answer about the image only."},
                    {"role": "user", "content": "What is in it?"},
                    {"role": "assistant", "content": 'Shapes on a "table".'},
                    {"role": "user", "content": "And their colours?\nBe exact. \u0007\u2028"},
                ],
                "image": f"sha256:{jpeg.sha256}",
                "responses": list(texts),
            },
        ]
    )
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    answers = {
        alice: [
            {
                "choice": "A",
                "spans": [span(1, 2, 3, "object", "no dog"), span(1, 12, 17, "environment")],
            },
            {
                "choice": "tie",
                "helpful_choice": "B",
                "correction": {"response": 1, "text": "A cat."},
            },
        ],
        bob: [
            {"choice": "tie", "helpful_choice": "tie", "spans": [span(0, 10, 15, "count")]},
            {"choice": "B", "correction": {"response": 0, "text": "There are two cubes."}},
        ],
    }
    for user, payloads in answers.items():
        for i, data in enumerate(payloads):
            lease = services.assignment_lease(annotator=user, project=project)
            services.judgement_submit(assignment=lease, data=data, idempotency_key=f"{user.pk}-{i}")
    wait_for_export_horizon()
    expected_counts = {"vision_pairs": 3, "llava_rlhf": 3, "corrections": 2, "spans": 4}
    for shape, count in expected_counts.items():
        from_sql = list(export_judgements(project=project, shape=shape, since=None, chunk=3).rows())
        assert from_sql == _portable(project, shape), shape
        assert len(from_sql) == count, shape
        assert all(list(row)[-1] == "cursor" for row in from_sql)
