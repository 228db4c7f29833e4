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


@dataclass(frozen=True)
class FoundFiles:
    """The Part 10 files under a folder, and how many other files were passed over."""

    dicom: list[Path]
    skipped: int


def find_dicom_files(root: Path) -> FoundFiles:
    if not root.exists():
        raise NotFoundError(f"{root} does not exist")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    dicom = [p for p in paths if is_part10(p)]
    return FoundFiles(dicom, len(paths) - len(dicom))


def load_files(
    archive: Archive,
    tenant_id: str,
    found: FoundFiles,
    progress: Callable[[int], None] | None = None,
) -> LoadSummary:
    """Store the found files; already-stored instances are left as they are."""
    summary = LoadSummary(skipped=found.skipped)
    files = found.dicom
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
