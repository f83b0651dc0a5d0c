"""An annotator works the queue with the keyboard alone, and hostile text stays text."""

import io

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Assignment, Judgement, Role
from tests.browser.annotate_page import shown_task, wait_for_next
from tests.factories import ProjectFactory, UserFactory, jsonl

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_three_comparisons_by_keyboard_only(page, log_in, cast):
    annotate = f"/projects/{cast.project.pk}/annotate"
    log_in(cast.annotator, next=annotate)
    expect(page.get_by_text("Which response is better?")).to_be_visible()
    page.screenshot(path="/tmp/tandem-annotate.png", full_page=True)

    # The instructions open and close from the keyboard.
    page.keyboard.press("?")
    expect(page.locator("dialog#instructions")).to_be_visible()
    expect(page.locator("dialog#instructions")).to_contain_text("more helpful")
    page.keyboard.press("Escape")
    expect(page.locator("dialog#instructions")).to_be_hidden()

    first = shown_task(page)
    page.keyboard.press("1")
    page.keyboard.press("w")
    expect(page.locator("input[name=choice][value=A]")).to_be_checked()
    expect(page.locator("input[name=strength][value='2']")).to_be_checked()
    page.keyboard.press("Enter")
    second = wait_for_next(page, first)

    # Typing a rationale must not fire shortcuts: "s", "e", "r", "1" here are plain letters.
    page.keyboard.press("2")
    page.keyboard.press("e")
    page.keyboard.press("r")
    expect(page.locator("textarea[name=rationale]")).to_be_focused()
    page.keyboard.type("B uses 1 step less, see the sum")
    page.keyboard.press("Escape")
    expect(page.locator("textarea[name=rationale]")).not_to_be_focused()
    page.keyboard.press("Enter")
    skipped = wait_for_next(page, second)

    page.keyboard.press("s")
    third = wait_for_next(page, skipped)

    # A tie has no direction: its strength is disabled. Ctrl+Enter submits from the textarea.
    page.keyboard.press("3")
    expect(page.locator("input[name=strength][value='1']")).to_be_disabled()
    page.keyboard.press("r")
    page.keyboard.type("equally right")
    page.keyboard.press("Control+Enter")
    wait_for_next(page, third)

    judgements = list(Judgement.objects.filter(annotator=cast.annotator).order_by("id"))
    assert [(j.task_id, j.payload, j.rationale) for j in judgements] == [
        (first, {"choice": "A", "strength": 2}, ""),
        (second, {"choice": "B", "strength": 3}, "B uses 1 step less, see the sum"),
        (third, {"choice": "tie", "strength": None}, "equally right"),
    ]
    # The page measured real time on each task: positive, and far from a broken clock.
    assert all(j.time_spent_ms is not None and 0 < j.time_spent_ms < 600_000 for j in judgements)
    assert Assignment.objects.get(annotator=cast.annotator, task_id=skipped).status == "skipped"


def test_hostile_text_is_shown_but_never_runs(page, log_in, db):
    hostile = {
        "prompt": [{"role": "user", "content": "<img src=x onerror=\"window.__xss='prompt'\">"}],
        "responses": [
            "<script>window.__xss = 'script'</script>",
            "<img src=x onerror=\"window.__xss='img'\">",
        ],
    }
    project = ProjectFactory(name="<script>window.__xss='name'</script>")
    body = jsonl([hostile, hostile])
    services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(annotator, next=f"/projects/{project.pk}/annotate")

    def assert_inert() -> None:
        expect(page.get_by_text("<script>window.__xss = 'script'</script>")).to_be_visible()
        expect(page.get_by_text("<img src=x onerror=\"window.__xss='img'\">")).to_be_visible()
        page.wait_for_timeout(200)  # give a payload that would fire on load the time to do it
        assert page.evaluate("window.__xss") is None
        assert page.locator("#task-panel img, #task-panel script").count() == 0
        assert dialogs == []

    assert_inert()
    expect(page.locator("h1")).to_have_text("<script>window.__xss='name'</script>")
    # The second task arrives through an htmx swap, the other way HTML reaches the page.
    first = shown_task(page)
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    wait_for_next(page, first)
    assert_inert()
