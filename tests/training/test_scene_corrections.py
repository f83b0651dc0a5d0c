"""Corrections as RLHF-V's annotators make them: each false claim is fixed by changing its
made-up words, so the corrected answer differs from the original only where it was wrong."""

from __future__ import annotations

import difflib
import random

import pytest

from training import scenes
from training.scene_corrections import corrected, nearest_truth
from training.scenes import Item, Question, Scene

# row 0:  red circle (large)   .                      blue square (small)
# row 1:  .                    green triangle (small) .
# row 2:  blue circle (small)  .                      .
HAND = Scene(
    items=(
        Item("circle", "red", "large", 0, 0),
        Item("square", "blue", "small", 0, 2),
        Item("triangle", "green", "small", 1, 1),
        Item("circle", "blue", "small", 2, 0),
    )
)


def changed_words(before: str, after: str) -> list[tuple[list[str], list[str]]]:
    """The (removed, added) word runs that turn `before` into `after`."""
    a, b = before.split(), after.split()
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(a[i1:i2], b[j1:j2]) for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"]


@pytest.mark.parametrize(
    ("false", "fixed"),
    [
        ("The triangle in the centre is blue.", "The triangle in the centre is green."),
        (
            "The square in the top right corner is red.",
            "The square in the top right corner is blue.",
        ),
        ("There are three circles.", "There are two circles."),
        ("There is a star in the image.", "There is no star in the image."),
        ("The red circle is below the blue circle.", "The red circle is above the blue circle."),
        ("The blue square is large.", "The blue square is small."),
    ],
)
def test_a_false_claim_is_fixed_by_changing_only_its_made_up_word(false, fixed):
    assert nearest_truth(HAND, false) == fixed
    assert len(changed_words(false, fixed)) == 1
    text = f"Here is my answer. There are two circles. {false} The blue square is small."
    after = corrected(HAND, text)
    assert after == text.replace(false, fixed)
    # One word in, one word out: the token-level difference dense DPO weighs γ.
    [(removed, added)] = changed_words(text, after)
    assert len(removed) == len(added) == 1


def test_every_corrected_answer_is_faithful_and_keeps_every_true_sentence():
    rng = random.Random(11)
    checked = 0
    for _ in range(60):
        scene = scenes.random_scene(rng)
        question = rng.choice(scenes.questions(scene))
        for n_false in (1, 2):
            try:
                answer = scenes.respond(scene, question, rng, n_true=2, n_false=n_false)
            except ValueError:  # a scene too small for this many distinct claims
                continue
            fixed = corrected(scene, answer.text)
            after = scenes.claims_of(scene, fixed)
            assert after and all(claim.true for claim in after), fixed
            # The same sentences in the same order; only the false ones changed.
            sentences = [answer.text[c.start : c.end] for c in answer.claims]
            kept = [fixed[c.start : c.end] for c in after]
            assert len(kept) == len(sentences)
            for before, now, claim in zip(sentences, kept, answer.claims, strict=True):
                assert (now == before) == claim.true
            lead_in = answer.text[: answer.claims[0].start]
            assert fixed.startswith(lead_in)
            checked += 1
    assert checked > 80


def test_a_faithful_answer_comes_back_unchanged():
    rng = random.Random(4)
    for _ in range(20):
        scene = scenes.random_scene(rng)
        answer = scenes.respond(scene, Question("Describe the image."), rng, n_true=3, n_false=0)
        assert corrected(scene, answer.text) == answer.text
    # Text outside the grammar is no claim: nothing to fix there either.
    free = "I think there might be a unicorn. The red circle is above the blue circle."
    assert corrected(HAND, free) == free
