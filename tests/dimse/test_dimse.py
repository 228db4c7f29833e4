"""The DIMSE SCP against real DICOM peers: dcmtk's echoscu, storescu and findscu.

Covers Verification (PS3.4 Annex A), Storage SCP (PS3.4 Annex B: stored,
re-sent and rejected instances) and Query/Retrieve FIND (PS3.4 C.4.1: Study
Root and Patient Root, STUDY/SERIES/IMAGE/PATIENT levels, wildcard and range
matching, zero-length return of keys we do not index) plus the audit record a
C-FIND leaves. Real chest CT is used when present; the C-FIND tests fall back to
a synthetic series so they never skip for lack of data.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from sensecare.archive.audit import AuditLog
from sensecare.archive.service import Archive
from sensecare.dimse.scp import DimseServer
from tests.helpers.dcmtk import DCMTK_MISSING, dcmtk, needs_dcmtk
from tests.helpers.server import shared_data_dir

AE_TITLE = "SENSECARE"
TIMEOUT = 60



# ------------------------------------------------------------------ data


def chest_ct_dir() -> Path:
    return shared_data_dir() / "chest-ct"


def real_series_files() -> list[Path]:
    return sorted((chest_ct_dir() / "Lung_Dx-A0002" / "series-B40f").glob("*.dcm"))


def make_ct(
    index: int,
    *,
    study_uid: str,
    series_uid: str,
    patient_id: str = "SYN-0001",
    patient_name: str = "Lung^Synthetic",
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A tiny CT Image Storage instance (16x16 int16) with its File Meta Information."""
    sop_uid = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.StudyDate = "20070425"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC-SYN"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 16
    ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    pixels = (np.arange(256, dtype=np.int16).reshape(16, 16) - 128 + index).astype("<i2")
    ds.PixelData = pixels.tobytes()
    return ds


def write_file(ds: Dataset, path: Path, *, as_is: bool = False) -> Path:
    """Write as Part 10; ``as_is`` keeps the File Meta exactly as set, even if
    it contradicts the data set."""
    pydicom.dcmwrite(path, ds, enforce_file_format=not as_is)
    return path


def synthetic_series(directory: Path, count: int = 30) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        write_file(
            make_ct(i, study_uid=study_uid, series_uid=series_uid), directory / f"{i:03d}.dcm"
        )
        for i in range(count)
    ]


# ------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Env:
    archive: Archive
    audit: AuditLog
    server: DimseServer
    root: Path

    @property
    def port(self) -> int:
        return self.server.port


def start_env(root: Path) -> Env:
    root.mkdir(parents=True, exist_ok=True)
    archive = Archive.open(f"sqlite:///{root}/index.sqlite", root)
    archive.ensure_tenant("default")
    audit = AuditLog(archive.db)
    server = DimseServer(archive, audit, ae_title=AE_TITLE, host="127.0.0.1", port=free_port())
    server.start()
    assert server.ready
    return Env(archive, audit, server, root)


def stop_env(env: Env) -> None:
    try:
        env.server.stop()
    finally:
        env.archive.close()


@pytest.fixture
def dimse(tmp_path: Path) -> Iterator[Env]:
    """An empty archive behind a running SCP on a free loopback port."""
    env = start_env(tmp_path / "archive")
    try:
        yield env
    finally:
        stop_env(env)


@dataclass
class Loaded:
    env: Env
    files: list[Path]
    patient_id: str
    study_uid: str
    series_uid: str


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """An SCP whose archive holds one 30-instance CT series, sent with storescu.

    Real chest CT when available, otherwise a synthetic series of the same size.
    """
    if dcmtk("storescu") is None:
        pytest.skip(DCMTK_MISSING)
    root = tmp_path_factory.mktemp("dimse-loaded")
    files = real_series_files()
    if len(files) != 30:
        files = synthetic_series(root / "synthetic")
    env = start_env(root / "archive")
    try:
        storescu(env.port, files)
        assert env.archive.count_instances() == 30
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        yield Loaded(
            env, files, str(first.PatientID), str(first.StudyInstanceUID),
            str(first.SeriesInstanceUID),
        )
    finally:
        stop_env(env)


# ------------------------------------------------------------------ dcmtk peers


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [dcmtk("storescu") or "storescu", "-aet", "STORESCU", "-aec", AE_TITLE,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def findscu(port: int, out_dir: Path, *keys: str, model: str = "-S") -> list[Dataset]:
    """Run findscu, extracting each response identifier to a file; return them parsed."""
    out = out_dir / f"find-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True)
    args = [dcmtk("findscu") or "findscu", model, "-aet", "FINDSCU", "-aec", AE_TITLE]
    args += ["-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    proc = subprocess.run(
        [*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


# ------------------------------------------------------------------ C-ECHO


@needs_dcmtk
def test_echoscu_verifies(dimse: Env) -> None:
    proc = subprocess.run(
        [dcmtk("echoscu") or "echoscu", "-aec", AE_TITLE, "127.0.0.1", str(dimse.port)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ C-STORE


@needs_dcmtk
def test_storescu_real_ct_is_stored_once_with_identical_pixels(dimse: Env) -> None:
    files = real_series_files()
    if len(files) != 30:
        pytest.skip(
            f"real chest CT series not found at {chest_ct_dir()}/Lung_Dx-A0002/series-B40f "
            "(set SENSECARE_SHARED_DATA)"
        )
    storescu(dimse.port, files)
    assert dimse.archive.count_instances() == 30

    storescu(dimse.port, files)  # re-sending changes nothing and is not an error
    assert dimse.archive.count_instances() == 30

    for source_path in files:
        source = pydicom.dcmread(source_path)
        (located,) = dimse.archive.locate_instances(
            "default", source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID
        )
        with dimse.archive.storage.open(located.storage_key) as handle:
            stored = pydicom.dcmread(handle)
        assert stored.PixelData == source.PixelData
        assert stored.SOPInstanceUID == source.SOPInstanceUID
        assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID


@needs_dcmtk
def test_storescu_synthetic_series_and_resend(dimse: Env, tmp_path: Path) -> None:
    files = synthetic_series(tmp_path / "series", count=5)
    storescu(dimse.port, files)
    assert dimse.archive.count_instances() == 5
    storescu(dimse.port, files)
    assert dimse.archive.count_instances() == 5

    source = pydicom.dcmread(files[2])
    (located,) = dimse.archive.locate_instances(
        "default", source.StudyInstanceUID, sop_instance_uid=source.SOPInstanceUID
    )
    with dimse.archive.storage.open(located.storage_key) as handle:
        stored = pydicom.dcmread(handle)
    assert stored.PixelData == source.PixelData
    assert stored.PatientName == "Lung^Synthetic"


def _send(
    port: int, *items: Dataset | Path, transfer_syntax: str = ExplicitVRLittleEndian
) -> list[int]:
    """C-STORE each item over one association (pynetdicom SCU); the statuses."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        statuses = []
        for item in items:
            status = assoc.send_c_store(item)
            assert "Status" in status, "no response from the SCP"
            statuses.append(int(status.Status))
        return statuses
    finally:
        assoc.release()


@needs_dcmtk
def test_compressed_and_deflated_data_sets_are_stored_as_received(
    dimse: Env, tmp_path: Path
) -> None:
    study, series = generate_uid(), generate_uid()
    rle = make_ct(0, study_uid=study, series_uid=series)
    rle.compress(RLELossless)
    rle_path = write_file(rle, tmp_path / "rle.dcm")
    proc = subprocess.run(  # -xr: propose RLE Lossless, so no conversion happens
        [dcmtk("storescu") or "storescu", "-xr", "-aec", AE_TITLE, "127.0.0.1",
         str(dimse.port), str(rle_path)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    deflated = make_ct(1, study_uid=study, series_uid=series)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert _send(dimse.port, deflated, transfer_syntax=DeflatedExplicitVRLittleEndian) == [0]

    for source, syntax in ((rle, RLELossless), (deflated, DeflatedExplicitVRLittleEndian)):
        (located,) = dimse.archive.locate_instances(
            "default", study, sop_instance_uid=source.SOPInstanceUID
        )
        assert located.transfer_syntax_uid == syntax
        with dimse.archive.storage.open(located.storage_key) as handle:
            stored = pydicom.dcmread(handle)
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert np.array_equal(stored.pixel_array, source.pixel_array)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_pynetdicom_store_of_broken_data_sets_fails(
    dimse: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Send files as they are (pynetdicom would otherwise decode them and refuse
    # a data set without SOP Instance UID before it reaches the SCP).
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    study, series = generate_uid(), generate_uid()

    # The data set lacks its SOP Instance UID; only the File Meta (and so the
    # request's Affected SOP Instance UID) has one.
    no_uid = make_ct(0, study_uid=study, series_uid=series)
    del no_uid.SOPInstanceUID
    no_uid_path = write_file(no_uid, tmp_path / "no-uid.dcm", as_is=True)

    # The data set's SOP Instance UID is not the one the request announces.
    mismatch = make_ct(1, study_uid=study, series_uid=series)
    mismatch.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mismatch_path = write_file(mismatch, tmp_path / "mismatch.dcm", as_is=True)

    truncated = make_ct(2, study_uid=study, series_uid=series)
    truncated.PixelData = truncated.PixelData[:100]

    bad_study = make_ct(3, study_uid="not.a..uid", series_uid=series)

    no_series = make_ct(4, study_uid=study, series_uid=series)
    del no_series.SeriesInstanceUID

    statuses = _send(dimse.port, no_uid_path, mismatch_path, truncated, bad_study, no_series)
    assert all(status != 0x0000 for status in statuses), [hex(s) for s in statuses]
    assert statuses[0] == 0xC000  # cannot understand: required UID missing
    assert statuses[1] == 0xA900  # data set does not match the request
    assert statuses[2] == 0xC000  # truncated pixel data
    assert statuses[3] == 0xA900  # invalid UID
    assert statuses[4] == 0xC000
    assert dimse.archive.count_instances() == 0
    assert list(dimse.archive.spool.root.glob("*.part")) == []

    # The association survived the failures and a good instance is stored.
    good = make_ct(5, study_uid=study, series_uid=series)
    assert _send(dimse.port, good, good) == [0x0000, 0x0000]
    assert dimse.archive.count_instances() == 1


def test_pynetdicom_find_with_bad_identifier_fails(dimse: Env) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        no_level = Dataset()
        no_level.PatientID = "X"
        patient_in_study_root = Dataset()
        patient_in_study_root.QueryRetrieveLevel = "PATIENT"
        patient_in_study_root.PatientID = ""
        for identifier in (no_level, patient_in_study_root):
            responses = list(
                assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
            )
            assert len(responses) == 1
            status, found = responses[0]
            assert status.Status == 0xA900
            assert found is None
    finally:
        assoc.release()
    outcomes = [r["outcome"] for r in dimse.audit.search(None, action="query")]
    assert outcomes == [0xA900, 0xA900]


@needs_dcmtk
def test_find_returns_non_ascii_names_as_utf8(dimse: Env) -> None:
    ds = make_ct(0, study_uid=generate_uid(), series_uid=generate_uid(), patient_id="UMLAUT-1",
                 patient_name="Müller^Jürgen")
    assert _send(dimse.port, ds) == [0x0000]
    found = findscu(
        dimse.port, dimse.root, "QueryRetrieveLevel=STUDY", "PatientID=UMLAUT-1", "PatientName",
        "SpecificCharacterSet=ISO_IR 100",
    )
    assert len(found) == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == "Müller^Jürgen"


# ------------------------------------------------------------------ C-FIND


@needs_dcmtk
def test_find_study_by_patient_id(loaded: Loaded, tmp_path: Path) -> None:
    found = findscu(
        loaded.env.port, tmp_path,
        "QueryRetrieveLevel=STUDY", f"PatientID={loaded.patient_id}", "StudyInstanceUID",
        "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "PatientName",
        "StudyDate", "ModalitiesInStudy", "InstitutionName",
    )
    assert len(found) == 1
    (match,) = found
    assert match.StudyInstanceUID == loaded.study_uid
    assert match.PatientID == loaded.patient_id
    assert int(match.NumberOfStudyRelatedInstances) == 30
    assert int(match.NumberOfStudyRelatedSeries) == 1
    assert str(match.PatientName)
    assert "CT" in match.ModalitiesInStudy
    assert match.QueryRetrieveLevel == "STUDY"
    assert match.RetrieveAETitle == AE_TITLE
    # Not indexed: returned with zero length (PS3.4 C.4.1.1.3.2).
    assert "InstitutionName" in match and match["InstitutionName"].is_empty


@needs_dcmtk
def test_find_wildcard_patient_name_is_case_insensitive(loaded: Loaded, tmp_path: Path) -> None:
    found = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=lung*",
        "StudyInstanceUID",
    )
    assert [m.StudyInstanceUID for m in found] == [loaded.study_uid]
    assert str(found[0].PatientName).lower().startswith("lung")


@needs_dcmtk
def test_find_study_date_range(loaded: Loaded, tmp_path: Path) -> None:
    hit = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=20070101-20071231",
        "StudyInstanceUID",
    )
    assert [m.StudyInstanceUID for m in hit] == [loaded.study_uid]
    miss = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=19000101-19001231",
        "StudyInstanceUID",
    )
    assert miss == []


@needs_dcmtk
def test_find_series_of_a_study(loaded: Loaded, tmp_path: Path) -> None:
    found = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={loaded.study_uid}", "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances", "Modality", "SeriesNumber",
    )
    assert len(found) == 1
    (series,) = found
    assert series.SeriesInstanceUID == loaded.series_uid
    assert series.StudyInstanceUID == loaded.study_uid
    assert int(series.NumberOfSeriesRelatedInstances) == 30
    assert series.Modality == "CT"
    assert series.QueryRetrieveLevel == "SERIES"

    other_study = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={generate_uid()}", "SeriesInstanceUID",
    )
    assert other_study == []


@needs_dcmtk
def test_find_images_of_a_series(loaded: Loaded, tmp_path: Path) -> None:
    found = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={loaded.study_uid}", f"SeriesInstanceUID={loaded.series_uid}",
        "SOPInstanceUID", "InstanceNumber", "SOPClassUID",
    )
    expected = {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in loaded.files
    }
    assert {str(m.SOPInstanceUID) for m in found} == expected
    assert all(m.SOPClassUID == CTImageStorage for m in found)


@needs_dcmtk
def test_find_without_match_returns_nothing(loaded: Loaded, tmp_path: Path) -> None:
    assert findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=NO-SUCH-PATIENT",
        "StudyInstanceUID",
    ) == []
    assert findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=zzz*",
        "StudyInstanceUID",
    ) == []


@needs_dcmtk
def test_find_patient_root(loaded: Loaded, tmp_path: Path) -> None:
    studies = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY",
        f"PatientID={loaded.patient_id}", "StudyInstanceUID", "NumberOfStudyRelatedInstances",
        model="-P",
    )
    assert [m.StudyInstanceUID for m in studies] == [loaded.study_uid]
    assert int(studies[0].NumberOfStudyRelatedInstances) == 30

    patients = findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=PATIENT",
        f"PatientID={loaded.patient_id}", "PatientName", "NumberOfPatientRelatedInstances",
        model="-P",
    )
    assert len(patients) == 1
    assert patients[0].PatientID == loaded.patient_id
    assert int(patients[0].NumberOfPatientRelatedInstances) == 30


@needs_dcmtk
def test_find_is_audited(loaded: Loaded, tmp_path: Path) -> None:
    before = {r["id"] for r in loaded.env.audit.search(None, action="query", limit=1000)}
    findscu(
        loaded.env.port, tmp_path, "QueryRetrieveLevel=STUDY", f"PatientID={loaded.patient_id}",
        "StudyInstanceUID",
    )
    new = [
        r for r in loaded.env.audit.search(None, action="query", limit=1000)
        if r["id"] not in before
    ]
    assert len(new) == 1
    (record,) = new
    assert record["tenant_id"] == "default"
    assert record["actor"] == "dimse:FINDSCU"
    assert record["role"] == "dimse"
    assert record["resource"] == "dimse:c-find:STUDY"
    assert f"PatientID={loaded.patient_id}" in record["query"]
    assert record["client"].startswith("127.0.0.1:")
    assert record["outcome"] == 0
