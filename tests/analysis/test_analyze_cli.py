"""``sensecare analyze`` refuses what is not a usable chest CT with one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.synthetic_ct import make_ct_series, write_series


def _analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensecare.cli", "analyze", *args], capture_output=True, text=True, timeout=300
    )


def _series(tmp_path: Path, **kw) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "series"
    datasets = make_ct_series(rows=48, cols=48, **kw)
    return folder if write_series(datasets, folder) else folder


def _missing_slices(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    datasets = sorted(make_ct_series(n_slices=30, rows=48, cols=48, shuffle=False), key=lambda d: d.InstanceNumber)
    write_series(datasets[:12] + datasets[16:], folder)
    return folder


def _localizer(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    datasets = make_ct_series(n_slices=12, rows=48, cols=48)
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    write_series(datasets, folder)
    return folder


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: _series(tmp, n_slices=4), "slice"),
        (lambda tmp: _series(tmp, n_slices=20, modality="MR"), "not CT"),
        (_missing_slices, "gap"),
        (_localizer, "localizer"),
        (lambda tmp: _series(tmp, n_slices=24), "lung"),  # CT, but noise: no lungs in it
    ],
    ids=["too-few-slices", "not-ct", "missing-slices", "localizer", "not-a-chest"],
)
def test_unusable_series_give_one_line(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = make(tmp_path)
    result = _analyze(str(folder), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message.lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / "out" / "report.json").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _analyze(str(empty), "--out", str(tmp_path / "o")).returncode == 2
    assert _analyze(str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")).returncode == 2
    series = _series(tmp_path, n_slices=12)
    bad_device = _analyze(str(series), "--out", str(tmp_path / "o"), "--device", "tpu")
    assert bad_device.returncode == 2 and "unknown device" in bad_device.stderr
