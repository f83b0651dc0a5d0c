"""The hindsight judgement's REST body as the OpenAPI schema shows it.

`payload.validate_payload` checks the body in the submit service (which the pages reach too): only
it knows how many responses the task shows. The phase order is the core's: a hindsight judgement
before the foresight one is a 409, a second foresight judgement (another key) too.
"""

from rest_framework import serializers

from ...feedback import JudgementCommonSerializer
from .payload import CHOICES, MAX_REASON_CHARS, PHASES


class HindsightJudgementSerializer(JudgementCommonSerializer):
    """One phase of a hindsight judgement: satisfaction per response and, with two, which more."""

    phase = serializers.ChoiceField(
        choices=PHASES,
        help_text="foresight first (no outcome shown); hindsight after the outcome is revealed "
        "(GET the assignment: its responses then carry `outcome`).",
    )
    ratings = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=5),
        min_length=1,
        max_length=2,
        help_text="One per response, in order: 1 very dissatisfied ... 5 very satisfied.",
    )
    choice = serializers.ChoiceField(
        choices=CHOICES,
        required=False,
        allow_null=True,
        help_text="Required with two responses (which satisfied more); refused with one.",
    )
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_REASON_CHARS, trim_whitespace=False
    )
