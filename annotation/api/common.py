"""What every /api/v1 module shares: input validation that names the field."""

from ..errors import InvalidInput


def valid(serializer_class, data) -> dict:
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
