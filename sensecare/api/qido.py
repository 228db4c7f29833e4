"""QIDO-RS: search for studies, series and instances (PS3.18 §10.6)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from sensecare.api.context import ServiceContext
from sensecare.api.dependencies import audited, dicomweb_base, get_context, require
from sensecare.archive.query import ATTRIBUTES, Level, parse_query
from sensecare.auth import Permission, Principal
from sensecare.dicom.json_model import element

router = APIRouter(prefix="/dicomweb", tags=["QIDO-RS"])

DICOM_JSON = "application/dicom+json"
FUZZY_WARNING = '299 sensecare: "The fuzzymatching parameter is not supported. Only literal matching has been performed."'


def _results(
    request: Request, level: Level, rows: list[dict[str, Any]], fuzzy: bool
) -> Response:
    base = dicomweb_base(request)
    body = [_to_json(base, row) for row in rows]
    headers = {"Warning": FUZZY_WARNING} if fuzzy else None
    if not body:
        return Response(status_code=204, headers=headers)
    return JSONResponse(body, media_type=DICOM_JSON, headers=headers)


def _to_json(base: str, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword, value in row.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None:
            continue
        out[attribute.tag] = element(attribute.vr, value)
    url = f"{base}/studies/{row['_study']}"
    if "_series" in row:
        url += f"/series/{row['_series']}"
    if "_instance" in row:
        url += f"/instances/{row['_instance']}"
    out["00081190"] = element("UR", url)
    return dict(sorted(out.items()))


async def _search(request, principal, ctx, level: Level, resource: str, search, **scope) -> Response:  # type: ignore[no-untyped-def]
    async with audited(ctx, request, principal, "query", resource):
        query = parse_query(level, list(request.query_params.multi_items()))
        rows = await run_in_threadpool(search, principal.tenant_id, query, **scope)
        return _results(request, level, rows, query.fuzzy)


@router.get("/studies")
async def search_for_studies(
    request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _search(request, principal, ctx, Level.STUDY, "studies", ctx.archive.search_for_studies)


@router.get("/series")
async def search_for_all_series(
    request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _search(request, principal, ctx, Level.SERIES, "series", ctx.archive.search_for_series)


@router.get("/studies/{study}/series")
async def search_for_series(
    study: str,
    request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _search(
        request, principal, ctx, Level.SERIES, f"studies/{study}/series",
        ctx.archive.search_for_series, study_instance_uid=study,
    )


@router.get("/instances")
async def search_for_all_instances(
    request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _search(request, principal, ctx, Level.IMAGE, "instances", ctx.archive.search_for_instances)


@router.get("/studies/{study}/instances")
async def search_for_study_instances(
    study: str,
    request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _search(
        request, principal, ctx, Level.IMAGE, f"studies/{study}/instances",
        ctx.archive.search_for_instances, study_instance_uid=study,
    )


@router.get("/studies/{study}/series/{series}/instances")
async def search_for_instances(
    study: str,
    series: str,
    request: Request,
    principal: Principal = Depends(require(Permission.READ_PHI)),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    return await _search(
        request, principal, ctx, Level.IMAGE, f"studies/{study}/series/{series}/instances",
        ctx.archive.search_for_instances, study_instance_uid=study, series_instance_uid=series,
    )
