"""The hallucination task's page partial in Chromium: spans by mouse and by keyboard alone, the
choice and the helpful choice, a correction with its diff, zoom and pan, and the two layouts.

The partial is rendered by Django's template engine into a stand-in annotate page (harness/) served
with the app's CSP; the posted form is read back as the server would receive it. Offsets are code
points (Python's str indices), so the expected values below are plain `str.index` results.
"""

import json

import pytest
from playwright.sync_api import expect

from annotation.kinds.hallucination.payload import DEFAULT_CATEGORIES
from tests.frontend.harness.server import Form, make_task, render_page

pytestmark = pytest.mark.browser

# Astral emoji (two UTF-16 units each), a ZWJ family (5 code points, 8 units), a combining accent
# (e + U+0301: two code points, one letter) and markup that must stay text.
EMOJI_TEXT = (
    "A dog 🐶 sits by the cafe\u0301 table. "
    "The family 👨\u200d👩\u200d👧 holds three red balloons. <img src=x> is not an image."
)
# A Windows line break: HTML parsing would fold \r\n into \n and shift every offset after it.
PLAIN_TEXT = "There is a red cube. A blue ball sits left of it.\r\nTwo green cones stand behind."


def open_task(page, harness, texts, **kwargs):
    page.goto(harness.show(render_page(make_task(texts, **kwargs.pop("task", {})), **kwargs)))
    expect(
        page.locator("[data-hallucination-task] mark, [data-hallucination-task] [data-start]").first
    ).to_be_attached()


def category_key(page, name: str) -> str:
    key = page.locator(f"button[data-category='{name}']").get_attribute("data-category-key")
    assert key, name
    return key


def select_by_mouse(page, response: int, target: str) -> None:
    """Drags the mouse over `target` (first occurrence) in the response's rendered text."""
    box = page.evaluate(
        """([r, target]) => {
            const el = document.querySelectorAll("[data-response-text]")[r];
            // On the live page the task scrolls in its own area: bring the words on screen first.
            el.scrollIntoView({block: "center"});
            const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                const at = node.data.indexOf(target);
                if (at < 0) continue;
                const range = document.createRange();
                range.setStart(node, at);
                range.setEnd(node, at + target.length);
                const rects = range.getClientRects();
                const first = rects[0], last = rects[rects.length - 1];
                return {x1: first.left + 1, y1: first.top + first.height / 2,
                        x2: last.right - 1, y2: last.top + last.height / 2};
            }
            return null;
        }""",
        [response, target],
    )
    assert box, target
    page.mouse.move(box["x1"], box["y1"])
    page.mouse.down()
    page.mouse.move((box["x1"] + box["x2"]) / 2, box["y2"], steps=4)
    page.mouse.move(box["x2"], box["y2"], steps=4)
    page.mouse.up()
    assert page.evaluate("String(window.getSelection())") == target


def submit(page, harness) -> dict[str, list[str]]:
    before = len(harness.posts)
    page.keyboard.press("Enter")
    expect(page.locator("#posted")).to_be_visible()
    assert len(harness.posts) == before + 1
    return harness.posts[-1]


def span(response, text, part, category):
    start = text.index(part)
    return {"response": response, "start": start, "end": start + len(part), "category": category}


def test_spans_by_mouse_count_code_points(page, harness):
    open_task(page, harness, [EMOJI_TEXT, PLAIN_TEXT])
    # The response is text, whatever it holds.
    expect(page.locator("[data-response-text] img")).to_have_count(0)
    expect(page.locator("[data-response-text]").first).to_contain_text("<img src=x>")

    select_by_mouse(page, 0, "three red balloons")
    page.keyboard.press(category_key(page, "count"))
    expect(page.locator("[data-announce]")).to_have_text(
        "Marked “three red balloons” in response A as count."
    )
    select_by_mouse(page, 0, "cafe\u0301")
    page.get_by_role("button", name="attribute").click()
    select_by_mouse(page, 0, "👨\u200d👩\u200d👧")
    page.keyboard.press(category_key(page, "object"))
    select_by_mouse(page, 1, "blue ball")
    page.keyboard.press(category_key(page, "attribute"))

    marks = page.locator("[data-response-text] mark")
    expect(marks).to_have_count(4)
    expect(page.locator("[data-response='0'] [data-span-count]")).to_have_text("· 3 marked")

    # A selection over a marked span is refused, not merged.
    select_by_mouse(page, 0, "red balloons")
    page.keyboard.press(category_key(page, "object"))
    expect(page.locator("[data-announce]")).to_contain_text("overlaps the count span")

    # Removing by mouse: the list's button names what it removes.
    page.get_by_role("button", name="Remove the attribute span “blue ball” from response B").click()
    expect(marks).to_have_count(3)
    expect(page.locator("[data-announce]")).to_have_text(
        "Removed the attribute span “blue ball” from response B."
    )

    page.keyboard.press("1")
    posted = submit(page, harness)
    assert posted["choice"] == ["A"]
    assert json.loads(posted["spans"][0]) == [
        span(0, EMOJI_TEXT, "cafe\u0301", "attribute"),
        span(0, EMOJI_TEXT, "👨\u200d👩\u200d👧", "object"),
        span(0, EMOJI_TEXT, "three red balloons", "count"),
    ]
    assert "helpful_choice" not in posted
    assert posted["correction_response"] == [""]
    assert "correction_text" not in posted


def test_spans_by_keyboard_alone(page, harness):
    open_task(page, harness, [PLAIN_TEXT, EMOJI_TEXT])
    relation, obj, count = (category_key(page, c) for c in ("relation", "object", "count"))
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator(".hallu-at-cursor")).to_have_text("A blue ball sits left of it.")
    expect(page.locator("[data-response-text]").first).to_be_focused()
    page.keyboard.press(relation)
    expect(page.locator("[data-announce]")).to_have_text(
        "Marked “A blue ball sits left of it.” in response A as relation."
    )
    page.keyboard.press("j")  # a line break ends a sentence too
    expect(page.locator(".hallu-at-cursor")).to_have_text("Two green cones stand behind.")
    page.keyboard.press(count)

    # To response B: its second sentence is marked, then the mark is taken back with x.
    page.keyboard.press("]")
    page.keyboard.press("j")
    expect(page.locator(".hallu-at-cursor")).to_contain_text("The family")
    page.keyboard.press(obj)
    page.keyboard.press("k")
    page.keyboard.press("j")
    expect(page.locator("[data-announce]")).to_contain_text("(marked object)")
    page.keyboard.press("x")
    expect(page.locator("[data-response='1'] mark")).to_have_count(0)
    page.keyboard.press("k")
    page.keyboard.press(obj)
    # Marking the same sentence again changes its category.
    page.keyboard.press(count)
    expect(page.locator("[data-response='1'] mark")).to_have_attribute(
        "data-span-category", "count"
    )

    page.keyboard.press("2")
    posted = submit(page, harness)
    assert posted["choice"] == ["B"]
    first_b = "A dog 🐶 sits by the cafe\u0301 table."
    assert json.loads(posted["spans"][0]) == [
        span(0, PLAIN_TEXT, "A blue ball sits left of it.", "relation"),
        span(0, PLAIN_TEXT, "Two green cones stand behind.", "count"),
        span(1, EMOJI_TEXT, first_b, "count"),
    ]


def test_tie_then_helpful_choice(page, harness):
    open_task(page, harness, [PLAIN_TEXT, EMOJI_TEXT])
    helpful = page.locator("input[name=helpful_choice]")
    for radio in helpful.all():
        expect(radio).to_be_disabled()
    page.keyboard.press("w")  # asked only after a tie: nothing happens
    expect(page.locator("input[name=helpful_choice]:checked")).to_have_count(0)
    page.keyboard.press("3")
    expect(page.locator("input[name=choice][value=tie]")).to_be_checked()
    for radio in helpful.all():
        expect(radio).to_be_enabled()
    page.keyboard.press("w")
    expect(page.locator("input[name=helpful_choice][value=B]")).to_be_checked()
    posted = submit(page, harness)
    assert (posted["choice"], posted["helpful_choice"], posted["spans"]) == (["tie"], ["B"], ["[]"])


def test_decisive_choice_sends_no_helpful_choice(page, harness):
    open_task(page, harness, [PLAIN_TEXT, EMOJI_TEXT])
    page.keyboard.press("3")
    page.keyboard.press("q")
    page.keyboard.press("2")
    expect(page.locator("input[name=helpful_choice][value=A]")).to_be_disabled()
    posted = submit(page, harness)
    assert posted["choice"] == ["B"] and "helpful_choice" not in posted


def test_correction_shows_its_diff(page, harness):
    original = "Three <b>red</b> balloons float over 2 cats 🐱."
    open_task(page, harness, [original, PLAIN_TEXT])
    page.keyboard.press("c")
    area = page.locator("[data-correction-text]")
    expect(area).to_be_focused()
    expect(page.locator("[data-correction-response]")).to_have_value("0")
    expect(area).to_have_value(original)
    expect(page.locator("[data-diff-summary]")).to_contain_text("unchanged copy is not sent")

    corrected = "Two <b>red</b> balloons float over 2 cats 🐱 and a dog."
    area.fill(corrected)
    diff = page.locator("[data-correction-diff]")
    expect(diff.locator("del")).to_have_text(["Three"])
    expect(diff.locator("ins")).to_have_text(["Two", " and a dog"])
    expect(page.locator("[data-diff-summary]")).to_have_text("(1 word removed, 4 added)")
    expect(diff.locator("b")).to_have_count(0)  # the markup in the text stays text
    expect(diff).to_contain_text("<b>red</b>")

    page.keyboard.press("Escape")
    page.keyboard.press("1")
    posted = submit(page, harness)
    assert posted["correction_response"] == ["0"]
    assert posted["correction_text"] == [corrected]


def test_unchanged_correction_is_not_sent(page, harness):
    open_task(page, harness, [PLAIN_TEXT, EMOJI_TEXT])
    page.keyboard.press("c")  # response A holds a \r\n, which a textarea turns into \n
    expect(page.locator("[data-correction-response]")).to_have_value("0")
    expect(page.locator("[data-diff-summary]")).to_contain_text("unchanged copy is not sent")
    page.keyboard.press("Escape")
    page.keyboard.press("1")
    posted = submit(page, harness)
    assert posted["correction_response"] == [""] and "correction_text" not in posted


def test_zoom_and_pan_by_keyboard(page, harness):
    open_task(page, harness, [PLAIN_TEXT, EMOJI_TEXT])
    viewport = page.locator("[data-viewport]")
    image = page.locator("[data-image]")
    transform = lambda: image.evaluate("img => img.style.transform")  # noqa: E731
    fitted = transform()
    assert "scale(1)" in fitted
    expect(image).to_have_attribute("src", "/thumb.png")

    page.keyboard.press("+")
    expect(viewport).to_have_attribute("data-zoom", "1.25")
    page.keyboard.press("+")
    expect(viewport).to_have_attribute("data-zoom", "1.56")
    expect(page.locator("[data-zoom-level]")).to_have_text("156%")
    expect(image).to_have_attribute("src", "/image.png")  # the full image once zoomed in
    zoomed = transform()
    assert "scale(1.5625)" in zoomed

    viewport.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    panned = transform()
    assert panned != zoomed
    x = lambda t: float(t.split("translate(")[1].split("px")[0])  # noqa: E731
    y = lambda t: float(t.split("px, ")[1].split("px")[0])  # noqa: E731
    assert x(panned) < x(zoomed) and y(panned) < y(zoomed)

    page.keyboard.press("-")
    expect(viewport).to_have_attribute("data-zoom", "1.25")
    page.keyboard.press("0")
    expect(viewport).to_have_attribute("data-zoom", "1.00")
    assert transform() == fitted
    # The buttons do the same.
    page.get_by_role("button", name="Zoom in").click()
    expect(viewport).to_have_attribute("data-zoom", "1.25")


@pytest.mark.parametrize("size", [(1280, 800), (390, 844)])
def test_layout(page, harness, size):
    width, height = size
    page.set_viewport_size({"width": width, "height": height})
    long_text = " ".join([PLAIN_TEXT] * 12)
    context = {"captions": ["A red cube and a blue ball."], "reference": "Two cones."}
    open_task(page, harness, [long_text, EMOJI_TEXT], task={"context": context})
    page.screenshot(path=f"/tmp/tandem-hallucination-{width}.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    expect(page.locator(".hallu-context")).to_contain_text("A red cube and a blue ball.")
    a, b = page.locator("[data-response='0']"), page.locator("[data-response='1']")
    for response in (a, b):
        response.scroll_into_view_if_needed()
        expect(response).to_be_in_viewport()
        assert response.evaluate("el => el.scrollWidth <= el.clientWidth + 1")
    box_a, box_b = a.bounding_box(), b.bounding_box()
    if width >= 1000:
        assert box_a["x"] + box_a["width"] <= box_b["x"]  # side by side
    else:
        assert box_a["y"] + box_a["height"] <= box_b["y"]  # stacked
    # Every control of the task can be reached and shows where the focus is.
    page.locator("[data-viewport]").focus()
    outline = page.locator("[data-viewport]").evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none"


def test_spans_come_back_after_a_refusal(page, harness):
    """A refused submit re-renders the form with what was posted: the marks are still there."""
    posted = [
        span(0, EMOJI_TEXT, "three red balloons", "count"),
        span(1, PLAIN_TEXT, "Two", "count"),
    ]
    hostile = {"response": 0, "start": 0, "end": 9999, "category": "object"}
    form = Form(
        data={
            "choice": "tie",
            "helpful_choice": "A",
            "spans": json.dumps([*posted, hostile]),
            "correction_response": "1",
            "correction_text": "There is a red cube.",
        }
    )
    page.goto(harness.show(render_page(make_task([EMOJI_TEXT, PLAIN_TEXT]), form=form)))
    expect(page.locator("[data-response-text] mark")).to_have_text(["three red balloons", "Two"])
    expect(page.locator("input[name=helpful_choice][value=A]")).to_be_checked()
    expect(page.locator("[data-correction]")).to_have_attribute("open", "")
    expect(page.locator("[data-correction-diff] del")).to_have_count(1)
    page.locator("[data-response-text]").first.focus()
    posted_again = submit(page, harness)
    assert json.loads(posted_again["spans"][0]) == posted
    assert posted_again["correction_text"] == ["There is a red cube."]


@pytest.mark.parametrize(
    "categories",
    [
        list(DEFAULT_CATEGORIES),
        ["object", "object-2", "ocr", "1st", "x", "qa", "_", "cce"],
    ],
)
def test_category_keys_follow_the_kinds_rule(page, harness, categories):
    """Without keys from the view the page assigns them as the kind's category_keys does; with
    them, it uses them as given."""
    from annotation.kinds.hallucination import category_keys

    task = make_task([PLAIN_TEXT, EMOJI_TEXT])
    page.goto(
        harness.show(render_page(task, settings_={"categories": categories, "show_context": True}))
    )
    shown = page.locator("button[data-category]").evaluate_all(
        "bs => bs.map(b => [b.dataset.categoryKey, b.dataset.category])"
    )
    assert [tuple(pair) for pair in shown] == category_keys(categories)

    given = [("z", "object"), ("y", "count")]
    page.goto(harness.show(render_page(task, category_keys=given)))
    expect(page.get_by_role("button", name="count y")).to_have_attribute("aria-keyshortcuts", "y")
    page.keyboard.press("j")
    page.keyboard.press("y")
    expect(page.locator("mark")).to_have_attribute("data-span-category", "count")


def test_next_task_swapped_in_by_htmx_works_the_same(page, harness):
    """With the files loaded by the page and by the partial, and the next task swapped in by htmx
    (whose swapped scripts never run), every key acts once, on the task shown."""
    first, second = (
        make_task([PLAIN_TEXT, EMOJI_TEXT], id=1),
        make_task([EMOJI_TEXT, PLAIN_TEXT], id=2),
    )
    harness.replies = [render_page(second, htmx=True, panel_only=True)]
    page.goto(harness.show(render_page(first, htmx=True)))
    expect(
        page.locator("[data-hallucination-task][data-task='1'] [data-start]").first
    ).to_be_attached()
    relation = category_key(page, "relation")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press(relation)
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    expect(
        page.locator("[data-hallucination-task][data-task='2'] [data-start]").first
    ).to_be_attached()
    # Keys are ignored until the new task has settled (tandem.js marks <html data-busy>).
    expect(page.locator("html[data-busy]")).to_have_count(0)
    assert json.loads(harness.posts[-1]["spans"][0]) == [
        span(0, PLAIN_TEXT, "A blue ball sits left of it.", "relation")
    ]

    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator(".hallu-at-cursor")).to_contain_text("The family")
    page.keyboard.press(relation)
    expect(page.locator("mark")).to_have_count(1)
    page.keyboard.press("+")
    expect(page.locator("[data-viewport]")).to_have_attribute("data-zoom", "1.25")
    page.keyboard.press("c")
    page.locator("[data-correction-text]").fill("A dog sits by the table.")
    expect(page.locator("[data-correction-diff] del").first).to_be_visible()
    page.keyboard.press("Escape")
    page.keyboard.press("2")
    before = len(harness.posts)
    page.keyboard.press("Enter")
    expect(page.locator("#posted")).to_be_visible()
    assert len(harness.posts) == before + 1
    posted = harness.posts[-1]
    # Unicode's sentence rule (UAX #29) runs on after "balloons." when a lower-case word follows.
    second_sentence = EMOJI_TEXT[EMOJI_TEXT.index("The family") :]
    assert json.loads(posted["spans"][0]) == [span(0, EMOJI_TEXT, second_sentence, "relation")]
    assert posted["choice"] == ["B"] and posted["correction_response"] == ["0"]
