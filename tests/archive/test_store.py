"""Archive.store_instances: checksums, idempotence and header parsing paths."""

from __future__ import annotations

import io
from pathlib import Path

import crc32c
import pydicom
from sqlalchemy import select

from sensecare.archive.ingest import HEAD_BYTES, IncomingInstance, parse_upload
from sensecare.archive.models import Instance
from sensecare.archive.service import Archive, StoreStatus
from tests.helpers.synthetic_ct import make_ct_series


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_checksum_matches_the_stored_bytes_and_restore_is_idempotent(tmp_path: Path) -> None:
    archive = Archive.open(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path)
    archive.ensure_tenant("default")
    data = [_bytes(ds) for ds in make_ct_series(n_slices=3, rows=64, cols=64)]
    first = archive.store_instances("default", [archive.spool.write_bytes(d) for d in data], received_via="test")
    assert [o.status for o in first] == [StoreStatus.STORED] * 3
    again = archive.store_instances("default", [archive.spool.write_bytes(d) for d in data], received_via="test")
    assert [o.status for o in again] == [StoreStatus.DUPLICATE] * 3
    with archive.db.read() as session:
        rows = session.scalars(select(Instance)).all()
    assert len(rows) == 3
    for row in rows:
        with archive.storage.open(row.storage_key) as handle:
            stored = handle.read()
        assert row.checksum == f"crc32c:{crc32c.crc32c(stored):08x}"
        assert row.size_bytes == len(stored)
    assert not list(archive.spool.root.glob("*.part"))
    archive.close()


def test_header_parsed_from_the_upload_prefix_equals_the_file_parse(tmp_path: Path) -> None:
    archive = Archive.open(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path)
    ds = make_ct_series(n_slices=1, rows=256, cols=256)[0]  # pixel data beyond the prefix
    data = _bytes(ds)
    assert len(data) > HEAD_BYTES
    parsed = parse_upload(data[:HEAD_BYTES], len(data))
    from sensecare.archive.ingest import read_header

    spooled = archive.spool.write_bytes(data)
    assert parsed == read_header(spooled.path)
    truncated = parse_upload(data[:HEAD_BYTES], len(data) - 100)
    assert "truncated" in str(truncated)
    assert IncomingInstance(spooled, None).header() == parsed
    archive.close()
