"""Object storage behind the archive: where instance bytes live.

The index only keeps opaque keys, so a backend can be local files (default),
an S3-compatible store, or a wrapper that encrypts (later issues) without the
archive changing. A backend's ``put_files`` is durable when it returns: that is
the moment the archive may acknowledge a store.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import crc32c

from sensecare.errors import NotFoundError, StorageError

logger = logging.getLogger(__name__)


class ObjectStorage(Protocol):
    """What the archive needs from a place that holds bytes."""

    def new_keys(self, tenant_id: str, count: int) -> list[str]:
        """Fresh, unique keys for ``count`` objects of this tenant stored together."""
        ...

    def put_files(self, items: Sequence[tuple[str, Path]]) -> None:
        """Take ownership of each local file and store it under its key, durably."""
        ...

    def open(self, key: str) -> BinaryIO:
        ...

    def delete(self, key: str) -> None:
        ...

    def iter_keys(self, modified_before: float | None = None) -> Iterator[str]:
        """Every key, or those last written before ``modified_before`` (epoch seconds)."""
        ...


class LocalFileStorage:
    """Files under one directory, fanned out so no directory grows huge.

    A file is written to the spool first (same filesystem), fsync'd, renamed into
    place and its directory fsync'd: a crash leaves either the whole object or none.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new_keys(self, tenant_id: str, count: int) -> list[str]:
        # One directory per batch: storing it costs one directory fsync, not one per object.
        batch = uuid.uuid4().hex
        return [f"{tenant_id}/{batch[:2]}/{batch[2:4]}/{uuid.uuid4().hex}.dcm" for _ in range(count)]

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"storage key escapes the store: {key!r}")
        return path

    def put_files(self, items: Sequence[tuple[str, Path]]) -> None:
        directories: set[Path] = set()
        try:
            # Concurrent fsyncs let the filesystem commit them together.
            list(_FSYNC_POOL.map(_fsync_file, [source for _key, source in items]))
            for key, source in items:
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

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def iter_keys(self, modified_before: float | None = None) -> Iterator[str]:
        for path in self.root.rglob("*.dcm"):
            if modified_before is not None:
                try:
                    if path.stat().st_mtime >= modified_before:
                        continue
                except FileNotFoundError:
                    continue
            yield path.relative_to(self.root).as_posix()


@dataclass(frozen=True)
class SpooledFile:
    """An upload written to the spool, with the size and digest taken while writing."""

    path: Path
    size: int
    #: ``crc32c:<8 hex digits>``: detects corruption and truncation of the stored bytes,
    #: as object stores' checksums do (tamper evidence is the encryption layer's job).
    checksum: str
    #: The first bytes (up to the writer's ``keep_head``), for parsing without a re-read.
    head: bytes = b""


class SpoolWriter:
    """One spool file being written; hashes as it goes so nothing is read twice."""

    def __init__(self, path: Path, keep_head: int = 0) -> None:
        self.path = path
        self._handle: BinaryIO = open(path, "wb")
        self._crc = crc32c.CRC32CHash()  # hardware CRC32C: ~20 GB/s, SHA-256 is ~2
        self._size = 0
        self._keep_head = keep_head
        self._head = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._crc.update(data)
        if len(self._head) < self._keep_head:
            self._head += data[: self._keep_head - len(self._head)]
        self._size += len(data)

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> SpooledFile:
        self._handle.close()
        return SpooledFile(self.path, self._size, f"crc32c:{self._crc.hexdigest()}", bytes(self._head))

    def discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


class Spool:
    """Scratch files for uploads in flight; nothing here was ever acknowledged."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def writer(self, keep_head: int = 0) -> SpoolWriter:
        return SpoolWriter(self.root / f"{uuid.uuid4().hex}.part", keep_head)

    def write_bytes(self, data: bytes) -> SpooledFile:
        return self.copy_from(io.BytesIO(data))

    def copy_from(self, source: BinaryIO) -> SpooledFile:
        writer = self.writer()
        try:
            while chunk := source.read(1024 * 1024):
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        return writer.close()

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def clear(self) -> int:
        """Remove leftovers of a crash; returns how many were removed."""
        count = 0
        for path in self.root.glob("*.part"):
            path.unlink(missing_ok=True)
            count += 1
        return count


_FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")


def _fsync_file(path: Path) -> None:
    # fdatasync flushes the data and what is needed to read it back (size, block map);
    # it skips timestamps, which durability does not need.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
