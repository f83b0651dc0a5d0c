"""The contract every feedback kind fulfils, and nothing else.

A kind is one module under `annotation/kinds/` holding one `Kind` instance registered in
`annotation.kinds`; its page partial lives at `frontend/templates/annotation/kinds/<name>.html`.
The lease, submit, import and export cores read the registry and never test a kind by name, so a
new kind touches no core file. `tests/annotation/kinds/test_contract.py` runs over every kind.

(Argilla keeps one validator class per question type, Label Studio one file per control tag; we
keep the validator's idea and put the page, the exports and the loop hooks beside it.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidInput


def field_error(field_name: str, message: str) -> InvalidInput:
    """The 400 of one field: the message names the field, and `errors` carries it for clients."""
    return InvalidInput(
        f"{field_name}: {message}", errors=[{"field": field_name, "message": message}]
    )


@dataclass(frozen=True)
class Key:
    """One keyboard binding of the annotation page: shown in the shortcuts panel and the legends."""

    key: str
    label: str


@dataclass(frozen=True)
class TaskContext:
    """What payload validation may need to know of the task being judged.

    `responses` holds the shown responses' texts in position order; the core loads them only for
    kinds with `needs_response_texts` (the pairwise hot path never pays for them). `settings` are
    the project's validated kind settings.
    """

    responses: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LineExtras:
    """The kind-specific parts of one import line, validated.

    `image` is the line's image reference as written ("sha256:<hex>" or a path inside the uploaded
    zip); the import core resolves it, stores the image and refuses the line if it cannot.
    """

    image: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # Facts for an outcome simulator (`Prompt.hidden`): stored, never shown nor exported.
    hidden: dict[str, Any] = field(default_factory=dict)
    # One outcome text per response, in the line's order, or () when the line has none.
    outcomes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportRecord:
    """One judgement as the portable export path hands it to a shape's `row`.

    `responses` are the shown responses in position order, each {"id", "text", "model"} (and
    "outcome" for a kind with phases); `prompt` the conversation; `image` the prompt's image as
    {"sha256", "format"} or None. For a kind with phases, `phase` is the row's and `earlier` holds
    the same assignment's earlier phases by name, each {"judgement_id", "payload", "rationale",
    "time_spent_ms", "late"} (filled for the kind's own shapes, not for "raw").
    """

    judgement_id: int
    task_id: int
    cursor: str
    kind: str
    payload: dict[str, Any]
    answer: str
    rationale: str
    annotator: str
    agreement: float
    round: int
    prompt: list[dict[str, Any]]
    responses: list[dict[str, Any]]
    external_id: str | None
    image: dict[str, str] | None
    context: dict[str, Any]
    metadata: dict[str, Any]
    time_spent_ms: int | None
    late: bool
    created_at: str
    phase: str = ""
    earlier: Mapping[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportShape:
    """One export shape of a kind: `row` builds a line (None leaves the judgement out).

    `sql`, when given, builds the same lines inside Postgres for speed (see
    `annotation/selectors/export.py` for the query frame it must fit); the portable path and the
    golden files hold the two to the same output.
    """

    name: str
    description: str
    row: Callable[[ExportRecord], dict[str, Any] | None]
    sql: str | None = None
    # Whether rows of this shape name images, so that the image archive export applies.
    has_images: bool = False
    # For a kind with phases: the phases whose judgements the shape reads, the default first; the
    # export's `phase` parameter picks another of them. () reads every row (and takes no phase).
    phases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SettingField:
    """One project setting of a kind as the project page edits it, rendered by the core's form.

    `name` is the setting's key in `kind_settings`. `type` says how it is typed and shown:
    "list" (a list of short strings: a textarea, one per line or comma-separated), "bool" (a
    checkbox) or "text" (one line). The kind's `clean_settings` still has the last word on values.
    """

    name: str
    label: str
    type: Literal["list", "bool", "text"]
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in ("list", "bool", "text"):
            raise ValueError(f"setting {self.name!r}: unknown field type {self.type!r}")


# The core's keys on the annotation page; a kind's keys must not take them.
CORE_KEYS = ("r", "s", "Enter", "?", "i")


class Kind:
    """A feedback kind. Subclasses set the class attributes and override what differs."""

    name: str = ""
    label: str = ""
    min_responses: int = 2
    max_responses: int = 2
    # Template of the kind's part of the annotation page (the task body and its answer fields).
    template: str = ""
    # Whether `validate_payload` reads the shown responses' texts (span offsets do; a choice doesn't).
    needs_response_texts: bool = False
    # Whether `validate_payload` reads the project's kind settings (span categories do).
    needs_settings: bool = False
    # Whether an import line must carry an image.
    requires_image: bool = False
    # Export shapes by name; "raw" is the core's and serves every kind.
    export_shapes: Mapping[str, ExportShape] = {}
    # The loop's hooks for this kind, or None when the online loop does not serve it.
    loop: Any = None
    # Dotted path of the kind's simulated annotator for `simulate_annotators` ("" for none): a
    # factory called as factory(project=, options=), imported only when a simulation asks for it.
    oracle_annotator: str = ""
    # The phases of one judgement, in the order they must be given ((): one judgement, phase "").
    # Each phase is stored as its own row; the first locks once the next is given, and only the
    # last completes the assignment and counts toward the task's overlap (services/judgement.py).
    phases: tuple[str, ...] = ()
    # Whether a task shows its responses' outcomes (hindsight): a task imported without them is
    # not leased until every response has one (`Task.ready`, set by the outcome simulation).
    shows_outcomes: bool = False

    # --- project settings -----------------------------------------------------------------

    def default_settings(self) -> dict[str, Any]:
        return {}

    def clean_settings(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """The project's kind settings, validated and completed with defaults; raises InvalidInput."""
        if data:
            unknown = ", ".join(sorted(data))
            raise field_error("kind_settings", f"this kind takes no settings (got {unknown})")
        return self.default_settings()

    def settings_fields(self) -> list[SettingField]:
        """The settings a manager edits on the project page, in the page's order; [] hides the
        card. Each name must be a key of `default_settings`."""
        return []

    def settings_of(self, stored: Mapping[str, Any] | None) -> dict[str, Any]:
        """A project's stored settings (validated when they were set) completed with defaults,
        without validating them again on the hot paths."""
        return {**self.default_settings(), **(stored or {})}

    # --- import ---------------------------------------------------------------------------

    def adapt_line(self, obj: dict[str, Any], *, rng: Any) -> dict[str, Any]:
        """Turns a public dataset's line (e.g. HH-RLHF) into Tandem's line shape; identity by default.

        `rng` is a `random.Random` of the import, for kinds that shuffle responses.
        """
        return obj

    def line_extras(self, obj: Mapping[str, Any]) -> LineExtras:
        """Validates the kind's own fields of an import line; raises InvalidInput naming the field."""
        return LineExtras()

    # --- judging --------------------------------------------------------------------------

    def validate_payload(
        self, data: Mapping[str, Any], *, task: TaskContext
    ) -> tuple[dict[str, Any], str]:
        """The cleaned payload and its agreement key (the comparable core of the answer).

        Raises InvalidInput naming the field. `rationale` and `time_spent_ms` are the core's.
        """
        raise NotImplementedError

    def payload_from_form(self, post: Mapping[str, Any]) -> dict[str, Any]:
        """The page form's fields as the payload dict `validate_payload` reads (no validation)."""
        raise NotImplementedError

    def keys(self) -> list[Key]:
        """The page's keyboard map, in the order the shortcuts panel lists it."""
        return []

    # Page-form fields whose errors the kind's partial shows beside them (an error's field is
    # matched by its first segment: "spans[2].start" goes to "spans"); errors of any other field
    # are listed at the top of the form, so none is ever hidden.
    form_fields: tuple[str, ...] = ()

    # --- REST -------------------------------------------------------------------------------

    def judgement_serializers(self) -> list[type]:
        """DRF serializers of the kind's judgement body: the OpenAPI schema offers them all."""
        return []

    def judgement_input(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The REST body checked by the kind's serializer (a 400 naming the field)."""
        return dict(data)

    def task_extras(
        self,
        *,
        project_id: int,
        image: Mapping[str, Any] | None,
        context: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Fields the leased task carries beyond prompt and responses (e.g. its image).

        `image` is the prompt's stored image as {"sha256", "format", "width", "height"}, or None.
        """
        return {}

    def page_context(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Extra context the kind's page partial reads (e.g. which key marks which category)."""
        return {}

    def assignment_context(self, *, assignment: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Extra page context that depends on the assignment shown (e.g. the phase due and what
        it reveals); read only when a task is shown. Reads go through selectors."""
        return {}

    # --- what a manager sees --------------------------------------------------------------

    # Template of the kind's panel on the project page ("" for none), rendered with `stats`.
    stats_template: str = ""

    def stats(self, project: Any) -> dict[str, Any]:
        """The context of the kind's project-page panel (reads go through selectors)."""
        return {}

    # Template of the kind's panel on the loop dashboard ("" for none), rendered with `panel` =
    # `round_stats(...).panel(win_rates)`.
    round_stats_template: str = ""

    def round_stats(
        self,
        judged: Iterable[Any],
        *,
        policies: Iterable[tuple[int, int, str]],
        settings: Mapping[str, Any],
    ) -> Any:
        """The kind's figures of the online loop's policies from human judgements, or None.

        `judged` yields `annotation.selectors.rounds.JudgedAnswers` (task purpose, payload, and the
        shown (response id, model version id) by position), lazily: a kind that returns None
        without iterating costs no query. `policies` are (round, model version id, name). The
        answer offers `policy_json(r)` and `previous_policy_json(r)` (the rounds API) and
        `panel(win_rates)` (the context of `round_stats_template`).
        """
        return None

    # --- quality and training ---------------------------------------------------------------

    def gold_score(self, payload: Mapping[str, Any], gold: Mapping[str, Any]) -> float | None:
        """How well a judgement matches a gold answer, in [0, 1]; None when not comparable."""
        return None

    def training_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Export rows of the kind's training shape turned into `training` package rows."""
        return rows
