"""Copies of real instances under fresh UIDs: test studies and benchmark rounds.

Every SOP Instance UID is new and series and studies are remapped consistently,
so the copy is a first store for any archive while pixel data stay untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid


def restamp_files(
    sources: Sequence[Path],
    out_dir: Path,
    *,
    study_uid: str | None = None,
    series_key: Callable[[int, pydicom.Dataset], object] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write copies of ``sources`` into ``out_dir`` and return their paths, in order.

    Parameters
    ----------
    study_uid
        Study Instance UID for all copies; a new one when omitted.
    series_key
        Maps (index, dataset) to a key; copies with equal keys share a new Series
        Instance UID. Default: the original SeriesInstanceUID.
    overrides
        Attribute keyword -> value set on every copy (e.g. PatientName).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uids: dict[object, str] = {}
    series_numbers: dict[object, int] = {}
    written = []
    for index, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        key = series_key(index, ds) if series_key else ds.SeriesInstanceUID
        if key not in series_uids:
            series_uids[key] = generate_uid()
            series_numbers[key] = len(series_numbers) + 1
        sop_uid = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids[key]
        ds.SeriesNumber = series_numbers[key]
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        for keyword, value in (overrides or {}).items():
            setattr(ds, keyword, value)
        target = out_dir / f"{index:05d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written
