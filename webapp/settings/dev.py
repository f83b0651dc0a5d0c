"""Development, asked for by name (`DJANGO_SETTINGS_MODULE=webapp.settings.dev`): DEBUG on.

Debug pages list every URL pattern and setting and the browsable API is on, so this module is
never a default: `manage.py`, wsgi, asgi and celery fall back to production, `make demo` runs
`webapp.settings.demo` (DEBUG off).
"""

import os

from .base import *  # noqa: F403
from .base import REST_FRAMEWORK, VAR_DIR, local_secret_key

DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
SECRET_KEY = os.environ.get("SECRET_KEY") or local_secret_key(VAR_DIR)

if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] = [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ]
