"""The server's errors in OpenAI's JSON shape: the ApiError type and the FastAPI exception handlers.

Every error a client can see is `{"error": {"message", "type", "param", "code"}}` with a
status code the OpenAI SDKs map to their exception types (400, 401, 404, 413, 429, 500, 503).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.frontends.openai_types import describe_errors

log = logging.getLogger(__name__)

INVALID = "invalid_request_error"
SERVER = "server_error"


class ApiError(Exception):
    """An HTTP error with OpenAI's error fields; raise it anywhere in a request handler."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {...}}."""
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type_: str = INVALID, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def request_error(err: MistralrsError, fields: Sequence[str] = ()) -> ApiError:
    """A 400 for an invalid request; `param` is the field the error names (FieldError), else the
    field the engine's message starts with, if any."""
    param = getattr(err, "param", None)
    if param is not None:
        return ApiError(400, err.message, param=param)
    first = err.message.split(" ", 1)[0]
    return ApiError(400, err.message, param=first if first in fields else None)


def validation_error(errors: Sequence[Any]) -> ApiError:
    """A 400 from FastAPI's validation errors (OpenAI answers 400 where FastAPI would say 422)."""
    if not errors:
        return ApiError(400, "invalid request")
    kinds = {e.get("type") for e in errors}
    if "json_invalid" in kinds:
        return ApiError(400, "the request body is not valid JSON")
    message, param = describe_errors(errors, skip=("body",))
    if param is None:
        if "missing" in kinds:
            return ApiError(400, "the request body is missing (send a JSON object)")
        return ApiError(400, "the request body must be a JSON object (Content-Type: application/json)")
    return ApiError(400, message, param=param)


def install_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to an OpenAI-shaped JSON response."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI's "There was an error parsing the body", raised for JSON nested past Python's limit.
            message = "the request body is nested too deeply to parse (send a flatter JSON object)"
        else:
            message = str(exc.detail)
        type_ = SERVER if exc.status_code >= 500 else INVALID
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, message, type_, code=code, headers=exc.headers).response()

    @app.exception_handler(MistralrsError)
    async def _user(_: Request, exc: MistralrsError) -> JSONResponse:
        return ApiError(400, exc.message).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback and re-raises after this response is sent.
        return ApiError(500, f"internal server error: {type(exc).__name__}", SERVER).response()
