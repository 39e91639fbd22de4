"""In-process notifications: server-sent events for consoles and feed long-poll wake-ups.

Handlers run in worker threads; everything that touches asyncio objects is handed to the
event loop with ``call_soon_threadsafe``. Subscriber queues are bounded: a console that does
not keep up never slows the API down. When its queue is full, what it holds and what did not
fit is dropped (counted) and replaced by one ``reset`` event, after which the subscriber gets
nothing more: its stream tells the console to load its list again and ends.

Feed long polls wait on a generation counter as well as a future, so a wake-up between a
poll's read of the database and its wait is not lost (``wait_feed(since_generation=...)``).

With several processes (``gridpatrol api --workers N``) a relay (``gridpatrol.api.bus``) is
attached: what this process publishes is delivered here at once and also handed to the relay,
which brings it to the other processes; they call ``deliver`` / ``wake_feed``, which stay local.

Event streams and feed long polls also wait for the server to stop (``stopping``): told to
stop, ``gridpatrol api`` waits for its open connections, and a stream would hold it until its
client left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]
# What an overflowing subscriber gets instead of the events it could not take; its data says
# how many were dropped.
RESET = "reset"
T = TypeVar("T")


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
        # Moved (from any thread) by every feed wake-up, before the waiters are woken.
        self.feed_generation = 0
        self._generation_lock = threading.Lock()

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
        with self._generation_lock:
            self.feed_generation += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_feed)

    async def wait_feed(self, timeout: float, since_generation: int | None = None) -> None:
        """Return when the feed may have new positions, or after ``timeout`` seconds.

        With ``since_generation`` (``feed_generation`` read before the caller looked at the
        database) it returns at once when a wake-up came since: that one found no waiter.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._feed_waiters.add(future)
        try:
            if since_generation is not None and self.feed_generation != since_generation:
                return
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
        for queue in list(self._subscribers):
            for index, event in enumerate(events):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._overflow(queue, len(events) - index)
                    break

    def _overflow(self, queue: asyncio.Queue[Event], refused: int) -> None:
        """A subscriber fell behind: events it would get now are stale anyway, so it gets a
        reset instead (and nothing more), and its console loads the list again."""
        dropped = refused
        while not queue.empty():
            queue.get_nowait()
            dropped += 1
        self.dropped += dropped
        self._subscribers.discard(queue)
        queue.put_nowait((RESET, {"reason": "overflow", "dropped": dropped}))

    def _wake_feed(self) -> None:
        for future in list(self._feed_waiters):
            if not future.done():
                future.set_result(None)


def stopping(state: Any) -> asyncio.Event:
    """The event the server sets when it is told to stop (``app.state.stopping``, put there by
    ``gridpatrol api``); a new one that is never set for an app served otherwise (tests)."""
    event = getattr(state, "stopping", None)
    return event if isinstance(event, asyncio.Event) else asyncio.Event()


async def unless_stopping(awaitable: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """``(True, result)`` of ``awaitable``, or ``(False, None)`` as soon as ``stop`` is set
    (``awaitable`` is cancelled then). Its exceptions propagate."""
    if stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # never started: no "never awaited" warning
        return False, None
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopped):
            task.cancel()
    if work.done() and not work.cancelled():
        return True, work.result()  # also when both are done: nothing is dropped
    await asyncio.wait({work})  # its cancellation has run: a queue.get() it held is given up
    return False, None
