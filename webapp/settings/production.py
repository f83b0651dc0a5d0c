"""Production, the default of manage.py, wsgi, asgi and celery: every secret and host comes from
the environment; there are no defaults to forget.

Served over https (directly or behind a TLS-terminating proxy) unless DJANGO_SECURE_COOKIES=0
says this is a plain-http try on localhost:

- DJANGO_SECURE_COOKIES (1): session and CSRF cookies only over https;
- DJANGO_SSL_REDIRECT (as DJANGO_SECURE_COOKIES): redirect http to https;
- DJANGO_BEHIND_TLS_PROXY (0): trust the proxy's X-Forwarded-Proto: https. Set it only when a
  proxy that overwrites that header is the sole way in, or anyone can claim https;
- DJANGO_HSTS_SECONDS (31536000), DJANGO_HSTS_INCLUDE_SUBDOMAINS (1), DJANGO_HSTS_PRELOAD (1):
  Strict-Transport-Security, sent on https responses only.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403


def _required(name: str, example: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set. Production settings (the default) need it, e.g. {example}. "
            "For a local try run `make demo`, or set DJANGO_SETTINGS_MODULE=webapp.settings.dev."
        )
    return value


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip() == "1"


SECRET_KEY = _required(
    "SECRET_KEY",
    "SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))')",
)
DEBUG = False
ALLOWED_HOSTS = [
    h.strip()
    for h in _required("DJANGO_ALLOWED_HOSTS", "DJANGO_ALLOWED_HOSTS=tandem.example.org").split(",")
    if h.strip()
]

SESSION_COOKIE_SECURE = _flag("DJANGO_SECURE_COOKIES", "1")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = _flag("DJANGO_SSL_REDIRECT", "1" if SESSION_COOKIE_SECURE else "0")
if _flag("DJANGO_BEHIND_TLS_PROXY", "0"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(365 * 24 * 3600)))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _flag("DJANGO_HSTS_INCLUDE_SUBDOMAINS", "1")
SECURE_HSTS_PRELOAD = _flag("DJANGO_HSTS_PRELOAD", "1")

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
