"""The hallucination panel's numbers, against judgements counted by hand, on Postgres.

Three tasks, two annotators (overlap 2), sources "m-a", "m-b" and an imported response without a
model. The spans (response position, start, end, category) and choices below are the whole data;
each expected number is worked out beside it.
"""

import io

import pytest
from django.template.loader import render_to_string

from annotation import services
from annotation.charts import Series, grouped_bar_chart
from annotation.models import Prompt, Role
from annotation.selectors.hallucination import (
    hallucination_dashboard,
    hallucination_stats,
)
from annotation.services.images import image_upload
from tests.annotation.image_support import drawn, media  # noqa: F401
from tests.factories import ProjectFactory, UserFactory, jsonl

# Images go to a media root of each test's own (the `media` fixture).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media")]

LONG = "There is a star in the image. The blue square is small and red."  # 63 code points
TASKS = [
    # id, [(text, model) of A, of B]
    ("t1", [("The red circle is large. There are two squares.", "m-a"), (LONG, "m-b")]),
    ("t2", [("There are three circles here.", "m-b"), ("A circle and a square.", "m-a")]),
    ("t3", [("Nothing made up in this one.", ""), ("Left of it, above it, both.", "m-a")]),
]


def span(response, start, end, category):
    return {"response": response, "start": start, "end": end, "category": category}


ANSWERS = {
    "u1": {
        "t1": {"choice": "A", "spans": [span(1, 0, 29, "object")]},
        "t2": {"choice": "B", "spans": [span(0, 0, 10, "count")]},
        "t3": {"choice": "A", "spans": [span(1, 0, 5, "relation"), span(1, 6, 12, "relation")]},
    },
    "u2": {
        "t1": {"choice": "A", "spans": [span(1, 0, 29, "object"), span(1, 30, 55, "attribute")]},
        "t2": {"choice": "tie", "helpful_choice": "A", "spans": []},
        "t3": {"choice": "A", "spans": [span(1, 0, 5, "relation")]},
    },
}


def _judged_project(overlap=2):
    manager = UserFactory(is_staff=True)
    project = ProjectFactory(kind="hallucination", overlap=overlap, creator=manager)
    users = {}
    for name in ANSWERS:
        users[name] = UserFactory(username=f"{name}-{project.pk}")
        services.membership_set(project=project, username=users[name].username, role=Role.ANNOTATOR)
    image, _ = image_upload(project=project, data=drawn(seed=1), name="scene.png")
    body = jsonl(
        [
            {
                "id": task_id,
                "prompt": "What is in the picture?",
                "image": f"sha256:{image.sha256}",
                "responses": [{"text": text, "model": model} for text, model in responses],
            }
            for task_id, responses in TASKS
        ]
    )
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    for name, user in users.items():
        for i in range(len(TASKS)):
            lease = services.assignment_lease(annotator=user, project=project)
            # The lease's task row is the hot path's partial one: read the prompt's id afresh.
            external_id = Prompt.objects.get(tasks=lease.task_id).external_id
            data = ANSWERS[name][external_id]
            services.judgement_submit(assignment=lease, data=data, idempotency_key=f"{name}-{i}")
    return project


def test_rates_per_source_and_agreement_match_the_hand_count():
    project = _judged_project()
    stats = hallucination_stats(project=project)
    assert stats.judgements == 6
    assert stats.categories[:5] == ["object", "attribute", "count", "relation", "comparison"]
    rows = {row.source: row for row in stats.sources}
    assert list(rows) == ["imported", "m-a", "m-b"]

    # m-a: t1 A (no spans ×2), t2 B (none ×2), t3 B (u1: 2 relation spans, u2: 1) -> 6 judged,
    # 2 with a hallucination, both relation; 3 spans; one (pair, response) unit with spans:
    # t3 B, overlap F1 = 2·5 / (11 + 5).
    a = rows["m-a"]
    assert (a.responses, a.judged) == (3, 6)
    assert a.hallucinated == pytest.approx(2 / 6)
    assert {r.category: r.share for r in a.rates if r.share} == {"relation": pytest.approx(2 / 6)}
    assert a.spans_per_response == pytest.approx(3 / 6)
    assert (a.span_f1, a.span_pairs) == (pytest.approx(10 / 16), 1)

    # m-b: t1 B (u1: object; u2: object + attribute), t2 A (u1: count; u2: none) -> 4 judged,
    # 3 hallucinated, object 2, attribute 1, count 1; 4 spans. Units: t1 B, F1 = 2·29 / (29 + 54);
    # t2 A, F1 = 0 (only u1 marked).
    b = rows["m-b"]
    assert (b.responses, b.judged) == (2, 4)
    assert b.hallucinated == pytest.approx(3 / 4)
    shares = {r.category: r.share for r in b.rates}
    assert shares["object"] == pytest.approx(2 / 4)
    assert shares["attribute"] == pytest.approx(1 / 4)
    assert shares["count"] == pytest.approx(1 / 4)
    assert shares["relation"] == 0
    assert b.spans_per_response == pytest.approx(1.0)
    assert (b.span_f1, b.span_pairs) == (pytest.approx((58 / 83 + 0) / 2), 2)

    # imported: t3 A, judged twice, never marked: no unit to compare.
    imported = rows["imported"]
    assert (imported.responses, imported.judged, imported.hallucinated) == (1, 2, 0)
    assert (imported.span_f1, imported.span_pairs) == (None, 0)

    # Choice: t1 A/A agree, t2 B/tie disagree, t3 A/A agree.
    agreement = stats.agreement
    assert (agreement.choice_pairs, agreement.choice_agreeing) == (3, 2)
    assert agreement.choice_percent == pytest.approx(200 / 3)
    # Three units: t1 B, t2 A, t3 B. Exact: t1 B 2·1/3, t2 A 0, t3 B 2·1/3.
    assert agreement.span_units == 3
    assert agreement.span_f1 == pytest.approx((58 / 83 + 0 + 10 / 16) / 3)
    assert agreement.span_exact_f1 == pytest.approx(4 / 9)


def test_panel_renders_table_and_chart_with_every_name_escaped():
    project = _judged_project()
    context = hallucination_dashboard(project)
    html = render_to_string(
        "annotation/kinds/hallucination_stats.html", {"kind_stats": context, "project": project}
    )
    assert "Hallucinations by response source" in html
    assert "<svg" in html and "<table" in html
    assert "66.7%" in html  # choice agreement
    assert html.count('<th scope="row">') == 3


def test_empty_project_shows_no_numbers():
    project = ProjectFactory(kind="hallucination")
    stats = hallucination_stats(project=project)
    assert (stats.judgements, stats.sources) == (0, [])
    assert stats.agreement.choice is None and stats.agreement.span_f1 is None
    html = render_to_string(
        "annotation/kinds/hallucination_stats.html",
        {"kind_stats": hallucination_dashboard(project)},
    )
    assert "No judgements yet" in html and "<svg" not in html


def test_grouped_bar_chart_escapes_every_label():
    hostile = '<script>alert("x")</script>&'
    svg = str(
        grouped_bar_chart(
            ["object", hostile],
            [Series(hostile, [50.0, 25.0]), Series("m-b", [None, 75.0], notes=["", hostile])],
            title=f"Rates {hostile}",
            x_label=hostile,
            y_label="%",
            unit="%",
        )
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'alert("x")' not in svg  # quotes escaped too
    assert svg.count("<rect") == 2 + 3  # two legend swatches, three bars (one value is None)
    assert "<title>" in svg and "<desc>" in svg
    assert 'role="img"' in svg
    empty = str(
        grouped_bar_chart(["object"], [Series("m", [0.0])], title="t", x_label="x", y_label="y")
    )
    assert "<svg" not in empty
