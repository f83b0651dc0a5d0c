"""Dense DPO (RLHF-V): the weights of a correction's changed tokens, the loss by hand, training."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from training.artifacts import read_manifest
from training.dense_dpo import (
    DenseDPOConfig,
    changed_token_weights,
    dense_dpo_loss,
    encode_correction,
    pair_token_weights,
    sequence_logps,
    token_logps,
    train_dense_dpo,
)
from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer
from training.scenes import captions, claims_of, facts, questions, random_scene, respond

# --- weights ------------------------------------------------------------------------------------


def test_a_replaced_token_weighs_gamma_the_rest_one() -> None:
    assert changed_token_weights([1, 2, 3, 4], [1, 2, 9, 4], 3.0) == [1, 1, 3, 1]


def test_inserted_tokens_weigh_gamma_and_deleted_ones_weigh_on_the_original() -> None:
    assert changed_token_weights([1, 2, 4], [1, 2, 7, 8, 4], 3.0) == [1, 1, 3, 3, 1]
    corrected, original = pair_token_weights([1, 2, 3, 4], [1, 4], 5.0)
    assert corrected == [1, 1]
    assert original == [1, 5, 5, 1]


def test_unchanged_text_and_gamma_one_give_all_ones() -> None:
    assert changed_token_weights([5, 6, 7], [5, 6, 7], 3.0) == [1, 1, 1]
    assert changed_token_weights([5, 6, 7], [5, 9, 7, 8], 1.0) == [1, 1, 1, 1]


def test_frequent_tokens_are_not_junk() -> None:
    # difflib's autojunk would drop a token seen in > 1% of a 200+ token sequence from matching,
    # marking unchanged text as changed; the weights must see only the real edit.
    original = [7] * 250 + [1]
    corrected = [7] * 250 + [2]
    assert changed_token_weights(original, corrected, 3.0) == [1] * 250 + [3]


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan")])
def test_gamma_must_be_positive(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        changed_token_weights([1], [2], gamma)


# --- the loss against numbers worked out by hand ------------------------------------------------


def test_token_logps_shift_by_one_and_ignore_masked_labels() -> None:
    # Vocabulary of 2. Position 0 predicts the label at 1, position 1 the label at 2.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    out = token_logps(logits, labels)
    # log softmax([0, 0])[1] = log 1/2; log softmax([log 3, 0])[0] = log 3/4.
    assert out[0].tolist() == pytest.approx([0.0, math.log(0.5), math.log(0.75)])
    masked = token_logps(logits, torch.tensor([[-100, -100, 0]]))
    assert masked[0].tolist() == pytest.approx([0.0, 0.0, math.log(0.75)])


# One pair, three positions. Chosen weights [1, 3, 0]: the second token was corrected, the third
# is padding. Rejected weights [1, 1, 3]: its last token is the hallucination.
POLICY_CHOSEN = torch.tensor([[-1.0, -2.0, -0.5]])
REF_CHOSEN = torch.tensor([[-1.0, -1.0, -1.0]])
POLICY_REJECTED = torch.tensor([[-0.5, -3.0, -1.0]])
REF_REJECTED = torch.tensor([[-1.0, -1.0, -2.0]])
W_CHOSEN = torch.tensor([[1.0, 3.0, 0.0]])
W_REJECTED = torch.tensor([[1.0, 1.0, 3.0]])


def _loss(**kwargs: Any) -> Any:
    return dense_dpo_loss(
        POLICY_CHOSEN,
        POLICY_REJECTED,
        REF_CHOSEN,
        REF_REJECTED,
        W_CHOSEN,
        W_REJECTED,
        **kwargs,
    )


def test_dense_dpo_loss_by_hand() -> None:
    # ℓθ(y_w) = −1 + 3·(−2) = −7;   ℓref(y_w) = −1 + 3·(−1) = −4;   ratio_w = −3
    # ℓθ(y_l) = −0.5 − 3 + 3·(−1) = −6.5;   ℓref(y_l) = −1 − 1 + 3·(−2) = −8;   ratio_l = 1.5
    # β = 0.5: z = 0.5·(−3 − 1.5) = −2.25; loss = −log σ(−2.25) = log(1 + e^2.25) ≈ 2.35021
    out = _loss(beta=0.5)
    assert float(out.loss) == pytest.approx(math.log1p(math.exp(2.25)))
    assert float(out.loss) == pytest.approx(2.35021, abs=1e-5)
    assert float(out.chosen_rewards[0]) == pytest.approx(-1.5)
    assert float(out.rejected_rewards[0]) == pytest.approx(0.75)


def test_normalized_dense_dpo_loss_by_hand() -> None:
    # RLHF-V's N: chosen weights sum to 4, rejected to 5.
    # ratio_w = −7/4 − (−4/4) = −0.75;   ratio_l = −6.5/5 − (−8/5) = 0.3
    # β = 0.5: z = 0.5·(−0.75 − 0.3) = −0.525; loss = log(1 + e^0.525) ≈ 0.98971
    out = _loss(beta=0.5, normalize=True)
    assert float(out.loss) == pytest.approx(math.log1p(math.exp(0.525)))
    assert float(out.loss) == pytest.approx(0.98971, abs=1e-5)


def test_gamma_one_is_plain_dpo() -> None:
    generator = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand((4, 6), generator=generator) * 3 for _ in range(4))
    mask = torch.ones((4, 6))
    mask[1, 4:] = 0  # padding
    weights = [changed_token_weights(list(range(6)), [0, 9, 2, 3, 8, 5], 1.0)] * 4
    ones = torch.tensor(weights) * mask
    out = dense_dpo_loss(pc, pr, rc, rr, ones, ones, beta=0.1)
    # DPO on summed log-probabilities, the way TRL computes it (Rafailov et al. 2023, Eq. 7).
    plain = -F.logsigmoid(0.1 * (((pc - rc) * mask).sum(-1) - ((pr - rr) * mask).sum(-1))).mean()
    assert float(out.loss) == pytest.approx(float(plain), rel=1e-6)
    # With γ = 3 on changed tokens the same numbers give a different loss.
    dense = (
        torch.tensor([changed_token_weights(list(range(6)), [0, 9, 2, 3, 8, 5], 3.0)] * 4) * mask
    )
    assert float(dense_dpo_loss(pc, pr, rc, rr, dense, dense, beta=0.1).loss) != pytest.approx(
        float(plain)
    )


def test_sequence_logps_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        sequence_logps(torch.zeros((2, 3)), torch.zeros((2, 4)))


# --- training on corrections from the synthetic world --------------------------------------------


def _correct(scene: Any, text: str, rng: random.Random) -> str:
    """The oracle annotator's correction: each false claim becomes a true one of its category."""
    true_by_category = facts(scene)
    out = text
    for claim in sorted(claims_of(scene, text), reverse=True):
        if claim.true:
            continue
        options = [f for f in true_by_category.get(claim.category, []) if f not in out]
        replacement = rng.choice(options) if options else ""
        out = (out[: claim.start] + replacement + out[claim.end :]).replace("  ", " ").strip()
    return out


def correction_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        scene = random_scene(rng, max_items=4)
        question = rng.choice(questions(scene)[:1] + questions(scene)[6:])
        try:
            original = respond(scene, question, rng, n_true=1, n_false=1)
        except ValueError:
            continue
        corrected = _correct(scene, original.text, rng)
        prompt = " ".join(captions(scene)) + " " + question.text
        rows.append({"prompt": prompt, "chosen": corrected, "rejected": original.text})
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rows = correction_rows(16, seed=3)
    corpus = [r["prompt"] + " " + r["chosen"] + " " + r["rejected"] for r in rows] * 3
    base = tmp_path_factory.mktemp("dense")
    tokenizer = build_tokenizer(corpus, vocab_size=600, model_max_length=256)
    config = TinyModelConfig(hidden_size=32, layers=2, heads=4, intermediate=64, max_positions=256)
    build_tiny_causal_lm(tokenizer, config, path=base / "pi0")
    return {"rows": rows, "tokenizer": tokenizer, "pi0": base / "pi0", "root": base / "runs"}


def test_encoding_weights_only_the_corrected_completion_tokens(world: dict[str, Any]) -> None:
    tokenizer, row = world["tokenizer"], world["rows"][0]
    item = encode_correction(tokenizer, row, gamma=3.0, max_length=256)
    prompt_len = item.chosen_labels.count(-100)
    assert prompt_len == item.rejected_labels.count(-100) > 0
    assert item.chosen_ids[:prompt_len] == item.rejected_ids[:prompt_len]
    assert set(item.chosen_weights[:prompt_len]) == {0.0}
    completion_weights = item.chosen_weights[prompt_len:]
    assert 3.0 in completion_weights and 1.0 in completion_weights
    assert item.chosen_ids[-1] == tokenizer.eos_token_id
    # The weighted tokens, decoded, are inside the text the annotator wrote.
    changed = [t for t, w in zip(item.chosen_ids, item.chosen_weights, strict=True) if w == 3.0]
    assert tokenizer.decode(changed).strip()[:4] in row["chosen"]
    short = encode_correction(tokenizer, row, gamma=3.0, max_length=40)
    assert len(short.chosen_ids) <= 40 and len(short.rejected_ids) <= 40


def test_bad_rows_name_the_row_and_field(world: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"row 2: 'chosen'"):
        encode_correction(
            world["tokenizer"], {"prompt": "q", "rejected": "x"}, gamma=3, max_length=64, index=2
        )
    with pytest.raises(ValueError, match=r"row 1: 'prompt'"):
        encode_correction(
            world["tokenizer"],
            {"prompt": 5, "chosen": "a", "rejected": "b"},
            gamma=3,
            max_length=64,
        )


def _margins(model_path: Path, rows: list[dict[str, Any]], tokenizer: Any) -> torch.Tensor:
    """log π(corrected) − log π(original) per row, unweighted, under the model at model_path."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path)).eval()
    out = []
    with torch.no_grad():
        for row in rows:
            item = encode_correction(tokenizer, row, gamma=1.0, max_length=256)
            sums = []
            for ids, labels in (
                (item.chosen_ids, item.chosen_labels),
                (item.rejected_ids, item.rejected_labels),
            ):
                logits = model(input_ids=torch.tensor([ids])).logits
                sums.append(float(token_logps(logits, torch.tensor([labels])).sum()))
            out.append(sums[0] - sums[1])
    return torch.tensor(out)


def test_training_moves_the_policy_toward_the_corrections(world: dict[str, Any]) -> None:
    rows = world["rows"] + [{**world["rows"][0], "chosen": world["rows"][0]["rejected"]}]
    config = DenseDPOConfig(
        learning_rate=3e-3, epochs=8, batch_size=8, beta=0.1, gamma=3.0, max_length=256
    )
    result = train_dense_dpo(
        rows,
        config,
        policy_ref=world["pi0"],
        reference_ref=world["pi0"],
        root=world["root"],
        name="d1",
    )
    metrics = result.metrics
    assert metrics["pairs"] == 16 and metrics["skipped_unchanged"] == 1
    assert metrics["loss_final"] < metrics["loss_first"]
    assert read_manifest(result.path).kind == "policy-dense-dpo"
    before = _margins(world["pi0"], world["rows"], world["tokenizer"])
    after = _margins(result.path, world["rows"], world["tokenizer"])
    gain = after - before
    # The trained policy prefers each correction over its original more than π_0 did.
    assert float((gain > 0).float().mean()) >= 0.9, gain.tolist()
    assert float(gain.mean()) > 1.0, gain.tolist()


def test_training_refuses_rows_without_any_change(world: dict[str, Any]) -> None:
    same = [{"prompt": "q", "chosen": "There is a star.", "rejected": "There is a star."}]
    with pytest.raises(ValueError, match="no corrections"):
        train_dense_dpo(
            same,
            DenseDPOConfig(max_steps=1),
            policy_ref=world["pi0"],
            reference_ref=world["pi0"],
            root=world["root"],
            name="none",
        )
