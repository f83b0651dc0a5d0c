"""The synthetic scene world: deterministic drawing, true facts, and an oracle that finds every
made-up claim and flags no true one."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from PIL import Image

from training import scenes
from training.scenes import Claim, Item, Question, Scene

# A hand-made scene for hand-checked verdicts:
#   row 0:  red circle (large)   .                    blue square (small)
#   row 1:  .                    green triangle (small) .
#   row 2:  blue circle (small)  .                    .
HAND = Scene(
    items=(
        Item("circle", "red", "large", 0, 0),
        Item("square", "blue", "small", 0, 2),
        Item("triangle", "green", "small", 1, 1),
        Item("circle", "blue", "small", 2, 0),
    )
)


def test_same_seed_same_scene_and_same_png():
    for seed in range(20):
        first = scenes.random_scene(random.Random(seed))
        again = scenes.random_scene(random.Random(seed))
        assert first == again
        assert scenes.png_bytes(first, 64) == scenes.png_bytes(again, 64)
    drawn = {scenes.png_bytes(scenes.random_scene(random.Random(s)), 32) for s in range(20)}
    assert len(drawn) == 20


def test_scenes_keep_their_invariants():
    for seed in range(300):
        scene = scenes.random_scene(random.Random(seed))
        assert 2 <= len(scene.items) <= 6
        assert len({(i.row, i.col) for i in scene.items}) == len(scene.items)
        assert len({(i.colour, i.shape) for i in scene.items}) == len(scene.items)
        # Always an absent shape to make up, and a scene round-trips through JSON-ready data.
        assert 2 <= len(scene.shapes()) <= 4
        assert Scene.from_dict(scene.to_dict()) == scene
    with pytest.raises(ValueError):
        scenes.random_scene(random.Random(0), min_items=1)


@pytest.mark.parametrize("size", [32, 256])
def test_draw_paints_each_item_in_its_colour_where_it_is(size):
    image = scenes.draw(HAND, size)
    assert image.size == (size, size) and image.mode == "RGB"
    margin = 0.06 * size
    cell = (size - 2 * margin) / 3
    for item in HAND.items:
        x = round(margin + (item.col + 0.5) * cell)
        y = round(margin + (item.row + 0.5) * cell)
        pixel = image.getpixel((x, y))
        want = scenes.COLOURS[item.colour]
        assert all(abs(a - b) <= 40 for a, b in zip(pixel, want, strict=True)), (item, pixel)
    # An empty cell shows the background.
    empty = image.getpixel((round(margin + 2.5 * cell), round(margin + 2.5 * cell)))
    assert empty == scenes.BACKGROUND
    decoded = Image.open(io.BytesIO(scenes.png_bytes(HAND, size)))
    assert decoded.format == "PNG" and decoded.size == (size, size)


@pytest.mark.parametrize(
    ("sentence", "category", "true"),
    [
        ("There is a circle in the image.", "object", True),
        ("There is a star in the image.", "object", False),
        ("There is no star in the image.", "object", True),
        ("There is no square in the image.", "object", False),
        ("There are two circles.", "count", True),
        ("There are three circles.", "count", False),
        ("There is one square.", "count", True),
        ("There are two triangles.", "count", False),
        ("There are two diamonds.", "object", False),  # counts a shape that is not there
        ("The circle in the top left corner is red.", "attribute", True),
        ("The circle in the top left corner is blue.", "attribute", False),
        ("The square in the centre is blue.", "object", False),  # nothing square there
        ("The red circle is large.", "attribute", True),
        ("The blue circle is large.", "attribute", False),
        ("The green circle is large.", "object", False),
        ("The red circle is to the left of the blue square.", "relation", True),
        ("The red circle is above the blue circle.", "relation", True),
        ("The red circle is below the blue circle.", "relation", False),
        ("The green triangle is to the right of the blue square.", "relation", False),
        ("The red circle is above the purple star.", "object", False),
        ("The red circle is larger than the green triangle.", "comparison", True),
        ("The blue square is the same size as the blue circle.", "comparison", True),
        ("The blue square is larger than the blue circle.", "comparison", False),
    ],
)
def test_oracle_verdicts_by_hand(sentence, category, true):
    text = f"Sure — here is what I see 🔍. {sentence} I hope this helps."
    start = text.index(sentence)
    assert scenes.claims_of(HAND, text) == [Claim(start, start + len(sentence), category, true)]


def test_sentences_outside_the_grammar_are_not_claims():
    text = "I think so. The sky is blue. There are many circles. There is a cat in the image."
    assert scenes.claims_of(HAND, text) == []


def test_facts_and_captions_are_true():
    for category, sentences in scenes.facts(HAND).items():
        assert sentences
        for sentence in sentences:
            assert scenes.claims_of(HAND, sentence) == [Claim(0, len(sentence), category, True)]
    assert scenes.captions(HAND) == [
        "Four shapes on a light background: a large red circle in the top left corner, a small "
        "blue square in the top right corner, a small green triangle in the centre and a small "
        "blue circle in the bottom left corner.",
        "The picture shows two circles, one square and one triangle.",
    ]


def _every_response(seeds=range(60)):
    plans = [(3, 1), (2, 2), (0, 3), (4, 0), (1, 4)]
    for seed in seeds:
        rng = random.Random(seed)
        scene = scenes.random_scene(rng)
        for question in scenes.questions(scene):
            n_true, n_false = plans[rng.randrange(len(plans))]
            yield (
                scene,
                question,
                n_true,
                n_false,
                scenes.respond(scene, question, rng, n_true=n_true, n_false=n_false),
            )


def test_oracle_finds_every_false_claim_and_flags_no_true_one():
    seen = Counter()
    for scene, _question, n_true, n_false, response in _every_response():
        claims = scenes.claims_of(scene, response.text)
        truths = scenes.facts(scene)
        assert claims == list(response.claims)
        assert sum(not c.true for c in claims) == n_false
        assert sum(c.true for c in claims) == n_true
        for claim in claims:
            sentence = response.text[claim.start : claim.end]
            # The span cuts exactly one sentence: it starts a sentence and ends at its full stop.
            assert sentence.endswith(".") and "." not in sentence[:-1]
            assert claim.start == 0 or response.text[claim.start - 1] == " "
            # The claim is true exactly when the scene's facts hold it.
            assert (sentence in truths[claim.category]) == claim.true
            seen[claim.category, claim.true] += 1
    for category in scenes.CATEGORIES:
        assert seen[category, True] and seen[category, False], category


def test_offsets_count_code_points_not_utf16_units():
    rng = random.Random(1)
    scene = scenes.random_scene(rng)
    for _ in range(50):
        response = scenes.respond(scene, Question("Describe the image."), rng)
        if response.text.startswith("Sure — here is what I see 🔍."):
            break
    else:
        pytest.fail("the emoji lead-in never came up")
    first = response.claims[0]
    # "Sure — here is what I see 🔍. " is 29 code points (30 UTF-16 units: the emoji is astral).
    assert first.start == 29
    assert len(response.text[:29].encode("utf-16-le")) // 2 == 30


def test_false_categories_come_in_turn_and_the_answer_comes_first():
    rng = random.Random(7)
    scene = scenes.random_scene(rng, min_items=3)
    asked = next(q for q in scenes.questions(scene) if q.category == "count")
    response = scenes.respond(scene, asked, rng, n_true=2, n_false=1, categories=["count"])
    first = response.claims[0]
    assert (first.category, first.true) == ("count", False)
    shape = asked.subject[1]
    assert (
        scenes.PLURALS[shape] in response.text[first.start : first.end]
        or shape in (response.text[first.start : first.end])
    )
    response = scenes.respond(
        scene, asked, rng, n_true=1, n_false=4, categories=["relation", "attribute"]
    )
    assert Counter(c.category for c in response.false_claims) == {"relation": 2, "attribute": 2}
    honest = scenes.respond(scene, asked, rng, n_true=2, n_false=0)
    assert honest.claims[0].category == "count" and honest.claims[0].true
    assert honest.false_claims == ()


def test_respond_is_deterministic_and_refuses_what_it_cannot_say():
    scene = scenes.random_scene(random.Random(3))
    question = scenes.questions(scene)[0]
    one = scenes.respond(scene, question, random.Random(9), n_true=2, n_false=2)
    two = scenes.respond(scene, question, random.Random(9), n_true=2, n_false=2)
    assert one == two
    with pytest.raises(ValueError, match="unknown categories"):
        scenes.respond(scene, question, random.Random(0), categories=["holistic"])
    with pytest.raises(ValueError, match="true claims"):
        scenes.respond(scene, question, random.Random(0), n_true=500, n_false=0)
