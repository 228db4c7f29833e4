"""Plain values to the DICOM JSON Model (PS3.18 Annex F)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword


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


def dataset_json(attributes: Iterable[tuple[str, str, Any]]) -> dict[str, Any]:
    """(tag hex, VR, value) triples to a DICOM JSON object, sorted by tag as PS3.18 F.2 asks."""
    return {tag: element(vr, value) for tag, vr, value in sorted(attributes, key=lambda t: t[0])}


def keyword_tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def keyword_vr(keyword: str) -> str:
    return str(dictionary_VR(tag_for_keyword(keyword)))
