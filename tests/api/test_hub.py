"""The hub's feed wake-ups: a long poll that looked at the database misses none."""

from __future__ import annotations

import asyncio
import threading

from gridpatrol.api.hub import Hub

GUARD_S = 60  # far beyond an immediate return, far below the waits' own timeouts
WAIT_S = 3600


def test_a_wake_between_a_polls_read_and_its_wait_is_not_lost() -> None:
    async def scenario() -> tuple[int, int]:
        hub = Hub()
        hub.bind(asyncio.get_running_loop())
        seen = hub.feed_generation
        # Another thread commits and wakes the feed while the poll reads the database.
        writer = threading.Thread(target=hub.wake_feed)
        writer.start()
        writer.join()
        await asyncio.wait_for(hub.wait_feed(WAIT_S, since_generation=seen), GUARD_S)
        return seen, hub.feed_generation

    seen, now = asyncio.run(scenario())
    assert now == seen + 1


def test_a_wait_from_the_current_generation_waits_for_the_next_wake() -> None:
    async def scenario() -> bool:
        hub = Hub()
        hub.bind(asyncio.get_running_loop())
        waiter = asyncio.create_task(hub.wait_feed(WAIT_S, since_generation=hub.feed_generation))
        await asyncio.sleep(0)  # the waiter is waiting
        woken_early = waiter.done()
        threading.Thread(target=hub.wake_feed).start()
        await asyncio.wait_for(waiter, GUARD_S)
        return woken_early

    assert asyncio.run(scenario()) is False
    # The old signature still works.
    asyncio.run(Hub().wait_feed(0))
