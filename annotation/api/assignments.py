"""/api/v1 annotation: lease the next task, read an assignment, submit a judgement, skip."""

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
from ..kinds import kind_for, registered
from ..services.judgement import MAX_IDEMPOTENCY_KEY
from .parsers import JSONParser


class LeasedTaskSerializer(serializers.Serializer):
    class TaskSerializer(serializers.Serializer):
        class ResponseSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            text = serializers.CharField()

        class LeasedImageSerializer(serializers.Serializer):
            url = serializers.CharField(help_text="Members only; add ?size=thumb for a thumbnail.")
            width = serializers.IntegerField()
            height = serializers.IntegerField()

        id = serializers.IntegerField()
        kind = serializers.CharField()
        round = serializers.IntegerField()
        prompt = serializers.ListField(child=serializers.DictField())
        responses = ResponseSerializer(many=True)
        # The kind's extras (Kind.task_extras), present only for kinds that show them.
        image = LeasedImageSerializer(required=False, help_text="The image shown with the prompt.")
        context = serializers.DictField(
            required=False, help_text="Factual context (captions, reference), where shown."
        )

    id = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    phase = serializers.CharField(
        required=False, help_text="A kind with phases (hindsight): the phase due next."
    )
    task = TaskSerializer()


def _task_body(view: selectors.TaskView, *, revealed: bool = False) -> dict:
    # Absent keys are left out of the output (the fields are not required), so a pairwise task
    # carries neither image nor context. A response's outcome goes out only when the view read it
    # (`selectors.assignment_view` decides) and the caller shows it.
    responses = [
        {
            "id": r.id,
            "text": r.text,
            "model": r.model,
            **({"outcome": r.outcome} if revealed and r.outcome is not None else {}),
        }
        for r in view.responses
    ]
    return {
        "id": view.id,
        "kind": view.kind,
        "round": view.round,
        "prompt": view.prompt,
        "responses": responses,
        **view.extras,
    }


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
        # The lease never reads the responses' outcomes (task_view without reveal): a phase due
        # next is told, and GET assignments/{id} shows what that phase may see.
        if kind_for(project.kind).phases:
            view = selectors.assignment_view(assignment=assignment)
            body = {"phase": view.phase, "task": _task_body(view.task, revealed=False)}
        else:
            body = {"task": _task_body(selectors.task_view(task=assignment.task, project=project))}
        body.update(id=assignment.pk, expires_at=assignment.expires_at)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(LeasedTaskSerializer(body).data, status=code)


class AssignmentSerializer(serializers.Serializer):
    # Its own name: two nested "TaskSerializer"s would be one "Task" component in the schema.
    class AssignmentTaskSerializer(LeasedTaskSerializer.TaskSerializer):
        class ShownResponseSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            text = serializers.CharField()
            model = serializers.CharField()
            outcome = serializers.CharField(
                required=False,
                allow_blank=True,
                help_text="What came of acting on the response; present only once your first "
                "phase (foresight) is stored, empty while no outcome is written yet.",
            )

        responses = ShownResponseSerializer(many=True)

    id = serializers.IntegerField()
    status = serializers.CharField()
    expires_at = serializers.DateTimeField()
    phase = serializers.CharField(
        allow_null=True,
        help_text='The phase due next (hindsight: foresight, then hindsight); "" for an open '
        "assignment of a kind without phases; null when nothing is due.",
    )
    task = AssignmentTaskSerializer()


class AssignmentDetailApi(APIView):
    @extend_schema(responses={200: AssignmentSerializer})
    def get(self, request, assignment_id: int):
        assignment = selectors.access_assignment(user=request.user, assignment_id=assignment_id)
        view = selectors.assignment_view(assignment=assignment)
        body = {
            "id": assignment.pk,
            "status": assignment.status,
            "expires_at": assignment.expires_at,
            "phase": view.phase,
            "task": _task_body(view.task, revealed=True),
        }
        return Response(AssignmentSerializer(body).data)


def _judgement_serializers() -> list:
    # Every registered kind's bodies, read when the schema is built (the registry is complete by
    # then): a new kind documents its body without touching this file.
    return [serializer for kind in registered() for serializer in kind.judgement_serializers()]


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
            serializers=_judgement_serializers,
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
            data=dict(kind_for(assignment.task.kind).judgement_input(request.data)),
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
