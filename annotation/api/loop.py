"""/api/v1 for the online loop: settings, rounds, model versions."""

import tarfile
from collections.abc import Iterator
from pathlib import Path

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..errors import InvalidInput, NotFound
from ..loop import LoopSettings
from ..selectors import rounds as round_selectors
from ..services import rounds as round_services


class LoopSettingsApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        return Response(LoopSettings.parse(project.loop).as_json())

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT})
    def patch(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        if not isinstance(request.data, dict):
            raise InvalidInput("the body must be a JSON object of loop settings")
        loop = round_services.loop_configure(project=project, data=dict(request.data))
        return Response(loop.as_json())


class RoundsApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        return Response(
            [round_selectors.round_payload(r) for r in round_selectors.rounds_of(project=project)]
        )

    @extend_schema(request=None, responses={201: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT})
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        started = round_services.round_start(project=project, trigger="manual")
        return Response(
            {"number": started.number, "status": started.status}, status=status.HTTP_201_CREATED
        )


class ModelVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    project = serializers.IntegerField(source="project_id")
    kind = serializers.CharField()
    round = serializers.IntegerField()
    name = serializers.CharField()
    parent = serializers.IntegerField(source="parent_id", allow_null=True)
    metrics = serializers.DictField()
    created_at = serializers.DateTimeField()
    downloadable = serializers.SerializerMethodField()

    def get_downloadable(self, version) -> bool:
        return Path(version.artifact_path).is_dir()


class ModelListApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("project", int)],
        responses={200: ModelVersionSerializer(many=True)},
    )
    def get(self, request):
        project = request.query_params.get("project")
        if project is not None and not project.isdigit():
            raise InvalidInput("project: must be an id")
        versions = round_selectors.models_visible_to(
            user=request.user, project_id=int(project) if project else None
        )
        return Response(ModelVersionSerializer(versions, many=True).data)


class _Sink:
    """A write-only file for tarfile's stream mode; its chunks are handed out as they come."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def _tar_stream(root: Path) -> Iterator[bytes]:
    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w|gz") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=f"{root.name}/{path.relative_to(root)}", recursive=False)
            yield from sink.drain()
    yield from sink.drain()


class ModelDownloadApi(APIView):
    @extend_schema(responses={(200, "application/gzip"): OpenApiTypes.BINARY})
    def get(self, request, model_id: int):
        version = round_selectors.access_model(user=request.user, model_id=model_id)
        root = Path(version.artifact_path)
        if not root.is_dir():
            raise NotFound(
                f"'{version.artifact_path}' is a model reference, not an artifact stored by Tandem"
            )
        response = StreamingHttpResponse(_tar_stream(root), content_type="application/gzip")
        response["Content-Disposition"] = f'attachment; filename="{root.name}.tar.gz"'
        return response
