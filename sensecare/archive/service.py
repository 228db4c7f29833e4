"""The archive: store, search and locate instances, scoped to a tenant.

Method names follow PS3.18 (``store_instances``, ``search_for_studies``, ...);
the DICOMweb routes and the DIMSE handlers are thin layers over this class.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from sensecare.archive.db import Database
from sensecare.archive.ingest import FailureReason, IncomingInstance, InstanceHeader, InstanceRejected
from sensecare.archive.models import Instance, Series, Study, Tenant, utcnow
from sensecare.archive.query import (
    ATTRIBUTES,
    Level,
    Query,
    conditions,
    normalize_name,
)
from sensecare.archive.storage import LocalFileStorage, ObjectStorage, Spool, SpooledFile
from sensecare.errors import NotFoundError, SenseCareError

logger = logging.getLogger(__name__)


class StoreStatus(str, enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    FAILED = "failed"


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one instance of a store request."""

    status: StoreStatus
    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    failure_reason: int | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not StoreStatus.FAILED


@dataclass(frozen=True)
class StoredInstance:
    """Where one instance's bytes are, with the identifiers a retrieve needs."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    number_of_frames: int | None
    rows: int | None
    size_bytes: int

    @property
    def has_image(self) -> bool:
        """Rows is present exactly when the instance carries pixel data (PS3.3 C.7.6.3)."""
        return self.rows is not None


@dataclass
class _Candidate:
    """One instance on its way into the archive: where it came from and where it goes."""

    index: int  # position in the request, for its outcome
    header: InstanceHeader
    file: SpooledFile
    key: str = ""  # storage key, once assigned


#: Called after a commit with the (tenant, series UID) pairs that received instances.
SeriesListener = Callable[[str, set[str]], None]


class Archive:
    def __init__(self, db: Database, storage: ObjectStorage, spool: Spool) -> None:
        self.db = db
        self.storage = storage
        self.spool = spool
        self._listeners: list[SeriesListener] = []

    @classmethod
    def open(cls, database_url: str, data_dir: Path, *, primary: bool = True) -> Archive:
        """The embedded profile: local files under ``data_dir`` and the given index.

        The primary process migrates the schema and clears the spool of a previous run;
        worker processes that share the archive must do neither.
        """
        db = Database(database_url)
        if primary:
            db.migrate()
        archive = cls(db, LocalFileStorage(data_dir / "objects"), Spool(data_dir / "spool"))
        if primary:
            archive.spool.clear()
        return archive

    def add_listener(self, listener: SeriesListener) -> None:
        self._listeners.append(listener)

    def ensure_tenant(self, tenant_id: str, name: str | None = None) -> None:
        with self.db.write() as session:
            if session.get(Tenant, tenant_id) is None:
                session.add(Tenant(id=tenant_id, name=name or tenant_id))

    # ------------------------------------------------------------------ store

    def store_instances(
        self,
        tenant_id: str,
        files: Sequence[SpooledFile | IncomingInstance],
        *,
        received_via: str,
        study_instance_uid: str | None = None,
    ) -> list[StoreOutcome]:
        """Store spooled Part 10 files; each is acknowledged only once durable.

        The files are consumed (moved into storage or deleted). Returns one outcome
        per file, in order. ``study_instance_uid`` restricts the store to one study
        (STOW-RS ``/studies/{study}``). Headers parsed while uploading are used as
        they are; other files are parsed here.
        """
        outcomes: list[StoreOutcome | None] = [None] * len(files)
        candidates: list[_Candidate] = []
        for index, item in enumerate(files):
            incoming = item if isinstance(item, IncomingInstance) else IncomingInstance(item)
            try:
                header = incoming.header()
                if study_instance_uid and header.study_instance_uid != study_instance_uid:
                    raise InstanceRejected(
                        f"StudyInstanceUID {header.study_instance_uid} does not match "
                        f"the target study {study_instance_uid}",
                        FailureReason.DATA_SET_DOES_NOT_MATCH,
                        header.sop_class_uid,
                        header.sop_instance_uid,
                    )
            except InstanceRejected as exc:
                outcomes[index] = StoreOutcome(
                    StoreStatus.FAILED, exc.sop_class_uid, exc.sop_instance_uid,
                    failure_reason=int(exc.reason), message=str(exc),
                )
                self.spool.discard(incoming.file.path)
                continue
            candidates.append(_Candidate(index, header, incoming.file))

        known = self._existing(tenant_id, [c.header.sop_instance_uid for c in candidates])
        fresh: list[_Candidate] = []
        seen_in_request: set[str] = set()
        for candidate in candidates:
            uid = candidate.header.sop_instance_uid
            if uid in known or uid in seen_in_request:
                outcomes[candidate.index] = self._duplicate_outcome(candidate.header, known.get(uid))
                self.spool.discard(candidate.file.path)
                continue
            seen_in_request.add(uid)
            fresh.append(candidate)
        for candidate, key in zip(fresh, self.storage.new_keys(tenant_id, len(fresh))):
            candidate.key = key

        if fresh:
            try:
                self.storage.put_files([(c.key, c.file.path) for c in fresh])
            except SenseCareError as exc:
                for c in fresh:
                    self.spool.discard(c.file.path)
                    outcomes[c.index] = StoreOutcome(
                        StoreStatus.FAILED, c.header.sop_class_uid, c.header.sop_instance_uid,
                        failure_reason=int(FailureReason.OUT_OF_RESOURCES), message=str(exc),
                    )
                fresh = []
        if fresh:
            inserted, lost = self._index(tenant_id, fresh, received_via)
            for c in fresh:
                if c.header.sop_instance_uid in inserted:
                    outcomes[c.index] = StoreOutcome(
                        StoreStatus.STORED, c.header.sop_class_uid, c.header.sop_instance_uid,
                        c.header.study_instance_uid, c.header.series_instance_uid,
                    )
                else:  # a concurrent request stored the same instance first
                    self.storage.delete(c.key)
                    outcomes[c.index] = self._duplicate_outcome(c.header, lost.get(c.header.sop_instance_uid))
            touched = {c.header.series_instance_uid for c in fresh if c.header.sop_instance_uid in inserted}
            if touched:
                for listener in self._listeners:
                    try:
                        listener(tenant_id, touched)
                    except Exception:
                        logger.exception("series listener failed")
        return [o for o in outcomes if o is not None]

    def _duplicate_outcome(self, header: InstanceHeader, stored_series: str | None) -> StoreOutcome:
        if stored_series and stored_series != header.series_instance_uid:
            return StoreOutcome(
                StoreStatus.FAILED, header.sop_class_uid, header.sop_instance_uid,
                failure_reason=int(FailureReason.DATA_SET_DOES_NOT_MATCH),
                message="SOP Instance UID is already stored under another series",
            )
        return StoreOutcome(
            StoreStatus.DUPLICATE, header.sop_class_uid, header.sop_instance_uid,
            header.study_instance_uid, header.series_instance_uid,
        )

    def _existing(self, tenant_id: str, uids: Sequence[str]) -> dict[str, str]:
        """SOP Instance UID -> Series Instance UID for those already stored."""
        found: dict[str, str] = {}
        with self.db.read() as session:
            for start in range(0, len(uids), 500):
                chunk = list(uids[start : start + 500])
                rows = session.execute(
                    select(Instance.sop_instance_uid, Series.series_instance_uid)
                    .join(Series, Instance.series_pk == Series.id)
                    .where(Instance.tenant_id == tenant_id, Instance.sop_instance_uid.in_(chunk))
                )
                found.update({sop: series for sop, series in rows})
        return found

    def _index(
        self,
        tenant_id: str,
        fresh: Sequence[_Candidate],
        received_via: str,
    ) -> tuple[set[str], dict[str, str]]:
        """Insert rows in one transaction; returns (inserted UIDs, UID -> series of lost races).

        Core statements, not ORM units of work: one insert per new study and series and
        one multi-row insert for all instances, whose RETURNING tells which rows were new.
        """
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        now = utcnow()
        headers = [c.header for c in fresh]
        with self.db.write() as session:
            study_pks: dict[str, int] = {}
            for h in headers:
                if h.study_instance_uid not in study_pks:
                    study_pks[h.study_instance_uid] = self._get_or_insert(
                        session, insert, Study.__table__, ("tenant_id", "study_instance_uid"),
                        _study_row(tenant_id, h, now),
                    )
            series_pks: dict[str, int] = {}
            for h in headers:
                if h.series_instance_uid not in series_pks:
                    series_pks[h.series_instance_uid] = self._get_or_insert(
                        session, insert, Series.__table__, ("tenant_id", "series_instance_uid"),
                        _series_row(tenant_id, study_pks[h.study_instance_uid], h, now),
                    )
            rows = [
                _instance_row(tenant_id, series_pks[c.header.series_instance_uid], c, received_via, now)
                for c in fresh
            ]
            table = Instance.__table__
            result = session.execute(
                insert(table)
                .on_conflict_do_nothing(index_elements=["tenant_id", "sop_instance_uid"])
                .returning(table.c.sop_instance_uid),
                rows,
            )
            inserted = set(result.scalars())
            session.execute(
                Series.__table__.update()
                .where(Series.__table__.c.id.in_(list(series_pks.values())))
                .values(last_instance_at=now)
            )
        lost_uids = [h.sop_instance_uid for h in headers if h.sop_instance_uid not in inserted]
        lost = self._existing(tenant_id, lost_uids) if lost_uids else {}
        return inserted, lost

    @staticmethod
    def _get_or_insert(session, insert, table, keys: tuple[str, str], row: dict[str, Any]) -> int:  # type: ignore[no-untyped-def]
        """Primary key of the row with these unique keys, inserting it if absent (race-safe)."""
        where = [table.c[k] == row[k] for k in keys]
        found = session.execute(select(table.c.id).where(*where)).scalar()
        if found is not None:
            return int(found)
        session.execute(insert(table).values(row).on_conflict_do_nothing(index_elements=list(keys)))
        return int(session.execute(select(table.c.id).where(*where)).scalar_one())

    # ------------------------------------------------------------------ search

    def search_for_studies(self, tenant_id: str, query: Query) -> list[dict[str, Any]]:
        stmt = select(Study).where(Study.tenant_id == tenant_id, *conditions(query))
        with self.db.read() as session:
            studies = list(session.scalars(_page(stmt.order_by(Study.id), query)))
            stats = self._study_stats(session, [s.id for s in studies])
        keywords = query.returned_keywords([Level.STUDY])
        return [_row_values(keywords, study=s, study_stats=stats.get(s.id)) for s in studies]

    def search_for_series(
        self, tenant_id: str, query: Query, study_instance_uid: str | None = None
    ) -> list[dict[str, Any]]:
        stmt = (
            select(Series, Study)
            .join(Study, Series.study_pk == Study.id)
            .where(Series.tenant_id == tenant_id, *conditions(query))
        )
        if study_instance_uid:
            stmt = stmt.where(Study.study_instance_uid == study_instance_uid)
        levels = [Level.SERIES] if study_instance_uid else [Level.STUDY, Level.SERIES]
        with self.db.read() as session:
            rows = list(session.execute(_page(stmt.order_by(Series.id), query)))
            counts = self._series_counts(session, [series.id for series, _ in rows])
            stats = (
                self._study_stats(session, list({study.id for _, study in rows}))
                if Level.STUDY in levels else {}
            )
        keywords = query.returned_keywords(levels)
        return [
            _row_values(
                keywords, study=study, series=series, series_count=counts.get(series.id, 0),
                study_stats=stats.get(study.id),
            )
            for series, study in rows
        ]

    def search_for_instances(
        self,
        tenant_id: str,
        query: Query,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
    ) -> list[dict[str, Any]]:
        stmt = (
            select(Instance, Series, Study)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.tenant_id == tenant_id, *conditions(query))
        )
        if study_instance_uid:
            stmt = stmt.where(Study.study_instance_uid == study_instance_uid)
        if series_instance_uid:
            stmt = stmt.where(Series.series_instance_uid == series_instance_uid)
        levels = [Level.IMAGE]
        if not series_instance_uid:
            levels.insert(0, Level.SERIES)
        if not study_instance_uid:
            levels.insert(0, Level.STUDY)
        order = (Series.id, Instance.instance_number, Instance.id)
        with self.db.read() as session:
            rows = list(session.execute(_page(stmt.order_by(*order), query)))
        keywords = query.returned_keywords(levels)
        return [
            _row_values(keywords, study=study, series=series, instance=instance)
            for instance, series, study in rows
        ]

    def _study_stats(self, session, study_pks: Sequence[int]) -> dict[int, tuple[int, int, list[str]]]:  # type: ignore[no-untyped-def]
        """Per study: (number of series, number of instances, modalities)."""
        if not study_pks:
            return {}
        stats: dict[int, tuple[int, int, list[str]]] = {pk: (0, 0, []) for pk in study_pks}
        rows = session.execute(
            select(Series.study_pk, Series.modality, func.count(Instance.id))
            .join(Instance, Instance.series_pk == Series.id, isouter=True)
            .where(Series.study_pk.in_(study_pks))
            .group_by(Series.study_pk, Series.id, Series.modality)
        )
        for study_pk, modality, count in rows:
            n_series, n_instances, modalities = stats[study_pk]
            if modality and modality not in modalities:
                modalities = sorted([*modalities, modality])
            stats[study_pk] = (n_series + 1, n_instances + count, modalities)
        return stats

    def _series_counts(self, session, series_pks: Sequence[int]) -> dict[int, int]:  # type: ignore[no-untyped-def]
        if not series_pks:
            return {}
        rows = session.execute(
            select(Instance.series_pk, func.count(Instance.id))
            .where(Instance.series_pk.in_(series_pks))
            .group_by(Instance.series_pk)
        )
        return dict(rows.all())

    # ------------------------------------------------------------------ locate

    def locate_instances(
        self,
        tenant_id: str,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """The stored instances of a study, series or single instance; NotFound when none."""
        stmt = (
            select(Instance, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.tenant_id == tenant_id, Study.study_instance_uid == study_instance_uid)
        )
        if series_instance_uid:
            stmt = stmt.where(Series.series_instance_uid == series_instance_uid)
        if sop_instance_uid:
            stmt = stmt.where(Instance.sop_instance_uid == sop_instance_uid)
        stmt = stmt.order_by(Series.id, Instance.instance_number, Instance.id)
        with self.db.read() as session:
            rows = session.execute(stmt).all()
        if not rows:
            what = sop_instance_uid or series_instance_uid or study_instance_uid
            raise NotFoundError(f"no stored instances for {what}")
        return [
            StoredInstance(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                storage_key=instance.storage_key,
                number_of_frames=instance.number_of_frames,
                rows=instance.rows,
                size_bytes=instance.size_bytes,
            )
            for instance, series_uid, study_uid in rows
        ]

    def count_instances(self, tenant_id: str | None = None) -> int:
        stmt = select(func.count(Instance.id))
        if tenant_id:
            stmt = stmt.where(Instance.tenant_id == tenant_id)
        with self.db.read() as session:
            return int(session.execute(stmt).scalar_one())

    def collect_orphans(self, modified_before: float | None = None) -> int:
        """Delete stored objects no index row points at (left by a crash between store and commit).

        ``modified_before`` (epoch seconds, normally the process start) spares objects
        that a live request has just moved into storage and is about to index.
        """
        candidates = list(self.storage.iter_keys(modified_before=modified_before))
        if not candidates:
            return 0
        with self.db.read() as session:
            indexed = set(session.scalars(select(Instance.storage_key)))
        removed = 0
        for key in candidates:
            if key not in indexed:
                self.storage.delete(key)
                removed += 1
        return removed

    def close(self) -> None:
        self.db.dispose()


def _page(stmt, query: Query):  # type: ignore[no-untyped-def]
    if query.offset:
        stmt = stmt.offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def _row_values(
    keywords: Sequence[str],
    *,
    study: Study,
    series: Series | None = None,
    instance: Instance | None = None,
    series_count: int | None = None,
    study_stats: tuple[int, int, list[str]] | None = None,
) -> dict[str, Any]:
    """Keyword -> plain value for the attributes to return (None when unknown)."""
    values: dict[str, Any] = {}
    for keyword in keywords:
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None:
            continue
        if keyword == "ModalitiesInStudy":
            values[keyword] = study_stats[2] if study_stats else None
        elif keyword == "NumberOfStudyRelatedSeries":
            values[keyword] = study_stats[0] if study_stats else None
        elif keyword == "NumberOfStudyRelatedInstances":
            values[keyword] = study_stats[1] if study_stats else None
        elif keyword == "NumberOfSeriesRelatedInstances":
            values[keyword] = series_count
        else:
            source = {Level.STUDY: study, Level.SERIES: series, Level.IMAGE: instance}[
                attribute.level
            ]
            if source is None or attribute.column is None:
                continue
            values[keyword] = getattr(source, attribute.column.key)
    values["_study"] = study.study_instance_uid
    if series is not None:
        values["_series"] = series.series_instance_uid
    if instance is not None:
        values["_instance"] = instance.sop_instance_uid
    return values


def _study_row(tenant_id: str, h: InstanceHeader, now: datetime) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "study_instance_uid": h.study_instance_uid,
        "patient_id": h.patient_id,
        "patient_name": h.patient_name,
        "patient_name_search": normalize_name(h.patient_name),
        "patient_birth_date": h.patient_birth_date,
        "patient_sex": h.patient_sex,
        "study_date": h.study_date,
        "study_time": h.study_time,
        "accession_number": h.accession_number,
        "study_id": h.study_id,
        "study_description": h.study_description,
        "referring_physician_name": h.referring_physician_name,
        "created_at": now,
        "updated_at": now,
    }


def _series_row(tenant_id: str, study_pk: int, h: InstanceHeader, now: datetime) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "study_pk": study_pk,
        "series_instance_uid": h.series_instance_uid,
        "modality": h.modality,
        "series_number": h.series_number,
        "series_description": h.series_description,
        "body_part_examined": h.body_part_examined,
        "series_date": h.series_date,
        "created_at": now,
        "last_instance_at": now,
    }


def _instance_row(
    tenant_id: str, series_pk: int, c: _Candidate, received_via: str, now: datetime
) -> dict[str, Any]:
    h = c.header
    return {
        "tenant_id": tenant_id,
        "series_pk": series_pk,
        "sop_instance_uid": h.sop_instance_uid,
        "sop_class_uid": h.sop_class_uid,
        "instance_number": h.instance_number,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "number_of_frames": h.number_of_frames,
        "rows": h.rows,
        "columns": h.columns,
        "storage_key": c.key,
        "size_bytes": c.file.size,
        "checksum": c.file.checksum,
        "received_via": received_via,
        "created_at": now,
    }
