"""How a reward model turns (prompt, completion) into token ids, at training and at scoring time.

The settings are written next to each member's weights (``ENCODING_FILE``) so
that ``RewardEnsemble`` encodes exactly as ``train_reward_model`` did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.data import Message, render_messages

# Written next to each member's weights: how texts were turned into tokens,
# so that scoring encodes exactly as training did.
ENCODING_FILE = "tandem_reward.json"


@dataclass(frozen=True)
class Encoding:
    """How one member cuts its sequences; saved as ``ENCODING_FILE`` beside its weights."""

    max_length: int
    truncation_side: str
    max_completion_length: int | None = None


def _as_messages(completion: Sequence[Message] | str) -> list[Message]:
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return list(completion)


def _cut(ids: list[int], room: int, side: str) -> list[int]:
    if len(ids) <= room:
        return ids
    return ids[len(ids) - room :] if side == "left" else ids[:room]


def encode(
    tokenizer: Any,
    prompt: Sequence[Message],
    completion: Sequence[Message] | str,
    encoding: Encoding,
) -> list[int]:
    """Token ids of prompt + completion, at most ``encoding.max_length`` of them.

    The first token (BOS / [CLS]) and the last ([SEP], or the template's EOS)
    survive any cut when they are special tokens: encoders pool the first,
    decoder classifiers read the last. With ``max_completion_length`` the
    completion keeps its start (up to that many tokens, more if the prompt is
    short) and the prompt its end, as TRL's DPO truncation does; otherwise the
    whole sequence is cut on ``truncation_side``.
    """
    completion = _as_messages(completion)
    text = render_messages(tokenizer, prompt, completion)
    # A chat template writes its own BOS; tokenizers without one add [CLS]/[SEP] here.
    has_template = bool(getattr(tokenizer, "chat_template", None))
    ids: list[int] = tokenizer(text, add_special_tokens=not has_template)["input_ids"]
    if len(ids) <= encoding.max_length:
        return ids
    special = set(tokenizer.all_special_ids)
    head = ids[:1] if ids[0] in special else []
    tail = ids[-1:] if ids[-1] in special else []
    room = encoding.max_length - len(head) - len(tail)
    body = ids[len(head) : len(ids) - len(tail)]
    prompt_text = render_messages(tokenizer, prompt, [])
    if encoding.max_completion_length is None or not text.startswith(prompt_text):
        return head + _cut(body, room, encoding.truncation_side) + tail
    # Split at the prompt's text boundary; a template that renders the prompt
    # differently on its own (the startswith check) falls back to one cut.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if prompt_ids[:1] == head:
        prompt_ids = prompt_ids[1:]
    completion_ids = body[len(prompt_ids) :]
    prompt_room = room - min(len(completion_ids), encoding.max_completion_length)
    kept_prompt = _cut(prompt_ids, max(prompt_room, 0), "left")
    kept_completion = completion_ids[: room - len(kept_prompt)]
    return head + kept_prompt + kept_completion + tail
