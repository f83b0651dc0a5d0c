"""Images and zip archives for tests, drawn and built here (nothing is downloaded)."""

import io
import random
import struct
import zipfile
import zlib

import pytest
from PIL import Image, ImageDraw


@pytest.fixture
def media(settings, tmp_path):
    """Each test stores images under a media root of its own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def drawn(size=(64, 48), *, fmt="PNG", color=(200, 30, 30), mode="RGB", seed=0, **save) -> bytes:
    """A small picture: a coloured rectangle and a circle on white, distinct per `seed`."""
    img = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle([w // 8, h // 8, w // 2, h // 2], fill=color)
    draw.ellipse([w // 2, h // 3, w - 2, h - 2 - seed % max(1, h // 4)], fill=(20, 90, 200))
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def noise(size=(64, 64), *, fmt="PNG", seed=7) -> bytes:
    """Random pixels: an image that does not compress."""
    pixels = random.Random(seed).randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, format=fmt)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int, height: int, *, real: bool = True) -> bytes:
    """A grayscale PNG of `width`×`height` zeros: a few KB that decode to width*height bytes.

    With `real`, the pixel data is there (compressed row by row, never held whole); otherwise
    the header alone declares the size.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b""
    if real:
        packer = zlib.compressobj(9)
        row = b"\x00" * (width + 1)  # filter byte + one byte a pixel
        parts = [packer.compress(row) for _ in range(height)]
        data = b"".join(parts) + packer.flush()
    else:
        data = zlib.compress(b"\x00" * (width + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def make_zip(path, entries: dict, *, compression=zipfile.ZIP_DEFLATED) -> None:
    """A zip of {name or ZipInfo: bytes}, names written exactly as given."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name)
            info.compress_type = compression
            archive.writestr(info, data)


def declare_size(path, name: str, declared: int) -> None:
    """Rewrites the uncompressed size an entry declares, in its local header and in the
    central directory alike (a zip that lies about its sizes)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    struct.pack_into("<I", raw, info.header_offset + 22, declared)
    encoded = name.encode()
    at = 0
    while (at := raw.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if bytes(raw[at + 46 : at + 46 + name_len]) == encoded:
            struct.pack_into("<I", raw, at + 24, declared)
            break
        at += 4
    path.write_bytes(bytes(raw))
