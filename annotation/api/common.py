"""What every /api/v1 module shares: input validation that names the field, and its schema."""

from collections.abc import Callable
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework.exceptions import ValidationError

from ..errors import InvalidInput


def _invalid(detail) -> InvalidInput:
    if not isinstance(detail, dict):
        detail = {"body": detail}
    errors = [
        {"field": name, "message": " ".join(str(m) for m in messages)}
        for name, messages in detail.items()
    ]
    return InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


def valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise _invalid(serializer.errors)
    return serializer.validated_data


def validator(serializer_class) -> Callable[[Any], dict]:
    """valid() for a hot path: one serializer whose fields are bound once, not per request.

    Binding (DRF deep-copies every declared field per instance) is most of a small serializer's
    cost. Validation itself keeps no state on the instance, so threads may share it.
    """
    shared = serializer_class()
    shared.fields  # noqa: B018  (bind now, not racing on the first requests)

    def check(data) -> dict:
        try:
            return shared.run_validation(data)
        except ValidationError as exc:
            raise _invalid(exc.detail) from None

    return check


class AutoSchema(SpectacularAutoSchema):
    """Names a view's nested serializers after the view: JudgementApi.InputSerializer is
    `JudgementInput`. By class name alone every view's InputSerializer is one `Input` component,
    and the schema then documents one body (the judgement's) for all of them."""

    def get_serializer_name(self, serializer, direction):
        owner, _, name = type(serializer).__qualname__.rpartition(".")
        view = owner.rpartition(".")[2]
        if view.endswith("Api"):
            return view.removesuffix("Api") + name
        return super().get_serializer_name(serializer, direction)


class TokenScheme(OpenApiAuthenticationExtension):
    """Documents the knox token header (drf-spectacular's knox extension does not match our
    subclass, so without this the schema would name no way to authenticate)."""

    target_class = "annotation.api.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <secret>`, the secret from POST /api/v1/auth/token.",
        }
