"""QIDO / C-FIND query parsing: keys, control parameters and their errors."""

from __future__ import annotations

import pytest

from sensecare.archive.query import Level, parse_query, resolve_keyword
from sensecare.errors import InvalidRequestError


def test_keys_by_keyword_or_tag() -> None:
    assert resolve_keyword("PatientID") == "PatientID"
    assert resolve_keyword("00100020") == "PatientID"
    assert resolve_keyword("0010,0020") == "PatientID"


@pytest.mark.parametrize(
    "params",
    [[("limit", "-1")], [("offset", "x")], [("fuzzymatching", "maybe")], [("Bogus", "1")], [("99999999", "1")],
     [("PixelData", "1")]],
)
def test_bad_parameters_are_invalid_requests(params) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequestError):
        parse_query(Level.STUDY, params)


def test_control_parameters() -> None:
    query = parse_query(
        Level.STUDY,
        [("limit", "5"), ("offset", "10"), ("includefield", "PatientSex,00081030"), ("fuzzymatching", "false"),
         ("PatientName", "doe*"), ("StudyDate", "")],
    )
    assert (query.limit, query.offset, query.fuzzy) == (5, 10, False)
    assert query.include == {"PatientSex", "StudyDescription"}
    assert query.filters == {"PatientName": "doe*"}  # an empty value is a return key, not a filter
    assert "PatientSex" in query.returned_keywords([Level.STUDY])
    assert parse_query(Level.STUDY, [("limit", "999999")]).limit == 10000
