"""/api/v1: one view per operation, each parsing input, calling one service or selector, rendering output."""

import tempfile

from django.conf import settings
from django.contrib.auth import authenticate
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..errors import Forbidden, InvalidInput, TooLarge
from ..models import FeedbackKind, ImportJob, Project, Role
from ..selectors.export import SHAPES, export_judgements


def _valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        errors = [
            {"field": name, "message": " ".join(str(m) for m in messages)}
            for name, messages in serializer.errors.items()
        ]
        raise InvalidInput(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        )
    return serializer.validated_data


class TokenObtainApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"})

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer}, auth=[])
    def post(self, request):
        data = _valid(self.InputSerializer, request.data)
        user = authenticate(request, username=data["username"], password=data["password"])
        if user is None:
            return Response(
                {"detail": "wrong username or password", "errors": []},
                status=status.HTTP_400_BAD_REQUEST,
            )
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class UserCreateApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField()

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        username = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request):
        data = _valid(self.InputSerializer, request.data)
        user = services.user_create(username=data["username"], password=data["password"])
        return Response(self.OutputSerializer(user).data, status=status.HTTP_201_CREATED)


class ProjectOutputSerializer(serializers.ModelSerializer):
    role = serializers.CharField(read_only=True)

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "kind",
            "overlap",
            "lease_seconds",
            "instructions",
            "created_at",
            "role",
        ]


class ProjectListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        kind = serializers.ChoiceField(choices=FeedbackKind.choices, default=FeedbackKind.PAIRWISE)
        overlap = serializers.IntegerField(default=1)
        lease_seconds = serializers.IntegerField(default=600)
        instructions = serializers.CharField(default="", allow_blank=True)

    @extend_schema(responses={200: ProjectOutputSerializer(many=True)})
    def get(self, request):
        projects = list(selectors.project_visible_to(user=request.user))
        roles = selectors.roles_of(user=request.user, projects=projects)
        for project in projects:
            project.role = roles[project.pk]
        return Response(ProjectOutputSerializer(projects, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: ProjectOutputSerializer})
    def post(self, request):
        if not (request.user.is_staff or request.user.has_perm("annotation.add_project")):
            raise Forbidden(
                "only staff and users with the 'add project' permission create projects"
            )
        data = _valid(self.InputSerializer, request.data)
        project = services.project_create(creator=request.user, **data)
        project.role = Role.MANAGER
        return Response(ProjectOutputSerializer(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailApi(APIView):
    @extend_schema(
        responses={
            200: inline_serializer(
                "ProjectDetail",
                {
                    "project": ProjectOutputSerializer(),
                    "progress": inline_serializer(
                        "ProjectProgress",
                        {
                            "tasks": serializers.IntegerField(),
                            "complete": serializers.IntegerField(),
                            "judgements_wanted": serializers.IntegerField(),
                            "judgements": serializers.IntegerField(),
                            "live_leases": serializers.IntegerField(),
                        },
                    ),
                },
            )
        }
    )
    def get(self, request, project_id: int):
        project, role = selectors.access_project(user=request.user, project_id=project_id)
        project.role = role
        progress = selectors.project_progress(project=project)
        return Response(
            {"project": ProjectOutputSerializer(project).data, "progress": progress.__dict__}
        )


class MembershipCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(request=InputSerializer, responses={201: InputSerializer})
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        data = _valid(self.InputSerializer, request.data)
        membership = services.membership_set(
            project=project, username=data["username"], role=data["role"]
        )
        return Response(
            {"username": membership.user.username, "role": membership.role},
            status=status.HTTP_201_CREATED,
        )


class ImportOutputSerializer(serializers.ModelSerializer):
    import_id = serializers.IntegerField(source="id")

    class Meta:
        model = ImportJob
        fields = [
            "import_id",
            "status",
            "created",
            "errors",
            "lines_total",
            "lines_done",
            "filename",
            "created_at",
            "finished_at",
        ]


_IMPORT_STATUS = {
    ImportJob.Status.DONE: status.HTTP_201_CREATED,
    ImportJob.Status.FAILED: status.HTTP_400_BAD_REQUEST,
}


class ImportCreateApi(APIView):
    # Only multipart is parsed by DRF; any other body is read as raw JSONL straight from the
    # request stream, so a large file never sits in memory as one string.
    parser_classes = [MultiPartParser, JSONParser]

    @extend_schema(
        request={
            "application/x-ndjson": OpenApiTypes.BINARY,
            "multipart/form-data": inline_serializer(
                "ImportUpload", {"file": serializers.FileField()}
            ),
        },
        responses={
            201: ImportOutputSerializer,
            202: ImportOutputSerializer,
            400: ImportOutputSerializer,
        },
        description="JSONL, one task a line. Small files import at once (201); large ones run as a job (202).",
    )
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        if request.content_type.startswith("multipart/"):
            upload = request.FILES.get("file")
            if upload is None:
                raise InvalidInput(
                    "file: required", errors=[{"field": "file", "message": "required"}]
                )
            job = services.import_create(
                project=project,
                user=request.user,
                stream=upload,
                size=upload.size,
                filename=upload.name,
            )
        else:
            size = int(request.META.get("CONTENT_LENGTH") or 0)
            if size > settings.TANDEM_IMPORT_MAX_BYTES:
                raise TooLarge(
                    f"the body is {size} bytes; the limit is {settings.TANDEM_IMPORT_MAX_BYTES} bytes"
                )
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
                for chunk in iter(lambda: request._request.read(1 << 20), b""):
                    spool.write(chunk)
                size = spool.tell()
                spool.seek(0)
                job = services.import_create(
                    project=project, user=request.user, stream=spool, size=size
                )
        code = _IMPORT_STATUS.get(job.status, status.HTTP_202_ACCEPTED)
        return Response(ImportOutputSerializer(job).data, status=code)


class ImportDetailApi(APIView):
    @extend_schema(responses={200: ImportOutputSerializer})
    def get(self, request, import_id: int):
        job = selectors.access_import(user=request.user, import_id=import_id)
        return Response(ImportOutputSerializer(job).data)


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
    @extend_schema(request=None, responses={204: OpenApiResponse(description="skipped")})
    def post(self, request, assignment_id: int):
        assignment = selectors.access_assignment(user=request.user, assignment_id=assignment_id)
        services.assignment_skip(assignment=assignment)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ExportApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("shape", str, enum=list(SHAPES), default="pairs"),
            OpenApiParameter(
                "since", str, description="The X-Export-Cursor of the previous export."
            ),
        ],
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR},
        description="Streams one JSON object a line; the X-Export-Cursor header is the `since` of the next call.",
    )
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        export = export_judgements(
            project=project,
            shape=request.query_params.get("shape", "pairs"),
            since=request.query_params.get("since"),
        )
        response = StreamingHttpResponse(export.blocks, content_type="application/x-ndjson")
        response["X-Export-Cursor"] = export.cursor
        response["Cache-Control"] = "no-store"
        return response
