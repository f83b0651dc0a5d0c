"""The hindsight kind's project settings: the outcome simulator (RLHS's world model).

Where a task's responses came without outcomes but its prompt carries hidden facts, a Celery job
(`annotation/services/outcomes.py`) asks a language model what happened, through
`training.outcome_simulator`. These settings say which model, through which backend, with which
prompt. `simulator_model` "" means no simulation: tasks then wait for outcomes that never come,
so a project that imports no outcomes sets it.

Everything here is untrusted (a manager types it):
- a model reference for the transformers and vLLM backends is a hub id or a path inside an
  operator-configured model root, checked by `annotation.loop.model_reference_check` as the
  loop's references are;
- the OpenAI-compatible backend reaches only a base URL the operator listed in
  `TANDEM_SIMULATOR_URLS` (exact match): a manager cannot point the server at any other host,
  which is the SSRF the DESIGN forbids ("the server fetches no URL a user gave it"). Its API key
  is the operator's (`TANDEM_SIMULATOR_API_KEY`), never a project setting;
- the prompt template may use only {conversation}, {response} and {hidden}
  (`training.outcome_simulator.check_template`).

The project page edits numbers in text fields, so numeric settings also accept their digits as
a string ("128"); they are stored as numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings

from ...loop import model_reference_check
from ..base import SettingField, field_error

BACKENDS = ("transformers", "vllm", "openai", "world")
# World models known exactly (training.outcome_simulator.WORLDS; copied: importing training costs
# the web process time): the synthetic worlds of the benches and demos.
WORLDS = ("marketplace",)
MAX_NEW_TOKENS = 2048
MAX_TEMPERATURE = 2.0
SEED_MAX = 2**32 - 1
# What an OpenAI-compatible server may call its model ("gpt-4o-mini", "Qwen/Qwen2.5-7B-Instruct",
# "llama3:8b"); it only ever travels as a JSON string to an allow-listed server.
_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}")


def _template_defaults() -> tuple[str, int, float]:
    # Imported here: the training package stays out of Django's import graph until it is needed
    # (it imports no torch, but it is still the training side's module).
    from training.outcome_simulator import DEFAULT_TEMPLATE, SimulatorConfig

    config = SimulatorConfig()
    return DEFAULT_TEMPLATE, config.max_new_tokens, config.temperature


def default_settings() -> dict[str, Any]:
    template, max_new_tokens, temperature = _template_defaults()
    return {
        "simulator_model": "",
        "simulator_backend": "transformers",
        "simulator_base_url": "",
        "simulator_prompt": template,
        "max_new_tokens": max_new_tokens,
        "simulator_temperature": temperature,
        "simulator_seed": 0,
    }


def allowed_base_urls() -> list[str]:
    """The OpenAI-compatible servers the operator allows, without trailing slashes."""
    urls = getattr(django_settings, "TANDEM_SIMULATOR_URLS", None) or []
    return [str(u).strip().rstrip("/") for u in urls if str(u).strip()]


def clean_settings(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The project's simulator settings completed with defaults; raises InvalidInput naming the
    setting (`kind_settings.<name>`)."""
    settings = default_settings()
    if data is None:
        return settings
    if not isinstance(data, Mapping):
        raise field_error("kind_settings", "must be an object")
    for key in data:
        if key not in settings:
            raise field_error(
                f"kind_settings.{key}", "unknown setting; this kind takes " + ", ".join(settings)
            )
    settings.update({key: data[key] for key in data})
    settings["simulator_backend"] = _backend(settings["simulator_backend"])
    settings["simulator_model"] = _model(
        settings["simulator_model"], backend=settings["simulator_backend"]
    )
    settings["simulator_base_url"] = _base_url(
        settings["simulator_base_url"],
        backend=settings["simulator_backend"],
        required=bool(settings["simulator_model"]),
    )
    settings["simulator_prompt"] = _prompt(settings["simulator_prompt"])
    settings["max_new_tokens"] = _integer(
        "max_new_tokens", settings["max_new_tokens"], 1, MAX_NEW_TOKENS
    )
    settings["simulator_seed"] = _integer("simulator_seed", settings["simulator_seed"], 0, SEED_MAX)
    settings["simulator_temperature"] = _temperature(settings["simulator_temperature"])
    return settings


def _error(name: str, message: str) -> Exception:
    return field_error(f"kind_settings.{name}", message)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _error(name, "must be a string")
    if "\x00" in value:
        raise _error(name, "must not contain NUL characters")
    return value.strip()


def _backend(value: Any) -> str:
    backend = _text("simulator_backend", value) or "transformers"
    if backend not in BACKENDS:
        raise _error("simulator_backend", "must be one of " + ", ".join(BACKENDS))
    return backend


def _model(value: Any, *, backend: str) -> str:
    model = _text("simulator_model", value)
    if not model:
        return ""
    if backend == "world":
        if model not in WORLDS:
            raise _error("simulator_model", "the world backend knows " + ", ".join(WORLDS))
        return model
    if backend == "openai":
        if not _SERVED_NAME.fullmatch(model):
            raise _error(
                "simulator_model",
                "must be the served model's name: letters, digits and . _ : / @ -, at most 200",
            )
        return model
    # A hub id as given; a path only inside a model root (no project folder: the simulator is
    # an outside model, not one of this project's published policies).
    model_reference_check("kind_settings.simulator_model", model)
    return model


def _base_url(value: Any, *, backend: str, required: bool) -> str:
    url = _text("simulator_base_url", value).rstrip("/")
    if backend != "openai":
        if url:
            raise _error("simulator_base_url", "only the openai backend takes a base URL")
        return ""
    if not url and not required:
        return ""  # no model yet: nothing will be simulated, so no server is needed either
    allowed = allowed_base_urls()
    if not allowed:
        raise _error(
            "simulator_base_url",
            "the operator allows no OpenAI-compatible server (TANDEM_SIMULATOR_URLS is empty)",
        )
    if url not in allowed:
        raise _error(
            "simulator_base_url",
            "must be one of the servers the operator allows: " + ", ".join(allowed),
        )
    return url


def _prompt(value: Any) -> str:
    from training.outcome_simulator import DEFAULT_TEMPLATE, TemplateError, check_template

    template = _text("simulator_prompt", value)
    if not template:
        # Clearing the field on the project page restores the default prompt.
        return DEFAULT_TEMPLATE
    try:
        return check_template(template)
    except TemplateError as exc:
        raise _error("simulator_prompt", str(exc)) from None


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,12}\s*", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _error(name, "must be a whole number")
    if not low <= value <= high:
        raise _error(name, f"must be between {low} and {high}")
    return value


def _temperature(value: Any) -> float:
    name = "simulator_temperature"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _error(name, "must be a number") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _error(name, "must be a number")
    if not 0 <= value <= MAX_TEMPERATURE:
        raise _error(name, f"must be between 0 and {MAX_TEMPERATURE:g}")
    return float(value)


def settings_fields() -> list[SettingField]:
    return [
        SettingField(
            "simulator_model",
            "Outcome simulator model",
            "text",
            "Empty: no simulation (import the outcomes with the tasks). For transformers and vLLM: "
            "a hub model id (org/name) or a path inside a model root the operator configured; "
            "for openai: the served model's name.",
        ),
        SettingField(
            "simulator_backend",
            "Simulator backend",
            "text",
            "transformers (CPU or one GPU), vllm (GPU workers), openai (an OpenAI-compatible "
            "server the operator allows) or world (an exact world model: simulator model "
            "'marketplace', the synthetic marketplace of the benches and demos).",
        ),
        SettingField(
            "simulator_base_url",
            "Simulator server (openai backend only)",
            "text",
            "One of the base URLs the operator lists in TANDEM_SIMULATOR_URLS; empty otherwise.",
        ),
        SettingField(
            "simulator_prompt",
            "Simulator prompt",
            "text",
            "Uses {conversation}, {response} and {hidden} (the task's hidden facts; both {response} "
            "and {hidden} are required); write {{ and }} for literal braces. Empty restores the "
            "default prompt. Outcomes already written keep their text.",
        ),
        SettingField(
            "max_new_tokens",
            "Longest outcome (tokens)",
            "text",
            f"1 to {MAX_NEW_TOKENS}.",
        ),
        SettingField(
            "simulator_temperature",
            "Simulator temperature",
            "text",
            f"0 (greedy) to {MAX_TEMPERATURE:g}.",
        ),
        SettingField(
            "simulator_seed",
            "Simulator seed",
            "text",
            "The same seed, model and tasks give the same outcomes (exactly so on CPU).",
        ),
    ]
