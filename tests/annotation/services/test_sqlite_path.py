"""The invariants of the lease and submit paths on SQLite, the database `make demo` runs on.

Postgres carries the suite; SQLite has no row locks and takes another code path (IMMEDIATE
transactions serialise writers), so it is checked here at a small scale in a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sqlite_annotators.py")
REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_threads_on_sqlite_never_overfill_a_task_and_lose_nothing(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.dev",
        "DJANGO_DEBUG": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "TANDEM_VAR_DIR": str(tmp_path / "var"),
        "SECRET_KEY": "sqlite-path-test-only",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])

    assert result["failures"] == []
    assert not result["watcher_alive_at_end"] and result["stuck_threads"] == 0
    assert result["violations"] == []
    # Nothing lost, nothing doubled: every judgement a thread was told it stored is there once.
    assert result["stored"] == result["submitted"]
    assert len(result["stored"]) == result["task_count"] * result["overlap"]
    assert result["replays_equal"]
    assert result["skipped_stored"] == result["skipped"]
    assert result["max_judgements_per_annotator_task"] == 1
    assert result["live_leases_left"] == 0
    for judged, complete, live in result["tasks"]:
        assert (judged, complete, live) == (result["overlap"], True, 0)
