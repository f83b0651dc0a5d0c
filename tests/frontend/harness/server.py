"""A page that holds the hallucination partial alone, served from 127.0.0.1 with the app's CSP.

The partial is rendered by Django's template engine (the real template, a made-up task); the
page around it is a stand-in for the annotate page's frame (tandem.css and tandem.js, a judgement
form, a Submit button) so the partial can be driven before the annotate page includes it. Static
files come from the source tree; POSTs to /submit are kept for the test to read.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib.staticfiles import finders
from django.template import Context, Template
from django.template.loader import render_to_string

from annotation.kinds.hallucination.payload import DEFAULT_CATEGORIES

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
IMAGE_SIZE = (640, 400)
# The kind's defaults (MMHal-Bench's question types as span categories).
DEFAULT_SETTINGS = {
    "categories": list(DEFAULT_CATEGORIES),
    "show_context": True,
}

# annotate.html's frame around a kind's partials: "task-body" above the judgement form, "answer"
# inside it, before the core's rationale and Submit.
FRAME = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Hallucination task</title>
  {head}
</head>
<body data-shortcuts class="fit">
  <main id="main" class="container wide">
    <div class="annotate-layout">
      {panel}
      <aside class="card shortcuts" aria-label="Keyboard"><h2 class="card-title">Keyboard</h2></aside>
    </div>
  </main>
</body>
</html>
"""
PANEL = """<section id="task-panel" class="task-panel" tabindex="-1" aria-label="Current task">
        <div class="task-body" data-task-body>
          {task_body}
        </div>
        <form method="post" action="/submit" class="judgement" data-task-form {hx}>
          <div class="card answer">
            {answer}
            <div class="answer-row">
              <div class="field rationale">
                <label for="id_rationale">Rationale <kbd>r</kbd></label>
                <textarea id="id_rationale" name="rationale" rows="2" data-key="r"></textarea>
              </div>
              <div class="actions"><button type="submit" class="primary">Submit <kbd>Enter</kbd></button></div>
            </div>
          </div>
        </form>
      </section>"""
# The plain page: tandem.css and tandem.js only; the partial loads its own files.
HEAD = """<link rel="stylesheet" href="/static/tandem/tandem.css">
  <script src="/static/tandem/tandem.js" defer></script>"""
# The page as base.html would be with htmx and the kind's files loaded up front (the lines the
# lead adds): tasks are swapped in by htmx, whose swapped scripts never run.
HTMX_HEAD = """{% load static django_htmx %}
  <meta name="htmx-config" content='{"allowEval": false, "allowScriptTags": false, "includeIndicatorStyles": false}'>
  <link rel="stylesheet" href="{% static 'tandem/tandem.css' %}">
  <link rel="stylesheet" href="{% static 'tandem/hallucination.css' %}">
  {% htmx_script %}
  <script src="{% static 'tandem/tandem.js' %}" defer></script>
  <script src="{% static 'tandem/image-viewer.js' %}" defer></script>
  <script src="{% static 'tandem/word-diff.js' %}" defer></script>
  <script src="{% static 'tandem/hallucination.js' %}" defer></script>"""


@dataclass
class Response:
    id: int
    text: str
    label: str


@dataclass
class Task:
    """The shape of the annotate view's TaskView, as far as the partial reads it."""

    id: int
    prompt: list[dict[str, str]]
    responses: list[Response]
    extras: dict[str, Any]


@dataclass
class Form:
    """The core judgement form as the partial reads it: the POSTed values after a refusal."""

    data: dict[str, str] = field(default_factory=dict)
    kind_errors: dict[str, list[str]] = field(default_factory=dict)


def make_task(texts: list[str], *, context: dict[str, Any] | None = None, id: int = 7) -> Task:
    width, height = IMAGE_SIZE
    extras: dict[str, Any] = {
        "image": {"url": "/image.png", "thumb_url": "/thumb.png", "width": width, "height": height}
    }
    if context:
        extras["context"] = context
    return Task(
        id=id,
        prompt=[{"role": "user", "content": "<image>\nWhat is in the picture? <b>not bold</b>"}],
        responses=[Response(id=i + 1, text=t, label="AB"[i]) for i, t in enumerate(texts)],
        extras=extras,
    )


def render_page(
    task: Task,
    *,
    settings_: dict[str, Any] | None = None,
    form: Form | None = None,
    category_keys: list[tuple[str, str]] | None = None,
    htmx: bool = False,
    panel_only: bool = False,
) -> str:
    """The stand-in annotate page holding `task` (or, with `panel_only`, its #task-panel alone,
    as the view answers an htmx submit)."""
    from annotation.kinds.hallucination import KEYS

    context = {
        "task": task,
        "kind_settings": settings_ or DEFAULT_SETTINGS,
        "keys": list(KEYS),
        "form": form or Form(),
        "category_keys": category_keys,
    }
    template = "annotation/kinds/hallucination.html"
    panel = (
        PANEL.replace("{task_body}", render_to_string(f"{template}#task-body", context))
        .replace("{answer}", render_to_string(f"{template}#answer", context))
        .replace(
            "{hx}", 'hx-post="/submit" hx-target="#task-panel" hx-swap="outerHTML"' if htmx else ""
        )
    )
    if panel_only:
        return panel
    head = Template(HTMX_HEAD).render(Context()) if htmx else HEAD
    return FRAME.replace("{head}", head).replace("{panel}", panel)


def _png(size: tuple[int, int]) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", IMAGE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 60, 200, 220), fill="red")
    draw.ellipse((300, 100, 420, 220), fill="blue")
    draw.polygon([(500, 340), (560, 200), (620, 340)], fill="green")
    image = image.resize(size)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _csp_header() -> str:
    directives = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    return "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())


class Harness:
    """One server per test session; `show(html)` returns the URL of a page holding `html`."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.posts: list[dict[str, list[str]]] = []
        # What the next POSTs answer (htmx swaps), in order; a plain page once they run out.
        self.replies: list[str] = []
        self.images = {"/image.png": _png(IMAGE_SIZE), "/thumb.png": _png((320, 200))}
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Security-Policy", _csp_header())
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/favicon.ico":
                    return self._send(204, b"", "image/x-icon")
                if path in harness.pages:
                    return self._send(200, harness.pages[path].encode(), "text/html; charset=utf-8")
                if path in harness.images:
                    return self._send(200, harness.images[path], "image/png")
                if path.startswith(settings.STATIC_URL):
                    # Found as runserver finds them (the source tree, apps' static folders).
                    found = finders.find(path.removeprefix(settings.STATIC_URL))
                    if found:
                        file = Path(found)
                        kind = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
                        return self._send(200, file.read_bytes(), kind)
                self._send(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                harness.posts.append(parse_qs(body, keep_blank_values=True))
                if harness.replies:  # an htmx submit: the next task's panel
                    return self._send(200, harness.replies.pop(0).encode(), "text/html")
                self._send(200, b"<!doctype html><p id='posted'>posted</p>", "text/html")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def show(self, html: str) -> str:
        path = f"/task/{len(self.pages)}"
        self.pages[path] = html
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
