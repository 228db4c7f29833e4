"""Plain values to the DICOM JSON Model (PS3.18 Annex F)."""

from __future__ import annotations

from typing import Any



def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute object; ``None`` or empty gives a present-but-empty attribute."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, (list, tuple)) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in values]}
    if vr in {"IS", "US", "UL", "SS", "SL"}:
        return {"vr": vr, "Value": [int(v) for v in values]}
    if vr in {"DS", "FL", "FD"}:
        return {"vr": vr, "Value": [float(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}
