"""Images of multimodal kinds: verified by decoding, stripped of metadata, stored once by content.

An upload is trusted for nothing, its extension least of all. It must decode as JPEG, PNG or WebP
(so SVG, which can carry script, and GIF are refused), be at most TANDEM_IMAGE_MAX_BYTES, and
declare at most TANDEM_IMAGE_MAX_PIXELS pixels: that check reads only the header, before a pixel
is decoded, so a decompression bomb (a few KB that decode to gigabytes) costs nothing. The picture
is then turned upright by its EXIF orientation, converted to sRGB and re-encoded without any
metadata (EXIF, GPS, XMP, ICC, text chunks), and the SHA-256 of those stored bytes is its id:
`images/<ab>/<sha256>.<ext>` through Django's storage API (`STORAGES["default"]`: the media root by
default, any django-storages backend by setting), with a thumbnail under `images/thumbs/`.

Rows and files do not share a transaction, so `ImageBatch` keeps them in step: it remembers the
files it created and, when it ends, deletes those no committed `Image` row names. See its
docstring for the contract an import follows.
"""

import hashlib
import io
import logging
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import connection, transaction
from PIL import Image as Pil
from PIL import ImageCms, ImageOps

from ..errors import Conflict, InvalidInput, TandemError, TooLarge
from ..models import Image, Project, ProjectImage
from ..selectors.images import parse_ref
from .archives import ImportArchive
from .guards import project_ensure_writable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Format:
    name: str  # Image.format
    ext: str
    mime: str


FORMATS = {
    "JPEG": Format("jpeg", "jpg", "image/jpeg"),
    # A multi-picture JPEG (many cameras): its first picture is kept, as a JPEG.
    "MPO": Format("jpeg", "jpg", "image/jpeg"),
    "PNG": Format("png", "png", "image/png"),
    "WEBP": Format("webp", "webp", "image/webp"),
}
BY_NAME = {f.name: f for f in FORMATS.values()}
# Longest side of a thumbnail: the annotation page's image column at 2x on a laptop.
THUMB_SIDE = 512
_ACCEPTED = "only JPEG, PNG and WebP images are accepted"
_SAVE_OPTIONS = {
    "jpeg": {"quality": 90},
    "png": {"compress_level": 6},
    "webp": {"quality": 90, "method": 4},
}
_THUMB_OPTIONS = {"jpeg": {"quality": 85}, "png": {"compress_level": 6}, "webp": {"quality": 85}}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def storage_names(sha256: str, fmt: Format) -> tuple[str, str]:
    """Storage names of an image and of its thumbnail: content-addressed, fanned out by 2 hex."""
    leaf = f"{sha256[:2]}/{sha256}.{fmt.ext}"
    return f"images/{leaf}", f"images/thumbs/{leaf}"


# --- verifying ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedImage:
    sha256: str
    format: Format
    width: int
    height: int
    content: bytes
    thumbnail: bytes | None  # None when the image is already thumbnail-sized


def _label(name: str) -> str:
    return repr(str(name)[:200])


def _refuse(name: str, message: str) -> InvalidInput:
    text = f"{_label(name)} {message}"
    return InvalidInput(text, errors=[{"field": "image", "message": text}])


def _read_capped(data: bytes | IO[bytes], name: str, cap: int) -> bytes:
    raw = data if isinstance(data, bytes | bytearray) else data.read(cap + 1)
    if len(raw) > cap:
        text = f"{_label(name)} is over the limit of {cap} bytes"
        raise TooLarge(text, errors=[{"field": "image", "message": text}])
    return bytes(raw)


def _what_else(head: bytes) -> str:
    """A refusal that says what the file looks like, for the formats people actually send."""
    if head.startswith((b"GIF87a", b"GIF89a")):
        return f"is a GIF; {_ACCEPTED}"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<") and b"<svg" in text:
        return f"is an SVG (which may carry script); {_ACCEPTED}"
    return f"is not a JPEG, PNG or WebP image (whatever its name says); {_ACCEPTED}"


def _srgb(img: Pil.Image) -> Pil.Image:
    """The picture in sRGB, so that dropping its ICC profile does not shift its colours."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = "RGBA" if img.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(img, source, _SRGB, outputMode=mode) or img
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img  # a broken profile is dropped with the rest of the metadata


def _normalised(img: Pil.Image, fmt: Format) -> Pil.Image:
    if img.mode.startswith("I"):
        # 16-bit grayscale (PNG): scaled to 8 bits, as a plain conversion would clip it to white.
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if fmt.name == "jpeg":
        mode = "L" if img.mode in ("1", "L") else "RGB"
    elif has_alpha:
        mode = "RGBA"
    elif fmt.name == "png" and img.mode in ("1", "L"):
        mode = "L"
    else:
        mode = "RGB"
    clean = img.convert(mode) if img.mode != mode else img.copy()
    clean.info = {}  # what the encoders would copy over: EXIF, XMP, ICC, text chunks
    return clean


def _encode(img: Pil.Image, fmt: Format, options: dict) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt.name.upper(), **options)
    return out.getvalue()


def image_verify(data: bytes | IO[bytes], *, name: str) -> VerifiedImage:
    """Decodes an untrusted image and re-encodes it clean; raises InvalidInput / TooLarge naming
    `name` (a file name or a zip entry) for anything not a JPEG, PNG or WebP within the caps."""
    raw = _read_capped(data, name, settings.TANDEM_IMAGE_MAX_BYTES)
    try:
        # Only these decoders may look at the bytes: Pillow tries no other format.
        img = Pil.open(io.BytesIO(raw), formats=["JPEG", "PNG", "WEBP"])
    except Pil.DecompressionBombError:
        raise _refuse(name, "declares too many pixels (a decompression bomb?)") from None
    except (Pil.UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        raise _refuse(name, _what_else(raw[:1024])) from None
    fmt = FORMATS.get(img.format or "")
    if fmt is None:
        raise _refuse(name, _what_else(raw[:1024]))
    width, height = img.size
    cap = settings.TANDEM_IMAGE_MAX_PIXELS
    # From the header alone, before a pixel is decoded: a bomb costs nothing here.
    if width * height > cap:
        raise _refuse(name, f"is {width}×{height} pixels; the limit is {cap} pixels")
    if width < 1 or height < 1:
        raise _refuse(name, "has no pixels")
    if fmt.name != "jpeg" and getattr(img, "is_animated", False):
        raise _refuse(name, "is animated; only still images are accepted")
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
        clean = _normalised(_srgb(upright), fmt)
    except Pil.DecompressionBombError:
        raise _refuse(name, "declares too many pixels (a decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise _refuse(name, f"could not be decoded ({type(exc).__name__}: {exc})"[:300]) from None
    content = _encode(clean, fmt, _SAVE_OPTIONS[fmt.name])
    thumbnail = None
    if max(clean.size) > THUMB_SIDE:
        small = clean.copy()
        small.thumbnail((THUMB_SIDE, THUMB_SIDE), Pil.Resampling.LANCZOS)
        thumbnail = _encode(small, fmt, _THUMB_OPTIONS[fmt.name])
    return VerifiedImage(
        sha256=hashlib.sha256(content).hexdigest(),
        format=fmt,
        width=clean.width,
        height=clean.height,
        content=content,
        thumbnail=thumbnail,
    )


# --- storing -------------------------------------------------------------------------------

# Advisory locks between a batch writing Image rows (shared) and a batch deleting the files it
# created (exclusive), per bucket of hashes: a failed import never deletes a file that another
# import, still running, found in place and is about to name in a row.
_LOCK_CLASS = 0x7A11
_BUCKETS = 64


def _bucket(sha256: str) -> int:
    return int(sha256[:2], 16) % _BUCKETS


def _lock_buckets(buckets: Iterable[int], *, shared: bool) -> None:
    if connection.vendor != "postgresql":
        return  # SQLite (the demo) runs one writer at a time
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        for bucket in sorted(set(buckets)):  # one order for all: no deadlock between batches
            cursor.execute(f"SELECT {fn}(%s, %s)", [_LOCK_CLASS, bucket])


def _with_rows(shas: set[str]) -> set[str]:
    """Those of `shas` that an Image row names (as this connection sees the rows)."""
    listed, found = sorted(shas), set()
    for start in range(0, len(listed), 10_000):
        chunk = listed[start : start + 10_000]
        found.update(Image.objects.filter(pk__in=chunk).values_list("pk", flat=True))
    return found


class ImageBatch:
    """The images one import (or upload) stores: their files now, their rows at write time.

    The contract an import follows::

        with ImageBatch(project=project) as batch:   # outermost: it ends after the transaction
            refs, errors = images_resolve(project=project, refs=..., archive=..., batch=batch)
            if errors:
                ...fail the import (no rows were written; the batch's files go on exit)
            with transaction.atomic():
                batch.write_rows()      # Image rows and this project's links
                ...write the tasks, whose prompts name the images as "sha256:<hex>"

    `store` verifies an image and puts its files in storage at once (outside any transaction);
    `write_rows` creates the rows in the caller's transaction. When the `with` ends, however it
    ends, every file this batch created that no committed `Image` row names is deleted: after a
    rollback or a refused import, nothing of the import is kept; after a commit, nothing is
    deleted. The batch must enclose the transaction: ended inside it, the batch sees its own
    uncommitted rows and keeps the files (a leak, never a missing file). A process killed
    mid-import leaves its new files behind, unnamed by any row.
    """

    def __init__(self, *, project: Project):
        self.project = project
        self.storage = storages["default"]
        self._created: list[tuple[str, str]] = []  # (sha256, storage name) this batch made
        self._found: set[str] = set()  # sha256 whose files were in storage already
        self._images: dict[str, Image] = {}  # rows to write, by sha256

    def __enter__(self) -> "ImageBatch":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.discard()
            return
        try:
            self.discard()
        except Exception:
            # The caller hears of what failed first; the files stay, named by no row.
            logger.exception("could not delete the images of a failed import")

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._images

    def _put(self, sha256: str, name: str, content: bytes) -> bool:
        """Saves a file unless it is there; returns whether this batch created it."""
        if self.storage.exists(name):
            return False
        saved = self.storage.save(name, ContentFile(content))
        if saved != name:
            # Another writer stored the same bytes meanwhile and the backend kept both: theirs
            # is the one the name promises.
            self.storage.delete(saved)
            return False
        self._created.append((sha256, name))
        return True

    def store(self, data: bytes | IO[bytes], *, name: str) -> Image:
        """Verifies and stores one image (see image_verify); returns its row, not yet saved."""
        verified = image_verify(data, name=name)
        sha = verified.sha256
        if sha in self._images:
            return self._images[sha]
        fmt = verified.format
        file_name, thumb_name = storage_names(sha, fmt)
        made = self._put(sha, file_name, verified.content)
        if verified.thumbnail is None:
            thumb_name = file_name  # small enough to be its own thumbnail
        else:
            made = self._put(sha, thumb_name, verified.thumbnail) and made
        if not made:
            self._found.add(sha)  # write_rows checks it is still there
        image = Image(
            sha256=sha,
            format=fmt.name,
            width=verified.width,
            height=verified.height,
            size_bytes=len(verified.content),
            file=file_name,
            thumbnail=thumb_name,
        )
        self._images[sha] = image
        return image

    def write_rows(self) -> None:
        """Creates the batch's Image rows (once per hash) and links them to the project.

        Precondition: called inside the caller's transaction, the one that writes what names the
        images. Raises Conflict if a file found in storage earlier has since been deleted by a
        failed import (the transaction then rolls back; importing again stores it anew).
        """
        if not self._images:
            return
        _lock_buckets((_bucket(sha) for sha in self._images), shared=True)
        for sha in sorted(self._found):
            image = self._images[sha]
            if not all(self.storage.exists(n) for n in {image.file, image.thumbnail}):
                raise Conflict(
                    f"image sha256:{sha} was removed from storage while this import ran; "
                    "import again"
                )
        images = list(self._images.values())
        # ON CONFLICT DO NOTHING: a row another import holds (or commits meanwhile) is kept as it
        # is; the bytes, and so every field, are the same.
        Image.objects.bulk_create(images, ignore_conflicts=True, batch_size=1000)
        ProjectImage.objects.bulk_create(
            [ProjectImage(project=self.project, image_id=i.sha256) for i in images],
            ignore_conflicts=True,
            batch_size=1000,
        )

    def discard(self) -> None:
        """Deletes the files this batch created that no committed Image row names."""
        created, self._created = self._created, []
        if not created:
            return
        # The common end, a committed import: every row is there and nothing waits on a lock.
        named = _with_rows({sha for sha, _ in created})
        by_bucket: dict[int, list[tuple[str, str]]] = {}
        for sha, name in created:
            if sha not in named:
                by_bucket.setdefault(_bucket(sha), []).append((sha, name))
        for bucket, files in sorted(by_bucket.items()):
            with transaction.atomic():
                # Waits for batches still writing rows in this bucket, then looks again.
                _lock_buckets([bucket], shared=False)
                kept = _with_rows({sha for sha, _ in files})
                for sha, name in files:
                    if sha not in kept:
                        self.storage.delete(name)


def image_store(
    *, project: Project, data: bytes | IO[bytes], name: str, batch: ImageBatch | None = None
) -> Image:
    """Verifies, stores and links one image to the project; the same image is stored once.

    Raises InvalidInput (400) or TooLarge (413) naming `name`. With a `batch`, the rows are
    written by `batch.write_rows()` (see ImageBatch); without, here, in a transaction of its own.
    """
    if batch is not None:
        return batch.store(data, name=name)
    with ImageBatch(project=project) as own:
        image = own.store(data, name=name)
        with transaction.atomic():
            own.write_rows()
    return image


def image_upload(*, project: Project, data: bytes | IO[bytes], name: str) -> tuple[Image, bool]:
    """A manager's upload, stored and linked; returns the image and whether it is new to the
    project. Raises Conflict for an archived project, InvalidInput / TooLarge for the file."""
    project_ensure_writable(project=project)
    with ImageBatch(project=project) as batch:
        image = batch.store(data, name=name)
        known = ProjectImage.objects.filter(project=project, image_id=image.sha256).exists()
        with transaction.atomic():
            batch.write_rows()
    return image, not known


# --- resolving an import's references ------------------------------------------------------


def _not_linked(ref: str, project: Project) -> str:
    return (
        f"image: {ref} is not an image of this project (upload it first: "
        f"POST /api/v1/projects/{project.pk}/images)"
    )


def images_resolve(
    *,
    project: Project,
    refs: Iterable[tuple[int, str]],
    archive: ImportArchive | None = None,
    batch: ImageBatch,
) -> tuple[dict[str, str], list[dict]]:
    """Resolves an import's image references; stores the zip's images through `batch`.

    `refs` are (line number, the line's "image" value). A "sha256:<hex>" reference must name an
    image already linked to this project (or stored by this batch); any other value is a path
    inside `archive`, read, verified and stored once however many lines name it. Returns
    ({reference: "sha256:<hex>"}, [{"line", "message"}] sorted by line, one per line at fault).
    The caller writes the rows with `batch.write_rows()` (see ImageBatch).
    """
    if batch.project.pk != project.pk:
        raise ValueError("the batch belongs to another project")
    lines_of: dict[str, list[int]] = {}
    for line, ref in refs:
        lines_of.setdefault(ref, []).append(line)
    wanted = {sha for ref in lines_of if (sha := parse_ref(ref))}
    linked: set[str] = set()
    listed = sorted(wanted)
    for start in range(0, len(listed), 10_000):
        linked.update(
            ProjectImage.objects.filter(
                project=project, image_id__in=listed[start : start + 10_000]
            ).values_list("image_id", flat=True)
        )
    resolved: dict[str, str] = {}
    errors: list[dict] = []
    for ref, lines in lines_of.items():
        sha = parse_ref(ref)
        if sha is not None:
            message = None if sha in linked or sha in batch else _not_linked(ref, project)
            if message is None:
                resolved[ref] = ref
        elif ref.lower().startswith("sha256:"):
            message = (
                f"image: {_label(ref)} is not a reference (sha256: and 64 lowercase hex digits)"
            )
        elif archive is None:
            message = (
                f"image: {_label(ref)} is a path, but this import is not a zip archive (import a "
                "zip holding the image, or upload it first and name it as sha256:<hex>)"
            )
        else:
            try:
                image = batch.store(archive.read(ref), name=ref)
            except TandemError as exc:
                message = f"image: {exc.message}"
            else:
                message = None
                resolved[ref] = f"sha256:{image.sha256}"
        if message is not None:
            errors.extend({"line": line, "message": message} for line in lines)
    errors.sort(key=lambda e: e["line"])
    return resolved, errors
