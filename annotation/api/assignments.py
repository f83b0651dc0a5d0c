"""/api/v1 annotation: lease the next task, submit a judgement, skip."""

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..errors import InvalidInput
from ..feedback import MAX_RATIONALE_CHARS, MAX_TIME_SPENT_MS, STRENGTH_LABELS, PairwiseSchema
from ..services.judgement import MAX_IDEMPOTENCY_KEY
from .common import validator
from .parsers import JSONParser

DECISIVE = ("A", "B")
EVEN = tuple(c for c in PairwiseSchema.CHOICES if c not in DECISIVE)


class LeasedTaskSerializer(serializers.Serializer):
    class TaskSerializer(serializers.Serializer):
        class ResponseSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            text = serializers.CharField()

        id = serializers.IntegerField()
        kind = serializers.CharField()
        round = serializers.IntegerField()
        prompt = serializers.ListField(child=serializers.DictField())
        responses = ResponseSerializer(many=True)

    id = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    task = TaskSerializer()


class AssignmentCreateApi(APIView):
    throttle_scope = "lease"

    @extend_schema(
        request=None,
        responses={
            201: LeasedTaskSerializer,
            200: OpenApiResponse(LeasedTaskSerializer, description="the lease you already hold"),
            204: OpenApiResponse(description="nothing left for you"),
        },
    )
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.ANNOTATE
        )
        assignment, created = services.assignment_acquire(annotator=request.user, project=project)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        view = selectors.task_view(task=assignment.task)
        body = {"id": assignment.pk, "expires_at": assignment.expires_at, "task": view}
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(LeasedTaskSerializer(body).data, status=code)


class _JudgementCommonSerializer(serializers.Serializer):
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


class DecisiveJudgementSerializer(_JudgementCommonSerializer):
    """One response is better than the other, by how much."""

    choice = serializers.ChoiceField(choices=DECISIVE, help_text="The better response.")
    strength = serializers.IntegerField(
        min_value=1,
        max_value=3,
        help_text=", ".join(f"{k} = {v}" for k, v in STRENGTH_LABELS.items()) + ".",
    )


class EvenJudgementSerializer(_JudgementCommonSerializer):
    """Neither response is better: a tie, or both bad. There is no direction to weigh."""

    choice = serializers.ChoiceField(choices=EVEN)
    strength = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=3, help_text="Ignored."
    )


# The kind's schema checks the payload again in the service (the pages have no serializer);
# these serializers are what the OpenAPI schema shows, and they refuse the same bodies.
_validate_decisive = validator(DecisiveJudgementSerializer)
_validate_even = validator(EvenJudgementSerializer)


def _judgement_input(data) -> dict:
    choice = data.get("choice")
    if choice in DECISIVE:
        return _validate_decisive(data)
    if choice in EVEN:
        return _validate_even(data)
    message = f"must be one of {', '.join(DECISIVE + EVEN)}"
    raise InvalidInput(f"choice: {message}", errors=[{"field": "choice", "message": message}])


class JudgementApi(APIView):
    throttle_scope = "submit"
    # JSON only: what clients send, and all the schema then documents (a form-encoded body would
    # need its own rules for absent versus empty fields).
    parser_classes = [JSONParser]

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        assignment_id = serializers.IntegerField()
        task_id = serializers.IntegerField()
        payload = serializers.DictField()
        rationale = serializers.CharField()
        time_spent_ms = serializers.IntegerField(allow_null=True)
        late = serializers.BooleanField()
        created_at = serializers.DateTimeField()

    @extend_schema(
        request=PolymorphicProxySerializer(
            component_name="JudgementInput",
            serializers=[DecisiveJudgementSerializer, EvenJudgementSerializer],
            resource_type_field_name=None,
        ),
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                OpenApiParameter.HEADER,
                required=True,
                description="Any unique string per judgement: a retry with the same key returns "
                "the first judgement (200) and writes nothing.",
            )
        ],
        responses={201: OutputSerializer, 200: OutputSerializer},
    )
    def post(self, request, assignment_id: int):
        assignment = selectors.access_assignment(user=request.user, assignment_id=assignment_id)
        if not isinstance(request.data, dict):
            raise InvalidInput("the body must be a JSON object")
        judgement, created = services.judgement_submit(
            assignment=assignment,
            data=dict(_judgement_input(request.data)),
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(self.OutputSerializer(judgement).data, status=code)


class SkipApi(APIView):
    throttle_scope = "submit"

    @extend_schema(request=None, responses={204: OpenApiResponse(description="skipped")})
    def post(self, request, assignment_id: int):
        assignment = selectors.access_assignment(user=request.user, assignment_id=assignment_id)
        services.assignment_skip(assignment=assignment)
        return Response(status=status.HTTP_204_NO_CONTENT)
