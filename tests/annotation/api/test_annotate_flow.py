import json

import pytest

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
    assert [r["text"] for r in body["task"]["responses"]] == [
        r["text"] for r in body["task"]["responses"]
    ]
    assert len(body["task"]["responses"]) == 2
    assert body["task"]["prompt"][-1]["role"] == "user"

    first = judge(annotator, body["id"], "k1", choice="B", strength=3, rationale="B is right")
    assert first.status_code == 201, first.content
    again = judge(annotator, body["id"], "k1", choice="B", strength=3)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]

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
