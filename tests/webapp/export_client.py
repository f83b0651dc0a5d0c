"""A bare-socket reader of the REST export, so tests can drop the connection wherever they like.

HTTP/1.0 on purpose: neither Django's development server nor gunicorn then chunks the body, so the
bytes read are exactly the export's lines and closing the socket cuts them wherever it happens.
"""

import json
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ExportStream:
    status: int
    headers: dict[str, str]
    sock: socket.socket
    pending: bytes = field(default=b"", repr=False)

    def read(self, size: int = 1 << 16) -> bytes:
        """Up to `size` bytes of body; b"" once the server has closed the connection."""
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
            return data
        return self.sock.recv(size)

    def read_all(self) -> bytes:
        parts = []
        while chunk := self.read():
            parts.append(chunk)
        self.close()
        return b"".join(parts)

    def close(self) -> None:
        self.sock.close()


def open_export(
    base_url: str,
    token: str,
    *,
    project_id: int,
    shape: str,
    since: str | None = None,
    receive_buffer: int | None = None,
    timeout: float = 60,
) -> ExportStream:
    """Sends the export request and reads its status line and headers, leaving the body unread."""
    url = urlsplit(base_url)
    path = f"/api/v1/projects/{project_id}/export?shape={shape}"
    if since:
        path += f"&since={since}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        # Set before connecting, so the advertised window stays small and the server has to wait
        # for a slow reader instead of handing the whole body to the kernel at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.connect((url.hostname, url.port))
    sock.sendall(
        f"GET {path} HTTP/1.0\r\nHost: {url.netloc}\r\nAuthorization: Token {token}\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"closed before the headers: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return ExportStream(int(status_line.split()[1]), headers, sock, body)


def complete_lines(body: bytes) -> list[dict]:
    """The rows of every newline-terminated line; a last line cut mid-way is left out."""
    *complete, _partial = body.split(b"\n")
    return [json.loads(line) for line in complete]
