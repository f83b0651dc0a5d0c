"""What every judgement and import line shares, whatever its kind: the core columns of a judgement
(rationale, time spent) and the rules that keep a value storable.

Each kind's own payload lives in its module under `annotation/kinds/`; one set of rules here serves
the API, the htmx pages and the importer, so the core fields are refused everywhere with the same
words.
"""

import re
from typing import Any

from rest_framework import serializers

from .errors import InvalidInput

MAX_RATIONALE_CHARS = 10_000
MAX_TIME_SPENT_MS = 7 * 24 * 3600 * 1000  # a week: anything longer is a broken client clock
# No body or import line Tandem accepts nests deeper than this (import metadata included); a
# limit far below Python's recursion limit keeps every later walk over the value cheap and safe.
MAX_JSON_DEPTH = 32

# Postgres stores neither NUL in text or jsonb nor a lone UTF-16 surrogate (it is not Unicode, so
# psycopg cannot encode it); both reach Python only through a JSON \u escape.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why Postgres cannot store this string, or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character, which cannot be stored"
    return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode"


def _shown(key: str) -> str:
    # The field path goes back in the error: it must itself be storable and printable.
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", key)


def may_be_unstorable(raw: str | bytes) -> bool:
    """False when the JSON text surely decodes to a value find_unstorable accepts.

    Two substring scans in C instead of a walk over the value: NUL and lone surrogates can only
    arrive as \\u escapes, and nesting deeper than the limit needs more brackets than the limit.
    """
    if isinstance(raw, bytes):
        return b"\\u" in raw or raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
    return "\\u" in raw or raw.count("[") + raw.count("{") > MAX_JSON_DEPTH


def find_unstorable(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """The first (field path, message) in a decoded JSON value that cannot be stored.

    Looks at every key and string, and refuses nesting deeper than max_depth. Iterative, so a
    hostile value cannot exhaust the stack. Paths read like `metadata.tags[2]`.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return where, problem
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return where, f"nested deeper than {max_depth} levels"
            children: list[tuple[Any, str, int]] = []
            if isinstance(item, dict):
                for key, child in item.items():
                    path = f"{where}.{_shown(key)}" if where else _shown(key)
                    problem = text_problem(key)
                    if problem:
                        return path, f"the key {problem}"
                    children.append((child, path, depth + 1))
            else:
                children = [(child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item)]
            stack.extend(reversed(children))  # depth-first in document order: the first fault wins
    return None


def _field_error(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", errors=[{"field": field, "message": message}])


def clean_common(data: dict[str, Any]) -> tuple[str, int | None]:
    """The columns every kind shares: an optional rationale and the time spent."""
    rationale = data.get("rationale") or ""
    if not isinstance(rationale, str):
        raise _field_error("rationale", "must be a string")
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise _field_error("rationale", f"must be at most {MAX_RATIONALE_CHARS} characters")
    problem = text_problem(rationale)
    if problem:
        raise _field_error("rationale", problem)
    time_spent = data.get("time_spent_ms")
    if time_spent is not None and (
        isinstance(time_spent, bool)
        or not isinstance(time_spent, int)
        or not 0 <= time_spent <= MAX_TIME_SPENT_MS
    ):
        raise _field_error(
            "time_spent_ms", f"must be an integer from 0 to {MAX_TIME_SPENT_MS} (a week)"
        )
    return rationale.strip(), time_spent


class JudgementCommonSerializer(serializers.Serializer):
    """The core fields of every kind's REST judgement body, as the OpenAPI schema shows them.

    Each kind's serializers (`Kind.judgement_serializers`) extend it; `clean_common` checks the
    same fields again in the service, which the pages reach without a serializer.
    """

    rationale = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        trim_whitespace=False,
        max_length=MAX_RATIONALE_CHARS,
    )
    time_spent_ms = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TIME_SPENT_MS
    )
