"""/api/v1 for the online loop: settings, rounds, model versions and their downloads."""

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..errors import InvalidInput, NotFound
from ..loop import OVERRIDES, Bound, LoopSettings
from ..selectors import rounds as round_selectors
from ..services import rounds as round_services

# --- the schema of the settings, from the same bounds LoopSettings.parse checks ------------------


def _schema_field(bound: Bound, help_text: str, *, required: bool) -> serializers.Field:
    options: dict[str, Any] = {
        "required": required,
        "help_text": help_text or None,
        "allow_null": bound.nullable,
    }
    if bound.type is bool:
        return serializers.BooleanField(**options)
    if bound.type is int:
        return serializers.IntegerField(min_value=bound.min, max_value=bound.max, **options)
    if bound.type is float:
        return serializers.FloatField(min_value=bound.min, max_value=bound.max, **options)
    if bound.choices is not None:
        return serializers.ChoiceField(choices=list(bound.choices), **options)
    if bound.pattern is not None:
        return serializers.RegexField(
            regex=f"^(?:{bound.pattern})$", max_length=bound.max_length, **options
        )
    return serializers.CharField(
        max_length=bound.max_length, allow_blank=True, trim_whitespace=False, **options
    )


def _overrides_class(group: str) -> type[serializers.Serializer]:
    declared: dict[str, Any] = {
        name: _schema_field(bound, "", required=False) for name, bound in OVERRIDES[group].items()
    }
    declared["__module__"] = __name__
    return type(f"Loop{group.title()}Overrides", (serializers.Serializer,), declared)


_OVERRIDE_CLASSES = {group: _overrides_class(group) for group in OVERRIDES}


def _settings_serializer(name: str, *, required: bool) -> type[serializers.Serializer]:
    declared: dict[str, Any] = {"__module__": __name__}
    for f in fields(LoopSettings):
        help_text = f.metadata.get("help", "")
        if "overrides" in f.metadata:
            group = f.metadata["overrides"]
            declared[f.name] = _OVERRIDE_CLASSES[group](
                required=required, help_text=f"Keys of the {group} training config to override."
            )
        else:
            declared[f.name] = _schema_field(f.metadata["bound"], help_text, required=required)
    return type(name, (serializers.Serializer,), declared)


# PATCH takes any subset (merged over the stored settings); GET and PATCH answer with all of them.
LoopSettingsPatchSerializer = _settings_serializer("LoopSettingsPatch", required=False)
LoopSettingsSerializer = _settings_serializer("LoopSettings", required=True)


class ErrorSerializer(serializers.Serializer):
    class FieldError(serializers.Serializer):
        field = serializers.CharField()
        message = serializers.CharField()

    detail = serializers.CharField()
    errors = FieldError(many=True, required=False)


_ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="no or bad credentials"),
    403: OpenApiResponse(ErrorSerializer, description="your role does not allow this"),
    404: OpenApiResponse(ErrorSerializer, description="no such project in your projects"),
}


class LoopSettingsApi(APIView):
    @extend_schema(responses={200: LoopSettingsSerializer, **_ERRORS})
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        try:
            return Response(LoopSettings.of(project).as_json())
        except InvalidInput:
            # Stored before today's checks: show them as stored, so a manager can see what to fix.
            return Response(LoopSettings.stored(project.loop))

    @extend_schema(
        request=LoopSettingsPatchSerializer,
        responses={
            200: LoopSettingsSerializer,
            400: OpenApiResponse(
                ErrorSerializer, description="a setting is refused; nothing saved"
            ),
            409: OpenApiResponse(ErrorSerializer, description="the project is archived"),
            **_ERRORS,
        },
    )
    def patch(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        if not isinstance(request.data, dict):
            raise InvalidInput("the body must be a JSON object of loop settings")
        loop = round_services.loop_configure(project=project, data=dict(request.data))
        return Response(loop.as_json())


class RoundSerializer(serializers.Serializer):
    class StageSerializer(serializers.Serializer):
        stage = serializers.ChoiceField(choices=list(round_services.STAGES))
        status = serializers.CharField()
        progress_step = serializers.IntegerField()
        progress_total = serializers.IntegerField()
        loss = serializers.FloatField(allow_null=True)
        error = serializers.CharField(allow_blank=True)

    number = serializers.IntegerField()
    status = serializers.CharField()
    judgements = serializers.IntegerField()
    reward_accuracy = serializers.FloatField(allow_null=True)
    win_rate = serializers.FloatField(allow_null=True)
    win_rate_ci = serializers.ListField(
        child=serializers.FloatField(), min_length=2, max_length=2, allow_null=True
    )
    win_rate_n = serializers.IntegerField()
    policy_version = serializers.IntegerField(allow_null=True)
    trigger = serializers.CharField()
    error = serializers.CharField(allow_blank=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    stages = StageSerializer(many=True)
    policy_stats = serializers.DictField(
        allow_null=True,
        help_text="The project kind's figures of π_r's answers as humans judged them, null for a "
        "kind that measures none. Hallucination: {model_version, name, round, held_out, "
        "all_tasks}, each scope {answers, judged, hallucinated, by_category, spans}: shares of "
        "judged answers with a span (of each category) and span counts per category.",
    )
    previous_policy_stats = serializers.DictField(
        allow_null=True,
        help_text="The same figures of π_{r-1}'s answers, the other side of the round's blind "
        "evaluation (π_0's in round 1).",
    )


class RoundStartedSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.CharField()


class RoundsApi(APIView):
    @extend_schema(responses={200: RoundSerializer(many=True), **_ERRORS})
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        kind_stats = round_selectors.kind_round_stats(project=project)
        return Response(
            [
                round_selectors.round_payload(r, kind_stats)
                for r in round_selectors.rounds_of(project=project)
            ]
        )

    @extend_schema(
        request=None,
        responses={
            201: RoundStartedSerializer,
            400: OpenApiResponse(ErrorSerializer, description="the loop settings are incomplete"),
            409: OpenApiResponse(
                ErrorSerializer, description="a round is already queued or running"
            ),
            **_ERRORS,
        },
    )
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
        return round_selectors.model_artifact(version=version) is not None


class ModelListApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("project", int)],
        responses={
            200: ModelVersionSerializer(many=True),
            400: OpenApiResponse(ErrorSerializer, description="project is not an id"),
            **_ERRORS,
        },
    )
    def get(self, request):
        project = request.query_params.get("project")
        if project is not None and not re.fullmatch(r"[0-9]{1,18}", project):
            raise InvalidInput(
                "project: must be an id", errors=[{"field": "project", "message": "an id"}]
            )
        versions = round_selectors.models_visible_to(
            user=request.user, project_id=int(project) if project else None
        )
        return Response(ModelVersionSerializer(versions, many=True).data)


# --- downloads: one deterministic archive per artifact, served with byte ranges ---------------

CHUNK = 1024 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _FileRange:
    """Streams `length` bytes of a file from `start`, in chunks; closed by Django when done."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close(), which Django calls
        self.handle.seek(start)
        self.left = length

    def __iter__(self):
        while self.left > 0:
            chunk = self.handle.read(min(CHUNK, self.left))
            if not chunk:
                break
            self.left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.handle.close()


def _byte_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """(first, last) of a single `bytes=` range; None to ignore the header; False if unsatisfiable.

    RFC 9110: a header that does not parse is ignored, and so (here) is a multi-range request,
    which is then answered in full.
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return False
    return start, end


class ModelDownloadApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "Range",
                str,
                OpenApiParameter.HEADER,
                description="One byte range (bytes=first-last) to resume a cut-short download.",
            ),
            OpenApiParameter(
                "If-Range",
                str,
                OpenApiParameter.HEADER,
                description="The ETag of the first response: the range is served only if the "
                "archive is still the same, else the whole archive.",
            ),
        ],
        responses={
            (200, "application/gzip"): OpenApiTypes.BINARY,
            (206, "application/gzip"): OpenApiTypes.BINARY,
            404: OpenApiResponse(
                ErrorSerializer, description="no such model, or not an artifact Tandem published"
            ),
            416: OpenApiResponse(description="the range starts past the end of the archive"),
            401: _ERRORS[401],
            403: _ERRORS[403],
        },
    )
    def get(self, request, model_id: int):
        version = round_selectors.access_model(user=request.user, model_id=model_id)
        artifact = round_selectors.model_artifact(version=version)
        if artifact is None:
            raise NotFound(
                f"model version {version.pk} is a model reference, not an artifact this "
                "project's runs published: only those are downloadable"
            )
        archive, etag = round_services.model_archive(version=version, artifact=artifact)
        size = archive.stat().st_size
        first, last, code = 0, size - 1, status.HTTP_200_OK
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if wanted and (if_range is None or if_range.strip() == etag):
            picked = _byte_range(wanted, size)
            if picked is False:
                refused = HttpResponse(status=status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE)
                refused["Content-Range"] = f"bytes */{size}"
                refused["Accept-Ranges"] = "bytes"
                refused["ETag"] = etag
                return refused
            if picked is not None:
                first, last = picked
                code = status.HTTP_206_PARTIAL_CONTENT
        length = max(0, last - first + 1)
        response = StreamingHttpResponse(
            _FileRange(archive, first, length), status=code, content_type="application/gzip"
        )
        response["Content-Length"] = str(length)
        response["Accept-Ranges"] = "bytes"
        response["ETag"] = etag
        response["Content-Disposition"] = f'attachment; filename="{artifact.name}.tar.gz"'
        if code == status.HTTP_206_PARTIAL_CONTENT:
            response["Content-Range"] = f"bytes {first}-{last}/{size}"
        return response
