from rest_framework.response import Response
from rest_framework.views import exception_handler

from ..errors import TandemError


def handle(exc, context):
    """Domain errors become {"detail", "errors"} with their own status; the rest is DRF's."""
    if isinstance(exc, TandemError):
        return Response({"detail": exc.message, "errors": exc.errors}, status=exc.status)
    return exception_handler(exc, context)
