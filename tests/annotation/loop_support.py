"""Real Celery workers (and a throwaway Redis) for the loop's end-to-end and fault tests."""

import base64
import json
import os
import signal
import socket
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


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick), never a fixed one that
    another test run on the machine may hold."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """Starts a Redis on `port` and waits until it answers; fails if the Redis answering there is
    not this one (another run took the port in between), so a test never flushes or stops
    someone else's server."""
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
    try:
        wait_for(lambda: _ours(client, process), timeout=20, what=f"our redis on port {port}")
    except AssertionError:
        kill_group(process)
        raise
    return process


def _ours(client, process: subprocess.Popen) -> bool:
    import redis

    if process.poll() is not None:
        raise AssertionError(f"redis-server exited with {process.returncode} (port taken?)")
    try:
        return client.info("server")["process_id"] == process.pid
    except redis.ConnectionError:
        return False


def queued_run_ids(client, queue: str = "cpu") -> list[int]:
    """The run ids of the Celery messages waiting in a queue (kombu's JSON envelope, base64 body)."""
    return sorted(_run_id(m) for m in client.lrange(queue, 0, -1))


def take_run_id(client, queue: str = "cpu") -> int | None:
    """Consumes the oldest message of a queue (kombu pushes left, pops right); its run id."""
    message = client.rpop(queue)
    return None if message is None else _run_id(message)


def _run_id(message: bytes) -> int:
    envelope = json.loads(message)
    assert envelope["headers"]["task"] == "annotation.tasks.run_round_stage", envelope["headers"]
    return json.loads(base64.b64decode(envelope["body"]))[0][0]
