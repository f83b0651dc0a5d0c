"""The loop on the paths the round tests do not take: the ensemble labelling part of the pairs,
a crash between publishing and registering a model, the gpu queue, and a lost next-stage message.

Postgres, Redis (this run's own database, from TEST_CELERY_BROKER_URL) and the artifacts on disk
are real; only the models are stand-ins where a test is about the bookkeeping, not the learning.
"""

import hashlib
import io
import re
from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError

from annotation import services
from annotation.loop import LoopSettings
from annotation.models import (
    ModelVersion,
    Role,
    Round,
    Task,
    TaskResponse,
    TrainingRun,
)
from annotation.selectors import round_data
from annotation.services import round_attempts, round_stages, rounds
from tests.annotation.loop_support import queued_run_ids, take_run_id
from tests.factories import (
    ProjectFactory,
    UserFactory,
    import_tasks,
    jsonl,
    wait_for_export_horizon,
)

pytestmark = pytest.mark.django_db

LOOP = {"enabled": True, "policy_model": "org/pi0", "reward_backbone": "minilm"}


def _stale():
    return timezone.now() - timedelta(seconds=settings.TANDEM_LOOP_STALE_SECONDS + 5)


def loop_project(**loop):
    project = ProjectFactory()
    rounds.loop_configure(project=project, data={**LOOP, **loop})
    return project


# --- the ensemble labels what humans do not ---------------------------------------------------


def _value(text: str) -> float:
    """What the stand-in ensemble thinks of a text: the number it carries."""
    return float(re.search(r"value (\d+)", text).group(1))


def _member_scores(completions: list[str]) -> np.ndarray:
    """[3, n] rewards: the text's value plus a per-member offset, so members disagree by pair."""
    rows = []
    for member in range(3):
        rows.append(
            [
                _value(text) / 100
                + int(hashlib.sha256(f"{member}:{text}".encode()).hexdigest()[:6], 16) / 2**24 * 3
                for text in completions
            ]
        )
    return np.array(rows)


class _NumberedModel:
    """A policy whose answers carry distinct numbers (no two samples of a prompt alike)."""

    calls = 0

    def __init__(self, model_ref, *args, **kwargs):
        pass

    def generate(self, prompts, config):
        _NumberedModel.calls += 1
        rng = np.random.default_rng(_NumberedModel.calls)
        return [
            [f"answer value {v}" for v in rng.choice(1000, size=config.k, replace=False)]
            for _ in prompts
        ]


class _KnownEnsemble:
    @classmethod
    def load(cls, path):
        return cls()

    def score(self, prompts, completions):
        return type("Scores", (), {"members": _member_scores(list(completions))})


def _first_round(project, *, train_prompts: int):
    """Round 1 of `project` up to its select stage: prompts imported, versions registered."""
    body = jsonl([{"prompt": f"train {i}", "responses": []} for i in range(train_prompts)])
    services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    loop_round = rounds.round_start(project=project)
    policy = ModelVersion.objects.create(
        project=project, kind="policy", round=1, name="round-1-policy", artifact_path="org/pi1"
    )
    reward = ModelVersion.objects.create(
        project=project, kind="reward", round=1, name="round-1-reward", artifact_path="org/rm1"
    )
    Round.objects.filter(pk=loop_round.pk).update(
        policy_version=policy, reward_version=reward, status=Round.Status.RUNNING
    )
    loop_round.refresh_from_db()
    return loop_round


def _run_body(loop_round, stage, body, loop):
    run = loop_round.runs.get(stage=stage)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    run = TrainingRun.objects.select_related("round__project").get(pk=run.pk)
    body(run, loop, lambda progress: None)
    run.refresh_from_db()
    return run


@pytest.mark.django_db(transaction=True)  # the export reads only committed judgements
@pytest.mark.parametrize("selection", ["disagreement", "random", "best_vs_worst"])
def test_the_ensemble_labels_the_share_humans_do_not_and_the_next_policy_trains_on_it(
    broker, monkeypatch, selection
):
    import training.generation
    import training.reward

    monkeypatch.setattr(training.generation, "TransformersGenerator", _NumberedModel)
    monkeypatch.setattr(training.reward, "RewardEnsemble", _KnownEnsemble)
    project = loop_project(
        samples_per_prompt=4,
        prompts_per_round=10,
        eval_prompts=0,
        human_share=0.5,
        selection=selection,
    )
    loop = LoopSettings.of(project)
    first = _first_round(project, train_prompts=10)
    _run_body(first, "generate", round_stages.stage_generate, loop)
    select = _run_body(first, "select", round_stages.stage_select, loop)

    tasks = list(Task.objects.filter(project=project, round=1, purpose="label"))
    assert len(tasks) == 10  # one pair per prompt
    humans = [t for t in tasks if t.auto_label is None]
    labelled = [t for t in tasks if t.auto_label is not None]
    assert (len(humans), len(labelled)) == (5, 5)
    assert select.metrics["human_tasks"] == 5 and select.metrics["model_labelled"] == 5
    assert not any(t.is_complete for t in humans) and all(t.is_complete for t in labelled)
    if selection != "random":
        # Humans get the pairs the selection ranks first; the ensemble labels the rest.
        assert min(t.priority for t in humans) >= max(t.priority for t in labelled)

    def shown(task):
        return list(
            TaskResponse.objects.filter(task=task)
            .order_by("position")
            .values_list("response__text", flat=True)
        )

    favourites = set()
    for task in labelled:
        a, b = shown(task)
        mean_a, mean_b = _member_scores([a, b]).mean(axis=0)
        label = task.auto_label
        assert set(label) == {"choice", "margin", "reward_version"}
        assert label["reward_version"] == first.reward_version_id
        # The label is the ensemble's: its choice is the side with the higher mean reward, and the
        # margin is by how much.
        chosen, rejected = (a, b) if label["choice"] == "A" else (b, a)
        assert _member_scores([chosen]).mean() >= _member_scores([rejected]).mean(), (a, b, label)
        assert label["margin"] == pytest.approx(abs(mean_a - mean_b))
        favourites.add((chosen, rejected))

    # Only the human share reaches annotators.
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    leased = []
    while (lease := services.assignment_lease(annotator=annotator, project=project)) is not None:
        leased.append(lease.task_id)
        services.judgement_submit(
            assignment=lease, data={"choice": "B", "strength": 1}, idempotency_key=f"k{lease.pk}"
        )
    assert sorted(leased) == sorted(t.pk for t in humans)
    wait_for_export_horizon()

    # The reward ensemble learns from human judgements only: no model label feeds it back.
    human, _, count = round_data.human_pairs(project)
    assert count == 5
    human_texts = {(p.chosen[0]["content"], p.rejected[0]["content"]) for p in human}
    assert not human_texts & favourites
    assert human_texts == {tuple(reversed(shown(t))) for t in humans}  # everyone chose B

    # The next round's DPO trains on round 1's human pairs and on its model-labelled pairs,
    # each with the ensemble's favourite as the chosen answer.
    Round.objects.filter(pk=first.pk).update(status=Round.Status.SUCCEEDED)
    second = rounds.round_start(project=project)
    pairs, _ = round_data.policy_pairs(project, second)
    trained = [(p.chosen[0]["content"], p.rejected[0]["content"]) for p in pairs]
    assert len(trained) == 10 and set(trained) == human_texts | favourites
    assert all(p.prompt[-1]["content"].startswith("train ") for p in pairs)


# --- a crash between publishing a model and registering it ------------------------------------


class _Crash(BaseException):
    """The worker dies: not an Exception, so no handler records a failure (as with SIGKILL)."""


@pytest.fixture
def tiny_backbone(tmp_path, settings):
    """A tiny reward backbone inside a model root, and a private artifact folder."""
    from training.models import TinyModelConfig, build_tiny_reward_model, build_tokenizer

    root = tmp_path / "models"
    path = root / "rm"
    corpus = ["train prompt response good bad answer number"] * 20
    tokenizer = build_tokenizer(corpus, vocab_size=200, model_max_length=64, path=path)
    build_tiny_reward_model(
        tokenizer,
        TinyModelConfig(
            hidden_size=16, layers=1, heads=2, intermediate=32, max_positions=64, seed=0
        ),
        path=path,
    )
    settings.TANDEM_MODEL_ROOTS = [root]
    settings.TANDEM_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TANDEM_LOOP_STALE_SECONDS = 600  # no heartbeat lands within the test
    return path


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_model_published_before_a_crash_is_registered_from_its_manifest_not_retrained(
    broker, monkeypatch, tiny_backbone
):
    import training.reward
    from training.artifacts import is_published, read_manifest

    project = loop_project(
        reward_backbone=str(tiny_backbone),
        ensemble_members=1,
        reward={"epochs": 1.0, "batch_size": 8, "max_length": 32},
    )
    import_tasks(project, 21)
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    for i in range(20):
        lease = services.assignment_lease(annotator=annotator, project=project)
        services.judgement_submit(
            assignment=lease, data={"choice": "AB"[i % 2], "strength": 1}, idempotency_key=f"k{i}"
        )
    wait_for_export_horizon()

    trainings = []
    train = training.reward.train_reward_ensemble

    def counted(*args, **kwargs):
        trainings.append(kwargs["data_cursor"])
        return train(*args, **kwargs)

    monkeypatch.setattr(training.reward, "train_reward_ensemble", counted)
    register = round_attempts.version_register

    def crash_once(run, kind, *args, **kwargs):
        if kind == ModelVersion.Kind.REWARD and not crashed:
            crashed.append(run.pk)
            raise _Crash
        return register(run, kind, *args, **kwargs)

    crashed: list[int] = []
    monkeypatch.setattr(round_stages, "version_register", crash_once)  # where the stage finds it

    started = rounds.round_start(project=project)
    reward = started.runs.get(stage="reward")
    with pytest.raises(_Crash):
        rounds.stage_run(run_id=reward.pk)
    published = round_attempts.artifact_root(project) / "round-1-reward"
    assert is_published(published) and len(trainings) == 1
    manifest = published / "manifest.json"
    written = manifest.stat().st_mtime_ns
    reward.refresh_from_db()
    assert (reward.status, reward.attempts) == (TrainingRun.Status.RUNNING, 1)
    assert not ModelVersion.objects.filter(project=project, kind="reward").exists()

    # A judgement arrives while the worker is dead: the ensemble did not see it, so the round
    # must not claim it did (its cursor is the one the published model was trained to).
    lease = services.assignment_lease(annotator=annotator, project=project)
    services.judgement_submit(
        assignment=lease, data={"choice": "A", "strength": 1}, idempotency_key="late"
    )
    wait_for_export_horizon()

    broker.delete("cpu")
    TrainingRun.objects.filter(pk=reward.pk).update(heartbeat_at=_stale())  # the worker is dead
    rounds.loop_tick()
    assert take_run_id(broker) == reward.pk
    assert rounds.stage_run(run_id=reward.pk) == TrainingRun.Status.SUCCEEDED

    assert len(trainings) == 1, "the published model was trained again"
    assert manifest.stat().st_mtime_ns == written
    reward.refresh_from_db()
    started.refresh_from_db()
    version = ModelVersion.objects.get(project=project, kind="reward", round=1)
    recorded = read_manifest(published)
    assert (reward.status, reward.attempts) == (TrainingRun.Status.SUCCEEDED, 2)
    assert version.artifact_path == str(published) and version.metrics == recorded.metrics
    assert started.reward_version_id == version.pk
    assert started.reward_accuracy == recorded.metrics["eval"]["accuracy"]
    assert started.data_cursor == recorded.data_cursor == trainings[0]
    assert started.judgements == 20
    assert not list(published.parent.glob(".tmp-*"))
    assert queued_run_ids(broker) == [started.runs.get(stage="policy").pk]


# --- queues and lost messages -----------------------------------------------------------------


def _stand_in_stages(monkeypatch):
    """Stages that do nothing: these tests are about which message goes where."""
    for stage in round_stages.STAGES:
        monkeypatch.setitem(round_stages.STAGE_BODIES, stage, lambda run, loop, progress: None)


def test_a_gpu_project_sends_every_stage_message_to_the_gpu_queue(
    broker, monkeypatch, django_capture_on_commit_callbacks
):
    _stand_in_stages(monkeypatch)
    project = loop_project(queue="gpu")
    with django_capture_on_commit_callbacks(execute=True):
        started = rounds.round_start(project=project)
    runs = {r.stage: r.pk for r in started.runs.all()}
    assert queued_run_ids(broker, "gpu") == [runs["reward"]]

    # Each stage sends the next one to the same queue ...
    for stage, following in (("reward", "policy"), ("policy", "generate")):
        assert take_run_id(broker, "gpu") == runs[stage]
        with django_capture_on_commit_callbacks(execute=True):
            assert rounds.stage_run(run_id=runs[stage]) == TrainingRun.Status.SUCCEEDED
        assert queued_run_ids(broker, "gpu") == [runs[following]]

    # ... and so does loop_tick when it re-sends a lost one.
    broker.delete("gpu")
    TrainingRun.objects.filter(pk=runs["generate"]).update(heartbeat_at=_stale())
    rounds.loop_tick()
    assert queued_run_ids(broker, "gpu") == [runs["generate"]]
    assert broker.llen("cpu") == 0  # a cpu worker never sees a gpu project's jobs


@pytest.mark.django_db(transaction=True)  # the next stage is sent once the finish commits
def test_a_next_stage_lost_to_a_broker_outage_is_sent_again_by_the_tick(broker, monkeypatch):
    from annotation import jobs

    _stand_in_stages(monkeypatch)
    project = loop_project()
    started = rounds.round_start(project=project)
    runs = {r.stage: r.pk for r in started.runs.all()}
    assert take_run_id(broker) == runs["reward"]

    send = jobs.enqueue
    refused = []

    def broker_down_once(task_name, *args, **kwargs):
        if not refused:
            refused.append((task_name, *args))
            raise OperationalError("Error 111 connecting to redis. Connection refused.")
        return send(task_name, *args, **kwargs)

    monkeypatch.setattr(jobs, "enqueue", broker_down_once)
    assert rounds.stage_run(run_id=runs["reward"]) == TrainingRun.Status.SUCCEEDED
    assert refused == [
        (jobs.RUN_ROUND_STAGE, runs["policy"])
    ]  # the policy stage's message was lost
    assert broker.llen("cpu") == 0
    policy = TrainingRun.objects.get(pk=runs["policy"])
    assert policy.status == TrainingRun.Status.QUEUED

    rounds.loop_tick()  # not stale yet: nothing is sent twice while it may still be on its way
    assert broker.llen("cpu") == 0
    TrainingRun.objects.filter(pk=policy.pk).update(heartbeat_at=_stale())
    rounds.loop_tick()
    assert queued_run_ids(broker) == [runs["policy"]]

    # From there the chain runs to the end by its own messages, with no one's help.
    while (run_id := take_run_id(broker)) is not None:
        assert rounds.stage_run(run_id=run_id) == TrainingRun.Status.SUCCEEDED
    started.refresh_from_db()
    assert started.status == Round.Status.SUCCEEDED
    assert set(started.runs.values_list("status", flat=True)) == {"succeeded"}


def test_a_tick_with_stale_after_zero_revives_at_once(broker):
    """`stale_after=timedelta(0)` means "every live run is stale", not "use the default"."""
    project = loop_project()
    run = rounds.round_start(project=project).runs.get(stage="reward")
    broker.delete("cpu")
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, heartbeat_at=timezone.now()
    )
    rounds.loop_tick(stale_after=timedelta(0))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED and queued_run_ids(broker) == [run.pk]
