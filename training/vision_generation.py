"""Generation with images: K sampled answers per (conversation, images) prompt, three backends.

Step 2 of the multimodal loop (issue 12): the current vision-language policy answers questions
about images, K samples per prompt, and pairs of its answers go to annotators. The backends
mirror ``training.generation`` and return the same ``[n_prompts][k]`` completion texts:

- ``VisionTransformersGenerator``: ``model.generate`` through the model's processor, CPU or CUDA
  (the seeded sampling loop is ``training.generation.sample_completions``, shared with text);
- ``VisionVLLMGenerator``: vLLM's multimodal chat on the ``gpu`` queue (``pip install .[gpu]``);
- ``VisionOpenAICompatibleGenerator``: any ``/v1/chat/completions`` server that takes images,
  each image sent as an ``image_url`` part holding a ``data:`` URL.

A prompt is a ``VisionPrompt``: chat messages whose content is a string or TRL's vision parts
(``{"type": "image"}``, ``{"type": "text", "text": ...}``), and the PIL images those image parts
stand for, in order. Messages that hold no image part get one per image before the first user
turn's text, as the ``vision_pairs`` export writes them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from training.generation import (
    GenerationConfig,
    GenerationError,
    OpenAICompatibleGenerator,
    VLLMGenerator,
    resolve_device,
    sample_completions,
)

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class VisionPrompt:
    """One prompt: chat ``messages`` and the ``images`` its image parts refer to, in order."""

    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)


class VisionGenerator(Protocol):
    """Anything that samples K completions for each of a list of prompts with images."""

    def generate(self, prompts: list[VisionPrompt], config: GenerationConfig) -> list[list[str]]:
        """Return ``[n_prompts][config.k]`` completion texts, in prompt order."""
        ...


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") in ("image", "text") for p in content
    ):
        return [dict(p) for p in content]
    raise GenerationError(
        "message content must be a string or a list of {'type': 'image'|'text'} parts"
    )


def vision_messages(prompt: VisionPrompt) -> list[dict[str, Any]]:
    """The prompt's messages as TRL vision parts, with exactly one image part per image.

    Raises ``GenerationError`` when the messages name a different number of images than given.
    """
    messages = [{"role": m["role"], "content": _parts(m["content"])} for m in prompt.messages]
    named = sum(p["type"] == "image" for m in messages for p in m["content"])
    if named == 0 and prompt.images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise GenerationError("a prompt with images needs a user message to put them in")
        first_user["content"] = [{"type": "image"}] * len(prompt.images) + first_user["content"]
    elif named != len(prompt.images):
        raise GenerationError(
            f"the messages hold {named} image parts but {len(prompt.images)} images were given"
        )
    return messages


def image_data_url(image: Image.Image) -> str:
    """The image as a ``data:`` URL: JPEG stays JPEG (photos), anything else becomes lossless PNG."""
    out = io.BytesIO()
    if image.format == "JPEG":
        image.convert("RGB").save(out, format="JPEG", quality=95)
        mime = "image/jpeg"
    else:
        image.save(out, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(out.getvalue()).decode('ascii')}"


def openai_messages(prompt: VisionPrompt) -> list[dict[str, Any]]:
    """The prompt in OpenAI's chat format: image parts become ``image_url`` parts with data URLs."""
    images = iter(prompt.images)
    out = []
    for message in vision_messages(prompt):
        parts = [
            {"type": "image_url", "image_url": {"url": image_data_url(next(images))}}
            if part["type"] == "image"
            else {"type": "text", "text": part["text"]}
            for part in message["content"]
        ]
        out.append({"role": message["role"], "content": parts})
    return out


class VisionTransformersGenerator:
    """Sample with ``transformers`` ``generate`` through the model's processor (CPU or CUDA).

    ``model_ref`` is any ``AutoModelForImageTextToText`` id or path (``training.vision.load_vlm``).
    Reproducibility as for ``TransformersGenerator``: each call seeds a private copy of torch's RNG
    with ``config.seed``.
    """

    def __init__(self, model_ref: str | Path, device: str = "auto", *, dtype: str = "auto") -> None:
        from training.vision import load_vlm

        self.device = resolve_device(device)
        self.model, self.processor = load_vlm(model_ref, str(self.device), dtype=dtype)
        self.tokenizer = self.processor.tokenizer
        if not getattr(self.processor, "chat_template", None):
            raise GenerationError(
                f"{model_ref}: the processor has no chat template; prompts cannot be rendered"
            )

    def _encode(self, prompts: Sequence[VisionPrompt]) -> Any:
        texts = [
            str(
                self.processor.apply_chat_template(
                    vision_messages(p), tokenize=False, add_generation_prompt=True
                )
            )
            for p in prompts
        ]
        images = [list(p.images) for p in prompts]
        batch = self.processor(
            images=images if any(images) else None,
            text=texts,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=False,  # the chat template wrote BOS
        )
        if "pixel_values" in batch:
            # The processor returns fp32 pixels; a bf16 model wants its own dtype.
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        return batch

    def generate(self, prompts: list[VisionPrompt], config: GenerationConfig) -> list[list[str]]:
        """Sample ``config.k`` completions per prompt; shape ``[len(prompts)][k]``."""
        return sample_completions(
            self.model, self.tokenizer, self.device, prompts, self._encode, config
        )


class VisionVLLMGenerator:
    """Sample with vLLM's multimodal chat (GPU). Imported lazily: CPU installs do not ship it.

    Images go in as ``image_url`` parts with data URLs, the form vLLM's ``LLM.chat`` shares with
    its server; loading, seeding and ``SamplingParams(n=k)`` are ``VLLMGenerator``'s. Extra
    keyword arguments go to ``vllm.LLM`` (``gpu_memory_utilization``, ``max_model_len``,
    ``limit_mm_per_prompt``, ...).
    """

    def __init__(self, model_ref: str | Path, *, dtype: str = "auto", **llm_kwargs: Any) -> None:
        self.text = VLLMGenerator(model_ref, dtype=dtype, **llm_kwargs)

    def generate(self, prompts: list[VisionPrompt], config: GenerationConfig) -> list[list[str]]:
        """Sample ``config.k`` completions per prompt with one ``SamplingParams(n=k)``."""
        # LLM.chat takes content parts as they are; only the text generator's annotation is narrower.
        messages: list[Any] = [openai_messages(p) for p in prompts]
        return self.text.generate(messages, config)


class VisionOpenAICompatibleGenerator:
    """Sample from a ``/v1/chat/completions`` server that accepts images (vLLM, TGI, hosted APIs).

    The transport, retries, ``n=k`` top-ups and seeds are ``OpenAICompatibleGenerator``'s; only
    the messages differ (image parts as data URLs). Keyword arguments go to it.
    """

    def __init__(self, base_url: str, model: str, **kwargs: Any) -> None:
        self.client = OpenAICompatibleGenerator(base_url, model, **kwargs)

    def generate(self, prompts: list[VisionPrompt], config: GenerationConfig) -> list[list[str]]:
        """One request per prompt (``n=k``), the client's concurrency in flight; order is kept."""
        # The text client sends messages as they are; content parts are JSON like any other.
        messages: list[Any] = [openai_messages(p) for p in prompts]
        return self.client.generate(messages, config)


VisionBackend = Literal["transformers", "vllm", "openai"]


def make_vision_generator(
    backend: VisionBackend, model_ref: str | Path, **kwargs: Any
) -> VisionGenerator:
    """Build a vision backend by name, as ``training.generation.make_generator`` does for text.

    ``model_ref`` is a model id or directory for ``transformers``/``vllm`` and the served model
    name for ``openai`` (then ``base_url=`` is required).
    """
    if backend == "transformers":
        return VisionTransformersGenerator(model_ref, **kwargs)
    if backend == "vllm":
        return VisionVLLMGenerator(model_ref, **kwargs)
    if backend == "openai":
        if "base_url" not in kwargs:
            raise ValueError("the openai backend needs base_url=")
        return VisionOpenAICompatibleGenerator(model=str(model_ref), **kwargs)
    raise ValueError(f"unknown backend {backend!r}; expected transformers, vllm or openai")
