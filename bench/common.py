"""Shared helpers for the web benches: a throwaway database, a production-like gunicorn,
a small keep-alive HTTP client, percentiles and plain-text tables.

Everything here targets 127.0.0.1 only. The only database ever dropped is the bench database
(``tandem_bench`` by default); a name that does not start with ``tandem_bench`` is refused.

The benches import all of it from here; it lives by subject in ``bench.sandbox`` (places, the
bench database, ``manage.py``), ``bench.server`` (gunicorn, Celery worker), ``bench.client``
(HTTP), ``bench.meters`` (CPU accounting) and ``bench.provenance`` (what a result carries and
where it is saved). This module keeps the figures' formatting and the time caps.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from bench.client import Client, request, token_for
from bench.meters import CpuMeter, RunMeter
from bench.provenance import (
    RESULTS,
    add_record_args,
    git_commit,
    machine,
    provenance,
    provenance_header,
    record,
    result_path,
    save_result,
    write_json,
)
from bench.sandbox import (
    BENCH_BROKER,
    BENCH_DB,
    HOST,
    PASSWORD,
    PG_ADMIN_URL,
    REPO,
    SETUP_CODE,
    VENV_BIN,
    db_url,
    django_shell,
    drop_db,
    fresh_db,
    manage,
    pg_connect,
    server_env,
    setup_project,
)
from bench.server import CeleryWorker, Server, free_port, proc_status

__all__ = [
    "BENCH_BROKER",
    "BENCH_DB",
    "HOST",
    "PASSWORD",
    "PG_ADMIN_URL",
    "REPO",
    "RESULTS",
    "SETUP_CODE",
    "VENV_BIN",
    "CeleryWorker",
    "Client",
    "CpuMeter",
    "RunMeter",
    "Server",
    "add_record_args",
    "db_url",
    "deadline_guard",
    "django_shell",
    "drop_db",
    "fmt",
    "free_port",
    "fresh_db",
    "git_commit",
    "machine",
    "manage",
    "ms",
    "percentile",
    "pg_connect",
    "proc_status",
    "provenance",
    "provenance_header",
    "ratio",
    "record",
    "request",
    "result_path",
    "save_result",
    "server_env",
    "setup_project",
    "signal_alarm_left",
    "table",
    "token_for",
    "verdict",
    "write_json",
]


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


def signal_alarm_left(seconds: float) -> None:
    """Re-arms SIGALRM (an inner deadline_guard disarms it on exit) for the outer cap's remainder."""
    signal.alarm(max(1, int(seconds)))
