"""The hindsight kind's simulator settings: defaults, what the project page's text fields send,
model references, the OpenAI-compatible server allow-list and the prompt template."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotation.errors import InvalidInput
from annotation.kinds.hindsight import settings as sim
from training.outcome_simulator import DEFAULT_TEMPLATE


def _refused(data: dict) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        sim.clean_settings(data)
    return refused.value


def test_defaults_simulate_nothing_and_clean_to_themselves() -> None:
    defaults = sim.default_settings()
    assert defaults["simulator_model"] == ""
    assert defaults["simulator_prompt"] == DEFAULT_TEMPLATE
    assert sim.clean_settings(None) == defaults
    assert sim.clean_settings(defaults) == defaults
    # Every field the page shows is a setting, in the defaults.
    assert {f.name for f in sim.settings_fields()} == set(defaults)


def test_the_page_text_fields_are_typed_back_and_an_empty_prompt_restores_the_default() -> None:
    cleaned = sim.clean_settings(
        {
            "simulator_model": " org/world-model ",
            "max_new_tokens": "64",
            "simulator_temperature": "0.25",
            "simulator_seed": "7",
            "simulator_prompt": "  ",
            "simulator_backend": "",
        }
    )
    assert cleaned["simulator_model"] == "org/world-model"
    assert cleaned["max_new_tokens"] == 64 and cleaned["simulator_seed"] == 7
    assert cleaned["simulator_temperature"] == 0.25
    assert cleaned["simulator_prompt"] == DEFAULT_TEMPLATE
    assert cleaned["simulator_backend"] == "transformers"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"simulator_prompt": "{hidden.__class__} {response}"}, "simulator_prompt", "unknown"),
        ({"simulator_prompt": "{response} only"}, "simulator_prompt", "{hidden}"),
        ({"simulator_prompt": "{response:>99999999} {hidden}"}, "simulator_prompt", "format"),
        ({"simulator_backend": "carrier-pigeon"}, "simulator_backend", "one of"),
        ({"max_new_tokens": 0}, "max_new_tokens", "between 1 and"),
        ({"max_new_tokens": "lots"}, "max_new_tokens", "whole number"),
        ({"max_new_tokens": True}, "max_new_tokens", "whole number"),
        ({"simulator_temperature": "nan"}, "simulator_temperature", "number"),
        ({"simulator_temperature": 9}, "simulator_temperature", "between 0 and"),
        ({"simulator_seed": -1}, "simulator_seed", "between 0 and"),
        ({"simulator_model": 3}, "simulator_model", "string"),
        ({"no_such": 1}, "no_such", "unknown setting"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(data: dict, field: str, message: str) -> None:
    error = _refused(data)
    assert error.errors[0]["field"] == f"kind_settings.{field}"
    assert message in error.message


def test_a_model_path_must_lie_inside_a_model_root(settings, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "world").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    settings.TANDEM_MODEL_ROOTS = [root]
    inside = str(root / "world")
    assert sim.clean_settings({"simulator_model": inside})["simulator_model"] == inside
    for bad in (str(outside), str(root / "world" / ".." / ".." / "elsewhere"), "/etc", "../x"):
        error = _refused({"simulator_model": bad})
        assert error.errors[0]["field"] == "kind_settings.simulator_model"
    # vLLM loads models the same way, so it is held to the same roots.
    error = _refused({"simulator_model": str(outside), "simulator_backend": "vllm"})
    assert error.errors[0]["field"] == "kind_settings.simulator_model"


def test_the_openai_backend_reaches_only_servers_the_operator_listed(settings) -> None:
    settings.TANDEM_SIMULATOR_URLS = []
    error = _refused(
        {
            "simulator_backend": "openai",
            "simulator_model": "sim",
            "simulator_base_url": "http://127.0.0.1:8000/v1",
        }
    )
    assert "TANDEM_SIMULATOR_URLS" in error.message
    settings.TANDEM_SIMULATOR_URLS = ["http://sim.internal:8000/v1/"]
    ok = sim.clean_settings(
        {
            "simulator_backend": "openai",
            "simulator_model": "llama3:8b",
            "simulator_base_url": "http://sim.internal:8000/v1/",
        }
    )
    assert ok["simulator_base_url"] == "http://sim.internal:8000/v1"
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://sim.internal:8000/v1/../admin",
        "http://sim.internal:8000/v1?x=1",
        "file:///etc/passwd",
        "",
    ):
        error = _refused(
            {"simulator_backend": "openai", "simulator_model": "sim", "simulator_base_url": url}
        )
        assert error.errors[0]["field"] == "kind_settings.simulator_base_url"
    # A served name is not a path, but it is still a plain name.
    error = _refused(
        {
            "simulator_backend": "openai",
            "simulator_model": "sim\nX-Injected: 1",
            "simulator_base_url": "http://sim.internal:8000/v1",
        }
    )
    assert error.errors[0]["field"] == "kind_settings.simulator_model"
    # Other backends take no URL at all.
    error = _refused({"simulator_base_url": "http://sim.internal:8000/v1"})
    assert "only the openai backend" in error.message


def test_the_kind_delegates_its_settings_here() -> None:
    from annotation.kinds import kind_for

    kind = kind_for("hindsight")
    assert kind.default_settings() == sim.default_settings()
    assert [f.name for f in kind.settings_fields()] == [f.name for f in sim.settings_fields()]
    with pytest.raises(InvalidInput):
        kind.clean_settings({"simulator_prompt": "{response}"})


def test_the_world_backend_takes_only_a_known_world_and_the_lists_agree():
    from annotation.kinds.hindsight import settings as hindsight_settings
    from training.outcome_simulator import WORLDS

    assert set(hindsight_settings.WORLDS) == set(WORLDS)
    cleaned = hindsight_settings.clean_settings(
        {"simulator_backend": "world", "simulator_model": "marketplace"}
    )
    assert (cleaned["simulator_backend"], cleaned["simulator_model"]) == ("world", "marketplace")
    with pytest.raises(InvalidInput) as refused:
        hindsight_settings.clean_settings({"simulator_backend": "world", "simulator_model": "/etc"})
    assert "simulator_model" in str(refused.value.errors)
