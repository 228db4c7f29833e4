"""Bulk import of DICOM files from a folder (demo data, migrations from a file share)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensecare.archive.service import Archive, StoreStatus
from sensecare.errors import NotFoundError

BATCH = 32


@dataclass
class LoadSummary:
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    skipped: int = 0  # files that are not DICOM Part 10 at all


def is_part10(path: Path) -> bool:
    """The 'DICM' prefix after the 128-byte preamble (PS3.10 §7.1)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _files(root: Path) -> list[Path]:
    if not root.exists():
        raise NotFoundError(f"{root} does not exist")
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


def count_dicom_files(root: Path) -> int:
    return sum(is_part10(p) for p in _files(root))


def load_directory(
    archive: Archive,
    tenant_id: str,
    root: Path,
    progress: Callable[[int], None] | None = None,
) -> LoadSummary:
    """Store every Part 10 file under ``root``; already-stored instances are left as they are."""
    summary = LoadSummary()
    all_files = _files(root)
    files = [p for p in all_files if is_part10(p)]
    summary.skipped = len(all_files) - len(files)
    for start in range(0, len(files), BATCH):
        batch = files[start : start + BATCH]
        spooled = []
        for path in batch:
            with open(path, "rb") as source:
                spooled.append(archive.spool.copy_from(source))
        for outcome in archive.store_instances(tenant_id, spooled, received_via="import"):
            if outcome.status is StoreStatus.STORED:
                summary.stored += 1
            elif outcome.status is StoreStatus.DUPLICATE:
                summary.duplicates += 1
            else:
                summary.failed += 1
        if progress:
            progress(len(batch))
    return summary
