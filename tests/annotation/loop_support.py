"""Real Celery workers (and a throwaway Redis) for the loop's end-to-end and fault tests."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def celery_worker(
    *, artifacts: Path, broker: str, log: Path, stale_seconds: int = 8, tick_seconds: float = 1.0
):
    """A worker process with embedded beat on the test database, in its own process group.

    Yields the Popen; leaving the block (or the test failing) kills the whole group.
    """
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
        "TEST_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
        "TEST_CELERY_BROKER_URL": broker,
        "TANDEM_ARTIFACT_ROOT": str(artifacts),
        "TANDEM_MODEL_ROOTS": os.pathsep.join(str(p) for p in settings.TANDEM_MODEL_ROOTS),
        "TANDEM_LOOP_STALE_SECONDS": str(stale_seconds),
        "TANDEM_LOOP_TICK_SECONDS": str(tick_seconds),
        "PYTHONUNBUFFERED": "1",
    }
    schedule = log.with_suffix(".beat")
    handle = log.open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "webapp",
            "worker",
            "-B",
            "-s",
            str(schedule),
            "-Q",
            "cpu",
            "-P",
            "solo",
            "--loglevel=INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        kill_group(process)
        handle.close()


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


@contextmanager
def redis_server(port: int, workdir: Path):
    """A private Redis the test may stop and start, so the shared one is never touched."""
    process = start_redis(port, workdir)
    try:
        yield process
    finally:
        kill_group(process)


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import redis

    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), timeout=20, what=f"redis on port {port}")
    return process


def _pings(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
