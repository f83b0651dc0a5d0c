"""Tiny tokenizer and models built once per test session, plus a learnable synthetic preference."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from training.data import PreferencePair
from training.models import (
    TinyModelConfig,
    build_tiny_causal_lm,
    build_tiny_reward_model,
    build_tokenizer,
)

WORDS = (
    "the a cat dog sun rain tree river stone cloud book lamp road city field song "
    "bread apple chair door window paper light green blue small large quick slow"
).split()
# The synthetic human prefers replies that close politely; a reward model
# must learn to spot this phrase anywhere in a random reply.
GOOD = "thank you kindly"
BAD = "go away now"
TINY = TinyModelConfig(
    hidden_size=32, layers=2, heads=4, intermediate=64, max_positions=128, seed=0
)


def _reply(rng: random.Random, phrase: str) -> str:
    words = rng.choices(WORDS, k=rng.randint(3, 7))
    words.insert(rng.randint(0, len(words)), phrase)
    return " ".join(words)


def synthetic_pairs(n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs whose chosen reply contains ``GOOD`` and rejected reply ``BAD``."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"tell me about the {rng.choice(WORDS)} {i}"}]
        pairs.append(
            PreferencePair(
                prompt=prompt,
                chosen=[{"role": "assistant", "content": _reply(rng, GOOD)}],
                rejected=[{"role": "assistant", "content": _reply(rng, BAD)}],
            )
        )
    return pairs


def far_pairs(n: int, seed: int) -> list[PreferencePair]:
    """Pairs unlike anything in training: digits and capitals, neither phrase present."""
    rng = random.Random(seed)
    alphabet = "0123456789QXZJVK#%&"

    def noise() -> str:
        return " ".join("".join(rng.choices(alphabet, k=rng.randint(2, 6))) for _ in range(8))

    return [
        PreferencePair(
            prompt=[{"role": "user", "content": noise()}],
            chosen=[{"role": "assistant", "content": noise()}],
            rejected=[{"role": "assistant", "content": noise()}],
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir: Path) -> Any:
    corpus = [" ".join(WORDS), GOOD, BAD, "tell me about"] * 20
    return build_tokenizer(
        corpus, vocab_size=400, model_max_length=128, path=tiny_dir / "tokenizer"
    )


@pytest.fixture(scope="session")
def tiny_lm_path(tiny_dir: Path, tiny_tokenizer: Any) -> Path:
    path = tiny_dir / "lm"
    build_tiny_causal_lm(tiny_tokenizer, TINY, path=path)
    return path


@pytest.fixture(scope="session")
def tiny_rm_path(tiny_dir: Path, tiny_tokenizer: Any) -> Path:
    path = tiny_dir / "rm"
    build_tiny_reward_model(tiny_tokenizer, TINY, path=path)
    return path
