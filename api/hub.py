"""In-process notifications: server-sent events for consoles and feed long-poll wake-ups.

Handlers run in worker threads; everything that touches asyncio objects is handed to the
event loop with ``call_soon_threadsafe``. Subscriber queues are bounded: a console that does
not read loses events (counted), it never slows the API down.

With several processes (``gridpatrol api --workers N``) a relay (``gridpatrol.api.bus``) is
attached: what this process publishes is delivered here at once and also handed to the relay,
which brings it to the other processes; they call ``deliver`` / ``wake_feed``, which stay local.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]


class Relay(Protocol):
    """Carries this process's notifications to the other processes; must never block."""

    def send(self, events: list[Event], feed: bool) -> None: ...


class Hub:
    QUEUE_SIZE = 1000

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._feed_waiters: set[asyncio.Future[None]] = set()
        self._relay: Relay | None = None
        self.dropped = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def attach(self, relay: Relay | None) -> None:
        self._relay = relay

    def publish(self, events: list[Event]) -> None:
        """Events of a change this process committed: here and, with a relay, everywhere."""
        self.deliver(events)
        if events and self._relay is not None:
            self._relay.send(events, feed=False)

    def feed_changed(self) -> None:
        """This process gave feed positions: wake long polls here and, with a relay, everywhere."""
        self.wake_feed()
        if self._relay is not None:
            self._relay.send([], feed=True)

    def deliver(self, events: list[Event]) -> None:
        """Hand events to this process's subscribers only (thread-safe)."""
        loop = self._loop
        if events and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fanout, events)

    def wake_feed(self) -> None:
        """Wake this process's feed long polls only (thread-safe)."""
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
