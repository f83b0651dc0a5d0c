"""Fact-RLHF: the reward model that reads the image's facts beats the one that cannot see the image."""

from __future__ import annotations

import random
from typing import Any

import pytest

from training.fact_reward import fact_pairs, fact_prompt, fact_text, train_fact_reward
from training.reward import RewardConfig, RewardEnsemble
from training.scenes import Question, captions, claims_of, random_scene, respond

FACTS = {
    "captions": ["A red circle on the left.", "The picture shows one circle."],
    "reference": "A red circle.",
    "choices": ["red", "blue"],
    "answer": "red",
}


def test_fact_prompt_writes_every_fact_before_the_question() -> None:
    assert fact_prompt("What colour is the circle?", FACTS) == (
        "Image facts:\n"
        "- A red circle on the left.\n"
        "- The picture shows one circle.\n"
        "Reference answer: A red circle.\n"
        "Choices: (A) red (B) blue\n"
        "Right answer: red\n"
        "\n"
        "Question: What colour is the circle?"
    )
    assert fact_text("Q?", "It is red.", {"captions": ["c"]}) == (
        "Image facts:\n- c\n\nQuestion: Q?\nResponse: It is red."
    )


def test_without_facts_only_the_question_and_response_remain() -> None:
    blind = fact_text("What colour is the circle?", "Blue.", FACTS, with_facts=False)
    assert blind == "Question: What colour is the circle?\nResponse: Blue."
    assert fact_prompt("Q?", None) == fact_prompt("Q?", {}) == "Question: Q?"


def test_every_export_form_gives_the_same_pair() -> None:
    vision_pairs = {
        "images": ["images/ab.png"],
        "prompt": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "good"}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "bad"}]}],
        "context": FACTS,
    }
    llava_rlhf = {
        "image": "images/ab.png",
        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": ""}],
        "output_1": {"from": "gpt", "value": "bad"},
        "output_2": {"from": "gpt", "value": "good"},
        "preference": 2,
        "context": FACTS,
    }
    plain = {"question": "Q?", "chosen": "good", "rejected": "bad", "context": FACTS}
    pairs = fact_pairs([vision_pairs, llava_rlhf, plain])
    assert pairs[0] == pairs[1] == pairs[2]
    assert pairs[0].prompt == [{"role": "user", "content": fact_prompt("Q?", FACTS)}]
    assert pairs[0].chosen == [{"role": "assistant", "content": "good"}]
    assert pairs[0].rejected == [{"role": "assistant", "content": "bad"}]


def test_earlier_turns_are_kept_and_facts_go_in_the_last_question() -> None:
    row: dict[str, Any] = {
        "prompt": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "second"},
        ],
        "chosen": "a",
        "rejected": "b",
        "context": {"captions": ["c"]},
    }
    (pair,) = fact_pairs([row])
    assert pair.prompt[:2] == row["prompt"][:2]
    assert pair.prompt[2]["content"] == "Image facts:\n- c\n\nQuestion: second"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": "a", "rejected": "b"}, r"row 1: needs 'prompt'"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, r"row 1: 'chosen'"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "context": "x"}, r"row 1: 'context'"),
        (
            {
                "conversations": [{"from": "human", "value": "q"}],
                "output_1": "a",
                "output_2": "b",
                "preference": 3,
            },
            r"row 1: 'preference'",
        ),
    ],
)
def test_malformed_rows_name_the_row_and_field(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fact_pairs([row])


# --- learning on the synthetic world -----------------------------------------------------------


def _false_claims(scene: Any, text: str) -> int:
    return sum(not claim.true for claim in claims_of(scene, text))


def swapped_pairs(n_scenes: int, seed: int) -> list[dict[str, Any]]:
    """Preference rows on which a reward model that cannot see the image is at chance by design.

    Two scenes answer "Describe the image." truthfully; each answer, read against the other scene,
    makes a false claim. Each scene's row prefers its own answer (fewer false claims) over the
    other's, so the same two texts appear twice with opposite preferences: the question and the
    responses alone carry no signal, only the facts (the scene's captions) do.
    """
    rng = random.Random(seed)
    question = Question("Describe the image.")
    scenes = [random_scene(rng, max_items=3) for _ in range(n_scenes)]
    rows = []
    for i in range(0, n_scenes - 1, 2):
        a, b = scenes[i], scenes[i + 1]
        text_a = respond(a, question, rng, n_true=1, n_false=0).text
        text_b = respond(b, question, rng, n_true=1, n_false=0).text
        if not (_false_claims(a, text_b) and _false_claims(b, text_a)):
            continue
        for k, (scene, own, other) in enumerate(((a, text_a, text_b), (b, text_b, text_a))):
            assert _false_claims(scene, own) < _false_claims(scene, other)
            rows.append(
                {
                    "images": [f"images/{seed}-{i + k}.png"],
                    "prompt": question.text,
                    "chosen": own,
                    "rejected": other,
                    "context": {"captions": captions(scene)},
                }
            )
    return rows


@pytest.mark.slow
def test_the_reward_model_with_facts_beats_the_blind_one(tmp_path: Any) -> None:
    """MiniLM on ~180 pairs, 3 epochs (about a minute on 2 CPU cores for both models).

    Measured: with facts 0.96 held-out accuracy, without 0.50 (exactly chance, by design).
    """
    train, held_out = swapped_pairs(240, seed=0), swapped_pairs(100, seed=1)
    config = RewardConfig(
        backbone="minilm",
        epochs=3,
        learning_rate=1e-4,
        batch_size=16,
        max_length=128,
        warmup=0.05,
    )
    with_facts = train_fact_reward(
        train, config, with_facts=True, eval_rows=held_out, output_dir=tmp_path / "rm"
    )
    blind = train_fact_reward(train, config, with_facts=False, eval_rows=held_out)
    assert with_facts.accuracy is not None and blind.accuracy is not None
    print(f"held-out accuracy with facts {with_facts.accuracy:.3f}, without {blind.accuracy:.3f}")
    assert with_facts.accuracy >= 0.8
    assert with_facts.accuracy >= blind.accuracy + 0.2
    assert with_facts.metrics["n_eval"] == len(held_out)
    assert blind.path is None
    # The saved model scores like any reward model, facts in its prompt.
    scorer = RewardEnsemble.load(tmp_path / "rm")
    pair = fact_pairs(held_out[:1])[0]
    scores = scorer.score([pair.prompt, pair.prompt], [pair.chosen, pair.rejected]).mean
    assert scores.shape == (2,)


def test_the_held_out_split_is_by_image_and_the_same_with_or_without_facts(
    tiny_lm_path: Any,
) -> None:
    rows = swapped_pairs(80, seed=2)
    config = RewardConfig(backbone=str(tiny_lm_path), max_steps=1, batch_size=4, max_length=64)
    with_facts = train_fact_reward(rows, config, eval_fraction=0.3, split_seed=5)
    blind = train_fact_reward(rows, config, with_facts=False, eval_fraction=0.3, split_seed=5)
    n_eval = with_facts.metrics["n_eval"]
    assert 0 < n_eval < len(rows)
    assert blind.metrics["n_eval"] == n_eval
    assert with_facts.metrics["train"]["n_train"] == len(rows) - n_eval
