"""The annotate page at a laptop's and a phone's size: the answer panel never covers a response,
and Submit can always be reached."""

import io

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Role
from tests.factories import ProjectFactory, UserFactory, jsonl

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = [(1280, 800), (390, 844)]


def long_answer(tag: str) -> str:
    steps = [
        f"{tag} step {i}: whisk the batter a little longer, then rest it a minute."
        for i in range(1, 19)
    ]
    return "\n".join(steps) + f"\n{tag} LAST LINE."


MULTI_TURN = {
    "prompt": [
        {
            "role": "system",
            "content": "You are a friendly cooking assistant. Keep answers practical.",
        },
        {"role": "user", "content": "I'm making pancakes for four people. A basic recipe?"},
        {
            "role": "assistant",
            "content": "Whisk 2 cups flour, 2 tbsp sugar, 2 tsp baking powder and a pinch of salt. "
            "In another bowl mix 1½ cups milk, 2 eggs and 3 tbsp melted butter. Combine gently "
            "and cook ¼-cup portions on a medium-hot greased pan until bubbles form, then flip.",
        },
        {"role": "user", "content": "Oh no, I'm out of eggs. What can I use instead?"},
    ],
    "responses": [long_answer("A"), long_answer("B")],
}
SHORT = {
    "prompt": "How long should I boil an egg for a jammy yolk?",
    "responses": ["6½ to 7 minutes, then into ice water.", "About 12 minutes."],
}

# Scrolls each line of each response into view the way a reader does (the least scrolling that
# shows it, in every scrolling box from the response outwards) and asks the browser what is drawn
# at points on that line: it must be the response itself, never the answer panel over it.
CHECK_RESPONSES = """
() => {
  const problems = [];
  const texts = [...document.querySelectorAll("#task-panel .response .text")];
  const reveal = (el, rectOf) => {
    for (let box = el; box && box !== document.body && box !== document.documentElement; box = box.parentElement) {
      const style = getComputedStyle(box);
      if (!/(auto|scroll)/.test(style.overflowY) || box.scrollHeight <= box.clientHeight) continue;
      const r = rectOf();
      const top = box.getBoundingClientRect().top + box.clientTop;
      const bottom = top + box.clientHeight;
      if (r.bottom > bottom) box.scrollTop += r.bottom - bottom + 1;
      else if (r.top < top) box.scrollTop -= top - r.top + 1;
    }
    const r = rectOf();
    if (r.bottom > window.innerHeight) window.scrollBy(0, r.bottom - window.innerHeight + 1);
    else if (r.top < 0) window.scrollBy(0, r.top - 1);
  };
  texts.forEach((el, which) => {
    const node = el.firstChild;
    const range = document.createRange();
    const charRect = (i) => { range.setStart(node, i); range.setEnd(node, i + 1); return range.getBoundingClientRect(); };
    // The first visible character of each line, found in the element's own coordinates.
    const starts = [];
    let last = null;
    for (let i = 0; i < node.length; i++) {
      if (!node.data[i].trim()) continue;
      const r = charRect(i);
      const y = Math.round(r.top - el.getBoundingClientRect().top + el.scrollTop);
      if (last === null || y > last + 2) { starts.push(i); last = y; }
    }
    // Start from the top, as a reader does.
    window.scrollTo(0, 0);
    for (let box = el; box; box = box.parentElement) box.scrollTop = 0;
    for (const [line, i] of starts.entries()) {
      reveal(el, () => charRect(i));
      const r = charRect(i);
      const box = el.getBoundingClientRect();
      const y = (r.top + r.bottom) / 2;
      for (const x of [r.left + r.width / 2, box.left + box.width / 2, box.right - 4]) {
        const hit = document.elementFromPoint(x, y);
        if (!hit || !el.contains(hit)) {
          problems.push({response: which, line, x: Math.round(x), y: Math.round(y),
                         hit: hit ? `${hit.tagName}.${hit.className}` : null});
          break;
        }
      }
    }
    if (!starts.length) problems.push({response: which, line: null, hit: "no text"});
  });
  return {problems, responses: texts.length};
}
"""

SUBMIT_REACHABLE = """
() => {
  const button = document.querySelector("#task-panel form[data-task-form] button.primary[type=submit]");
  button.scrollIntoView({block: "nearest"});
  const r = button.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {reached: Boolean(hit && button.contains(hit)), bottom: r.bottom, height: window.innerHeight};
}
"""


def project_with(line: dict, annotator) -> int:
    project = ProjectFactory()
    body = jsonl([line])
    services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    return project.pk


@pytest.mark.parametrize("width,height", SIZES)
def test_no_response_line_is_ever_under_the_answer_panel(page, log_in, live_server, width, height):
    annotator = UserFactory()
    projects = {
        "multi-turn": project_with(MULTI_TURN, annotator),
        "short": project_with(SHORT, annotator),
    }
    page.set_viewport_size({"width": width, "height": height})
    log_in(annotator, next=f"/projects/{projects['short']}/annotate")
    for name, project_id in projects.items():
        page.goto(f"{live_server.url}/projects/{project_id}/annotate")
        expect(page.get_by_text("Which response is better?")).to_be_visible()
        page.screenshot(path=f"/tmp/tandem-annotate-{name}-{width}x{height}.png")
        if width >= 1280:
            # On a laptop the answer and Submit are in view from the start, without scrolling.
            submit = page.locator("form[data-task-form] button.primary[type=submit]")
            box = submit.bounding_box()
            assert box["y"] + box["height"] <= height, f"{name}: Submit is off screen"
        result = page.evaluate(CHECK_RESPONSES)
        assert result["responses"] == 2
        assert result["problems"] == [], f"{name} at {width}x{height}: {result['problems'][:5]}"
        reach = page.evaluate(SUBMIT_REACHABLE)
        assert reach["reached"], f"{name} at {width}x{height}: Submit cannot be reached"
