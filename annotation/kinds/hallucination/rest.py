"""The hallucination judgement's REST body as the OpenAPI schema shows it.

The body is checked by `payload.validate_payload` (in the submit service, which the pages reach
too): only it knows the responses' texts, so only it can tell a span outside its response and name
it (`spans[3].end`). These serializers document that body and validate nothing on their own.
"""

from rest_framework import serializers

from ...feedback import JudgementCommonSerializer
from .payload import CHOICES, MAX_CORRECTION_CHARS, MAX_NOTE_CHARS, MAX_SPANS


class HallucinationSpanSerializer(serializers.Serializer):
    """A hallucinated span: half-open code-point offsets into one response's text."""

    response = serializers.IntegerField(min_value=0, max_value=1, help_text="0 = A, 1 = B.")
    start = serializers.IntegerField(
        min_value=0, help_text="Offset of the first code point (Python str index)."
    )
    end = serializers.IntegerField(
        min_value=1,
        help_text="Offset after the last code point; spans of one response must not overlap.",
    )
    category = serializers.CharField(help_text="One of the project's kind_settings.categories.")
    note = serializers.CharField(required=False, allow_blank=True, max_length=MAX_NOTE_CHARS)


class HallucinationCorrectionSerializer(serializers.Serializer):
    """An edited copy of one response (RLHF-V's correctional feedback)."""

    response = serializers.IntegerField(min_value=0, max_value=1, help_text="0 = A, 1 = B.")
    text = serializers.CharField(
        max_length=MAX_CORRECTION_CHARS, help_text="The corrected response; must differ."
    )


class HallucinationJudgementSerializer(JudgementCommonSerializer):
    """Which response hallucinates less about the image, the hallucinated spans, a correction."""

    choice = serializers.ChoiceField(
        choices=CHOICES, help_text="The response with fewer hallucinations, or tie."
    )
    helpful_choice = serializers.ChoiceField(
        choices=CHOICES,
        required=False,
        allow_null=True,
        help_text="Required when choice is tie (the more helpful response); refused otherwise.",
    )
    spans = HallucinationSpanSerializer(many=True, required=False, max_length=MAX_SPANS)
    correction = HallucinationCorrectionSerializer(required=False, allow_null=True)
