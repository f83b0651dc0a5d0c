"""Vision-language models: a tiny LLaVA built from a config, and any image-text-to-text checkpoint.

Tests, the CPU demo and the hallucination benchmark need a real vision-language model but can
download nothing, so ``build_tiny_vlm`` assembles a LLaVA-style model (a CLIP-like vision tower
on a small Llama) from configs, with the locally trained byte-level BPE tokenizer of
``training.models`` plus an ``<image>`` token, and saves it with its processor so that
``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained`` load it like any checkpoint.
Real users load LLaVA-1.5, Qwen2-VL, Idefics or Gemma 3 by id or path through ``load_vlm``.

What this machine taught (issue 12): the PIL image processor (``CLIPImageProcessorPil``) because
torchvision cannot sit beside the CPU torch here; the chat template writes newlines as
``{{ '\\n' }}``; with ``vision_feature_select_strategy="default"`` (the CLS feature dropped) the
processor must be told ``num_additional_image_tokens=1`` or it expands ``<image>`` into one token
more than there are features.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IMAGE_TOKEN = "<image>"

# Turns as in training.models.CHAT_TEMPLATE ("<|role|>\n content <|eos|>"), with content given as
# TRL's vision parts: {"type": "image"} becomes <image>, which the processor expands into one token
# per patch. String content is accepted too (a text-only turn). The rendered prompt with
# add_generation_prompt is a prefix of the rendered conversation, which TRL's DPO relies on.
VISION_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{{ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{{ '\\n' }}{% endif %}"
)


def scenes_corpus(n_scenes: int = 40, seed: int = 0) -> list[str]:
    """Questions, captions and answers of the synthetic shapes world: the tiny tokenizer's corpus."""
    from training import scenes

    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(n_scenes):
        scene = scenes.random_scene(rng)
        asked = scenes.questions(scene)
        lines += [q.text for q in asked] + scenes.captions(scene)
        for question in rng.sample(asked, min(4, len(asked))):
            try:
                lines.append(scenes.respond(scene, question, rng, n_true=2, n_false=1).text)
            except ValueError:  # a scene too small for this mix of claims
                continue
    return lines


def build_tiny_vlm(
    path: str | Path,
    *,
    image_size: int = 32,
    patch: int = 8,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    vision_hidden_size: int = 32,
    vision_layers: int = 1,
    max_positions: int = 256,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised LLaVA-style model with its processor and save both to ``path``.

    The vision tower is CLIP-like (``image_size`` px images cut in ``patch`` px patches, so one
    ``<image>`` becomes (image_size/patch)² tokens), the language model a Llama of ``layers``
    blocks, ``hidden_size`` wide. The tokenizer is ``training.models.build_tokenizer`` trained on
    ``corpus`` (default: ``scenes_corpus()``) plus the ``<image>`` token. ``image_mean`` and
    ``image_std`` (per RGB channel, in [0, 1]; default CLIP's) normalise the pixels: a mean at the
    images' background colour makes an empty patch zero, so a fresh tower's features are the
    shapes and not the constant background. Returns ``path``; reload with ``load_vlm(path)``.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from training.models import build_tokenizer

    if image_size % patch:
        raise ValueError(f"patch ({patch}) must divide image_size ({image_size})")
    tokens_per_image = (image_size // patch) ** 2
    if max_positions <= tokens_per_image:
        raise ValueError(f"max_positions must exceed the {tokens_per_image} tokens of one image")
    path = Path(path)
    tokenizer = build_tokenizer(
        list(corpus) if corpus is not None else scenes_corpus(),
        vocab_size=vocab_size,
        model_max_length=max_positions,
    )
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    # CLIP's normalisation unless the caller names another (the shapes world centres its light
    # background: under CLIP's mean every background patch looks alike).
    normalisation: dict[str, Any] = {}
    if image_mean is not None:
        normalisation["image_mean"] = list(image_mean)
    if image_std is not None:
        normalisation["image_std"] = list(image_std)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            **normalisation,
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS feature "default" drops (module docstring)
        image_token=IMAGE_TOKEN,
        chat_template=VISION_CHAT_TEMPLATE,
    )
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert isinstance(image_token, int)  # one token in, one id out
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch,
            projection_dim=vision_hidden_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=image_token,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return path


def vlm_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """bf16 on CUDA for ``"auto"`` (half the memory, the native dtype of recent checkpoints), else fp32."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16")
    return resolved


def load_vlm(
    model_ref: str | Path, device: str = "auto", *, dtype: str = "auto"
) -> tuple[Any, Any]:
    """Load any ``AutoModelForImageTextToText`` id or path with its ``AutoProcessor``, on ``device``.

    ``model_ref`` is trusted here: the web app validates refs before a job is queued, and a hub id
    is left to ``from_pretrained``. The processor's tokenizer gets a pad token when it has none
    (EOS), because batched generation and DPO pad. Returns ``(model, processor)``, model in eval mode.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.generation import resolve_device

    resolved = resolve_device(device)
    model: Any = AutoModelForImageTextToText.from_pretrained(
        str(model_ref), dtype=vlm_dtype(resolved, dtype)
    )
    processor = AutoProcessor.from_pretrained(str(model_ref))
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolved)
    model.eval()
    return model, processor


# Where the image encoder sits: LLaVA, Gemma 3 and Idefics 3 under `vision_tower`/`vision_model`
# (on the model or its inner `model`), Qwen2-VL and Qwen2.5-VL under `visual`.
_ENCODER_NAMES = ("vision_tower", "visual", "vision_model")


def image_encoder(model: Any) -> Any:
    """The image encoder module of a vision-language model; ValueError when none is found."""
    for owner in (model, getattr(model, "model", None)):
        for name in _ENCODER_NAMES:
            found = getattr(owner, name, None) if owner is not None else None
            if found is not None and hasattr(found, "parameters"):
                return found
    raise ValueError(f"no image encoder found on {type(model).__name__}")


def freeze_image_encoder(model: Any) -> int:
    """Stop the image encoder's weights from training; returns how many parameters it froze.

    LLaVA-RLHF and RLHF-V keep the vision encoder frozen during preference training. On the tiny
    LLaVA of the hallucination bench, training it along broke what the warm start had taught the
    projector to read: every DPO round then named more objects that are not in the picture.
    """
    frozen = 0
    for parameter in image_encoder(model).parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen
