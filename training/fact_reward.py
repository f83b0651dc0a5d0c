"""Fact-RLHF: a reward model that reads the image's facts beside the question and the response.

Sun et al. 2023, "Aligning Large Multimodal Models with Factually Augmented
RLHF" (LLaVA-RLHF), Sec. 2.3: the reward model is given the factual context a
human annotator had (image captions, the reference answer, the right choice of a
multiple-choice question), so that it can tell a hallucinated claim from a true
one instead of guessing which answers *sound* right. Our reward backbones are
text models (TRL's ``RewardTrainer`` is text-only), so the facts are written
into the user turn as text, ahead of the question; a vision-language reward
model is a separate option.

This module formats rows and splits them; training and scoring are
``training.reward``'s (``train_reward_model``, ``RewardEnsemble``,
``evaluate_pairs``), wrapped, not rewritten. ``with_facts=False`` trains the
same model on the same pairs without the facts: the blind baseline whose
held-out accuracy the fact-augmented model must beat.

Rows are the hallucination kind's exports plus a ``context``
(``{"captions": [...], "reference"?: str, "choices"?: [...], "answer"?: str}``,
as in an import line):

- ``vision_pairs``: ``prompt`` (messages whose content is a list of parts),
  ``chosen``/``rejected`` (one assistant message each);
- ``llava_rlhf``: ``conversations`` (human/gpt turns, the last one empty),
  ``output_1``, ``output_2``, ``preference`` (1 or 2);
- plain: ``prompt`` or ``question`` (a string or messages), ``chosen``, ``rejected`` (strings).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import Message, PreferencePair, split_by_prompt
from training.reward import RewardConfig, RewardEnsemble, evaluate_pairs, train_reward_model

__all__ = [
    "FactRewardResult",
    "fact_pairs",
    "fact_prompt",
    "fact_text",
    "train_fact_reward",
]

IMAGE_TOKEN = "<image>"
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def fact_prompt(question: str, facts: Mapping[str, Any] | None, *, with_facts: bool = True) -> str:
    """The user turn the reward model reads: the image's facts (when given), then the question.

    Facts, each only when present: ``captions`` (one line each), ``reference``
    (a reference answer), ``choices`` (lettered A, B, ...) and ``answer`` (the
    right choice). Without facts, or with none given, it is the question alone.
    """
    lines: list[str] = []
    if with_facts and facts:
        captions = [c for c in facts.get("captions") or [] if c]
        if captions:
            lines.append("Image facts:")
            lines.extend(f"- {caption}" for caption in captions)
        if facts.get("reference"):
            lines.append(f"Reference answer: {facts['reference']}")
        choices = facts.get("choices") or []
        if choices:
            lines.append(
                "Choices: " + " ".join(f"({_LETTERS[i]}) {c}" for i, c in enumerate(choices))
            )
        if facts.get("answer"):
            lines.append(f"Right answer: {facts['answer']}")
    if lines:
        lines.append("")
    lines.append(f"Question: {question}")
    return "\n".join(lines)


def fact_text(
    question: str, response: str, facts: Mapping[str, Any] | None, *, with_facts: bool = True
) -> str:
    """The whole input as one plain text: ``fact_prompt`` and then the response.

    Training renders the same two parts as a user and an assistant turn (through
    the backbone's chat template when it has one), so this is for display,
    logging and backbones scored on plain text.
    """
    return f"{fact_prompt(question, facts, with_facts=with_facts)}\nResponse: {response}"


# --- rows -----------------------------------------------------------------------------------------


def _text(content: Any, index: int, name: str) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        ]
        return "\n".join(part for part in parts if isinstance(part, str))
    raise ValueError(f"row {index}: {name} must be text or a list of content parts")


def _messages(value: Any, index: int, name: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, Mapping) for m in value):
        raise ValueError(f"row {index}: {name!r} must be a string or a list of messages")
    if "conversations" == name:
        return [
            {
                "role": "user" if m.get("from") == "human" else "assistant",
                "content": _text(m.get("value"), index, name).replace(IMAGE_TOKEN, "").strip(),
            }
            for m in value
        ]
    return [
        {"role": str(m.get("role")), "content": _text(m.get("content"), index, name)} for m in value
    ]


def _reply(value: Any, index: int, name: str) -> str:
    if isinstance(value, Mapping):  # llava_rlhf's {"from": "gpt", "value": ...}
        value = value.get("value")
    elif isinstance(value, list):  # [{"role": "assistant", "content": ...}]
        value = "\n".join(m["content"] for m in _messages(value, index, name))
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"row {index}: {name!r} must be a non-empty response")
    return value


def _parts(row: Mapping[str, Any], index: int) -> tuple[list[Message], str, str]:
    """(conversation up to the question, chosen text, rejected text) of any accepted row form."""
    if "conversations" in row:
        turns = _messages(row["conversations"], index, "conversations")
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            turns = turns[:-1]  # LLaVA-RLHF's empty slot for the outputs
        preference = row.get("preference")
        if preference not in (1, 2):
            raise ValueError(f"row {index}: 'preference' must be 1 or 2")
        outputs = [_reply(row.get(f"output_{k}"), index, f"output_{k}") for k in (1, 2)]
        return turns, outputs[preference - 1], outputs[2 - preference]
    prompt = row.get("prompt", row.get("question"))
    if prompt is None:
        raise ValueError(f"row {index}: needs 'prompt', 'question' or 'conversations'")
    turns = _messages(prompt, index, "prompt")
    return (
        turns,
        _reply(row.get("chosen"), index, "chosen"),
        _reply(row.get("rejected"), index, "rejected"),
    )


def fact_pairs(
    rows: Sequence[Mapping[str, Any]], *, with_facts: bool = True
) -> list[PreferencePair]:
    """Preference pairs whose last user turn is ``fact_prompt`` of the row's question and context.

    Earlier turns of a multi-turn conversation are kept as they are. Raises
    ``ValueError`` naming the 1-based row and field of a malformed row.
    """
    pairs = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: must be an object")
        turns, chosen, rejected = _parts(row, index)
        last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
        if last_user is None:
            raise ValueError(f"row {index}: the conversation has no user question")
        context = row.get("context")
        if context is not None and not isinstance(context, Mapping):
            raise ValueError(f"row {index}: 'context' must be an object")
        turns = list(turns[: last_user + 1])
        turns[last_user] = {
            "role": "user",
            "content": fact_prompt(turns[last_user]["content"], context, with_facts=with_facts),
        }
        pairs.append(
            PreferencePair(
                prompt=turns,
                chosen=[{"role": "assistant", "content": chosen}],
                rejected=[{"role": "assistant", "content": rejected}],
            )
        )
    return pairs


def _image_key(row: Mapping[str, Any], index: int) -> str:
    """What a held-out split groups by: the image (so evaluation sees new images), else the row."""
    images = row.get("images")
    if isinstance(images, list) and images and isinstance(images[0], str):
        return images[0]
    if isinstance(row.get("image"), str) and row["image"]:
        return str(row["image"])
    return f"row:{index}"


# --- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactRewardResult:
    """Held-out ``accuracy`` (None without held-out rows), all metrics, and where the model is (if kept)."""

    accuracy: float | None
    metrics: dict[str, Any]
    path: Path | None


def train_fact_reward(
    rows: Sequence[Mapping[str, Any]],
    config: RewardConfig,
    *,
    with_facts: bool = True,
    eval_rows: Sequence[Mapping[str, Any]] | None = None,
    eval_fraction: float = 0.25,
    split_seed: int = 0,
    output_dir: str | Path | None = None,
) -> FactRewardResult:
    """Train one Bradley–Terry reward model on ``rows`` with (or without) their facts; return held-out accuracy.

    Held-out rows are ``eval_rows`` when given, else about ``eval_fraction`` of
    ``rows`` split by image (``split_by_prompt`` keyed on the image path, fixed
    by ``split_seed``): every pair of an image lands on one side, and the split
    is the same with and without facts, so the two accuracies compare the same
    pairs. The model is saved to ``output_dir`` (loadable by
    ``RewardEnsemble.load``) or, when that is None, discarded after scoring.
    Metrics: ``with_facts``, ``n_eval``, ``train`` (``train_reward_model``'s),
    ``eval`` (``evaluate_pairs``': accuracy, mean margin, ECE).
    """
    if eval_rows is None:
        keyed: list[dict[str, Any]] = [
            {"prompt": _image_key(row, i), "row": row} for i, row in enumerate(rows, start=1)
        ]
        train_keyed, eval_keyed = split_by_prompt(
            keyed, eval_fraction=eval_fraction, seed=split_seed
        )
        train_rows = [item["row"] for item in train_keyed]
        eval_rows = [item["row"] for item in eval_keyed]
    else:
        train_rows = list(rows)
    train_pairs = fact_pairs(train_rows, with_facts=with_facts)
    eval_pairs = fact_pairs(eval_rows, with_facts=with_facts)
    with tempfile.TemporaryDirectory(prefix="tandem-fact-reward-") as scratch:
        target = Path(output_dir) if output_dir is not None else Path(scratch) / "model"
        trained = train_reward_model(train_pairs, config, output_dir=target, stage="fact reward")
        metrics: dict[str, Any] = {
            "with_facts": with_facts,
            "n_eval": len(eval_pairs),
            "train": trained.metrics,
        }
        accuracy = None
        if eval_pairs:
            evaluation = evaluate_pairs(RewardEnsemble.load(target), eval_pairs)
            metrics["eval"] = {k: evaluation[k] for k in ("n", "accuracy", "mean_margin", "ece")}
            accuracy = float(evaluation["accuracy"])
    return FactRewardResult(
        accuracy=accuracy,
        metrics=metrics,
        path=Path(output_dir) if output_dir is not None else None,
    )
