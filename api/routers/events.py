"""Server-sent events of candidate changes, for the review console.

Each event's id is ``<updated_at>|<candidate id>``. A client that reconnects with it (the
``Last-Event-ID`` header a browser sends by itself, or ``?since=`` on a new connection) first
gets ``candidate.changed`` for every candidate changed since, less a margin; the client
fetches what it needs, so the duplicates the margin brings are harmless. When that is too
much to replay, when the id is not one of ours, or when the client fell so far behind that
its queue overflowed, it gets ``event: reset`` instead: load the list again. After an
overflow the stream ends there (the browser reconnects from the reset's id).

A stream opened with a console session ends when that session does (logged out on any
instance, or expired): before a change is sent and at each keepalive, its expiry is checked,
and its logout at most every SESSION_RECHECK_S, so a browser left open after its reviewer
logged out elsewhere sees no more cases after that. The browser
reconnects, gets 401 and the console shows its login form.

When the server is told to stop, the stream ends at once: the server would otherwise wait for
the client to leave, and the browser reconnects (to another instance, or to this one when it
is back) with the last id it got, so it misses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from gridpatrol.api.auth import Authenticator, ConsoleSession
from gridpatrol.api.deps import Reviewer, Services, Svc
from gridpatrol.api.hub import RESET, stopping, unless_stopping
from gridpatrol.api.metrics import Metrics
from gridpatrol.api.service import CASE_CLOCK_LEAD

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["events"])
KEEPALIVE_S = 15.0
# Changes are committed in another order than their updated_at was read, and instances'
# clocks differ a little: replay from this much before the last id.
REPLAY_MARGIN = timedelta(seconds=5)
# A write may be stamped up to CASE_CLOCK_LEAD ahead of its instance's clock: the margin must
# cover it, or a replay from such an event's id would miss changes other instances made.
if CASE_CLOCK_LEAD >= REPLAY_MARGIN:
    raise RuntimeError("CASE_CLOCK_LEAD must stay below REPLAY_MARGIN")
REPLAY_MAX = 500
# How often an open stream asks whether its console session was logged out: a logout ends
# the streams of its session within this much time (at the next change sent or keepalive).
SESSION_RECHECK_S = 5.0
EventId = Annotated[str | None, Query(max_length=200)]


@dataclass
class SessionWatch:
    """Whether the console session a stream was opened with has ended: its expiry at every
    ask, its logout (a database lookup) at most every SESSION_RECHECK_S, so a hundred open
    consoles do not each look it up for every change they are sent."""

    auth: Authenticator
    session: ConsoleSession | None
    monotonic: Callable[[], float] = field(default_factory=lambda: time.monotonic)
    checked: float = field(init=False)
    failing: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.checked = self.monotonic()

    async def ended(self) -> bool:
        session = self.session
        if session is None:
            return False  # a bearer token's stream: the token is checked at each connection
        if session.expires < time.time():
            return True
        if self.monotonic() - self.checked < SESSION_RECHECK_S:
            return False
        self.checked = self.monotonic()
        try:
            open_ = await self.auth.still_open(session)
        except SQLAlchemyError as exc:
            # A logout the database cannot record is not recorded either: the stream goes on
            # (a busy pool would otherwise end every console's stream at once).
            if not self.failing:
                log.warning(
                    "the session of %s's event stream cannot be checked: %s",
                    session.principal.name,
                    exc,
                )
            self.failing = True
            return False
        self.failing = False
        return not open_


def replay_start(value: str) -> datetime | None:
    """The instant of an event id (``<updated_at>|<candidate id>``) less the margin, in UTC;
    None when it is not one, also for an instant too near the ends of the calendar for that."""
    try:
        at = datetime.fromisoformat(value.split("|", 1)[0])
        if at.tzinfo is None:
            return None
        # Both overflow near year 1 or 9999 (e.g. +14:00 on 0001-01-01): no id of ours.
        return at.astimezone(UTC) - REPLAY_MARGIN
    except (ValueError, OverflowError):
        return None


def message(kind: str, data: dict[str, Any], event_id: str) -> str:
    body = json.dumps(data, ensure_ascii=False)
    return f"id: {event_id}\nevent: {kind}\ndata: {body}\n\n"


def change_message(kind: str, data: dict[str, Any]) -> str:
    return message(kind, data, f"{data['updated_at']}|{data['id']}")


def reset_message(reason: str, now: datetime) -> str:
    # Its id is the present: a reconnect after it replays only what changed after the reload.
    return message(RESET, {"reason": reason}, f"{now.isoformat()}|")


async def replay(services: Services, resume: str, now: datetime) -> list[str]:
    """What changed since the event id ``resume`` (less the margin), or a reset."""
    start = replay_start(resume)
    if start is None:
        return [reset_message("unknown_id", now)]
    rows = await run_in_threadpool(services.candidates.changed_since, start, REPLAY_MAX + 1)
    if len(rows) > REPLAY_MAX:
        return [reset_message("too_many", now)]
    return [change_message("candidate.changed", data) for data in rows]


@router.get("/events", response_class=StreamingResponse)
async def events(
    request: Request,
    _who: Reviewer,
    services: Svc,
    since: EventId = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=200)] = None,
) -> StreamingResponse:
    hub = services.hub
    hub.bind(asyncio.get_running_loop())
    metrics: Metrics = request.app.state.metrics
    # Subscribed before the replay is read: a change committed in between comes twice,
    # never not at all.
    queue = hub.subscribe()
    resume = last_event_id or since
    now = services.clock()
    stop = stopping(request.app.state)
    watch = SessionWatch(services.auth, getattr(request.state, "console_session", None))

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            for text in await replay(services, resume, now) if resume else []:
                yield text
            while not stop.is_set() and not await request.is_disconnected():
                try:
                    _, event = await unless_stopping(
                        asyncio.wait_for(queue.get(), KEEPALIVE_S), stop
                    )
                except TimeoutError:
                    if await watch.ended():
                        return
                    yield ": keepalive\n\n"
                    continue
                if event is None or await watch.ended():
                    # The server stops, or the session ended: the browser reconnects with
                    # the last id, or gets 401.
                    return
                kind, data = event
                if kind == RESET:
                    metrics.sse_dropped.inc(data["dropped"])
                    yield reset_message(data["reason"], services.clock())
                    return
                yield change_message(kind, data)
        finally:
            hub.unsubscribe(queue)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
