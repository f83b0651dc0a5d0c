"""API tokens: issued as a secret shown once, stored as a digest, bound to the owner's password."""

import hashlib
import hmac

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.utils import timezone

from ..errors import NotFound
from ..models import ApiToken

MAX_TOKENS_PER_USER = 50


def password_fingerprint(user: AbstractUser) -> str:
    """Changes whenever the user's password does, and reveals nothing about it.

    The same idea as Django's session auth hash: sessions die with a password change, and so do
    tokens, with no write at change time and none per request.
    """
    return hmac.new(
        settings.SECRET_KEY.encode(), f"tandem-token:{user.password}".encode(), hashlib.sha256
    ).hexdigest()[:64]


def token_issue(*, user: AbstractUser, name: str = "") -> tuple[ApiToken, str]:
    """A new token for the user: (its row, the secret, which is never stored and shown only now)."""
    token, secret = ApiToken.objects.create(
        user=user, name=name[:100], password_fingerprint=password_fingerprint(user)
    )
    return token, secret


def token_revoke(*, user: AbstractUser, token_key: str) -> None:
    """Deletes one of the user's own tokens; anyone else's looks absent (NotFound)."""
    deleted, _ = ApiToken.objects.filter(user=user, token_key=token_key).delete()
    if not deleted:
        raise NotFound("token not found")


def token_sweep() -> int:
    """Deletes expired tokens (authentication refuses them already); returns how many went.

    Run periodically: authentication itself never writes, so nothing else removes them.
    """
    deleted, _ = ApiToken.objects.filter(expiry__lt=timezone.now()).delete()
    return deleted
