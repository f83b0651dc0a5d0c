"""A small keep-alive HTTP client for the web benches (http.client: cheap on CPU), on loopback."""

from __future__ import annotations

import http.client
import json
from typing import Any

from bench.sandbox import HOST, PASSWORD


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
