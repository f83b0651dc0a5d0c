"""End to end on the live server: an annotator judges a real hallucination project's task (image
served to members, spans by mouse and by keyboard), and the judgement stored holds the offsets."""

import importlib
import io

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.kinds import KIND_MODULES
from annotation.models import Judgement, Role
from tests.annotation.image_support import drawn, media  # noqa: F401 (a fixture)
from tests.factories import UserFactory, jsonl
from tests.frontend.test_hallucination_page import EMOJI_TEXT, category_key, select_by_mouse

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PLAIN = "There is a red cube. A blue ball sits left of it. Two green cones stand behind."


@pytest.fixture
def scene_project(media):  # noqa: F811 (the fixture above)
    if "annotation.kinds.hallucination" not in KIND_MODULES:
        pytest.skip("the hallucination kind is not in annotation.kinds.KIND_MODULES yet")
    importlib.import_module("annotation.kinds.hallucination")
    from annotation.services.images import image_upload

    manager, annotator = UserFactory(), UserFactory()
    project = services.project_create(creator=manager, name="Scenes", kind="hallucination")
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    image, _ = image_upload(project=project, data=drawn((320, 200)), name="scene.png")
    body = jsonl(
        [
            {
                "prompt": "What is in the image?",
                "image": f"sha256:{image.sha256}",
                "responses": [EMOJI_TEXT, PLAIN],
            }
        ]
    )
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project, annotator


def test_annotator_marks_spans_on_the_live_page(live_page, log_in, scene_project):
    page = live_page
    project, annotator = scene_project
    log_in(annotator, next=f"/projects/{project.pk}/annotate")
    image = page.locator("[data-image]")
    expect(image).to_be_visible()
    page.wait_for_function("() => document.querySelector('[data-image]').naturalWidth > 0")

    # The response order is the import's; find where each text is shown.
    texts = page.locator("[data-response-text]").all_inner_texts()
    emoji = 0 if texts[0].startswith("A dog") else 1
    select_by_mouse(page, emoji, "three red balloons")
    page.keyboard.press(category_key(page, "count"))
    page.keyboard.press(
        "[" if emoji == 1 else "]"
    )  # the cursor to the plain response's first sentence
    page.keyboard.press(category_key(page, "relation"))  # "There is a red cube."
    page.keyboard.press("+")
    expect(page.locator("[data-viewport]")).to_have_attribute("data-zoom", "1.25")
    page.keyboard.press("3")
    page.keyboard.press("w")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Queue empty")).to_be_visible()

    judgement = Judgement.objects.get(annotator=annotator)
    start = EMOJI_TEXT.index("three red balloons")
    assert judgement.payload["choice"] == "tie"
    assert judgement.payload["helpful_choice"] == "B"
    assert judgement.payload["spans"] == sorted(
        [
            {"response": emoji, "start": start, "end": start + 18, "category": "count"},
            {"response": 1 - emoji, "start": 0, "end": 20, "category": "relation"},
        ],
        key=lambda s: s["response"],
    )
