"""DIMSE service class provider: Verification, Storage and Query over the archive.

One pynetdicom Application Entity serves

* the Verification Service Class (C-ECHO, PS3.4 Annex A),
* the Storage Service Class as SCP for every storage SOP Class pynetdicom knows,
  in every transfer syntax it knows (C-STORE, PS3.4 Annex B), and
* the Query/Retrieve Service Class FIND for the Patient Root and Study Root
  information models (C-FIND, PS3.4 Annex C).

The handlers are thin: a C-STORE data set is written to the spool exactly as it
arrived (no decoding, no re-encoding) and handed to
:meth:`~sensecare.archive.service.Archive.store_instances`; a C-FIND identifier
becomes the same :class:`~sensecare.archive.query.Query` QIDO-RS uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.filereader import read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from sensecare.archive.audit import AuditLog, AuditRecord
from sensecare.archive.ingest import FailureReason
from sensecare.archive.query import ATTRIBUTES, Level, parse_query
from sensecare.archive.service import Archive, StoreStatus
from sensecare.errors import InvalidRequestError

logger = logging.getLogger(__name__)

__all__ = ["DimseServer", "TenantResolver"]

#: Maps the calling AE title of an association to the tenant it acts for.
TenantResolver = Callable[[str], str]

# --- statuses (PS3.7 Annex C, PS3.4 B.2.3 and C.4.1.1.4) ----------------------
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # C-FIND: Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # C-FIND: Unable to process (0xCxxx)

STUDY_ROOT_FIND = str(StudyRootQueryRetrieveInformationModelFind)
PATIENT_ROOT_FIND = str(PatientRootQueryRetrieveInformationModelFind)

#: Query/Retrieve levels each information model allows (PS3.4 C.6.1, C.6.2).
_MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
}
_LEVEL_ORDER = {Level.STUDY: 0, Level.SERIES: 1, Level.IMAGE: 2}

#: Patient level keys (PS3.4 Table C.6-1) and the counts we compute for it.
_PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_PATIENT_COUNTS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)
#: Optional keys that are only ever returned, never matched (PS3.4 C.3.4).
_RETURN_ONLY = {
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
    *_PATIENT_COUNTS,
}
#: Unique keys of each level and the levels above it, always returned.
_UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
#: Elements of the identifier the SCP sets itself.
_SCP_SET = {
    0x00080005,  # SpecificCharacterSet
    0x00080052,  # QueryRetrieveLevel
    0x00080054,  # RetrieveAETitle
    0x00080056,  # InstanceAvailability
}
_SOP_INSTANCE_UID = 0x00080018
_MAX_COMMENT = 64  # ErrorComment is LO


class _FindFailure(Exception):
    """A C-FIND request we answer with a failure status."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class _Key:
    """One attribute to return: ``keyword`` is empty for attributes we do not index."""

    tag: int
    keyword: str
    vr: str


@dataclass
class _FindRequest:
    """A C-FIND identifier turned into matching keys and return keys."""

    level: str
    matching: list[tuple[str, str]] = field(default_factory=list)
    returned: list[_Key] = field(default_factory=list)
    charset: str | list[str] | None = None
    instance_availability: bool = False

    def describe(self) -> str:
        return "&".join(f"{k}={v}" for k, v in self.matching)[:1024]


class DimseServer:
    """A DICOM Application Entity serving C-ECHO, C-STORE and C-FIND.

    Parameters
    ----------
    archive : Archive
        Where instances are stored and searched.
    audit : AuditLog
        Receives one record per C-FIND.
    ae_title : str
        Our AE title (``"SENSECARE"``); peers may call us by any title.
    host, port : str, int
        Where to listen; port ``0`` picks a free one (read :attr:`port` after
        :meth:`start`).
    tenant_for_ae : callable, optional
        Calling AE title -> tenant id; by default every peer acts for ``"default"``.
    maximum_pdu_size : int
        The largest P-DATA-TF PDU we accept (0: no limit).
    maximum_associations : int
        Concurrent associations; more are rejected (transient).
    acse_timeout, dimse_timeout, network_timeout : float
        Seconds to wait for association negotiation, for a DIMSE message within
        an association, and on an idle association before it is aborted.
    """

    def __init__(
        self,
        archive: Archive,
        audit: AuditLog,
        *,
        ae_title: str = "SENSECARE",
        host: str = "127.0.0.1",
        port: int = 11112,
        tenant_for_ae: TenantResolver | None = None,
        maximum_pdu_size: int = 262_144,
        maximum_associations: int = 16,
        acse_timeout: float = 30,
        dimse_timeout: float = 60,
        network_timeout: float = 120,
    ) -> None:
        self.archive = archive
        self.audit = audit
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.tenant_for_ae: TenantResolver = tenant_for_ae or (lambda ae: "default")
        self.ready = False
        self._server: ThreadedAssociationServer | None = None

        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = maximum_pdu_size
        ae.maximum_associations = maximum_associations
        ae.acse_timeout = acse_timeout
        ae.dimse_timeout = dimse_timeout
        ae.network_timeout = network_timeout
        ae.require_called_aet = False  # answer to any called AE title
        ae.require_calling_aet = []  # and accept any calling AE title
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES[:4])
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        self.ae = ae

    # ------------------------------------------------------------ lifecycle

    @property
    def maximum_pdu_size(self) -> int:
        return int(self.ae.maximum_pdu_size)

    @maximum_pdu_size.setter
    def maximum_pdu_size(self, value: int) -> None:
        self.ae.maximum_pdu_size = value

    def start(self) -> None:
        """Listen in background threads; returns once the socket is bound."""
        if self._server is not None:
            return
        handlers = [
            (evt.EVT_C_ECHO, self.handle_c_echo),
            (evt.EVT_C_STORE, self.handle_c_store),
            (evt.EVT_C_FIND, self.handle_c_find),
        ]
        self._server = self.ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers
        )
        self.port = int(self._server.server_address[1])
        self.ready = True
        logger.info("DIMSE SCP %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        """Stop listening and end the associations in progress."""
        self.ready = False
        if self._server is None:
            return
        self._server = None
        self.ae.shutdown()  # aborts the associations in progress, then closes the socket
        logger.info("DIMSE SCP %s stopped", self.ae_title)

    def __enter__(self) -> DimseServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ C-ECHO

    def handle_c_echo(self, event: Event) -> int:
        """Verification (PS3.4 A.4): always success."""
        return SUCCESS

    # ------------------------------------------------------------ C-STORE

    def handle_c_store(self, event: Event) -> Dataset:
        """Store one instance (PS3.4 B.2.2); success only once it is durable.

        The data set is spooled as received, with the File Meta Information
        pynetdicom builds from the request and presentation context, and is not
        decoded here beyond the SOP Class and Instance UIDs, which must match
        the request's Affected SOP Class/Instance UID. A re-sent instance is a
        success that changes nothing. Failure statuses are those of PS3.4 B.2.3:
        0xA700 out of resources, 0xA900 data set does not match SOP Class,
        0xC000 cannot understand, 0x0110 processing failure.
        """
        request = event.request
        affected_class = str(request.AffectedSOPClassUID or "")
        affected_instance = str(request.AffectedSOPInstanceUID or "")
        calling_ae = _calling_ae(event)
        path = None
        try:
            tenant = self.tenant_for_ae(calling_ae)
            encoded = event.encoded_dataset(include_meta=True)
            problem = _check_identity(encoded, affected_class, affected_instance)
            if problem is not None:
                logger.warning("C-STORE from %s rejected: %s", calling_ae, problem[1])
                return _status(*problem)
            try:
                spooled = self.archive.spool.write_bytes(encoded)
            except OSError as exc:
                logger.error("C-STORE from %s: cannot spool the data set: %s", calling_ae, exc)
                return _status(OUT_OF_RESOURCES, "cannot spool the data set")
            del encoded
            path = spooled.path
            outcomes = self.archive.store_instances(tenant, [spooled], received_via="dimse")
            path = None  # consumed by the archive
            outcome = outcomes[0]
            if outcome.status in (StoreStatus.STORED, StoreStatus.DUPLICATE):
                if outcome.status is StoreStatus.DUPLICATE:
                    logger.info("C-STORE of %s: already stored", affected_instance)
                return _status(SUCCESS)
            reason = outcome.failure_reason or int(FailureReason.PROCESSING_FAILURE)
            logger.warning(
                "C-STORE of %s from %s failed (0x%04X): %s",
                affected_instance, calling_ae, reason, outcome.message,
            )
            return _status(reason, outcome.message or "")
        except Exception:
            logger.exception("C-STORE of %s from %s failed", affected_instance, calling_ae)
            if path is not None:
                self.archive.spool.discard(path)
            return _status(PROCESSING_FAILURE, "internal error while storing")

    # ------------------------------------------------------------ C-FIND

    def handle_c_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """Answer a C-FIND (PS3.4 C.4.1) from the index.

        Every element of the identifier with a value that we index is a matching
        key (single value, UID list, wildcard, range: PS3.4 C.2.2.2); every
        element is a return key. Elements we do not index are returned with
        zero length (PS3.4 C.4.1.1.3.2). Yields ``(0xFF00, identifier)`` per
        match, then ``0x0000``; ``0xFE00`` when the peer cancels; 0xA900 or
        0xC000 for identifiers we cannot use.
        """
        calling_ae = _calling_ae(event)
        requestor = event.assoc.requestor
        client = f"{requestor.address}:{requestor.port}"
        tenant = "unknown"  # until the calling AE title is resolved
        level = "UNKNOWN"
        query_text: str | None = None
        audited = False

        def audit(outcome: int) -> None:
            nonlocal audited
            audited = True
            self._audit(tenant, calling_ae, client, level, query_text, outcome)

        try:
            try:
                tenant = self.tenant_for_ae(calling_ae)
                model = str(event.request.AffectedSOPClassUID or "")
                try:
                    identifier = event.identifier
                except Exception as exc:
                    raise _FindFailure(UNABLE_TO_PROCESS, "cannot decode the identifier") from exc
                find = _parse_identifier(identifier, model)
                level = find.level
                query_text = find.describe()
                rows = self._find(tenant, find)
                logger.info(
                    "C-FIND %s from %s (%s): %d matches [%s]",
                    level, calling_ae, client, len(rows), query_text,
                )
            except _FindFailure as exc:
                logger.warning("C-FIND from %s refused: %s", calling_ae, exc.comment)
                audit(exc.status)
                yield _status(exc.status, exc.comment), None
                return
            except InvalidRequestError as exc:
                logger.warning("C-FIND from %s refused: %s", calling_ae, exc)
                audit(IDENTIFIER_DOES_NOT_MATCH)
                yield _status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
                return
            except Exception:
                logger.exception("C-FIND from %s failed", calling_ae)
                audit(UNABLE_TO_PROCESS)
                yield _status(UNABLE_TO_PROCESS, "internal error while searching"), None
                return

            for row in rows:
                if event.is_cancelled:
                    audit(CANCEL)
                    yield CANCEL, None
                    return
                try:
                    response = self._response(find, row)
                except Exception:
                    logger.exception("C-FIND from %s: cannot build a response", calling_ae)
                    audit(UNABLE_TO_PROCESS)
                    yield _status(UNABLE_TO_PROCESS, "cannot build a response"), None
                    return
                yield PENDING, response
            audit(SUCCESS)
            yield SUCCESS, None
        finally:
            if not audited:  # the association ended mid-way
                self._audit(tenant, calling_ae, client, level, query_text, UNABLE_TO_PROCESS)

    def _find(self, tenant: str, find: _FindRequest) -> list[dict[str, Any]]:
        """Rows of keyword -> plain value for the request's level."""
        wanted = {k.keyword for k in find.returned if k.keyword in ATTRIBUTES}
        if find.level == "PATIENT":
            query = parse_query(Level.STUDY, find.matching)
            query.include.update(wanted)
            return _patients(self.archive.search_for_studies(tenant, query))
        query = parse_query(Level(find.level), find.matching)
        query.include.update(wanted)
        if find.level == "STUDY":
            return self.archive.search_for_studies(tenant, query)
        if find.level == "SERIES":
            return self.archive.search_for_series(tenant, query)
        return self.archive.search_for_instances(tenant, query)

    def _response(self, find: _FindRequest, row: dict[str, Any]) -> Dataset:
        """The response identifier for one match (PS3.4 C.4.1.1.3.2)."""
        ds = Dataset()
        non_ascii = False
        for key in find.returned:
            if not key.keyword:
                ds.add_new(key.tag, key.vr, [] if key.vr == "SQ" else None)
                continue
            value = _plain(row.get(key.keyword), key.vr)
            non_ascii = non_ascii or _has_non_ascii(value)
            ds.add_new(key.tag, key.vr, value)
        ds.QueryRetrieveLevel = find.level
        ds.RetrieveAETitle = self.ae_title
        if find.instance_availability:
            ds.InstanceAvailability = "ONLINE"
        if non_ascii:
            ds.SpecificCharacterSet = "ISO_IR 192"
        elif find.charset:
            ds.SpecificCharacterSet = find.charset
        return ds

    def _audit(
        self,
        tenant: str,
        calling_ae: str,
        client: str,
        level: str,
        query_text: str | None,
        outcome: int,
    ) -> None:
        try:
            self.audit.record(
                AuditRecord(
                    tenant_id=tenant,
                    actor=f"dimse:{calling_ae}"[:128],
                    role="dimse",
                    action="query",
                    resource=f"dimse:c-find:{level}",
                    query=query_text,
                    client=client[:128],
                    outcome=outcome,
                )
            )
        except Exception:
            logger.exception("cannot write the audit record of a C-FIND from %s", calling_ae)


# --------------------------------------------------------------------- helpers


def _calling_ae(event: Event) -> str:
    title = event.assoc.requestor.ae_title
    if isinstance(title, bytes):  # pynetdicom < 2
        title = title.decode("ascii", "replace")
    return str(title).strip()


def _status(status: int, comment: str = "") -> Dataset:
    """A status data set; failures carry an Error Comment (PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = status
    if comment and status not in (SUCCESS, PENDING, CANCEL):
        text = comment.encode("ascii", "replace").decode("ascii").replace("\\", "/")
        ds.ErrorComment = text[:_MAX_COMMENT]
    return ds


def _stop_after_sop_instance_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _SOP_INSTANCE_UID


def _check_identity(
    encoded: bytes, affected_class: str, affected_instance: str
) -> tuple[int, str] | None:
    """The data set's SOP Class/Instance UIDs must be those of the request (PS3.4 B.2.3).

    Only the elements up to (0008,0018) are parsed. Without this check a data
    set lacking its SOP Instance UID would be stored under the UID pynetdicom
    copied from the request into the File Meta Information.
    """
    try:
        ds = read_partial(BytesIO(encoded), stop_when=_stop_after_sop_instance_uid)
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        sop_instance = str(ds.get("SOPInstanceUID", "") or "").strip()
    except Exception as exc:
        return int(FailureReason.CANNOT_UNDERSTAND), f"cannot parse the data set: {exc}"
    if not sop_instance:
        return int(FailureReason.CANNOT_UNDERSTAND), "SOPInstanceUID is missing"
    if not sop_class:
        return int(FailureReason.CANNOT_UNDERSTAND), "SOPClassUID is missing"
    if sop_instance != affected_instance:
        return (
            int(FailureReason.DATA_SET_DOES_NOT_MATCH),
            "SOPInstanceUID differs from Affected SOP Instance UID",
        )
    if sop_class != affected_class:
        return (
            int(FailureReason.DATA_SET_DOES_NOT_MATCH),
            "SOPClassUID differs from Affected SOP Class UID",
        )
    return None


def _usable(level: str, keyword: str) -> bool:
    """Whether we index ``keyword`` at ``level`` or a level above it."""
    if level == "PATIENT":
        return keyword in _PATIENT_KEYS or keyword in _PATIENT_COUNTS
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None:
        return False
    return _LEVEL_ORDER[attribute.level] <= _LEVEL_ORDER[Level(level)]


def _parse_identifier(identifier: Dataset, model: str) -> _FindRequest:
    """Split the identifier into matching and return keys (PS3.4 C.4.1.1.3)."""
    levels = _MODEL_LEVELS.get(model)
    if levels is None:
        raise _FindFailure(IDENTIFIER_DOES_NOT_MATCH, "unsupported information model")
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise _FindFailure(IDENTIFIER_DOES_NOT_MATCH, "QueryRetrieveLevel is missing")
    if level not in levels:
        raise _FindFailure(
            IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level[:16]} not in this model"
        )
    find = _FindRequest(level=level)
    charset = identifier.get("SpecificCharacterSet")
    if charset:
        find.charset = list(charset) if isinstance(charset, MultiValue) else str(charset)
    seen: set[int] = set()
    for elem in identifier:
        tag = int(elem.tag)
        if elem.tag.is_private or elem.tag.element == 0 or elem.tag.group < 0x0008:
            continue
        if tag == 0x00080056:
            find.instance_availability = True
        if tag in _SCP_SET:
            continue
        seen.add(tag)
        keyword = elem.keyword
        if not _usable(level, keyword):
            find.returned.append(_Key(tag, "", _plain_vr(elem.VR)))
            continue
        find.returned.append(_Key(tag, keyword, _key_vr(keyword, elem.VR)))
        if keyword in _RETURN_ONLY:
            continue
        value = _match_value(elem)
        if value is not None:
            find.matching.append((keyword, value))
    unique = list(_UNIQUE_KEYS[level])
    if model == PATIENT_ROOT_FIND and "PatientID" not in unique:
        unique.insert(0, "PatientID")
    for keyword in unique:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        if tag not in seen:
            find.returned.append(_Key(tag, keyword, _key_vr(keyword, "")))
    return find


def _match_value(elem: DataElement) -> str | None:
    """The matching value of an element as QIDO-RS text, or None for a return key."""
    if elem.VR == "SQ":
        return None  # sequence matching is not supported; returned as asked
    value = elem.value
    if value is None:
        return None
    if isinstance(value, MultiValue):
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    else:
        text = str(value)
    text = text.strip()
    if not text or text.strip("*") == "":
        return None  # zero length or universal match
    return text


def _key_vr(keyword: str, fallback: str) -> str:
    if keyword in _PATIENT_COUNTS:
        return "IS"
    attribute = ATTRIBUTES.get(keyword)
    return attribute.vr if attribute is not None else _plain_vr(fallback)


def _plain_vr(vr: str | None) -> str:
    """One VR for an element whose dictionary VR is ambiguous (e.g. ``US or SS``)."""
    if not vr:
        return "UN"
    return vr.split(" or ")[0]


def _plain(value: Any, vr: str) -> Any:
    """A stored plain value as a pydicom element value of the given VR."""
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if vr in {"IS", "US", "UL", "SS", "SL"}:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return str(value)


def _has_non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, list):
        return any(isinstance(v, str) and not v.isascii() for v in value)
    return False


def _patients(studies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group study rows by Patient ID into patient level rows (PS3.4 C.6.1.1.2)."""
    patients: dict[str | None, dict[str, Any]] = {}
    for study in studies:
        key = study.get("PatientID")
        patient = patients.get(key)
        if patient is None:
            patient = {k: study.get(k) for k in _PATIENT_KEYS}
            patient.update({k: 0 for k in _PATIENT_COUNTS})
            patients[key] = patient
        patient["NumberOfPatientRelatedStudies"] += 1
        patient["NumberOfPatientRelatedSeries"] += study.get("NumberOfStudyRelatedSeries") or 0
        patient["NumberOfPatientRelatedInstances"] += (
            study.get("NumberOfStudyRelatedInstances") or 0
        )
    return list(patients.values())
