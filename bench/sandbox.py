"""Where the benches run and what they may touch: the repository, loopback only, the throwaway
bench database (created, migrated and dropped here) and the bench's own Redis database.

The only database ever dropped is the bench database (``tandem_bench`` by default); a name that
does not start with ``tandem_bench`` is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_DB = os.environ.get("BENCH_DB", "tandem_bench")
# The Redis database the web benches' Celery worker uses; it is flushed before each run.
BENCH_BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/13")
HOST = "127.0.0.1"
PASSWORD = "bench-horse-battery-staple"


def db_url(name: str = BENCH_DB) -> str:
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def pg_connect(name: str = BENCH_DB, **kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", **kwargs)


def _check_name(name: str) -> None:
    if not name.startswith("tandem_bench") or not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing to touch database {name!r}: bench databases are tandem_bench*")


def drop_db(name: str = BENCH_DB) -> None:
    _check_name(name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_db(name: str = BENCH_DB) -> None:
    """Drops and recreates the bench database, then runs the migrations into it."""
    drop_db(name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    manage("migrate", "--noinput", "-v", "0", env=server_env(name))


def server_env(name: str = BENCH_DB, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings.production",
        SECRET_KEY=env.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_COOKIES="0",
        DATABASE_URL=db_url(name),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        TANDEM_VAR_DIR=str(REPO / "bench" / "out" / "var"),
        # The bench measures capacity: 32 annotators log in at once from one address, and each
        # leases and submits as fast as the server answers; production keeps the default rates.
        TANDEM_THROTTLE_TOKEN="100000/min",
        TANDEM_THROTTLE_LEASE="100000/min",
        TANDEM_THROTTLE_SUBMIT="100000/min",
    )
    env.update(extra)
    return env


def manage(
    *args: str, env: dict[str, str], input_text: str | None = None, timeout: float = 300
) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def django_shell(code: str, *, env: dict[str, str], timeout: float = 300) -> Any:
    """Runs `code` in `manage.py shell`; the code prints one JSON line starting with 'RESULT '."""
    out = manage("shell", "-c", code, env=env, timeout=timeout)
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"no RESULT line from shell:\n{out}")


SETUP_CODE = r"""
import json
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from annotation import services
from annotation.models import Membership, Role
User = get_user_model()
staff = services.user_create(username="bench-staff", password=PASSWORD, is_staff=True)
project = services.project_create(creator=staff, name="bench", kind="pairwise", overlap=OVERLAP,
                                  lease_seconds=3600)
# One hash for every bench annotator: hashing each (PBKDF2) would only time the hasher.
hashed = make_password(PASSWORD)
users = User.objects.bulk_create(
    [User(username=f"bench-a{i:03d}", password=hashed) for i in range(ANNOTATORS)]
)
Membership.objects.bulk_create(
    [Membership(project=project, user=u, role=Role.ANNOTATOR) for u in users]
)
print("RESULT " + json.dumps({"project": project.pk, "staff": staff.username,
                              "annotators": [u.username for u in users]}))
"""


def setup_project(*, env: dict[str, str], annotators: int, overlap: int = 1) -> dict[str, Any]:
    code = (
        SETUP_CODE.replace("PASSWORD", repr(PASSWORD))
        .replace("OVERLAP", str(overlap))
        .replace("ANNOTATORS", str(annotators))
    )
    return django_shell(code, env=env)
