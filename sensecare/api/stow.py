"""STOW-RS: store instances (PS3.18 §10.5)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from sensecare.api.context import ServiceContext
from sensecare.api.dependencies import dicomweb_base, get_context, require
from sensecare.api.multipart import MediaType, spool_request
from sensecare.archive.ingest import FailureReason
from sensecare.archive.service import StoreOutcome, StoreStatus
from sensecare.auth import Permission, Principal
from sensecare.dicom.json_model import element
from sensecare.errors import InvalidRequestError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["STOW-RS"])

DICOM_JSON = "application/dicom+json"


@router.post("/studies")
async def store_instances(
    request: Request,
    principal: Principal = Depends(require(Permission.STORE)),
    ctx: ServiceContext = Depends(get_context),
) -> JSONResponse:
    return await _store(request, principal, ctx, None)


@router.post("/studies/{study}")
async def store_instances_in_study(
    study: str,
    request: Request,
    principal: Principal = Depends(require(Permission.STORE)),
    ctx: ServiceContext = Depends(get_context),
) -> JSONResponse:
    return await _store(request, principal, ctx, study)


async def _store(
    request: Request, principal: Principal, ctx: ServiceContext, study: str | None
) -> JSONResponse:
    parts = await spool_request(
        request.headers.get("content-type"),
        request.stream(),
        ctx.archive.spool,
        ctx.settings.stow_max_instance_bytes,
    )
    if not parts:
        raise InvalidRequestError("the multipart body holds no parts")
    outcomes: list[StoreOutcome | None] = [None] * len(parts)
    dicom_indices, dicom_files = [], []
    for index, part in enumerate(parts):
        part_type = MediaType.parse(part.content_type).mime if part.content_type else "application/dicom"
        if part_type != "application/dicom":
            ctx.archive.spool.discard(part.file.path)
            outcomes[index] = StoreOutcome(
                StoreStatus.FAILED, None, None,
                failure_reason=int(FailureReason.CANNOT_UNDERSTAND),
                message=f"part {index + 1} is {part_type}, not application/dicom",
            )
        else:
            dicom_indices.append(index)
            dicom_files.append(part.incoming)
    stored = await run_in_threadpool(
        ctx.archive.store_instances,
        principal.tenant_id,
        dicom_files,
        received_via="stow-rs",
        study_instance_uid=study,
    )
    for index, outcome in zip(dicom_indices, stored):
        outcomes[index] = outcome
    results = [o for o in outcomes if o is not None]
    for outcome in results:
        if not outcome.ok:
            logger.info("STOW-RS instance failed: %s", outcome.message)
    return JSONResponse(
        store_response(dicomweb_base(request), study, results),
        status_code=_status(results),
        media_type=DICOM_JSON,
    )


def _status(outcomes: list[StoreOutcome]) -> int:
    failed = sum(not o.ok for o in outcomes)
    if failed == 0:
        return 200
    if failed == len(outcomes):
        return 409
    return 202


def store_response(base: str, study: str | None, outcomes: list[StoreOutcome]) -> dict:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) in DICOM JSON."""
    referenced, failed = [], []
    for o in outcomes:
        item = {
            "00081150": element("UI", o.sop_class_uid),
            "00081155": element("UI", o.sop_instance_uid),
        }
        if o.ok:
            item["00081190"] = element(
                "UR",
                f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}"
                f"/instances/{o.sop_instance_uid}",
            )
            referenced.append(item)
        else:
            item["00081197"] = element("US", o.failure_reason)
            if o.message:
                # ErrorComment (0000,0902) carries the human-readable reason beside the code.
                item["00000902"] = element("LO", o.message[:64])
            failed.append(item)
    body: dict = {}
    studies = {o.study_instance_uid for o in outcomes if o.ok}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        body["00081190"] = element("UR", f"{base}/studies/{target}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body
