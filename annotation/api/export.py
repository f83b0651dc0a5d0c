"""/api/v1 export: streamed, incremental, TRL-ready."""

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.views import APIView

from .. import selectors
from ..selectors.export import SHAPES, export_judgements


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
