"""Pairwise comparison: which of two responses is better, and by how much.

Everything pairwise lives here: the payload (choice A, B, tie or both_bad; a strength 1..3 for
A or B), its page partial and keys, its REST body, the "pairs" export (prompt/chosen/rejected, the
rows DPO and reward training read), and the import of public preference files (HH-RLHF transcripts
and TRL preference rows, see `adapt_line`). The online loop's pairwise hooks live beside it in
`pairwise_loop.py`, attached by the loop's owner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

from ..errors import InvalidInput
from ..feedback import JudgementCommonSerializer
from . import register
from .base import ExportRecord, ExportShape, Key, Kind, TaskContext, field_error
from .pairwise_loop import PairwiseLoop

CHOICES = ("A", "B", "tie", "both_bad")
DECISIVE = ("A", "B")
EVEN = tuple(c for c in CHOICES if c not in DECISIVE)
STRENGTH_LABELS = {1: "slightly better", 2: "clearly better", 3: "much better"}
CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
# One key per option; the template writes each into a data-key attribute that tandem.js reads.
CHOICE_KEYS = dict(zip(CHOICES, "1234", strict=True))
STRENGTH_KEYS = dict(zip(STRENGTH_LABELS, "qwe", strict=True))


# --- the "pairs" export ----------------------------------------------------------------------

# Pairs are the hot export, so their lines are concatenated text rather than json_build_object (a
# quarter faster in the database): every part is non-null, texts go through to_json for escaping,
# and numbers are plain ints, a 1..3 strength and a rounded numeric. Only judgements of this kind
# are read (`j.kind`): another kind's "A" is not a preference between two responses.
PAIRS_SQL = """
SELECT j.commit_seq, j.id,
    '{"prompt":' || p.messages::text
    || ',"chosen":[{"role":"assistant","content":'
    || to_json(CASE WHEN j.answer = 'A' THEN ra.text ELSE rb.text END)::text
    || '}],"rejected":[{"role":"assistant","content":'
    || to_json(CASE WHEN j.answer = 'A' THEN rb.text ELSE ra.text END)::text
    || '}],"margin":' || COALESCE((j.payload ->> 'strength')::float8, 1.0)::text
    || ',"task_id":' || j.task_id::text
    || ',"judgement_ids":[' || j.id::text
    || '],"annotator":"' || {annotator}
    || '","agreement":'
    || round(COALESCE((t.answer_counts ->> j.answer)::numeric, 0) / GREATEST(t.judgement_count, 1), 4)::text
    || ',"round":' || t.round::text
    || ',"cursor":"' || {cursor} || '"}'
FROM annotation_judgement j
JOIN annotation_task t ON t.id = j.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
JOIN annotation_taskresponse sa ON sa.task_id = j.task_id AND sa.position = 0
JOIN annotation_response ra ON ra.id = sa.response_id
JOIN annotation_taskresponse sb ON sb.task_id = j.task_id AND sb.position = 1
JOIN annotation_response rb ON rb.id = sb.response_id
WHERE j.project_id = %(project)s AND j.kind = %(kind)s AND j.answer IN ('A', 'B')
{page}"""


def pair_row(record: ExportRecord) -> dict[str, Any] | None:
    """The portable path of PAIRS_SQL: one DPO row per decisive pairwise judgement."""
    choice = record.payload.get("choice")
    if record.kind != Pairwise.name or choice not in DECISIVE or len(record.responses) != 2:
        return None
    first, second = record.responses
    chosen, rejected = (first, second) if choice == "A" else (second, first)
    return {
        "prompt": record.prompt,
        "chosen": [{"role": "assistant", "content": chosen["text"]}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
        "margin": float(record.payload.get("strength") or 1),
        "task_id": record.task_id,
        "judgement_ids": [record.judgement_id],
        "annotator": record.annotator,
        "agreement": record.agreement,
        "round": record.round,
        "cursor": record.cursor,
    }


PAIRS = ExportShape(
    name="pairs",
    description="prompt/chosen/rejected (+margin) per decisive judgement; ties and both-bad are "
    "left out (the raw shape keeps them)",
    row=pair_row,
    sql=PAIRS_SQL,
)


# --- the REST body ---------------------------------------------------------------------------


class DecisiveJudgementSerializer(JudgementCommonSerializer):
    """One response is better than the other, by how much."""

    choice = serializers.ChoiceField(choices=DECISIVE, help_text="The better response.")
    strength = serializers.IntegerField(
        min_value=1,
        max_value=3,
        help_text=", ".join(f"{k} = {v}" for k, v in STRENGTH_LABELS.items()) + ".",
    )


class EvenJudgementSerializer(JudgementCommonSerializer):
    """Neither response is better: a tie, or both bad. There is no direction to weigh."""

    choice = serializers.ChoiceField(choices=EVEN)
    strength = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=3, help_text="Ignored."
    )


# --- importing public preference files -------------------------------------------------------

# HH-RLHF writes a dialogue as "\n\nHuman: …\n\nAssistant: …" turns.
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_text(text: str) -> str:
    # Some copies drop the leading blank line of the first turn; put it back so every turn,
    # the first included, starts with the same marker.
    stripped = text.lstrip("\n")
    return "\n\n" + stripped if stripped.startswith("Human:") else text


def _hh_turns(text: str, field: str) -> list[tuple[str, str, int]]:
    """(role, content, offset where the turn's content starts) of a normalised transcript."""
    found = list(_HH_TURN.finditer(text))
    if not found or found[0].start() != 0 or found[0].group(1) != "Human":
        raise field_error(field, 'an HH-RLHF transcript must start with a "\\n\\nHuman: " turn')
    turns = []
    for i, marker in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        turns.append((_HH_ROLES[marker.group(1)], text[marker.end() : end].strip(), marker.end()))
    return turns


def _split_hh(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """The shared turns and the two last replies of two HH-RLHF transcripts.

    The prompt is the longest run of shared turns that ends before an assistant turn of both; the
    replies are the rest of each transcript, as written (a few HH replies themselves contain
    "Human:" turns the model made up: they stay part of the reply, not of the prompt).
    """
    chosen, rejected = _hh_text(chosen), _hh_text(rejected)
    turns_c, turns_r = _hh_turns(chosen, "chosen"), _hh_turns(rejected, "rejected")
    shared = 0
    while shared < min(len(turns_c), len(turns_r)) and turns_c[shared][:2] == turns_r[shared][:2]:
        shared += 1
    cut = min(shared, len(turns_c) - 1, len(turns_r) - 1)
    while cut > 0 and not turns_c[cut][0] == turns_r[cut][0] == "assistant":
        cut -= 1
    if cut == 0:
        raise field_error("chosen", "no shared human turn before the two assistant replies")
    prompt = [{"role": role, "content": content} for role, content, _ in turns_c[:cut]]
    return prompt, chosen[turns_c[cut][2] :].strip(), rejected[turns_r[cut][2] :].strip()


def _messages(value: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise field_error(field, "must be a string or a non-empty list of {role, content} messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise field_error(f"{field}[{i}]", "must be an object with role and a string content")
    return value


def _split_conversations(
    chosen: Any, rejected: Any, prompt: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str, str]:
    """TRL conversational rows: the messages both completions share join the prompt (TRL's
    implicit prompt), and each completion must then be one assistant message."""
    chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    for field, rest in (("chosen", chosen[shared:]), ("rejected", rejected[shared:])):
        if len(rest) != 1 or rest[0].get("role") != "assistant":
            raise field_error(
                field, "after the turns both completions share, it must be one assistant message"
            )
    prompt = prompt + chosen[:shared]
    if not prompt:
        raise field_error(
            "prompt", "required (or chosen/rejected conversations sharing the prompt)"
        )
    return prompt, chosen[shared]["content"], rejected[shared]["content"]


def _preference_line(obj: Mapping[str, Any], *, rng: Any) -> dict[str, Any]:
    """A {"chosen", "rejected"} line (HH-RLHF, or TRL with or without "prompt") in Tandem's shape."""
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            messages, first, second = _split_hh(chosen, rejected)
            source = "hh-rlhf"
        else:
            messages, first, second, source = prompt, chosen, rejected, "trl"
    elif isinstance(chosen, str) or isinstance(rejected, str):
        field = "rejected" if isinstance(chosen, str) else "chosen"
        raise field_error(field, "chosen and rejected must both be strings or both conversations")
    else:
        if prompt is None:
            base: list[dict[str, Any]] = []
        elif isinstance(prompt, str):
            base = [{"role": "user", "content": prompt}]
        else:
            base = _messages(prompt, "prompt")
        messages, first, second = _split_conversations(chosen, rejected, base)
        source = "trl"
    metadata = obj.get("metadata", {})
    if isinstance(metadata, dict):
        metadata = dict(metadata)
    line = {k: obj[k] for k in ("id", "split") if k in obj}
    if not first.strip() or not second.strip():
        # Nothing to compare (four HH-RLHF test lines have an empty chosen reply): the prompt is
        # kept, without a task, like a line with no responses, for the online loop to answer.
        if isinstance(metadata, dict):
            metadata["source_format"] = source
            metadata["empty_reply"] = "chosen" if not first.strip() else "rejected"
        return {**line, "prompt": messages, "responses": [], "metadata": metadata}
    # Shown in random order, so the original label cannot bias annotators; kept in metadata.
    chosen_first = rng.random() < 0.5
    responses = [first, second] if chosen_first else [second, first]
    if isinstance(metadata, dict):
        metadata["source_format"] = source
        metadata["original_preference"] = "A" if chosen_first else "B"
    return {**line, "prompt": messages, "responses": responses, "metadata": metadata}


# --- the kind ----------------------------------------------------------------------------------


class Pairwise(Kind):
    name = "pairwise"
    label = "Pairwise comparison"
    template = "annotation/kinds/pairwise.html"
    stats_template = "annotation/kinds/pairwise.html#stats"
    export_shapes = {"pairs": PAIRS}
    form_fields = ("choice", "strength")
    # The loop's hooks (`pairwise_loop.PairwiseLoop`) are attached by the loop's owner.
    loop = PairwiseLoop()
    oracle_annotator = "annotation.services.simulation.PreferenceOracle"

    def validate_payload(
        self, data: Mapping[str, Any], *, task: TaskContext
    ) -> tuple[dict[str, Any], str]:
        choice = data.get("choice")
        if choice not in CHOICES:
            raise field_error("choice", "must be one of A, B, tie, both_bad")
        strength = data.get("strength")
        if choice in DECISIVE:
            if (
                isinstance(strength, bool)
                or not isinstance(strength, int)
                or not 1 <= strength <= 3
            ):
                raise field_error(
                    "strength", "must be 1 (slightly), 2 (clearly) or 3 (much better)"
                )
        else:
            # A tie or two bad answers has no direction, so a strength would mean nothing.
            strength = None
        return {"choice": choice, "strength": strength}, choice

    def payload_from_form(self, post: Mapping[str, Any]) -> dict[str, Any]:
        strength: Any = (post.get("strength") or "").strip()
        if strength.isdigit() and len(strength) < 4:
            strength = int(strength)
        elif not strength:
            strength = None
        return {"choice": post.get("choice") or "", "strength": strength}

    def keys(self) -> list[Key]:
        return [Key(CHOICE_KEYS[c], CHOICE_LABELS[c]) for c in CHOICES] + [
            Key(STRENGTH_KEYS[s], label.capitalize()) for s, label in STRENGTH_LABELS.items()
        ]

    def choice_options(self) -> list[dict[str, str]]:
        """The choice radios of the page partial."""
        return [{"value": c, "label": CHOICE_LABELS[c], "key": CHOICE_KEYS[c]} for c in CHOICES]

    def strength_options(self) -> list[dict[str, str]]:
        return [
            {"value": str(s), "label": label.capitalize(), "key": STRENGTH_KEYS[s]}
            for s, label in STRENGTH_LABELS.items()
        ]

    def adapt_line(self, obj: dict[str, Any], *, rng: Any) -> dict[str, Any]:
        if "responses" in obj or "chosen" not in obj or "rejected" not in obj:
            return obj  # Tandem's own line (the generic parse names what is missing)
        return _preference_line(obj, rng=rng)

    def line_extras(self, obj: Mapping[str, Any]):
        for field in ("image", "context"):
            if obj.get(field) not in (None, "", {}):
                raise field_error(field, "a pairwise task shows no image or context")
        return super().line_extras(obj)

    def judgement_serializers(self) -> list[type]:
        return [DecisiveJudgementSerializer, EvenJudgementSerializer]

    def judgement_input(self, data: Mapping[str, Any]) -> dict[str, Any]:
        choice = data.get("choice")
        if choice in DECISIVE:
            return _validate_decisive(data)
        if choice in EVEN:
            return _validate_even(data)
        message = f"must be one of {', '.join(CHOICES)}"
        raise InvalidInput(f"choice: {message}", errors=[{"field": "choice", "message": message}])

    def stats(self, project: Any) -> dict[str, Any]:
        from ..selectors.pages import original_preference_agreement

        return {"original": original_preference_agreement(project=project)}

    def gold_score(self, payload: Mapping[str, Any], gold: Mapping[str, Any]) -> float | None:
        if not isinstance(gold, Mapping) or gold.get("choice") not in CHOICES:
            return None
        return 1.0 if payload.get("choice") == gold["choice"] else 0.0

    def training_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # "pairs" rows already are the text DPO / reward rows `training.data` reads.
        return rows


def _validator(serializer_class: type) -> Any:
    from ..api.common import validator

    return validator(serializer_class)


# The kind checks the payload again in the service (the pages have no serializer); these
# serializers are what the OpenAPI schema shows, and they refuse the same bodies.
_validate_decisive = _validator(DecisiveJudgementSerializer)
_validate_even = _validator(EvenJudgementSerializer)

register(Pairwise())
