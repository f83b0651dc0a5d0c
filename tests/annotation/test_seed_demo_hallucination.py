"""`seed_demo` also seeds a hallucination project: drawn images stored once through the image
service, tasks whose answers really hallucinate, created once however often the command runs."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import storages
from django.core.management import call_command

from annotation import services
from annotation.demo_hallucination import MODELS, PROJECT_NAME, TASKS, demo_tasks
from annotation.models import FeedbackKind, Image, Project, ProjectImage, Prompt, Response, Task
from tests.annotation.image_support import media  # noqa: F401
from training import scenes

# Images go to a media root of each test's own (the `media` fixture).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media")]


def seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_seeds_the_hallucination_project_once_with_its_images_stored():
    out = seed()
    project = Project.objects.get(name=PROJECT_NAME)
    assert project.kind == FeedbackKind.HALLUCINATION
    assert project.overlap == 2
    assert f"{PROJECT_NAME} ({TASKS} tasks, overlap 2)" in out
    roles = dict(project.memberships.values_list("user__username", "role"))
    assert roles == {"admin": "manager", "ann1": "annotator", "ann2": "annotator"}

    prompts = list(Prompt.objects.filter(project=project).order_by("external_id"))
    assert len(prompts) == TASKS == Task.objects.filter(project=project).count()
    shas = {p.image.removeprefix("sha256:") for p in prompts}
    assert all(p.image.startswith("sha256:") for p in prompts)
    # Every image is stored, linked to the project, and its files are in storage.
    linked = set(ProjectImage.objects.filter(project=project).values_list("image_id", flat=True))
    assert shas <= linked
    storage = storages["default"]
    for image in Image.objects.filter(pk__in=shas):
        assert (image.format, image.width, image.height) == ("png", 256, 256)
        assert storage.exists(image.file) and storage.exists(image.thumbnail)

    # The answers hallucinate for real: the oracle finds the false claims the answer key lists,
    # and the two answers of a task never make as many.
    for prompt in prompts:
        scene = scenes.Scene.from_dict(prompt.metadata["scene"])
        assert prompt.context["captions"] == scenes.captions(scene)
        responses = list(Response.objects.filter(prompt=prompt))
        assert {r.model_name for r in responses} == {model for model, _, _ in MODELS}
        false_counts = []
        for response in responses:
            claims = scenes.claims_of(scene, response.text)
            key = prompt.metadata["answer_key"][response.model_name]
            assert [[c.start, c.end, c.category, c.true] for c in claims] == key
            false_counts.append(sum(not c.true for c in claims))
        assert false_counts[0] != false_counts[1]
    totals = {
        model: sum(not c[3] for p in prompts for c in p.metadata["answer_key"][model])
        for model, _, _ in MODELS
    }
    assert totals["llava-sim-b"] > totals["llava-sim-a"] > 0

    before = {
        model.__name__: model.objects.count()
        for model in (Project, Prompt, Response, Task, Image, ProjectImage)
    }
    again = seed()
    assert "hallucination tasks" not in again
    after = {
        model.__name__: model.objects.count()
        for model in (Project, Prompt, Response, Task, Image, ProjectImage)
    }
    assert after == before


def test_demo_tasks_are_the_same_on_every_install():
    first, second = demo_tasks(tasks=3), demo_tasks(tasks=3)
    assert first == second
    assert [t["line"]["id"] for t in first] == ["shapes-001", "shapes-002", "shapes-003"]


def test_annotators_can_lease_a_task_with_its_image():
    seed()
    project = Project.objects.get(name=PROJECT_NAME)
    ann1 = get_user_model().objects.get(username="ann1")
    assignment = services.assignment_lease(annotator=ann1, project=project)
    assert assignment is not None
    prompt = Prompt.objects.get(tasks=assignment.task_id)
    assert prompt.image.startswith("sha256:")
    assert ProjectImage.objects.filter(project=project, image_id=prompt.image[7:]).exists()
