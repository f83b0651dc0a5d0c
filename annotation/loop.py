"""A project's online-loop settings: what the manager sets, validated in one place.

Stored as JSON on `Project.loop` so the loop can grow options without a migration each time;
`LoopSettings.parse` is the only way in, so a bad value is refused with the field it concerns.

Model references are untrusted (DESIGN.md, "Untrusted things"): a reference is either a hub-style
id, checked by pattern and never looked up on disk, or a path that resolves (symlinks and `..`
followed) inside a base-model root the operator configured (`TANDEM_MODEL_ROOTS`) or inside the
project's own artifact folder. Anything else is refused, so no setting can point the loop, and
through it the model download, at the rest of the file system.

The `reward`, `policy` and `generation` overrides are checked key by key against `OVERRIDES`, a
copy of the bounds the training config dataclasses declare in their field metadata
(training.reward.RewardConfig, training.policy.DPOConfig, training.generation.GenerationConfig).
The copy lives here because importing those modules costs torch and seconds, which the web
process must not pay to validate a form; tests/annotation/test_loop_settings.py keeps the two equal.
"""

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings

from .errors import InvalidInput

ALGORITHMS = ("dpo", "ipo")
QUEUES = ("cpu", "gpu")
SELECTIONS = ("disagreement", "best_vs_worst", "random")
# What the reward stage trains: a text reward ensemble, or a reward model on a vision-language
# backbone that sees the image. A kind's loop hooks say which it offers (`reward_models`).
REWARD_MODELS = ("text", "vision")

MAX_REFERENCE_LENGTH = 500
# Hugging Face repository ids: an optional namespace and a name, each at most 96 characters of
# [A-Za-z0-9._-] starting with a letter or digit; '--' and '..' are refused as the hub does.
_HUB_PATTERN = r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_ID = re.compile(_HUB_PATTERN)
BUNDLED_BACKBONES = ("minilm",)
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Bound:
    """What one setting accepts: its JSON type, whether null is allowed, and its range or choices."""

    type: type
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    pattern: str | None = None

    def check(self, name: str, value: Any) -> Any:
        """The value as stored (ints widened for float settings), or InvalidInput naming `name`."""
        if value is None:
            if self.nullable:
                return None
            raise _error(name, f"must be {self.type.__name__}")
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok:
                value = float(value)
                if not math.isfinite(value):
                    raise _error(name, "must be a finite number")
        else:
            ok = isinstance(value, self.type)
        if not ok:
            raise _error(name, f"must be {self.type.__name__}")
        if self.min is not None and self.max is not None and not self.min <= value <= self.max:
            raise _error(name, f"must be between {_number(self.min)} and {_number(self.max)}")
        if self.type is str:
            if self.choices is not None and value not in self.choices:
                raise _error(name, f"must be one of {', '.join(self.choices)}")
            if self.max_length is not None and len(value) > self.max_length:
                raise _error(name, f"must be at most {self.max_length} characters")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise _error(name, "has characters or a shape that is not allowed")
        return value


# The shape of a reference (a hub id, an absolute path, or empty), which the OpenAPI schema shows;
# model_reference_check then decides whether a path lies in a root.
_REFERENCE = Bound(str, max_length=MAX_REFERENCE_LENGTH, pattern=_HUB_PATTERN + r"|/[^\x00\n]*|")
_INT_STEPS = 1_000_000
_LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)

# Keys of the training configs a manager may override, with the bounds of their fields. A key not
# listed is refused; REFUSED_OVERRIDES says why some fields are not settable here.
OVERRIDES: dict[str, dict[str, Bound]] = {
    "reward": {
        "epochs": Bound(float, min=0, max=1000),
        "max_steps": Bound(int, min=-1, max=_INT_STEPS),
        "learning_rate": Bound(float, min=0, max=1),
        "warmup": Bound(float, min=0, max=1),
        "weight_decay": Bound(float, min=0, max=1),
        "batch_size": Bound(int, min=1, max=4096),
        "max_length": Bound(int, min=8, max=32768),
        "truncation_side": Bound(str, choices=("left", "right")),
        "max_completion_length": Bound(int, nullable=True, min=1, max=32768),
        "use_margin": Bound(bool),
        "center_rewards_coefficient": Bound(float, nullable=True, min=0, max=10),
        "freeze_embeddings": Bound(bool),
        "freeze_layers": Bound(int, min=0, max=1000),
        "mean_pooling": Bound(bool, nullable=True),
        "seed": Bound(int, min=0, max=SEED_MAX),
        "cpu_threads": Bound(int, min=1, max=256),
        "bf16": Bound(bool),
        "group_by_length": Bound(bool),
        "logging_steps": Bound(int, min=1, max=_INT_STEPS),
    },
    "policy": {
        "learning_rate": Bound(float, min=0, max=1),
        "epochs": Bound(float, min=0, max=1000),
        "max_steps": Bound(int, min=-1, max=_INT_STEPS),
        "batch_size": Bound(int, min=1, max=4096),
        "gradient_accumulation_steps": Bound(int, min=1, max=1024),
        "warmup_ratio": Bound(float, min=0, max=1),
        "lr_scheduler": Bound(str, choices=_LR_SCHEDULERS),
        "max_length": Bound(int, min=8, max=32768),
        "seed": Bound(int, min=0, max=SEED_MAX),
        "precision": Bound(str, choices=("auto", "bf16", "fp32")),
        "gradient_checkpointing": Bound(bool),
        "device": Bound(str, choices=("auto", "cpu", "cuda")),
        "lora": Bound(bool),
        "lora_r": Bound(int, min=1, max=1024),
        "lora_alpha": Bound(int, min=1, max=4096),
        "lora_dropout": Bound(float, min=0, max=1),
        "lora_target_modules": Bound(
            str, max_length=500, pattern=r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*"
        ),
        "logging_steps": Bound(int, min=1, max=_INT_STEPS),
        "loss": Bound(str, choices=("sigmoid", "ipo")),
        "beta": Bound(float, min=0.001, max=100),
        "train_image_encoder": Bound(bool),
    },
    "generation": {
        "k": Bound(int, min=1, max=64),
        "temperature": Bound(float, min=0, max=10),
        "top_p": Bound(float, min=0.001, max=1),
        "max_new_tokens": Bound(int, min=1, max=4096),
        "seed": Bound(int, min=0, max=SEED_MAX),
        "batch_size": Bound(int, min=1, max=1024),
    },
}
REFUSED_OVERRIDES: dict[str, dict[str, str]] = {
    "reward": {"backbone": "set reward_backbone instead: it is checked as a model reference"},
    "policy": {},
    "generation": {},
}


@dataclass(frozen=True)
class LoopSettings:
    enabled: bool = field(default=False, metadata={"bound": Bound(bool)})
    policy_model: str = field(
        default="",
        metadata={
            "help": "Base policy π_0: a hub model id (org/name) or a path inside a model root.",
            "bound": _REFERENCE,
            "reference": True,
        },
    )
    reward_backbone: str = field(
        default="minilm",
        metadata={
            "help": "Reward backbone: a hub model id, a path inside a model root, or 'minilm' (bundled).",
            "bound": _REFERENCE,
            "reference": True,
        },
    )
    reward_model: str = field(
        default="text",
        metadata={
            "help": "text: the reward ensemble on the reward backbone (a hallucination project's "
            "reads the image's facts, Fact-RLHF). vision (hallucination projects, for GPU "
            "workers): a reward model on a vision-language backbone that sees the image, with "
            "one head per ensemble member.",
            "bound": Bound(str, choices=REWARD_MODELS),
        },
    )
    vision_reward_backbone: str = field(
        default="",
        metadata={
            "help": "Backbone of the vision reward model: empty for the base policy π_0, else a "
            "hub model id (org/name) or a path inside a model root.",
            "bound": _REFERENCE,
            "reference": True,
        },
    )
    algorithm: str = field(
        default="dpo",
        metadata={
            "help": "Policy training: dpo (sigmoid loss) or ipo.",
            "bound": Bound(str, choices=ALGORITHMS),
        },
    )
    samples_per_prompt: int = field(
        default=4,
        metadata={"help": "K responses generated per prompt.", "bound": Bound(int, min=2, max=64)},
    )
    trigger_judgements: int = field(
        default=0,
        metadata={
            "help": "Fresh human judgements that start a round; 0 = manual only.",
            "bound": Bound(int, min=0, max=10_000_000),
        },
    )
    human_share: float = field(
        default=1.0,
        metadata={
            "help": "Share of selected pairs sent to humans; the rest the reward model labels.",
            "bound": Bound(float, min=0, max=1),
        },
    )
    selection: str = field(
        default="disagreement",
        metadata={
            "help": "Which pairs go to humans first.",
            "bound": Bound(str, choices=SELECTIONS),
        },
    )
    queue: str = field(
        default="cpu",
        metadata={
            "help": "Celery queue of the round's jobs: cpu or gpu.",
            "bound": Bound(str, choices=QUEUES),
        },
    )
    prompts_per_round: int = field(
        default=32,
        metadata={
            "help": "Training prompts generated for per round.",
            "bound": Bound(int, min=1, max=100_000),
        },
    )
    eval_prompts: int = field(
        default=16,
        metadata={
            "help": "Held-out prompts for the human evaluation of π_r.",
            "bound": Bound(int, min=0, max=10_000),
        },
    )
    ensemble_members: int = field(
        default=3,
        metadata={"help": "Reward ensemble size K.", "bound": Bound(int, min=1, max=16)},
    )
    reward: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Overrides of training.reward.RewardConfig.", "overrides": "reward"},
    )
    policy: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Overrides of training.policy.DPOConfig.", "overrides": "policy"},
    )
    generation: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Overrides of training.generation.GenerationConfig.",
            "overrides": "generation",
        },
    )

    @classmethod
    def parse(cls, data: dict[str, Any] | None, *, project_id: int | None = None) -> "LoopSettings":
        """Validated settings from stored or submitted JSON, or InvalidInput naming the field.

        `project_id` lets a model reference point inside that project's artifact folder (where
        the demo and the simulation warm-start π_0); without it only model roots and hub ids do.
        """
        if not isinstance(data, dict | type(None)):
            raise InvalidInput("the loop settings must be a JSON object")
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise _error(unknown[0], "unknown setting")
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name, getattr(defaults, f.name))
            if "overrides" in f.metadata:
                value = _overrides(f.name, value)
            else:
                value = f.metadata["bound"].check(f.name, value)
                if f.metadata.get("reference") and value:
                    model_reference_check(f.name, value, project_id=project_id)
            values[f.name] = value
        settings = cls(**values)
        settings._check()
        return settings

    @classmethod
    def of(cls, project: Any) -> "LoopSettings":
        """A project's stored settings (InvalidInput when they no longer pass today's checks)."""
        return cls.parse(project.loop, project_id=project.pk)

    @classmethod
    def for_display(cls, project: Any) -> "LoopSettings":
        """A project's settings to show in a form: checked if they pass, else as stored, so a
        page can still render settings today's checks refuse (saving them names the field)."""
        try:
            return cls.of(project)
        except InvalidInput:
            return cls(**cls.stored(project.loop))

    @classmethod
    def stored(cls, loop: dict[str, Any] | None) -> dict[str, Any]:
        """The stored settings over the defaults, unchecked: to show or to merge a fix into."""
        known = {f.name for f in fields(cls)}
        stored = loop if isinstance(loop, dict) else {}
        return {**asdict(cls()), **{k: v for k, v in stored.items() if k in known}}

    def _check(self) -> None:
        if self.enabled and not self.policy_model.strip():
            raise _error("policy_model", "required when the loop is on")
        if not self.reward_backbone:
            raise _error("reward_backbone", "required")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _overrides(group: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(group, "must be an object")
    checked = {}
    for key, item in value.items():
        name = f"{group}.{key}"
        if key in REFUSED_OVERRIDES[group]:
            raise _error(name, REFUSED_OVERRIDES[group][key])
        bound = OVERRIDES[group].get(key)
        if bound is None:
            raise _error(name, "unknown setting")
        checked[key] = bound.check(name, item)
    return checked


def model_roots(*, project_id: int | None = None) -> list[Path]:
    """Where a path-style model reference may point: the operator's roots and the project's folder."""
    roots = [Path(p) for p in django_settings.TANDEM_MODEL_ROOTS]
    if project_id is not None:
        roots.append(project_artifact_root(project_id))
    return roots


def project_artifact_root(project_id: int) -> Path:
    """The folder the project's runs publish into (it may not exist yet)."""
    return Path(django_settings.TANDEM_ARTIFACT_ROOT) / f"project-{int(project_id)}"


def is_hub_id(value: str) -> bool:
    return bool(_HUB_ID.fullmatch(value)) and ".." not in value and "--" not in value


def model_reference_check(name: str, value: str, *, project_id: int | None = None) -> str:
    """The reference to load: a hub id as given, a path resolved; InvalidInput naming `name` otherwise.

    A hub id never touches the disk. A path must be absolute and resolve (strictly: it exists,
    symlinks and '..' followed) to a directory strictly inside one of `model_roots`.
    """
    if "\x00" in value or len(value) > MAX_REFERENCE_LENGTH:
        raise _error(name, f"must be at most {MAX_REFERENCE_LENGTH} characters, no NUL")
    if name == "reward_backbone" and value in BUNDLED_BACKBONES:
        return value
    if is_hub_id(value):
        return value
    if not value.startswith("/"):
        raise _error(
            name, "must be a hub model id (org/name) or an absolute path inside a model root"
        )
    try:
        resolved = Path(value).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise _error(name, "no such model directory") from None
    for root in model_roots(project_id=project_id):
        try:
            base = root.resolve()
        except (OSError, RuntimeError):
            continue
        if resolved != base and resolved.is_relative_to(base):
            if not resolved.is_dir():
                raise _error(name, "must be a model directory")
            if len(str(resolved)) > MAX_REFERENCE_LENGTH:
                # It is registered as resolved, in a column of that size.
                raise _error(name, f"resolves to more than {MAX_REFERENCE_LENGTH} characters")
            return str(resolved)
    raise _error(
        name,
        "a path must lie inside a model root the operator configured (TANDEM_MODEL_ROOTS) "
        "or inside this project's artifact folder",
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _error(name: str, message: str) -> InvalidInput:
    # An unknown key is the client's text: keep it short and encodable (no lone surrogates).
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    name = name if len(name) <= 100 else name[:100] + "…"
    return InvalidInput(f"{name}: {message}", errors=[{"field": name, "message": message}])
