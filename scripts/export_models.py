#!/usr/bin/env python
"""Export every model bundle's network to TorchScript (``models/<bundle>/models/model.ts``).

The analysis loads the TorchScript copy so that it never imports MONAI (about
two seconds of every analysis process); the copy is stamped with the digest of
the weights and configuration it came from, and a stale one is ignored with a
warning. The training scripts export after saving new weights; run this after
editing a bundle's ``configs/inference.json`` by hand::

    .venv/bin/python scripts/export_models.py
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    from sensecare.analysis.bundle import export_torchscript, network_overrides

    for bundle in sorted(p for p in (REPO / "models").iterdir() if (p / "models" / "model.pt").exists()):
        out = export_torchscript(bundle, network_overrides(bundle))
        print(f"{bundle.name}: wrote {out.relative_to(REPO)} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
