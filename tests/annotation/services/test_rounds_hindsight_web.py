"""One hindsight round through the web app, as it runs for real: a Celery worker process on the
test's Postgres and Redis simulates the imported answers' outcomes, the marketplace customers judge
both phases over REST (`simulate_annotators`), the round trains on the hindsight pairs, its select
stage simulates the new answers' outcomes, and the customers judge those too, blind evaluation
included."""

import io
import json

import pytest
from django.conf import settings
from django.core.management import call_command

from annotation import services
from annotation.models import Judgement, ModelVersion, Response, Round, Task, TaskResponse
from annotation.selectors.rounds import human_win_rates
from annotation.services import rounds
from annotation.services.simulation import TINY_LOOP
from tests.annotation.loop_support import celery_worker

# π_0 (the warm-words tiny Llama, also the reward backbone) and the artifact folder, built once
# for both hindsight round tests.
from tests.annotation.services.test_rounds_hindsight import artifacts, pi0  # noqa: F401
from tests.factories import UserFactory
from training import marketplace

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BROKER = settings.CELERY_BROKER_URL
TRAIN, EVAL = 16, 4


@pytest.fixture
def purged_broker():
    import redis

    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield
    client.flushdb()


def market_loop_project(pi0):  # noqa: F811
    creator = UserFactory(is_staff=True)
    project = services.project_create(
        creator=creator,
        name="Marketplace loop",
        kind="hindsight",
        kind_settings={"simulator_backend": "world", "simulator_model": "marketplace"},
    )
    lines = list(marketplace.import_lines(TRAIN + EVAL, seed=11))
    for line in lines[TRAIN:]:
        # Held-out customers: a prompt only, for the blind evaluation of each round's policy.
        line.update(responses=[], split="eval", metadata={})
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    job = services.import_create(
        project=project, user=creator, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    rounds.loop_configure(
        project=project,
        data={
            **TINY_LOOP,
            "enabled": True,
            "policy_model": str(pi0),
            "reward_backbone": str(pi0),
            "ensemble_members": 1,
            "samples_per_prompt": 2,
            "prompts_per_round": 6,
            "eval_prompts": EVAL,
            # A customer's message with its three options is ~150 tokens of the tiny tokenizer.
            "reward": {**TINY_LOOP["reward"], "epochs": 1.0, "max_length": 320},
            "policy": {**TINY_LOOP["policy"], "epochs": 1.0, "max_length": 320},
            "generation": {"max_new_tokens": 10, "temperature": 1.0},
        },
    )
    return project


def test_one_hindsight_round_through_the_web_app(
    live_server,
    pi0,  # noqa: F811
    artifacts,  # noqa: F811
    purged_broker,
    tmp_path,
):
    project = market_loop_project(pi0)
    out = io.StringIO()
    with celery_worker(artifacts=artifacts, broker=BROKER, log=tmp_path / "worker.log"):
        call_command(
            "simulate_annotators",
            url=live_server.url,
            project=project.pk,
            annotators=2,
            rounds=1,
            timeout=300,
            stdout=out,
        )
    log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    loop_round = Round.objects.get(project=project, number=1)
    assert loop_round.status == "succeeded", (loop_round.error, out.getvalue(), log)

    # The worker simulated every imported answer's outcome with the world model before anyone
    # could see step 2; the round trained on one hindsight pair per decisive assignment.
    imported = Response.objects.filter(prompt__project=project, model_version__isnull=True)
    assert imported.count() == 2 * TRAIN
    for response in imported.select_related("prompt"):
        assert response.outcome_source == "simulated"
        assert response.outcome == marketplace.simulate_outcome(
            response.prompt.hidden, response.text
        )
    round_zero = Judgement.objects.filter(task__project=project, task__round=0)
    assert sorted(set(round_zero.values_list("phase", flat=True))) == ["foresight", "hindsight"]
    assert round_zero.filter(phase="hindsight").count() == TRAIN
    assert 0 < loop_round.judgements <= TRAIN  # hindsight rows only; ties make no pair
    pi1 = ModelVersion.objects.get(project=project, kind="policy", round=1)
    assert pi1.metrics["pairs"] > 0

    # π_1's answers reached the customers with their outcomes, and both phases were judged:
    # label tasks and the blind π_1-vs-π_0 evaluation on the held-out customers.
    tasks = Task.objects.filter(project=project, round=1)
    assert tasks.filter(purpose="evaluation").count() == EVAL
    assert tasks.filter(purpose="label").exists()
    shown = Response.objects.filter(
        pk__in=TaskResponse.objects.filter(task__in=tasks).values("response_id")
    )
    for response in shown:
        assert response.outcome_source == "simulated" and response.outcome.startswith("You bought")
    for task in tasks:
        assert task.is_complete
        phases = sorted(Judgement.objects.filter(task=task).values_list("phase", flat=True))
        assert phases == ["foresight", "hindsight"]
    win = human_win_rates(project=project)[1]
    assert win.n == EVAL  # one final (hindsight) judgement per evaluation task
