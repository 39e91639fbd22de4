"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gridpatrol.api.evidence import EvidenceError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    499: "Client Closed Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """An error answered as ``application/problem+json``."""

    def __init__(self, status: int, detail: str, title: str | None = None, **extra: Any) -> None:
        self.status = status
        self.title = title or TITLES.get(status, "Error")
        self.detail = detail
        self.extra = extra
        super().__init__(detail)


def problem_response(
    status: int,
    detail: str,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    """Route every error path (ours, FastAPI's validation, Starlette's 404/405) to problems."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem_response(
            exc.status, exc.detail, exc.title, request.url.path, headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return problem_response(
            422, "the request does not match the schema", None, request.url.path, errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            exc.status_code,
            str(exc.detail),
            None,
            request.url.path,
            dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(EvidenceError)
    async def _evidence(request: Request, exc: EvidenceError) -> JSONResponse:
        # 503 (a stored file cannot be read just now) wherever it is met: an upload, a
        # download, or a create or PATCH judging its evidence; the producer's outbox retries.
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return problem_response(exc.status, exc.detail, exc.title, request.url.path, headers)

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            503,
            "the database is unavailable; retry shortly",
            None,
            request.url.path,
            {"Retry-After": "1"},
        )

    @app.exception_handler(PoolTimeout)
    async def _database_busy(request: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed in use for the pool's timeout: a slow or hung
        # database. The producer's outbox retries; a 500 would also count as a server bug.
        log.warning(
            "database busy on %s %s: no connection free within the pool's timeout",
            request.method,
            request.url.path,
        )
        return problem_response(
            503,
            "the database is busy; retry shortly",
            None,
            request.url.path,
            {"Retry-After": "1"},
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _exc: ClientDisconnect) -> JSONResponse:
        # The client closed its connection while sending its body (a producer stopped or its
        # network dropped): nothing failed here and its outbox sends it again. The answer
        # reaches no one; its status (nginx's 499) is what the request is counted under.
        log.info(
            "%s %s: the client went away before its body ended", request.method, request.url.path
        )
        return problem_response(
            499, "the client closed the connection before its body ended", None, request.url.path
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error; see the server log", None, request.url.path)
