"""The loop's bookkeeping on the real Postgres and Redis: settings, starting, triggers, recovery."""

import base64
import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from annotation import services
from annotation.errors import Conflict, InvalidInput
from annotation.models import ModelVersion, Role, Round, TrainingRun
from annotation.services import rounds
from tests.factories import ProjectFactory, UserFactory, import_tasks, wait_for_export_horizon

pytestmark = pytest.mark.django_db

LOOP = {"enabled": True, "policy_model": "/models/pi0", "reward_backbone": "minilm"}


@pytest.fixture
def broker():
    """The real Redis the tests' Celery app sends to; emptied before and after."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("cpu", "gpu")
    yield client
    client.delete("cpu", "gpu")


def queued_run_ids(client, queue="cpu") -> list[int]:
    """The run ids of the Celery messages waiting in a queue (kombu's JSON envelope, base64 body)."""
    messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    return sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in messages)


def loop_project(**loop):
    project = ProjectFactory()
    rounds.loop_configure(project=project, data={**LOOP, **loop})
    return project


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"enabled": True}, "policy_model"),
        ({"bogus": 1}, "bogus"),
        ({"samples_per_prompt": 1}, "samples_per_prompt"),
        ({"human_share": 1.5}, "human_share"),
        ({"queue": "tpu"}, "queue"),
        ({"algorithm": "ppo"}, "algorithm"),
        ({"trigger_judgements": "ten"}, "trigger_judgements"),
    ],
)
def test_bad_loop_settings_name_the_field_and_change_nothing(data, field):
    project = ProjectFactory()
    with pytest.raises(InvalidInput) as error:
        rounds.loop_configure(project=project, data=data)
    assert error.value.errors[0]["field"] == field
    project.refresh_from_db()
    assert project.loop == {}


def test_settings_merge_over_the_current_ones():
    project = loop_project(samples_per_prompt=8)
    rounds.loop_configure(project=project, data={"human_share": 0.5})
    project.refresh_from_db()
    assert project.loop["samples_per_prompt"] == 8 and project.loop["human_share"] == 0.5


def test_start_queues_the_stages_in_order_and_registers_the_base_policy(
    broker, django_capture_on_commit_callbacks
):
    project = loop_project()
    with django_capture_on_commit_callbacks(execute=True):
        started = rounds.round_start(project=project)
    assert (started.number, started.status) == (1, Round.Status.QUEUED)
    runs = list(started.runs.order_by("position"))
    assert [r.stage for r in runs] == ["reward", "policy", "generate", "select"]
    assert queued_run_ids(broker) == [
        runs[0].pk
    ]  # only the first stage is sent; each sends the next
    base = ModelVersion.objects.get(project=project, kind="policy", round=0)
    assert base.artifact_path == "/models/pi0"
    with pytest.raises(Conflict):
        rounds.round_start(project=project)
    Round.objects.filter(pk=started.pk).update(status=Round.Status.SUCCEEDED)
    assert rounds.round_start(project=project).number == 2


def test_start_needs_a_base_policy():
    project = ProjectFactory()
    with pytest.raises(InvalidInput):
        rounds.round_start(project=project)


def annotate(project, n):
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
    for i in range(n):
        lease = services.assignment_lease(annotator=user, project=project)
        services.judgement_submit(
            assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key=f"k{i}"
        )


def test_tick_starts_a_round_when_enough_fresh_judgements_exist(broker):
    project = loop_project(trigger_judgements=3)
    import_tasks(project, 6)
    annotate(project, 2)
    assert rounds.loop_tick() == []
    annotate(project, 1)
    started = rounds.loop_tick()
    assert len(started) == 1 and Round.objects.get(pk=started[0]).trigger == "auto"
    assert rounds.loop_tick() == []  # one round at a time


def test_manual_only_projects_never_start_by_themselves(broker):
    project = loop_project(trigger_judgements=0)
    import_tasks(project, 3)
    annotate(project, 3)
    assert rounds.loop_tick() == []


def test_tick_requeues_a_stage_whose_worker_went_silent_and_gives_up_after_three_tries(broker):
    project = loop_project()
    started = rounds.round_start(project=project)
    run = started.runs.get(stage="reward")
    broker.delete("cpu")
    stale = timezone.now() - timedelta(seconds=settings.TANDEM_LOOP_STALE_SECONDS + 5)
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, heartbeat_at=stale
    )
    rounds.loop_tick()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED and queued_run_ids(broker) == [run.pk]

    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=3, heartbeat_at=stale
    )
    rounds.loop_tick()
    run.refresh_from_db()
    started.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and started.status == Round.Status.FAILED
    assert "three times" in started.error


def test_a_fresh_heartbeat_is_left_alone(broker):
    project = loop_project()
    started = rounds.round_start(project=project)
    run = started.runs.get(stage="reward")
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, heartbeat_at=timezone.now()
    )
    broker.delete("cpu")
    rounds.loop_tick()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and queued_run_ids(broker) == []


def test_a_stage_runs_only_once_and_only_in_turn(broker):
    project = loop_project()
    started = rounds.round_start(project=project)
    policy = started.runs.get(stage="policy")
    assert rounds.stage_run(run_id=policy.pk) == "not-next"
    reward = started.runs.get(stage="reward")
    TrainingRun.objects.filter(pk=reward.pk).update(
        status=TrainingRun.Status.RUNNING, heartbeat_at=timezone.now()
    )
    assert rounds.stage_run(run_id=reward.pk) == TrainingRun.Status.RUNNING  # a duplicate message


@pytest.mark.django_db(transaction=True)
def test_a_stage_without_enough_data_fails_the_round_with_a_clear_message(broker):
    project = loop_project()
    import_tasks(project, 3)
    annotate(project, 1)
    started = rounds.round_start(project=project)
    reward = started.runs.get(stage="reward")
    wait_for_export_horizon()
    assert rounds.stage_run(run_id=reward.pk) == TrainingRun.Status.FAILED
    reward.refresh_from_db()
    started.refresh_from_db()
    assert "needs more decisive human judgements: 1 so far" in reward.error
    assert started.status == Round.Status.FAILED and started.error.startswith("reward:")
    assert not ModelVersion.objects.filter(project=project, kind="reward").exists()


@pytest.mark.django_db(transaction=True)
def test_each_judgement_trains_the_policy_in_exactly_one_round(broker):
    project = loop_project()
    import_tasks(project, 8)
    annotate(project, 2)
    first = rounds.round_start(project=project)
    wait_for_export_horizon()
    # What the reward stage records when it exports; then two more arrive before the policy stage.
    _, cursor, seen = rounds.human_pairs(project)
    Round.objects.filter(pk=first.pk).update(data_cursor=cursor)
    annotate(project, 2)
    wait_for_export_horizon()
    pairs, policy_cursor = rounds.policy_pairs(project, first)
    assert seen == 2 and len(pairs) == 2 and policy_cursor == cursor

    Round.objects.filter(pk=first.pk).update(status=Round.Status.SUCCEEDED)
    second = rounds.round_start(project=project)
    _, later, _ = rounds.human_pairs(project)
    Round.objects.filter(pk=second.pk).update(data_cursor=later)
    pairs, _ = rounds.policy_pairs(project, second)
    assert len(pairs) == 2  # the two that came after round 1's cursor, and only those
