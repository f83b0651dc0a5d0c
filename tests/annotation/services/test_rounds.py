"""The loop's bookkeeping on the real Postgres and Redis: settings, starting, triggers, recovery."""

import io
import itertools
import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation import services
from annotation.errors import Conflict, InvalidInput
from annotation.loop import LoopSettings
from annotation.models import (
    ModelVersion,
    Project,
    Response,
    Role,
    Round,
    Task,
    TaskResponse,
    TrainingRun,
)
from annotation.selectors import round_data
from annotation.services import round_attempts, round_stages, rounds
from tests.annotation.loop_support import queued_run_ids, wait_for
from tests.factories import (
    ProjectFactory,
    UserFactory,
    import_tasks,
    jsonl,
    wait_for_export_horizon,
)

pytestmark = pytest.mark.django_db

LOOP = {"enabled": True, "policy_model": "org/pi0", "reward_backbone": "minilm"}


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
    assert base.artifact_path == "org/pi0"
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
    _, cursor, seen = round_data.human_pairs(project)
    Round.objects.filter(pk=first.pk).update(data_cursor=cursor)
    annotate(project, 2)
    wait_for_export_horizon()
    pairs, policy_cursor = round_data.policy_pairs(project, first)
    assert seen == 2 and len(pairs) == 2 and policy_cursor == cursor

    Round.objects.filter(pk=first.pk).update(status=Round.Status.SUCCEEDED)
    second = rounds.round_start(project=project)
    _, later, _ = round_data.human_pairs(project)
    Round.objects.filter(pk=second.pk).update(data_cursor=later)
    pairs, _ = round_data.policy_pairs(project, second)
    assert len(pairs) == 2  # the two that came after round 1's cursor, and only those


# --- fencing: only the newest attempt of a stage writes ---------------------------------------


class _Step:
    def __init__(self, step, total):
        self.step, self.total, self.loss = step, total, 0.5


@pytest.fixture
def quiet_heartbeat(settings, tmp_path):
    """Heartbeats far apart (no beat lands within a test) and a private artifact root."""
    settings.TANDEM_LOOP_STALE_SECONDS = 600
    settings.TANDEM_ARTIFACT_ROOT = tmp_path / "artifacts"
    return settings


def _stale():
    return timezone.now() - timedelta(seconds=settings.TANDEM_LOOP_STALE_SECONDS + 5)


def test_an_older_attempt_cannot_write_after_a_newer_claim(broker, quiet_heartbeat, monkeypatch):
    """Attempt 1's heartbeat thread died: loop_tick re-queues the run while attempt 1 still
    trains, attempt 2 claims it and finishes; attempt 1 then writes nothing at all."""
    from training.artifacts import is_published, publish_run, read_manifest

    project = loop_project()
    started = rounds.round_start(project=project)
    reward = started.runs.get(stage="reward")
    root = round_attempts.artifact_root(project)
    seen = {}

    def train(run, progress):
        def publish(scratch):
            with publish_run(scratch, "round-1-reward", kind="reward", config={}) as out:
                (out.path / "attempt").write_text(str(run.attempts))
                out.metrics = {"attempt": run.attempts}
            if run.attempts == 1:
                # The newer attempt takes over in the middle of this one's training.
                TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=_stale())
                rounds.loop_tick()
                assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.QUEUED
                seen["second"] = rounds.stage_run(run_id=run.pk)
                before = TrainingRun.objects.values_list("progress_step", flat=True).get(pk=run.pk)
                with pytest.raises(round_attempts.Superseded):
                    progress(_Step(99, 100))
                after = TrainingRun.objects.values_list("progress_step", flat=True).get(pk=run.pk)
                assert before == after
            return type("Result", (), {"path": scratch / "round-1-reward", "metrics": out.metrics})

        return round_attempts.publish_once(run, root, "round-1-reward", publish)

    def body(run, loop, progress):
        path, metrics = train(run, progress)
        with transaction.atomic():
            round_attempts.run_fence(run)
            round_attempts.version_register(
                run, ModelVersion.Kind.REWARD, "round-1-reward", path, metrics, None
            )

    monkeypatch.setitem(round_stages.STAGE_BODIES, "reward", body)
    assert rounds.stage_run(run_id=reward.pk) == "superseded"
    assert seen["second"] == TrainingRun.Status.SUCCEEDED

    reward.refresh_from_db()
    assert (reward.status, reward.attempts, reward.error) == (TrainingRun.Status.SUCCEEDED, 2, "")
    published = root / "round-1-reward"
    assert is_published(published) and (published / "attempt").read_text() == "2"
    assert read_manifest(published).metrics == {"attempt": 2}
    assert ModelVersion.objects.filter(project=project, kind="reward").count() == 1
    assert not list(root.glob(".tmp-*")), "each attempt's scratch folder is gone"

    # Whatever else the superseded attempt tries is refused too, and changes nothing.
    old = TrainingRun.objects.select_related("round__project").get(pk=reward.pk)
    old.attempts = 1
    with transaction.atomic(), pytest.raises(round_attempts.Superseded):
        round_attempts.run_fence(old)
    round_attempts.run_fail(old, "boom", attempt=1)
    reward.refresh_from_db()
    started.refresh_from_db()
    assert reward.status == TrainingRun.Status.SUCCEEDED and reward.error == ""
    assert started.status != Round.Status.FAILED and started.error == ""


def test_a_heartbeat_stops_and_flags_the_stage_once_superseded(broker, quiet_heartbeat):
    project = loop_project()
    run = rounds.round_start(project=project).runs.get(stage="reward")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=2)
    run.refresh_from_db()
    run.attempts = 1  # this process holds attempt 1; attempt 2 was claimed elsewhere
    beating = round_attempts.Beating()
    report = round_attempts.progress_reporter(run, beating)
    with pytest.raises(round_attempts.Superseded):
        report(_Step(1, 2))
    beating.superseded.set()
    run.attempts = 2
    with pytest.raises(round_attempts.Superseded):
        round_attempts.progress_reporter(run, beating)(_Step(1, 2))
    assert TrainingRun.objects.get(pk=run.pk).progress_step == 0


def test_one_broken_project_does_not_stop_the_tick(broker):
    # Settings stored before today's checks, which parse now refuses: one with a stale run, one due.
    broken = loop_project()
    broken_round = rounds.round_start(project=broken)
    broken_run = broken_round.runs.get(stage="reward")
    TrainingRun.objects.filter(pk=broken_run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, heartbeat_at=_stale()
    )
    Project.objects.filter(pk=broken.pk).update(loop={**broken.loop, "policy_model": "/etc"})
    broken_due = loop_project(trigger_judgements=1)
    import_tasks(broken_due, 2)
    annotate(broken_due, 1)
    Project.objects.filter(pk=broken_due.pk).update(
        loop={**broken_due.loop, "generation": {"k": 10_000}}
    )

    due = loop_project(trigger_judgements=2)
    import_tasks(due, 3)
    annotate(due, 2)
    stale_round = rounds.round_start(project=loop_project())
    stale_run = stale_round.runs.get(stage="reward")
    TrainingRun.objects.filter(pk=stale_run.pk).update(
        status=TrainingRun.Status.RUNNING, attempts=1, heartbeat_at=_stale()
    )
    broker.delete("cpu")

    started = rounds.loop_tick()

    assert [Round.objects.get(pk=pk).project_id for pk in started] == [due.pk]
    stale_run.refresh_from_db()
    assert stale_run.status == TrainingRun.Status.QUEUED
    assert stale_run.pk in queued_run_ids(broker)
    broken_run.refresh_from_db()
    broken_round.refresh_from_db()
    assert broken_run.status == TrainingRun.Status.FAILED
    assert "loop settings" in broken_run.error and "policy_model" in broken_round.error
    assert not Round.objects.filter(project=broken_due).exists()


def test_a_stage_of_a_project_whose_settings_are_refused_fails_with_the_reason(broker):
    project = loop_project()
    run = rounds.round_start(project=project).runs.get(stage="reward")
    Project.objects.filter(pk=project.pk).update(loop={**project.loop, "policy_model": "/"})
    assert rounds.stage_run(run_id=run.pk) == TrainingRun.Status.FAILED
    run.refresh_from_db()
    assert run.error.startswith("policy_model:")


# --- blind evaluations ------------------------------------------------------------------------


class _AnyModel:
    """Stands in for a policy: answers that say nothing about which model wrote them."""

    def __init__(self, model_ref, *args, **kwargs):
        pass

    def generate(self, prompts, config):
        import secrets

        return [[f"answer {secrets.token_hex(4)}" for _ in range(config.k)] for _ in prompts]


class _AnyEnsemble:
    @classmethod
    def load(cls, path):
        return cls()

    def score(self, prompts, completions):
        import numpy as np

        return type("Scores", (), {"members": np.random.default_rng(0).random((3, len(prompts)))})


def _eval_round(project, *, eval_prompts):
    body = jsonl(
        [{"prompt": f"train {i}", "responses": []} for i in range(8)]
        + [
            {"prompt": f"held out {i}", "responses": [], "split": "eval"}
            for i in range(eval_prompts)
        ]
    )
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
    return loop_round, policy


def _claimed(loop_round, stage):
    run = loop_round.runs.get(stage=stage)
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    return TrainingRun.objects.select_related("round__project").get(pk=run.pk)


def test_blind_evaluations_do_not_give_the_model_away(broker, monkeypatch, api):
    import training.generation
    import training.reward

    monkeypatch.setattr(training.generation, "TransformersGenerator", _AnyModel)
    monkeypatch.setattr(training.reward, "RewardEnsemble", _AnyEnsemble)
    project = loop_project(samples_per_prompt=4, prompts_per_round=8, eval_prompts=60)
    loop_round, policy = _eval_round(project, eval_prompts=60)
    loop = LoopSettings.of(project)
    round_stages.stage_generate(_claimed(loop_round, "generate"), loop, lambda progress: None)
    round_stages.stage_select(_claimed(loop_round, "select"), loop, lambda progress: None)

    tasks = list(Task.objects.filter(project=project, purpose="evaluation").order_by("id"))
    assert len(tasks) == 60
    new_side, new_first_created = [], []
    for task in tasks:
        slots = list(
            TaskResponse.objects.filter(task=task)
            .order_by("position")
            .values_list("response_id", "response__model_version_id")
        )
        assert len(slots) == 2 and policy.pk in {v for _, v in slots}
        assert len({v for _, v in slots}) == 2
        new_side.append([v for _, v in slots].index(policy.pk))
        new_id = next(r for r, v in slots if v == policy.pk)
        old_id = next(r for r, v in slots if v != policy.pk)
        new_first_created.append(new_id < old_id)
    # Which side and which id order hold π_r varies, both ways, about half the time each
    # (the chance of falling outside 12..48 of 60 at random is below 1e-5).
    assert 12 <= sum(new_side) <= 48, new_side
    assert 12 <= sum(new_first_created) <= 48, new_first_created
    # And the two are not tied to each other either.
    assert 0 < sum(a == b for a, b in zip(new_side, new_first_created, strict=True)) < 60
    # The tasks come in random order too: annotators are served equal priorities by id, so a
    # creation order that followed the prompts would let the queue's order say which is which
    # once one task's source is known. Ascending neighbours number 29.5 ± 2.2 for a random order
    # of 60 (59 for the prompts' own order); 18..41 fails at random with p < 1e-6.
    prompt_order = [t.prompt_id for t in tasks]
    ascending = sum(a < b for a, b in itertools.pairwise(prompt_order))
    assert 18 <= ascending <= 41, prompt_order

    # The lease carries text and ids only: no model name, version or source.
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    leased = api(annotator).post(f"/api/v1/projects/{project.pk}/assignments")
    assert leased.status_code == 201
    body = leased.json()
    assert set(body) == {"id", "expires_at", "task"}
    assert set(body["task"]) == {"id", "kind", "round", "prompt", "responses"}
    assert all(set(r) == {"id", "text"} for r in body["task"]["responses"])
    raw = json.dumps(body)
    for name in ("round-1-policy", "π0", "org/pi0", "org/pi1", "model"):
        assert name not in raw


def test_a_superseded_generate_or_select_attempt_creates_nothing(broker, monkeypatch):
    import training.generation
    import training.reward

    monkeypatch.setattr(training.generation, "TransformersGenerator", _AnyModel)
    monkeypatch.setattr(training.reward, "RewardEnsemble", _AnyEnsemble)
    project = loop_project(samples_per_prompt=4, prompts_per_round=8, eval_prompts=4)
    loop_round, policy = _eval_round(project, eval_prompts=4)
    loop = LoopSettings.of(project)
    for stage, body in (
        ("generate", round_stages.stage_generate),
        ("select", round_stages.stage_select),
    ):
        run = _claimed(loop_round, stage)
        TrainingRun.objects.filter(pk=run.pk).update(attempts=2)  # a newer attempt claimed it
        with pytest.raises(round_attempts.Superseded):
            body(run, loop, lambda progress: None)
        if stage == "generate":
            assert not Response.objects.filter(model_version=policy).exists()
            # Let the newest attempt generate, so the select stage has candidates.
            run.attempts = 2
            body(run, loop, lambda progress: None)
            assert Response.objects.filter(model_version=policy).exists()
    assert not Task.objects.filter(project=project, round=1).exists()


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_survives_a_lost_database_connection(broker, settings):
    """The database drops the heartbeat thread's connection: the next beat reconnects, so a live
    stage never looks dead to loop_tick (before, the thread ended on the first error)."""
    from django.db import connection

    settings.TANDEM_LOOP_STALE_SECONDS = 4  # a beat every second
    project = loop_project()
    run = rounds.round_start(project=project).runs.get(stage="reward")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, attempts=1)
    run.refresh_from_db()

    def beat_after(moment):
        return wait_for(
            lambda: TrainingRun.objects.filter(pk=run.pk, heartbeat_at__gt=moment).exists(),
            timeout=15,
            what="a heartbeat",
            every=0.2,
        )

    with round_attempts.run_heartbeat(run) as beating:
        beat_after(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        beat_after(timezone.now() + timedelta(seconds=1.5))
        assert not beating.superseded.is_set()
