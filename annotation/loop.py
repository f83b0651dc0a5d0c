"""A project's online-loop settings: what the manager sets, validated in one place.

Stored as JSON on `Project.loop` so the loop can grow options without a migration each time;
`LoopSettings.parse` is the only way in, so a bad value is refused with the field it concerns.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import InvalidInput

ALGORITHMS = ("dpo", "ipo")
QUEUES = ("cpu", "gpu")
SELECTIONS = ("disagreement", "best_vs_worst", "random")


@dataclass(frozen=True)
class LoopSettings:
    enabled: bool = False
    policy_model: str = field(
        default="", metadata={"help": "Base policy π_0: a model id or a local path."}
    )
    reward_backbone: str = field(
        default="minilm",
        metadata={"help": "Reward backbone: a model id, a local path, or 'minilm' (bundled)."},
    )
    algorithm: str = field(
        default="dpo", metadata={"help": "Policy training: dpo (sigmoid loss) or ipo."}
    )
    samples_per_prompt: int = field(
        default=4, metadata={"help": "K responses generated per prompt."}
    )
    trigger_judgements: int = field(
        default=0, metadata={"help": "Fresh human judgements that start a round; 0 = manual only."}
    )
    human_share: float = field(
        default=1.0,
        metadata={
            "help": "Share of selected pairs sent to humans; the rest the reward model labels."
        },
    )
    selection: str = field(
        default="disagreement", metadata={"help": "Which pairs go to humans first."}
    )
    queue: str = field(
        default="cpu", metadata={"help": "Celery queue of the round's jobs: cpu or gpu."}
    )
    prompts_per_round: int = field(
        default=32, metadata={"help": "Training prompts generated for per round."}
    )
    eval_prompts: int = field(
        default=16, metadata={"help": "Held-out prompts for the human evaluation of π_r."}
    )
    ensemble_members: int = field(default=3, metadata={"help": "Reward ensemble size K."})
    reward: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of training.reward.RewardConfig."}
    )
    policy: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of training.policy.DPOConfig."}
    )
    generation: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Overrides of training.generation.GenerationConfig."},
    )

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> "LoopSettings":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _error(unknown[0], "unknown setting")
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name, getattr(defaults, f.name))
            expected = type(getattr(defaults, f.name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise _error(f.name, f"must be {expected.__name__}")
            values[f.name] = value
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.enabled and not self.policy_model.strip():
            raise _error("policy_model", "required when the loop is on")
        if self.algorithm not in ALGORITHMS:
            raise _error("algorithm", f"must be one of {', '.join(ALGORITHMS)}")
        if self.queue not in QUEUES:
            raise _error("queue", f"must be one of {', '.join(QUEUES)}")
        if self.selection not in SELECTIONS:
            raise _error("selection", f"must be one of {', '.join(SELECTIONS)}")
        if not 2 <= self.samples_per_prompt <= 64:
            raise _error("samples_per_prompt", "must be between 2 and 64")
        if not 0.0 <= self.human_share <= 1.0:
            raise _error("human_share", "must be between 0 and 1")
        if self.trigger_judgements < 0:
            raise _error("trigger_judgements", "must be 0 (manual) or more")
        if not 1 <= self.prompts_per_round <= 100_000:
            raise _error("prompts_per_round", "must be between 1 and 100000")
        if not 0 <= self.eval_prompts <= 10_000:
            raise _error("eval_prompts", "must be between 0 and 10000")
        if not 1 <= self.ensemble_members <= 16:
            raise _error("ensemble_members", "must be between 1 and 16")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _error(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"{name}: {message}", errors=[{"field": name, "message": message}])
