"""The bridge's two subscriptions read as one queue, in arrival order."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from gridpatrol.alarm_bridge.inbox import Inbox
from gridpatrol.ingest.mqtt import Message, Subscription

T0 = datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC)


def test_messages_of_several_subscriptions_come_out_oldest_first() -> None:
    wake = threading.Event()
    alarms = Subscription("p/sensors/+/alarm", 1, 10, wake)
    statuses = Subscription("p/sensors/+/status", 1, 10, wake)
    inbox = Inbox([alarms, statuses], wake)
    assert inbox.get(timeout=0) is None
    arrivals = [(alarms, "a1"), (statuses, "s1"), (statuses, "s2"), (alarms, "a2")]
    for offset, (sub, name) in enumerate(arrivals):
        received_at = T0 + timedelta(microseconds=offset)
        sub._put(Message(name, b"", 1, False, received_at, mid=offset + 1, arrival=offset + 1))
    assert len(inbox) == 4
    got = [inbox.get(timeout=0) for _ in range(5)]
    assert [m.topic if m else None for m in got] == ["a1", "s1", "s2", "a2", None]
    assert len(inbox) == 0


class LookedAtNext(Subscription):
    """A status queue whose first look comes just after the network thread queued an alarm
    and then a status: the alarm queue, looked at before, was still empty then."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__("p/sensors/+/status", 1, 10, wake)
        self.arrivals: list[tuple[Subscription, Message]] = []

    def get(self, timeout: float | None = None) -> Message | None:
        for sub, message in self.arrivals:
            sub._put(message)
        self.arrivals = []
        return super().get(timeout)


def test_a_message_queued_just_after_its_queue_was_seen_empty_still_comes_first() -> None:
    wake = threading.Event()
    alarms = Subscription("p/sensors/+/alarm", 1, 10, wake)
    alarm = Message("alarm", b"", 1, False, T0, mid=1, arrival=1)
    status = Message("status", b"", 1, False, T0 + timedelta(microseconds=1), mid=2, arrival=2)
    statuses = LookedAtNext(wake)
    statuses.arrivals = [(alarms, alarm), (statuses, status)]
    inbox = Inbox([alarms, statuses], wake)
    got = [inbox.get(timeout=0) for _ in range(3)]
    assert [m.topic if m else None for m in got] == ["alarm", "status", None]


def test_messages_come_out_in_arrival_order_when_the_clock_steps_back_between_them() -> None:
    """A last will, then the wall clock set back 2 s (NTP), then a reading of the sensor back
    online: the last will is still handled first, by its connection's numbering (before, the
    reading was, and the last will after it raised a device_offline the reading had already
    answered)."""
    wake = threading.Event()
    alarms = Subscription("p/sensors/+/alarm", 1, 10, wake)
    statuses = Subscription("p/sensors/+/status", 1, 10, wake)
    inbox = Inbox([alarms, statuses], wake)
    statuses._put(Message("status", b"offline", 1, False, T0, mid=1, arrival=1))
    alarms._put(Message("alarm", b"", 1, False, T0 - timedelta(seconds=2), mid=2, arrival=2))
    got = [inbox.get(timeout=0) for _ in range(3)]
    assert [m.topic if m else None for m in got] == ["status", "alarm", None]
