"""Tests run against the real Postgres and Redis of the machine, never SQLite."""

import os

from .base import *  # noqa: F403
from .base import DATABASES, database_from_env

SECRET_KEY = os.environ.get("SECRET_KEY", "tests-only-not-a-secret")
DATABASES["default"] = database_from_env(
    os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tandem")
)
DATABASES["default"]["CONN_MAX_AGE"] = 0
CELERY_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
CELERY_BROKER_TRANSPORT_OPTIONS = {}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["*"]
# Tests run unthrottled: a rate of None lets every request through. The throttle tests put rates
# back on the throttle class themselves (tests/annotation/api/test_roles.py).
REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_THROTTLE_RATES": dict.fromkeys(
        REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],  # noqa: F405
        None,
    ),
}
