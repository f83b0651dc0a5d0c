"""Hidden oracles that stand in for humans: for the loop benchmark, demos, load and end-to-end tests.

An oracle owns a synthetic task where a tiny policy can visibly improve: its prompts, a utility
over responses that it prefers more of, and a supervised warm start that gives π_0 the property
only sometimes. The web app's `simulate_annotators` command and `bench/oracle_loop.py` use the
same oracles, so the loop measured through the web app can be compared with the package's own.
"""

from __future__ import annotations

import random
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from training.data import Message

Preference = Literal["A", "B", "tie"]


class Oracle(Protocol):
    @property
    def name(self) -> str:
        """How users pick the oracle (`--oracle NAME`)."""
        ...

    def prompts(self) -> list[list[Message]]:
        """Every prompt of the task, in a fixed order."""
        ...

    def utility(self, text: str) -> float:
        """How much the hidden human likes a response."""
        ...

    def prefer(self, a: str, b: str) -> Preference:
        """The judgement a human with this utility gives: the better response, or a tie."""
        ...

    def warm_start(
        self,
        path: Path,
        *,
        steps: int = 250,
        seed: int = 0,
        prompts: Sequence[Sequence[Message]] | None = None,
    ) -> Path:
        """Builds π_0 (a tiny CPU model) into `path` and returns it."""
        ...


@dataclass(frozen=True)
class WarmWords:
    """Replies name a topic and then six words; the oracle counts the warm ones.

    π_0 is a tiny Llama fitted with TRL's SFTTrainer on replies whose words are warm with
    probability 0.25, so some of its samples are better than others and DPO can move it.
    """

    name: str = "warm-words"
    topics: tuple[str, ...] = tuple(
        "river mountain forest garden village harbor desert island meadow valley castle bridge market "
        "library kitchen station orchard canyon lake glacier temple tower farm beach cave field road "
        "city school museum park pond hill street shop bakery cottage lighthouse vineyard prairie volcano "
        "waterfall jungle marsh plaza".split()
    )
    templates: tuple[str, ...] = (
        "describe the {}", "tell me about the {}", "write about the {}", "what is the {} like",
        "say something about the {}", "give me words for the {}", "paint the {} in words", "how does the {} look",
    )  # fmt: skip
    neutral: tuple[str, ...] = tuple(
        "old small green large quiet busy stone wooden tall narrow wide distant near open round "
        "grey plain simple dusty empty".split()
    )
    good: tuple[str, ...] = tuple("warm bright kind gentle lovely golden".split())
    reply_words: int = 6
    good_probability: float = 0.25
    _good_set: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_good_set", frozenset(self.good))

    def prompts(self) -> list[list[Message]]:
        return [
            [{"role": "user", "content": t.format(topic)}]
            for topic in self.topics
            for t in self.templates
        ]

    def utility(self, text: str) -> float:
        return float(sum(word in self._good_set for word in re.findall(r"[a-z]+", text.lower())))

    def prefer(self, a: str, b: str) -> Preference:
        ua, ub = self.utility(a), self.utility(b)
        return "tie" if ua == ub else "A" if ua > ub else "B"

    def topic_of(self, prompt: Sequence[Message]) -> str:
        words = prompt[-1]["content"].split()
        return next(topic for topic in self.topics if topic in words)

    def sample_reply(self, rng: random.Random, topic: str) -> str:
        words = [
            rng.choice(self.good)
            if rng.random() < self.good_probability
            else rng.choice(self.neutral)
            for _ in range(self.reply_words)
        ]
        return f"the {topic} is " + " ".join(words)

    def warm_start(
        self,
        path: Path,
        *,
        steps: int = 250,
        seed: int = 0,
        prompts: Sequence[Sequence[Message]] | None = None,
    ) -> Path:
        """π_0 fitted with TRL's SFTTrainer on replies to `prompts` (default: all of the task's)."""
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        from training.artifacts import publish_run
        from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer
        from training.policy import PolicyTrainingConfig, trl_training_args

        path = Path(path)
        rng = random.Random(seed)
        prompts = list(prompts) if prompts is not None else self.prompts()
        rows = [
            {
                "prompt": prompt,
                "completion": [
                    {"role": "assistant", "content": self.sample_reply(rng, self.topic_of(prompt))}
                ],
            }
            for _ in range(8)
            for prompt in prompts
        ]
        rng.shuffle(rows)
        corpus = [t.format(topic) for topic in self.topics for t in self.templates]
        corpus += [" ".join(self.neutral + self.good)] * 20
        config = PolicyTrainingConfig(
            learning_rate=3e-3, max_steps=steps, batch_size=32, max_length=64, seed=seed
        )
        with tempfile.TemporaryDirectory() as scratch:
            init = Path(scratch) / "init"
            tokenizer = build_tokenizer(corpus, vocab_size=600, model_max_length=128, path=init)
            build_tiny_causal_lm(
                tokenizer,
                TinyModelConfig(
                    hidden_size=64,
                    layers=2,
                    heads=4,
                    intermediate=128,
                    max_positions=128,
                    seed=seed,
                ),
                path=init,
            )
            args = trl_training_args(
                SFTConfig,
                config,
                str(Path(scratch) / "sft"),
                completion_only_loss=True,
                max_length=64,
            )
            trainer = SFTTrainer(
                model=str(init),
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
            )
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            with publish_run(
                path.parent,
                path.name,
                kind="policy-sft",
                config={"oracle": self.name, "steps": steps, "seed": seed},
                data_cursor=None,
                parent=None,
            ) as run:
                model: Any = trainer.model
                model.save_pretrained(str(run.path))
                tokenizer.save_pretrained(str(run.path))
                run.metrics = {"steps": steps}
        return path


ORACLES: dict[str, Oracle] = {"warm-words": WarmWords()}


def oracle_named(name: str) -> Oracle:
    try:
        return ORACLES[name]
    except KeyError:
        raise ValueError(f"unknown oracle {name!r}; known: {', '.join(sorted(ORACLES))}") from None
