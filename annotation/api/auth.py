"""/api/v1 accounts: API tokens and users."""

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import services
from ..services.tokens import token_issue
from .common import valid


class TokenObtainApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_scope = "token"

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        password = serializers.CharField(style={"input_type": "password"})

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer}, auth=[])
    def post(self, request):
        data = valid(self.InputSerializer, request.data)
        user = authenticate(request, username=data["username"], password=data["password"])
        if user is None:
            return Response(
                {"detail": "wrong username or password", "errors": []},
                status=status.HTTP_400_BAD_REQUEST,
            )
        _, secret = token_issue(user=user, name=data.get("name", ""))
        return Response({"token": secret})


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
