"""The review console: static files under ``api/static/``.

Each is served with ``Cache-Control: no-cache``: a browser asks again before using a copy it
holds, so after an upgrade it never runs a new module next to an old one it imports (freshness
guessed from Last-Modified alone would let it). Asking again is cheap: a request whose
If-None-Match names the file's ETag, a hash of its content, is answered 304 Not Modified,
without the file.
"""

from __future__ import annotations

import hashlib
import os
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
    stat = target.stat()
    headers = {**CACHE, "etag": _etag(target, stat)}
    response = FileResponse(target, headers=headers, stat_result=stat)
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


# ETags by (path, inode, size, modification and change time): the console has a few dozen
# files, so this stays small; cleared if an unusual install churns through more.
_ETAGS: dict[tuple[str, int, int, int, int], str] = {}
_ETAGS_MAX = 256


def _etag(target: Path, stat: os.stat_result) -> str:
    """The file's ETag, from its content: an upgrade that keeps a module's size and time (an
    install that sets every file's time, a copy keeping times) still changes it, where the
    default one, from size and time, would answer the old module 304."""
    # The change time too: a write in place that restores the modification time moves it.
    key = (str(target), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    tag = _ETAGS.get(key)
    if tag is None:
        if len(_ETAGS) >= _ETAGS_MAX:
            _ETAGS.clear()
        tag = _ETAGS[key] = f'"{hashlib.sha256(target.read_bytes()).hexdigest()[:32]}"'
    return tag
