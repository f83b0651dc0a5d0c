"""Request body parsers of /api/v1: what cannot be stored is refused at the door, naming the field.

Every body that reaches a view is valid JSON, nested at most MAX_JSON_DEPTH deep, with no NUL and
no lone surrogate in any key or string (Postgres stores neither): a 400 otherwise, never a 500
from deep inside a service. Multipart uploads are checked to have arrived whole.
"""

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as DrfJSONParser
from rest_framework.parsers import MultiPartParser as DrfMultiPartParser
from rest_framework.utils import json

from ..errors import InvalidInput
from ..feedback import MAX_JSON_DEPTH, find_unstorable, may_be_unstorable


def _refuse(field: str, message: str) -> InvalidInput:
    field = field or "body"
    return InvalidInput(f"{field}: {message}", errors=[{"field": field, "message": message}])


def cut_short(*, received: int, expected: int) -> InvalidInput:
    """A body shorter than its Content-Length: the client died mid-upload."""
    return _refuse("body", f"the upload was cut short: {received} of {expected} bytes arrived")


class JSONParser(DrfJSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
            parse_constant = json.strict_constant if self.strict else None
            data = json.loads(text, parse_constant=parse_constant)
        except RecursionError:
            raise _refuse("", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:  # UnicodeDecodeError is one
            raise ParseError(f"JSON parse error - {exc}") from None
        # The hot path (a judgement is a handful of flat fields) never pays for the walk.
        if may_be_unstorable(text):
            fault = find_unstorable(data)
            if fault is not None:
                raise _refuse(*fault)
        return data


class _CountingStream:
    """Reads through to the request body and counts what arrived."""

    def __init__(self, stream):
        self._stream = stream
        self.received = 0

    def read(self, *args):
        chunk = self._stream.read(*args)
        self.received += len(chunk)
        return chunk


class MultiPartParser(DrfMultiPartParser):
    """A body shorter than its Content-Length (a client that died mid-upload) is refused.

    Django's multipart parser silently drops a part that never ended, so a cut upload would be
    answered as if the client had sent no file at all.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        expected = int(request.META.get("CONTENT_LENGTH") or 0)
        counting = _CountingStream(stream)
        parsed = super().parse(counting, media_type, parser_context)
        if counting.received < expected:
            raise cut_short(received=counting.received, expected=expected)
        return parsed
