"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sensecare import errors

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.SenseCareError], int], ...] = (
    (errors.AuthenticationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.NotFoundError, 404),
    (errors.NotAcceptableError, 406),
    (errors.ConflictError, 409),
    (errors.UnsupportedMediaTypeError, 415),
    (errors.VolumeError, 422),
    (errors.UndecodableInstanceError, 422),
    (errors.ResultEncodingError, 422),
    (errors.InvalidDicomError, 400),
    (errors.InvalidRequestError, 400),
    (errors.StorageError, 503),
    (errors.ConfigurationError, 500),
)


def status_for(exc: errors.SenseCareError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(exc, error_class):
            return status
    return 500


def error_response(status: int, exc: Exception) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="sensecare"'} if status == 401 else None
    return JSONResponse(
        {"error": type(exc).__name__, "detail": str(exc)}, status_code=status, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.SenseCareError)
    async def _domain_error(_request: Request, exc: errors.SenseCareError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.error("request failed: %s", exc)
        return error_response(status, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "InvalidRequestError", "detail": exc.errors()}, status_code=400)
