"""The hindsight task on the live annotate page, by keyboard alone: step 1 (foresight) with no
outcome anywhere the browser received, step 2 (hindsight) with the outcomes revealed and the first
answer locked, both stored as their own rows; at a phone's and a laptop's size."""

import io

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Judgement, Role
from tests.factories import UserFactory, jsonl

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Outcomes carry markup that must stay text, and words that occur nowhere else on the page, so
# finding them in a response body means an outcome leaked.
OUTCOME_A = "The Zephyr phone overheated <b>twice</b> and was returned."
OUTCOME_B = "The Quokka tablet arrived early and met every requirement."
RESPONSE_A = "Buy the Zephyr: it never overheats and costs $250."
RESPONSE_B = "The Quokka at $280 meets your needs; I can't vouch for its battery."
LEAKS = ("overheated", "arrived early", "every requirement")


@pytest.fixture
def shop(settings):
    manager, annotator = UserFactory(), UserFactory()
    project = services.project_create(creator=manager, name="Shop", kind="hindsight")
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    line = {
        "prompt": [{"role": "user", "content": "I need a device under $300 that won't overheat."}],
        "responses": [
            {"text": RESPONSE_A, "model": "pi-0", "outcome": OUTCOME_A},
            {"text": RESPONSE_B, "model": "pi-0", "outcome": OUTCOME_B},
        ],
        "metadata": {"true_utility": [-1.0, 1.0]},
    }
    body = jsonl([line])
    job = services.import_create(
        project=project, user=manager, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project, annotator


def _record_bodies(page) -> list[str]:
    """Every text body the browser receives from now on (pages, htmx swaps, scripts)."""
    bodies: list[str] = []

    def keep(response):
        try:
            bodies.append(response.text())
        except Exception:  # a redirect or an empty body has none to read
            pass

    page.on("response", keep)
    return bodies


def _checked(page, name: str) -> str | None:
    return page.evaluate(
        "(name) => document.querySelector(`input[name=${name}]:checked`)?.value ?? null", name
    )


def _no_horizontal_scroll(page) -> None:
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"


def _submit_reachable(page) -> None:
    """The Submit button can be brought on screen and lies within the viewport's width."""
    button = page.get_by_role("button", name="Submit")
    button.scroll_into_view_if_needed()
    expect(button).to_be_in_viewport()


def _foresight_by_keyboard(page) -> None:
    expect(page.locator("[data-step-one]")).to_be_visible()
    expect(page.locator("[data-rating-row][data-at-cursor]")).to_have_attribute("data-label", "A")
    page.keyboard.press("4")  # A: satisfied; the cursor moves on to B
    expect(page.locator("[data-rating-row][data-at-cursor]")).to_have_attribute("data-label", "B")
    page.keyboard.press("2")  # B: dissatisfied
    page.keyboard.press("a")  # A satisfied more
    page.keyboard.press("n")
    page.keyboard.type("It promised no overheating.")
    page.keyboard.press("Escape")
    assert (_checked(page, "rating_0"), _checked(page, "rating_1"), _checked(page, "choice")) == (
        "4",
        "2",
        "A",
    )
    page.keyboard.press("Enter")


def test_both_phases_by_keyboard(live_page, log_in, shop):
    page = live_page
    project, annotator = shop
    bodies = _record_bodies(page)
    log_in(annotator, next=f"/projects/{project.pk}/annotate")

    # Step 1: what the user saw, and nothing of what came of it, anywhere in what was sent.
    expect(page.locator("[data-hindsight-task]")).to_have_attribute("data-phase", "foresight")
    expect(page.get_by_text(RESPONSE_A)).to_be_visible()
    expect(page.locator("[data-outcome]")).to_have_count(0)
    expect(page.locator("[data-locked-foresight]")).to_have_count(0)
    phase_one = page.content()
    for leak in LEAKS:
        assert leak not in phase_one
        assert not [b for b in bodies if leak in b], f"{leak!r} reached the browser in step 1"
    # The keyboard legend is the kind's own map.
    legend = page.locator(".shortcuts dt kbd").all_inner_texts()
    assert legend[:10] == ["1", "2", "3", "4", "5", "[", "]", "a", "b", "t"]

    _foresight_by_keyboard(page)

    # Step 2: the outcomes, set apart, as text; the first answer shown locked; a fresh form.
    expect(page.locator("[data-reveal]")).to_be_visible()
    expect(page.locator("[data-hindsight-task]")).to_have_attribute("data-phase", "hindsight")
    outcomes = page.locator("[data-outcome]")
    expect(outcomes).to_have_count(2)
    expect(outcomes.nth(0)).to_contain_text(OUTCOME_A)  # the markup is shown, not applied
    expect(outcomes.nth(0).locator("b")).to_have_count(0)
    expect(outcomes.nth(1)).to_contain_text(OUTCOME_B)
    locked = page.locator("[data-locked-foresight]")
    expect(locked).to_contain_text("4 · Satisfied")
    expect(locked).to_contain_text("2 · Dissatisfied")
    expect(locked.locator("[data-locked-choice]")).to_have_text("A satisfied more")
    expect(locked).to_contain_text("It promised no overheating.")
    expect(page.locator("[data-locked-rating]").first).to_contain_text("4")
    # Nothing in step 2 edits step 1: its answer is text, and the form starts empty.
    expect(locked.locator("input, textarea, select")).to_have_count(0)
    assert (_checked(page, "rating_0"), _checked(page, "rating_1"), _checked(page, "choice")) == (
        None,
        None,
        None,
    )
    expect(page.locator("[data-rating-row][data-at-cursor]")).to_have_attribute("data-label", "A")

    page.keyboard.press("]")  # straight to B
    expect(page.locator("[data-rating-row][data-at-cursor]")).to_have_attribute("data-label", "B")
    page.keyboard.press("5")
    page.keyboard.press("[")
    page.keyboard.press("1")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Queue empty")).to_be_visible()

    rows = {j.phase: j for j in Judgement.objects.filter(annotator=annotator)}
    assert set(rows) == {"foresight", "hindsight"}
    assert rows["foresight"].payload == {
        "ratings": [4, 2],
        "choice": "A",
        "reason": "It promised no overheating.",
    }
    assert rows["hindsight"].payload == {"ratings": [1, 5], "choice": "B", "reason": ""}
    # Each phase measured its own time, from when its form appeared.
    assert all(row.time_spent_ms is not None for row in rows.values())
    assert rows["foresight"].assignment_id == rows["hindsight"].assignment_id


def test_a_refused_phase_keeps_its_answer_and_says_why(live_page, log_in, shop):
    """Submitting without rating B: the server's refusal comes back beside the ratings, with the
    ratings and choice given so far still checked."""
    page = live_page
    project, annotator = shop
    log_in(annotator, next=f"/projects/{project.pk}/annotate")
    page.keyboard.press("3")
    page.keyboard.press("t")
    page.keyboard.press("Enter")
    expect(page.locator(".hs-answer .field-error")).to_contain_text("Ratings")
    assert (_checked(page, "rating_0"), _checked(page, "choice")) == ("3", "tie")
    expect(page.locator("[data-outcome]")).to_have_count(0)
    # The cursor starts on the response still unrated.
    expect(page.locator("[data-rating-row][data-at-cursor]")).to_have_attribute("data-label", "B")
    assert not Judgement.objects.filter(annotator=annotator).exists()


@pytest.mark.parametrize("size", [(390, 844), (1280, 800)])
def test_layout(live_page, log_in, shop, size):
    page = live_page
    width, height = size
    page.set_viewport_size({"width": width, "height": height})
    project, annotator = shop
    log_in(annotator, next=f"/projects/{project.pk}/annotate")

    for phase in ("foresight", "hindsight"):
        expect(page.locator("[data-hindsight-task]")).to_have_attribute("data-phase", phase)
        _no_horizontal_scroll(page)
        steps = page.locator(".hs-step")
        expect(steps).to_have_count(2)
        current = page.locator(".hs-step[aria-current=step]")
        expect(current).to_contain_text(
            "Judge as the user saw it" if phase == "foresight" else "See the outcome"
        )
        for card in page.locator("[data-response]").all():
            box = card.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5
        # Every rating option is on screen once its row is, and not squeezed under a finger's size.
        row = page.locator("[data-rating-row]").nth(1)
        row.scroll_into_view_if_needed()
        options = row.locator(".hs-score span")
        expect(options).to_have_count(5)
        for option in options.all():
            box = option.bounding_box()
            assert box and box["x"] + box["width"] <= width + 0.5 and box["height"] >= 24
        if width < 500:
            # On a phone the responses stack and the outcome sits under its own response.
            a, b = (page.locator("[data-response]").nth(i).bounding_box() for i in (0, 1))
            assert b["y"] >= a["y"] + a["height"] - 1
        _submit_reachable(page)
        if phase == "foresight":
            page.locator("[data-hindsight-task]").scroll_into_view_if_needed()
            page.keyboard.press("Escape")
            page.locator("#task-panel").focus()
            page.keyboard.press("4")
            page.keyboard.press("2")
            page.keyboard.press("a")
            page.keyboard.press("Enter")
            expect(page.locator("[data-reveal]")).to_be_visible()
            for outcome in page.locator("[data-outcome]").all():
                box = outcome.bounding_box()
                assert box and box["x"] + box["width"] <= width + 0.5
    page.screenshot(path=f"/tmp/h6_hindsight_{width}x{height}.png", full_page=True)
