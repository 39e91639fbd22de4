"""The review console: static files under ``api/static/``.

Each is served with ``Cache-Control: no-cache``: a browser asks again before using a copy it
holds, so after an upgrade it never runs a new module next to an old one it imports (freshness
guessed from Last-Modified alone would let it). Asking again is cheap: a request whose
If-None-Match names the file's ETag, a hash of its content, is answered 304 Not Modified,
without the file.
"""

from __future__ import annotations

import errno
import hashlib
import os
from importlib.resources import files
from pathlib import Path
from stat import S_ISREG

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
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
    found = _lookup(path)
    if found is None:
        raise Problem(404, f"no console file {path}")
    target, stat, etag = found
    response = FileResponse(target, headers={**CACHE, "etag": etag}, stat_result=stat)
    if not_modified(request.headers.get("if-none-match"), etag):
        return NotModifiedResponse(response.headers)
    return response


# Errors that mean no file has the name: none there (or gone since the look), or a name too
# long for the OS. Any other (a denied or failing read) is the server's fault, answered 500.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})


def _lookup(path: str) -> tuple[Path, os.stat_result, str] | None:
    """The regular file ``path`` names under STATIC, its stat and ETag; None for no such file,
    one outside STATIC or a name with a NUL byte."""
    try:
        target = (STATIC / path).resolve()
        if not target.is_relative_to(STATIC):
            return None
        stat = target.stat()
        if not S_ISREG(stat.st_mode):
            return None
        return target, stat, _etag(target, stat)
    except ValueError:  # a NUL byte, which no path may hold
        return None
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether a request's If-None-Match names ``etag`` (or is ``*``), by the weak comparison
    of RFC 9110: the copy the client holds is current. If-Modified-Since is not consulted: a
    file replaced by an older one would pass it."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


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
