"""/api/v1 images: a manager's uploads, members-only serving, and the image archive of an export.

Images are served only to the project's members (any role, session or token), by content hash:
a URL names exactly one content for good, so the browser may keep it (`immutable`). Nothing here
fetches a URL: an image reaches the server as the bytes of an upload or of a zip import.
"""

import zipfile
from collections.abc import Iterator

from django.conf import settings
from django.core.files.storage import storages
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors
from ..errors import InvalidInput, NotFound, TooLarge
from ..selectors.export import shapes_of
from ..selectors.images import image_of_project, images_judged_since
from ..services.images import BY_NAME, image_upload
from .export import _all_shapes
from .parsers import MultiPartParser, cut_short

# Room for the multipart framing around the file itself.
_MULTIPART_SLACK = 64 * 1024
_CHUNK = 1 << 20
IMAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Private: only members may see it. Immutable: the URL names the bytes.
    "Cache-Control": "private, max-age=31536000, immutable",
    # Opened on its own, the image runs nothing and reaches nothing (an SVG never gets here).
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class _AnyAccept(BaseContentNegotiation):
    """Binary answers ignore Accept (an <img> asks for image/avif, a client for application/zip):
    errors are JSON, as everywhere in the API."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ImageOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text='"sha256:<hex>": name the image so in import lines.')
    width = serializers.IntegerField()
    height = serializers.IntegerField()


def _upload_body(request) -> tuple[object, str]:
    """The uploaded bytes (a file or the raw body) and the name errors should use."""
    cap = settings.TANDEM_IMAGE_MAX_BYTES
    expected = int(request.META.get("CONTENT_LENGTH") or 0)
    if request.content_type.startswith("multipart/"):
        # Refused before Django spools a huge body to disk.
        if expected > cap + _MULTIPART_SLACK:
            raise TooLarge(f"the upload is {expected} bytes; the limit is {cap} bytes")
        upload = request.FILES.get("file")
        if upload is None:
            raise InvalidInput("file: required", errors=[{"field": "file", "message": "required"}])
        return upload, upload.name or "file"
    if expected > cap:
        raise TooLarge(f"the body is {expected} bytes; the limit is {cap} bytes")
    body = request._request.read(cap + 1)
    if len(body) < expected:
        raise cut_short(received=len(body), expected=expected)
    return body, "the request body"


class ImageUploadApi(APIView):
    # Only multipart is parsed by DRF; any other body is the image's own bytes.
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "ImageUpload", {"file": serializers.FileField()}
            ),
            "image/jpeg": OpenApiTypes.BINARY,
            "image/png": OpenApiTypes.BINARY,
            "image/webp": OpenApiTypes.BINARY,
            "application/octet-stream": OpenApiTypes.BINARY,
        },
        responses={201: ImageOutputSerializer, 200: ImageOutputSerializer},
        description=(
            "Managers upload one image (multipart `file`, or the raw body). It must decode as "
            "JPEG, PNG or WebP within TANDEM_IMAGE_MAX_BYTES and TANDEM_IMAGE_MAX_PIXELS; it is "
            "stored without its metadata, once by content hash. 201 when new to the project, "
            "200 when it already was. Name it in import lines as its `id`."
        ),
    )
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        data, name = _upload_body(request)
        image, new = image_upload(project=project, data=data, name=name)
        return Response(
            {"id": f"sha256:{image.sha256}", "width": image.width, "height": image.height},
            status=status.HTTP_201_CREATED if new else status.HTTP_200_OK,
        )


class ImageApi(APIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(
        parameters=[
            OpenApiParameter("image_id", str, OpenApiParameter.PATH, description='"sha256:<hex>"'),
            OpenApiParameter("size", str, enum=["full", "thumb"], default="full"),
        ],
        responses={
            (200, "image/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The image."),
            (304, "image/*"): OpenApiResponse(description="Not modified (If-None-Match)."),
        },
        description=(
            "The image, or its thumbnail (longest side 512 px), to the project's members only: "
            "404 to anyone else and for images the project does not hold."
        ),
    )
    def get(self, request, project_id: int, image_id: str):
        project, _ = selectors.access_project(user=request.user, project_id=project_id)
        image = image_of_project(project=project, ref=image_id)
        size = request.query_params.get("size", "full")
        if size not in ("full", "thumb"):
            raise InvalidInput(
                "size: must be full or thumb", errors=[{"field": "size", "message": "unknown"}]
            )
        thumb = size == "thumb"
        fmt = BY_NAME[image.format]
        etag = f'"{image.sha256}{"-thumb" if thumb else ""}"'
        if etag in request.headers.get("If-None-Match", ""):
            response = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
        else:
            try:
                stored = storages["default"].open(image.thumbnail if thumb else image.file, "rb")
            except FileNotFoundError:
                raise NotFound("image not found") from None
            filename = f"{image.sha256}{'-thumb' if thumb else ''}.{fmt.ext}"
            response = FileResponse(stored, content_type=fmt.mime, filename=filename)
        response["ETag"] = etag
        for header, value in IMAGE_HEADERS.items():
            response[header] = value
        return response


class _Sink:
    """A write-only stream that hands over what zipfile wrote so far (it cannot seek, so
    zipfile writes each entry's sizes after its data)."""

    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _image_archive(images) -> Iterator[bytes]:
    """images/<sha256>.<ext> for each image, stored (images are compressed already), built and
    sent entry by entry: memory holds one chunk and the central directory, never the archive."""
    storage = storages["default"]
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for image in images:
            info = zipfile.ZipInfo(f"images/{image.sha256}.{BY_NAME[image.format].ext}")
            info.file_size = image.size_bytes
            with storage.open(image.file, "rb") as source, archive.open(info, mode="w") as entry:
                while chunk := source.read(_CHUNK):
                    entry.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


class ExportImagesApi(APIView):
    content_negotiation_class = _AnyAccept

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "shape",
                str,
                enum=_all_shapes(),
                description="Optional: checked to be a shape of the project's kind, as for the "
                "row export. The archive is the same for every shape.",
            ),
            OpenApiParameter(
                "since",
                str,
                description="The `since` of the row export whose images you want (empty: all).",
            ),
        ],
        responses={
            (200, "application/zip"): OpenApiResponse(
                OpenApiTypes.BINARY, description="A zip of images/<sha256>.<ext>."
            )
        },
        description=(
            "The images that export rows name (`images/<sha256>.<ext>`), as one zip: every image "
            "of the prompts with a judgement after `since`. Fetch the rows first and then the "
            "images with the same `since`: the archive then holds every image the rows name "
            "(possibly a few more)."
        ),
    )
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        shape = request.query_params.get("shape")
        if shape:
            available = shapes_of(project=project)
            if shape not in available:
                raise InvalidInput(
                    f"shape: must be one of {', '.join(available)}",
                    errors=[{"field": "shape", "message": "unknown"}],
                )
        # Decoding `since` here turns a bad cursor into a 400 before the body starts.
        images = images_judged_since(project=project, since=request.query_params.get("since"))
        response = StreamingHttpResponse(_image_archive(images), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="project-{project.pk}-images.zip"'
        response["Cache-Control"] = "no-store"
        return response
