"""bench/mqtt.py rates: over the time frames arrived, not the wait for ones that never do."""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from gridpatrol.ingest.mqtt import Message

Bench = Callable[[str], ModuleType]


class Clock:
    """Monotonic time that moves only when the stand-ins below say so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


class Queue:
    """A subscription's queue; waiting on it when empty costs the whole timeout."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.items: list[Message] = []
        self.dropped = 0

    def get(self, timeout: float | None = None) -> Message | None:
        if self.items:
            return self.items.pop(0)
        self.clock.now += timeout or 0.0
        return None


class Broker:
    """Publisher and subscriber connections on one broker that loses the listed frames."""

    def __init__(self, clock: Clock, lose: set[int], publish_s: float) -> None:
        self.clock, self.lose, self.publish_s = clock, lose, publish_s
        self.queue = Queue(clock)
        self.published = 0

    def connection(self, *_args: Any, **_kwargs: Any) -> Any:
        broker = self

        class Connection:
            def subscribe(self, topic: str, qos: int, maxsize: int) -> Queue:
                return broker.queue

            def start(self) -> bool:
                return True

            def stop(self) -> None:
                pass

            def publish(self, topic: str, payload: bytes, qos: int) -> bool:
                broker.clock.now += broker.publish_s
                if broker.published not in broker.lose:
                    message = Message(
                        topic, payload, qos, False, datetime.now(UTC), broker.published
                    )
                    broker.queue.items.append(message)
                broker.published += 1
                return True

            publish_wait = publish

        return Connection()


def frames_through(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, lose: set[int]
) -> tuple[dict[str, Any], int]:
    """bench_frames for 1 s at one publish per 0.25 s on the stand-in broker."""
    mqtt = bench("mqtt")
    clock = Clock()
    broker = Broker(clock, lose, 0.25)
    monkeypatch.setattr(mqtt, "time", clock)
    monkeypatch.setattr(mqtt, "MqttConnection", broker.connection)
    jpeg = b"\xff\xd8 stand-in jpeg \xff\xd9"
    stand_in = types.SimpleNamespace(settings=None)
    return mqtt.bench_frames(stand_in, jpeg, (1280, 720), 1.0), len(jpeg)


def test_frame_rate_counts_up_to_the_last_arrival_when_frames_are_lost(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Frames at 0.25, 0.5, 0.75 and 1.0 s; the last is lost, so the bench waits for it in vain.
    result, size = frames_through(bench, monkeypatch, lose={3})
    assert result == {
        "sent": 4,
        "received": 3,
        "per_s": 3 / 0.75,
        "mb_per_s": 3 * size / 0.75 / 1e6,
        "lost_pct": 25.0,
    }


def test_no_frame_arriving_gives_a_rate_of_zero(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _ = frames_through(bench, monkeypatch, lose={0, 1, 2, 3})
    assert result == {"sent": 4, "received": 0, "per_s": 0.0, "mb_per_s": 0.0, "lost_pct": 100.0}


def test_no_alarm_arriving_gives_a_rate_of_zero(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    mqtt = bench("mqtt")
    clock = Clock()
    broker = Broker(clock, lose=set(range(10)), publish_s=0.0)

    def burst(_broker: Any, count: int) -> float:
        for i in range(count):
            broker.connection().publish("alarm", mqtt.alarm(i), 1)
        return 0.0

    conn = broker.connection()
    conn.ack = lambda message: None
    monkeypatch.setattr(mqtt, "time", clock)
    monkeypatch.setattr(mqtt, "consumer", lambda _broker, tag: (conn, broker.queue))
    monkeypatch.setattr(mqtt, "publish_burst", burst)
    result = mqtt.bench_alarms_online(types.SimpleNamespace(), 10)
    assert result == {"sent": 10, "received": 0, "per_s": 0.0, "lost": 10}
    assert broker.published == 10


class LaggingQueue(Queue):
    """A consumer behind: the n-th frame comes out 2n s after the start, long after the
    publishing ends, each within the bench's idle wait of the one before."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.taken = 0

    def get(self, timeout: float | None = None) -> Message | None:
        due = 1000.0 + 2.0 * (self.taken + 1)
        if self.items and due <= self.clock.now + (timeout or 0.0):
            self.clock.now = max(self.clock.now, due)
            self.taken += 1
            return self.items.pop(0)
        self.clock.now += timeout or 0.0
        return None


def test_a_backlog_still_arriving_after_the_publishing_is_taken_and_decoded(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four frames published by 1 s arrive at 2, 4, 6 and 8 s: all are received and each is
    decoded, as the frames taken while publishing are, and the rate runs to the last."""
    mqtt = bench("mqtt")
    clock = Clock()
    broker = Broker(clock, set(), 0.25)
    broker.queue = LaggingQueue(clock)
    decoded: list[int] = []
    decode = mqtt.decode_frame

    def counting(payload: bytes, **kw: Any) -> Any:
        frame = decode(payload, **kw)
        decoded.append(frame.header.seq)
        return frame

    monkeypatch.setattr(mqtt, "time", clock)
    monkeypatch.setattr(mqtt, "MqttConnection", broker.connection)
    monkeypatch.setattr(mqtt, "decode_frame", counting)
    jpeg = b"\xff\xd8 stand-in jpeg \xff\xd9"
    result = mqtt.bench_frames(types.SimpleNamespace(settings=None), jpeg, (1280, 720), 1.0)
    assert result == {
        "sent": 4,
        "received": 4,
        "per_s": 4 / 8.0,
        "mb_per_s": 4 * len(jpeg) / 8.0 / 1e6,
        "lost_pct": 0.0,
    }
    assert decoded == [0, 1, 2, 3]
