"""`make demo`: a production-shaped server on 127.0.0.1 over plain http, with nothing to set up.

DEBUG stays off, so an unknown URL gets our 404 page (not a list of every URL pattern) and a
rejected form gets its inline error instead of django-htmx's debug page. What production takes
from the environment has local defaults here: the embedded SQLite and file-system broker under
var/ (base.py), a random per-checkout secret key in var/secret_key, and hosts 127.0.0.1 and
localhost. Static files are served by whitenoise straight from the app folders: no collectstatic.
"""

import os

from .base import *  # noqa: F403
from .base import VAR_DIR, local_secret_key

DEBUG = False
SECRET_KEY = os.environ.get("SECRET_KEY") or local_secret_key(VAR_DIR)
# Plain http on the loopback: no https redirect, no secure-only cookies, no HSTS (which would pin
# https on localhost for every other local server too).
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0

# whitenoise finds the files where `runserver` would (app static folders and STATICFILES_DIRS)
# when the workers start, so the demo needs no collectstatic step; STATIC_ROOT is an empty folder
# of the checkout's own, so whitenoise has nothing stale to serve from a production build.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
