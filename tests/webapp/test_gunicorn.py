"""Production serving (webapp/gunicorn_conf.py) never cuts a long export short.

gunicorn kills a worker that has not checked in for `timeout` seconds. A sync worker checks in only
between requests, so one export streamed for longer than that is cut mid-body; the configured
gthread worker checks in from its main loop while a thread streams. Here the timeout is 2 s and a
slow reader keeps one export open for several times that.
"""

import io
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from annotation import services
from annotation.models import Judgement, Role
from annotation.services.tokens import token_issue
from tests.factories import ProjectFactory, UserFactory, wait_for_export_horizon
from tests.webapp.export_client import complete_lines, open_export
from tests.webapp.testdb import this_test_database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "GUNICORN_WORKERS", "GUNICORN_THREADS")
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
        "TEST_DATABASE_URL": this_test_database_url(),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_TIMEOUT": str(TIMEOUT_S),
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "2",
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "-c", "webapp/gunicorn_conf.py", *extra]
            + ["webapp.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise AssertionError(log.read_text()) from None
            time.sleep(0.2)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture
def big_export():
    """About 17 MB of pairs: 240 judgements whose two responses are 35,000 characters each."""
    project = ProjectFactory(overlap=6)
    for part in range(2):
        lines = [
            {
                "prompt": f"Question {part}-{i}?",
                "responses": [f"{i} first " + "a" * 35_000, f"{i} second " + "b" * 35_000],
            }
            for i in range(20)
        ]
        # Two imports, each under the size that is imported inline rather than queued.
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        job = services.import_create(
            project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
        )
        assert job.status == "done", job.errors
    for n in range(6):
        user = UserFactory()
        services.membership_set(project=project, username=user.username, role=Role.ANNOTATOR)
        while lease := services.assignment_lease(annotator=user, project=project):
            services.judgement_submit(
                assignment=lease,
                data={"choice": "AB"[lease.pk % 2], "strength": 1},
                idempotency_key=f"{n}-{lease.pk}",
            )
    trainer = UserFactory()
    services.membership_set(project=project, username=trainer.username, role=Role.TRAINER)
    _, token = token_issue(user=trainer, name="export")
    wait_for_export_horizon()
    return project, token


def read_slowly_then_fast(stream, log: Path, slow_for: float) -> tuple[bytes, bool]:
    """The body, and whether the server was still sending it when the slow phase ended.

    The small receive window makes the server wait on this reader, so the response stays in
    flight; the rest is then read at full speed, so the connection closes promptly.
    """
    received, started = [], time.monotonic()
    while time.monotonic() - started < slow_for and (chunk := stream.read(64 * 1024)):
        received.append(chunk)
        time.sleep(0.03)
    # gunicorn writes the access-log line when the response has been handed to the kernel.
    in_flight = b"GET /api/v1/projects/" not in log.read_bytes()
    while chunk := stream.read(1 << 20):
        received.append(chunk)
    stream.close()
    return b"".join(received), in_flight


def test_a_slow_reader_gets_every_row_past_the_worker_timeout(big_export, tmp_path):
    project, token = big_export
    log = tmp_path / "gunicorn.log"
    server, url = start_gunicorn(log)
    try:
        stream = open_export(
            url, token, project_id=project.pk, shape="pairs", receive_buffer=16 * 1024
        )
        assert stream.status == 200, stream.read_all()
        body, in_flight = read_slowly_then_fast(stream, log, slow_for=3 * TIMEOUT_S)
    finally:
        stop(server)

    assert in_flight, "the export finished before the worker timeout: this proves nothing"
    assert body.endswith(b"\n"), "the body was cut short"
    ids = [row["judgement_ids"][0] for row in complete_lines(body)]
    assert len(ids) == len(set(ids)) == 240
    assert sorted(ids) == sorted(
        Judgement.objects.filter(project=project).values_list("id", flat=True)
    )
    assert b"WORKER TIMEOUT" not in log.read_bytes(), log.read_text()


def test_a_sync_worker_would_have_cut_it_short(big_export, tmp_path):
    """The control: the same read against gunicorn's default worker class loses rows."""
    project, token = big_export
    log = tmp_path / "gunicorn.log"
    # One thread: with more, gunicorn swaps a sync worker for gthread by itself.
    server, url = start_gunicorn(log, "--worker-class", "sync", "--threads", "1")
    try:
        stream = open_export(
            url, token, project_id=project.pk, shape="pairs", receive_buffer=16 * 1024
        )
        body, _ = read_slowly_then_fast(stream, log, slow_for=3 * TIMEOUT_S)
    finally:
        stop(server)

    assert b"WORKER TIMEOUT" in log.read_bytes(), log.read_text()
    assert len(complete_lines(body)) < 240, log.read_text()
