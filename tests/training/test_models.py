"""Tokenizers and models that need no hub: built, saved, reloaded, usable by TRL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from training.models import (
    CHAT_TEMPLATE,
    TinyModelConfig,
    build_tiny_causal_lm,
    load_reward_backbone,
    load_tokenizer,
    minilm_path,
)

CHAT = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]


def test_tokenizer_has_special_tokens_and_a_prefix_consistent_chat_template(
    tiny_tokenizer: Any,
) -> None:
    tok = tiny_tokenizer
    assert {tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token} == {
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
        "<|unk|>",
    }
    assert tok.chat_template == CHAT_TEMPLATE
    full = tok.apply_chat_template(CHAT, tokenize=False)
    prompt = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt)
    assert full.endswith("hi there<|eos|>")
    # Byte-level BPE round-trips text it never saw, accents and all.
    text = "Zébulon ☃ 42"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_tokenizer_reloads_from_disk_with_template(tiny_dir: Path, tiny_tokenizer: Any) -> None:
    reloaded = AutoTokenizer.from_pretrained(str(tiny_dir / "tokenizer"))
    assert reloaded.apply_chat_template(CHAT, tokenize=False) == tiny_tokenizer.apply_chat_template(
        CHAT, tokenize=False
    )
    assert reloaded.pad_token_id == tiny_tokenizer.pad_token_id


def test_tiny_models_reload_with_identical_outputs(
    tiny_lm_path: Path, tiny_rm_path: Path, tiny_tokenizer: Any
) -> None:
    ids = torch.tensor([tiny_tokenizer.apply_chat_template(CHAT, tokenize=True)["input_ids"]])
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_lm_path)).eval()
    assert lm.config.hidden_size == 32 and lm.config.num_hidden_layers == 2
    assert lm(ids).logits.shape == (1, ids.shape[1], len(tiny_tokenizer))
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_rm_path)).eval()
    assert rm.config.num_labels == 1
    assert rm.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert (tiny_rm_path / "tokenizer_config.json").exists()
    rebuilt = load_reward_backbone(tiny_rm_path).eval()
    with torch.no_grad():
        assert torch.equal(rm(ids).logits, rebuilt(ids).logits)


def test_same_seed_same_weights(tiny_tokenizer: Any) -> None:
    config = TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate=32, seed=3)
    a, b = (
        build_tiny_causal_lm(tiny_tokenizer, config),
        build_tiny_causal_lm(tiny_tokenizer, config),
    )
    c = build_tiny_causal_lm(
        tiny_tokenizer, TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate=32, seed=4)
    )
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


def test_heads_must_divide_hidden_size() -> None:
    with pytest.raises(ValueError, match="divide"):
        TinyModelConfig(hidden_size=30, heads=4)


def test_causal_lm_checkpoint_loads_as_reward_backbone(tiny_lm_path: Path) -> None:
    model = load_reward_backbone(tiny_lm_path)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.num_labels == 1
    assert model.config.pad_token_id is not None
    assert next(model.parameters()).dtype == torch.float32


def test_minilm_loads_offline_as_an_encoder_reward_backbone() -> None:
    path = minilm_path()
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    tokenizer = load_tokenizer(path)
    # MiniLM has no EOS and no chat template: reward training must pre-tokenize for it.
    assert tokenizer.eos_token is None
    assert not getattr(tokenizer, "chat_template", None)
    assert tokenizer.pad_token == "[PAD]"
    # Its sentence-transformers config declares mean pooling, so that is what it gets by default.
    assert type(load_reward_backbone(path)).__name__ == "MeanPooledBertForSequenceClassification"
    model = load_reward_backbone(path, mean_pooling=False).eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    batch = tokenizer(["a kind reply", "a rude reply"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 1)
    import training.models

    assert training.models.MINILM_PATH == path


def test_mean_pooled_minilm_scores_the_masked_mean_and_reloads_with_it(tmp_path: Path) -> None:
    path = minilm_path()
    tokenizer = load_tokenizer(path)
    model = load_reward_backbone(path, mean_pooling=True).eval()
    assert model.config.tandem_mean_pooling is True
    texts = ["hi", "a much longer reply that forces padding on the first one"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = model(**batch).logits[:, 0]
        # By hand: the classifier applied to the mean of the real tokens' final hidden states.
        hidden = model.base_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = model.classifier((hidden * mask).sum(1) / mask.sum(1))[:, 0]
        alone = model(**tokenizer(texts[:1], return_tensors="pt")).logits[0, 0]
    assert torch.allclose(scores, by_hand, atol=1e-5)
    # Padding next to a longer text leaves a score unchanged.
    assert torch.allclose(scores[0], alone, atol=1e-5)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_reward_backbone(tmp_path).eval()
    assert type(reloaded).__name__ == "MeanPooledBertForSequenceClassification"
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits[:, 0], scores, atol=1e-5)


def test_mean_pooling_refuses_a_decoder_with_a_clear_error(tiny_lm_path: Path) -> None:
    with pytest.raises(ValueError, match="mean pooling needs an encoder"):
        load_reward_backbone(tiny_lm_path, mean_pooling=True)
