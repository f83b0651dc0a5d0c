"""Zip imports: one JSONL file at the archive's root, the images it names beside it.

The archive is untrusted. Before anything is read from it every entry is checked: a name must be
a plain relative path (no absolute path, drive letter, backslash, `..`, control character), no
entry may be a symlink, encrypted or named twice, and the entry count, the total uncompressed
size and each large entry's compression ratio must stay under their caps (zip bombs). Declared
sizes can lie, so the bytes actually decompressed are counted again as they are read, against the
entry's declared size and the archive's total. Reads stream from the file on disk: the archive is
never held in memory, and an image entry is read whole only up to the image size cap.
"""

import os
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from django.conf import settings

from ..errors import InvalidInput, TooLarge

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
# One JSONL line may hold a long conversation and its responses, never this much.
MAX_LINE_BYTES = 16 * 1024 * 1024
# Entries smaller than this are not held to the ratio cap: a short, repetitive JSONL or a blank
# PNG compresses far better than any photo, and the total cap bounds them anyway.
_RATIO_FLOOR_BYTES = 1024 * 1024
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"line": 0, "message": message}])


def is_zip(source: str | os.PathLike | bytes) -> bool:
    """Whether a file (a path) or the first bytes of an upload start like a zip archive.

    By magic bytes only: a name ending in .zip proves nothing, and a JSONL file never starts "PK".
    """
    if isinstance(source, bytes | bytearray):
        head = bytes(source[:4])
    else:
        with open(source, "rb") as f:
            head = f.read(4)
    return head in ZIP_MAGIC


def entry_name_problem(name: str) -> str | None:
    """Why an entry name is unsafe to honour, or None for a plain relative path."""
    if not name:
        return "has an empty name"
    if _CONTROL.search(name):
        return "has a control character in its name"
    if "\\" in name:
        return "has a backslash in its name (zip names use /)"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "names a drive"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the archive with '..'"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # Unix zip tools keep the file mode in the high 16 bits of the external attributes.
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


class ImportArchive:
    """An uploaded zip on disk, checked whole on open; raises InvalidInput / TooLarge naming the
    entry at fault. Use as a context manager (or call close()).

    `jsonl_lines()` streams the lines of the one .jsonl file at the root; `read(path)` returns an
    image entry's bytes. Lines name images by their path relative to the root ("img/cat.png",
    "./img/cat.png"); `has(path)` tells whether such an entry exists.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        max_ratio: int | None = None,
    ):
        self.max_entries = max_entries or settings.TANDEM_IMPORT_ZIP_MAX_ENTRIES
        self.max_bytes = max_bytes or settings.TANDEM_IMPORT_ZIP_MAX_BYTES
        self.max_ratio = max_ratio or settings.TANDEM_IMPORT_ZIP_MAX_RATIO
        self.path = Path(path)
        self._read_total = 0  # bytes actually decompressed so far, against max_bytes
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise _refuse(f"the upload is not a readable zip archive ({exc})") from None
        try:
            self._entries = self._check(self._zip.infolist())
        except BaseException:
            self._zip.close()
            raise

    def _check(self, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
        if len(infos) > self.max_entries:
            raise TooLarge(
                f"the archive holds {len(infos)} entries; the limit is {self.max_entries}"
            )
        entries: dict[str, zipfile.ZipInfo] = {}
        declared = 0
        for info in infos:
            name = info.filename
            problem = entry_name_problem(name)
            if problem:
                raise _refuse(f"archive entry {name!r} {problem}")
            if _is_symlink(info):
                raise _refuse(f"archive entry {name!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise _refuse(f"archive entry {name!r} is encrypted")
            if info.is_dir():
                continue
            key = str(PurePosixPath(name))
            if key in entries:
                raise _refuse(f"archive entry {name!r} appears twice")
            declared += info.file_size
            if declared > self.max_bytes:
                raise TooLarge(
                    f"the archive unpacks to more than {self.max_bytes} bytes "
                    f"(at entry {name!r}); the limit is {self.max_bytes} bytes"
                )
            if info.file_size > _RATIO_FLOOR_BYTES and (
                info.compress_size == 0 or info.file_size / info.compress_size > self.max_ratio
            ):
                raise TooLarge(
                    f"archive entry {name!r} unpacks {info.file_size} bytes from "
                    f"{info.compress_size}: compressed more than {self.max_ratio}:1 (a zip bomb?)"
                )
            entries[key] = info
        return entries

    # --- reading ---------------------------------------------------------------------------

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "ImportArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def jsonl_name(self) -> str:
        """The one .jsonl file at the archive's root; anything else is a 400 saying what to do."""
        found = sorted(n for n in self._entries if "/" not in n and n.lower().endswith(".jsonl"))
        if not found:
            raise _refuse("the archive holds no .jsonl file at its root")
        if len(found) > 1:
            raise _refuse(
                f"the archive holds {len(found)} .jsonl files at its root ({', '.join(found)}); "
                "put one, so that line numbers name one file"
            )
        return found[0]

    def _counted(self, info: zipfile.ZipInfo, size: int, entry_total: int) -> None:
        """Counts `size` more bytes read from an entry (`entry_total` so far) against its declared
        size and the archive's total."""
        self._read_total += size
        if self._read_total > self.max_bytes:
            raise TooLarge(
                f"the archive unpacks to more than {self.max_bytes} bytes (at entry "
                f"{info.filename!r}); the limit is {self.max_bytes} bytes"
            )
        if entry_total > info.file_size:
            raise _refuse(f"archive entry {info.filename!r} holds more than the size it declares")

    def jsonl_lines(self) -> Iterator[bytes]:
        """The root JSONL file's lines (each with its newline), streamed from disk."""
        info = self._entries[self.jsonl_name()]
        try:
            with self._zip.open(info) as stream:
                read = 0
                while True:
                    line = stream.readline(MAX_LINE_BYTES + 1)
                    if not line:
                        return
                    read += len(line)
                    self._counted(info, len(line), read)
                    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                        raise _refuse(
                            f"archive entry {info.filename!r} has a line longer than "
                            f"{MAX_LINE_BYTES} bytes"
                        )
                    yield line
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise self._damaged(info, exc) from None

    def has(self, path: str) -> bool:
        return self._key(path) in self._entries

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes of the entry at `path` (an image), refused past `max_bytes`
        (default TANDEM_IMAGE_MAX_BYTES)."""
        cap = max_bytes or settings.TANDEM_IMAGE_MAX_BYTES
        key = self._key(path)
        info = self._entries.get(key) if key else None
        if info is None:
            raise _refuse(f"{path!r} is not in the archive")
        if info.file_size > cap:
            raise TooLarge(f"{path!r} is {info.file_size} bytes; the limit is {cap} bytes")
        parts = []
        read = 0
        try:
            with self._zip.open(info) as stream:
                while chunk := stream.read(_CHUNK):
                    parts.append(chunk)
                    read += len(chunk)
                    self._counted(info, len(chunk), read)
                    if read > cap:
                        raise TooLarge(f"{path!r} is over the limit of {cap} bytes")
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise self._damaged(info, exc) from None
        return b"".join(parts)

    @staticmethod
    def _key(path: str) -> str | None:
        """An entry key for a path as a line wrote it, or None when it could never name one."""
        if not isinstance(path, str) or entry_name_problem(path):
            return None
        key = str(PurePosixPath(path))
        return None if key in (".", "") else key

    @staticmethod
    def _damaged(info: zipfile.ZipInfo, exc: BaseException) -> InvalidInput:
        # zipfile stops at the declared size, so an entry that holds more than it declares fails
        # its CRC check here: the same refusal as any other damage.
        return _refuse(
            f"archive entry {info.filename!r} is damaged or does not match its declared size ({exc})"
        )
