"""Several MQTT subscriptions read as one queue, in the order their messages arrived.

The bridge subscribes to exactly the sensors' alarm and status topics, one queue each, but
must handle them as they came: a last will followed by the readings of a sensor back online
raises and clears, the other way round it would leave an alarm standing.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gridpatrol.ingest.mqtt import Message, Subscription

Put = Callable[["Message"], "Message | None"]


class Inbox:
    """The oldest message across ``subs``, whose arrivals all set ``wake``.

    Every message is numbered as it is queued, under one lock for all the subscriptions: the
    next message is the held head with the lowest number. Not by ``received_at``: the wall
    clock may step back (NTP) between two arrivals, and a reading that came after a last will
    would be handled before it, raising a spurious device_offline. See :meth:`_fill` for how
    the looks ensure that every earlier message is held when the next one is handed out.
    """

    def __init__(self, subs: list[Subscription], wake: threading.Event) -> None:
        self._subs = subs
        self._wake = wake
        # Reentrant: a queue's put may run inside a look at another (on one thread, in tests).
        self._lock = threading.RLock()
        self._arrivals = itertools.count()
        # Per subscription, the numbers of the messages in its queue, oldest first: a queue is
        # first in, first out, and only this inbox takes from it.
        self._numbers: list[deque[int]] = [deque() for _ in subs]
        # Each subscription's next message and its number, taken out of its queue but not
        # handed out yet.
        self._heads: list[tuple[int, Message] | None] = [None] * len(subs)
        with self._lock:
            for index, sub in enumerate(subs):
                # Queued before the inbox took over the queue (the connection is started
                # after the bridge subscribes, so normally none): numbered as they stand.
                self._numbers[index].extend(next(self._arrivals) for _ in range(len(sub)))
                # The subscription offers no hook of its own: its put is wrapped, so that the
                # network thread numbers each message as it queues it.
                setattr(sub, "_put", self._numbering(index, sub._put))  # noqa: B010

    def _numbering(self, index: int, put: Put) -> Put:
        def numbered_put(message: Message) -> Message | None:
            with self._lock:
                evicted = put(message)
                numbers = self._numbers[index]
                if evicted is not None and numbers:
                    numbers.popleft()  # the queue was full: its oldest went
                numbers.append(next(self._arrivals))
                return evicted

        return numbered_put

    def get(self, timeout: float) -> Message | None:
        """The next message, waiting up to ``timeout`` s for one; None when nothing came."""
        if not self._fill():
            self._wake.clear()
            # A message queued between the look and the clear has set wake before it.
            if not self._fill() and not (self._wake.wait(timeout) and self._fill()):
                return None
        return self._take()

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs) + sum(h is not None for h in self._heads)

    def _fill(self) -> bool:
        """Take the head of every queue whose head is not held yet; True when any is held.

        The queues are looked at one after the other: a message may land in one just after
        it was seen empty, followed by a later one in a queue looked at next. So the empty
        queues are looked at again until a round takes nothing new: by then each was seen
        empty after every held head had been queued.
        """
        taken = True
        while taken:
            taken = False
            for index, sub in enumerate(self._subs):
                if self._heads[index] is None:
                    with self._lock:  # the message and its number together
                        message = sub.get(timeout=0)
                        if message is None:
                            continue
                        numbers = self._numbers[index]
                        # One queued around the wrapping, unnumbered: last of all so far.
                        number = numbers.popleft() if numbers else next(self._arrivals)
                    self._heads[index] = (number, message)
                    taken = True
        return any(h is not None for h in self._heads)

    def _take(self) -> Message:
        held = [(h[0], i) for i, h in enumerate(self._heads) if h is not None]
        _, index = min(held)
        head = self._heads[index]
        assert head is not None
        self._heads[index] = None
        return head[1]
