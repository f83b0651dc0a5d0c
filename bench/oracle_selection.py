"""Which pairs to label: disagreement-first (and other acquisitions) against random buying.

From a pool of π_0 samples on training prompts, labels are bought in steps; an acquisition fits
the ensemble on the labels so far and buys the pairs it scores highest, "random" buys uniformly.
Both start from the same random seed set, and the ensemble accuracy on a fixed held-out pair set
is recorded after every step. ``learner_noise`` measures the floor under any such comparison.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.oracle_recipe import (
    ORACLE,
    Settings,
    distinct_utility_pairs,
    ensemble_config,
    oracle_pair,
    score_candidates,
)
from training.data import Message, PreferencePair
from training.generation import GenerationConfig, TransformersGenerator
from training.reward import RewardEnsemble, evaluate_pairs, train_reward_ensemble
from training.selection import distinct_pairs, member_preferences, preference_disagreement


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    result: np.ndarray = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return result


def _gaps(members: np.ndarray) -> np.ndarray:
    """``[M, k, k]``: each member's reward gap r_i − r_j for every pair of one prompt's samples."""
    return members[:, :, None] - members[:, None, :]


def _sign_doubt(members: np.ndarray) -> np.ndarray:
    """Chance the ensemble's verdict is wrong if the gap were Normal(mean, std) over members."""
    from scipy.special import ndtr

    gaps = _gaps(members)
    result: np.ndarray = ndtr(-np.abs(gaps.mean(0)) / (gaps.std(0) + 1e-9))
    return result


def _bald(members: np.ndarray) -> np.ndarray:
    """Mutual information: entropy of the mean preference minus the members' mean entropy."""
    prefs = member_preferences(members)
    result: np.ndarray = _entropy(prefs.mean(0)) - _entropy(prefs).mean(0)
    return result


# Acquisition functions compared against random buying; each maps one prompt's member rewards
# ``[M, k]`` to a ``[k, k]`` score, highest bought first. ``disagreement`` is the product's
# (training.selection); the others are the usual alternatives, kept here as an experiment.
ACQUISITIONS: dict[str, Any] = {
    # Spread of the members' preference probabilities (query by committee).
    "disagreement": preference_disagreement,
    # Spread of the raw reward gaps: does not favour pairs the mean calls even.
    "gap_spread": lambda m: _gaps(m).std(0),
    "bald": _bald,
    # Uncertainty sampling: entropy of the ensemble-mean preference.
    "entropy": lambda m: _entropy(member_preferences(m).mean(0)),
    "sign_doubt": _sign_doubt,
}


def learner_noise(
    work: Path,
    pi0: Path,
    train_prompts: list[list[Message]],
    eval_prompts: list[list[Message]],
    settings: Settings,
) -> dict[int, list[float]]:
    """Held-out accuracy of ensembles fitted on the SAME random labels with 4 training seeds.

    The spread is the floor under any comparison of selection strategies: two curves closer
    than this are not told apart by a handful of seeds.
    """
    pool, eval_pairs, all_pairs = _selection_pool(pi0, train_prompts, eval_prompts, settings)
    order = list(all_pairs)
    random.Random(1000).shuffle(order)
    spread: dict[int, list[float]] = {}
    for n in (settings.selection_steps[0], 64, settings.selection_steps[-1]):
        labels = _oracle_labels(train_prompts, pool, order[:n])
        spread[n] = []
        for seed in range(4):
            path = train_reward_ensemble(
                labels, ensemble_config(settings, pi0, seed), root=work, name=f"noise-{n}-{seed}"
            ).path
            spread[n].append(evaluate_pairs(RewardEnsemble.load(path), eval_pairs)["accuracy"])
        print(
            f"  {n:>4} labels, 4 training seeds: "
            + " ".join(f"{a:.3f}" for a in spread[n])
            + f"  (std {np.std(spread[n]):.3f})",
            flush=True,
        )
    return spread


def _selection_pool(
    pi0: Path,
    train_prompts: list[list[Message]],
    eval_prompts: list[list[Message]],
    settings: Settings,
) -> tuple[list[list[str]], list[PreferencePair], list[tuple[int, int, int]]]:
    """π_0's samples on the training prompts, the held-out check pairs, and every purchasable pair."""
    generator = TransformersGenerator(pi0, device="cpu")
    pool_samples = generator.generate(
        train_prompts,
        GenerationConfig(k=settings.k, max_new_tokens=settings.max_new_tokens, seed=7),
    )
    eval_samples = generator.generate(
        eval_prompts, GenerationConfig(k=settings.k, max_new_tokens=settings.max_new_tokens, seed=8)
    )
    eval_pairs = distinct_utility_pairs(eval_prompts, eval_samples)
    # Every unordered pair of a prompt's samples is one purchasable label (identical texts excluded).
    all_pairs = [
        (p, i, j) for p, texts in enumerate(pool_samples) for i, j in distinct_pairs(texts)
    ]
    return pool_samples, eval_pairs, all_pairs


def _oracle_labels(
    prompts: Sequence[list[Message]],
    pool: Sequence[Sequence[str]],
    bought: Sequence[tuple[int, int, int]],
) -> list[PreferencePair]:
    """The oracle's answers to the bought pairs; ties cost a label but teach nothing."""
    return [
        pair
        for p, i, j in bought
        if (pair := oracle_pair(prompts[p], pool[p][i], pool[p][j])) is not None
    ]


def selection_experiment(
    work: Path,
    pi0: Path,
    train_prompts: list[list[Message]],
    eval_prompts: list[list[Message]],
    settings: Settings,
    acquisitions: Sequence[str] = ("disagreement", "random"),
) -> dict[str, list[list[float]]]:
    """Accuracy against labels bought for each acquisition (``random`` or ACQUISITIONS); mean over seeds."""
    unknown = [a for a in acquisitions if a != "random" and a not in ACQUISITIONS]
    if unknown:
        raise ValueError(
            f"unknown acquisitions {unknown}; known: random, {', '.join(ACQUISITIONS)}"
        )
    pool_samples, eval_pairs, all_pairs = _selection_pool(
        pi0, train_prompts, eval_prompts, settings
    )
    ties = {
        key: ORACLE.prefer(pool_samples[key[0]][key[1]], pool_samples[key[0]][key[2]]) == "tie"
        for key in all_pairs
    }
    print(
        f"  pool: {len(all_pairs)} purchasable pairs, {np.mean(list(ties.values())):.2f} of them ties",
        flush=True,
    )
    curves: dict[str, list[list[float]]] = {}
    fits = 0

    def fit(bought: list[tuple[int, int, int]], seed: int) -> tuple[RewardEnsemble | None, float]:
        nonlocal fits
        pairs = _oracle_labels(train_prompts, pool_samples, bought)
        fits += 1
        config = ensemble_config(settings, pi0, seed)
        path = train_reward_ensemble(pairs, config, root=work, name=f"sel-{fits}").path
        ensemble = RewardEnsemble.load(path)
        return ensemble, evaluate_pairs(ensemble, eval_pairs)["accuracy"]

    per_seed: dict[str, list[list[float]]] = {a: [] for a in acquisitions}
    tie_share: dict[str, list[float]] = {a: [] for a in acquisitions}
    for seed in range(settings.selection_seeds):
        rng = random.Random(1000 + seed)
        order = list(all_pairs)
        rng.shuffle(order)
        seed_set = order[: settings.selection_steps[0]]
        first_ensemble, first_accuracy = fit(seed_set, seed)
        for strategy in acquisitions:
            bought = list(seed_set)
            ensemble = first_ensemble
            accuracies = [first_accuracy]
            for budget in settings.selection_steps[1:]:
                need = budget - len(bought)
                taken = set(bought)
                if strategy == "random":
                    extra = [pair for pair in order if pair not in taken][:need]
                else:
                    assert ensemble is not None
                    scores = score_candidates(ensemble, train_prompts, pool_samples)
                    matrices = [
                        ACQUISITIONS[strategy](scores[:, p, :]) for p in range(len(pool_samples))
                    ]
                    ranked = sorted(
                        (key for key in all_pairs if key not in taken),
                        key=lambda key: -float(matrices[key[0]][key[1], key[2]]),
                    )
                    # Highest score first, at most one new pair per prompt in a
                    # batch: the batch spreads over prompts instead of buying
                    # the same confusion several times.
                    extra, used = [], set()
                    for p, i, j in ranked:
                        if p not in used and len(extra) < need:
                            extra.append((p, i, j))
                            used.add(p)
                bought += extra
                ensemble, accuracy = fit(bought, seed)
                accuracies.append(accuracy)
            per_seed[strategy].append(accuracies)
            tie_share[strategy].append(
                float(np.mean([ties[key] for key in bought[settings.selection_steps[0] :]]))
            )
            print(
                f"  selection seed {seed} {strategy:>12}: "
                + " ".join(f"{a:.3f}" for a in accuracies)
                + f"  (ties among bought: {tie_share[strategy][-1]:.2f})",
                flush=True,
            )
    for strategy, runs in per_seed.items():
        mean = np.mean(np.asarray(runs), axis=0)
        curves[strategy] = [
            [float(b), round(float(a), 4)]
            for b, a in zip(settings.selection_steps, mean, strict=True)
        ]
    if "random" in per_seed:
        # Paired by seed (same seed labels, same pool): the mean over later budgets of
        # (acquisition − random), with a normal 95% interval across seeds.
        baseline = np.asarray(per_seed["random"])[:, 1:]
        for strategy, runs in per_seed.items():
            if strategy == "random":
                continue
            diff = (np.asarray(runs)[:, 1:] - baseline).mean(axis=1)
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            print(
                f"  {strategy:>12} − random, mean accuracy over budgets: {diff.mean():+.3f} "
                f"± {half:.3f} (95%, {len(diff)} seeds); ties among bought "
                f"{np.mean(tie_share[strategy]):.2f} vs {np.mean(tie_share['random']):.2f}",
                flush=True,
            )
    return curves


def labels_to_reach(curve: list[list[float]], target: float) -> float | None:
    for labels, accuracy in curve:
        if accuracy >= target:
            return labels
    return None
