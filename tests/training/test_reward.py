"""Reward models learn a preference; ensembles disagree where they have seen no data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.conftest import BAD, GOOD, far_pairs, synthetic_pairs
from training.artifacts import Progress, is_published, read_manifest
from training.data import PreferencePair, parse_hh_transcript_pair, read_jsonl
from training.reward import (
    EnsembleConfig,
    EnsembleScores,
    RewardConfig,
    RewardEnsemble,
    _encode,
    _Encoding,
    cpu_has_fast_bf16,
    evaluate_pairs,
    train_reward_ensemble,
    train_reward_model,
)

HH_DATA = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "hh-rlhf-harmless-base-test.jsonl.gz"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_lm_path: Path) -> dict[str, Any]:
    """A 3-member ensemble on a tiny causal-LM backbone, trained on 160 synthetic pairs."""
    reports: list[Progress] = []
    config = EnsembleConfig(
        members=3,
        lambda_std=1.0,
        reward=RewardConfig(
            backbone=str(tiny_lm_path),
            epochs=2,
            learning_rate=1e-3,
            batch_size=16,
            max_length=64,
            logging_steps=2,
        ),
    )
    root = tmp_path_factory.mktemp("runs")
    result = train_reward_ensemble(
        synthetic_pairs(160, seed=0),
        config,
        root=root,
        name="rm-1",
        eval_pairs=synthetic_pairs(64, seed=1),
        progress=reports.append,
        data_cursor="cursor-7",
    )
    return {"result": result, "reports": reports, "root": root}


def test_loss_falls_and_held_out_accuracy_is_far_above_chance(trained: dict[str, Any]) -> None:
    metrics = trained["result"].metrics
    for member in metrics["members"]:
        assert member["loss_first"] > 0.6  # starts near log 2: an untrained model guesses
        assert member["loss_last"] < 0.35
        assert member["n_train"] == 160
    held_out = metrics["eval"]
    assert held_out["n"] == 64
    assert held_out["accuracy"] >= 0.9
    assert held_out["accuracy_worst"] >= 0.9
    assert held_out["mean_margin"] > 0.5
    assert all(accuracy >= 0.9 for accuracy in held_out["member_accuracy"])
    assert 0.0 <= held_out["ece"] <= 1.0


def test_ensemble_is_published_atomically_with_manifest(trained: dict[str, Any]) -> None:
    path = trained["result"].path
    assert path == trained["root"] / "rm-1"
    assert is_published(path)
    assert sorted(p.name for p in (path / "members").iterdir()) == ["0", "1", "2"]
    manifest = read_manifest(path)
    assert manifest.kind == "reward_ensemble"
    assert manifest.data_cursor == "cursor-7"
    assert manifest.config["members"] == 3
    assert manifest.metrics["eval"]["accuracy"] == trained["result"].metrics["eval"]["accuracy"]
    assert [p.name for p in trained["root"].iterdir()] == ["rm-1"]


def test_progress_is_reported_per_member_up_to_the_last_step(trained: dict[str, Any]) -> None:
    reports: list[Progress] = trained["reports"]
    stages = sorted({report.stage for report in reports})
    assert stages == [f"reward member {k}/3" for k in (1, 2, 3)]
    for stage in stages:
        steps = [report.step for report in reports if report.stage == stage]
        assert steps == sorted(steps)
        assert steps[-1] == reports[-1].total == 20  # 160 pairs / 16 per step * 2 epochs
    assert any(report.loss is not None for report in reports)


def test_ensemble_disagrees_more_far_from_the_training_data(trained: dict[str, Any]) -> None:
    ensemble = RewardEnsemble.load(trained["result"].path)
    assert len(ensemble) == 3
    near = evaluate_pairs(ensemble, synthetic_pairs(48, seed=2))["mean_std"]
    far = evaluate_pairs(ensemble, far_pairs(48, seed=3))["mean_std"]
    assert far > 3 * near


def test_scores_have_member_rows_and_consistent_aggregations(trained: dict[str, Any]) -> None:
    ensemble = RewardEnsemble.load(trained["result"].path)
    prompt = [{"role": "user", "content": "tell me about the cat 1"}]
    completions: list[Any] = [
        f"the cat {GOOD}",
        f"the cat {BAD}",
        [{"role": "assistant", "content": f"the cat {GOOD}"}],
    ]
    scores = ensemble.score([prompt] * 3, completions, batch_size=2)
    assert scores.members.shape == (3, 3)
    # A string completion is the same single assistant message.
    np.testing.assert_allclose(scores.members[:, 0], scores.members[:, 2], rtol=1e-5)
    assert (scores.members[:, 0] > scores.members[:, 1]).all()
    np.testing.assert_allclose(scores.mean, scores.members.mean(axis=0))
    np.testing.assert_allclose(scores.worst, scores.members.min(axis=0))
    np.testing.assert_allclose(scores.uncertainty_weighted(2.0), scores.mean - 2.0 * scores.std)
    # Scoring in one batch or many gives the same numbers.
    alone = ensemble.score([prompt], [completions[1]])
    np.testing.assert_allclose(alone.members[:, 0], scores.members[:, 1], rtol=1e-4, atol=1e-5)
    assert ensemble.score([], []).members.shape == (3, 0)


def test_ensemble_scores_by_hand() -> None:
    scores = EnsembleScores(np.array([[1.0, 4.0], [2.0, 3.0], [0.0, 2.0]]))
    assert scores.mean.tolist() == [1.0, 3.0]
    assert scores.worst.tolist() == [0.0, 2.0]
    assert scores.std == pytest.approx([math.sqrt(2 / 3)] * 2)
    assert scores.uncertainty_weighted(1.0) == pytest.approx(
        [1 - math.sqrt(2 / 3), 3 - math.sqrt(2 / 3)]
    )


def test_failed_training_publishes_nothing(tmp_path: Path) -> None:
    config = EnsembleConfig(
        members=2, reward=RewardConfig(backbone=str(tmp_path / "no-such-model"))
    )
    with pytest.raises(OSError):
        train_reward_ensemble(synthetic_pairs(4, seed=0), config, root=tmp_path / "runs", name="x")
    assert list((tmp_path / "runs").iterdir()) == []


def test_ties_only_is_an_error(tmp_path: Path) -> None:
    (pair,) = synthetic_pairs(1, seed=0)
    tie = PreferencePair(pair.prompt, pair.chosen, pair.rejected, tie=True)
    with pytest.raises(ValueError, match="untied"):
        train_reward_model([tie], RewardConfig(), output_dir=tmp_path)


def test_long_sequences_keep_their_special_tokens_and_the_final_reply(tiny_tokenizer: Any) -> None:
    prompt = [{"role": "user", "content": " ".join(["river"] * 200)}]
    reply = "the cat " + GOOD
    left = _encode(tiny_tokenizer, prompt, reply, _Encoding(32, "left"))
    assert len(left) == 32
    assert left[0] == tiny_tokenizer.bos_token_id and left[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(left, skip_special_tokens=True).endswith(reply)
    # With a completion budget a long reply keeps its start and the prompt its end.
    long_reply = "stone " + " ".join(["cloud"] * 100)
    split = _encode(
        tiny_tokenizer, prompt, long_reply, _Encoding(32, "left", max_completion_length=20)
    )
    text = tiny_tokenizer.decode(split, skip_special_tokens=False)
    assert len(split) == 32
    assert "river<|eos|><|assistant|>\nstone cloud" in text
    short = _encode(tiny_tokenizer, prompt[:1], "hi", _Encoding(512, "left"))
    assert tiny_tokenizer.decode(short) == tiny_tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": "hi"}], tokenize=False
    )


@pytest.mark.skipif(not HH_DATA.exists(), reason="shared HH-RLHF sample not present")
def test_minilm_backbone_learns_a_handful_of_hh_pairs(tmp_path: Path) -> None:
    rows = read_jsonl(HH_DATA)
    pairs = [parse_hh_transcript_pair(next(rows), index=i) for i in range(1, 9)]
    config = RewardConfig(
        backbone="minilm",
        max_steps=6,
        learning_rate=2e-4,
        warmup=0.0,
        batch_size=8,  # one batch holds every pair, so each logged loss is on the same data
        max_length=64,
        max_completion_length=48,
        logging_steps=1,
        freeze_embeddings=True,
    )
    result = train_reward_model(pairs, config, output_dir=tmp_path / "rm")
    assert result.metrics["steps"] == 6
    assert result.metrics["loss_last"] < result.metrics["loss_first"] - 0.05
    ensemble = RewardEnsemble.load(tmp_path / "rm")
    assert evaluate_pairs(ensemble, pairs)["accuracy"] >= 0.75


def test_bootstrap_gives_each_member_its_own_seeded_resample() -> None:
    pairs = synthetic_pairs(40, seed=3)
    plain = EnsembleConfig(members=3)
    assert all(plain.member_pairs(k, pairs) == list(pairs) for k in range(3))
    bagged = EnsembleConfig(members=3, bootstrap=True)
    samples = [bagged.member_pairs(k, pairs) for k in range(3)]
    assert all(len(sample) == len(pairs) for sample in samples)
    assert all(set(map(id, sample)) <= set(map(id, pairs)) for sample in samples)
    # With replacement: about 1 - 1/e of the pairs appear, so each resample repeats some.
    assert all(len(set(map(id, sample))) < len(pairs) for sample in samples)
    assert len({tuple(map(id, sample)) for sample in samples}) == 3
    assert [id(p) for p in bagged.member_pairs(1, pairs)] == [id(p) for p in samples[1]]


def test_length_grouped_batches_carry_less_padding(tmp_path: Path, tiny_lm_path: Path) -> None:
    # Half the pairs are short, half long: shuffled batches mix them and pad
    # every short pair to the long length; grouped batches mostly do not.
    pairs = synthetic_pairs(64, seed=5)
    for pair in pairs[::2]:
        pair.prompt[0]["content"] += " " + " ".join(["stone"] * 40)
    tokens = {}
    for grouped in (False, True):
        config = RewardConfig(
            backbone=str(tiny_lm_path),
            epochs=1,
            batch_size=8,
            max_length=128,
            group_by_length=grouped,
            seed=0,
        )
        result = train_reward_model(pairs, config, output_dir=tmp_path / f"rm-{grouped}")
        assert result.metrics["steps"] == 8
        tokens[grouped] = result.metrics["tokens"]
    assert tokens[True] < 0.8 * tokens[False]


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16")
def test_bf16_mixed_precision_trains_on_cpu(tmp_path: Path, tiny_lm_path: Path) -> None:
    config = RewardConfig(
        backbone=str(tiny_lm_path),
        epochs=3,
        learning_rate=1e-3,
        batch_size=16,
        max_length=64,
        logging_steps=2,
        bf16=True,
    )
    result = train_reward_model(synthetic_pairs(96, seed=2), config, output_dir=tmp_path / "rm")
    assert result.metrics["loss_last"] < result.metrics["loss_first"] - 0.1
    ensemble = RewardEnsemble.load(tmp_path / "rm")
    assert evaluate_pairs(ensemble, synthetic_pairs(48, seed=3))["accuracy"] >= 0.8
