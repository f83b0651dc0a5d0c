"""/api/v1 imports: JSONL bodies or uploads, inline or as a job with progress."""

import tempfile

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..errors import InvalidInput, TooLarge
from ..models import ImportJob
from .parsers import JSONParser, MultiPartParser, cut_short


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
            expected = int(request.META.get("CONTENT_LENGTH") or 0)
            if expected > settings.TANDEM_IMPORT_MAX_BYTES:
                raise TooLarge(
                    f"the body is {expected} bytes; the limit is {settings.TANDEM_IMPORT_MAX_BYTES} bytes"
                )
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
                for chunk in iter(lambda: request._request.read(1 << 20), b""):
                    spool.write(chunk)
                size = spool.tell()
                if size < expected:
                    # The client died mid-upload: its last line may look whole and valid.
                    raise cut_short(received=size, expected=expected)
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
