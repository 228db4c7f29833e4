"""Finding dcmtk's command line tools (the real DICOM peers of the tests)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest


@functools.cache
def dcmtk(tool: str) -> str | None:
    """The dcmtk executable ``tool``, skipping pynetdicom's same-named Python apps.

    pynetdicom installs ``echoscu``/``storescu``/``findscu`` scripts with other
    options into the virtual environment, which may come first on ``PATH``.
    """
    directories = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for directory in directories:
        candidate = shutil.which(tool, path=directory) if directory else None
        if candidate is None:
            continue
        try:
            probe = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in (probe.stdout + probe.stderr).lower():
            return candidate
    return None


DCMTK_MISSING = "dcmtk command line tools (echoscu/storescu/findscu) not installed " \
    "(apt-get install dcmtk)"
needs_dcmtk = pytest.mark.skipif(
    any(dcmtk(tool) is None for tool in ("echoscu", "storescu", "findscu")),
    reason=DCMTK_MISSING,
)
