"""Shared helpers for the web benchmarks: a throwaway database, a production-like gunicorn,
a small keep-alive HTTP client, percentiles and plain-text tables.

Everything here targets 127.0.0.1 only. The only database ever dropped is the bench database
(``tandem_bench`` by default); a name that does not start with ``tandem_bench`` is refused.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
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


# --- database --------------------------------------------------------------------------------


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


# --- server ----------------------------------------------------------------------------------


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


# --- HTTP client -----------------------------------------------------------------------------


class Client:
    """One keep-alive connection (http.client: cheap on CPU); reconnects when the server closes.

    gunicorn's sync workers close after every response; gthread workers keep the connection.
    """

    def __init__(self, port: int, token: str | None = None, timeout: float = 60):
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Token {token}"

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        hdrs = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.will_close:
                    self.conn.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection between two calls: retry once.
                self.conn.close()
                if attempt == 2:
                    raise
        payload = json.loads(raw) if raw and raw[:1] in (b"{", b"[") else raw
        return resp.status, payload

    def close(self) -> None:
        self.conn.close()


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """One-off request on a fresh connection: (status, headers, body)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def token_for(port: int, username: str, password: str = PASSWORD) -> str:
    status, body = Client(port).call(
        "POST", "/api/v1/auth/token", {"username": username, "password": password}
    )
    if status != 200:
        raise RuntimeError(f"token for {username}: {status} {body!r}")
    return body["token"]


# --- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def ratio(ours: float | None, theirs: float | None, *, lower_is_better: bool = False) -> str:
    if not ours or not theirs:
        return "-"
    r = theirs / ours if lower_is_better else ours / theirs
    return f"{r:,.1f}x"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


@contextmanager
def deadline_guard(seconds: float, what: str):
    """Hard stop: SIGALRM raises in the main thread after `seconds`."""

    def fire(signum, frame):
        raise TimeoutError(f"{what}: hard time cap of {seconds:.0f}s reached")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, Python and Postgres versions (None where there is no Postgres:
    the training benches do not need one)."""
    try:
        with pg_connect("postgres", connect_timeout=3) as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        pg = None
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "postgres": pg,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


# --- who used the CPU ------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _all_procs() -> dict[int, tuple[int, str, int]]:
    """pid -> (cpu ticks, command line, parent pid) for every process we can read."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, rest = (entry / "stat").read_text().rpartition(")")
            fields = rest.split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[11]) + int(fields[12]), cmd or head, int(fields[1]))
    return out


def _busy_ticks() -> tuple[int, int]:
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


class CpuMeter:
    """Splits the machine's busy CPU over a run into: this bench's client, its gunicorn, the
    Postgres backends of the bench database, and everything else (other people's work on a
    shared box). Figures are in cores (1.0 = one core busy all the time)."""

    def __init__(self, server_pid: int | None, db: str = BENCH_DB, worker_pid: int | None = None):
        self.server_pid = server_pid
        self.db = db
        # A Celery worker (its solo pool is the process itself), e.g. the one running an import job.
        self.worker_pid = worker_pid

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.busy0 = _busy_ticks()
        self.procs0 = _all_procs()
        self.load0 = Path("/proc/loadavg").read_text().split()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        procs1 = _all_procs()
        busy1 = _busy_ticks()
        wall = time.monotonic() - self.t0
        me = os.getpid()
        groups = {"bench_client": 0, "gunicorn": 0, "postgres_bench": 0, "other": 0}
        if self.worker_pid:
            groups["celery_worker"] = 0
        for pid, (ticks, cmd, ppid) in procs1.items():
            delta = ticks - self.procs0.get(pid, (0, "", 0))[0]
            if delta <= 0:
                continue
            if pid == me:
                groups["bench_client"] += delta
            elif self.worker_pid and (pid == self.worker_pid or ppid == self.worker_pid):
                groups["celery_worker"] += delta
            elif self.server_pid and (pid == self.server_pid or ppid == self.server_pid):
                groups["gunicorn"] += delta
            elif cmd.startswith("postgres:") and f" {self.db} " in cmd:
                groups["postgres_bench"] += delta
            else:
                groups["other"] += delta
        total_busy = busy1[0] - self.busy0[0]
        accounted = sum(groups.values())
        # Processes that ended during the run are only in the machine total: count them as other.
        groups["other"] += max(0, total_busy - accounted)
        self.result = {k: round(v / _TICK / wall, 2) for k, v in groups.items()}
        self.result["machine_busy"] = round(total_busy / _TICK / wall, 2)
        self.result["cores"] = os.cpu_count()
        self.result["loadavg_start"] = float(self.load0)
        self.result["loadavg_end"] = float(Path("/proc/loadavg").read_text().split()[0])


def signal_alarm_left(seconds: float) -> None:
    """Re-arms SIGALRM (an inner deadline_guard disarms it on exit) for the outer cap's remainder."""
    signal.alarm(max(1, int(seconds)))


# --- provenance: which commit, which machine, how idle, which command -------------------------

RESULTS = REPO / "bench" / "results"


def git_commit() -> dict[str, Any]:
    """HEAD and whether the tree differs from it (bench/results/ and bench/out/ do not count:
    a run that saves its own result must not make the next bench of the same run 'dirty')."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        changed = [
            line[3:]
            for line in git(
                "status", "--porcelain", "--", ".", ":!bench/results", ":!bench/out"
            ).splitlines()
            if line.strip()
        ]
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None, "changed": []}
    return {
        "sha": sha,
        "dirty": bool(changed),
        "changed_count": len(changed),
        "changed": changed[:20],
    }


def _proc_ticks(pid: int) -> tuple[int, int, str, int]:
    """(utime+stime, cutime+cstime, command line, parent pid) of one process."""
    head, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
    fields = rest.split()
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return (
        int(fields[11]) + int(fields[12]),
        int(fields[13]) + int(fields[14]),
        cmd or head,
        int(fields[1]),
    )


def _cpu_line() -> tuple[int, int]:
    """(idle ticks, total ticks) of all CPUs since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return parts[3] + parts[4], sum(parts)


class RunMeter:
    """How much of the machine was left to this bench over a whole run.

    The bench's own CPU is this process and every descendant it has reaped (cutime), plus the
    descendants still alive at the end and the Postgres backends of the bench database, which a
    background thread samples every `every` seconds. Everything else that kept the CPUs busy is
    other people's work: `idle_share` = 1 - others_share is the share of the CPUs other processes
    left idle, the figure to read before trusting a timing. Short-lived processes the sampler
    misses count as others, so `others_share` errs on the high side.
    """

    def __init__(self, db: str | None = None, every: float = 0.5):
        self.db = db
        self.every = every
        # pid -> (ticks when first seen, ticks when last seen, "pg" | "child" | "")
        self._seen: dict[int, tuple[int, int, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _kind(self, ppid: int, cmd: str, parents: dict[int, int]) -> str:
        if self.db and cmd.startswith("postgres:") and f" {self.db} " in cmd:
            return "pg"
        for _ in range(64):
            if ppid <= 1:
                break
            if ppid == self.me:
                return "child"
            ppid = parents.get(ppid, 0)
        return ""

    def _sample(self, *, baseline: bool = False) -> None:
        rows: dict[int, tuple[int, str, int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ticks, _, cmd, ppid = _proc_ticks(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
                rows[int(entry.name)] = (ticks, cmd, ppid)
        parents = {pid: ppid for pid, (_, _, ppid) in rows.items()}
        for pid, (ticks, cmd, ppid) in rows.items():
            if pid == self.me:
                continue
            if pid in self._seen:
                first, _, kind = self._seen[pid]
                self._seen[pid] = (first, ticks, kind)
            else:
                # A process born during the run spent all its ticks in the run.
                kind = self._kind(ppid, cmd, parents)
                self._seen[pid] = (ticks if baseline else 0, ticks, kind)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> RunMeter:
        self.me = os.getpid()
        self.started_at = time.time()
        self.t0 = time.monotonic()
        self.cpu0 = _cpu_line()
        self.own0 = _proc_ticks(self.me)[:2]
        self.load0 = float(Path("/proc/loadavg").read_text().split()[0])
        self._sample(baseline=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        alive = {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()}
        own1 = _proc_ticks(self.me)[:2]
        idle1, total1 = _cpu_line()
        total = max(1, total1 - self.cpu0[1])
        idle = idle1 - self.cpu0[0]
        reaped = own1[1] - self.own0[1]
        ours = (own1[0] - self.own0[0]) + reaped
        for pid, (first, last, kind) in self._seen.items():
            # Reaped descendants are already in cutime: count the live ones, and the backends.
            if kind == "pg" or (kind == "child" and pid in alive):
                ours += last - first
        others = max(0, total - idle - ours)
        self.result = {
            "cores": os.cpu_count(),
            "wall_s": round(time.monotonic() - self.t0, 1),
            "idle_share": round(1 - others / total, 3),
            "others_share": round(others / total, 3),
            "bench_share": round(min(ours, total - idle) / total, 3),
            "raw_idle_share": round(idle / total, 3),
            "loadavg_start": self.load0,
            "loadavg_end": float(Path("/proc/loadavg").read_text().split()[0]),
        }


def provenance(
    name: str, argv: Sequence[str], meter: RunMeter | None = None, **extra: Any
) -> dict[str, Any]:
    """What a result must carry to be cited: the bench, the exact command, the commit, the
    machine (with how idle it was over the run) and when it ran."""
    started = meter.started_at if meter else time.time()
    info = machine()
    if meter is not None and hasattr(meter, "result"):
        info |= {"cpu_over_run": meter.result, "idle_share": meter.result["idle_share"]}
    return {
        "bench": name,
        "command": " ".join(
            [Path(sys.executable).relative_to(REPO).as_posix() if _under_repo() else "python"]
            + ["-m", f"bench.{name}", *argv]
        ),
        "argv": list(argv),
        "commit": git_commit(),
        "machine": info,
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
        "bench_db": BENCH_DB,
        **extra,
    }


def _under_repo() -> bool:
    try:
        Path(sys.executable).relative_to(REPO)
    except ValueError:
        return False
    return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def result_path(name: str, started_at: str) -> Path:
    """bench/results/<UTC date the run started>/<name>.json"""
    return RESULTS / started_at[:10] / f"{name}.json"


def save_result(name: str, data: dict[str, Any], *, smoke: bool = False) -> Path | None:
    """Copies a finished result into bench/results/<date>/ for committing; smoke runs are not results."""
    if smoke:
        print(f"[{name}] --smoke: not saved to bench/results (smoke figures are not results)")
        return None
    path = result_path(name, data.get("started_at") or _iso(time.time()))
    write_json(path, data)
    commit = data.get("commit") or {}
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(
        f"[{name}] saved {shown} (commit {str(commit.get('sha'))[:10]}"
        f"{', DIRTY tree' if commit.get('dirty') else ''})"
    )
    return path


def provenance_header(data: dict[str, Any]) -> str:
    """The lines every report starts with: command, commit, machine and how idle it was."""
    commit = data.get("commit") or {}
    m = data.get("machine") or {}
    cpu = m.get("cpu_over_run") or {}
    lines = [
        f"Command: {data.get('command')}",
        f"Commit: {commit.get('sha')}"
        + (
            f" + UNCOMMITTED CHANGES ({', '.join(commit.get('changed', [])[:5])})"
            if commit.get("dirty")
            else ""
        ),
        f"Machine: {m.get('cpus')} cores, Python {m.get('python')}, Postgres {m.get('postgres')}; "
        f"run {data.get('started_at')} -> {data.get('finished_at')}",
    ]
    if cpu:
        lines.append(
            f"CPU over the run: other processes left {cpu['idle_share']:.0%} of the {cpu['cores']} cores "
            f"to this bench (others {cpu['others_share']:.0%}, this bench {cpu['bench_share']:.0%}, "
            f"load average {cpu['loadavg_start']} -> {cpu['loadavg_end']})"
            + ("  !! NOT AN IDLE MACHINE: rerun before citing" if cpu["idle_share"] < 0.9 else "")
        )
    return "\n".join(lines)


def add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save-result",
        action="store_true",
        help="also copy the JSON to bench/results/<date>/<bench>.json, to commit with the README",
    )


def record(
    name: str,
    argv: Sequence[str],
    meter: RunMeter | None,
    figures: dict[str, Any],
    *,
    json_path: Path | None,
    save: bool,
    smoke: bool,
    **extra: Any,
) -> dict[str, Any]:
    """The result as written: provenance first, then the figures; to --json and, with
    --save-result, to bench/results/<date>/<name>.json."""
    data = provenance(name, argv, meter, smoke=smoke, **extra)
    # Provenance first and authoritative (a bench's own "machine" has no idle share).
    data |= {k: v for k, v in figures.items() if k not in data}
    if json_path:
        write_json(json_path, data)
    if save:
        save_result(name, data, smoke=smoke)
    return data
