"""Generation with images: K seeded samples per prompt from a tiny LLaVA on CPU, images reaching the
model, and the OpenAI-compatible client sending images as data URLs to a real local HTTP server."""

from __future__ import annotations

import base64
import importlib.util
import io
import random
from pathlib import Path

import pytest
from PIL import Image

from tests.training.test_generation import _choices, _FakeServer
from training import scenes
from training.generation import GenerationConfig, GenerationError
from training.vision import build_tiny_vlm
from training.vision_generation import (
    VisionOpenAICompatibleGenerator,
    VisionPrompt,
    VisionTransformersGenerator,
    VisionVLLMGenerator,
    make_vision_generator,
    vision_messages,
)


def _image(seed: int) -> Image.Image:
    return scenes.draw(scenes.random_scene(random.Random(seed)), size=64)


def _prompts() -> list[VisionPrompt]:
    return [
        VisionPrompt(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            [_image(i)],
        )
        for i, q in enumerate(["Describe the image.", "How many circles are there?"])
    ] + [
        # Plain string content: the image part is put before the first user turn's text.
        VisionPrompt(
            [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Is there a star in the image?"},
            ],
            [_image(7)],
        )
    ]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="module")
def generator(tiny_vlm: Path) -> VisionTransformersGenerator:
    return VisionTransformersGenerator(tiny_vlm, device="cpu")


def test_k_seeded_samples_per_prompt_with_images(generator: VisionTransformersGenerator) -> None:
    prompts = _prompts()
    config = GenerationConfig(k=3, max_new_tokens=6, seed=5, batch_size=2)
    first = generator.generate(prompts, config)
    assert [len(group) for group in first] == [3, 3, 3]
    assert len({text for group in first for text in group}) > 3
    assert generator.generate(prompts, config) == first
    assert generator.generate(prompts, GenerationConfig(k=3, max_new_tokens=6, seed=6)) != first


def test_the_image_reaches_the_model(generator: VisionTransformersGenerator) -> None:
    import torch

    # A random tiny model's next-token distribution is nearly flat, so sampled text rarely shows
    # the image's effect; its logits do. Same text, only the pixels differ.
    messages = _prompts()[0].messages
    red, blue = (VisionPrompt(messages, [Image.new("RGB", (32, 32), c)]) for c in ("red", "blue"))
    with torch.inference_mode():
        logits = [
            generator.model(**generator._encode(batch)).logits[:, -1]
            for batch in ([red, blue], [red])
        ]
    assert not torch.allclose(logits[0][0], logits[0][1])
    assert torch.allclose(logits[0][0], logits[1][0], atol=1e-5)


def test_messages_must_name_as_many_images_as_given() -> None:
    two_parts = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}],
        }
    ]
    with pytest.raises(GenerationError, match="2 image parts but 1 images"):
        vision_messages(VisionPrompt(two_parts, [_image(0)]))
    with pytest.raises(GenerationError, match="user message"):
        vision_messages(VisionPrompt([{"role": "system", "content": "hi"}], [_image(0)]))
    with pytest.raises(GenerationError, match="parts"):
        vision_messages(VisionPrompt([{"role": "user", "content": [{"type": "audio"}]}], []))
    (message,) = vision_messages(
        VisionPrompt([{"role": "user", "content": "What?"}], [_image(0)] * 2)
    )
    assert message["content"] == [
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": "What?"},
    ]


def test_openai_backend_sends_images_as_data_urls() -> None:
    prompts = _prompts()
    with _FakeServer(lambda body, _: (200, _choices(body))) as fake:
        result = VisionOpenAICompatibleGenerator(fake.url, "tiny-vlm", api_key="sk-v").generate(
            prompts, GenerationConfig(k=2, seed=3, max_new_tokens=7)
        )
    assert [len(group) for group in result] == [2, 2, 2]
    assert len(fake.requests) == 3
    by_text = {r["messages"][-1]["content"][-1]["text"]: r for r in fake.requests}
    request = by_text["Describe the image."]
    assert request["path"] == "/v1/chat/completions"
    assert (request["model"], request["n"], request["seed"], request["max_tokens"]) == (
        "tiny-vlm",
        2,
        3,
        7,
    )
    (user,) = request["messages"]
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": "Describe the image."}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.tobytes() == prompts[0].images[0].tobytes()  # PNG is lossless
    # The string-content prompt: system kept as text, the image put before the user's question.
    system, user = by_text["Is there a star in the image?"]["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}
    assert [p["type"] for p in user["content"]] == ["image_url", "text"]
    assert fake.headers[0]["Authorization"] == "Bearer sk-v"


def test_make_vision_generator(tiny_vlm: Path) -> None:
    with pytest.raises(ValueError, match="base_url"):
        make_vision_generator("openai", "tiny")
    with pytest.raises(ValueError, match="unknown backend"):
        make_vision_generator("tgi", "tiny")  # type: ignore[arg-type]
    assert isinstance(
        make_vision_generator("openai", "m", base_url="http://127.0.0.1:1"),
        VisionOpenAICompatibleGenerator,
    )
    assert isinstance(
        make_vision_generator("transformers", tiny_vlm, device="cpu"), VisionTransformersGenerator
    )


HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_backend_explains_how_to_install_it(tiny_vlm: Path) -> None:
    with pytest.raises(GenerationError, match=r"pip install \.\[gpu\]"):
        VisionVLLMGenerator(tiny_vlm)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM or not _cuda(), reason="needs vLLM and CUDA")
def test_vllm_backend_samples_k_seeded_with_images(tiny_vlm: Path) -> None:
    generator = VisionVLLMGenerator(
        tiny_vlm, gpu_memory_utilization=0.2, enforce_eager=True, max_model_len=256
    )
    config = GenerationConfig(k=3, max_new_tokens=8, seed=1)
    first = generator.generate(_prompts(), config)
    assert [len(group) for group in first] == [3, 3, 3]
    assert generator.generate(_prompts(), config) == first
