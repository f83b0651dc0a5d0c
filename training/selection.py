"""Pair selection for the next round: which two of a prompt's K candidates to compare.

Step 3 of the online loop (DESIGN.md): the reward ensemble scores every
candidate and the selected pairs become annotation tasks whose ``priority``
orders the annotators' queue. Three strategies:

- ``best_vs_worst``: the candidates with the highest and lowest ensemble-mean
  reward (the Online-RLHF recipe, Dong et al. 2024, "RLHF Workflow"); one pair
  per prompt, priority = the mean reward gap.
- ``disagreement``: active learning. For every candidate pair (i, j) each
  ensemble member m gives a Bradley-Terry preference probability
  ``p_m = σ(r_m,i − r_m,j)``; the priority is the standard deviation of
  ``p_m`` across members. It is high only when members are *confident and
  opposed*, i.e. when a human label would settle a question the ensemble
  cannot (query-by-committee; the ensemble is the one of Coste et al. 2024,
  "Reward Model Ensembles Help Mitigate Overoptimization"). Using
  probabilities rather than raw reward differences keeps the score bounded
  and scale-free, so one over-confident member cannot dominate.
- ``random``: uniformly random distinct pairs, seeded; the baseline.

Pure numpy: this runs in the web app's Celery worker without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Strategy = Literal["best_vs_worst", "disagreement", "random"]


@dataclass(frozen=True)
class SelectedPair:
    """Candidates ``first`` and ``second`` (indices into ``candidates[prompt_index]``) to compare.

    ``first`` is the candidate the ensemble mean prefers (for ``random``, the
    lower index). ``priority`` is a float the web app sorts tasks by,
    highest first.
    """

    prompt_index: int
    first: int
    second: int
    priority: float


def _member_scores(
    scores: np.ndarray | Sequence[Any], candidates: Sequence[Sequence[str]]
) -> list[np.ndarray]:
    """Normalise scores to one ``[M, k_p]`` array per prompt and check them against the candidates.

    Accepts an array ``[M, n_prompts, k]`` or one object per prompt with a
    ``members`` array ``[M, k_p]`` (``training.reward.EnsembleScores``).
    """
    if isinstance(scores, np.ndarray):
        if scores.ndim != 3:
            raise ValueError(f"scores must have shape [members, prompts, k], got {scores.shape}")
        per_prompt = [np.asarray(scores[:, p, :], dtype=np.float64) for p in range(scores.shape[1])]
    else:
        per_prompt = [np.asarray(s.members, dtype=np.float64) for s in scores]
    if len(per_prompt) != len(candidates):
        raise ValueError(
            f"scores cover {len(per_prompt)} prompts but there are {len(candidates)} candidate lists"
        )
    for p, (member_scores, texts) in enumerate(zip(per_prompt, candidates, strict=True)):
        if member_scores.ndim != 2 or member_scores.shape[1] != len(texts):
            raise ValueError(
                f"prompt {p}: scores have shape {member_scores.shape}, expected [members, {len(texts)}]"
            )
        if not np.all(np.isfinite(member_scores)):
            raise ValueError(f"prompt {p}: scores contain NaN or inf")
    return per_prompt


def member_preferences(members: np.ndarray) -> np.ndarray:
    """Each member's Bradley–Terry preference for every pair of one prompt's candidates.

    ``members``: ``[M, k]`` rewards. Returns ``[M, k, k]`` with entry (m, i, j)
    ``σ(r_m,i − r_m,j)``, the probability member m gives that i beats j.
    """
    diff = members[:, :, None] - members[:, None, :]
    result: np.ndarray = 1.0 / (1.0 + np.exp(-diff))
    return result


def preference_disagreement(members: np.ndarray) -> np.ndarray:
    """Disagreement of ensemble members about every pair of one prompt's candidates.

    ``members``: ``[M, k]`` rewards. Returns ``[k, k]`` with entry (i, j) the
    population standard deviation over members of ``σ(r_m,i − r_m,j)``;
    symmetric, zero on the diagonal and for a single member.
    """
    result: np.ndarray = member_preferences(members).std(axis=0)
    return result


def distinct_pairs(texts: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs i < j whose texts differ: comparing a text with itself teaches nothing."""
    return [
        (i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)) if texts[i] != texts[j]
    ]


def _orient(i: int, j: int, mean: np.ndarray) -> tuple[int, int]:
    return (i, j) if mean[i] >= mean[j] else (j, i)


def select_pairs(
    candidates: Sequence[Sequence[str]],
    scores: np.ndarray | Sequence[Any],
    *,
    strategy: Strategy,
    budget: int | None = None,
    seed: int = 0,
    per_prompt: int = 1,
) -> list[SelectedPair]:
    """Choose which candidate pairs to send for labelling, highest priority first.

    ``candidates[p]`` are prompt p's K completions; ``scores`` is
    ``[M, n_prompts, K]`` or one ``EnsembleScores`` per prompt (ragged K
    allowed). At most ``per_prompt`` pairs per prompt (``best_vs_worst``
    always gives one), at most ``budget`` in all (``None``: no limit). Pairs
    of identical texts are never selected; a prompt without two distinct
    candidates yields nothing. Ties in priority keep (prompt, pair) order,
    so the result is deterministic for a given ``seed``.
    """
    if strategy not in ("best_vs_worst", "disagreement", "random"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be >= 1, got {per_prompt}")
    per_prompt_scores = _member_scores(scores, candidates)
    rng = np.random.default_rng(seed)

    chosen: list[SelectedPair] = []
    for p, (members, texts) in enumerate(zip(per_prompt_scores, candidates, strict=True)):
        pairs = distinct_pairs(texts)
        if not pairs:
            continue
        mean = members.mean(axis=0)
        if strategy == "best_vs_worst":
            # Among distinct texts only: the best and worst by mean reward.
            i, j = max(pairs, key=lambda ij: (abs(mean[ij[0]] - mean[ij[1]]), -ij[0], -ij[1]))
            first, second = _orient(i, j, mean)
            chosen.append(SelectedPair(p, first, second, float(mean[first] - mean[second])))
            continue
        if strategy == "disagreement":
            spread = preference_disagreement(members)
            priorities = [float(spread[i, j]) for i, j in pairs]
        else:
            priorities = list(rng.random(len(pairs)).astype(float))
        order = sorted(range(len(pairs)), key=lambda n: -priorities[n])[:per_prompt]
        for n in order:
            i, j = pairs[n]
            first, second = _orient(i, j, mean) if strategy == "disagreement" else (i, j)
            chosen.append(SelectedPair(p, first, second, priorities[n]))

    # sorted() is stable: equal priorities keep prompt order.
    chosen.sort(key=lambda pair: -pair.priority)
    return chosen if budget is None else chosen[:budget]
