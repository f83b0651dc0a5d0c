"""What a hallucination project, import line and judgement may hold: settings, line fields, payload.

Everything here is a pure function of its input (no database), so the REST API, the page and the
importer refuse the same things with the same messages, naming the field (`spans[3].end`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from ...feedback import text_problem
from ..base import LineExtras, TaskContext, field_error

# MMHal-Bench's eight question types, which double as the kinds of hallucination a span can show.
DEFAULT_CATEGORIES = (
    "object",
    "attribute",
    "count",
    "relation",
    "comparison",
    "environment",
    "holistic",
    "other",
)
MAX_CATEGORIES = 20
MAX_CATEGORY_CHARS = 32
# Lower-case so that a category reads the same in the legend, the export and the stats table.
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")

CHOICES = ("A", "B", "tie")
# A response of a few thousand words holds a few hundred sentences; more spans than this is a
# client marking every word, which no reader of the export can use.
MAX_SPANS = 200
MAX_NOTE_CHARS = 1000
MAX_CORRECTION_CHARS = 200_000  # the import's cap on one response's text
# The most spans, each with the longest note (escaped quotes doubling it), fit in this much JSON.
MAX_SPANS_JSON_CHARS = MAX_SPANS * (2 * MAX_NOTE_CHARS + 200)
_SPAN_KEYS = frozenset({"response", "start", "end", "category", "note"})
_CORRECTION_KEYS = frozenset({"response", "text"})

MAX_IMAGE_REF_CHARS = 300
_SHA256_REF = re.compile(r"sha256:[0-9a-f]{64}\Z")
# Caps on the factual context (LLaVA-RLHF's Fact-RLHF gives the reward model captions and the
# multiple-choice options with their answer); all of it is shown to annotators as plain text.
_CONTEXT_LISTS = {"captions": (20, 2000), "choices": (26, 1000)}
_CONTEXT_TEXTS = {"reference": 10_000, "answer": 1000}


def default_settings() -> dict[str, Any]:
    return {"categories": list(DEFAULT_CATEGORIES), "show_context": True}


def clean_settings(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The project's settings completed with defaults; raises InvalidInput naming the setting."""
    settings = default_settings()
    if data is None:
        return settings
    if not isinstance(data, Mapping):
        raise field_error("kind_settings", "must be an object")
    for key in data:
        if key not in settings:
            raise field_error(
                f"kind_settings.{key}", "unknown setting; this kind takes categories, show_context"
            )
    if "categories" in data:
        settings["categories"] = _clean_categories(data["categories"])
    if "show_context" in data:
        if not isinstance(data["show_context"], bool):
            raise field_error("kind_settings.show_context", "must be true or false")
        settings["show_context"] = data["show_context"]
    return settings


def _clean_categories(value: Any) -> list[str]:
    where = "kind_settings.categories"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CATEGORIES:
        raise field_error(where, f"must be a list of 1 to {MAX_CATEGORIES} category names")
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str) or len(name) > MAX_CATEGORY_CHARS or not _CATEGORY.match(name):
            raise field_error(
                f"{where}[{i}]",
                f"must be 1 to {MAX_CATEGORY_CHARS} lower-case letters, digits, - or _,"
                " starting with a letter or digit",
            )
        if name in seen:
            raise field_error(f"{where}[{i}]", f"'{name}' is listed twice")
        seen.add(name)
    return list(value)


# --- import line ------------------------------------------------------------------------------


def _line_error(field_name: str, message: str) -> Exception:
    # The import core turns a kind's InvalidInput into the line's error, field name included.
    return field_error(field_name, message)


def line_extras(obj: Mapping[str, Any]) -> LineExtras:
    """The line's image reference and factual context, validated; raises InvalidInput naming the field.

    The prompt must end with the user's turn: the two responses answer it, and both export formats
    (LLaVA's human/gpt turns, TRL's prompt + completion) need the last prompt turn to be the user's.
    """
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        if prompt[-1].get("role") != "user":
            raise _line_error(
                f"prompt[{len(prompt) - 1}].role",
                "the last message must be the user's (the responses answer it)",
            )
    return LineExtras(image=_image_ref(obj.get("image")), context=_context(obj.get("context")))


def _image_ref(value: Any) -> str:
    if value is None or value == "":
        raise _line_error(
            "image", "required: a path inside the uploaded zip or sha256:<hex> of an uploaded image"
        )
    if not isinstance(value, str):
        raise _line_error("image", "must be a string")
    if value.startswith("sha256:"):
        if not _SHA256_REF.match(value):
            raise _line_error("image", "must be sha256: followed by 64 lower-case hex digits")
        return value
    # A path inside the zip. The import core looks it up among the archive's entries and never
    # opens a file by it, but a path that could climb out of a folder is refused all the same.
    if len(value) > MAX_IMAGE_REF_CHARS:
        raise _line_error("image", f"longer than {MAX_IMAGE_REF_CHARS} characters")
    problem = text_problem(value)
    if problem:
        raise _line_error("image", problem)
    if value.startswith("/") or "\\" in value:
        raise _line_error("image", "must be a relative path with / separators")
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise _line_error("image", "must not contain empty, . or .. path parts")
    return value


def _context(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _line_error("context", "must be an object with captions, reference, choices, answer")
    context: dict[str, Any] = {}
    for key, item in value.items():
        where = f"context.{key}"
        if key in _CONTEXT_LISTS:
            most, chars = _CONTEXT_LISTS[key]
            if not isinstance(item, list) or len(item) > most:
                raise _line_error(where, f"must be a list of at most {most} strings")
            for i, text in enumerate(item):
                _context_text(f"{where}[{i}]", text, chars)
            context[key] = list(item)
        elif key in _CONTEXT_TEXTS:
            _context_text(where, item, _CONTEXT_TEXTS[key])
            context[key] = item
        else:
            raise _line_error(
                where, "unknown field; context takes captions, reference, choices, answer"
            )
    return context


def _context_text(where: str, text: Any, chars: int) -> None:
    if not isinstance(text, str):
        raise _line_error(where, "must be a string")
    if len(text) > chars:
        raise _line_error(where, f"longer than {chars} characters")
    problem = text_problem(text)
    if problem:
        raise _line_error(where, problem)


# --- judgement payload ------------------------------------------------------------------------


def winner(choice: str, helpful_choice: str | None) -> str | None:
    """The preferred response, "A" or "B": the less hallucinated, or after a tie the more helpful.

    None when both verdicts are ties (no pair can be built from the judgement).
    """
    if choice in ("A", "B"):
        return choice
    return helpful_choice if helpful_choice in ("A", "B") else None


def agreement_key(choice: str, helpful_choice: str | None) -> str:
    """ "A", "B", "tie:A", "tie:B" or "tie".

    Agreement counts annotators who gave the same answer to both questions, so "A" (A hallucinates
    less) and "tie:A" (as faithful, A more helpful) are different answers although both prefer A:
    they disagree on the question this kind exists for. The winner is the key's last letter when it
    is A or B, which lets the export SQL pick the chosen response from the indexed column.
    """
    if choice in ("A", "B"):
        return choice
    return f"tie:{helpful_choice}" if helpful_choice in ("A", "B") else "tie"


def validate_payload(data: Mapping[str, Any], *, task: TaskContext) -> tuple[dict[str, Any], str]:
    """The stored payload {choice, helpful_choice, spans, correction} and its agreement key.

    `helpful_choice` is required after a tie and refused after a decisive choice (a second verdict
    that would be silently dropped is the client's mistake, not something to guess about); it is
    stored as null then. Spans come back sorted by (response, start); `correction` is null when
    none was given.
    """
    if not isinstance(data, Mapping):
        raise field_error("payload", "must be an object")
    choice = data.get("choice")
    if choice not in CHOICES:
        raise field_error("choice", "must be A, B or tie (which response hallucinates less)")
    helpful = data.get("helpful_choice")
    if helpful == "":
        helpful = None
    if choice == "tie":
        if helpful not in CHOICES:
            raise field_error(
                "helpful_choice", "required after a tie: A, B or tie (which is more helpful)"
            )
    elif helpful is not None:
        raise field_error(
            "helpful_choice", "only given after a tie; leave it out when choice is A or B"
        )
    categories = task.settings.get("categories") or DEFAULT_CATEGORIES
    payload = {
        "choice": choice,
        "helpful_choice": helpful,
        "spans": _spans(data.get("spans"), task.responses, categories),
        "correction": _correction(data.get("correction"), task.responses),
    }
    return payload, agreement_key(choice, helpful)


def _index(value: Any, where: str, responses: tuple[str, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(responses):
        shown = " or ".join(str(i) for i in range(len(responses))) or "an index of a response"
        raise field_error(where, f"must be {shown} (the response's position)")
    return value


def _is_cut(text: str, at: int) -> bool:
    """Whether offset `at` falls inside one character as the reader sees it.

    An approximation of a grapheme-cluster boundary that covers what annotators meet: combining
    accents, emoji joined by ZWJ, variation selectors and skin-tone modifiers. A span edge there
    would mark half a letter or half an emoji.
    """
    if at <= 0 or at >= len(text):
        return False
    after, before = text[at], text[at - 1]
    return (
        unicodedata.category(after) in ("Mn", "Mc", "Me")
        or after == "\u200d"
        or before == "\u200d"
        or "\ufe00" <= after <= "\ufe0f"
        or "\U0001f3fb" <= after <= "\U0001f3ff"
    )


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(where, "must be an integer (an offset in Unicode code points)")
    return value


def _spans(value: Any, responses: tuple[str, ...], categories: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise field_error("spans", "must be a list of {response, start, end, category, note?}")
    if len(value) > MAX_SPANS:
        raise field_error("spans", f"at most {MAX_SPANS} spans")
    spans: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(value):
        where = f"spans[{i}]"
        if not isinstance(item, dict):
            raise field_error(where, "must be an object {response, start, end, category, note?}")
        unknown = sorted(set(item) - _SPAN_KEYS)
        if unknown:
            raise field_error(f"{where}.{unknown[0]}", "unknown field")
        response = _index(item.get("response"), f"{where}.response", responses)
        text = responses[response]
        start = _int(item.get("start"), f"{where}.start")
        end = _int(item.get("end"), f"{where}.end")
        if not 0 <= start < len(text):
            raise field_error(f"{where}.start", f"must be from 0 to {len(text) - 1}")
        if not start < end <= len(text):
            raise field_error(
                f"{where}.end", f"must be after start and at most {len(text)} (the text's length)"
            )
        for edge, at in (("start", start), ("end", end)):
            if _is_cut(text, at):
                raise field_error(f"{where}.{edge}", "splits a character (an accent or an emoji)")
        category = item.get("category")
        if not isinstance(category, str) or category not in categories:
            raise field_error(f"{where}.category", f"must be one of {', '.join(categories)}")
        span: dict[str, Any] = {
            "response": response,
            "start": start,
            "end": end,
            "category": category,
        }
        note = item.get("note")
        if note is not None and note != "":
            if not isinstance(note, str):
                raise field_error(f"{where}.note", "must be a string")
            if len(note) > MAX_NOTE_CHARS:
                raise field_error(f"{where}.note", f"at most {MAX_NOTE_CHARS} characters")
            problem = text_problem(note)
            if problem:
                raise field_error(f"{where}.note", problem)
            span["note"] = note
        spans.append((i, span))
    spans.sort(key=lambda pair: (pair[1]["response"], pair[1]["start"]))
    for (first, previous), (i, span) in zip(spans, spans[1:], strict=False):
        if span["response"] == previous["response"] and span["start"] < previous["end"]:
            raise field_error(
                f"spans[{i}].start",
                f"overlaps spans[{first}] ({previous['start']}-{previous['end']})"
                f" in response {span['response']}",
            )
    return [span for _, span in spans]


def _correction(value: Any, responses: tuple[str, ...]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise field_error("correction", "must be an object {response, text} or null")
    unknown = sorted(set(value) - _CORRECTION_KEYS)
    if unknown:
        raise field_error(f"correction.{unknown[0]}", "unknown field")
    response = _index(value.get("response"), "correction.response", responses)
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        raise field_error("correction.text", "must be the corrected response, not empty")
    if len(text) > MAX_CORRECTION_CHARS:
        raise field_error("correction.text", f"at most {MAX_CORRECTION_CHARS} characters")
    problem = text_problem(text)
    if problem:
        raise field_error("correction.text", problem)
    if text == responses[response]:
        raise field_error("correction.text", "is the response unchanged; leave correction out")
    return {"response": response, "text": text}


def payload_from_form(post: Mapping[str, Any]) -> dict[str, Any]:
    """The page form's fields as the payload `validate_payload` reads.

    The form posts `spans` as a JSON string and the correction as two fields; `helpful_choice` is
    only sent on when the choice is a tie, because the page keeps the field (hidden) when the
    annotator changes a tie into A or B.
    """
    choice = post.get("choice") or None
    data: dict[str, Any] = {"choice": choice}
    if choice == "tie":
        data["helpful_choice"] = post.get("helpful_choice") or None
    raw = post.get("spans") or ""
    if len(raw) > MAX_SPANS_JSON_CHARS:
        raise field_error("spans", f"longer than {MAX_SPANS_JSON_CHARS} characters")
    if raw.strip():
        try:
            data["spans"] = json.loads(raw)
        except (ValueError, RecursionError):
            raise field_error("spans", "must be a JSON list of spans") from None
    # A browser sends every line break of a textarea as CRLF; the response text it edits has LF.
    where = post.get("correction_response") or ""
    text = (post.get("correction_text") or "").replace("\r\n", "\n")
    if where in ("0", "1"):
        data["correction"] = {"response": int(where), "text": text}
    elif where:
        raise field_error("correction_response", "must be empty, 0 or 1")
    return data
