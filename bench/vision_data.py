"""What the image benches feed a hallucination project: pictures, zips, import lines, judgements.

Everything is synthetic and built on the fly: each image is a small picture drawn with Pillow
(a colour of its own, a bar and the task number), so every task's image is distinct and the
server must verify and store each one. A zip is written entry by entry into a file, never held
whole, as a user's tool would write it. The judgements a simulated annotator sends are valid by
construction: their spans are found in the leased response's own text.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bench import common

# The project's default categories (annotation/kinds/hallucination/payload.py DEFAULT_CATEGORIES).
CATEGORIES = ("object", "attribute", "count", "relation", "comparison", "environment", "holistic")
# About the length of the pairwise bench's answers (web_load_traffic.jsonl_tasks), so the two
# kinds move the same amount of text per loop.
_FILLER = (
    "Looking at the picture, there is a coloured square with a number drawn on it and a bar "
    "across the top. "
)


# Sides from which a picture stands in for a photo: grain makes it weigh what a photo of its size
# does (about 100 KB as a 640x480 JPEG), where a flat drawing would compress to nothing.
PHOTO_SIDE = 256


@functools.lru_cache(maxsize=4)
def _grain(w: int, h: int) -> Image.Image:
    # One field of noise per size, cut at a different offset for each task: cheap, and distinct.
    return Image.effect_noise((w + 64, h + 64), 40).convert("RGB")


def picture(i: int, size: tuple[int, int] = (128, 96), fmt: str = "png") -> bytes:
    """Task i's image: distinct for every i (its colour and number); a few KB, or about what a
    photo of its size weighs from PHOTO_SIDE pixels wide."""
    w, h = size
    # A colour walk that does not repeat within 2**24 tasks.
    rgb = ((i * 97) % 256, (i * 57 + 80) % 256, (i * 23 + 160) % 256)
    img = Image.new("RGB", (w, h), rgb)
    if w >= PHOTO_SIDE:
        dx, dy = i % 64, (i // 64) % 64
        img = Image.blend(img, _grain(w, h).crop((dx, dy, dx + w, dy + h)), 0.35)
    pen = ImageDraw.Draw(img)
    pen.rectangle((4, 4, w - 5, h // 5), fill=(255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
    pen.text((8, h // 3), f"task {i}", fill=(0, 0, 0))
    pen.text((8, h // 3 + 14), f"#{i:07d}", fill=(255, 255, 255))
    out = io.BytesIO()
    if fmt == "jpeg":
        img.save(out, format="JPEG", quality=85)
    else:
        img.save(out, format="PNG")
    return out.getvalue()


def image_format(i: int, formats: str) -> str:
    """png, jpeg, or mixed (even tasks PNG, odd JPEG: both decoders the server accepts)."""
    if formats == "mixed":
        return "png" if i % 2 == 0 else "jpeg"
    return formats


def responses(i: int) -> list[str]:
    """Two answers of about 140 characters; A names the right number, B a wrong one."""
    return [
        f"{_FILLER}The number on it is {i}.",
        f"{_FILLER}The number on it is {i + 1}, and there is a red circle.",
    ]


def line(i: int, image: str) -> dict[str, Any]:
    """A hallucination import line: question, image reference, two responses, captions."""
    return {
        "id": f"vision-{i}",
        "prompt": f"Question {i}: which number is drawn in this picture?",
        "image": image,
        "responses": responses(i),
        "context": {"captions": [f"A coloured card showing the number {i}."]},
    }


def jsonl(n: int, refs: list[str]) -> bytes:
    """n lines naming uploaded images ("sha256:<hex>") round-robin."""
    return ("".join(json.dumps(line(i, refs[i % len(refs)])) + "\n" for i in range(n))).encode()


def write_zip(path: Path, n: int, *, size: tuple[int, int], formats: str) -> dict[str, Any]:
    """Writes the import zip of n tasks to `path`: tasks.jsonl at its root (deflated), then
    img/<bucket>/<i>.<ext> per task (stored: pictures are compressed already). Streamed to disk
    one entry at a time; returns its size and what it holds."""
    image_bytes = 0
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open(
            zipfile.ZipInfo("tasks.jsonl", date_time=(2026, 12, 1, 0, 0, 0)), "w"
        ) as out:
            for i in range(n):
                ext = "png" if image_format(i, formats) == "png" else "jpg"
                out.write((json.dumps(line(i, f"img/{i // 1000:03d}/{i}.{ext}")) + "\n").encode())
        # zipfile.open(mode="w") deflates only when the ZipFile says so: set it per entry.
        for i in range(n):
            fmt = image_format(i, formats)
            ext = "png" if fmt == "png" else "jpg"
            data = picture(i, size, fmt)
            image_bytes += len(data)
            info = zipfile.ZipInfo(
                f"img/{i // 1000:03d}/{i}.{ext}", date_time=(2026, 12, 1, 0, 0, 0)
            )
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, data)
    return {
        "tasks": n,
        "zip_bytes": path.stat().st_size,
        "image_bytes": image_bytes,
        "image_size": f"{size[0]}x{size[1]}",
        "image_formats": formats,
    }


# --- simulated annotators ---------------------------------------------------------------------


def judgement(task: dict[str, Any], loop: int) -> dict[str, Any]:
    """A valid hallucination judgement of a leased task: choices rotate over A, B and tie (with a
    helpful choice), and 1-2 spans mark words found in the responses' own texts."""
    texts = [r["text"] for r in task["responses"]]
    spans = []
    for response, word in ((1, "red circle"), (0, "number"))[: 1 + loop % 2]:
        start = texts[response].find(word)
        if start < 0:  # not this bench's text: mark its first word instead
            start, word = 0, texts[response].split(" ", 1)[0] or texts[response][:1]
        spans.append(
            {
                "response": response,
                "start": start,
                "end": start + len(word),
                "category": CATEGORIES[loop % len(CATEGORIES)],
            }
        )
    choice = ("A", "A", "B", "tie")[loop % 4]
    body: dict[str, Any] = {"choice": choice, "spans": spans}
    if choice == "tie":
        body["helpful_choice"] = "A"
    return body


class ImageCache:
    """One annotator's browser cache of image URLs: the first sight of a URL fetches it; later ones
    honour what the server said: `immutable` is kept without asking again, anything else is
    revalidated with If-None-Match (a 304 costs a request, not the bytes)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str | None, bool]] = {}  # url -> (etag, immutable)
        self.fetches: list[float] = []  # seconds per request sent (200 or 304)
        self.hits = 0  # no request: immutable and cached
        self.not_modified = 0
        self.bytes = 0
        self.errors = 0

    def get(self, client: common.Client, url: str, perf) -> None:
        cached = self.entries.get(url)
        if cached and cached[1]:
            self.hits += 1
            return
        headers = dict(client.headers, Accept="image/avif,image/webp,*/*")
        if cached and cached[0]:
            headers["If-None-Match"] = cached[0]
        t0 = perf()
        for attempt in (1, 2):
            try:
                client.conn.request("GET", url, headers=headers)
                resp = client.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    client.conn.close()
                break
            except (ConnectionError, OSError):
                client.conn.close()
                if attempt == 2:
                    self.errors += 1
                    return
        self.fetches.append(perf() - t0)
        if resp.status == 304:
            self.not_modified += 1
        elif resp.status == 200:
            self.bytes += len(data)
            control = resp.getheader("Cache-Control") or ""
            self.entries[url] = (resp.getheader("ETag"), "immutable" in control)
        else:
            self.errors += 1


# --- setting up projects of any kind ------------------------------------------------------------

SETUP_KINDS_CODE = r"""
import json
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from annotation import services
from annotation.models import Membership, Role
User = get_user_model()
staff = services.user_create(username="bench-staff", password=PASSWORD, is_staff=True)
hashed = make_password(PASSWORD)
users = User.objects.bulk_create(
    [User(username=f"bench-a{i:03d}", password=hashed) for i in range(ANNOTATORS)]
)
projects = {}
for kind in KINDS:
    project = services.project_create(creator=staff, name=f"bench-{kind}", kind=kind,
                                      overlap=OVERLAP, lease_seconds=3600)
    Membership.objects.bulk_create(
        [Membership(project=project, user=u, role=Role.ANNOTATOR) for u in users]
    )
    projects[kind] = project.pk
print("RESULT " + json.dumps({"projects": projects, "staff": staff.username,
                              "annotators": [u.username for u in users]}))
"""


def setup_kinds(
    *, env: dict[str, str], kinds: list[str], annotators: int, overlap: int = 1
) -> dict[str, Any]:
    """Staff, annotators (one password hash for all) and one project per kind, every annotator a
    member of each: bench.sandbox.setup_project for several kinds."""
    code = (
        SETUP_KINDS_CODE.replace("PASSWORD", repr(common.PASSWORD))
        .replace("KINDS", repr(list(kinds)))
        .replace("OVERLAP", str(overlap))
        .replace("ANNOTATORS", str(annotators))
    )
    return common.django_shell(code, env=env)


def upload_images(port: int, token: str, project: int, n: int) -> dict[str, Any]:
    """Uploads n distinct pictures once (POST /images, raw body), as a manager would before
    importing lines that name them "sha256:<hex>"; returns their refs and the time taken."""
    import time

    client = common.Client(port, token, timeout=60)
    refs = []
    t0 = time.perf_counter()
    for i in range(n):
        fmt = image_format(i, "mixed")
        body = picture(i, (128, 96), fmt)
        for attempt in (1, 2):
            try:
                client.conn.request(
                    "POST",
                    f"/api/v1/projects/{project}/images",
                    body=body,
                    headers=dict(client.headers, **{"Content-Type": f"image/{fmt}"}),
                )
                resp = client.conn.getresponse()
                raw = resp.read()
                if resp.will_close:
                    client.conn.close()
                break
            except (ConnectionError, OSError):
                client.conn.close()
                if attempt == 2:
                    raise
        if resp.status not in (200, 201):
            raise RuntimeError(f"image upload {i}: {resp.status} {raw[:300]!r}")
        refs.append(json.loads(raw)["id"])
    client.close()
    seconds = time.perf_counter() - t0
    return {"refs": refs, "images": n, "seconds": round(seconds, 2)}
