"""Liveness, Prometheus metrics, the candidate types and the site's time zone."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from gridpatrol.api.deps import AnyRole, Svc
from gridpatrol.api.schemas import TypeInfo
from gridpatrol.site import TYPE_NAMES

router = APIRouter(prefix="/api/v1", tags=["meta"])


@router.get("/healthz")
async def healthz(response: Response) -> dict[str, str]:
    # On the event loop and without the database: it answers while the thread pool is taken
    # by requests waiting for a slow database (a plain function would queue behind them).
    # Which worker process answered: lets a check (or a test) tell ``--workers N`` apart.
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return {"status": "ok"}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/types")
def types(_who: AnyRole, services: Svc) -> list[TypeInfo]:
    policy = services.policy
    return [
        TypeInfo(
            type=name,
            name_zh=zh,
            name_en=en,
            unit=policy.suggested_unit(name),
            urgent=name in policy.policy.urgent_types,
        )
        for name, (zh, en) in TYPE_NAMES.items()
    ]


class SiteInfo(BaseModel):
    timezone: str


@router.get("/site")
def site(_who: AnyRole, services: Svc) -> SiteInfo:
    """The site's time zone (IANA name; the default when the API runs without a site file):
    the console shows times and reads its time filters in it, whatever the browser's zone."""
    return SiteInfo(timezone=services.policy.tz.key)
