"""Who used the CPU: ``CpuMeter`` over one measured window, ``RunMeter`` over a whole run.

Both read /proc; figures are in cores or shares of the machine, so a run on a shared box says
how much of it was left to the bench.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bench.sandbox import BENCH_DB

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
