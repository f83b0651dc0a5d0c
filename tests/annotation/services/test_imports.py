import io
import json

import pytest
from django.test import override_settings

from annotation import services
from annotation.errors import TooLarge
from annotation.models import ImportJob, Prompt, Response, Task, TaskResponse
from tests.factories import ProjectFactory, jsonl, pairwise_lines

pytestmark = pytest.mark.django_db


def run(project, body: bytes):
    return services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )


def counts():
    return (
        Prompt.objects.count(),
        Response.objects.count(),
        Task.objects.count(),
        TaskResponse.objects.count(),
    )


def test_good_file_creates_prompts_responses_and_tasks_in_order():
    project = ProjectFactory(overlap=2)
    lines = pairwise_lines(4)
    lines[1]["metadata"] = {"source": "unit"}
    lines[2]["split"] = "eval"
    job = run(project, jsonl(lines) + b"\n\n")
    assert job.status == ImportJob.Status.DONE and job.created == 4 and job.errors == []
    assert counts() == (4, 8, 4, 8)
    task = Task.objects.select_related("prompt").order_by("id")[1]
    assert (
        task.overlap == 2 and task.kind == "pairwise" and task.prompt.metadata == {"source": "unit"}
    )
    texts = list(
        TaskResponse.objects.filter(task=task)
        .order_by("position")
        .values_list("response__text", flat=True)
    )
    assert texts == [lines[1]["responses"][0], lines[1]["responses"][1]["text"]]
    assert Response.objects.filter(model_name="guess-1").count() == 4
    assert Prompt.objects.filter(split="eval").count() == 1
    assert Task.objects.order_by("id").first().prompt.messages[0] == {
        "role": "system",
        "content": "Be brief.",
    }


def test_plain_string_prompt_becomes_one_user_turn():
    project = ProjectFactory()
    run(project, jsonl([{"prompt": "Hello?", "responses": ["Hi", "Yo"]}]))
    assert Prompt.objects.get().messages == [{"role": "user", "content": "Hello?"}]


BAD_LINES = [
    (b"{not json", "line 2", "not valid JSON"),
    (json.dumps({"responses": ["a", "b"]}).encode(), "line 2", "prompt: required"),
    (json.dumps({"prompt": "p"}).encode(), "line 2", "responses: required"),
    (
        json.dumps({"prompt": 5, "responses": ["a", "b"]}).encode(),
        "line 2",
        "prompt: must be a string",
    ),
    (
        json.dumps({"prompt": [{"role": "bot", "content": "x"}], "responses": ["a", "b"]}).encode(),
        "line 2",
        "prompt[0].role",
    ),
    (
        json.dumps({"prompt": "p", "responses": ["only one"]}).encode(),
        "line 2",
        "takes 2 responses (or none), got 1",
    ),
    (
        json.dumps({"prompt": "p", "responses": ["a", {"text": 3}]}).encode(),
        "line 2",
        "responses[1].text: must be a string",
    ),
    (
        json.dumps({"prompt": "p", "responses": ["a", "b"], "metadata": []}).encode(),
        "line 2",
        "metadata: must be an object",
    ),
    (
        json.dumps({"prompt": "p", "responses": ["a", "b"], "id": {"x": 1}}).encode(),
        "line 2",
        "id: must be a string",
    ),
    (b"[1, 2]", "line 2", "must be a JSON object"),
]


@pytest.mark.parametrize(("bad", "where", "message"), BAD_LINES)
def test_one_bad_line_names_line_and_field_and_imports_nothing(bad, where, message):
    project = ProjectFactory()
    good = jsonl(pairwise_lines(1)) + bad + b"\n" + jsonl(pairwise_lines(2, start=5))
    job = run(project, good)
    assert job.status == ImportJob.Status.FAILED and job.created == 0
    assert job.errors[0]["line"] == int(where.split()[1])
    assert message in job.errors[0]["message"]
    assert counts() == (0, 0, 0, 0)


def test_duplicate_ids_in_the_file_and_in_the_project_are_refused():
    project = ProjectFactory()
    first = pairwise_lines(2)
    run(project, jsonl(first))
    again = pairwise_lines(2, start=10)
    again[0]["id"] = first[0]["id"]
    again.append(dict(again[1]))
    job = run(project, jsonl(again))
    assert job.status == ImportJob.Status.FAILED
    messages = {e["line"]: e["message"] for e in job.errors}
    assert "already in this project" in messages[1]
    assert "repeats the id of line 2" in messages[3]
    assert counts() == (2, 4, 2, 4)


def test_empty_file_is_an_error():
    project = ProjectFactory()
    job = run(project, b"\n\n")
    assert job.status == ImportJob.Status.FAILED and "no lines" in job.errors[0]["message"]


@override_settings(TANDEM_IMPORT_MAX_BYTES=1000)
def test_oversized_file_is_refused_before_reading():
    project = ProjectFactory()
    body = jsonl(pairwise_lines(40))
    with pytest.raises(TooLarge):
        run(project, body)
    assert counts() == (0, 0, 0, 0) and ImportJob.objects.count() == 0


def test_only_the_first_errors_are_listed_with_a_count_of_the_rest():
    project = ProjectFactory()
    job = run(project, b"{bad\n" * 250)
    assert job.status == ImportJob.Status.FAILED
    assert len(job.errors) == 201 and "50 more errors" in job.errors[-1]["message"]


@pytest.mark.django_db(transaction=True)
def test_large_file_runs_as_a_celery_job_on_the_real_broker(tmp_path, settings):
    """The upload is queued on Redis and a real worker (in a thread) imports it."""
    import time

    from celery.contrib.testing.worker import start_worker

    from webapp.celery import app

    # Both through the settings fixture: mixing it with an override_settings decorator restores
    # them out of order and leaks the small inline size into later tests.
    settings.MEDIA_ROOT = tmp_path
    settings.TANDEM_IMPORT_INLINE_BYTES = 100
    app.control.purge()  # leftovers of an earlier, interrupted run must not be consumed here
    project = ProjectFactory()
    job = run(project, jsonl(pairwise_lines(30)))
    assert job.status == ImportJob.Status.QUEUED and counts() == (0, 0, 0, 0)
    with start_worker(
        app, pool="solo", perform_ping_check=False, queues=["cpu"], shutdown_timeout=30
    ):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status in (ImportJob.Status.DONE, ImportJob.Status.FAILED):
                break
            time.sleep(0.2)
    assert job.status == ImportJob.Status.DONE, job.errors
    assert job.created == 30 and job.lines_done == job.lines_total == 30
    assert counts() == (30, 60, 30, 60)
    assert not list(tmp_path.glob("imports/*")), "the uploaded file is removed once imported"


def test_a_nul_character_is_refused_with_its_line():
    project = ProjectFactory()
    job = run(project, jsonl([{"prompt": "hi", "responses": ["ok", "bad \u0000 byte"]}]))
    assert job.status == ImportJob.Status.FAILED and "NUL" in job.errors[0]["message"]
    assert counts() == (0, 0, 0, 0)
