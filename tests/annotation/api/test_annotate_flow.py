import json
import re

import pytest

from annotation.models import Assignment, Judgement, TaskResponse
from tests.factories import wait_for_export_horizon

pytestmark = pytest.mark.django_db(transaction=True)


def judge(client, assignment_id, key, **body):
    body.setdefault("choice", "A")
    body.setdefault("strength", 2)
    return client.post(
        f"/api/v1/assignments/{assignment_id}/judgement",
        body,
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_lease_judge_export_round_trip(cast, api):
    annotator = api(cast.annotator)
    leased = annotator.post(f"/api/v1/projects/{cast.project.pk}/assignments")
    assert leased.status_code == 201, leased.content
    body = leased.json()
    # The lease is stored, for this annotator, on the task it shows.
    stored = Assignment.objects.get(pk=body["id"])
    assert (stored.annotator_id, stored.task_id, stored.status) == (
        cast.annotator.pk,
        body["task"]["id"],
        Assignment.Status.LEASED,
    )
    # The responses are the task's own, in their stored order (A first), with the texts imported
    # for this prompt (tests.factories.pairwise_lines: "It is 2i." then "Maybe 2i+1.").
    slots = TaskResponse.objects.filter(task_id=body["task"]["id"]).order_by("position")
    assert [(r["id"], r["text"]) for r in body["task"]["responses"]] == list(
        slots.values_list("response_id", "response__text")
    )
    assert body["task"]["prompt"][-1]["role"] == "user"
    i = int(re.search(r"(\d+) \+ \1\?$", body["task"]["prompt"][-1]["content"]).group(1))
    assert [r["text"] for r in body["task"]["responses"]] == [
        f"It is {2 * i}.",
        f"Maybe {2 * i + 1}.",
    ]

    first = judge(annotator, body["id"], "k1", choice="B", strength=3, rationale="B is right")
    assert first.status_code == 201, first.content
    again = judge(annotator, body["id"], "k1", choice="B", strength=3)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    # The replay wrote nothing: one judgement, as first sent, and the lease is finished.
    (stored_judgement,) = Judgement.objects.filter(assignment_id=body["id"])
    assert stored_judgement.pk == first.json()["id"]
    assert (stored_judgement.payload, stored_judgement.rationale) == (
        {"choice": "B", "strength": 3},
        "B is right",
    )
    assert Assignment.objects.get(pk=body["id"]).status == Assignment.Status.SUBMITTED

    wait_for_export_horizon()

    exported = api(cast.trainer).get(f"/api/v1/projects/{cast.project.pk}/export?shape=pairs")
    assert exported.status_code == 200
    assert exported["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in b"".join(exported.streaming_content).splitlines()]
    assert len(rows) == 1
    row = rows[0]
    responses = body["task"]["responses"]
    assert row["chosen"] == [{"role": "assistant", "content": responses[1]["text"]}]
    assert row["rejected"] == [{"role": "assistant", "content": responses[0]["text"]}]
    assert row["margin"] == 3.0
    assert row["judgement_ids"] == [first.json()["id"]]
    assert row["prompt"] == body["task"]["prompt"]

    cursor = row["cursor"]
    wait_for_export_horizon()
    empty = api(cast.trainer).get(f"/api/v1/projects/{cast.project.pk}/export?since={cursor}")
    assert b"".join(empty.streaming_content) == b""
    assert empty["X-Export-Since"] == cursor
