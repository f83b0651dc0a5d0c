"""Generation backends: K seeded samples per prompt on CPU, and the OpenAI-compatible client over real HTTP."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.training.conftest_policy import tiny_policy_dir  # noqa: F401  (fixture)
from training.generation import (
    GenerationConfig,
    GenerationError,
    OpenAICompatibleGenerator,
    TransformersGenerator,
    VLLMGenerator,
    config_help,
    make_generator,
)

PROMPTS = [
    [{"role": "user", "content": "tell me about cats"}],
    [{"role": "user", "content": "tell me about tea"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about snow"}],
]


@pytest.fixture(scope="module")
def generator(tiny_policy_dir: Path) -> TransformersGenerator:  # noqa: F811
    return TransformersGenerator(tiny_policy_dir, device="cpu")


def test_k_samples_per_prompt_reproducible_by_seed(generator: TransformersGenerator) -> None:
    config = GenerationConfig(k=3, max_new_tokens=8, seed=11, batch_size=2)
    first = generator.generate(PROMPTS, config)
    assert len(first) == len(PROMPTS)
    assert all(len(group) == 3 and all(isinstance(t, str) for t in group) for group in first)
    # A random model samples different text each time within one call...
    assert len({text for group in first for text in group}) > 3
    # ...the same seed reproduces every sample, another seed does not.
    assert generator.generate(PROMPTS, config) == first
    assert (
        generator.generate(PROMPTS, GenerationConfig(k=3, max_new_tokens=8, seed=12, batch_size=2))
        != first
    )


def test_generation_leaves_the_global_rng_alone(generator: TransformersGenerator) -> None:
    import torch

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generator.generate(PROMPTS[:1], GenerationConfig(k=2, max_new_tokens=4))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_returns_k_identical_completions(generator: TransformersGenerator) -> None:
    (group,) = generator.generate(
        PROMPTS[:1], GenerationConfig(k=3, temperature=0.0, max_new_tokens=6)
    )
    assert len(group) == 3 and len(set(group)) == 1


def test_config_validation_and_help() -> None:
    with pytest.raises(ValueError):
        GenerationConfig(k=0)
    with pytest.raises(ValueError):
        GenerationConfig(top_p=0.0)
    assert set(config_help()) == {
        "k",
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
        "batch_size",
    }
    assert all(text for text in config_help().values())


class _FakeServer:
    """An OpenAI-style /v1/chat/completions endpoint on 127.0.0.1 with scripted replies."""

    def __init__(self, reply: Callable[[dict[str, Any], int], tuple[int, Any]]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                outer.headers.append(dict(self.headers))
                status, payload = reply(body, len(outer.requests))
                data = (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _choices(body: dict[str, Any], count: int | None = None) -> dict[str, Any]:
    n = body["n"] if count is None else count
    last = body["messages"][-1]["content"]
    return {
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f" {last}#{body['seed']}.{i} "},
            }
            for i in range(n)
        ]
    }


@pytest.fixture
def server() -> Iterator[Callable[..., _FakeServer]]:
    started: list[_FakeServer] = []

    def start(reply: Callable[[dict[str, Any], int], tuple[int, Any]]) -> _FakeServer:
        fake = _FakeServer(reply).__enter__()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.__exit__(None, None, None)


def test_openai_backend_posts_n_k_and_keeps_prompt_order(
    server: Callable[..., _FakeServer],
) -> None:
    fake = server(lambda body, _: (200, _choices(body)))
    generator = OpenAICompatibleGenerator(
        fake.url + "/v1", "tiny", api_key="sk-test", concurrency=2
    )
    config = GenerationConfig(k=3, temperature=0.7, top_p=0.9, max_new_tokens=5, seed=4)
    result = generator.generate(PROMPTS, config)
    assert result == [[f"{p[-1]['content']}#4.{i}" for i in range(3)] for p in PROMPTS]
    assert len(fake.requests) == 3
    request = fake.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert (request["model"], request["n"], request["max_tokens"], request["seed"]) == (
        "tiny",
        3,
        5,
        4,
    )
    assert (request["temperature"], request["top_p"]) == (0.7, 0.9)
    assert {json.dumps(r["messages"]) for r in fake.requests} == {json.dumps(p) for p in PROMPTS}
    assert fake.headers[0]["Authorization"] == "Bearer sk-test"


def test_openai_backend_tops_up_when_the_server_ignores_n(
    server: Callable[..., _FakeServer],
) -> None:
    fake = server(lambda body, _: (200, _choices(body, count=1)))
    (group,) = OpenAICompatibleGenerator(fake.url, "tiny").generate(
        PROMPTS[:1], GenerationConfig(k=3, seed=9)
    )
    assert group == ["tell me about cats#9.0", "tell me about cats#10.0", "tell me about cats#11.0"]
    assert [r["n"] for r in fake.requests] == [3, 2, 1]
    assert "Authorization" not in fake.headers[0]


def test_openai_backend_retries_transient_errors(server: Callable[..., _FakeServer]) -> None:
    fake = server(lambda body, count: (503, "busy") if count == 1 else (200, _choices(body)))
    result = OpenAICompatibleGenerator(fake.url, "tiny", max_retries=1).generate(
        PROMPTS[:1], GenerationConfig(k=2)
    )
    assert len(result[0]) == 2 and len(fake.requests) == 2


def test_openai_backend_reports_client_errors_and_bad_replies(
    server: Callable[..., _FakeServer],
) -> None:
    fake = server(lambda body, _: (400, {"error": {"message": "model 'tiny' not found"}}))
    with pytest.raises(GenerationError, match=r"HTTP 400.*not found"):
        OpenAICompatibleGenerator(fake.url, "tiny").generate(PROMPTS[:1], GenerationConfig(k=1))
    assert len(fake.requests) == 1  # a 400 is not retried
    odd = server(lambda body, _: (200, {"unexpected": True}))
    with pytest.raises(GenerationError, match="choices"):
        OpenAICompatibleGenerator(odd.url, "tiny").generate(PROMPTS[:1], GenerationConfig(k=1))


def test_openai_backend_reports_an_unreachable_server() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    generator = OpenAICompatibleGenerator(
        f"http://127.0.0.1:{port}", "tiny", max_retries=0, timeout_s=2
    )
    with pytest.raises(GenerationError, match="cannot reach"):
        generator.generate(PROMPTS[:1], GenerationConfig(k=1))


def test_make_generator_checks_its_arguments(tiny_policy_dir: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="base_url"):
        make_generator("openai", "tiny")
    with pytest.raises(ValueError, match="unknown backend"):
        make_generator("tgi", "tiny")  # type: ignore[arg-type]
    assert isinstance(
        make_generator("openai", "tiny", base_url="http://127.0.0.1:1"), OpenAICompatibleGenerator
    )
    assert isinstance(
        make_generator("transformers", tiny_policy_dir, device="cpu"), TransformersGenerator
    )


HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_backend_explains_how_to_install_it(tiny_policy_dir: Path) -> None:  # noqa: F811
    with pytest.raises(GenerationError, match=r"pip install \.\[gpu\]"):
        VLLMGenerator(tiny_policy_dir)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM or not _cuda(), reason="needs vLLM and CUDA")
def test_vllm_backend_samples_k_seeded(tiny_policy_dir: Path) -> None:  # noqa: F811
    generator = VLLMGenerator(tiny_policy_dir, gpu_memory_utilization=0.2, enforce_eager=True)
    config = GenerationConfig(k=3, max_new_tokens=8, seed=1)
    first = generator.generate(PROMPTS, config)
    assert [len(group) for group in first] == [3, 3, 3]
    assert generator.generate(PROMPTS, config) == first
