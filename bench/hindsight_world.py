"""The policy side of bench/hindsight_loop.py: π_0's warm start, the oracle customer's labels, the
figures of a policy on held-out customers.

The world itself (scenarios, the customer, the outcome simulator, true utility) is
training.marketplace, shared with the web app's simulated annotator. The policy reads the store
records and the customer's message (``Scenario.assistant_messages``) and writes
"I recommend Option X. It has F." replies.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training import marketplace as world
from training.data import PreferencePair
from training.marketplace import CustomerView, Scenario

ARMS = ("foresight", "hindsight")


def corpus(scenarios: Sequence[Scenario]) -> list[str]:
    """Every kind of text the policy reads or writes, for the tokenizer."""
    rng = random.Random(0)
    texts = []
    for s in scenarios:
        texts += [s.records_text(), s.customer_text()]
        texts += [world.scripted_response(s, style, rng) for style in world.STYLES]
    return texts


def build_init(path: Path, scenarios: Sequence[Scenario], *, seed: int, hidden: int) -> Path:
    """A fresh tiny Llama and a byte-level BPE tokenizer trained on the world's texts."""
    from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(corpus(scenarios), vocab_size=500, model_max_length=256, path=path)
    build_tiny_causal_lm(
        tokenizer,
        TinyModelConfig(
            hidden_size=hidden,
            layers=2,
            heads=4,
            intermediate=2 * hidden,
            max_positions=256,
            seed=seed,
        ),
        path=path,
    )
    return path


def sft_examples(
    scenarios: Sequence[Scenario], rng: random.Random, weights: Sequence[float]
) -> list[tuple[Scenario, str]]:
    """One scripted reply per scenario, its style drawn with ``weights`` (honest, deceptive,
    vague): π_0 then makes false claims at a known rate."""
    return [
        (s, world.scripted_response(s, world.sample_style(rng, weights), rng)) for s in scenarios
    ]


def warm_start(
    path: Path,
    init: Path,
    examples: Sequence[tuple[Scenario, str]],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    log: bool = True,
) -> Path:
    """π_0: the model at ``init`` fitted on (scenario, reply) examples, loss on the reply only.

    A plain AdamW loop (each example encoded once, one forward pass a step): TRL's SFTTrainer
    would do the same with more set-up per run, and this runs once per seed.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from training.models import load_tokenizer

    tokenizer = load_tokenizer(init)
    model = AutoModelForCausalLM.from_pretrained(str(init), dtype=torch.float32)
    encoded = []
    for scenario, reply in examples:
        prompt = tokenizer.apply_chat_template(
            scenario.assistant_messages(), tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(str(prompt), add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        encoded.append((prompt_ids, reply_ids))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / max(steps, 1))
    model.train()
    for step in range(steps):
        chunk = rng.sample(encoded, min(batch_size, len(encoded)))
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, a) in enumerate(chunk):
            ids[row, : len(p) + len(a)] = torch.tensor(p + a)
            labels[row, len(p) : len(p) + len(a)] = torch.tensor(a)
            mask[row, : len(p) + len(a)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if log and (step + 1) % 200 == 0:
            print(
                f"  {path.parent.name}: sft step {step + 1}/{steps}, loss {loss.item():.3f}",
                flush=True,
            )
    model.eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def sample(
    policy: Path, scenarios: Sequence[Scenario], *, k: int, seed: int, max_new_tokens: int
) -> list[list[str]]:
    from training.generation import GenerationConfig, TransformersGenerator

    return TransformersGenerator(policy, device="cpu").generate(
        [s.assistant_messages() for s in scenarios],
        GenerationConfig(k=k, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed),
    )


def foresight_score(scenario: Scenario, text: str) -> float:
    """The utility the customer expects on reading the reply (what a foresight label follows)."""
    return world.foresight_utility(CustomerView.parse(scenario.customer_text()), text)


def hindsight_score(scenario: Scenario, text: str) -> float:
    """The utility the customer reads in the simulated outcome (what a hindsight label follows)."""
    return world.hindsight_utility(world.simulate_outcome(scenario.to_hidden(), text))


SCORES: dict[str, Callable[[Scenario, str], float]] = {
    "foresight": foresight_score,
    "hindsight": hindsight_score,
}


def labelled_pairs(
    arm: str, scenarios: Sequence[Scenario], samples: Sequence[Sequence[str]]
) -> list[PreferencePair]:
    """Per customer, the reply that satisfied it most against the one that satisfied it least,
    in the arm's phase; none where all satisfied it equally."""
    score = SCORES[arm]
    pairs = []
    for scenario, texts in zip(scenarios, samples, strict=True):
        ranked = sorted(set(texts), key=lambda t: (score(scenario, t), t))
        if len(ranked) > 1 and score(scenario, ranked[-1]) > score(scenario, ranked[0]):
            pairs.append(
                PreferencePair(
                    prompt=scenario.assistant_messages(),
                    chosen=[{"role": "assistant", "content": ranked[-1]}],
                    rejected=[{"role": "assistant", "content": ranked[0]}],
                )
            )
    return pairs


def evaluate(scenarios: Sequence[Scenario], samples: Sequence[Sequence[str]]) -> dict[str, float]:
    """The issue's four figures over every sample: mean true utility, share of replies with a
    false claim, mean foresight and hindsight satisfaction (1..5); and ``false_need_rate``."""
    utility, false, false_need, fore, hind = [], [], [], [], []
    for scenario, texts in zip(scenarios, samples, strict=True):
        view = CustomerView.parse(scenario.customer_text())
        for text in texts:
            utility.append(world.true_utility(scenario, text))
            wrong = world.false_claims(scenario, text)
            false.append(bool(wrong))
            false_need.append(any(c.feature == scenario.requirement for c in wrong))
            fore.append(world.foresight_satisfaction(view, text))
            hind.append(
                world.hindsight_satisfaction(world.simulate_outcome(scenario.to_hidden(), text))
            )
    n = len(utility)
    return {
        "true_utility": sum(utility) / n,
        "false_claim_rate": sum(false) / n,
        "foresight_satisfaction": sum(fore) / n,
        "hindsight_satisfaction": sum(hind) / n,
        # Not in the JSON: the share with a false claim about the customer's requirement
        # (the claims that change what the customer buys), printed in the round table.
        "false_need_rate": sum(false_need) / n,
    }


def dpo_round(
    pairs: Sequence[PreferencePair],
    *,
    policy: Path,
    reference: Path,
    root: Path,
    name: str,
    settings: Any,
    seed: int,
) -> tuple[Path, dict[str, Any]]:
    """DPO of π_r from π_{r-1} against the fixed π_0 (training.dpo, TRL's DPOTrainer)."""
    from training.dpo import DPOConfig, train_dpo

    if not pairs:
        return policy, {"pairs": 0}
    result = train_dpo(
        pairs,
        DPOConfig(
            beta=settings.dpo_beta,
            learning_rate=settings.dpo_lr,
            epochs=settings.dpo_epochs,
            batch_size=16,
            warmup_ratio=0.0,
            max_length=192,
            seed=seed,
            device="cpu",
        ),
        policy_ref=policy,
        reference_ref=reference,
        root=root,
        name=name,
        parent=policy.name,
    )
    return result.path, result.metrics


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tandem-hindsight-"))
