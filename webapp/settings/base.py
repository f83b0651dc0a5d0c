"""Settings shared by every environment; everything that differs comes from the environment.

`DATABASE_URL` and `CELERY_BROKER_URL` switch between the embedded defaults
(SQLite and a file-system broker under var/, used by `make demo`) and
Postgres + Redis, with no code change.

Nothing here is a usable settings module on its own: `production` (the default everywhere),
`demo` (`make demo`: DEBUG off, plain http on 127.0.0.1), `dev` (DEBUG on, asked for by name)
and `test` build on it.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("TANDEM_VAR_DIR", BASE_DIR / "var"))

DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = [
    h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "csp",
    "annotation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]


def database_from_env(default_url: str) -> dict:
    url = os.environ.get("DATABASE_URL", default_url)
    config = dj_database_url.parse(
        url,
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        # A persistent connection is checked before each request, so a database restart costs one
        # reconnect instead of a worker's errors.
        conn_health_checks=True,
    )
    if config["ENGINE"] == "django.db.backends.postgresql":
        # One runaway query must not hold a worker (or a lock) for ever; exports and imports work
        # in bounded pages and COPY batches well under this.
        timeout_ms = int(os.environ.get("TANDEM_DB_STATEMENT_TIMEOUT_MS", "60000"))
        config.setdefault("OPTIONS", {})["options"] = f"-c statement_timeout={timeout_ms}"
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # IMMEDIATE transactions take SQLite's write lock up front, so two
        # leases can never interleave (SQLite has no row locks); the timeout
        # makes concurrent writers queue instead of failing with "locked".
        config["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
        config["CONN_MAX_AGE"] = 0
    return config


DATABASES = {"default": database_from_env(f"sqlite:///{VAR_DIR / 'tandem.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 8},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media/"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "annotation.api.common.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "annotation.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # JSON only: the browsable API (forms, every field's choices, raw data) is a developer's tool;
    # dev.py adds it back when DEBUG is on.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
    # Scoped throttles on the doors an attacker would hammer; each view names its scope.
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "token": os.environ.get("TANDEM_THROTTLE_TOKEN", "20/min"),
        "lease": os.environ.get("TANDEM_THROTTLE_LEASE", "1200/min"),
        "submit": os.environ.get("TANDEM_THROTTLE_SUBMIT", "1200/min"),
    },
}
# Throttle counters and login-failure counters live in the cache: per process by default, shared
# across web processes when TANDEM_CACHE_URL names a Redis (production).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if os.environ.get("TANDEM_CACHE_URL"):
    CACHES["default"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ["TANDEM_CACHE_URL"],
    }
# Token auth answers 401 (with WWW-Authenticate) to anonymous calls.
SPECTACULAR_SETTINGS = {
    "TITLE": "Tandem API",
    "DESCRIPTION": "Online RLHF with humans in the loop: projects, imports, leases, judgements, export.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from our own static files (drf-spectacular-sidecar), never a CDN: the
    # docs work offline and the CSP needs no third-party origin.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # null, not absent: Swagger UI's default sends every schema to validator.swagger.io for a badge.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # Each kind's judgement body has its own `choice`; named here, the enums keep stable names.
    "ENUM_NAME_OVERRIDES": {
        "DecisiveChoiceEnum": ["A", "B"],
        "EvenChoiceEnum": ["tie", "both_bad"],
        "ComparisonChoiceEnum": ["A", "B", "tie"],
    },
}

# --- Celery -----------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    # kombu's file-system transport expects its folders to exist.
    for _sub in ("queue", "processed"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu's default is "control" relative to the working directory: the checkout's root.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ROUTES = {"annotation.tasks.*": {"queue": "cpu"}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A round's stage may train for hours on a GPU, never forever: past the soft limit the stage fails
# with an error on the dashboard, past the hard one the worker process is replaced.
_STAGE_LIMIT = int(os.environ.get("TANDEM_STAGE_TIME_LIMIT_SECONDS", str(6 * 3600)))
CELERY_TASK_ANNOTATIONS = {
    "annotation.tasks.run_round_stage": {
        "soft_time_limit": _STAGE_LIMIT,
        "time_limit": _STAGE_LIMIT + 300,
    },
}
# Beat starts due rounds and revives lost jobs; the trigger lives in the database, so a tick that
# is missed while the broker is down only delays a round.
_TICK_SECONDS = float(os.environ.get("TANDEM_LOOP_TICK_SECONDS", "10"))
CELERY_BEAT_SCHEDULE = {
    "loop-tick": {
        "task": "annotation.tasks.loop_tick",
        "schedule": _TICK_SECONDS,
        # A tick that waited behind a long training job is stale: drop it rather than run a backlog.
        "options": {"expires": _TICK_SECONDS},
    },
    "import-sweep": {
        "task": "annotation.tasks.import_sweep",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    "outcome-sweep": {
        "task": "annotation.tasks.outcome_sweep",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    # Expired tokens are refused at once; deleting their rows can wait.
    "token-sweep": {
        "task": "annotation.tasks.token_sweep",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}

# --- Tandem -------------------------------------------------------------------
# Imports above this size are refused outright; above the inline size they run
# as a Celery job with progress instead of inside the request.
TANDEM_IMPORT_MAX_BYTES = int(os.environ.get("TANDEM_IMPORT_MAX_BYTES", 512 * 1024 * 1024))
TANDEM_IMPORT_INLINE_BYTES = int(os.environ.get("TANDEM_IMPORT_INLINE_BYTES", 2 * 1024 * 1024))
# Rows per export page: large pages spread the per-query planning over more rows.
TANDEM_EXPORT_CHUNK = int(os.environ.get("TANDEM_EXPORT_CHUNK", "10000"))
# A running stage reports progress at least this often; silence longer than this means its worker died.
TANDEM_LOOP_STALE_SECONDS = int(os.environ.get("TANDEM_LOOP_STALE_SECONDS", "120"))
TANDEM_ARTIFACT_ROOT = Path(os.environ.get("TANDEM_ARTIFACT_ROOT", VAR_DIR / "artifacts"))
# Folders under which a base model may be named by path (os.pathsep-separated). Empty: only hub ids.
TANDEM_MODEL_ROOTS = [
    Path(p) for p in os.environ.get("TANDEM_MODEL_ROOTS", "").split(os.pathsep) if p.strip()
]
# An import job that has not reported progress for this long died with its worker: it is failed.
TANDEM_IMPORT_STALE_SECONDS = int(os.environ.get("TANDEM_IMPORT_STALE_SECONDS", "600"))
# OpenAI-compatible servers a hindsight project's outcome simulator may call: exact base URLs the
# operator lists (comma-separated). A project names one of these, never an address of its own, so
# no setting can make the worker request an internal address (SSRF).
TANDEM_SIMULATOR_URLS = [
    u.strip() for u in os.environ.get("TANDEM_SIMULATOR_URLS", "").split(",") if u.strip()
]
# The simulator server's key: the operator's, never a project setting.
TANDEM_SIMULATOR_API_KEY = os.environ.get("TANDEM_SIMULATOR_API_KEY", "")
# Images (multimodal kinds) are verified by decoding: a file over this many bytes is refused
# before it is decoded, and one declaring more pixels than this (a decompression bomb: a few KB
# that decode to gigabytes) before a pixel is decoded. 40 MP is a 7,700×5,200 photo.
TANDEM_IMAGE_MAX_BYTES = int(os.environ.get("TANDEM_IMAGE_MAX_BYTES", 20 * 1024 * 1024))
TANDEM_IMAGE_MAX_PIXELS = int(os.environ.get("TANDEM_IMAGE_MAX_PIXELS", 40_000_000))
# Zip imports (JSONL + images): caps on entries and on their total uncompressed size, counted as
# declared and again as read (declared sizes can lie), and on one entry's compression ratio.
TANDEM_IMPORT_ZIP_MAX_ENTRIES = int(os.environ.get("TANDEM_IMPORT_ZIP_MAX_ENTRIES", 200_000))
TANDEM_IMPORT_ZIP_MAX_BYTES = int(
    os.environ.get("TANDEM_IMPORT_ZIP_MAX_BYTES", 4 * 1024 * 1024 * 1024)
)
TANDEM_IMPORT_ZIP_MAX_RATIO = int(os.environ.get("TANDEM_IMPORT_ZIP_MAX_RATIO", 200))

# API tokens (django-rest-knox): stored as digests, expiring, listed and revoked by their owner.
KNOX_TOKEN_MODEL = "annotation.ApiToken"
REST_KNOX = {
    "TOKEN_TTL": timedelta(days=int(os.environ.get("TANDEM_TOKEN_TTL_DAYS", "30"))),
    "AUTO_REFRESH": False,  # no write on each authenticated request
    "AUTH_HEADER_PREFIX": "Token",
}

# --- Security headers ------------------------------------------------------------
# Django's own defaults, stated so that a reader (and `check --deploy`) sees them.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# django-csp 4: no inline script, no inline style, no eval. The templates load tandem.js, tandem.css
# and htmx from our static files (htmx with allowEval off and includeIndicatorStyles off, its
# indicator rules live in tandem.css); Swagger UI loads its init script from a URL of its own and
# its page's <style> is allowed by hash (webapp/urls.py). Blocked and harmless: the admin change
# list's one-rule <style> for a model without actions.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}


def local_secret_key(var_dir: Path) -> str:
    """A per-checkout random key kept under var/ (dev and demo): never a default shared by installs."""
    path = var_dir / "secret_key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        # Created readable by its owner only: it signs sessions and password-reset links.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this checkout made it just now
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
REST_FRAMEWORK["EXCEPTION_HANDLER"] = "annotation.api.exceptions.handle"
# knox's own migrations create its default token table even when the model is swapped for ours
# (annotation.ApiToken), and a table Django does not know about breaks flushes and cascades.
MIGRATION_MODULES = {"knox": None}
