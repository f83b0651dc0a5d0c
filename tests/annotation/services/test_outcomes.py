"""Simulated outcomes on real Postgres: written for the responses that lack one, batch by batch;
imported outcomes untouched; a second run writes nothing twice; a failure keeps whole batches only.

The simulators are real: a tiny Llama saved inside a model root (transformers backend), and an
OpenAI-compatible server on localhost that can be told to fail on one response.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from annotation import jobs, services
from annotation.models import OutcomeJob, Response
from annotation.services.outcomes import outcome_job_run, outcome_job_start, outcome_sweep
from tests.factories import UserFactory, jsonl

pytestmark = pytest.mark.django_db

SHORT = "{conversation} {response} {hidden} so"


def _lines(n_hidden: int) -> list[dict]:
    """n_hidden lines with hidden facts and no outcomes, and one with imported outcomes (and hidden
    facts: they must not cause a simulation). A line with neither is refused by the import."""
    lines: list[dict] = [
        {
            "prompt": [{"role": "user", "content": f"tell me about cats {i}"}],
            "responses": [f"#{2 * i} yes cats", f"#{2 * i + 1} no cats"],
            "hidden": {"cats": i, "waterproof": i % 2 == 0},
        }
        for i in range(n_hidden)
    ]
    lines.append(
        {
            "prompt": [{"role": "user", "content": "tell me about tents"}],
            "responses": [
                {"text": "#90 buy the blue tent", "outcome": "It leaked on the first night."},
                {"text": "#91 buy the green tent", "outcome": "It kept the rain out."},
            ],
            "hidden": {"blue": "leaks"},
        }
    )
    return lines


def _project(kind_settings: dict, n_hidden: int = 3):
    manager = UserFactory(is_staff=True)
    project = services.project_create(
        creator=manager, name="Marketplace", kind="hindsight", kind_settings=kind_settings
    )
    body = jsonl(_lines(n_hidden))
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project


def _configured_later(kind_settings: dict):
    """A project imported before any simulator was named (so the import queued no job), whose
    manager names one afterwards: naming it starts the simulation of what waits."""
    project = _project({**kind_settings, "simulator_model": ""})
    assert not OutcomeJob.objects.filter(project=project).exists()
    return services.project_kind_settings_set(
        project=project, kind_settings={"simulator_model": kind_settings["simulator_model"]}
    )


def _responses(project) -> dict[str, Response]:
    return {r.text: r for r in Response.objects.filter(prompt__project=project)}


def _whole(project) -> None:
    """No response holds an outcome without its source, or a source without its outcome."""
    for r in Response.objects.filter(prompt__project=project):
        assert bool(r.outcome) == bool(r.outcome_source), (r.text, r.outcome, r.outcome_source)


# --- the transformers backend: a tiny model in a model root ----------------------------------------


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.training.conftest_policy import corpus
    from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer

    root = tmp_path_factory.mktemp("models")
    path = root / "world"
    tokenizer = build_tokenizer(corpus(), vocab_size=400, path=path)
    build_tiny_causal_lm(
        tokenizer, TinyModelConfig(hidden_size=32, layers=2, heads=4, intermediate=64), path=path
    )
    return root


@pytest.fixture
def tiny_settings(settings, model_root: Path) -> dict:
    settings.TANDEM_MODEL_ROOTS = [model_root]
    return {
        "simulator_model": str(model_root / "world"),
        "simulator_prompt": SHORT,
        "max_new_tokens": 6,
        "simulator_seed": 3,
    }


def test_outcomes_are_written_for_the_responses_that_lack_one(tiny_settings: dict) -> None:
    project = _project(tiny_settings)
    before = _responses(project)
    job = outcome_job_start(project=project)
    assert job is not None and job.status == "queued"
    # One live job per project: a second start returns it.
    assert outcome_job_start(project=project) == job

    job = outcome_job_run(job_id=job.pk, batch_size=4)
    assert job.status == "done", job.error
    assert (job.total, job.done) == (6, 6)
    after = _responses(project)
    simulated = [r for r in after.values() if r.outcome_source == "simulated"]
    assert sorted(r.text for r in simulated) == sorted(
        f"#{i} {w} cats" for i, w in zip(range(6), ["yes", "no"] * 3, strict=True)
    )
    assert all(r.outcome.strip() for r in simulated)
    # Imported outcomes are untouched; a prompt without hidden facts gets no outcome.
    for text in ("#90 buy the blue tent", "#91 buy the green tent"):
        assert after[text].outcome == before[text].outcome
        assert after[text].outcome_source == "imported"
    _whole(project)
    # A language model's outcome is a guess: no true utility is written for any response.
    assert all(r.true_utility is None for r in after.values())

    # The same seed, model and cases give the same outcomes in another project.
    twin = _project(tiny_settings)
    twin_job = outcome_job_start(project=twin)
    outcome_job_run(job_id=twin_job.pk, batch_size=4)
    assert {t: r.outcome for t, r in _responses(twin).items()} == {
        t: r.outcome for t, r in after.items()
    }


def test_a_retry_writes_nothing_twice(tiny_settings: dict) -> None:
    project = _project(tiny_settings)
    job = outcome_job_start(project=project)
    outcome_job_run(job_id=job.pk, batch_size=4)
    first = {t: (r.outcome, r.outcome_source) for t, r in _responses(project).items()}
    # A redelivered message finds the job finished and does nothing.
    again = outcome_job_run(job_id=job.pk, batch_size=4)
    assert (again.status, again.done) == ("done", 6)
    # A new start finds nothing missing.
    assert outcome_job_start(project=project) is None
    assert {t: (r.outcome, r.outcome_source) for t, r in _responses(project).items()} == first


def test_no_simulator_no_job(tiny_settings: dict) -> None:
    project = _project({**tiny_settings, "simulator_model": ""})
    assert outcome_job_start(project=project) is None
    assert not OutcomeJob.objects.filter(project=project).exists()
    # Nor for lines that all came with their outcomes.
    only_imported = services.project_create(
        creator=UserFactory(is_staff=True),
        name="Real",
        kind="hindsight",
        kind_settings=tiny_settings,
    )
    body = jsonl(_lines(0)[:1])
    services.import_create(
        project=only_imported,
        user=only_imported.created_by,
        stream=io.BytesIO(body),
        size=len(body),
    )
    assert outcome_job_start(project=only_imported) is None


def test_the_job_goes_to_the_broker_on_commit(
    tiny_settings: dict, broker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        project = _configured_later(tiny_settings)
    job = OutcomeJob.objects.get(project=project)
    assert outcome_job_start(project=project) == job  # one live job per project
    raw = broker.lpop("cpu")
    assert raw is not None, "nothing was sent to the cpu queue"
    message = json.loads(raw)
    assert message["headers"]["task"] == jobs.RUN_OUTCOMES
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == [job.pk]


def test_a_broker_that_is_down_fails_the_job_with_the_reason(
    tiny_settings: dict, settings, django_capture_on_commit_callbacks: Any
) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/7"  # nothing listens on port 1
    with django_capture_on_commit_callbacks(execute=True):
        project = _configured_later(tiny_settings)
    job = OutcomeJob.objects.get(project=project)
    assert job.status == "failed" and "job queue is unavailable" in job.error
    assert outcome_job_start(project=project) not in (None, job)


def test_an_import_of_lines_without_outcomes_queues_a_simulation(
    tiny_settings: dict, broker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        project = _project(tiny_settings)
    job = OutcomeJob.objects.get(project=project)
    assert job.import_job is not None and job.import_job.project_id == project.pk
    assert broker.llen("cpu") == 1
    outcome_job_run(job_id=job.pk, batch_size=8)
    assert Response.objects.filter(prompt__project=project, outcome_source="simulated").count() == 6


def test_a_dead_workers_job_is_swept(tiny_settings: dict) -> None:
    project = _project(tiny_settings)
    job = outcome_job_start(project=project)
    OutcomeJob.objects.filter(pk=job.pk).update(
        status="running", updated_at=timezone.now() - timedelta(hours=1)
    )
    assert outcome_sweep() == [job.pk]
    job.refresh_from_db()
    assert job.status == "failed" and "start it again" in job.error
    # The project can start again, and the fresh job writes everything.
    fresh = outcome_job_start(project=project)
    assert fresh is not None and fresh.pk != job.pk


# --- the openai backend: a real server on localhost -------------------------------------------------


class _Server:
    """A /v1/chat/completions server answering "outcome of #i"; it fails (HTTP 400) on responses
    whose number is in `fail_on`, and records every prompt it was sent."""

    def __init__(self) -> None:
        self.fail_on: set[int] = set()
        self.prompts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][0]["content"]
                outer.prompts.append(content)
                number = int(content.split("#")[1].split(" ")[0])
                if number in outer.fail_on:
                    data, code = b'{"error": "the simulator broke"}', 400
                else:
                    reply = {"choices": [{"message": {"content": f"outcome of #{number}"}}]}
                    data, code = json.dumps(reply).encode(), 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.server.shutdown()
    srv.server.server_close()


@pytest.fixture
def openai_settings(settings, server: _Server) -> dict:
    settings.TANDEM_SIMULATOR_URLS = [server.url]
    return {
        "simulator_backend": "openai",
        "simulator_model": "world",
        "simulator_base_url": server.url,
        "simulator_prompt": SHORT,
    }


def test_a_failure_keeps_whole_batches_and_a_new_start_writes_the_rest(
    openai_settings: dict, server: _Server
) -> None:
    project = _project(openai_settings)
    server.fail_on = {3}  # the second batch of two holds #2 and #3
    job = outcome_job_start(project=project)
    job = outcome_job_run(job_id=job.pk, batch_size=2)
    assert job.status == "failed"
    assert "HTTP 400" in job.error and "2 outcomes were written" in job.error
    assert job.done == 2 and job.finished_at is not None
    written = {
        t: r.outcome for t, r in _responses(project).items() if r.outcome_source == "simulated"
    }
    assert written == {"#0 yes cats": "outcome of #0", "#1 no cats": "outcome of #1"}
    _whole(project)
    # The hidden facts reached the simulator with the response they belong to.
    sent = next(p for p in server.prompts if p.startswith("User: tell me about cats 1"))
    assert '"cats": 1' in sent and '"waterproof": false' in sent

    server.fail_on = set()
    server.prompts.clear()
    retry = outcome_job_start(project=project)
    assert retry is not None and retry.pk != job.pk
    retry = outcome_job_run(job_id=retry.pk, batch_size=2)
    assert (retry.status, retry.total, retry.done) == ("done", 4, 4)
    # Only the missing ones were asked for again; the written ones kept their text.
    assert sorted(int(p.split("#")[1].split(" ")[0]) for p in server.prompts) == [2, 3, 4, 5]
    after = _responses(project)
    assert {t: after[t].outcome for t in written} == written
    assert after["#91 buy the green tent"].outcome == "It kept the rain out."
    _whole(project)
    assert not Response.objects.filter(prompt__project=project, true_utility__isnull=False).exists()


def test_a_server_the_operator_no_longer_allows_is_refused_at_run_time(
    openai_settings: dict, settings
) -> None:
    project = _project(openai_settings)
    job = outcome_job_start(project=project)
    settings.TANDEM_SIMULATOR_URLS = []
    job = outcome_job_run(job_id=job.pk)
    assert job.status == "failed" and "no longer allowed" in job.error
    assert not Response.objects.filter(prompt__project=project, outcome_source="simulated").exists()


def test_the_world_backend_writes_the_marketplace_outcome_exactly() -> None:
    """With backend "world" the outcome is the world model's own sentence for each reply: the
    bought option, its true features and whether it met the need, from the hidden facts; and,
    with it, the reply's true utility, the marketplace's own function of the same facts."""
    from training.marketplace import Scenario, simulate_outcome, true_utility
    from training.marketplace import import_lines as market_lines

    creator = UserFactory()
    project = services.project_create(
        creator=creator,
        name="Market",
        kind="hindsight",
        kind_settings={"simulator_backend": "world", "simulator_model": "marketplace"},
    )
    lines = list(market_lines(4, seed=3))
    body = jsonl(lines)
    job = services.import_create(
        project=project, user=creator, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    simulation = OutcomeJob.objects.get(import_job=job)
    assert outcome_job_run(job_id=simulation.pk).status == "done"
    written = Response.objects.filter(prompt__project=project).select_related("prompt")
    assert written.count() == 8
    for response in written:
        assert response.outcome_source == "simulated"
        assert response.outcome == simulate_outcome(response.prompt.hidden, response.text)
        assert response.outcome.startswith(("You bought Option", "You bought nothing"))
        scenario = Scenario.from_hidden(response.prompt.hidden)
        assert response.true_utility == true_utility(scenario, response.text)
    # The utilities the import brought (rounded to 4 places) stay in the prompt's metadata; the
    # column holds the world's exact numbers, which agree with them.
    by_prompt: dict[int, list[float]] = {}
    for response in written.order_by("pk"):
        by_prompt.setdefault(response.prompt_id, []).append(response.true_utility)
    for response in written:
        imported = response.prompt.metadata["true_utility"]
        assert by_prompt[response.prompt_id] == pytest.approx(imported, abs=5e-5)
    assert {round(u, 4) for u in (r.true_utility for r in written)} <= {
        u for line in lines for u in line["metadata"]["true_utility"]
    }


HAND_MARKET = {
    "world": "marketplace",
    "product": "speaker",
    "requirement": "waterproof",
    "budget": 100,
    "options": [
        {"name": "A", "price": 40, "features": ["bluetooth"]},
        {"name": "B", "price": 60, "features": ["waterproof"]},
        {"name": "C", "price": 80, "features": ["waterproof", "gps"]},
    ],
}


def test_the_world_writes_hand_computed_utilities_and_leaves_imported_outcomes_without_one() -> (
    None
):
    """B is the best buy ($60): B 1.0, C ($80, compliant) 60/80, A (no waterproof) −1. A line with
    real outcomes is simulated by no one, so its responses keep true_utility null."""
    creator = UserFactory()
    project = services.project_create(
        creator=creator,
        name="Market",
        kind="hindsight",
        kind_settings={"simulator_backend": "world", "simulator_model": "marketplace"},
    )
    lines = [
        {
            "prompt": "Which speaker?",
            "responses": ["I recommend Option B.", "I recommend Option C."],
            "hidden": HAND_MARKET,
        },
        {"prompt": "And now?", "responses": ["I recommend Option A."], "hidden": HAND_MARKET},
        {
            "prompt": "Real?",
            "responses": [{"text": "I recommend Option C.", "outcome": "It rained; it worked."}],
            "hidden": HAND_MARKET,
        },
    ]
    body = jsonl(lines)
    job = services.import_create(
        project=project, user=creator, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    simulation = outcome_job_run(job_id=OutcomeJob.objects.get(import_job=job).pk, batch_size=2)
    assert (simulation.status, simulation.done) == ("done", 3)
    got = {
        (r.prompt.messages[0]["content"], r.text): (r.outcome_source, r.true_utility)
        for r in Response.objects.filter(prompt__project=project).select_related("prompt")
    }
    assert got == {
        ("Which speaker?", "I recommend Option B."): ("simulated", 1.0),
        ("Which speaker?", "I recommend Option C."): ("simulated", 0.75),
        ("And now?", "I recommend Option A."): ("simulated", -1.0),
        ("Real?", "I recommend Option C."): ("imported", None),
    }


def test_the_world_backend_fails_the_job_on_facts_it_cannot_read() -> None:
    creator = UserFactory()
    project = services.project_create(
        creator=creator,
        name="Market",
        kind="hindsight",
        kind_settings={"simulator_backend": "world", "simulator_model": "marketplace"},
    )
    body = jsonl([{"prompt": "Which?", "responses": ["Option A."], "hidden": {"not": "a market"}}])
    job = services.import_create(
        project=project, user=creator, stream=io.BytesIO(body), size=len(body)
    )
    simulation = outcome_job_run(job_id=OutcomeJob.objects.get(import_job=job).pk)
    assert simulation.status == "failed"
    assert "not a marketplace scenario" in simulation.error
    assert Response.objects.get(prompt__project=project).outcome_source == ""


def test_tasks_waiting_for_outcomes_are_leased_only_once_every_response_has_one(
    tiny_settings: dict,
) -> None:
    """No annotator can reach a task before its outcomes exist: the import leaves it closed, and
    the batch that writes its last outcome opens it."""
    from annotation.models import Role, Task

    project = _project(tiny_settings)
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    waiting = Task.objects.filter(project=project, ready=False)
    assert waiting.count() == 3  # the lines with hidden facts and no outcome
    # Only the task with imported outcomes can be leased; once skipped, nothing is left.
    first = services.assignment_lease(annotator=annotator, project=project)
    assert first is not None and first.task.prompt.messages[0]["content"] == "tell me about tents"
    services.assignment_skip(assignment=first)
    assert services.assignment_lease(annotator=annotator, project=project) is None
    job = outcome_job_start(project=project)
    outcome_job_run(job_id=job.pk, batch_size=8)
    assert not Task.objects.filter(project=project, ready=False).exists()
    lease = services.assignment_lease(annotator=annotator, project=project)
    assert lease is not None
    shown = Response.objects.filter(
        pk__in=lease.task.slots.values("response_id"), outcome_source="simulated"
    )
    assert shown.count() == 2
