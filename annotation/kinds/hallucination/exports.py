"""The hallucination kind's export shapes, each as a portable `row` and the same line built in SQL.

The SQL fits the frame of `annotation/selectors/export.py`: it returns (commit_seq, id, line_text)
and the core substitutes `{page}`, `{annotator}` and `{cursor}`. No `%` may appear in it except
the core's parameters (psycopg reads every `%`). The golden files and the Postgres integration
test hold each `row` and its SQL to the same output.

Which response a judgement prefers is read from the agreement key in SQL (its last letter is the
winner: "A", "B", "tie:A", "tie:B"; see payload.agreement_key) and from the payload in Python.
"""

from __future__ import annotations

from typing import Any

from ..base import ExportRecord, ExportShape
from .payload import winner

# Exported rows name an image by content hash and the extension of its verified format.
_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
# LLaVA's marker of where the image goes in the conversation.
IMAGE_TOKEN = "<image>"


def image_path(image: dict[str, str] | None) -> str | None:
    if not image:
        return None
    fmt = image["format"]
    return f"images/{image['sha256']}.{_EXTENSIONS.get(fmt, fmt)}"


def _provenance(record: ExportRecord) -> dict[str, Any]:
    return {
        "task_id": record.task_id,
        "judgement_ids": [record.judgement_id],
        "annotator": record.annotator,
        "agreement": record.agreement,
        "round": record.round,
        "cursor": record.cursor,
    }


KIND = "hallucination"


def _preferred(record: ExportRecord) -> int | None:
    """Position (0 or 1) of the preferred response, or None when the judgement prefers neither."""
    if record.kind != KIND or record.image is None or len(record.responses) != 2:
        return None
    won = winner(record.payload.get("choice"), record.payload.get("helpful_choice"))
    return None if won is None else "AB".index(won)


def _first_user(prompt: list[dict[str, Any]]) -> int | None:
    return next((i for i, m in enumerate(prompt) if m["role"] == "user"), None)


# --- llava_rlhf -------------------------------------------------------------------------------


def llava_rlhf_row(record: ExportRecord) -> dict[str, Any] | None:
    """A line of LLaVA-RLHF's reward-model data (`RLHF/data_utils/data_utils_rm.py`).

    Their loader reads `image` (joined to its image folder), `conversations` (human/gpt turns whose
    last one must be a gpt turn: it writes output_1 and then output_2 into that turn's value, so we
    leave it empty), `output_1`, `output_2` and `preference` (1 or 2). It reads the file with
    json.load, so gather the lines into one JSON list. System messages are left out: LLaVA's
    conversation template brings its own system prompt.
    """
    preferred = _preferred(record)
    if preferred is None:
        return None
    first_user = _first_user(record.prompt)
    conversations = [
        {
            "from": "human" if m["role"] == "user" else "gpt",
            "value": f"{IMAGE_TOKEN}\n{m['content']}" if i == first_user else m["content"],
        }
        for i, m in enumerate(record.prompt)
        if m["role"] != "system"
    ]
    conversations.append({"from": "gpt", "value": ""})
    return {
        "id": record.external_id if record.external_id is not None else str(record.task_id),
        "image": image_path(record.image),
        "conversations": conversations,
        "output_1": {"from": "gpt", "value": record.responses[0]["text"]},
        "output_2": {"from": "gpt", "value": record.responses[1]["text"]},
        "preference": preferred + 1,
        # True when the preference is the hallucination verdict, False when it fell to
        # helpfulness after a tie (LLaVA-RLHF's annotators answered the two in that order).
        "hallucination": record.payload.get("choice") in ("A", "B"),
        **_provenance(record),
    }


# --- vision_pairs -----------------------------------------------------------------------------


def vision_prompt(prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation in TRL's vision form: content as parts, the image before the first question."""
    first_user = _first_user(prompt)
    out = []
    for i, message in enumerate(prompt):
        parts: list[dict[str, Any]] = [{"type": "text", "text": message["content"]}]
        if i == first_user:
            parts.insert(0, {"type": "image"})
        out.append({"role": message["role"], "content": parts})
    return out


def _reply(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def vision_pairs_row(record: ExportRecord) -> dict[str, Any] | None:
    """TRL's vision preference row: `images`, conversational prompt/chosen/rejected, provenance.

    Judgements tied on both questions are left out: DPO needs a preferred response.
    """
    preferred = _preferred(record)
    if preferred is None:
        return None
    chosen, rejected = record.responses[preferred], record.responses[1 - preferred]
    return {
        "images": [image_path(record.image)],
        "prompt": vision_prompt(record.prompt),
        "chosen": _reply(chosen["text"]),
        "rejected": _reply(rejected["text"]),
        **_provenance(record),
    }


# --- corrections ------------------------------------------------------------------------------


def corrections_row(record: ExportRecord) -> dict[str, Any] | None:
    """An RLHF-V pair: the annotator's corrected response is chosen, the original rejected.

    `question` is the last user turn (RLHF-V's single question); `prompt` keeps the whole
    conversation for multi-turn tasks.
    """
    correction = record.payload.get("correction")
    if record.kind != KIND or not correction or record.image is None:
        return None
    questions = [m["content"] for m in record.prompt if m["role"] == "user"]
    return {
        "image": image_path(record.image),
        "question": questions[-1] if questions else "",
        "prompt": record.prompt,
        "chosen": correction["text"],
        "rejected": record.responses[correction["response"]]["text"],
        "response": correction["response"],
        **_provenance(record),
    }


# --- spans ------------------------------------------------------------------------------------


def spans_row(record: ExportRecord) -> dict[str, Any] | None:
    """Every judgement with its verdicts, its spans (with the text each covers) and its correction."""
    if record.kind != KIND:
        return None
    spans = [
        {
            "response": span["response"],
            "start": span["start"],
            "end": span["end"],
            "category": span["category"],
            "note": span.get("note", ""),
            "text": record.responses[span["response"]]["text"][span["start"] : span["end"]],
        }
        for span in record.payload.get("spans") or []
    ]
    return {
        "judgement_id": record.judgement_id,
        "task_id": record.task_id,
        "external_id": record.external_id,
        "image": image_path(record.image),
        "prompt": record.prompt,
        "responses": record.responses,
        "choice": record.payload.get("choice"),
        "helpful_choice": record.payload.get("helpful_choice"),
        "spans": spans,
        "correction": record.payload.get("correction"),
        "annotator": record.annotator,
        "agreement": record.agreement,
        "round": record.round,
        "cursor": record.cursor,
    }


# --- the same lines in Postgres ---------------------------------------------------------------

_FROM = """FROM annotation_judgement j
JOIN annotation_task t ON t.id = j.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id"""
# The two shown responses, by position.
_PAIR_JOINS = """
JOIN annotation_taskresponse sa ON sa.task_id = j.task_id AND sa.position = 0
JOIN annotation_response ra ON ra.id = sa.response_id
JOIN annotation_taskresponse sb ON sb.task_id = j.task_id AND sb.position = 1
JOIN annotation_response rb ON rb.id = sb.response_id"""
# Prompt.image holds "sha256:<hex>"; the image's row gives its verified format.
# LEFT, not inner: Postgres cannot estimate an inner join on substr(), and with few distinct
# images it then hashes and sorts the whole export on every page (3x slower). Every prompt of the
# kind has its image row (the import writes both in one transaction; images are never deleted).
_IMAGE_JOIN = "LEFT JOIN annotation_image i ON i.sha256 = substr(p.image, 8)"
_IMAGE_PATH = (
    "'images/' || i.sha256 || '.' || (CASE i.format WHEN 'jpeg' THEN 'jpg' ELSE i.format END)"
)
_WHERE = "WHERE j.project_id = %(project)s AND j.kind = %(kind)s"
# Share of the task's judgements with this answer, from the counts submit keeps on the task
# (the pairs export's formula, so both read the same).
_AGREEMENT = (
    "round(COALESCE((t.answer_counts ->> j.answer)::numeric, 0)"
    " / GREATEST(t.judgement_count, 1), 4)"
)
_DECISIVE = "j.answer IN ('A', 'B', 'tie:A', 'tie:B')"
_CHOSEN_IS_A = "right(j.answer, 1) = 'A'"
# The prompt's messages with the ordinal of the first user turn, for the multi-turn branches.
_MESSAGES = """(SELECT e.m, e.n, min(e.n) FILTER (WHERE e.m ->> 'role' = 'user') OVER () AS fu
        FROM jsonb_array_elements(p.messages) WITH ORDINALITY AS e(m, n)) x"""
# Most prompts are one question: those lines are concatenated without unnesting the messages.
_SINGLE_QUESTION = "jsonb_array_length(p.messages) = 1 AND p.messages -> 0 ->> 'role' = 'user'"
_PROVENANCE = f"""
    || ',"task_id":' || j.task_id::text
    || ',"judgement_ids":[' || j.id::text
    || '],"annotator":"' || {{annotator}}
    || '","agreement":' || {_AGREEMENT}::text
    || ',"round":' || t.round::text
    || ',"cursor":"' || {{cursor}} || '"}}'"""

_VISION_PROMPT = f"""CASE WHEN {_SINGLE_QUESTION}
        THEN '[{{"role":"user","content":[{{"type":"image"}},{{"type":"text","text":'
            || (p.messages -> 0 -> 'content')::text || '}}]}}]'
        ELSE (SELECT json_agg(json_build_object('role', x.m ->> 'role', 'content',
                CASE WHEN x.n = x.fu
                    THEN json_build_array(json_build_object('type', 'image'),
                                          json_build_object('type', 'text', 'text', x.m ->> 'content'))
                    ELSE json_build_array(json_build_object('type', 'text', 'text', x.m ->> 'content'))
                END) ORDER BY x.n)::text
              FROM {_MESSAGES})
    END"""

# The hot shape: concatenated text, as the pairs export (every part non-null, texts escaped by
# to_json), which keeps it above 50,000 lines a second.
VISION_PAIRS_SQL = f"""
SELECT j.commit_seq, j.id,
    '{{"images":["' || {_IMAGE_PATH} || '"],"prompt":' || {_VISION_PROMPT}
    || ',"chosen":[{{"role":"assistant","content":[{{"type":"text","text":'
    || to_json(CASE WHEN {_CHOSEN_IS_A} THEN ra.text ELSE rb.text END)::text
    || '}}]}}],"rejected":[{{"role":"assistant","content":[{{"type":"text","text":'
    || to_json(CASE WHEN {_CHOSEN_IS_A} THEN rb.text ELSE ra.text END)::text
    || '}}]}}]'{_PROVENANCE}
{_FROM}
{_IMAGE_JOIN}{_PAIR_JOINS}
{_WHERE} AND {_DECISIVE}
{{page}}"""

_CONVERSATIONS = f"""CASE WHEN {_SINGLE_QUESTION}
        THEN '[{{"from":"human","value":'
            || to_json('{IMAGE_TOKEN}' || chr(10) || (p.messages -> 0 ->> 'content'))::text
            || '}},{{"from":"gpt","value":""}}]'
        ELSE '[' || COALESCE((SELECT string_agg(json_build_object(
                    'from', CASE WHEN x.m ->> 'role' = 'user' THEN 'human' ELSE 'gpt' END,
                    'value', CASE WHEN x.n = x.fu THEN '{IMAGE_TOKEN}' || chr(10) ELSE '' END
                             || (x.m ->> 'content'))::text, ',' ORDER BY x.n)
                FROM {_MESSAGES}
                WHERE x.m ->> 'role' <> 'system') || ',', '')
            || '{{"from":"gpt","value":""}}]'
    END"""

LLAVA_RLHF_SQL = f"""
SELECT j.commit_seq, j.id,
    '{{"id":' || to_json(COALESCE(p.external_id, t.id::text))::text
    || ',"image":"' || {_IMAGE_PATH}
    || '","conversations":' || {_CONVERSATIONS}
    || ',"output_1":{{"from":"gpt","value":' || to_json(ra.text)::text
    || '}},"output_2":{{"from":"gpt","value":' || to_json(rb.text)::text
    || '}},"preference":' || (CASE WHEN {_CHOSEN_IS_A} THEN '1' ELSE '2' END)
    || ',"hallucination":' || (CASE WHEN j.answer IN ('A', 'B') THEN 'true' ELSE 'false' END)
    {_PROVENANCE}
{_FROM}
{_IMAGE_JOIN}{_PAIR_JOINS}
{_WHERE} AND {_DECISIVE}
{{page}}"""

CORRECTIONS_SQL = f"""
SELECT j.commit_seq, j.id, json_build_object(
    'image', {_IMAGE_PATH},
    'question', COALESCE((SELECT e.m ->> 'content'
                          FROM jsonb_array_elements(p.messages) WITH ORDINALITY AS e(m, n)
                          WHERE e.m ->> 'role' = 'user' ORDER BY e.n DESC LIMIT 1), ''),
    'prompt', p.messages,
    'chosen', j.payload -> 'correction' ->> 'text',
    'rejected', CASE WHEN j.payload -> 'correction' ->> 'response' = '0' THEN ra.text ELSE rb.text END,
    'response', (j.payload -> 'correction' ->> 'response')::int,
    'task_id', j.task_id,
    'judgement_ids', json_build_array(j.id),
    'annotator', {{annotator}},
    'agreement', {_AGREEMENT},
    'round', t.round,
    'cursor', {{cursor}}
)::text
{_FROM}
{_IMAGE_JOIN}{_PAIR_JOINS}
{_WHERE} AND jsonb_typeof(j.payload -> 'correction') = 'object'
{{page}}"""

SPANS_SQL = f"""
SELECT j.commit_seq, j.id, json_build_object(
    'judgement_id', j.id,
    'task_id', j.task_id,
    'external_id', p.external_id,
    'image', CASE WHEN i.sha256 IS NULL THEN NULL ELSE {_IMAGE_PATH} END,
    'prompt', p.messages,
    'responses', (SELECT json_agg(json_build_object('id', r.id, 'text', r.text, 'model', r.model_name)
                                  ORDER BY s.position)
                  FROM annotation_taskresponse s JOIN annotation_response r ON r.id = s.response_id
                  WHERE s.task_id = j.task_id),
    'choice', j.payload -> 'choice',
    'helpful_choice', j.payload -> 'helpful_choice',
    'spans', COALESCE((
        SELECT json_agg(json_build_object(
            'response', (e.s ->> 'response')::int,
            'start', (e.s ->> 'start')::int,
            'end', (e.s ->> 'end')::int,
            'category', e.s ->> 'category',
            'note', COALESCE(e.s ->> 'note', ''),
            -- substr counts characters, and the offsets count code points: the same unit.
            'text', substr(r.text, (e.s ->> 'start')::int + 1, (e.s ->> 'end')::int - (e.s ->> 'start')::int)
        ) ORDER BY e.n)
        FROM jsonb_array_elements(j.payload -> 'spans') WITH ORDINALITY AS e(s, n)
        JOIN annotation_taskresponse ts
            ON ts.task_id = j.task_id AND ts.position = (e.s ->> 'response')::int
        JOIN annotation_response r ON r.id = ts.response_id), '[]'::json),
    'correction', j.payload -> 'correction',
    'annotator', {{annotator}},
    'agreement', {_AGREEMENT},
    'round', t.round,
    'cursor', {{cursor}}
)::text
{_FROM}
LEFT JOIN annotation_image i ON i.sha256 = substr(p.image, 8)
{_WHERE}
{{page}}"""

SHAPES = {
    "llava_rlhf": ExportShape(
        name="llava_rlhf",
        description=(
            "LLaVA-RLHF reward-model data: image, conversations, output_1, output_2, preference"
            " (1 or 2), hallucination; gather the lines into one JSON list for their loader."
        ),
        row=llava_rlhf_row,
        sql=LLAVA_RLHF_SQL,
        has_images=True,
    ),
    "vision_pairs": ExportShape(
        name="vision_pairs",
        description=(
            "TRL vision preference rows: images, conversational prompt/chosen/rejected with"
            " image and text parts; judgements tied on both questions are left out."
        ),
        row=vision_pairs_row,
        sql=VISION_PAIRS_SQL,
        has_images=True,
    ),
    "corrections": ExportShape(
        name="corrections",
        description=(
            "RLHF-V pairs: image, question, chosen = the annotator's correction, rejected = the"
            " original response; one row per judgement with a correction."
        ),
        row=corrections_row,
        sql=CORRECTIONS_SQL,
        has_images=True,
    ),
    "spans": ExportShape(
        name="spans",
        description=(
            "Every judgement with its choices, hallucinated spans (response, code-point offsets,"
            " category, note, text) and correction."
        ),
        row=spans_row,
        sql=SPANS_SQL,
        has_images=True,
    ),
}
