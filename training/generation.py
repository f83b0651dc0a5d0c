"""Generation backends: K sampled completions per prompt, behind one interface.

Step 2 of the online loop (DESIGN.md, "The online loop"): the current policy
samples K responses per prompt, the reward ensemble scores them and pair
selection (``training.selection``) decides which pairs humans see. The
recipe follows RLHFlow's Online-RLHF ("RLHF Workflow: From Reward Modeling to
Online RLHF", Dong et al. 2024): K samples per prompt at temperature ~1, then
best-vs-worst pairs.

Three backends, one ``Generator`` protocol:

- ``TransformersGenerator``: ``model.generate`` on CPU or one GPU; what tests
  and CPU workers use.
- ``VLLMGenerator``: vLLM on the ``gpu`` queue (``pip install .[gpu]``).
- ``OpenAICompatibleGenerator``: any server speaking ``/v1/chat/completions``
  (vLLM's server, TGI, llama.cpp, a hosted API), over plain HTTP.

Every backend returns ``list[list[str]]`` of shape ``[n_prompts][k]``: the
completion text only (no prompt, no special tokens).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from training.data import Message

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


P = TypeVar("P")


class GenerationError(RuntimeError):
    """A backend could not produce completions (server error, bad reply, missing package)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample candidates for one round. Field ``help`` texts feed the CLI."""

    k: int = field(
        default=4,
        metadata={
            "min": 1,
            "max": 64,
            "help": "Completions sampled per prompt (K in Online-RLHF; pairs are chosen among them).",
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "min": 0,
            "max": 10,
            "help": "Sampling temperature; 0 means greedy (then all K completions are identical).",
        },
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "min": 0.001,
            "max": 1,
            "help": "Nucleus sampling: keep the smallest token set whose probability reaches top_p.",
        },
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"min": 1, "max": 4096, "help": "Maximum tokens generated per completion."},
    )
    seed: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": 4294967295,
            "help": "Sampling seed: the same seed, model and prompts give the same samples on CPU.",
        },
    )
    batch_size: int = field(
        default=16,
        metadata={
            "min": 1,
            "max": 1024,
            "help": "Prompts per generate() call (transformers backend); each yields K sequences.",
        },
    )

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


def config_help() -> dict[str, str]:
    """Field name -> help text of ``GenerationConfig`` (the CLI builds its options from this)."""
    return {f.name: f.metadata["help"] for f in fields(GenerationConfig)}


class Generator(Protocol):
    """Anything that samples K completions for each of a list of chat prompts."""

    def generate(self, prompts: list[list[Message]], config: GenerationConfig) -> list[list[str]]:
        """Return ``[n_prompts][config.k]`` completion texts, in prompt order."""
        ...


def set_cpu_threads() -> None:
    """Cap torch's intra-op threads on CPU workers.

    Celery runs several jobs per host; letting each torch grab every core makes
    them fight. ``TANDEM_CPU_THREADS`` overrides the default of 2.
    """
    import torch

    wanted = int(os.environ.get("TANDEM_CPU_THREADS", "2"))
    torch.set_num_threads(max(1, min(wanted, os.cpu_count() or 1)))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cpu":
        set_cpu_threads()
    return resolved


class TransformersGenerator:
    """Sample with ``transformers`` ``generate``: batched, left-padded, through the chat template.

    ``model_ref`` is a directory written by ``save_pretrained`` (a published
    policy run) or an already loaded causal LM, in which case ``tokenizer``
    must be given too. Reproducibility: each ``generate`` call seeds a private
    copy of torch's RNG with ``config.seed``, so the same seed, model, prompts
    and batch size give the same samples on CPU (on CUDA, kernels may still
    differ in the last bits) and the caller's global RNG is left untouched.
    """

    def __init__(
        self,
        model_ref: str | Path | PreTrainedModel,
        device: str = "auto",
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dtype: str = "auto",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(device)
        if isinstance(model_ref, str | Path):
            torch_dtype: Any = torch.float32
            if dtype == "auto":
                # bf16 halves memory and is the native training dtype on GPUs; CPUs stay in fp32.
                torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            elif dtype != "float32":
                torch_dtype = getattr(torch, dtype)
            self.model: Any = AutoModelForCausalLM.from_pretrained(
                str(model_ref), dtype=torch_dtype
            )
            self.tokenizer: Any = tokenizer or AutoTokenizer.from_pretrained(str(model_ref))
        else:
            if tokenizer is None:
                raise ValueError("pass tokenizer= together with an already loaded model")
            self.model, self.tokenizer = model_ref, tokenizer
        self.model.to(self.device)
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _prompt_texts(self, prompts: Sequence[list[Message]]) -> list[str]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError(
                "the tokenizer has no chat template; chat prompts cannot be rendered"
            )
        return [
            str(
                self.tokenizer.apply_chat_template(
                    list(p), tokenize=False, add_generation_prompt=True
                )
            )
            for p in prompts
        ]

    def _encode(self, prompts: Sequence[list[Message]]) -> Any:
        # The chat template already wrote BOS and role markers.
        return self.tokenizer(
            self._prompt_texts(prompts),
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )

    def generate(self, prompts: list[list[Message]], config: GenerationConfig) -> list[list[str]]:
        """Sample ``config.k`` completions per prompt; shape ``[len(prompts)][k]``."""
        return sample_completions(
            self.model, self.tokenizer, self.device, prompts, self._encode, config
        )


def sample_completions(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    prompts: Sequence[P],
    encode: Callable[[Sequence[P]], Any],
    config: GenerationConfig,
) -> list[list[str]]:
    """The seeded K-sample loop of the transformers backends, text and vision alike.

    ``encode(chunk)`` returns one batch of model inputs (``input_ids`` left-padded, so that every
    row's last real token sits at the same position and generation appends to the right end;
    plus ``pixel_values`` and the like for a vision model). A private copy of torch's RNG is
    seeded with ``config.seed``: the same seed, model, prompts and batch size give the same
    samples on CPU, and the caller's global RNG is left untouched. Shape ``[len(prompts)][k]``.
    """
    import torch

    greedy = config.temperature == 0
    devices = [device] if device.type == "cuda" else []
    sampling: dict[str, Any] = (
        {"do_sample": False, "num_return_sequences": 1}
        if greedy
        else {
            "do_sample": True,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": 0,
            "num_return_sequences": config.k,
        }
    )
    per_prompt = 1 if greedy else config.k
    results: list[list[str]] = []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(config.seed)
        for start in range(0, len(prompts), config.batch_size):
            chunk = prompts[start : start + config.batch_size]
            batch = encode(chunk).to(device)
            output = model.generate(
                **batch,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row in range(len(chunk)):
                group = [t.strip() for t in decoded[row * per_prompt : (row + 1) * per_prompt]]
                results.append(group * config.k if greedy else group)
    return results


class VLLMGenerator:
    """Sample with vLLM (GPU). Imported lazily: CPU installs do not ship it.

    Extra keyword arguments go to ``vllm.LLM`` (``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``max_model_len``, ...). Samples are seeded per
    request with ``SamplingParams(seed=...)``, so a batch is reproducible on
    the same card and vLLM version.
    """

    def __init__(self, model_ref: str | Path, *, dtype: str = "auto", **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise GenerationError(
                "the vllm backend needs vLLM, which is not installed: pip install .[gpu] "
                "(or use --backend transformers on CPU)"
            ) from exc
        self._vllm = vllm
        self.llm = vllm.LLM(model=str(model_ref), dtype=dtype, **llm_kwargs)

    def generate(self, prompts: list[list[Message]], config: GenerationConfig) -> list[list[str]]:
        """Sample ``config.k`` completions per prompt with one ``SamplingParams(n=k)``."""
        params = self._vllm.SamplingParams(
            n=config.k,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_new_tokens,
            seed=config.seed,
        )
        outputs = self.llm.chat(prompts, params, use_tqdm=False)
        return [[choice.text.strip() for choice in out.outputs] for out in outputs]


class OpenAICompatibleGenerator:
    """Sample from any ``/v1/chat/completions`` server with ``n=k``, over plain HTTP (urllib).

    ``base_url`` may end with or without ``/v1``. Servers that return fewer
    than ``n`` choices (several do not implement ``n``) are asked again with
    the seed advanced until K are collected. Transient failures (connection
    errors, 429, 5xx) are retried ``max_retries`` times with exponential
    backoff; anything else raises ``GenerationError`` with the server's reply.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        concurrency: int = 4,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = max(1, concurrency)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply: dict[str, Any] = json.loads(response.read().decode("utf-8"))
                    return reply
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                if exc.code in (429, 500, 502, 503, 504) and attempt < self.max_retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise GenerationError(f"{self.url} answered HTTP {exc.code}: {detail}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.max_retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise GenerationError(f"cannot reach {self.url}: {exc}") from exc
            except json.JSONDecodeError as exc:
                raise GenerationError(f"{self.url} did not answer with JSON: {exc}") from exc
        raise AssertionError("unreachable: the loop returns or raises")

    def _sample(self, prompt: list[Message], config: GenerationConfig) -> list[str]:
        texts: list[str] = []
        request = 0
        while len(texts) < config.k:
            reply = self._post(
                {
                    "model": self.model,
                    "messages": prompt,
                    "n": config.k - len(texts),
                    "temperature": config.temperature,
                    "top_p": config.top_p,
                    "max_tokens": config.max_new_tokens,
                    "seed": config.seed + request,
                }
            )
            try:
                choices = [choice["message"]["content"] for choice in reply["choices"]]
            except (KeyError, TypeError) as exc:
                raise GenerationError(
                    f"{self.url} reply has no choices[].message.content: {reply!r:.300}"
                ) from exc
            if not choices:
                raise GenerationError(f"{self.url} returned no choices")
            texts.extend(str(c or "").strip() for c in choices)
            request += 1
        return texts[: config.k]

    def generate(self, prompts: list[list[Message]], config: GenerationConfig) -> list[list[str]]:
        """One request per prompt (``n=k``), ``concurrency`` in flight; order is kept."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._sample(p, config), prompts))


Backend = Literal["transformers", "vllm", "openai"]


def make_generator(backend: Backend, model_ref: str | Path, **kwargs: Any) -> Generator:
    """Build a backend by name.

    ``model_ref`` is a model directory for ``transformers``/``vllm`` and the
    served model name for ``openai`` (then ``base_url=`` is required).
    """
    if backend == "transformers":
        return TransformersGenerator(model_ref, **kwargs)
    if backend == "vllm":
        return VLLMGenerator(model_ref, **kwargs)
    if backend == "openai":
        if "base_url" not in kwargs:
            raise ValueError("the openai backend needs base_url=")
        return OpenAICompatibleGenerator(model=str(model_ref), **kwargs)
    raise ValueError(f"unknown backend {backend!r}; expected transformers, vllm or openai")
