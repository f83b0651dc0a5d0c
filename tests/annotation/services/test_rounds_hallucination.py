"""The online loop on a hallucination project: images, facts and a vision-language policy.

The end-to-end test drives one multimodal round through the web app as people would: a real
Celery worker process on the test's Postgres and Redis, the scene oracle judging over REST
(`simulate_annotators`), the round started over the API.
"""

import io

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient

from annotation import services
from annotation.errors import NotFound
from annotation.models import (
    Judgement,
    ModelVersion,
    Prompt,
    Role,
    Round,
    Task,
    TaskResponse,
)
from annotation.selectors.round_data import image_loader, prompt_batch, prompt_images
from annotation.services.tokens import token_issue
from tests.annotation.image_support import drawn, media  # noqa: F401
from tests.annotation.loop_support import (
    celery_worker,
    hallucination_loop_project,
    tiny_vision_models,
)
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("media")]

BROKER = settings.CELERY_BROKER_URL


@pytest.fixture(scope="session")
def vision_models(tmp_path_factory):
    """(π_0, reward backbone): built once, in a folder the tests name a model root."""
    return tiny_vision_models(tmp_path_factory.mktemp("vision-models"))


@pytest.fixture
def artifacts(tmp_path, settings, vision_models):
    settings.TANDEM_MODEL_ROOTS = [vision_models[0].parent]
    settings.TANDEM_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TANDEM_ARTIFACT_ROOT.mkdir()
    return settings.TANDEM_ARTIFACT_ROOT


@pytest.fixture
def purged_broker():
    import redis

    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield
    client.flushdb()


def _project(vision_models, **kwargs):
    policy, reward = vision_models
    return hallucination_loop_project(
        creator=UserFactory(is_staff=True), policy=policy, reward_backbone=reward, **kwargs
    )


@pytest.mark.slow
def test_one_multimodal_round_through_the_web_app(
    live_server, vision_models, artifacts, purged_broker, tmp_path
):
    from training.artifacts import read_manifest
    from training.vision import load_vlm

    project = _project(vision_models, labelled=24, prompts_per_round=8, eval_prompts=4)
    out = io.StringIO()
    with celery_worker(
        artifacts=artifacts, broker=BROKER, log=tmp_path / "worker.log", media=settings.MEDIA_ROOT
    ):
        call_command(
            "simulate_annotators",
            url=live_server.url,
            project=project.pk,
            annotators=2,
            rounds=1,
            correction_share=0.25,
            timeout=300,
            stdout=out,
        )
    report = out.getvalue()
    loop_round = Round.objects.get(project=project, number=1)
    log = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
    assert loop_round.status == "succeeded", (loop_round.error, report, log)
    # The round's reward model saw every round-0 judgement the oracle made over REST.
    round_zero = Judgement.objects.filter(task__project=project, task__round=0).count()
    assert round_zero == 24
    assert 0 < loop_round.judgements <= round_zero  # a double tie makes no pair

    # Fact-RLHF: held-out accuracy recorded, with the blind baseline's beside it.
    reward = ModelVersion.objects.get(project=project, kind="reward", round=1)
    assert loop_round.reward_version_id == reward.pk
    assert loop_round.reward_accuracy is not None and 0.0 <= loop_round.reward_accuracy <= 1.0
    assert reward.metrics["eval"]["accuracy"] == loop_round.reward_accuracy
    assert reward.metrics["eval"]["n"] > 0
    blind = reward.metrics["without_facts"]
    assert blind["accuracy"] is not None and blind["eval"]["n"] == reward.metrics["eval"]["n"]

    # π_1 is a vision-language model trained from π_0, and registered: by dense DPO, since the
    # oracle corrected some answers (RLHF-V's γ on the tokens a correction changed).
    pi0 = ModelVersion.objects.get(project=project, kind="policy", round=0)
    pi1 = ModelVersion.objects.get(project=project, kind="policy", round=1)
    assert loop_round.policy_version_id == pi1.pk and pi1.parent_id == pi0.pk
    manifest = read_manifest(pi1.artifact_path)
    assert manifest.kind == "policy-vision-dense-dpo"
    assert manifest.metrics["pairs"] > manifest.metrics["corrections"] > 0
    assert manifest.metrics["steps"] > 0
    model, processor = load_vlm(pi1.artifact_path, "cpu")
    assert model.config.model_type == "llava" and processor.image_processor is not None

    # New tasks: pairs of π_1's answers about round 1's slice of the training prompts, each
    # with its image.
    asked = {p.pk for p in prompt_batch(project, 1, 8)}
    assert len(asked) == 8
    label_tasks = list(Task.objects.filter(project=project, round=1, purpose="label"))
    assert label_tasks
    for task in label_tasks:
        assert task.kind == "hallucination" and task.prompt.image.startswith("sha256:")
        sources = list(
            TaskResponse.objects.filter(task=task).values_list("response__model_version", flat=True)
        )
        assert sources == [pi1.pk, pi1.pk]
    assert {t.prompt_id for t in label_tasks} <= asked

    # Blind evaluation tasks on the held-out images: π_1 against π_0, one each.
    evaluation = list(Task.objects.filter(project=project, round=1, purpose="evaluation"))
    assert len(evaluation) == 4
    for task in evaluation:
        assert task.prompt.split == "eval" and task.prompt.image.startswith("sha256:")
        sources = set(
            TaskResponse.objects.filter(task=task).values_list("response__model_version", flat=True)
        )
        assert sources == {pi1.pk, pi0.pk}
    # The oracle judged them over REST, which gives the round its headline number.
    assert Judgement.objects.filter(task__in=evaluation).count() == 4
    trainer = UserFactory()
    services.membership_set(project=project, username=trainer.username, role=Role.TRAINER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=trainer)[1]}")
    listed = client.get(f"/api/v1/projects/{project.pk}/rounds").json()
    assert listed[0]["win_rate_n"] == 4 and listed[0]["win_rate"] is not None
    assert "round" in report


def test_the_image_loader_opens_the_projects_images_and_no_other(vision_models, artifacts):
    from annotation.services.images import image_store

    project = _project(vision_models, labelled=2, prompts_per_round=1, eval_prompts=1)
    prompt = Prompt.objects.filter(project=project).first()
    load = image_loader(project)
    image = load(prompt.image)
    assert image.mode == "RGB" and image.size == (64, 64)
    # An exported path names the same stored file.
    named = prompt_images([prompt])[prompt.image]
    assert named["format"] == "png"
    assert load(f"images/{named['sha256']}.png").tobytes() == image.tobytes()

    other = _project(vision_models, labelled=2, prompts_per_round=1, eval_prompts=1)
    elsewhere = image_store(project=other, data=drawn(seed=5), name="x.png")
    for ref in (
        f"sha256:{elsewhere.sha256}",  # another project's image
        f"images/{elsewhere.sha256}.png",
        "images/../../etc/passwd",
        "/etc/passwd",
        "sha256:" + "0" * 64,
    ):
        with pytest.raises(NotFound):
            load(ref)


@pytest.mark.slow
def test_a_multimodal_round_in_process_reads_facts_images_and_corrections(vision_models, artifacts):
    """Round 1 in process, with half the selected pairs labelled by the Fact-RLHF ensemble: the
    reward reads each prompt's facts, the policy trains on judgements and corrections, and the
    rows the next policy gets from the ensemble are vision rows whose images open."""
    from annotation.kinds.hallucination.loop import HallucinationLoop
    from annotation.selectors.round_data import (
        corrected_pairs,
        human_pairs,
        model_labelled_pairs,
    )
    from annotation.services import rounds, simulation
    from tests.factories import wait_for_export_horizon
    from training.vision_dpo import vision_rows

    project = _project(vision_models, labelled=16, prompts_per_round=8, eval_prompts=2)
    rounds.loop_configure(project=project, data={"human_share": 0.5})
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    given = simulation.oracle_label_queue(
        project=project, annotator=annotator, options={"correction_share": 0.5}
    )
    assert given == 16
    wait_for_export_horizon()

    # The rows the reward model reads carry each prompt's captions, from the database.
    rows, _, count = human_pairs(project)
    assert count == 16 and 0 < len(rows) <= 16
    captions = {
        p.pk: p.context["captions"] for p in Prompt.objects.filter(project=project, split="train")
    }
    by_task = dict(Task.objects.filter(project=project).values_list("pk", "prompt_id"))
    for row in rows:
        assert row["context"]["captions"] == captions[by_task[row["task_id"]]]

    done = rounds.round_run_inline(loop_round=rounds.round_start(project=project))
    assert done.status == "succeeded", done.error
    # π_1 trained on every decisive judgement and, beside them, on the annotators' corrections
    # (the corrected answer chosen over the original).
    corrections = corrected_pairs(project, since=None, until=done.data_cursor)
    assert corrections and len(vision_rows(corrections)) == len(corrections)
    pi1 = ModelVersion.objects.get(project=project, kind="policy", round=1)
    assert pi1.metrics["pairs"] == len(rows) + len(corrections)
    assert pi1.metrics["corrections"] == len(corrections)  # dense DPO weighed their changes
    select = done.runs.get(stage="select")
    assert select.metrics["model_labelled"] > 0 and select.metrics["evaluation_tasks"] == 2

    labelled = model_labelled_pairs(project, round_number=1)
    assert len(labelled) == select.metrics["model_labelled"]
    assert len(vision_rows(labelled)) == len(labelled)  # what train_vision_dpo accepts
    load = image_loader(project)
    for row in labelled:
        assert load(row["images"][0]).mode == "RGB"
        assert row["context"]["captions"]
    # The ensemble scored candidates on the facts and the question, as it was trained.
    prompt = Prompt.objects.filter(project=project).first()
    read = HallucinationLoop().reward_prompt(prompt)
    assert read[-1]["role"] == "user"
    assert read[-1]["content"].startswith("Image facts:")
    assert all(c in read[-1]["content"] for c in prompt.context["captions"])
    assert read[-1]["content"].endswith(f"Question: {prompt.messages[-1]['content']}")
