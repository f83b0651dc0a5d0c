"""The scene world's hallucination loop project, set up by the app's own services."""

import random

import pytest
from django.core.management import CommandError, call_command

from annotation.errors import InvalidInput
from annotation.kinds.hallucination.simulation import SceneOracle
from annotation.loop import LoopSettings
from annotation.models import Project, Prompt, Task, TaskResponse
from annotation.selectors.round_data import image_loader, prompt_batch
from annotation.services.simulation_scenes import SCENE_LOOP, scene_project_setup, scene_prompts
from tests.annotation.image_support import media  # noqa: F401
from tests.annotation.loop_support import tiny_vision_models
from tests.factories import UserFactory
from training import scenes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("media")]


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory):
    return tiny_vision_models(tmp_path_factory.mktemp("scene-models"))


@pytest.fixture
def roots(settings, vision_models):
    settings.TANDEM_MODEL_ROOTS = [vision_models[0].parent]
    return vision_models


def test_scene_prompts_draw_the_package_benchs_world():
    """Same seed, same scenes and questions as bench/hallucination_world.py: the web bench's
    round slices and held-out images are the package bench's."""
    from bench.hallucination_world import make_prompts

    ours = scene_prompts(random.Random(4), 30, "round-")
    theirs = make_prompts(random.Random(4), 30, "round-")
    assert [(p.key, p.scene, p.question) for p in ours] == [
        (p.key, p.scene, p.question) for p in theirs
    ]
    assert all(len(p.scene.items) == 2 for p in ours)
    assert all(item.size == "large" for p in ours for item in p.scene.items)


def _setup(policy, **kwargs):
    rng = random.Random(0)
    defaults = {
        "creator": UserFactory(is_staff=True),
        "policy": policy,
        "train": scene_prompts(rng, 9, "train-"),
        "evaluation": scene_prompts(rng, 3, "eval-"),
        "prompts_per_round": 4,
        "image_size": 32,
        "loop": {"generation": {"max_new_tokens": 10}, "policy": {"beta": 0.2}},
    }
    return scene_project_setup(**{**defaults, **kwargs})


def test_the_project_holds_the_scenes_pi0s_answers_and_the_loop(roots):
    policy, _ = roots
    project = _setup(policy)
    assert project.kind == "hallucination"
    train = list(Prompt.objects.filter(project=project, split="train").order_by("id"))
    held_out = list(Prompt.objects.filter(project=project, split="eval").order_by("id"))
    assert len(train) == 9 and len(held_out) == 3
    # Every prompt: its question, the picture as stored by the image service (the drawn scene,
    # pixel for pixel), its captions as context and its scene as metadata.
    load = image_loader(project)
    for prompt in train + held_out:
        scene = scenes.Scene.from_dict(prompt.metadata["scene"])
        assert prompt.context["captions"] == scenes.captions(scene)
        assert prompt.messages[-1]["content"] in {q.text for q in scenes.questions(scene)}
        assert prompt.image.startswith("sha256:")
        stored = load(prompt.image)
        assert stored.tobytes() == scenes.draw(scene, 32).convert("RGB").tobytes()
    # Round 0: pairs of π_0's answers on the first slice only (round 1 generates for the second).
    tasks = list(Task.objects.filter(project=project, round=0))
    assert 0 < len(tasks) <= 4
    assert {t.prompt_id for t in tasks} <= {p.pk for p in train[:4]}
    for task in tasks:
        texts = list(
            TaskResponse.objects.filter(task=task).values_list("response__text", flat=True)
        )
        assert len(texts) == 2 and all(t.strip() for t in texts)
    assert [p.pk for p in prompt_batch(project, 1, 4)] == [p.pk for p in train[4:8]]
    # The loop: on, π_0 given, the package recipe with the overrides merged key by key.
    loop = LoopSettings.of(project)
    assert loop.enabled and loop.policy_model == str(policy)
    assert loop.selection == "best_vs_worst" and loop.ensemble_members == 1
    assert loop.reward_backbone == "minilm" and loop.eval_prompts == 3
    assert loop.policy["beta"] == 0.2
    assert loop.policy["learning_rate"] == SCENE_LOOP["policy"]["learning_rate"]
    assert loop.generation["max_new_tokens"] == 10
    # The scene oracle judges its tasks from the stored scenes.
    oracle = SceneOracle(project=project, options={})
    task = tasks[0]
    texts = TaskResponse.objects.filter(task=task).order_by("position")
    payload = oracle.answer(
        {"id": task.pk, "responses": [{"text": r.response.text} for r in texts]}
    )
    assert payload["choice"] in {"A", "B", "tie"}


def test_a_policy_outside_the_model_roots_or_duplicate_keys_create_nothing(roots, tmp_path):
    policy, _ = roots
    with pytest.raises(InvalidInput):
        _setup(tmp_path / "elsewhere")
    prompts = scene_prompts(random.Random(1), 3, "same-")
    with pytest.raises(InvalidInput):
        _setup(policy, train=prompts, evaluation=prompts[:1])
    assert not Project.objects.exists()


def test_the_image_is_a_png_the_size_asked(roots):
    policy, _ = roots
    project = _setup(policy, image_size=48, train=scene_prompts(random.Random(2), 1, "t-"))
    prompt = Prompt.objects.get(project=project, split="train")
    image = image_loader(project)(prompt.image)
    assert image.size == (48, 48)


def test_simulate_annotators_needs_a_vision_pi0_for_a_scene_project():
    with pytest.raises(CommandError, match="--base-policy"):
        call_command("simulate_annotators", kind="hallucination", url="http://127.0.0.1:9")
