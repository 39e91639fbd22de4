"""The review console: static files under ``api/static/``.

Each is served with ``Cache-Control: no-cache``: a browser asks again before using a copy it
holds, so after an upgrade it never runs a new module next to an old one it imports (freshness
guessed from Last-Modified alone would let it). Asking again is cheap: a request whose
If-None-Match names the file's ETag is answered 304 Not Modified, without the file.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.staticfiles import NotModifiedResponse

from gridpatrol.api.problems import Problem

router = APIRouter(tags=["console"], include_in_schema=False)
STATIC = Path(str(files("gridpatrol.api").joinpath("static"))).resolve()
CACHE = {"Cache-Control": "no-cache"}


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/review")


@router.get("/review")
def index(request: Request) -> Response:
    return _file("index.html", request)


@router.get("/review/static/{path:path}")
def static(path: str, request: Request) -> Response:
    return _file(path, request)


def _file(path: str, request: Request) -> Response:
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise Problem(404, f"no console file {path}")
    response = FileResponse(target, headers=CACHE, stat_result=target.stat())
    if _unchanged(response.headers, request.headers):
        return NotModifiedResponse(response.headers)
    return response


def _unchanged(response: Headers, request: Headers) -> bool:
    """Whether the browser's copy is this file: its If-None-Match names the ETag (or ``*``).
    If-Modified-Since is not consulted: a file replaced by an older one would pass it."""
    wanted = request.get("if-none-match")
    if not wanted:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in wanted.split(",")]
    return "*" in tags or response["etag"] in tags
