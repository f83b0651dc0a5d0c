"""Token authentication: knox's digest check, plus the password binding, with one query a request."""

from django.utils.translation import gettext_lazy as _
from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from rest_framework import exceptions

from ..services.tokens import password_fingerprint


class TokenAuthentication(KnoxTokenAuthentication):
    def validate_user(self, auth_token):
        user = auth_token.user
        if not user.is_active or auth_token.password_fingerprint != password_fingerprint(user):
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        return super().validate_user(auth_token)

    def _cleanup_token(self, auth_token) -> bool:
        # knox reads all of the user's tokens on every request to delete expired ones; an expired
        # token is refused here instead, and a periodic sweep may delete them (no per-request query).
        from django.utils import timezone

        return auth_token.expiry is not None and auth_token.expiry < timezone.now()
