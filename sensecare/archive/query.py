"""QIDO-RS / C-FIND matching on the index (PS3.18 §10.6, PS3.4 C.2.2.2).

Query keys arrive as DICOM keywords or tags; each indexed attribute knows its
column and VR, and the VR decides the matching rule: single value, list of
UIDs, wildcard (``*``/``?``; case-insensitive for person names) or date range.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.orm import InstrumentedAttribute

from sensecare.archive.models import Instance, Series, Study
from sensecare.errors import InvalidRequestError


class Level(str, enum.Enum):
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: str  # 8 hex digits, upper case, as in the DICOM JSON model
    vr: str
    level: Level
    column: InstrumentedAttribute | None = None  # None: computed


def _attr(keyword: str, vr: str, level: Level, column=None) -> Attribute:  # type: ignore[no-untyped-def]
    return Attribute(keyword, f"{tag_for_keyword(keyword):08X}", vr, level, column)


S, E, I = Level.STUDY, Level.SERIES, Level.IMAGE
ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        _attr("StudyDate", "DA", S, Study.study_date),
        _attr("StudyTime", "TM", S, Study.study_time),
        _attr("AccessionNumber", "SH", S, Study.accession_number),
        _attr("ModalitiesInStudy", "CS", S),
        _attr("ReferringPhysicianName", "PN", S, Study.referring_physician_name),
        _attr("StudyDescription", "LO", S, Study.study_description),
        _attr("PatientName", "PN", S, Study.patient_name),
        _attr("PatientID", "LO", S, Study.patient_id),
        _attr("PatientBirthDate", "DA", S, Study.patient_birth_date),
        _attr("PatientSex", "CS", S, Study.patient_sex),
        _attr("StudyInstanceUID", "UI", S, Study.study_instance_uid),
        _attr("StudyID", "SH", S, Study.study_id),
        _attr("NumberOfStudyRelatedSeries", "IS", S),
        _attr("NumberOfStudyRelatedInstances", "IS", S),
        _attr("Modality", "CS", E, Series.modality),
        _attr("SeriesDescription", "LO", E, Series.series_description),
        _attr("SeriesNumber", "IS", E, Series.series_number),
        _attr("SeriesInstanceUID", "UI", E, Series.series_instance_uid),
        _attr("BodyPartExamined", "CS", E, Series.body_part_examined),
        _attr("SeriesDate", "DA", E, Series.series_date),
        _attr("NumberOfSeriesRelatedInstances", "IS", E),
        _attr("SOPClassUID", "UI", I, Instance.sop_class_uid),
        _attr("SOPInstanceUID", "UI", I, Instance.sop_instance_uid),
        _attr("InstanceNumber", "IS", I, Instance.instance_number),
        _attr("Rows", "US", I, Instance.rows),
        _attr("Columns", "US", I, Instance.columns),
        _attr("NumberOfFrames", "IS", I, Instance.number_of_frames),
        _attr("AvailableTransferSyntaxUID", "UI", I, Instance.transfer_syntax_uid),
    )
}
BY_TAG = {a.tag: a for a in ATTRIBUTES.values()}

#: Returned without being asked (PS3.18 Tables 10.6.3-3 to 10.6.3-5).
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
        "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
        "BodyPartExamined", "SeriesDate", "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
        "NumberOfFrames", "AvailableTransferSyntaxUID",
    ),
}

CONTROL_PARAMETERS = {"limit", "offset", "includefield", "fuzzymatching", "orderby"}
MAX_LIMIT = 10000


@dataclass
class Query:
    """A parsed QIDO-RS request or C-FIND identifier."""

    level: Level
    filters: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False

    def returned_keywords(self, levels: Sequence[Level]) -> list[str]:
        """Default attributes of the given levels plus the asked-for ones, in a stable order."""
        wanted: list[str] = []
        for level in levels:
            defaults = (
                [a.keyword for a in ATTRIBUTES.values() if a.level is level]
                if self.include_all
                else DEFAULT_RETURN[level]
            )
            wanted.extend(defaults)
        for keyword in sorted(self.include):
            if keyword not in wanted and keyword in ATTRIBUTES:
                wanted.append(keyword)
        for keyword in self.filters:
            if keyword not in wanted:
                wanted.append(keyword)
        return wanted


def resolve_keyword(key: str) -> str:
    """``PatientID``, ``00100020`` or ``0010,0020`` -> keyword; unknown keys are an error."""
    text = key.strip()
    hexdigits = text.replace(",", "")
    if len(hexdigits) == 8 and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
        keyword = keyword_for_tag(int(hexdigits, 16))
        if not keyword:
            raise InvalidRequestError(f"unknown attribute tag {key!r}")
        return keyword
    if tag_for_keyword(text) is None:
        raise InvalidRequestError(f"unknown attribute {key!r}")
    return text


def parse_query(level: Level, params: Sequence[tuple[str, str]]) -> Query:
    """Build a :class:`Query` from the request's query parameters (repeats allowed)."""
    query = Query(level=level)
    for key, value in params:
        if key == "limit":
            query.limit = _nonnegative(key, value)
            if query.limit > MAX_LIMIT:
                query.limit = MAX_LIMIT
        elif key == "offset":
            query.offset = _nonnegative(key, value)
        elif key == "fuzzymatching":
            if value.lower() not in {"true", "false"}:
                raise InvalidRequestError("fuzzymatching must be true or false")
            query.fuzzy = value.lower() == "true"
        elif key == "includefield":
            for item in value.split(","):
                if not item.strip():
                    continue
                if item.strip() == "all":
                    query.include_all = True
                else:
                    query.include.add(resolve_keyword(item))
        elif key == "orderby":
            continue  # optional in PS3.18; results are ordered by arrival
        else:
            keyword = resolve_keyword(key)
            if keyword not in ATTRIBUTES:
                # Matching on attributes we do not index is optional (PS3.18 §8.3.4.1);
                # refusing is clearer than silently returning everything.
                raise InvalidRequestError(f"matching on {keyword} is not supported")
            if value != "":
                query.filters[keyword] = value
    return query


def _nonnegative(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequestError(f"{key} must be an integer, not {value!r}") from None
    if number < 0:
        raise InvalidRequestError(f"{key} must not be negative")
    return number


def conditions(query: Query) -> list[ColumnElement[bool]]:
    """SQL conditions for the query's matching keys (the caller joins the tables)."""
    clauses: list[ColumnElement[bool]] = []
    for keyword, value in query.filters.items():
        attribute = ATTRIBUTES[keyword]
        if keyword == "ModalitiesInStudy":
            modalities = _split_list(value)
            clauses.append(
                exists(
                    select(Series.id).where(
                        Series.study_pk == Study.id, Series.modality.in_(modalities)
                    )
                )
            )
            continue
        if attribute.column is None:
            raise InvalidRequestError(f"matching on {keyword} is not supported")
        clauses.append(_match(attribute, value))
    return clauses


def _match(attribute: Attribute, value: str) -> ColumnElement[bool]:
    column = attribute.column
    assert column is not None
    if attribute.keyword == "PatientName" or attribute.vr == "PN":
        if attribute.keyword == "PatientName":
            column = Study.patient_name_search
            value = normalize_name(value)
        return _wildcard_or_equal(column, value)
    if attribute.vr == "UI":
        uids = _split_list(value)
        return column.in_(uids) if len(uids) > 1 else column == uids[0]
    if attribute.vr in {"DA", "TM"} and "-" in value:
        low, _, high = value.partition("-")
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high + ("235959.999999" if attribute.vr == "TM" else ""))
        if not parts:
            raise InvalidRequestError(f"empty range for {attribute.keyword}")
        return and_(*parts)
    if attribute.vr in {"IS", "US"}:
        try:
            return column == int(value)
        except ValueError:
            raise InvalidRequestError(f"{attribute.keyword} must be a number") from None
    if attribute.vr == "CS" and ("\\" in value or "," in value):
        return column.in_(_split_list(value))
    return _wildcard_or_equal(column, value)


def _wildcard_or_equal(column, value: str) -> ColumnElement[bool]:  # type: ignore[no-untyped-def]
    if "*" in value or "?" in value:
        if value.strip("*") == "":
            return column.is_not(None) | column.is_(None)  # universal match
        pattern = (
            value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            .replace("*", "%").replace("?", "_")
        )
        return column.like(pattern, escape="\\")
    return column == value


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]


def normalize_name(name: str | None) -> str | None:
    """Case-folded person name used for case-insensitive matching (PS3.18 §8.3.4.6)."""
    if name is None:
        return None
    return name.strip().upper()
