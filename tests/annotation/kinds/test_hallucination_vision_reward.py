"""The hallucination loop's vision option: a round whose reward model sees the image.

A round in process on drawn scenes (tiny models, CPU): the reward stage trains the VLM reward on
the round's vision_pairs rows with the project's stored images and publishes it with its
held-out figures; the select stage scores π_1's answers with it, each with its prompt's image.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from annotation import services
from annotation.kinds.hallucination.loop import HallucinationLoop
from annotation.models import ModelVersion, Prompt, Role, Task, TaskResponse
from tests.annotation.image_support import media  # noqa: F401
from tests.annotation.loop_support import hallucination_loop_project
from tests.annotation.services.test_rounds_hallucination import (  # noqa: F401  (fixtures)
    artifacts,
    vision_models,
)
from tests.factories import UserFactory, wait_for_export_horizon

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("media")]

HOOKS = HallucinationLoop()


@pytest.mark.slow
def test_a_round_with_the_vision_reward_trains_publishes_and_scores_with_the_image(
    vision_models,  # noqa: F811
    artifacts,  # noqa: F811
):
    from annotation.selectors.round_data import human_pairs
    from annotation.services import rounds, simulation
    from training.artifacts import read_manifest
    from training.vlm_reward import VLMRewardModel

    policy, text_backbone = vision_models
    project = hallucination_loop_project(
        creator=UserFactory(is_staff=True),
        policy=policy,
        reward_backbone=text_backbone,
        labelled=16,
        prompts_per_round=6,
        eval_prompts=2,
    )
    rounds.loop_configure(project=project, data={"reward_model": "vision", "human_share": 0.5})
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    assert simulation.oracle_label_queue(project=project, annotator=annotator, options={}) == 16
    wait_for_export_horizon()
    rows, _, _ = human_pairs(project)
    held_out = HOOKS.reward_split(rows, seed=project.pk)[1]

    done = rounds.round_run_inline(loop_round=rounds.round_start(project=project))
    assert done.status == "succeeded", done.error

    # Published at once, every figure in its manifest: the VLM's held-out ones and the blind
    # text baseline's, on the same pairs.
    reward = ModelVersion.objects.get(project=project, kind="reward", round=1)
    manifest = read_manifest(reward.artifact_path)
    assert manifest.kind == "reward-vlm" and manifest.metrics == reward.metrics
    assert manifest.data_cursor == done.data_cursor
    pi0 = ModelVersion.objects.get(project=project, kind="policy", round=0)
    assert manifest.config["backbone"] == pi0.artifact_path  # no backbone set: π_0's
    assert manifest.config["heads"] == 2  # one head per ensemble member (TINY_VISION_LOOP)
    metrics = reward.metrics
    assert metrics["reward_model"] == "vision"
    assert done.reward_accuracy == metrics["eval"]["accuracy"]
    assert 0.0 <= done.reward_accuracy <= 1.0
    assert metrics["eval"]["n"] == len(held_out) > 0
    assert len(metrics["eval"]["member_accuracy"]) == 2
    blind = metrics["without_facts"]
    assert blind["accuracy"] is not None and blind["eval"]["n"] == len(held_out)
    model, _ = VLMRewardModel.load(reward.artifact_path)
    assert model.heads == 2

    # The scores see the image: the same answers to the same question, with another prompt's
    # image, score otherwise (a text reward reading the facts would not notice the swap).
    first, second = Prompt.objects.filter(project=project, split="train").order_by("id")[:2]
    assert first.image != second.image
    texts = ["There is a red circle.", "There is a blue square."]
    swapped = SimpleNamespace(messages=first.messages, image=second.image, context=first.context)
    path = reward.artifact_path
    own = HOOKS.candidate_rewards(path, [first], [texts], project=project)
    other = HOOKS.candidate_rewards(path, [swapped], [texts], project=project)
    assert own.shape == (2, 2)
    assert not np.allclose(own, other)

    # The select stage scored π_1's answers with it: each model label's margin is the gap of
    # the heads' mean rewards of the task's two answers, with their prompt's image.
    labelled = list(
        Task.objects.filter(project=project, round=1, auto_label__isnull=False).select_related(
            "prompt"
        )
    )
    assert labelled and done.runs.get(stage="select").metrics["model_labelled"] == len(labelled)
    for task in labelled:
        shown = list(
            TaskResponse.objects.filter(task=task)
            .order_by("position")
            .values_list("response__text", flat=True)
        )
        mean = HOOKS.candidate_rewards(path, [task.prompt], [shown], project=project).mean(axis=0)
        assert task.auto_label["reward_version"] == reward.pk
        assert mean[0] >= mean[1]  # the favourite is A
        assert task.auto_label["margin"] == pytest.approx(mean[0] - mean[1], abs=1e-4)
