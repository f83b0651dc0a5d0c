"""The marketplace customer as the hindsight kind's simulated annotator, over REST, both phases:
foresight from the task as leased (no outcome in it), then GET the assignment for the outcomes,
then hindsight; and the figures it reports."""

import io
import json

import pytest

from annotation import services
from annotation.errors import InvalidInput
from annotation.kinds import kind_for
from annotation.kinds.hindsight.simulation import MarketplaceCustomer, judge
from annotation.models import Judgement, Role
from annotation.services.simulation import oracle_annotator
from tests.factories import ProjectFactory, UserFactory
from training import marketplace

pytestmark = pytest.mark.django_db


def market_project(n: int, seed: int = 0):
    project = ProjectFactory(kind="hindsight", overlap=1, lease_seconds=600)
    lines = marketplace.import_lines(n, seed, outcomes=True)
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    job = services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project


def _submit(client, assignment_id: int, payload: dict) -> dict:
    """POST one phase's judgement (a key per phase, as idempotency works per phase)."""
    posted = client.post(
        f"/api/v1/assignments/{assignment_id}/judgement",
        payload,
        format="json",
        HTTP_IDEMPOTENCY_KEY=f"sim-{assignment_id}-{payload['phase']}",
    )
    assert posted.status_code == 201, posted.content
    return payload


def work_queue_over_rest(client, project, customer) -> list[tuple[dict, dict]]:
    """What `simulate_annotators` does for a kind with phases; returns (foresight task, payloads)."""
    seen = []
    while (lease := client.post(f"/api/v1/projects/{project.pk}/assignments")).status_code != 204:
        body = lease.json()
        assert body["phase"] == "foresight"
        assert all("outcome" not in r for r in body["task"]["responses"])
        first = _submit(client, body["id"], customer.answer({**body["task"], "phase": "foresight"}))
        detail = client.get(f"/api/v1/assignments/{body['id']}").json()
        assert detail["phase"] == "hindsight"
        second = _submit(
            client, body["id"], customer.answer({**detail["task"], "phase": "hindsight"})
        )
        seen.append((first, second))
    return seen


def test_the_kind_names_the_marketplace_customer_as_its_oracle():
    project = market_project(1)
    assert kind_for("hindsight").oracle_annotator == (
        "annotation.kinds.hindsight.simulation.MarketplaceCustomer"
    )
    assert isinstance(oracle_annotator(project=project), MarketplaceCustomer)


def test_both_phases_over_rest_follow_claims_then_outcomes(api):
    project = market_project(24, seed=5)
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    customer = MarketplaceCustomer(project=project, options={})
    judged = work_queue_over_rest(api(user), project, customer)
    assert len(judged) == 24
    rows = Judgement.objects.filter(assignment__task__project=project)
    assert rows.filter(phase="foresight").count() == rows.filter(phase="hindsight").count() == 24

    # Each phase's choices against the imported true utility, recomputed from the same lines.
    lines = list(marketplace.import_lines(24, 5, outcomes=True))
    by_prompt = {line["prompt"][0]["content"]: line for line in lines}
    agree = {"foresight": 0, "hindsight": 0}
    decided = 0
    for judgement in rows.filter(phase="hindsight").select_related("assignment__task__prompt"):
        line = by_prompt[judgement.assignment.task.prompt.messages[0]["content"]]
        u = line["metadata"]["true_utility"]
        if u[0] == u[1]:
            continue
        decided += 1
        better = "A" if u[0] > u[1] else "B"
        fore = rows.get(assignment=judgement.assignment, phase="foresight")
        agree["foresight"] += fore.payload["choice"] == better
        agree["hindsight"] += judgement.payload["choice"] == better
    # Hindsight choices follow the true utility wherever it differs: the outcome tells it all.
    assert decided > 5 and agree["hindsight"] == decided
    assert agree["foresight"] < decided  # believed claims mislead some foresight choices

    report = customer.report()
    assert report[0].split()[0] == "source" and report[1].split()[:2] == ["all", "24"]


def test_foresight_believes_the_claim_and_hindsight_reads_the_outcome():
    shop = marketplace.Scenario(
        "speaker",
        "waterproof",
        50,
        (
            marketplace.Option("A", 20, ("bluetooth",)),
            marketplace.Option("B", 30, ("waterproof",)),
            marketplace.Option("C", 45, ("gps",)),
        ),
    )
    lie, truth = (
        "I recommend Option A. It has waterproof.",
        "I recommend Option B. It has waterproof.",
    )
    task = {
        "id": 7,
        "prompt": shop.customer_messages(),
        "responses": [{"text": lie}, {"text": truth}],
    }
    assert judge(task, "foresight") == {
        "phase": "foresight",
        "ratings": [5, 4],
        "choice": "A",
        "reason": "what I expect, taking the assistant at its word",
    }
    shown = {
        **task,
        "responses": [
            {"text": t, "outcome": marketplace.simulate_outcome(shop.to_hidden(), t)}
            for t in (lie, truth)
        ],
    }
    assert judge(shown, "hindsight") == {
        "phase": "hindsight",
        "ratings": [1, 5],
        "choice": "B",
        "reason": "what I got",
    }
    # One response: no choice.
    assert "choice" not in judge({**task, "responses": task["responses"][:1]}, "foresight")


def test_tasks_it_cannot_judge_are_named():
    with pytest.raises(InvalidInput, match="task 3: its prompt is no marketplace"):
        judge(
            {"id": 3, "prompt": [{"role": "user", "content": "hi"}], "responses": []}, "foresight"
        )
    pending = {"id": 4, "responses": [{"text": "I recommend Option A.", "outcome": ""}]}
    with pytest.raises(InvalidInput, match="task 4: response 1 shows no outcome .* yet"):
        judge(pending, "hindsight")


@pytest.mark.django_db(transaction=True)
def test_simulate_annotators_judges_both_phases_against_a_live_server(live_server):
    """The management command itself, over HTTP: a project whose outcomes the exact world model
    simulates (backend "world"), two simulated customers, both phases of every task stored, and
    the kind's figures printed."""
    from django.core.management import call_command

    from annotation.models import OutcomeJob, Task
    from annotation.services.outcomes import outcome_job_run

    creator = UserFactory(is_staff=True)
    project = services.project_create(
        creator=creator,
        name="Market",
        kind="hindsight",
        kind_settings={"simulator_backend": "world", "simulator_model": "marketplace"},
    )
    body = "".join(json.dumps(line) + "\n" for line in marketplace.import_lines(6, 1)).encode()
    job = services.import_create(
        project=project, user=creator, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    assert outcome_job_run(job_id=OutcomeJob.objects.get(import_job=job).pk).status == "done"
    out = io.StringIO()
    call_command(
        "simulate_annotators", url=live_server.url, project=project.pk, annotators=2, stdout=out
    )
    phases = list(Judgement.objects.filter(project=project).values_list("phase", flat=True))
    assert sorted(phases) == ["foresight"] * 6 + ["hindsight"] * 6
    assert all(t.is_complete for t in Task.objects.filter(project=project))
    assert "flip" in out.getvalue().lower(), out.getvalue()
