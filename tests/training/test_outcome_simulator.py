"""The outcome simulator: a checked template filled with the case, one outcome per response, seeded.

The model is the session's tiny Llama (built from a config in tests/training/conftest_policy.py);
the OpenAI-compatible path runs against a real HTTP server on localhost that records what it got.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.training.conftest_policy import corpus, tiny_policy_dir  # noqa: F401  (fixture)
from training.generation import GenerationError, TransformersGenerator
from training.outcome_simulator import (
    DEFAULT_TEMPLATE,
    EmptyOutcome,
    OutcomeCase,
    OutcomeSimulator,
    SimulatorConfig,
    TemplateError,
    check_template,
    make_outcome_simulator,
    render_prompt,
)

# Short: the tiny model's positions are few, and its tokenizer spells unknown words byte by byte.
SHORT = "facts {hidden} reply {response} so"
CASE = OutcomeCase(
    conversation=[{"role": "user", "content": "a cheap tent please"}],
    response="buy the blue tent",
    hidden={"blue tent": {"waterproof": False, "price": 90}},
)


def _cases(n: int) -> list[OutcomeCase]:
    return [
        OutcomeCase(
            conversation=[{"role": "user", "content": f"tell me about cats {i}"}],
            response=f"yes cats {i}",
            hidden={"price": i},
        )
        for i in range(n)
    ]


# --- the template ----------------------------------------------------------------------------


def test_the_template_is_filled_with_the_conversation_the_response_and_the_hidden_facts() -> None:
    prompt = render_prompt(DEFAULT_TEMPLATE, CASE)
    assert "User: a cheap tent please" in prompt
    assert "buy the blue tent" in prompt
    # The hidden facts arrive whole, as JSON the model can read.
    assert '"waterproof": false' in prompt and '"price": 90' in prompt
    assert "{" + "hidden}" not in prompt and "{response}" not in prompt
    literal = render_prompt("{{not a field}} {response} {hidden}", CASE)
    assert literal.startswith("{not a field} buy the blue tent")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{hidden.__class__} {response}", "unknown placeholder {hidden.__class__}"),
        ("{hidden[0]} {response}", "unknown placeholder {hidden[0]}"),
        ("{} {response} {hidden}", "unknown placeholder {}"),
        ("{0} {response} {hidden}", "unknown placeholder {0}"),
        ("{secret} {response} {hidden}", "unknown placeholder {secret}"),
        ("{response:>999999999} {hidden}", "no format spec"),
        ("{response!r} {hidden}", "no format spec or conversion"),
        ("{response:{hidden}}", "no format spec"),
        ("{response} {hidden", "literal braces"),
        ("{response} } {hidden}", "literal braces"),
        ("{conversation} {hidden}", "must use {response}"),
        ("{response}", "must use {hidden}"),
        ("   ", "non-empty"),
        ("{response} {hidden}" + "x" * 10_000, "at most 10000 characters"),
    ],
)
def test_templates_reaching_beyond_the_three_placeholders_are_refused(
    template: str, message: str
) -> None:
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("[", r"\[")):
        check_template(template)
    # render_prompt checks too, so no caller can fill an unchecked template.
    with pytest.raises(TemplateError):
        render_prompt(template, CASE)
    with pytest.raises(TemplateError):
        SimulatorConfig(template=template)


def test_config_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        SimulatorConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        SimulatorConfig(temperature=3)
    assert SimulatorConfig(seed=4).generation().k == 1


# --- the tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator() -> TransformersGenerator:
    """A 2-layer, 32-wide Llama built from a config, its weights scaled up 8 times.

    At its initial scale a random model's next-token distribution is nearly uniform whatever the
    prompt, so two prompts sample the same text; scaled up, its output depends on what it reads,
    which is what the test of the hidden facts needs to see. (RMSNorm gains stay at 1.)
    """
    import torch

    from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(corpus(), vocab_size=400)
    model = build_tiny_causal_lm(
        tokenizer, TinyModelConfig(hidden_size=32, layers=2, heads=4, intermediate=64, seed=0)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(8.0)
    return TransformersGenerator(model, device="cpu", tokenizer=tokenizer)


def test_one_outcome_per_response_in_order_and_deterministic_by_seed(
    generator: TransformersGenerator,
) -> None:
    config = SimulatorConfig(
        template=SHORT, max_new_tokens=6, temperature=1.0, seed=3, batch_size=2
    )
    simulator = OutcomeSimulator(generator, config)
    cases = _cases(5)
    first = simulator.simulate(cases)
    # K=1: one non-empty text per case, whatever the batching.
    assert len(first) == 5 and all(isinstance(t, str) and t for t in first)
    assert simulator.simulate(cases) == first
    other = OutcomeSimulator(
        generator,
        SimulatorConfig(template=SHORT, max_new_tokens=6, temperature=1.0, seed=4, batch_size=2),
    )
    assert other.simulate(cases) != first
    # A chunk's outcomes depend on that chunk alone: the job may write batch by batch.
    assert simulator.simulate(cases[:2]) == first[:2]


def test_the_hidden_facts_reach_the_model(generator: TransformersGenerator) -> None:
    # Greedy decoding: the outcome is a function of the prompt, so a change in the hidden facts
    # alone that changes the outcome shows the model read them.
    simulator = OutcomeSimulator(
        generator, SimulatorConfig(template=SHORT, max_new_tokens=8, temperature=0)
    )
    base = _cases(1)[0]
    variants = [
        OutcomeCase(base.conversation, base.response, {"price": price})
        for price in ("cats", "dogs very nice here", "bread so much now")
    ]
    # One call per case: only the prompt differs between them (no batch padding either).
    outcomes = [simulator.simulate([case])[0] for case in variants]
    assert len(set(outcomes)) > 1
    assert simulator.simulate([variants[0]])[0] == outcomes[0]
    # The prompt the model saw holds them, through the chat template.
    text = generator._prompt_texts([simulator.messages(variants[1])])[0]
    assert "dogs very nice here" in text


def test_make_outcome_simulator_builds_on_the_generation_backends(tiny_policy_dir: Path) -> None:  # noqa: F811
    simulator = make_outcome_simulator(
        "transformers",
        tiny_policy_dir,
        SimulatorConfig(template=SHORT, max_new_tokens=4, seed=1),
        device="cpu",
    )
    assert len(simulator.simulate(_cases(3))) == 3
    with pytest.raises(ValueError, match="unknown backend"):
        make_outcome_simulator("carrier-pigeon", tiny_policy_dir)  # type: ignore[arg-type]


# --- an OpenAI-compatible server ---------------------------------------------------------------


class _Server:
    """A real /v1/chat/completions server on localhost answering with a fixed list of texts."""

    def __init__(self, answers: list[str]) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                content = body["messages"][0]["content"]
                index = int(content.split("#")[1].split(" ")[0])
                reply = {"choices": [{"message": {"content": f" {answers[index]} "}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Any]:
    made: list[_Server] = []

    def start(answers: list[str]) -> _Server:
        made.append(_Server(answers))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_openai_backend_sends_the_filled_template_and_keeps_order(server: Any) -> None:
    srv = server(["it leaked", "it kept dry", "the tent broke"])
    cases = [
        OutcomeCase([{"role": "user", "content": "tent?"}], f"#{i} option", {"leaks": i == 0})
        for i in range(3)
    ]
    simulator = make_outcome_simulator(
        "openai", "sim", SimulatorConfig(seed=9, batch_size=2), base_url=srv.url
    )
    assert simulator.simulate(cases) == ["it leaked", "it kept dry", "the tent broke"]
    assert len(srv.bodies) == 3
    for body in srv.bodies:
        assert body["n"] == 1 and body["seed"] == 9 and body["model"] == "sim"
        assert "Facts hidden from the user" in body["messages"][0]["content"]
    first = next(b for b in srv.bodies if "#0 option" in b["messages"][0]["content"])
    assert '"leaks": true' in first["messages"][0]["content"]


def test_an_empty_outcome_is_an_error_not_a_blank_reveal(server: Any) -> None:
    srv = server(["fine", "   "])
    cases = [OutcomeCase([], f"#{i} x", {"a": 1}) for i in range(2)]
    simulator = make_outcome_simulator("openai", "sim", base_url=srv.url)
    with pytest.raises(EmptyOutcome, match="case 1"):
        simulator.simulate(cases)
    assert issubclass(EmptyOutcome, GenerationError)


def test_the_world_simulator_is_the_marketplace_world_model_and_names_a_bad_case() -> None:
    from training.marketplace import Scenario, import_lines, simulate_outcome
    from training.outcome_simulator import OutcomeCase, WorldSimulator, make_outcome_simulator

    lines = list(import_lines(2, 5))
    cases = [
        OutcomeCase(conversation=[], response=r["text"], hidden=line["hidden"])
        for line in lines
        for r in line["responses"]
    ]
    world = make_outcome_simulator("world", "marketplace")
    assert isinstance(world, WorldSimulator)
    assert world.simulate(cases) == [simulate_outcome(c.hidden, c.response) for c in cases]
    Scenario.from_hidden(cases[0].hidden)  # the facts are the world's own
    with pytest.raises(GenerationError, match="case 1: not a marketplace scenario"):
        world.simulate([cases[0], OutcomeCase(conversation=[], response="A", hidden={"x": 1})])
    with pytest.raises(GenerationError, match="no world model named 'mars'"):
        make_outcome_simulator("world", "mars")


# A hand-built marketplace: waterproof wanted, $100 budget; A lacks it, B ($60) is the best buy,
# C ($80) also complies. True utilities by hand: B 60/60 = 1, C 60/80 = 0.75, A −1, no option 0.
HAND_MARKET = {
    "world": "marketplace",
    "product": "speaker",
    "requirement": "waterproof",
    "budget": 100,
    "options": [
        {"name": "A", "price": 40, "features": ["bluetooth"]},
        {"name": "B", "price": 60, "features": ["waterproof"]},
        {"name": "C", "price": 80, "features": ["waterproof", "gps"]},
    ],
}
HAND_REPLIES = {
    "I recommend Option B. It has waterproof.": 1.0,
    "I recommend Option C.": 0.75,
    "I recommend Option A. It has waterproof.": -1.0,
    "Any of them will do.": 0.0,
}


def test_the_world_simulator_knows_each_replys_true_utility_with_its_outcome() -> None:
    from training.marketplace import Scenario, simulate_outcome, true_utility
    from training.outcome_simulator import WorldSimulator

    cases = [OutcomeCase([], text, HAND_MARKET) for text in HAND_REPLIES]
    results = WorldSimulator("marketplace").simulate_with_utility(cases)
    assert [u for _, u in results] == list(HAND_REPLIES.values())
    scenario = Scenario.from_hidden(HAND_MARKET)
    for case, (outcome, utility) in zip(cases, results, strict=True):
        assert outcome == simulate_outcome(HAND_MARKET, case.response)
        assert utility == true_utility(scenario, case.response)
    # The plain outcomes are the same texts; a bad case is named as by `simulate`.
    assert WorldSimulator("marketplace").simulate(cases) == [o for o, _ in results]
    with pytest.raises(GenerationError, match="case 1: not a marketplace scenario"):
        WorldSimulator("marketplace").simulate_with_utility(
            [cases[0], OutcomeCase([], "I recommend Option A.", {"options": []})]
        )


def test_a_language_model_simulator_knows_no_true_utility(server: Any) -> None:
    # Its outcome says the best buy happened; a guess is still no measurement: None, not 1.0.
    srv = server(["You bought Option B for $60. It met your need.", "it broke"])
    cases = [OutcomeCase([], f"#{i} I recommend Option B.", HAND_MARKET) for i in range(2)]
    simulator = make_outcome_simulator("openai", "sim", base_url=srv.url)
    assert simulator.simulate_with_utility(cases) == [
        ("You bought Option B for $60. It met your need.", None),
        ("it broke", None),
    ]
