"""Transfer syntax conversion and frame extraction for retrieval (PS3.18 §8.7.3)."""

from __future__ import annotations

import io
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sensecare.errors import NotAcceptableError, NotFoundError

#: Syntaxes we can always produce from anything pydicom can decode.
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: Single-frame media types for compressed frames (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
}


def transcode(source: BinaryIO, target: str) -> bytes:
    """Re-encode a Part 10 file in an uncompressed syntax (decoding compressed pixel data)."""
    target_uid = UID(target)
    if target_uid not in UNCOMPRESSED:
        raise NotAcceptableError(f"cannot transcode to transfer syntax {target}")
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:
            raise NotAcceptableError(f"stored pixel data cannot be decoded: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = target_uid
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=target_uid == ImplicitVRLittleEndian, little_endian=True)
    return buffer.getvalue()


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def stored_frame(ds: Dataset, number: int) -> bytes:
    """Frame ``number`` (1-based) exactly as stored: raw pixels or one compressed bitstream."""
    _check_frame(ds, number)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        frames = generate_frames(ds.PixelData, number_of_frames=frame_count(ds))
        for index, frame in enumerate(frames, start=1):
            if index == number:
                return frame
        raise NotFoundError(f"frame {number} is missing from the pixel data")
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    return bytes(ds.PixelData[(number - 1) * size : number * size])


def decoded_frame(ds: Dataset, number: int) -> bytes:
    """Frame ``number`` as uncompressed little-endian pixels (for clients that cannot decode)."""
    _check_frame(ds, number)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return stored_frame(ds, number)
    try:
        array = ds.pixel_array
        if frame_count(ds) > 1:
            array = array[number - 1]
    except Exception as exc:
        raise NotAcceptableError(f"stored pixel data cannot be decoded: {exc}") from exc
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _check_frame(ds: Dataset, number: int) -> None:
    if "PixelData" not in ds:
        raise NotFoundError("instance has no pixel data")
    if number < 1 or number > frame_count(ds):
        raise NotFoundError(f"frame {number} does not exist (instance has {frame_count(ds)})")
