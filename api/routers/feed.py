"""The grid platform's pull feed with long-poll and per-token cursors.

A waiting long poll answers at once when the server is told to stop, as it would at its
deadline: the server would otherwise wait up to 30 s for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from gridpatrol.api.deps import Platform, Svc
from gridpatrol.api.hub import stopping, unless_stopping
from gridpatrol.api.routers.candidates import raw_page
from gridpatrol.api.schemas import FEED_CURSOR, AckIn, Page

router = APIRouter(prefix="/api/v1", tags=["feed"])


@router.get("/feed", response_model=Page)
async def feed(
    request: Request,
    who: Platform,
    services: Svc,
    cursor: Annotated[str | None, Query(pattern=FEED_CURSOR)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> Response:
    """Confirmed candidates after ``cursor`` (by default the token's acknowledged one), in the
    order they became visible: each once, at its latest position (a visible change moves a
    case to the end). Cases held for the night enter it when the window ends."""
    hub = services.hub
    hub.bind(asyncio.get_running_loop())
    deadline = time.monotonic() + wait
    stop = stopping(request.app.state)
    while True:
        # Read before looking, so that a change committed while the query runs still ends
        # the wait. Waiters also look again every GRIDPATROL_FEED_RECHECK_S.
        generation = hub.feed_generation
        items, last = await run_in_threadpool(services.candidates.feed, who, cursor, limit)
        remaining = deadline - time.monotonic()
        if items or remaining <= 0 or stop.is_set():
            return raw_page(items, str(last))
        timeout = min(remaining, services.settings.feed_recheck_s)
        await unless_stopping(hub.wait_feed(timeout, since_generation=generation), stop)


@router.post("/feed/ack", status_code=204)
def ack(body: AckIn, who: Platform, services: Svc) -> Response:
    services.candidates.ack(who, int(body.cursor))
    return Response(status_code=204)
