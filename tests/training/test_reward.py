"""Reward models learn a preference; ensembles disagree where they have seen no data."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.conftest import BAD, GOOD, far_pairs, synthetic_pairs
from training.artifacts import Progress, is_published, read_manifest
from training.data import (
    PreferencePair,
    parse_hh_transcript_pair,
    parse_preference_rows,
    read_jsonl,
)
from training.reward import (
    EnsembleConfig,
    EnsembleScores,
    RewardConfig,
    RewardEnsemble,
    cpu_has_fast_bf16,
    evaluate_pairs,
    train_reward_ensemble,
    train_reward_model,
)
from training.reward_encoding import Encoding, encode

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


def untrained_metrics(backbone: Path, pairs: list[PreferencePair]) -> dict[str, Any]:
    """Held-out metrics of the backbone with a fresh, seeded reward head: the "before" of training."""
    from transformers import set_seed

    from training.models import load_reward_backbone, load_tokenizer

    set_seed(0)
    model: Any = load_reward_backbone(str(backbone))
    untrained = RewardEnsemble(
        [model.eval()], [load_tokenizer(backbone)], [Encoding(64, "left")], "cpu"
    )
    return evaluate_pairs(untrained, pairs)


def test_loss_falls_and_held_out_accuracy_is_far_above_chance(
    trained: dict[str, Any], tiny_lm_path: Path
) -> None:
    metrics = trained["result"].metrics
    # The gap, not accuracy, shows the learning: the untrained head's tiny gaps
    # already rank 80% of these pairs right by chance, but its mean gap is 0.009
    # (measured), against 1.6 after training.
    before = untrained_metrics(tiny_lm_path, synthetic_pairs(64, seed=1))
    assert abs(before["mean_margin"]) < 0.3
    assert metrics["eval"]["mean_margin"] > before["mean_margin"] + 0.5
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


class TableEnsemble:
    """Two members whose rewards are looked up by completion text: ``table[text] = [r₀, r₁]``."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def __len__(self) -> int:
        return 2

    def score(self, prompts: Any, completions: Any, batch_size: int = 32) -> EnsembleScores:
        rows = [self.table[completion[-1]["content"]] for completion in completions]
        return EnsembleScores(np.array(rows, dtype=np.float64).T)


def test_evaluate_pairs_by_hand() -> None:
    ln3 = math.log(3)
    table = {"a": [2 * ln3, 0.0], "b": [0.0, 0.0], "c": [0.0, 0.0], "d": [ln3, ln3]}

    def pair(chosen: str, rejected: str, tie: bool = False) -> PreferencePair:
        return PreferencePair(
            [{"role": "user", "content": "q"}],
            [{"role": "assistant", "content": chosen}],
            [{"role": "assistant", "content": rejected}],
            tie=tie,
        )

    # Pair 1: mean gap +ln 3 (right, p = 0.75); pair 2: gap −ln 3 (wrong, p = 0.25); the tie is ignored.
    metrics = evaluate_pairs(
        TableEnsemble(table), [pair("a", "b"), pair("c", "d"), pair("a", "d", tie=True)], lam=2.0
    )
    assert metrics["n"] == 2
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["mean_margin"] == pytest.approx(0.0)
    # p = 0.75 twice and 0.25 twice with outcomes split evenly in each bin: |0.5 − 0.75| = 0.25.
    assert metrics["ece"] == pytest.approx(0.25)
    # The worst member scores "a" as 0: pair 1 becomes a tie (½), pair 2 stays wrong.
    assert metrics["accuracy_worst"] == pytest.approx(0.25)
    # mean − 2·std scores "a" as ln 3 − 2 ln 3 < 0: pair 1 flips too.
    assert metrics["accuracy_uncertainty_weighted"] == pytest.approx(0.0)
    # Member 0 ranks pair 1 right, member 1 ties it; both get pair 2 wrong.
    assert metrics["member_accuracy"] == pytest.approx([0.5, 0.25])
    # Only "a" has spread (population std ln 3), one of the four completions.
    assert metrics["mean_std"] == pytest.approx(ln3 / 4)


def margin_rows(n: int, seed: int, margin: float) -> list[dict[str, Any]]:
    """Export rows where annotators split evenly, but only the GOOD-preferring half is sure.

    Each synthetic pair appears twice: GOOD over BAD with ``margin``, and BAD
    over GOOD with margin 0. Without the margin the two cancel and the best
    Bradley–Terry gap is 0; with it, −log σ(Δ − m) − log σ(−Δ) is smallest at
    Δ = m / 2, so the model must learn to prefer GOOD.
    """
    rows = []
    for p in synthetic_pairs(n // 2, seed):
        rows.append(
            {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "margin": margin}
        )
        rows.append({"prompt": p.prompt, "chosen": p.rejected, "rejected": p.chosen, "margin": 0.0})
    return rows


def test_the_rows_margin_changes_what_the_reward_trainer_optimises(
    tmp_path: Path, tiny_lm_path: Path
) -> None:
    # Parsed as the CLI parses export rows, so the margin goes row -> pair -> TRL's loss.
    pairs = parse_preference_rows(margin_rows(64, seed=10, margin=4.0))
    assert {pair.margin for pair in pairs} == {0.0, 4.0}
    held_out = synthetic_pairs(48, seed=6)
    config = RewardConfig(
        backbone=str(tiny_lm_path), max_steps=16, batch_size=16, learning_rate=3e-3, warmup=0.0,
        max_length=64, logging_steps=1,
    )  # fmt: skip
    runs = {}
    for use_margin in (True, False):
        result = train_reward_model(
            pairs, replace(config, use_margin=use_margin), output_dir=tmp_path / str(use_margin)
        )
        evaluation = evaluate_pairs(RewardEnsemble.load(result.path), held_out)
        runs[use_margin] = (result.metrics, evaluation)
    (with_metrics, with_margin), (without_metrics, without_margin) = runs[True], runs[False]
    # Step 1, before any update (gaps ≈ 0): log 2 without margins; the margin
    # rows cost log(1 + e⁴) ≈ 4.02 each with them.
    assert without_metrics["loss_first"] == pytest.approx(math.log(2), abs=0.02)
    assert with_metrics["loss_first"] > math.log(2) + 1.0
    # Dropped margins: the contradicting labels cancel (measured |gap| ≤ 0.01).
    assert abs(without_margin["mean_margin"]) < 0.1
    # Kept margins: every held-out pair prefers GOOD, with a gap heading for
    # m / 2 = 2 (measured 0.95 to 1.6 after 16 steps, seeds 0-3).
    assert with_margin["accuracy"] == 1.0
    assert 0.5 < with_margin["mean_margin"] < 3.0


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
    left = encode(tiny_tokenizer, prompt, reply, Encoding(32, "left"))
    assert len(left) == 32
    assert left[0] == tiny_tokenizer.bos_token_id and left[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(left, skip_special_tokens=True).endswith(reply)
    # With a completion budget a long reply keeps its start and the prompt its end.
    long_reply = "stone " + " ".join(["cloud"] * 100)
    split = encode(
        tiny_tokenizer, prompt, long_reply, Encoding(32, "left", max_completion_length=20)
    )
    text = tiny_tokenizer.decode(split, skip_special_tokens=False)
    assert len(split) == 32
    assert "river<|eos|><|assistant|>\nstone cloud" in text
    short = encode(tiny_tokenizer, prompt[:1], "hi", Encoding(512, "left"))
    assert tiny_tokenizer.decode(short) == tiny_tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": "hi"}], tokenize=False
    )


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
