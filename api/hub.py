"""In-process notifications: server-sent events for consoles and feed long-poll wake-ups.

Handlers run in worker threads; everything that touches asyncio objects is handed to the
event loop with ``call_soon_threadsafe``. Subscriber queues are bounded: a console that does
not read loses events (counted), it never slows the API down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]


class Hub:
    QUEUE_SIZE = 1000

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._feed_waiters: set[asyncio.Future[None]] = set()
        self.dropped = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, events: list[Event]) -> None:
        loop = self._loop
        if events and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fanout, events)

    def feed_changed(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_feed)

    async def wait_feed(self, timeout: float) -> None:
        """Return when the feed may have new positions, or after ``timeout`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._feed_waiters.add(future)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
        finally:
            self._feed_waiters.discard(future)

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self.QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(queue)

    def _fanout(self, events: list[Event]) -> None:
        for queue in self._subscribers:
            for event in events:
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self.dropped += 1

    def _wake_feed(self) -> None:
        for future in list(self._feed_waiters):
            if not future.done():
                future.set_result(None)
