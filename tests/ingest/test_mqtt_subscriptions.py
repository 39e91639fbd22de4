"""MqttConnection.subscribe / unsubscribe from several threads at once (snapshot workers)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings, Subscription

SETTINGS = MqttSettings.from_url("mqtt://127.0.0.1:1883")


class _ReadTogether(list[Subscription]):
    """A subscription list whose first two readers wait for each other inside the read: the
    widest window a read-modify-write of the list can have. A reader that waits in vain (the
    other is held off by a lock) goes on after the barrier's timeout."""

    def __init__(self, subs: list[Subscription], barrier: threading.Barrier) -> None:
        super().__init__(subs)
        self.barrier = barrier

    def __iter__(self) -> Iterator[Subscription]:
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return super().__iter__()


def _side_by_side(conn: MqttConnection, *actions: Callable[[], object]) -> None:
    conn._subs = _ReadTogether(conn._subs, threading.Barrier(len(actions), timeout=1.0))
    threads = [threading.Thread(target=action) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_subscribes_keep_every_subscription() -> None:
    conn = MqttConnection("subs-test", SETTINGS)  # never started: no broker needed
    _side_by_side(
        conn, lambda: conn.subscribe("p/cameras/a/snapshot"), lambda: conn.subscribe("p/b")
    )
    assert sorted(s.topic_filter for s in conn._subs) == ["p/b", "p/cameras/a/snapshot"]


def test_concurrent_unsubscribes_remove_every_subscription() -> None:
    conn = MqttConnection("subs-test", SETTINGS)
    first, second, kept = conn.subscribe("p/a"), conn.subscribe("p/b"), conn.subscribe("p/c")
    _side_by_side(conn, lambda: conn.unsubscribe(first), lambda: conn.unsubscribe(second))
    assert list(conn._subs) == [kept]


class _SubscribeWhileConnecting(list[Subscription]):
    """The first read of the list (the connect handler's) lets another thread subscribe
    meanwhile and waits up to a second for it: the moment between the handler reading the
    list and the connection counting as up."""

    def __init__(self, conn: MqttConnection, topic: str) -> None:
        super().__init__()
        self.conn, self.topic = conn, topic
        self.fired = False
        self.made: list[Subscription] = []

    def __iter__(self) -> Iterator[Subscription]:
        if not self.fired:
            self.fired = True
            other = threading.Thread(
                target=lambda: self.made.append(self.conn.subscribe(self.topic))
            )
            other.start()
            other.join(timeout=1.0)  # held off by a lock in the handler: go on
        return super().__iter__()


def test_a_subscription_made_while_connecting_reaches_the_broker(mqtt_prefix: str) -> None:
    topic = f"{mqtt_prefix}/race/late"
    conn = MqttConnection("subs-race", SETTINGS, prefix=mqtt_prefix)
    hook = _SubscribeWhileConnecting(conn, topic)
    conn._subs = hook
    try:
        assert conn.start(timeout=10)
        for _ in range(100):  # the other thread's subscribe, however late the lock lets it
            if hook.made:
                break
            threading.Event().wait(0.05)
        (sub,) = hook.made
        assert conn.publish(topic, b"hello", qos=1)
        message = sub.get(5)
        assert message is not None and message.payload == b"hello"
    finally:
        conn.stop()


def test_messages_are_numbered_in_the_order_their_connection_received_them(
    mqtt_prefix: str,
) -> None:
    """Across subscriptions, for consumers that read several in arrival order (the bridge's
    alarm and status queues): by number, not by the wall clock, which may step back."""
    conn = MqttConnection("subs-arrival", SETTINGS, prefix=mqtt_prefix)
    alarms = conn.subscribe(f"{mqtt_prefix}/sensors/+/alarm", qos=1)
    statuses = conn.subscribe(f"{mqtt_prefix}/sensors/+/status", qos=1)
    sent = [f"{mqtt_prefix}/sensors/s{i}/{'alarm' if i % 3 else 'status'}" for i in range(12)]
    try:
        assert conn.start(timeout=10)
        for topic in sent:  # one publisher, QoS 1: the broker keeps their order
            assert conn.publish_wait(topic, b"x", qos=1)
        got = [alarms.get(5) for _ in range(8)] + [statuses.get(5) for _ in range(4)]
    finally:
        conn.stop()
    assert None not in got
    arrived = sorted((m.arrival, m.topic) for m in got if m is not None)
    assert [topic for _, topic in arrived] == sent
    assert len({arrival for arrival, _ in arrived}) == len(sent)
