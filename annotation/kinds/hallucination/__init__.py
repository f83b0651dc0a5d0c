"""The hallucination kind: an image, a question and two responses, judged as LLaVA-RLHF's workers did.

The annotator says which response hallucinates less about the image (A, B or tie) and, after a
tie, which is more helpful; marks hallucinated spans with a category (MMHal-Bench's question types
by default); and may correct one response (RLHF-V's fine-grained correctional feedback). See
`payload.py` for what a judgement may hold, `exports.py` for the four export shapes and `stats.py`
for the project page's rates and span agreement.

The online loop serves it through `loop.py` (`HallucinationLoop`): a vision-language policy trained
by vision DPO, a Fact-RLHF reward model that reads each image's captions, answers generated with
the image, and blind π_r-vs-π_{r-1} evaluations on held-out images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import register
from ..base import CORE_KEYS, Key, Kind, LineExtras, SettingField, TaskContext
from . import payload as _payload
from .exports import SHAPES
from .loop import HallucinationLoop
from .payload import DEFAULT_CATEGORIES, MAX_CATEGORIES, MAX_CATEGORY_CHARS, agreement_key
from .round_stats import HallucinationRounds, policy_round_stats

# The page's keyboard map, in the order of the shortcuts panel. The two verdicts sit on the rows
# pairwise uses for its choice and strength (1 2 3 / q w e), so a key means the same across kinds.
KEYS = (
    Key("1", "A hallucinates less"),
    Key("2", "B hallucinates less"),
    Key("3", "Tie: as faithful to the image"),
    Key("q", "After a tie: A is more helpful"),
    Key("w", "After a tie: B is more helpful"),
    Key("e", "After a tie: as helpful"),
    Key("j", "Cursor to the next sentence"),
    Key("k", "Cursor to the previous sentence"),
    Key("[", "Cursor to response A"),
    Key("]", "Cursor to response B"),
    Key("x", "Remove the span at the cursor"),
    Key("c", "Correct the response at the cursor"),
    Key("+", "Zoom the image in"),
    Key("-", "Zoom the image out"),
    Key("0", "Fit the image"),
    Key("ArrowLeft", "Pan the image left"),
    Key("ArrowRight", "Pan the image right"),
    Key("ArrowUp", "Pan the image up"),
    Key("ArrowDown", "Pan the image down"),
)
# The core's keys (rationale, skip, instructions, submit) and ours are never a category's.
_TAKEN = frozenset(CORE_KEYS) | {key.key for key in KEYS}
# Where a category finds no free letter of its own name: digits the map leaves free, then letters.
_FALLBACK = "456789abcdefghijklmnopqrstuvwxyz"


def category_keys(categories: Sequence[str]) -> list[tuple[str, str]]:
    """[(key, category)] in the categories' order: with a selection or the cursor on a sentence,
    pressing the key marks it with the category.

    Each category takes the first letter of its name no other key holds (object o, attribute a,
    count u, relation l, comparison m, environment n, holistic h, other t for the defaults), else
    the first free digit 4-9, else the first free letter. Deterministic, so the page, the legend
    and the tests agree; 20 categories always find keys (6 digits + 26 letters - 10 letters taken = 22).
    """
    taken = set(_TAKEN)
    out = []
    for category in categories:
        key = next((ch for ch in category + _FALLBACK if ch in _FALLBACK and ch not in taken), None)
        if key is None:  # unreachable within MAX_CATEGORIES; kept so a change there fails loudly
            raise ValueError(f"no free key for category {category!r}")
        taken.add(key)
        out.append((key, category))
    return out


class Hallucination(Kind):
    name = "hallucination"
    label = "Multimodal hallucination (image, two responses, spans)"
    min_responses = 2
    max_responses = 2
    template = "annotation/kinds/hallucination.html"
    needs_response_texts = True
    # A span's category must be one of the project's categories: without this the submit core
    # hands validate_payload no settings and the default categories would be checked instead.
    needs_settings = True
    requires_image = True
    export_shapes = SHAPES
    loop = HallucinationLoop()
    stats_template = "annotation/kinds/hallucination_stats.html"
    round_stats_template = "annotation/kinds/hallucination_rounds.html"
    oracle_annotator = "annotation.kinds.hallucination.simulation.SceneOracle"
    # Errors of these fields show beside them on the page ("spans[2].end" goes to "spans").
    form_fields = ("choice", "helpful_choice", "spans", "correction")

    def default_settings(self) -> dict[str, Any]:
        return _payload.default_settings()

    def clean_settings(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        return _payload.clean_settings(data)

    def settings_fields(self) -> list[SettingField]:
        return [
            SettingField(
                "categories",
                "Span categories",
                "list",
                f"One per line or comma-separated, 1 to {MAX_CATEGORIES}: lower-case letters, "
                f"digits, - or _, at most {MAX_CATEGORY_CHARS} characters each. Changing them "
                "touches no stored judgement: spans already marked keep the category names they "
                "were given, and exports carry them as they are.",
            ),
            SettingField(
                "show_context",
                "Show the task's context (e.g. captions) to annotators",
                "bool",
                "Takes effect the next time a task is shown.",
            ),
        ]

    def line_extras(self, obj: Mapping[str, Any]) -> LineExtras:
        return _payload.line_extras(obj)

    def validate_payload(
        self, data: Mapping[str, Any], *, task: TaskContext
    ) -> tuple[dict[str, Any], str]:
        return _payload.validate_payload(data, task=task)

    def payload_from_form(self, post: Mapping[str, Any]) -> dict[str, Any]:
        return _payload.payload_from_form(post)

    def judgement_serializers(self) -> list[type]:
        from .rest import HallucinationJudgementSerializer

        return [HallucinationJudgementSerializer]

    # judgement_input stays the identity: validate_payload checks the body in the submit service,
    # where the responses' texts are known and every error names its span.

    def keys(self) -> list[Key]:
        return list(KEYS)

    def category_keys(self, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        return category_keys(settings.get("categories") or DEFAULT_CATEGORIES)

    def page_context(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {"category_keys": self.category_keys(settings)}

    def task_extras(
        self,
        *,
        project_id: int,
        image: Mapping[str, Any] | None,
        context: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The image's URLs (served to members only, by content hash) and, if shown, the context."""
        extras: dict[str, Any] = {}
        if image is not None:
            url = f"/api/v1/projects/{project_id}/images/sha256:{image['sha256']}"
            extras["image"] = {
                "url": url,
                "thumb_url": f"{url}?size=thumb",
                "width": image["width"],
                "height": image["height"],
            }
        if settings.get("show_context", True):
            extras["context"] = dict(context)
        return extras

    def stats(self, project: Any) -> dict[str, Any]:
        """Per response source: hallucination and category rates (MMHal-style), choice and span
        agreement (overlap F1); see `annotation/selectors/hallucination.py`."""
        # Imported here: the selector reads this package's payload and stats modules.
        from ...selectors.hallucination import hallucination_dashboard

        return hallucination_dashboard(project)

    def round_stats(
        self,
        judged: Iterable[Any],
        *,
        policies: Iterable[tuple[int, int, str]],
        settings: Mapping[str, Any],
    ) -> HallucinationRounds:
        """Per policy (model version): the share of its answers with a hallucinated span, by
        category, and the spans marked, held out and over all tasks; see `round_stats.py`."""
        return policy_round_stats(judged, policies=policies, settings=settings)

    def gold_score(self, payload: Mapping[str, Any], gold: Mapping[str, Any]) -> float | None:
        """1.0 when the judgement gives the gold answer to both questions, else 0.0."""
        if gold.get("choice") not in _payload.CHOICES:
            return None
        given = agreement_key(payload.get("choice"), payload.get("helpful_choice"))
        return float(given == agreement_key(gold["choice"], gold.get("helpful_choice")))


register(Hallucination())
