"""/api/v1 export: streamed, incremental, TRL-ready, resumable from any line."""

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.views import APIView

from .. import selectors
from ..kinds import registered
from ..selectors.export import RAW, export_judgements, shapes_of


def _all_shapes() -> list[str]:
    # Every shape some kind offers; a project accepts the raw shape and its own kind's (a 400
    # names them).
    return sorted({RAW.name, *(name for kind in registered() for name in kind.export_shapes)})


class ExportApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "shape",
                str,
                enum=_all_shapes(),
                default="pairs",
                description="raw, or a shape of the project's kind (pairwise: pairs, the default).",
            ),
            OpenApiParameter(
                "phase",
                str,
                description="For a kind with phases (hindsight): which phase's judgements the "
                "shape reads. hindsight's `pairs` reads hindsight judgements by default; "
                "`phase=foresight` reads the foresight ones. A shape that offers no choice "
                "refuses it (400).",
            ),
            OpenApiParameter(
                "since",
                str,
                description="The `cursor` of the last complete line you received (or the "
                "X-Export-Since header when no complete line arrived); empty for everything.",
            ),
            OpenApiParameter(
                "X-Export-Since",
                str,
                OpenApiParameter.HEADER,
                response=[200],
                description="Where this export started: resume from here if no complete line arrived.",
            ),
        ],
        responses={
            (200, "application/x-ndjson"): OpenApiResponse(
                OpenApiTypes.STR,
                description="One JSON object a line, each with its own `cursor`.",
            )
        },
        description=(
            "Streams one JSON object a line. Every line carries `cursor`, its resume point: pass "
            "the last complete line's `cursor` as `since` and the next export starts exactly after "
            "it, so a cut body loses nothing. X-Export-Since echoes where this export started (the "
            "resume point when no complete line arrived). Caught up when an export that ended "
            "cleanly has no lines."
        ),
    )
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.EXPORT
        )
        # The default is the kind's first shape (pairwise: pairs), else raw.
        shape = request.query_params.get("shape") or next(iter(shapes_of(project=project)))
        export = export_judgements(
            project=project,
            shape=shape,
            since=request.query_params.get("since"),
            phase=request.query_params.get("phase"),
        )
        response = StreamingHttpResponse(export.blocks, content_type="application/x-ndjson")
        # Only where the export started goes ahead of the body: where it ends is told by the last
        # line that actually arrived, so no header can make a client skip rows a cut body lost.
        response["X-Export-Since"] = export.since
        response["Content-Disposition"] = (
            f'attachment; filename="project-{project.pk}-{shape}.jsonl"'
        )
        response["Cache-Control"] = "no-store"
        return response
