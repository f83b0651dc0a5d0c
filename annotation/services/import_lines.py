"""Reading an import: every line validated into an `ImportLine`, errors naming the line and field.

A line: {"prompt": "text" | [{"role", "content"}...], "responses": ["text" | {"text", "model"?}...],
"id"?: external id, "metadata"?: {...}, "split"?: "train" | "eval"}, plus the fields of the
project's kind ("image", "context", "hidden", responses' "outcome": `Kind.line_extras`). A kind may first turn a public dataset's
line into this shape (`Kind.adapt_line`: pairwise reads HH-RLHF and TRL preference rows).
Nothing here writes: `annotation.services.imports` stores the images and the rows.
"""

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..feedback import MAX_JSON_DEPTH, find_unstorable, may_be_unstorable
from ..kinds import kind_for
from ..kinds.base import Kind
from ..models import Project, Prompt, Split

MAX_ERRORS_LISTED = 200
MAX_TEXT_CHARS = 200_000
MAX_EXTERNAL_ID = 200
ROLES = ("system", "user", "assistant")
_PROGRESS_EVERY = 5000


@dataclass
class ImportLine:
    line: int
    messages: list[dict[str, str]]
    responses: list[tuple[str, str]]
    external_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    split: str = Split.TRAIN
    # The line's image reference as written ("sha256:<hex>" or a path in the uploaded zip), until
    # the import resolves it to a stored image; and the kind's factual context.
    image: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # Facts for an outcome simulator (never shown), and one outcome per response or none.
    hidden: dict[str, Any] = field(default_factory=dict)
    outcomes: tuple[str, ...] = ()


class LineError(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}" if field_name else message)


def _messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise LineError("prompt", "must not be empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise LineError(
            "prompt", "must be a string or a non-empty list of {role, content} messages"
        )
    messages = []
    for i, message in enumerate(value):
        where = f"prompt[{i}]"
        if not isinstance(message, dict):
            raise LineError(where, "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise LineError(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LineError(f"{where}.content", "must be a string")
        if len(content) > MAX_TEXT_CHARS:
            raise LineError(f"{where}.content", f"longer than {MAX_TEXT_CHARS} characters")
        messages.append({"role": role, "content": content})
    return messages


def _responses(value: Any, *, minimum: int, maximum: int) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise LineError("responses", "must be a list")
    if not value:
        return []  # a prompt for the online loop to generate for: no task until it has responses
    if not minimum <= len(value) <= maximum:
        wanted = str(minimum) if minimum == maximum else f"{minimum} to {maximum}"
        raise LineError(
            "responses", f"this project's kind takes {wanted} responses (or none), got {len(value)}"
        )
    out = []
    for i, item in enumerate(value):
        where = f"responses[{i}]"
        if isinstance(item, str):
            text, model = item, ""
        elif isinstance(item, dict):
            text, model = item.get("text"), item.get("model", "") or ""
            if not isinstance(text, str):
                raise LineError(f"{where}.text", "must be a string")
            if not isinstance(model, str):
                raise LineError(f"{where}.model", "must be a string")
        else:
            raise LineError(where, "must be a string or an object with text")
        if not text.strip():
            raise LineError(where, "must not be empty")
        if len(text) > MAX_TEXT_CHARS:
            raise LineError(where, f"longer than {MAX_TEXT_CHARS} characters")
        out.append((text, model[:200]))
    return out


def parse_line(
    raw: bytes | str, *, line: int, kind: Kind | str, rng: random.Random | None = None
) -> ImportLine:
    if isinstance(kind, str):
        kind = kind_for(kind)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LineError("", f"not valid JSON ({exc})") from None
    except RecursionError:
        raise LineError("", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise LineError("", "must be a JSON object")
    if may_be_unstorable(raw):
        fault = find_unstorable(obj)
        if fault is not None:
            raise LineError(*fault)
    try:
        obj = kind.adapt_line(obj, rng=rng or random.Random(line))
        extras = kind.line_extras(obj)
    except InvalidInput as exc:
        # A kind's refusal already names its field ("chosen: ...").
        raise LineError("", exc.message) from None
    if kind.requires_image and not extras.image:
        raise LineError("image", "required")
    if "prompt" not in obj:
        raise LineError("prompt", "required")
    if "responses" not in obj:
        raise LineError("responses", "required")
    external_id = obj.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, str | int):
            raise LineError("id", "must be a string or an integer")
        external_id = str(external_id)
        if not external_id or len(external_id) > MAX_EXTERNAL_ID:
            raise LineError("id", f"must be 1 to {MAX_EXTERNAL_ID} characters")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise LineError("metadata", "must be an object")
    split = obj.get("split", Split.TRAIN)
    if split not in Split.values:
        raise LineError("split", f"must be one of {', '.join(Split.values)}")
    return ImportLine(
        line=line,
        messages=_messages(obj["prompt"]),
        responses=_responses(
            obj["responses"], minimum=kind.min_responses, maximum=kind.max_responses
        ),
        external_id=external_id,
        metadata=metadata,
        split=split,
        image=extras.image,
        context=dict(extras.context),
        hidden=dict(extras.hidden),
        outcomes=tuple(extras.outcomes),
    )


@dataclass
class ParsedImport:
    items: list[ImportLine]
    errors: list[dict[str, Any]]
    error_count: int
    lines: int

    def refuse(self, errors: list[dict[str, Any]]) -> None:
        """Adds errors found after parsing (e.g. by resolving images), keeping the list in line order."""
        self.error_count += len(errors)
        room = MAX_ERRORS_LISTED - len(self.errors)
        self.errors.extend(errors[: max(room, 0)])
        self.errors.sort(key=lambda e: e["line"])


def parse_import(
    lines: Iterable[bytes],
    *,
    project: Project,
    progress: Callable[[int], None] | None = None,
    seed: int | str | None = None,
) -> ParsedImport:
    """Validates every line; blank lines are skipped. Errors name the line and the field.

    `seed` seeds the import's random choices (the order a kind shows adapted responses in), so
    the same import gives the same tasks.
    """
    kind = kind_for(project.kind)
    rng = random.Random(f"tandem-import:{project.pk}:{seed}")
    parsed: list[ImportLine] = []
    errors: list[dict[str, Any]] = []
    error_count = 0
    seen_ids: dict[str, int] = {}

    def fail(line: int, message: str) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < MAX_ERRORS_LISTED:
            errors.append({"line": line, "message": message})

    number = 0
    for number, raw in enumerate(lines, start=1):
        if progress and number % _PROGRESS_EVERY == 0:
            progress(number)
        if not raw.strip():
            continue
        try:
            item = parse_line(raw, line=number, kind=kind, rng=rng)
        except LineError as exc:
            fail(number, str(exc))
            continue
        if item.external_id is not None:
            first = seen_ids.setdefault(item.external_id, number)
            if first != number:
                fail(number, f"id: '{item.external_id}' repeats the id of line {first}")
                continue
        parsed.append(item)
    if progress:
        progress(number)

    if seen_ids:
        existing = _existing_external_ids(project, list(seen_ids))
        for external_id in sorted(existing, key=seen_ids.__getitem__):
            fail(seen_ids[external_id], f"id: '{external_id}' is already in this project")
    if not parsed and not error_count:
        fail(0, "the file holds no lines")
    errors.sort(key=lambda e: e["line"])
    return ParsedImport(items=parsed, errors=errors, error_count=error_count, lines=number)


def _existing_external_ids(project: Project, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 10_000):
        chunk = ids[start : start + 10_000]
        found.update(
            Prompt.objects.filter(project=project, external_id__in=chunk).values_list(
                "external_id", flat=True
            )
        )
    return found
