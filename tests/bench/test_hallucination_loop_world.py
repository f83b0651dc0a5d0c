"""bench/hallucination_world.py: the pieces of the synthetic world the loop's figures rest on.

Caption examples state only true facts of their own scene under a question the bench never asks;
empty samples never reach a labelled pair (the fact reward model refuses an empty response, which
once crashed a seed); the warm start trains the projector and the language model but leaves the
random vision tower as built (trained along, it learnt to mute the image); the oracle's
corrections fix each false claim with the fewest words changed and leave the rest as it was.
"""

import random

import pytest

from bench.hallucination_world import (
    ASKED,
    CAPTION_QUESTION,
    Images,
    best_vs_worst,
    caption_examples,
    corrected,
    correction_rows,
    judge,
    labelled_pairs,
    make_prompts,
    sft_examples,
    warm_start,
)
from training import scenes


@pytest.fixture
def prompts():
    return make_prompts(random.Random(3), 6, "t-")


def test_caption_examples_are_true_and_asked_by_a_question_the_bench_never_asks(prompts):
    examples = caption_examples(prompts)
    assert len(examples) == len(prompts)
    asked = {q.text for p in prompts for q in scenes.questions(p.scene) if q.category in ASKED}
    for (captioned, text), prompt in zip(examples, prompts, strict=True):
        assert captioned.question.text == CAPTION_QUESTION not in asked
        assert captioned.scene == prompt.scene and captioned.key == prompt.key
        assert text == " ".join(scenes.captions(prompt.scene))


def test_empty_samples_are_left_out_of_pairs(prompts):
    prompt = prompts[0]
    faithful = scenes.respond(prompt.scene, prompt.question, random.Random(0), 2, 0).text
    false = scenes.respond(prompt.scene, prompt.question, random.Random(0), 1, 1).text
    assert judge(prompt.scene, false).false_claims == 1
    # The oracle prefers the empty answer to the hallucinating one, but it is no response.
    samples = [["", false, faithful, "  "]]
    pairs = labelled_pairs([prompt], samples)
    assert [(c, r) for _, c, r in pairs] == [(faithful, false)]
    assert [(c, r) for _, c, r in best_vs_worst([prompt], samples)] == [(faithful, false)]
    assert labelled_pairs([prompt], [["", false]]) == []


def test_warm_start_trains_the_projector_and_keeps_the_tower(tmp_path, prompts):
    import torch

    from training.vision import build_tiny_vlm, load_vlm

    init = build_tiny_vlm(tmp_path / "init", corpus=[" ".join(scenes.captions(prompts[0].scene))])
    images = Images(32)
    images.add(prompts)
    examples = sft_examples(prompts, random.Random(0), per_prompt=1, false_rate=0.4)
    pi0 = warm_start(tmp_path / "pi0", init, examples, images, steps=3, batch_size=4)
    before, _ = load_vlm(init, "cpu", dtype="float32")
    after, _ = load_vlm(pi0, "cpu", dtype="float32")
    tower = dict(before.model.vision_tower.named_parameters())
    for name, value in after.model.vision_tower.named_parameters():
        assert torch.equal(value, tower[name]), name
    projector = dict(before.model.multi_modal_projector.named_parameters())
    assert any(
        not torch.equal(value, projector[name])
        for name, value in after.model.multi_modal_projector.named_parameters()
    )


def test_a_correction_changes_only_the_made_up_words(prompts):
    for prompt in prompts:
        item = prompt.scene.items[0]
        wrong = next(c for c in scenes.COLOURS if c != item.colour)
        true = scenes.respond(prompt.scene, prompt.question, random.Random(1), 2, 0).text
        text = f"{true} The {item.shape} {item.place} is {wrong}."
        assert judge(prompt.scene, text).false_claims == 1
        fixed = corrected(prompt.scene, text)
        # Only the colour was made up: the annotator writes the right one, word for word else.
        assert fixed == f"{true} The {item.shape} {item.place} is {item.colour}."
        assert judge(prompt.scene, fixed).false_claims == 0
        assert corrected(prompt.scene, true) == true


def test_every_correction_is_faithful_and_keeps_the_true_claims(prompts):
    rng = random.Random(5)
    for prompt in prompts:
        for n_false in (1, 2):
            try:
                answer = scenes.respond(prompt.scene, prompt.question, rng, 2, n_false)
            except ValueError:
                continue
            fixed = corrected(prompt.scene, answer.text)
            verdict = judge(prompt.scene, fixed)
            assert verdict.false_claims == 0
            kept = {answer.text[c.start : c.end] for c in answer.claims if c.true}
            assert kept and all(sentence in fixed for sentence in kept)


def test_correction_rows_correct_a_share_of_the_hallucinating_samples_only(prompts):
    rng = random.Random(0)
    samples = []
    for prompt in prompts:
        faithful = scenes.respond(prompt.scene, prompt.question, rng, 2, 0).text
        false = scenes.respond(prompt.scene, prompt.question, rng, 1, 1).text
        samples.append([faithful, false, false])  # a repeated sample is corrected once
    rows = correction_rows(prompts, samples, random.Random(0), share=1.0)
    assert len(rows) == len(prompts)
    for row, prompt, texts in zip(rows, prompts, samples, strict=True):
        assert row["correction"] is True and row["images"] == [prompt.image_path]
        assert row["rejected"][0]["content"][0]["text"] == texts[1]
        assert judge(prompt.scene, row["chosen"][0]["content"][0]["text"]).false_claims == 0
    assert correction_rows(prompts, samples, random.Random(0), share=0.0) == []
