"""Downloads of a round's published models: one deterministic, cached .tar.gz per artifact.

A write (the cache file), so a service; which artifact a user may download is the selectors'
(annotation.selectors.rounds.model_artifact).
"""

import gzip
import hashlib
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

from ..models import ModelVersion

_ARCHIVES = ".downloads"


def model_archive(*, version: ModelVersion, artifact: Path) -> tuple[Path, str]:
    """The .tar.gz of a published artifact and its ETag, built once into a cache file.

    The archive is deterministic (sorted entries, owners and the gzip timestamp zeroed) and the
    artifact is immutable, so every request serves the same bytes: a cut-short download resumes
    with a Range request. The cache lives in the project's artifact folder under `.downloads/`;
    archive and ETag are written to temporary names and renamed into place, ETag first, so a
    reader finds either both complete or no archive (and builds it again).
    """
    cache = artifact.parent / _ARCHIVES
    archive = cache / f"{artifact.name}.tar.gz"
    etag_file = cache / f"{artifact.name}.etag"
    if archive.is_file() and etag_file.is_file():
        return archive, etag_file.read_text().strip()
    cache.mkdir(exist_ok=True)
    token = uuid.uuid4().hex
    temp = cache / f".tmp-{artifact.name}-{token}.tar.gz"
    digest = hashlib.sha256()
    try:
        with open(temp, "wb") as raw:
            hashing = _HashingWriter(raw, digest)
            with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, compresslevel=1) as zipped:
                with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for path in _artifact_entries(artifact):
                        tar.add(
                            path,
                            arcname=f"{artifact.name}/{path.relative_to(artifact)}",
                            recursive=False,
                            filter=_anonymous,
                        )
            raw.flush()
            os.fsync(raw.fileno())
        etag = f'"{digest.hexdigest()[:32]}"'
        etag_temp = cache / f".tmp-{artifact.name}-{token}.etag"
        etag_temp.write_text(etag)
        os.replace(etag_temp, etag_file)
        os.replace(temp, archive)
    finally:
        for leftover in cache.glob(f".tmp-{artifact.name}-{token}.*"):
            leftover.unlink(missing_ok=True)
    return archive, etag


class _HashingWriter:
    def __init__(self, raw: Any, digest: Any) -> None:
        self.raw, self.digest = raw, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _artifact_entries(artifact: Path) -> list[Path]:
    """Directories and regular files of the artifact, sorted; symlinks are left out."""
    entries = []
    for directory, subdirs, files in os.walk(artifact, followlinks=False):
        base = Path(directory)
        subdirs[:] = [d for d in subdirs if not (base / d).is_symlink()]
        entries += [base / d for d in subdirs]
        entries += [base / f for f in files if (base / f).is_file() and not (base / f).is_symlink()]
    return sorted(entries)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    return info
