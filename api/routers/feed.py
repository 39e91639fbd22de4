"""The grid platform's pull feed with long-poll and per-token cursors."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from gridpatrol.api.deps import Platform, Services, Svc
from gridpatrol.api.routers.candidates import raw_page
from gridpatrol.api.schemas import AckIn, Page

router = APIRouter(prefix="/api/v1", tags=["feed"])


@router.get("/feed", response_model=Page)
async def feed(
    who: Platform,
    services: Svc,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
) -> Response:
    services.hub.bind(asyncio.get_running_loop())
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        # Listen before looking, so that a change committed while the query runs still wakes
        # this poll. Waiters also look again every GRIDPATROL_FEED_RECHECK_S.
        woken = _listen(services, min(remaining, services.settings.feed_recheck_s))
        try:
            items, last = await run_in_threadpool(services.candidates.feed, who, cursor, limit)
            if items or woken is None or time.monotonic() >= deadline:
                return raw_page(items, str(last))
            await woken
        finally:
            if woken is not None:
                woken.cancel()


def _listen(services: Services, timeout: float) -> asyncio.Task[None] | None:
    """A task that ends on the next feed change or after ``timeout``; None for no wait.

    The task's first step, which registers it with the hub, is queued on the event loop now:
    ahead of the wake-up of any change committed later, which the loop runs after it.
    """
    if timeout <= 0:
        return None
    return asyncio.ensure_future(services.hub.wait_feed(timeout))


@router.post("/feed/ack", status_code=204)
def ack(body: AckIn, who: Platform, services: Svc) -> Response:
    services.candidates.ack(who, int(body.cursor))
    return Response(status_code=204)
