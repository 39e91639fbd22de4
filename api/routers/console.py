"""The review console: static files under ``api/static/``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from gridpatrol.api.problems import Problem

router = APIRouter(tags=["console"], include_in_schema=False)
STATIC = Path(str(files("gridpatrol.api").joinpath("static"))).resolve()


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/review")


@router.get("/review")
def index() -> FileResponse:
    return _file("index.html")


@router.get("/review/static/{path:path}")
def static(path: str) -> FileResponse:
    return _file(path)


def _file(path: str) -> FileResponse:
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise Problem(404, f"no console file {path}")
    return FileResponse(target)
