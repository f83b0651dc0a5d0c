"""Pair selection picks what each strategy claims, on hand-built ensemble scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from training.selection import (
    SelectedPair,
    distinct_pairs,
    member_preferences,
    preference_disagreement,
    select_pairs,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Two prompts, three candidates each, two ensemble members: shape [M=2, n=2, k=3].
# Prompt 0: both members rank candidate 0 far above the rest and disagree
# only about 1 vs 2. Prompt 1: members agree everywhere.
SCORES = np.array(
    [
        [[10.0, 1.0, 0.0], [0.0, 2.0, 5.0]],
        [[10.0, 0.0, 1.0], [0.0, 2.0, 5.0]],
    ]
)
CANDIDATES = [["a0", "a1", "a2"], ["b0", "b1", "b2"]]


def test_best_vs_worst_takes_the_mean_extremes_with_the_gap_as_priority() -> None:
    pairs = select_pairs(CANDIDATES, SCORES, strategy="best_vs_worst")
    # Means: prompt 0 [10, 0.5, 0.5] (tie for worst: the lower index wins),
    # prompt 1 [0, 2, 5].
    assert pairs == [SelectedPair(0, 0, 1, 9.5), SelectedPair(1, 2, 0, 5.0)]


def test_disagreement_picks_the_pair_members_dispute() -> None:
    pairs = select_pairs(CANDIDATES, SCORES, strategy="disagreement")
    # Prompt 0, pair (1, 2): member 0 says σ(1), member 1 says σ(-1); the
    # population std of two values is half their distance.
    expected_0 = (sigmoid(1.0) - sigmoid(-1.0)) / 2
    assert pairs[0].prompt_index == 0
    assert {pairs[0].first, pairs[0].second} == {1, 2}
    assert pairs[0].priority == pytest.approx(expected_0, abs=1e-9)
    # Prompt 1: members agree, so its best pair is far less disputed.
    assert pairs[1].prompt_index == 1
    assert pairs[1].priority == pytest.approx(0.0, abs=1e-12)
    assert [p.priority for p in pairs] == sorted((p.priority for p in pairs), reverse=True)


def test_member_preferences_by_hand() -> None:
    # Member 0 gives candidate 1 a reward ln 3 above candidate 0: it prefers 1 with odds 3 to 1.
    prefs = member_preferences(np.array([[0.0, np.log(3.0)], [1.0, 1.0]]))
    assert prefs.shape == (2, 2, 2)
    assert prefs[0, 1, 0] == pytest.approx(0.75) and prefs[0, 0, 1] == pytest.approx(0.25)
    assert np.allclose(prefs[1], 0.5)


def test_distinct_pairs_skip_identical_texts() -> None:
    assert distinct_pairs(["a", "b", "a", "c"]) == [(0, 1), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_disagreement_matrix_by_hand() -> None:
    members = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, -2.0]])
    spread = preference_disagreement(members)
    assert spread.shape == (3, 3)
    assert np.allclose(np.diag(spread), 0.0)
    assert np.allclose(spread, spread.T)
    assert spread[0, 1] == pytest.approx(abs(0.5 - sigmoid(-2.0)) / 2)
    assert spread[1, 2] == pytest.approx(abs(0.5 - sigmoid(4.0)) / 2)


def test_disagreement_orients_first_as_the_mean_preferred() -> None:
    # Members: [0, 3] and [0, -1]: mean prefers candidate 1.
    scores = np.array([[[0.0, 3.0]], [[0.0, -1.0]]])
    (pair,) = select_pairs([["x", "y"]], scores, strategy="disagreement")
    assert (pair.first, pair.second) == (1, 0)


def test_budget_and_per_prompt_cap_the_result() -> None:
    all_pairs = select_pairs(CANDIDATES, SCORES, strategy="disagreement", per_prompt=3)
    assert len(all_pairs) == 6
    assert len({(p.prompt_index, p.first, p.second) for p in all_pairs}) == 6
    top = select_pairs(CANDIDATES, SCORES, strategy="disagreement", per_prompt=3, budget=2)
    assert top == all_pairs[:2]
    assert select_pairs(CANDIDATES, SCORES, strategy="best_vs_worst", budget=0) == []


def test_random_is_seeded_and_covers_distinct_pairs() -> None:
    first = select_pairs(CANDIDATES, SCORES, strategy="random", seed=3, per_prompt=3)
    again = select_pairs(CANDIDATES, SCORES, strategy="random", seed=3, per_prompt=3)
    other = select_pairs(CANDIDATES, SCORES, strategy="random", seed=4, per_prompt=3)
    assert first == again
    assert [p.priority for p in first] != [p.priority for p in other]
    # The priorities are the seeded uniform draws, one per distinct pair, prompt by prompt.
    assert sorted(p.priority for p in first) == sorted(np.random.default_rng(3).random(6).tolist())
    assert [p.priority for p in first] == sorted((p.priority for p in first), reverse=True)
    assert sorted((p.prompt_index, p.first, p.second) for p in first) == [
        (0, 0, 1), (0, 0, 2), (0, 1, 2), (1, 0, 1), (1, 0, 2), (1, 1, 2),
    ]  # fmt: skip


def test_identical_texts_are_never_paired() -> None:
    scores = np.array([[[5.0, 0.0, 1.0]], [[5.0, 0.0, 1.0]]])
    (pair,) = select_pairs([["same", "same", "other"]], scores, strategy="best_vs_worst")
    # Candidates 0 and 1 have the largest gap but the same text.
    assert (pair.first, pair.second) == (0, 2)
    assert select_pairs([["one", "one"]], np.zeros((2, 1, 2)), strategy="random") == []


@dataclass
class FakeScores:
    members: np.ndarray


def test_accepts_ragged_ensemble_scores() -> None:
    scores = [
        FakeScores(np.array([[1.0, 0.0], [1.0, 0.0]])),
        FakeScores(np.array([[0.0, 4.0, 2.0], [0.0, 4.0, 2.0]])),
    ]
    pairs = select_pairs([["a", "b"], ["c", "d", "e"]], scores, strategy="best_vs_worst")
    assert pairs == [SelectedPair(1, 1, 0, 4.0), SelectedPair(0, 0, 1, 1.0)]


def test_rejects_scores_that_do_not_match_the_candidates() -> None:
    with pytest.raises(ValueError, match="expected"):
        select_pairs([["a", "b", "c"]], np.zeros((2, 1, 2)), strategy="random")
    with pytest.raises(ValueError, match="prompts"):
        select_pairs([["a", "b"]], np.zeros((2, 2, 2)), strategy="random")
    with pytest.raises(ValueError, match="NaN"):
        select_pairs([["a", "b"]], np.full((2, 1, 2), np.nan), strategy="random")
    with pytest.raises(ValueError, match="strategy"):
        select_pairs([["a", "b"]], np.zeros((2, 1, 2)), strategy="loudest")  # type: ignore[arg-type]
