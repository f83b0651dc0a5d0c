"""/api/v1 accounts: API tokens and users."""

from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..auth import client_address, login_failed, login_refused, login_succeeded
from .common import valid


class TokenSerializer(serializers.Serializer):
    """A token as its owner sees it later: never the secret, which is shown once at issue."""

    id = serializers.CharField(source="token_key", help_text="The token's public prefix.")
    name = serializers.CharField()
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True)


class TokenObtainApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_scope = "token"

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"})
        name = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=100,
            default="",
            help_text="A label to tell your tokens apart in the list.",
        )

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField(help_text="The secret: shown this once, never stored.")
        id = serializers.CharField()
        name = serializers.CharField()
        expiry = serializers.DateTimeField(allow_null=True)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: OutputSerializer,
            400: OpenApiResponse(description="wrong username or password"),
            429: OpenApiResponse(description="too many failed logins for this user or address"),
        },
        auth=[],
    )
    def post(self, request):
        data = valid(self.InputSerializer, request.data)
        address = client_address(request)
        refused = login_refused(username=data["username"], address=address)
        if refused is not None:
            return Response(
                {"detail": refused.message, "errors": []},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(refused.retry_after)},
            )
        user = authenticate(request, username=data["username"], password=data["password"])
        if user is None:
            login_failed(username=data["username"], address=address)
            return Response(
                {"detail": "wrong username or password", "errors": []},
                status=status.HTTP_400_BAD_REQUEST,
            )
        login_succeeded(username=data["username"])
        token, secret = services.token_issue(user=user, name=data["name"])
        return Response(
            {"token": secret, "id": token.token_key, "name": token.name, "expiry": token.expiry}
        )


class TokenListApi(APIView):
    @extend_schema(responses={200: TokenSerializer(many=True)})
    def get(self, request):
        return Response(TokenSerializer(selectors.tokens_of(user=request.user), many=True).data)


class TokenRevokeApi(APIView):
    @extend_schema(
        request=None,
        responses={
            204: OpenApiResponse(description="revoked"),
            404: OpenApiResponse(description="no such token of yours"),
        },
    )
    def delete(self, request, token_key: str):
        services.token_revoke(user=request.user, token_key=token_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserCreateApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField()

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        username = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request):
        data = valid(self.InputSerializer, request.data)
        user = services.user_create(username=data["username"], password=data["password"])
        return Response(self.OutputSerializer(user).data, status=status.HTTP_201_CREATED)
