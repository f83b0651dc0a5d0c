"""/api/v1 annotation: lease the next task, submit a judgement, skip."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..errors import InvalidInput


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
            204: OpenApiResponse(description="nothing left for you"),
        },
    )
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.ANNOTATE
        )
        assignment = services.assignment_lease(annotator=request.user, project=project)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        view = selectors.task_view(task=assignment.task)
        body = {"id": assignment.pk, "expires_at": assignment.expires_at, "task": view}
        return Response(LeasedTaskSerializer(body).data, status=status.HTTP_201_CREATED)


class JudgementApi(APIView):
    throttle_scope = "submit"

    class InputSerializer(serializers.Serializer):
        choice = serializers.CharField()
        strength = serializers.IntegerField(required=False, allow_null=True)
        rationale = serializers.CharField(required=False, allow_blank=True)
        time_spent_ms = serializers.IntegerField(required=False, allow_null=True)

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
        request=InputSerializer,
        parameters=[
            OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=True)
        ],
        responses={201: OutputSerializer, 200: OutputSerializer},
    )
    def post(self, request, assignment_id: int):
        assignment = selectors.access_assignment(user=request.user, assignment_id=assignment_id)
        if not isinstance(request.data, dict):
            raise InvalidInput("the body must be a JSON object")
        judgement, created = services.judgement_submit(
            assignment=assignment,
            data=dict(request.data),
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
