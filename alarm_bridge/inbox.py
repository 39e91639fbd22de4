"""Several MQTT subscriptions read as one queue, in the order their messages arrived.

The bridge subscribes to exactly the sensors' alarm and status topics, one queue each, but
must handle them as they came: a last will followed by the readings of a sensor back online
raises and clears, the other way round it would leave an alarm standing.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gridpatrol.ingest.mqtt import Message, Subscription


class Inbox:
    """The oldest message across ``subs``, whose arrivals all set ``wake``.

    One network thread numbers (``arrival``) and queues every message in turn, so a queue
    seen empty after every held head was queued cannot later receive a message older than
    those heads: then the head with the lowest number is the next message. Not the earliest
    ``received_at``: the wall clock may step back (NTP) between two arrivals, and a reading
    that came after a last will would be handled before it, raising a spurious
    device_offline. See :meth:`_fill` for how the looks ensure that.
    """

    def __init__(self, subs: list[Subscription], wake: threading.Event) -> None:
        self._subs = subs
        self._wake = wake
        # Each subscription's next message, taken out of its queue but not handed out yet.
        self._heads: list[Message | None] = [None] * len(subs)

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
                    self._heads[index] = sub.get(timeout=0)
                    taken = taken or self._heads[index] is not None
        return any(h is not None for h in self._heads)

    def _take(self) -> Message:
        held = [(h.arrival, i) for i, h in enumerate(self._heads) if h is not None]
        _, index = min(held)
        message = self._heads[index]
        assert message is not None
        self._heads[index] = None
        return message
