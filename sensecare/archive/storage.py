"""Object storage behind the archive: where instance bytes live.

The index only keeps opaque keys, so a backend can be local files (default),
an S3-compatible store, or a wrapper that encrypts (later issues) without the
archive changing. A backend's ``put_files`` is durable when it returns: that is
the moment the archive may acknowledge a store.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from sensecare.errors import NotFoundError, StorageError

logger = logging.getLogger(__name__)


class ObjectStorage(Protocol):
    """What the archive needs from a place that holds bytes."""

    def new_key(self, tenant_id: str) -> str:
        """A fresh, unique key for an object of this tenant."""
        ...

    def put_files(self, items: Sequence[tuple[str, Path]]) -> None:
        """Take ownership of each local file and store it under its key, durably."""
        ...

    def open(self, key: str) -> BinaryIO:
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for zero-copy reads, when the backend has one."""
        ...

    def delete(self, key: str) -> None:
        ...

    def iter_keys(self) -> Iterator[str]:
        ...


class LocalFileStorage:
    """Files under one directory, fanned out so no directory grows huge.

    A file is written to the spool first (same filesystem), fsync'd, renamed into
    place and its directory fsync'd: a crash leaves either the whole object or none.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new_key(self, tenant_id: str) -> str:
        name = uuid.uuid4().hex
        return f"{tenant_id}/{name[:2]}/{name[2:4]}/{name}.dcm"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"storage key escapes the store: {key!r}")
        return path

    def put_files(self, items: Sequence[tuple[str, Path]]) -> None:
        directories: set[Path] = set()
        try:
            for key, source in items:
                _fsync_file(source)
                target = self._path(key)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                directories.add(target.parent)
            for directory in directories:
                _fsync_dir(directory)
        except OSError as exc:
            raise StorageError(f"could not store object: {exc}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"stored object {key!r} is missing") from exc

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def iter_keys(self) -> Iterator[str]:
        for path in self.root.rglob("*.dcm"):
            yield path.relative_to(self.root).as_posix()


class Spool:
    """Scratch files for uploads in flight; nothing here was ever acknowledged."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new_file(self) -> tuple[Path, BinaryIO]:
        path = self.root / f"{uuid.uuid4().hex}.part"
        return path, open(path, "wb")

    def discard(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def clear(self) -> int:
        """Remove leftovers of a crash; returns how many were removed."""
        count = 0
        for path in self.root.glob("*.part"):
            path.unlink(missing_ok=True)
            count += 1
        return count


def copy_to_spool(spool: Spool, source: BinaryIO) -> Path:
    path, handle = spool.new_file()
    with handle:
        shutil.copyfileobj(source, handle, 1024 * 1024)
    return path


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
