"""The oracle experiment's recipe: the hidden oracle that plays the human, the sizes (``Settings``),
π_0's warm start, the reward ensemble's config, and how the oracle judges samples.

Shared by the online loop (``bench.oracle_loop``), the selection experiment
(``bench.oracle_selection``) and ``bench.round_one_replay``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import Message, PreferencePair
from training.oracles import WarmWords
from training.reward import EnsembleConfig, RewardConfig, RewardEnsemble

ORACLE = WarmWords()


def oracle_utility(text: str) -> float:
    """The hidden human: how many warm words the reply contains (training.oracles.WarmWords)."""
    return ORACLE.utility(text)


def oracle_pair(prompt: list[Message], a: str, b: str) -> PreferencePair | None:
    """The oracle's judgement as an export row would carry it; ``None`` for a tie."""
    preference = ORACLE.prefer(a, b)
    if preference == "tie":
        return None
    chosen, rejected = (a, b) if preference == "A" else (b, a)
    return PreferencePair(
        prompt=prompt,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
    )


def make_prompts() -> list[list[Message]]:
    return ORACLE.prompts()


@dataclass(frozen=True)
class Settings:
    """Sizes of the experiment; the defaults finish in under 10 minutes on 2 CPU cores."""

    seed: int = 0
    k: int = 4
    prompts_per_round: int = 96
    eval_prompts: int = 48
    rounds: int = 3
    sft_steps: int = 120
    max_new_tokens: int = 14
    members: int = 3
    reward_epochs: float = 8.0
    reward_lr: float = 3e-3
    # Measured: lr 1.5e-3 left π_1 worse than π_0 on one seed (DPO on a tiny
    # model is sensitive to the step size); 2e-3 x 3 epochs improved every round.
    dpo_epochs: float = 3.0
    dpo_lr: float = 2e-3
    dpo_beta: float = 0.1
    # Tiny models on a shared 2-core box: one thread per process measured
    # 3-4x faster than two (thread synchronisation costs more than the
    # matmuls), see --threads.
    threads: int = 1
    selection_steps: tuple[int, ...] = (16, 32, 48, 64, 80, 96, 128)
    selection_seeds: int = 5
    # Query by bagging: members fit bootstrap resamples, so their spread reflects what the labels
    # leave open rather than head-initialisation noise. Measured over 5 seeds, disagreement-first
    # still does not beat random on this task with or without it (README, Performance).
    bagging: bool = True


def warm_start(work: Path, prompts: Sequence[list[Message]], settings: Settings) -> Path:
    """π_0: a tiny Llama (hidden 64, 2 layers) fitted with TRL's SFTTrainer on synthetic replies."""
    return ORACLE.warm_start(
        work / "pi0", steps=settings.sft_steps, seed=settings.seed, prompts=prompts
    )


def ensemble_config(settings: Settings, backbone: Path, seed: int) -> EnsembleConfig:
    return EnsembleConfig(
        members=settings.members,
        bootstrap=settings.bagging,
        reward=RewardConfig(
            backbone=str(backbone),
            epochs=settings.reward_epochs,
            learning_rate=settings.reward_lr,
            batch_size=16,
            max_length=64,
            seed=seed,
            logging_steps=10,
            cpu_threads=settings.threads,
        ),
    )


def distinct_utility_pairs(
    prompts: Sequence[list[Message]], samples: Sequence[Sequence[str]]
) -> list[PreferencePair]:
    """Every pair of a prompt's samples that the oracle does not call a tie."""
    pairs = []
    for prompt, texts in zip(prompts, samples, strict=True):
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                pair = oracle_pair(prompt, texts[i], texts[j])
                if pair is not None:
                    pairs.append(pair)
    return pairs


def win_rate(candidate: Sequence[Sequence[str]], baseline: Sequence[Sequence[str]]) -> float:
    """Oracle win rate of ``candidate`` over ``baseline``, sample i against sample i; ties count half."""
    wins = []
    for ours, theirs in zip(candidate, baseline, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            ua, ub = oracle_utility(a), oracle_utility(b)
            wins.append(1.0 if ua > ub else 0.5 if ua == ub else 0.0)
    return float(np.mean(wins))


def score_candidates(
    ensemble: RewardEnsemble, prompts: Sequence[list[Message]], samples: Sequence[Sequence[str]]
) -> np.ndarray:
    """Ensemble rewards ``[members, n_prompts, k]`` for every sample."""
    flat_prompts = [p for p, texts in zip(prompts, samples, strict=True) for _ in texts]
    flat_texts = [t for texts in samples for t in texts]
    members = ensemble.score(flat_prompts, flat_texts).members
    return members.reshape(members.shape[0], len(samples), -1)
