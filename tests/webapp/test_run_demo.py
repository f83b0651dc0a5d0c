"""`make demo`'s supervisor: web and worker come up on 127.0.0.1 and one Ctrl-C stops both, once."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


class _Urls(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


@pytest.mark.slow
def test_ctrl_c_stops_web_and_worker_once(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TANDEM_VAR_DIR": str(tmp_path / "var"),
        "TANDEM_LOOP_TICK_SECONDS": "3600",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "DEMO_LOGLEVEL": "info",  # so the worker says when it is ready
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out_path = tmp_path / "out.log"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webapp.run_demo", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            log = out_path.read_text()
            pids = dict(re.findall(r"run_demo: (web|worker) pid (\d+)", log))
            try:
                up = fetch(base + "/accounts/login/")[0] == 200
            except OSError:
                up = False
            if up and len(pids) == 2 and "ready." in log:
                break
            assert proc.poll() is None, log[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("demo did not come up:\n" + out_path.read_text()[-3000:])
        web, worker = int(pids["web"]), int(pids["worker"])

        # The demo settings: DEBUG off, our own 404, the docs' assets from this server.
        status, headers, body = fetch(base + "/no/such/page")
        assert status == 404 and b"Page not found" in body and b"URLconf" not in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        status, _, body = fetch(base + "/api/docs/")
        assert status == 200
        page = _Urls()
        page.feed(body.decode())
        assert len(page.urls) >= 4
        for url in page.urls:
            assert not urlsplit(url).netloc, url
            assert fetch(urljoin(base + "/api/docs/", url))[0] == 200, url

        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    log = out_path.read_text()
    assert took < 20, log[-3000:]
    assert not alive(web) and not alive(worker), log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    assert log.count("stopping web and worker") == 1
    assert len(re.findall(r"warm shutdown", log, re.IGNORECASE)) <= 2, log[-3000:]
    assert "Segmentation fault" not in log and "core dumped" not in log
    assert "Traceback" not in log, log[-3000:]
    # The file broker's control folder (the worker's remote-control mailbox) lives under var/.
    assert (tmp_path / "var" / "broker" / "control").is_dir()
