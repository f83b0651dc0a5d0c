"""Tiny models and a learnable synthetic preference for the policy-side tests.

Imported explicitly by the test modules (``from tests.training.conftest_policy
import ...``); ``tests/training/conftest.py`` belongs to the reward side.

The preference: for a prompt "tell me about <topic>", the chosen reply opens
with "yes" and the rejected one with "no", the rest being the same kind of
filler. A 2-layer, 32-wide Llama learns it in a few dozen DPO steps.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from training.data import PreferencePair, UnpairedExample

TOPICS = [
    "cats", "dogs", "rivers", "trains", "bread", "clouds", "music", "stones", "apples", "boats",
    "birds", "roads", "lamps", "books", "chairs", "gardens", "tea", "snow", "maps", "bells",
]  # fmt: skip
FILLER = [
    "it is",
    "they are",
    "we like",
    "so much",
    "very",
    "quite",
    "really",
    "nice",
    "here",
    "now",
]


def _reply(rng: random.Random, opener: str, topic: str) -> str:
    return f"{opener} {topic} {' '.join(rng.sample(FILLER, 3))}"


def synthetic_pairs(n: int, seed: int, topics: list[str] = TOPICS) -> list[PreferencePair]:
    """``n`` pairs whose chosen reply starts with "yes" and rejected with "no"."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        topic = topics[i % len(topics)]
        pairs.append(
            PreferencePair(
                prompt=[{"role": "user", "content": f"tell me about {topic}"}],
                chosen=[{"role": "assistant", "content": _reply(rng, "yes", topic)}],
                rejected=[{"role": "assistant", "content": _reply(rng, "no", topic)}],
            )
        )
    return pairs


def synthetic_unpaired(n: int, seed: int) -> list[UnpairedExample]:
    """Half desirable ("yes ..."), half undesirable ("no ..."), interleaved."""
    rng = random.Random(seed)
    return [
        UnpairedExample(
            prompt=[{"role": "user", "content": f"tell me about {TOPICS[i % len(TOPICS)]}"}],
            completion=[
                {
                    "role": "assistant",
                    "content": _reply(rng, "yes" if i % 2 == 0 else "no", TOPICS[i % len(TOPICS)]),
                }
            ],
            label=i % 2 == 0,
        )
        for i in range(n)
    ]


def corpus() -> list[str]:
    rng = random.Random(0)
    lines = [f"tell me about {t}" for t in TOPICS]
    lines += [_reply(rng, opener, t) for t in TOPICS for opener in ("yes", "no")]
    return lines * 5


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved, randomly initialised 2-layer Llama (hidden 32) with a local BPE tokenizer and chat template."""
    from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer

    path = tmp_path_factory.mktemp("tiny-policy")
    tokenizer = build_tokenizer(corpus(), vocab_size=400, path=path)
    build_tiny_causal_lm(
        tokenizer, TinyModelConfig(hidden_size=32, layers=2, heads=4, intermediate=64), path=path
    )
    return path


# π_0 of the warm-words oracle after a deliberately short warm start: its
# replies already use the task's words but pick a warm one only about one time
# in eight, so an on-policy learner has room to raise the oracle's utility.
WARM_START_STEPS = 20


@pytest.fixture(scope="session")
def warm_words_pi0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.oracles import oracle_named

    path: Path = oracle_named("warm-words").warm_start(
        tmp_path_factory.mktemp("warm-words") / "pi0", steps=WARM_START_STEPS
    )
    return path
