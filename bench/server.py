"""The processes a web bench runs: a production-like gunicorn and a Celery worker, each in its own
process group on loopback, so stopping one reaches nothing else."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.client import request
from bench.sandbox import HOST, REPO, VENV_BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`gunicorn webapp.wsgi` with the production settings, on a free loopback port."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        workers: int = 4,
        worker_class: str = "sync",
        threads: int = 1,
        timeout: int = 120,
        log_path: Path | None = None,
    ):
        self.env = env
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads
        self.timeout = timeout
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = log_path or (REPO / "bench" / "out" / f"gunicorn-{self.port}.log")

    @property
    def description(self) -> str:
        if self.worker_class == "gthread":
            return f"gunicorn {self.workers} gthread workers x {self.threads} threads"
        return f"gunicorn {self.workers} {self.worker_class} workers"

    def command(self) -> list[str]:
        cmd = [
            str(VENV_BIN / "gunicorn"),
            "webapp.wsgi",
            "-b",
            f"{HOST}:{self.port}",
            "-w",
            str(self.workers),
            "-k",
            self.worker_class,
            "--timeout",
            str(self.timeout),
            "--backlog",
            "2048",
        ]
        if self.worker_class == "gthread":
            cmd += ["--threads", str(self.threads)]
        return cmd

    def start(self, wait_s: float = 60) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early; see {self.log_path}")
            try:
                status, _, _ = request("GET", self.url("/api/v1/projects"), timeout=2)
                if status in (200, 401, 403) and len(self.worker_pids()) >= self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {wait_s}s; see {self.log_path}")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Our own process group (start_new_session), so this reaches only this gunicorn and its workers.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class CeleryWorker:
    """`celery -A webapp worker` (solo pool) on the bench's own Redis database, as production runs
    imports and rounds; in its own process group so stopping it reaches nothing else."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        queues: str = "cpu",
        beat_schedule: Path | None = None,
        log_path: Path | None = None,
    ):
        self.env = env
        self.queues = queues
        self.beat_schedule = beat_schedule
        self.log_path = log_path or (REPO / "bench" / "out" / f"celery-{os.getpid()}.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> CeleryWorker:
        broker = self.env.get("CELERY_BROKER_URL", "")
        if not broker.startswith("redis://"):
            raise SystemExit(f"bench workers need a Redis broker, not {broker!r}")
        import redis

        # Only the bench's own Redis database: leftovers of an earlier run would be run again.
        redis.Redis.from_url(broker).flushdb()
        cmd = [str(VENV_BIN / "celery"), "-A", "webapp", "worker", "-Q", self.queues]
        cmd += ["-P", "solo", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
        if self.beat_schedule:
            cmd += ["-B", "-s", str(self.beat_schedule)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
