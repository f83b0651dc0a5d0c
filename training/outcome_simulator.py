"""The outcome simulator of the hindsight kind: what happened when the user acted on a response.

RLHS ("Mitigating Misalignment in RLHF with Hindsight Simulation", Liang et al. 2025) shows
evaluators the consequences of an interaction before they judge it; where no real consequence is
known, a world model simulates it from facts the user could not see (the marketplace's hidden
features of each option). This module is that world model, as any language model behind
``training.generation``'s backends: a project-configurable prompt template is filled with the
conversation, one response and the task's hidden facts, and the model writes one outcome (K=1).

The template is untrusted (a project manager types it) and is filled with ``str.format_map``, so
it is checked first: only the placeholders ``{conversation}``, ``{response}`` and ``{hidden}``,
without attribute or index access (``{hidden.__class__}`` would walk into Python objects), format
specs (``{response:>999999999}`` would allocate a gigabyte) or conversions. ``{{`` and ``}}`` stay
literal braces.

Django-free: the Celery job (``annotation/services/outcomes.py``) turns rows into ``OutcomeCase``
and writes back what ``simulate_with_utility`` returns: each outcome, with the response's true
utility where the simulator knows it. Only a world model known exactly (``WorldSimulator``) does;
a language model's outcome is a guess, so its utility is None (unknown), never a number read back
from its own text.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from training.data import Message
from training.generation import (
    Backend,
    GenerationConfig,
    GenerationError,
    Generator,
    make_generator,
)

PLACEHOLDERS = ("conversation", "response", "hidden")
# Both must appear: an outcome that sees neither the response nor the world is no simulation.
REQUIRED_PLACEHOLDERS = ("response", "hidden")
MAX_TEMPLATE_CHARS = 10_000

# One line on purpose: the project page edits it in a one-line field, and a browser drops the line
# breaks of such a field, which would glue a multi-line template's sentences together on save.
DEFAULT_TEMPLATE = (
    "You are a world simulator. A user talked with an assistant and then acted on the "
    "assistant's last response. Using the facts below, which the user could not see, describe "
    "in two or three sentences what actually happened to the user afterwards, and whether it "
    "met their needs. Do not judge the assistant; state only what happened. "
    "Conversation: {conversation} "
    "Assistant's response: {response} "
    "Facts hidden from the user: {hidden} "
    "What happened:"
)


class TemplateError(ValueError):
    """A simulator prompt template that may not be filled (unknown placeholder, bad braces...)."""


class EmptyOutcome(GenerationError):
    """The model produced no text for a case; an empty outcome would reveal nothing."""


def check_template(template: str) -> str:
    """The template as given, or TemplateError saying what is wrong with it."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateError("must be a non-empty text")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"must be at most {MAX_TEMPLATE_CHARS} characters")
    if "\x00" in template:
        raise TemplateError("must not contain NUL characters")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone "{" or "}"
        raise TemplateError(f"{exc}; write {{{{ and }}}} for literal braces") from None
    seen: set[str] = set()
    allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            shown = "{" + name + "}" if name else "{}"
            raise TemplateError(f"unknown placeholder {shown}; the template may use {allowed}")
        if spec or conversion:
            raise TemplateError(
                f"{{{name}}} takes no format spec or conversion (write it as {{{name}}})"
            )
        seen.add(name)
    missing = [name for name in REQUIRED_PLACEHOLDERS if name not in seen]
    if missing:
        raise TemplateError(
            "must use " + " and ".join("{" + name + "}" for name in missing) + " (the simulator "
            "needs the response and the hidden facts)"
        )
    return template


@dataclass(frozen=True)
class OutcomeCase:
    """One response to simulate: the conversation it answers, its text and the task's hidden facts."""

    conversation: Sequence[Message]
    response: str
    hidden: Mapping[str, Any]


def format_conversation(conversation: Sequence[Message]) -> str:
    """``Role: content`` per turn, one turn a line."""
    return "\n".join(
        f"{str(m.get('role', '')).capitalize()}: {m.get('content', '')}" for m in conversation
    )


def format_hidden(hidden: Mapping[str, Any]) -> str:
    """The hidden facts as sorted, indented JSON: stable text, so the same facts give the same prompt."""
    return json.dumps(hidden, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def render_prompt(template: str, case: OutcomeCase) -> str:
    """The simulator's prompt for one case. The template is checked again here: a caller that
    skipped ``check_template`` still cannot reach an attribute through it."""
    check_template(template)
    values = {
        "conversation": format_conversation(case.conversation),
        "response": case.response,
        "hidden": format_hidden(case.hidden),
    }
    return template.format_map(values)


@dataclass(frozen=True)
class SimulatorConfig:
    """How outcomes are generated. Field ``help`` texts describe each setting."""

    template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={
            "help": "Prompt with {conversation}, {response} and {hidden} (the task's hidden facts)."
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"min": 1, "max": 2048, "help": "Longest outcome, in tokens."}
    )
    temperature: float = field(
        default=0.7,
        metadata={"min": 0, "max": 2, "help": "Sampling temperature; 0 means greedy decoding."},
    )
    top_p: float = field(
        default=1.0, metadata={"min": 0.001, "max": 1, "help": "Nucleus sampling threshold."}
    )
    seed: int = field(
        default=0,
        metadata={
            "min": 0,
            "max": 4294967295,
            "help": "Sampling seed: the same seed, model and cases give the same outcomes on CPU.",
        },
    )
    batch_size: int = field(
        default=8,
        metadata={"min": 1, "max": 1024, "help": "Cases per generate() call."},
    )

    def __post_init__(self) -> None:
        check_template(self.template)
        for f in fields(self):
            low, high = f.metadata.get("min"), f.metadata.get("max")
            value = getattr(self, f.name)
            if low is not None and not low <= value <= high:
                raise ValueError(f"{f.name} must be between {low} and {high}, got {value}")

    def generation(self) -> GenerationConfig:
        """One outcome per case (K=1), sampled with this config's seed."""
        return GenerationConfig(
            k=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            batch_size=self.batch_size,
        )


class OutcomeSimulator:
    """Writes one outcome per case with any ``Generator`` (transformers, vLLM, OpenAI-compatible)."""

    def __init__(self, generator: Generator, config: SimulatorConfig | None = None) -> None:
        self.generator = generator
        self.config = config or SimulatorConfig()

    def messages(self, case: OutcomeCase) -> list[Message]:
        """The chat the model sees for one case: the filled template as the user's turn."""
        return [{"role": "user", "content": render_prompt(self.config.template, case)}]

    def simulate(self, cases: Sequence[OutcomeCase]) -> list[str]:
        """One outcome per case, in order; ``config.batch_size`` cases per generate() call.

        Each call is seeded with ``config.seed``, so a chunk's outcomes depend on that chunk alone
        and the same cases give the same outcomes. Raises GenerationError (EmptyOutcome when the
        model wrote nothing for a case): the caller keeps none of the chunk rather than a gap.
        """
        size = self.config.batch_size
        gen = self.config.generation()
        outcomes: list[str] = []
        for start in range(0, len(cases), size):
            chunk = cases[start : start + size]
            groups = self.generator.generate([self.messages(c) for c in chunk], gen)
            if len(groups) != len(chunk) or any(not group for group in groups):
                raise GenerationError(
                    f"the backend answered {len(groups)} groups for {len(chunk)} prompts"
                )
            for offset, group in enumerate(groups):
                text = group[0].strip()
                if not text:
                    raise EmptyOutcome(
                        f"the simulator wrote an empty outcome for case {start + offset}"
                    )
                outcomes.append(text)
        return outcomes

    def simulate_with_utility(self, cases: Sequence[OutcomeCase]) -> list[tuple[str, None]]:
        """``simulate``'s outcomes, each with None: a language model knows no true utility."""
        return [(text, None) for text in self.simulate(cases)]


def _marketplace_outcome(hidden: Mapping[str, Any], response: str) -> str:
    from training.marketplace import simulate_outcome

    return simulate_outcome(hidden, response)


def _marketplace_utility(hidden: Mapping[str, Any], response: str) -> float:
    from training.marketplace import Scenario, true_utility

    return true_utility(Scenario.from_hidden(hidden), response)


@dataclass(frozen=True)
class World:
    """A world model known exactly: what happened (``outcome``) and what it was worth to the user
    (``utility``), both from the hidden facts and the response; ValueError for facts it cannot
    read."""

    outcome: Callable[[Mapping[str, Any], str], str]
    utility: Callable[[Mapping[str, Any], str], float]


# World models known exactly, by name: the synthetic worlds the benches, demos and tests use,
# where a language model's guess would only add noise to a consequence the facts fix.
WORLDS = {"marketplace": World(outcome=_marketplace_outcome, utility=_marketplace_utility)}


class WorldSimulator:
    """The outcome from a world model known exactly (``WORLDS``), instead of a language model.

    Same contract as ``OutcomeSimulator.simulate``: one outcome per case, in order, or
    GenerationError naming the case whose hidden facts the world cannot read. The world also
    knows each response's true utility (``simulate_with_utility``).
    """

    def __init__(self, world: str) -> None:
        if world not in WORLDS:
            raise GenerationError(f"no world model named {world!r}; known: {', '.join(WORLDS)}")
        self.world = WORLDS[world]

    def simulate(self, cases: Sequence[OutcomeCase]) -> list[str]:
        return [text for text, _ in self.simulate_with_utility(cases)]

    def simulate_with_utility(self, cases: Sequence[OutcomeCase]) -> list[tuple[str, float]]:
        """One (outcome, true utility) per case, in order, both from the same hidden facts."""
        results = []
        for index, case in enumerate(cases):
            try:
                outcome = self.world.outcome(case.hidden, case.response)
                utility = float(self.world.utility(case.hidden, case.response))
            except ValueError as exc:
                raise GenerationError(f"case {index}: {exc}") from None
            results.append((outcome, utility))
        return results


def make_outcome_simulator(
    backend: Backend | Literal["world"],
    model_ref: str | Path,
    config: SimulatorConfig | None = None,
    **generator_kwargs: Any,
) -> OutcomeSimulator | WorldSimulator:
    """A simulator on ``training.generation.make_generator(backend, model_ref, **kwargs)``; with
    backend "world", the exact world model named ``model_ref`` (``WORLDS``)."""
    if backend == "world":
        return WorldSimulator(str(model_ref))
    return OutcomeSimulator(make_generator(backend, model_ref, **generator_kwargs), config)
