"""The data contract: export rows in, validated examples out.

Every row that enters ``training/`` passes through this module, and every
mistake in it is reported here with its 1-based row number and field name
(``RowError``) rather than deep inside a trainer. Rows follow the TRL-ready
export format of DESIGN.md ("Export contract"); both TRL forms are accepted:

- conversational: ``prompt``/``chosen``/``rejected`` are lists of
  ``{"role", "content"}`` messages;
- standard: they are plain strings, converted here to one user message
  (prompt) and one assistant message (completions).

Beyond explicit pairs the parser accepts k-way rankings (``ranking``), ties
(``tie: true``), TRL's implicit-prompt form (no ``prompt``: the shared prefix of
``chosen`` and ``rejected`` is the prompt) and Anthropic HH-RLHF transcripts
(``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` strings), the most common public
preference format.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

ROLES = frozenset({"system", "user", "assistant"})

# Keys that carry the example itself; everything else on a row is provenance
# (task_id, judgement_ids, annotator, agreement, round, ...) kept in ``meta``.
_CONTENT_KEYS = frozenset(
    {"prompt", "chosen", "rejected", "margin", "tie", "ranking", "completion", "label"}
)


class RowError(ValueError):
    """A row that breaks the data contract.

    ``row`` is 1-based (the n-th row of the iterable, or the line number for
    ``read_jsonl``); ``field`` names the offending key, or is ``None`` when the
    row as a whole is wrong.
    """

    def __init__(self, row: int, field: str | None, message: str) -> None:
        self.row = row
        self.field = field
        where = f"row {row}" if field is None else f"row {row}, field {field!r}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class PreferencePair:
    """One validated preference: ``chosen`` is better than ``rejected`` for ``prompt``.

    When ``tie`` is true the two completions were judged equally good, and the
    chosen/rejected order carries no information. ``margin`` is the annotator's
    preference strength, used as ``m`` in the Bradley–Terry loss
    ``-log σ(r⁺ − r⁻ − m)`` (Touvron et al. 2023, Llama 2, Eq. 2).
    """

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None
    tie: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnpairedExample:
    """One completion labelled desirable (``label=True``) or not, as KTO consumes it."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    meta: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one JSON object per non-blank line of ``path`` (``.gz`` is read transparently).

    Streams: memory stays constant in the file size. Raises ``RowError`` whose
    ``row`` is the 1-based line number for invalid JSON or a non-object line.
    """
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(line_number, None, f"invalid JSON ({exc.msg})") from exc
            if not isinstance(value, dict):
                raise RowError(
                    line_number, None, f"expected a JSON object, got {type(value).__name__}"
                )
            yield value


def _messages(value: Any, row: int, name: str, default_role: str) -> list[Message]:
    """Validate one prompt/completion field; a plain string becomes one ``default_role`` message."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(row, name, "must not be empty")
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise RowError(row, name, "expected a string or a list of messages")
    if not value:
        raise RowError(row, name, "must not be an empty list")
    messages: list[Message] = []
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise RowError(row, name, f"message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(
                row, name, f"message {index} has role {role!r}; expected one of {sorted(ROLES)}"
            )
        if not isinstance(content, str):
            raise RowError(row, name, f"message {index} content must be a string")
        messages.append({"role": role, "content": content})
    if not any(message["content"].strip() for message in messages):
        raise RowError(row, name, "all message contents are empty")
    return messages


def _margin(row: Mapping[str, Any], index: int) -> float | None:
    value = row.get("margin")
    if value is None:
        return None
    # bool is an int subclass; "margin": true is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError(index, "margin", "expected a finite number")
    return float(value)


def _tie(row: Mapping[str, Any], index: int) -> bool:
    value = row.get("tie", False)
    if not isinstance(value, bool):
        raise RowError(index, "tie", "expected true or false")
    return value


def _meta(row: Mapping[str, Any], index: int) -> dict[str, Any]:
    meta = {key: value for key, value in row.items() if key not in _CONTENT_KEYS}
    meta["row"] = index
    return meta


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_messages(transcript: Any, row: int, name: str) -> list[Message]:
    if not isinstance(transcript, str):
        raise RowError(row, name, "expected an HH transcript string")
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise RowError(
            row, name, "expected turns written as '\\n\\nHuman: ...\\n\\nAssistant: ...'"
        )
    return [
        {"role": _HH_ROLES[speaker], "content": text}
        for speaker, text in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _split_shared_prefix(
    chosen: list[Message], rejected: list[Message], row: int
) -> tuple[list[Message], list[Message], list[Message]]:
    """Split two full conversations into (shared prompt, chosen tail, rejected tail).

    Identical or nested conversations still leave each side its last message,
    so a degenerate pair is kept as a (useless but valid) pair, not dropped.
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    shared = min(shared, len(chosen) - 1, len(rejected) - 1)
    if shared == 0:
        raise RowError(row, "chosen", "chosen and rejected share no prompt turns")
    prompt, chosen_tail, rejected_tail = chosen[:shared], chosen[shared:], rejected[shared:]
    for name, tail in (("chosen", chosen_tail), ("rejected", rejected_tail)):
        if not any(message["content"].strip() for message in tail):
            raise RowError(row, name, "the final reply is empty")
    return prompt, chosen_tail, rejected_tail


def parse_hh_transcript_pair(row: Mapping[str, Any], *, index: int = 1) -> PreferencePair:
    """Convert one Anthropic HH-RLHF row ``{"chosen": transcript, "rejected": transcript}``.

    Both transcripts are ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` dialogues that
    share every turn but the last assistant reply (Bai et al. 2022, "Training
    a Helpful and Harmless Assistant with RLHF"); the shared turns become the
    prompt. ``index`` is the 1-based row number used in errors.
    """
    chosen = _hh_messages(row.get("chosen"), index, "chosen")
    rejected = _hh_messages(row.get("rejected"), index, "rejected")
    return _pair_of_transcripts(chosen, rejected, row, index)


def _pair_of_transcripts(
    chosen: list[Message], rejected: list[Message], row: Mapping[str, Any], index: int
) -> PreferencePair:
    """Two whole conversations that share every turn but the last replies, as one pair."""
    prompt, chosen_tail, rejected_tail = _split_shared_prefix(chosen, rejected, index)
    return PreferencePair(
        prompt=prompt,
        chosen=chosen_tail,
        rejected=rejected_tail,
        margin=_margin(row, index),
        tie=_tie(row, index),
        meta=_meta(row, index),
    )


def _ranking_pairs(
    row: Mapping[str, Any],
    index: int,
    prompt: list[Message],
    ranking_pairs: Literal["all", "best_vs_worst"],
) -> list[PreferencePair]:
    """Expand a k-way ranking (lower rank = better, equal ranks = tie) into pairs."""
    ranking = row["ranking"]
    if not isinstance(ranking, list) or len(ranking) < 2:
        raise RowError(index, "ranking", "expected a list of at least two ranked responses")
    ranked: list[tuple[int, list[Message]]] = []
    for position, item in enumerate(ranking):
        if not isinstance(item, Mapping):
            raise RowError(index, "ranking", f"item {position} is not an object")
        rank = item.get("rank")
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise RowError(index, "ranking", f"item {position} needs an integer 'rank'")
        text = item.get("content", item.get("text"))
        if text is None:
            raise RowError(index, "ranking", f"item {position} needs 'content' or 'text'")
        ranked.append((rank, _messages(text, index, f"ranking[{position}]", "assistant")))

    if ranking_pairs == "best_vs_worst":
        best, worst = min(r for r, _ in ranked), max(r for r, _ in ranked)
        candidates = [
            (a, b)
            for a in range(len(ranked))
            for b in range(a + 1, len(ranked))
            if {ranked[a][0], ranked[b][0]} == {best, worst}
        ]
    else:
        candidates = [(a, b) for a in range(len(ranked)) for b in range(a + 1, len(ranked))]

    meta = _meta(row, index)
    pairs = []
    for a, b in candidates:
        (rank_a, text_a), (rank_b, text_b) = ranked[a], ranked[b]
        if rank_b < rank_a:
            (rank_a, text_a), (rank_b, text_b) = (rank_b, text_b), (rank_a, text_a)
        pairs.append(
            PreferencePair(
                prompt=prompt,
                chosen=text_a,
                rejected=text_b,
                tie=rank_a == rank_b,
                meta={**meta, "ranks": (rank_a, rank_b)},
            )
        )
    return pairs


def parse_preference_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    ties: Literal["drop", "keep"] = "drop",
    ranking_pairs: Literal["all", "best_vs_worst"] = "all",
) -> list[PreferencePair]:
    """Validate export rows and return preference pairs.

    Accepts, per row: explicit pairs (``prompt``/``chosen``/``rejected``, optional
    ``margin`` and ``tie``), rankings (``prompt``/``ranking``), implicit-prompt
    conversations and HH transcripts (no ``prompt``). ``ties="drop"`` removes
    tied pairs, which carry no Bradley–Terry signal; ``"keep"`` returns them
    with ``tie=True`` for metrics or tie-aware losses. ``ranking_pairs="all"``
    yields every implied pair of a ranking (k(k-1)/2 per row);
    ``"best_vs_worst"`` only the extreme pairs.

    Raises ``RowError`` (row is 1-based, field named) on the first bad row:
    nothing is silently skipped.
    """
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")
    if ranking_pairs not in ("all", "best_vs_worst"):
        raise ValueError(f"ranking_pairs must be 'all' or 'best_vs_worst', got {ranking_pairs!r}")
    pairs: list[PreferencePair] = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise RowError(index, None, f"expected an object, got {type(row).__name__}")
        if "ranking" in row:
            if "prompt" not in row:
                raise RowError(index, "prompt", "is required with a ranking")
            prompt = _messages(row["prompt"], index, "prompt", "user")
            found = _ranking_pairs(row, index, prompt, ranking_pairs)
        elif "prompt" not in row:
            found = [_implicit_prompt_pair(row, index)]
        else:
            for name in ("chosen", "rejected"):
                if name not in row:
                    raise RowError(index, name, "is required")
            found = [
                PreferencePair(
                    prompt=_messages(row["prompt"], index, "prompt", "user"),
                    chosen=_messages(row["chosen"], index, "chosen", "assistant"),
                    rejected=_messages(row["rejected"], index, "rejected", "assistant"),
                    margin=_margin(row, index),
                    tie=_tie(row, index),
                    meta=_meta(row, index),
                )
            ]
        pairs.extend(pair for pair in found if ties == "keep" or not pair.tie)
    return pairs


def _implicit_prompt_pair(row: Mapping[str, Any], index: int) -> PreferencePair:
    for name in ("chosen", "rejected"):
        if name not in row:
            raise RowError(index, name, "is required")
    if isinstance(row["chosen"], str):
        return parse_hh_transcript_pair(row, index=index)
    chosen = _messages(row["chosen"], index, "chosen", "assistant")
    rejected = _messages(row["rejected"], index, "rejected", "assistant")
    return _pair_of_transcripts(chosen, rejected, row, index)


def parse_unpaired_rows(rows: Iterable[Mapping[str, Any]]) -> list[UnpairedExample]:
    """Validate KTO rows ``{"prompt", "completion", "label": bool}``; raises ``RowError``."""
    examples: list[UnpairedExample] = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise RowError(index, None, f"expected an object, got {type(row).__name__}")
        for name in ("prompt", "completion", "label"):
            if name not in row:
                raise RowError(index, name, "is required")
        if not isinstance(row["label"], bool):
            raise RowError(index, "label", "expected true or false")
        examples.append(
            UnpairedExample(
                prompt=_messages(row["prompt"], index, "prompt", "user"),
                completion=_messages(row["completion"], index, "completion", "assistant"),
                label=row["label"],
                meta=_meta(row, index),
            )
        )
    return examples


def _as_messages(prompt: Sequence[Message] | str) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": message["role"], "content": message["content"]} for message in prompt]


def prompt_key(prompt: Sequence[Message] | str) -> str:
    """A stable hex key for a prompt; a string prompt keys like the one user message it becomes.

    Only role and content count, so provenance keys on messages never split
    one prompt into two.
    """
    canonical = json.dumps(_as_messages(prompt), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _prompt_of(item: Any) -> Sequence[Message] | str:
    if isinstance(item, Mapping):
        return item["prompt"]  # type: ignore[no-any-return]
    return item.prompt  # type: ignore[no-any-return]


def _bucket(prompt: Sequence[Message] | str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the prompt and the seed alone."""
    digest = hashlib.sha256(f"{seed}:{prompt_key(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


T = TypeVar("T")


def split_by_prompt(
    items: Sequence[T],
    *,
    eval_fraction: float | None = None,
    seed: int,
    eval_size: int | None = None,
) -> tuple[list[T], list[T]]:
    """Split items (pairs, unpaired examples or rows with ``prompt``) into (train, eval).

    All items of one prompt land on the same side, so evaluation never sees a
    prompt that training saw. With ``eval_fraction`` each prompt's side depends
    only on the hash of its text and ``seed``: a prompt stays on its side as
    data grows round after round (the held-out set of round r is a subset of
    round r+1's), at the price of an eval share that is only approximately
    ``eval_fraction``. With ``eval_size`` instead, whole prompts are taken in
    hash order until at least ``eval_size`` items are held out: an exact-sized
    split for a fixed data set. Give exactly one of the two.
    """
    if (eval_fraction is None) == (eval_size is None):
        raise ValueError("give exactly one of eval_fraction and eval_size")
    buckets = [_bucket(_prompt_of(item), seed) for item in items]
    if eval_fraction is not None:
        if not 0.0 <= eval_fraction <= 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
        held_out = [bucket < eval_fraction for bucket in buckets]
    else:
        assert eval_size is not None
        if eval_size < 0:
            raise ValueError(f"eval_size must be >= 0, got {eval_size}")
        held_out = [False] * len(items)
        taken = 0
        # Sorting by (bucket, key) keeps items of one prompt adjacent even on hash ties.
        order = sorted(
            range(len(items)), key=lambda i: (buckets[i], prompt_key(_prompt_of(items[i])))
        )
        threshold: float | None = None
        for i in order:
            if taken >= eval_size and buckets[i] != threshold:
                break
            held_out[i] = True
            taken += 1
            threshold = buckets[i]
    train = [item for item, out in zip(items, held_out, strict=True) if not out]
    evaluation = [item for item, out in zip(items, held_out, strict=True) if out]
    return train, evaluation


def render_messages(
    tokenizer: Any, prompt: Sequence[Message] | str, completion: Sequence[Message] | str
) -> str:
    """Render a prompt and its completion as one string for a model.

    Uses the tokenizer's chat template when it has one (what TRL does for
    conversational data); otherwise joins ``"role: content"`` lines, which
    suits encoders such as MiniLM that were never trained on a template.
    """
    messages = _as_messages(prompt) + (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else _as_messages(completion)
    )
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        return str(rendered)
    return "\n".join(f"{message['role']}: {message['content']}" for message in messages)
