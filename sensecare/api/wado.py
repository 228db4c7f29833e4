"""WADO-RS: retrieve instances, metadata, frames, bulk data and rendered images (PS3.18 §10.4)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pydicom
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.tag import Tag

from sensecare.api.context import ServiceContext
from sensecare.api.dependencies import audited, dicomweb_base, get_context, require
from sensecare.api.multipart import MediaType, multipart_stream, new_boundary, parse_accept
from sensecare.archive.service import StoredInstance
from sensecare.auth import Permission, Principal
from sensecare.dicom import rendering
from sensecare.dicom.transcode import (
    FRAME_MEDIA_TYPES,
    UNCOMPRESSED,
    decoded_frame,
    stored_frame,
    transcode,
)
from sensecare.errors import (
    InvalidRequestError,
    NotAcceptableError,
    NotFoundError,
    SenseCareError,
    UndecodableInstanceError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

router = APIRouter(prefix="/dicomweb", tags=["WADO-RS"])

CHUNK = 1024 * 1024
DICOM_JSON = "application/dicom+json"
THUMBNAIL_SIZE = (128, 128)


# ---------------------------------------------------------------- negotiation


async def _decoding(function: Callable[..., T], *args: Any) -> T:
    """Run a decoding step off the event loop; stored bytes that will not decode are a 422."""
    try:
        return await run_in_threadpool(function, *args)
    except SenseCareError:
        raise
    except Exception as exc:  # pydicom and Pillow raise many types for odd content
        logger.warning("cannot decode stored instance: %s", exc)
        raise UndecodableInstanceError(f"stored instance cannot be decoded: {str(exc)[:200]}") from exc



def _wanted_syntax(accept: str | None) -> str | None:
    """The transfer syntax to send instances in; ``None`` means as stored."""
    entries = parse_accept(accept)
    if not entries:
        return None
    for media in entries:
        if media.mime in {"*/*", "multipart/*"}:
            return None
        inner = media.params.get("type", "application/dicom").lower() if media.mime == "multipart/related" else media.mime
        if media.mime not in {"multipart/related", "application/dicom"} or inner != "application/dicom":
            continue
        syntax = media.params.get("transfer-syntax", "*")
        if syntax == "*":
            return None
        return syntax
    raise NotAcceptableError(
        'retrieve answers multipart/related; type="application/dicom" only'
    )


def _instance_parts(
    ctx: ServiceContext, instances: list[StoredInstance], syntax: str | None
) -> Iterator[tuple[str, Iterator[bytes]]]:
    for inst in instances:
        if syntax is None or syntax == inst.transfer_syntax_uid:
            yield (
                f"application/dicom; transfer-syntax={inst.transfer_syntax_uid}",
                _read_chunks(ctx, inst.storage_key),
            )
        else:
            with ctx.archive.storage.open(inst.storage_key) as handle:
                data = transcode(handle, syntax)
            yield f"application/dicom; transfer-syntax={syntax}", iter((data,))


def _read_chunks(ctx: ServiceContext, key: str) -> Iterator[bytes]:
    with ctx.archive.storage.open(key) as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _check_syntax_possible(instances: list[StoredInstance], syntax: str | None) -> None:
    if syntax is None:
        return
    if syntax in UNCOMPRESSED:
        return
    if any(i.transfer_syntax_uid != syntax for i in instances):
        raise NotAcceptableError(f"instances cannot be sent in transfer syntax {syntax}")


async def _retrieve(request: Request, principal: Principal, ctx: ServiceContext, *uids: str) -> Response:
    resource = _resource(*uids)
    async with audited(ctx, request, principal, "retrieve", resource):
        syntax = _wanted_syntax(request.headers.get("accept"))
        instances = await run_in_threadpool(ctx.archive.locate_instances, principal.tenant_id, *uids)
        _check_syntax_possible(instances, syntax)
    boundary = new_boundary()
    return StreamingResponse(
        multipart_stream(boundary, _instance_parts(ctx, instances, syntax)),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def _resource(*uids: str) -> str:
    names = ("studies", "series", "instances")
    return "/".join(f"{name}/{uid}" for name, uid in zip(names, uids) if uid)


@router.get("/studies/{study}")
async def retrieve_study(
    study: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _retrieve(request, principal, ctx, study)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    study: str, series: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _retrieve(request, principal, ctx, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _retrieve(request, principal, ctx, study, series, instance)


# ---------------------------------------------------------------- metadata


def _metadata(ctx: ServiceContext, base: str, instances: list[StoredInstance]) -> list[dict[str, Any]]:
    out = []
    for inst in instances:
        url = f"{base}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}/instances/{inst.sop_instance_uid}"
        with ctx.archive.storage.open(inst.storage_key) as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True)

        def bulk_uri(elem: pydicom.DataElement, _url: str = url) -> str:
            return f"{_url}/bulkdata/{elem.tag:08X}"

        # Real-world files carry values that break their VR; skip those elements, keep the rest.
        body = ds.to_json_dict(
            bulk_data_threshold=1024, bulk_data_element_handler=bulk_uri, suppress_invalid_tags=True
        )
        body["00020010"] = {"vr": "UI", "Value": [inst.transfer_syntax_uid]}
        if inst.has_image:
            vr = "OW" if int(ds.get("BitsAllocated", 8)) > 8 and not pydicom.uid.UID(inst.transfer_syntax_uid).is_encapsulated else "OB"
            body["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/7FE00010"}
        out.append(dict(sorted(body.items())))
    return out


async def _metadata_route(request: Request, principal: Principal, ctx: ServiceContext, *uids: str) -> Response:
    async with audited(ctx, request, principal, "metadata", _resource(*uids)):
        instances = await run_in_threadpool(ctx.archive.locate_instances, principal.tenant_id, *uids)
        body = await _decoding(_metadata, ctx, dicomweb_base(request), instances)
    return JSONResponse(body, media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata")
async def retrieve_study_metadata(
    study: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _metadata_route(request, principal, ctx, study)


@router.get("/studies/{study}/series/{series}/metadata")
async def retrieve_series_metadata(
    study: str, series: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _metadata_route(request, principal, ctx, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def retrieve_instance_metadata(
    study: str, series: str, instance: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _metadata_route(request, principal, ctx, study, series, instance)


# ---------------------------------------------------------------- frames and bulk data


def _load(ctx: ServiceContext, principal: Principal, study: str, series: str, instance: str) -> tuple[StoredInstance, pydicom.Dataset]:
    inst = ctx.archive.locate_instances(principal.tenant_id, study, series, instance)[0]
    with ctx.archive.storage.open(inst.storage_key) as handle:
        return inst, pydicom.dcmread(handle)


def _parse_frames(text: str) -> list[int]:
    try:
        numbers = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise InvalidRequestError(f"frame list {text!r} must be comma-separated integers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidRequestError("frame numbers start at 1")
    return numbers


def _frame_parts(ds: pydicom.Dataset, numbers: list[int], accept: str | None) -> list[tuple[str, bytes]]:
    syntax = str(ds.file_meta.TransferSyntaxUID)
    entries = parse_accept(accept)
    send_stored = not ds.file_meta.TransferSyntaxUID.is_compressed
    for media in entries:
        inner = media.params.get("type", media.mime) if media.mime == "multipart/related" else media.mime
        requested = media.params.get("transfer-syntax")
        if requested == "*" or requested == syntax or (inner == FRAME_MEDIA_TYPES.get(syntax)) or inner == "*/*":
            send_stored = True
            break
        if inner == "application/octet-stream":
            break
    parts = []
    for number in numbers:
        if send_stored:
            content_type = (
                FRAME_MEDIA_TYPES.get(syntax, "application/octet-stream") + f"; transfer-syntax={syntax}"
            )
            parts.append((content_type, stored_frame(ds, number)))
        else:
            parts.append(
                (f"application/octet-stream; transfer-syntax={pydicom.uid.ExplicitVRLittleEndian}", decoded_frame(ds, number))
            )
    return parts


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    async with audited(ctx, request, principal, "retrieve", _resource(study, series, instance) + f"/frames/{frames}"):
        numbers = _parse_frames(frames)
        _inst, ds = await _decoding(_load, ctx, principal, study, series, instance)
        parts = await _decoding(_frame_parts, ds, numbers, request.headers.get("accept"))
    boundary = new_boundary()
    body = b"".join(multipart_stream(boundary, ((ct, (data,)) for ct, data in parts)))
    inner = MediaType.parse(parts[0][0]).mime
    return Response(body, media_type=f'multipart/related; type="{inner}"; boundary={boundary}')


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}")
async def retrieve_bulkdata(
    study: str, series: str, instance: str, tag: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    async with audited(ctx, request, principal, "retrieve", _resource(study, series, instance) + f"/bulkdata/{tag}"):
        try:
            element_tag = Tag(int(tag, 16))
        except ValueError:
            raise InvalidRequestError(f"bulk data tag {tag!r} must be 8 hex digits") from None
        _inst, ds = await _decoding(_load, ctx, principal, study, series, instance)
        if element_tag not in ds:
            raise NotFoundError(f"instance has no attribute {tag}")
        value = ds[element_tag].value
        if not isinstance(value, (bytes, bytearray)):
            raise NotFoundError(f"attribute {tag} is not bulk data")
    boundary = new_boundary()
    body = b"".join(multipart_stream(boundary, [("application/octet-stream", (bytes(value),))]))
    return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


# ---------------------------------------------------------------- rendered and thumbnails


def _render(
    ds: pydicom.Dataset, frame: int, request: Request, size: tuple[int, int] | None
) -> tuple[bytes, str]:
    media_type = rendering.choose_rendered_media_type(request.headers.get("accept"))
    window_text = request.query_params.get("window")
    window = rendering.Window.parse(window_text) if window_text else None
    quality = _int_param(request, "quality", 90, 1, 100)
    viewport = request.query_params.get("viewport")
    if viewport:
        try:
            width, height = (int(v) for v in viewport.split(",")[:2])
        except ValueError:
            raise InvalidRequestError("viewport must be 'width,height'") from None
        if width < 1 or height < 1 or width > 4096 or height > 4096:
            raise InvalidRequestError("viewport must be between 1 and 4096 pixels")
        size = (width, height)
    data = rendering.render_frame(
        ds, frame - 1, window=window, media_type=media_type, quality=quality, size=size
    )
    return data, media_type


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be between {low} and {high}")
    return value


async def _rendered_route(
    request: Request, principal: Principal, ctx: ServiceContext,
    study: str, series: str, instance: str, frame: int, size: tuple[int, int] | None, action: str,
) -> Response:
    async with audited(ctx, request, principal, action, _resource(study, series, instance)):
        _inst, ds = await _decoding(_load, ctx, principal, study, series, instance)
        data, media_type = await _decoding(_render, ds, frame, request, size)
    return Response(data, media_type=media_type)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
async def retrieve_rendered_instance(
    study: str, series: str, instance: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _rendered_route(request, principal, ctx, study, series, instance, 1, None, "render")


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
async def retrieve_rendered_frame(
    study: str, series: str, instance: str, frame: int, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _rendered_route(request, principal, ctx, study, series, instance, frame, None, "render")


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
async def retrieve_instance_thumbnail(
    study: str, series: str, instance: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _rendered_route(request, principal, ctx, study, series, instance, 1, THUMBNAIL_SIZE, "thumbnail")


async def _representative_thumbnail(
    request: Request, principal: Principal, ctx: ServiceContext, study: str, series: str | None
) -> Response:
    """A series (or study) thumbnail is its middle image, as a reader would pick."""
    async with audited(ctx, request, principal, "thumbnail", _resource(study, series or "")):
        instances = await run_in_threadpool(ctx.archive.locate_instances, principal.tenant_id, study, series)
        images = [i for i in instances if i.has_image]
        if not images:
            raise NotFoundError("no image to make a thumbnail from")
        first_series = images[0].series_instance_uid
        images = [i for i in images if i.series_instance_uid == first_series]
        chosen = images[len(images) // 2]

        def load() -> pydicom.Dataset:
            with ctx.archive.storage.open(chosen.storage_key) as handle:
                return pydicom.dcmread(handle)

        ds = await _decoding(load)
        data, media_type = await _decoding(_render, ds, 1, request, THUMBNAIL_SIZE)
    return Response(data, media_type=media_type)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def retrieve_series_thumbnail(
    study: str, series: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _representative_thumbnail(request, principal, ctx, study, series)


@router.get("/studies/{study}/thumbnail")
async def retrieve_study_thumbnail(
    study: str, request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _representative_thumbnail(request, principal, ctx, study, None)
