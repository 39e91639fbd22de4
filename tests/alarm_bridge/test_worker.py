"""The worker loop on the real broker: batches, acknowledgements, a message that trips a bug."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from gridpatrol.alarm_bridge import candidates, store, worker
from gridpatrol.alarm_bridge.uptime import SETTLE_S
from gridpatrol.alarm_bridge.worker import RESEND_BURST_S, BatchResult, Bridge, BridgeCore
from gridpatrol.api.client import Outbox
from gridpatrol.ingest.messages import MAX_SENSOR_BYTES
from gridpatrol.ingest.mqtt import (
    DEFAULT_MAX_PACKET_SIZE,
    Message,
    MqttConnection,
    MqttSettings,
    Subscription,
    publish_overhead,
)
from gridpatrol.ingest.topics import (
    component_status_topic,
    deadletter_topic,
    sensor_alarm_topic,
    sensor_status_topic,
)

from ..conftest import Mosquitto
from .conftest import make_site, outbox_ops

SETTINGS = MqttSettings.from_url("mqtt://127.0.0.1:1883")


def envelope(event_id: str, transition: str = "raise") -> bytes:
    body = {
        "schema": "gridalarm/1",
        "event_id": event_id,
        "sensor_id": "sm-1",
        "alarm_type": "smoke",
        "transition": transition,
        "severity": "MAJOR",
        "ts": 1_790_000_000 + int(event_id),
    }
    return json.dumps(body).encode()


@pytest.fixture
def running(tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    site = make_site(mqtt_prefix)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection(
        "alarm_bridge",
        SETTINGS,
        prefix=mqtt_prefix,
        persistent=True,
        manual_ack=True,
        client_id=f"gp-test-bridge-{mqtt_prefix}",
    )
    bridge = Bridge(site, outbox, conn, None, progress_s=3600)
    handle = BridgeCore.handle

    def buggy(
        self: BridgeCore, txn: Any, topic: str, payload: bytes, *rest: Any, **kw: Any
    ) -> None:
        if b'"event_id": "13"' in payload:
            raise KeyError("a bug this message trips")
        handle(self, txn, topic, payload, *rest, **kw)

    monkeypatch.setattr(BridgeCore, "handle", buggy)
    conn.start()
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    yield bridge, outbox, thread
    bridge.stop()
    thread.join(10)
    conn.stop()


def test_a_message_that_trips_a_bug_is_dead_lettered_and_the_rest_go_on(
    running: Any, mqtt_prefix: str
) -> None:
    bridge, outbox, thread = running
    watch = MqttConnection("bug-watch", SETTINGS, prefix=mqtt_prefix)
    dead = watch.subscribe(deadletter_topic(mqtt_prefix, "alarm_bridge"), qos=1)
    watch.start()
    topic = sensor_alarm_topic(mqtt_prefix, "sm-1")
    for event_id in ("11", "12", "13", "14"):
        transition = "raise" if event_id == "11" else "update"
        assert watch.publish_wait(topic, envelope(event_id, transition), qos=1)
    letter = dead.get(timeout=20)
    watch.stop()
    assert letter is not None
    body = json.loads(letter.payload)
    assert body["reason"] == "internal_error"
    assert body["error"] == "KeyError: 'a bug this message trips'"
    assert b'"event_id": "13"' in base64.b64decode(body["payload_b64"])
    deadline = time.monotonic() + 20
    while bridge.core.counts.updated + bridge.core.counts.dead_letters < 3:
        assert time.monotonic() < deadline, bridge.core.counts
        time.sleep(0.1)
    counts = bridge.core.counts
    assert (counts.created, counts.updated, counts.dead_letters) == (1, 2, 1)
    bridge.stop()
    thread.join(30)  # the loop ends and queues the coalesced update
    assert not thread.is_alive()
    kinds = [k for k, _, _ in outbox_ops(outbox)]
    assert kinds == ["evidence", "create", "patch"]
    assert outbox_ops(outbox)[-1][2]["alarm"]["count"] == 3  # 11, 12 and 14


def _wait_until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _broker_gone(broker: Any, conn: MqttConnection) -> None:
    broker.stop()
    _wait_until(lambda: not conn.connected, "still connected")


def _broker_back(broker: Any, conn: MqttConnection) -> None:
    broker.start()
    assert conn.wait_connected(30)


def _offline_creates(outbox: Outbox) -> list[tuple[str, str]]:
    return [
        (b["source"]["sensor_id"], b["occurred_at"])
        for k, _, b in outbox_ops(outbox)
        if k == "create" and b["type"] == "device_offline"
    ]


def test_a_payload_over_the_size_limit_is_dead_lettered_cut_with_its_size(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """Whole, a payload of hundreds of MB would make its dead letter too large to publish.
    One of exactly the limit (bad JSON) is carried whole; one over it (too_large) is cut to
    the limit, with its size."""
    site = make_site(mqtt_prefix)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection("alarm_bridge", SETTINGS, prefix=mqtt_prefix)
    bridge = Bridge(site, outbox, conn, None, progress_s=3600)
    watch = MqttConnection("big-watch", SETTINGS, prefix=mqtt_prefix)
    dead = watch.subscribe(deadletter_topic(mqtt_prefix, "alarm_bridge"), qos=1)
    topic = sensor_alarm_topic(mqtt_prefix, "sm-1")
    at_limit = b"x" * MAX_SENSOR_BYTES
    over = bytes(range(256)) * (MAX_SENSOR_BYTES // 256 + 40)  # 10 KiB over
    before = datetime.now(UTC)
    assert conn.start(10) and watch.start(10)
    try:
        for payload in (at_limit, over):
            assert watch.publish_wait(topic, payload, qos=1)
        _pump(bridge, 2)
        letters = [dead.get(timeout=20) for _ in range(2)]
    finally:
        watch.stop()
        conn.stop()
    after = datetime.now(UTC)
    bodies = [json.loads(letter.payload) for letter in letters if letter is not None]
    for body in bodies:
        assert before <= datetime.fromisoformat(body.pop("received_at")) <= after
    assert bodies == [
        {
            "reason": "bad_json",
            "topic": topic,
            "payload_b64": base64.b64encode(at_limit).decode(),
            "error": "Expecting value: line 1 column 1 (char 0)",
        },
        {
            "reason": "too_large",
            "topic": topic,
            "payload_b64": base64.b64encode(over[:MAX_SENSOR_BYTES]).decode(),
            "payload_bytes": MAX_SENSOR_BYTES + 40 * 256,
            "payload_truncated": True,
            "error": f"{MAX_SENSOR_BYTES + 40 * 256} bytes > {MAX_SENSOR_BYTES}",
        },
    ]
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (2, 0, 0)


def test_silence_is_not_judged_while_cut_off_from_the_broker(
    tmp_path: Path, mosquitto: Any
) -> None:
    """A broker outage longer than 3 x expected_interval_s raises no device_offline; silence
    counts again once the reconnection has settled. The loop is driven by hand with injected
    times."""
    site = make_site("gridpatrol")
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    settings = MqttSettings.from_url(mosquitto.url)
    conn = MqttConnection("alarm_bridge", settings, client_id="gp-test-silence")
    bridge = Bridge(site, outbox, conn, None, progress_s=3600)
    t0 = 1_790_000_000.0
    try:
        assert conn.start(10)
        bridge._housekeeping(t0, t0)
        _broker_gone(mosquitto, conn)
        later = t0 + 2100  # 35 min later: wl-1 and mh-1 would be "silent"
        bridge._housekeeping(later, later)
        assert outbox_ops(outbox) == []
        _broker_back(mosquitto, conn)
        back = t0 + 2101
        bridge._housekeeping(back, back)
        settled = back + SETTLE_S + 3 * 300
        bridge._housekeeping(settled, settled)
        assert outbox_ops(outbox) == []
        bridge._housekeeping(settled + 1, settled + 1)
    finally:
        conn.stop()
    assert _offline_creates(outbox) == [("wl-1", "2026-09-21T15:04:22Z")]


def test_a_link_that_drops_pauses_the_silence_without_restarting_it(
    tmp_path: Path, mosquitto: Any
) -> None:
    """mh-1 (600 s: 30 min) silent 17 min 20 s, the broker gone 100 s, then 12 min 40 s more:
    device_offline. Counted from the reconnection, it would still be 17 min away."""
    site = make_site("gridpatrol")
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection(
        "alarm_bridge", MqttSettings.from_url(mosquitto.url), client_id="gp-test-flap"
    )
    bridge = Bridge(site, outbox, conn, None, progress_s=3600)
    t0 = 1_790_000_000.0
    try:
        assert conn.start(10)
        bridge._housekeeping(t0, t0)  # listening from t0 + 60
        bridge._housekeeping(t0 + 1100, t0 + 1100)  # 1040 s: wl-1 (900 s) is silent
        _broker_gone(mosquitto, conn)
        bridge._housekeeping(t0 + 1200, t0 + 1200)
        _broker_back(mosquitto, conn)
        # Cut off from the last look, t0 + 1100, to t0 + 1270.
        bridge._housekeeping(t0 + 1210, t0 + 1210)
        bridge._housekeeping(t0 + 2030, t0 + 2030)  # 1040 + 760 = 1800 s: not yet
        assert _offline_creates(outbox) == [("wl-1", "2026-09-21T14:31:40Z")]
        bridge._housekeeping(t0 + 2031, t0 + 2031)
    finally:
        conn.stop()
    assert _offline_creates(outbox) == [
        ("wl-1", "2026-09-21T14:31:40Z"),  # t0 + 1100
        ("mh-1", "2026-09-21T14:47:11Z"),  # t0 + 2031
    ]


def test_a_restart_of_the_bridge_pauses_the_silence_without_restarting_it(
    tmp_path: Path, mosquitto: Any
) -> None:
    """mh-1 (600 s: 30 min), never heard, listened to for 17 min 20 s; the bridge stopped for
    10 min, then 12 min 40 s more after its restart has settled: device_offline. Counted from
    the restart, it would still be 17 min away."""
    site = make_site("gridpatrol")
    settings = MqttSettings.from_url(mosquitto.url)

    def run(*looks: float) -> tuple[list[int], list[tuple[str, str]]]:
        """A run of the bridge on the state file, the loop driven by hand with injected
        times: how many device_offline were raised after each look, and which."""
        outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
        conn = MqttConnection("alarm_bridge", settings, client_id="gp-test-restart")
        bridge = Bridge(site, outbox, conn, None, progress_s=3600)
        raised = []
        try:
            assert conn.start(10)
            for at in looks:
                bridge._housekeeping(at, at)
                raised.append(len(_offline_creates(outbox)))
        finally:
            conn.stop()
        return raised, _offline_creates(outbox)

    t0 = 1_790_000_000.0
    # Listening from t0 + 60: 1040 s at t0 + 1100, wl-1 (900 s) silent.
    assert run(t0, t0 + 1100) == ([0, 1], [("wl-1", "2026-09-21T14:31:40Z")])
    # Not listening from t0 + 1100 to t0 + 1760; then 1040 + 760 = 1800 s, not yet; 1801 s.
    assert run(t0 + 1700, t0 + 2520, t0 + 2521) == (
        [1, 1, 2],
        [("wl-1", "2026-09-21T14:31:40Z"), ("mh-1", "2026-09-21T14:55:21Z")],
    )


def _pump(bridge: Bridge, received: int) -> None:
    """Run the bridge's batches by hand until it has taken ``received`` messages."""
    deadline = time.monotonic() + 30
    while bridge.core.counts.received < received:
        assert time.monotonic() < deadline, bridge.core.counts
        bridge._one_batch()
    bridge._flush_patches()


def test_retained_last_will_replayed_on_resubscription_raises_nothing(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """The bin came back with readings but its retained ``offline`` stays on the broker: the
    restarted bridge gets it again, flagged retained, and raises no second device_offline."""
    site = make_site(mqtt_prefix)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    status = sensor_status_topic(mqtt_prefix, "bf-1")
    back = json.dumps({"sensor_id": "bf-1", "value": 40, "ts": time.time()}).encode()
    pub = MqttConnection("retain-pub", SETTINGS, prefix=mqtt_prefix)
    assert pub.start(10)
    try:
        assert pub.publish_wait(status, b"offline", qos=1, retain=True)
        for restarted in (False, True):
            conn = MqttConnection("alarm_bridge", SETTINGS, prefix=mqtt_prefix)
            bridge = Bridge(site, outbox, conn, None, progress_s=3600)
            assert conn.start(10)
            try:
                _pump(bridge, 1)  # the retained last will
                if not restarted:
                    topic = sensor_alarm_topic(mqtt_prefix, "bf-1")
                    assert pub.publish_wait(topic, back, qos=1)
                    _pump(bridge, 2)
            finally:
                conn.stop()
    finally:
        pub.publish_wait(status, b"", qos=1, retain=True)  # leave the shared broker clean
        pub.stop()
    ops = outbox_ops(outbox)
    assert [k for k, _, _ in ops] == ["evidence", "create", "patch"]
    assert ops[1][2]["type"] == "device_offline"
    assert bridge.core.counts.ignored == 1


def test_a_late_unnumbered_reading_after_the_clear_opens_no_new_alarm(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """wl-1 (raise 15 cm, clear 5 cm, no debounce) raises at T and clears at T+100; a reading
    beyond raise taken at T+50 (a flushed buffer) then arrives: stale, no second candidate."""
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection("alarm_bridge", SETTINGS, prefix=mqtt_prefix)
    bridge = Bridge(make_site(mqtt_prefix), outbox, conn, None, progress_s=3600)
    pub = MqttConnection("late-pub", SETTINGS, prefix=mqtt_prefix)
    topic = sensor_alarm_topic(mqtt_prefix, "wl-1")
    t0 = float(int(time.time()) - 600)

    def pack(t: float, value: float) -> bytes:
        return json.dumps([{"n": "level", "u": "cm", "v": value, "t": t}]).encode()

    try:
        assert conn.start(10) and pub.start(10)
        assert pub.publish_wait(topic, pack(t0, 60), qos=1)
        assert pub.publish_wait(topic, pack(t0 + 100, 2), qos=1)
        _pump(bridge, 2)
        counts = bridge.core.counts
        assert (counts.created, counts.cleared, counts.stale) == (1, 1, 0)
        assert pub.publish_wait(topic, pack(t0 + 50, 70), qos=1)
        _pump(bridge, 3)
    finally:
        pub.stop()
        conn.stop()
    counts = bridge.core.counts
    assert (counts.created, counts.updated, counts.cleared, counts.stale) == (1, 0, 1, 1)
    assert (counts.dead_letters, counts.duplicates, counts.ignored) == (0, 0, 0)
    creates = [body for kind, _, body in outbox_ops(outbox) if kind == "create"]
    assert [(b["type"], b["alarm"]["count"], b["alarm"]["previous_alarm_id"]) for b in creates] == [
        ("waterlogging", 1, None)
    ]


def test_a_retained_alarm_is_not_news(tmp_path: Path, mqtt_prefix: str) -> None:
    """A dead manhole sensor left a retained last will and a retained raise (its device
    publishes alarms with the retain flag). A bridge subscribing later, its dedup keys long
    pruned, raises device_offline from the will and ignores the old alarm: it neither opens
    a candidate nor shows the sensor alive."""
    site = make_site(mqtt_prefix)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    status = sensor_status_topic(mqtt_prefix, "mh-1")
    alarm = sensor_alarm_topic(mqtt_prefix, "mh-1")
    old = {**json.loads(envelope("1")), "sensor_id": "mh-1", "alarm_type": "manhole_tilt"}
    pub = MqttConnection("retained-alarm-pub", SETTINGS, prefix=mqtt_prefix)
    assert pub.start(10)
    try:
        assert pub.publish_wait(status, b"offline", qos=1, retain=True)
        assert pub.publish_wait(alarm, json.dumps(old).encode(), qos=1, retain=True)
        conn = MqttConnection("alarm_bridge", SETTINGS, prefix=mqtt_prefix)
        bridge = Bridge(site, outbox, conn, None, progress_s=3600)
        assert conn.start(10)
        try:
            _pump(bridge, 2)
        finally:
            conn.stop()
    finally:
        for topic in (status, alarm):  # leave the shared broker clean
            pub.publish_wait(topic, b"", qos=1, retain=True)
        pub.stop()
    ops = outbox_ops(outbox)
    assert [(k, b["type"] if k == "create" else None) for k, _, b in ops] == [
        ("evidence", None),
        ("create", "device_offline"),
    ]
    counts = bridge.core.counts
    assert (counts.retained_alarms, counts.dead_letters, counts.duplicates) == (1, 0, 0)
    with outbox.transaction() as txn:
        assert "mh-1" not in store.last_heard(txn.conn)


def test_a_live_status_of_an_unknown_sensor_is_dead_lettered_a_retained_one_ignored(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """A device not in the site file yet (or its id mistyped there) dies: its last will is a
    dead letter, as its alarms are, not dropped unseen. The retained status of a sensor
    removed from the site file, replayed on every subscription, is ignored."""
    site = make_site(mqtt_prefix)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    removed = sensor_status_topic(mqtt_prefix, "zz-gone")
    status = sensor_status_topic(mqtt_prefix, "zz-9999")
    alarm = sensor_alarm_topic(mqtt_prefix, "zz-9999")
    reading = b'{"sensor_id": "zz-9999", "value": 1, "ts": 1790000000}'
    pub = MqttConnection("unknown-pub", SETTINGS, prefix=mqtt_prefix)
    watch = MqttConnection("unknown-watch", SETTINGS, prefix=mqtt_prefix)
    dead = watch.subscribe(deadletter_topic(mqtt_prefix, "alarm_bridge"), qos=1)
    assert pub.start(10) and watch.start(10)
    try:
        assert pub.publish_wait(removed, b"offline", qos=1, retain=True)
        conn = MqttConnection("alarm_bridge", SETTINGS, prefix=mqtt_prefix)
        bridge = Bridge(site, outbox, conn, None, progress_s=3600)
        assert conn.start(10)
        try:
            _pump(bridge, 1)  # the retained status
            assert pub.publish_wait(status, b"offline", qos=1)  # a last will, sent live
            assert pub.publish_wait(alarm, reading, qos=1)
            _pump(bridge, 3)
            letters = [dead.get(timeout=20), dead.get(timeout=20)]
        finally:
            conn.stop()
    finally:
        pub.publish_wait(removed, b"", qos=1, retain=True)  # leave the shared broker clean
        pub.stop()
        watch.stop()
    bodies = []
    for letter in letters:
        assert letter is not None
        body = json.loads(letter.payload)
        del body["received_at"]
        bodies.append(body)
    assert bodies == [
        {
            "reason": "unknown_sensor",
            "topic": status,
            "payload_b64": base64.b64encode(b"offline").decode(),
            "error": "zz-9999",
        },
        {
            "reason": "unknown_sensor",
            "topic": alarm,
            "payload_b64": base64.b64encode(reading).decode(),
            "error": "zz-9999",
        },
    ]
    counts = bridge.core.counts
    assert (counts.received, counts.dead_letters, counts.ignored) == (3, 2, 1)
    assert counts.reasons == {"unknown_sensor": 2}
    assert outbox_ops(outbox) == []


def test_a_retained_bad_status_or_topic_is_dead_lettered_only_when_sent_live(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A status that is neither online nor offline, and messages on topics whose sensor id is
    not valid, left retained on the broker: replayed on every subscription, they were
    dead-lettered again at every restart and reconnection of the bridge. Sent live they are
    dead letters; their retained copies are ignored and counted, as a retained alarm is."""
    settings = MqttSettings.from_url(mosquitto.url)
    site = make_site("gridpatrol")
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    bad_status = sensor_status_topic("gridpatrol", "bf-1")
    bad_alarm = "gridpatrol/sensors/bad$id/alarm"
    bad_will = "gridpatrol/sensors/bad$id/status"
    pub = MqttConnection("bad-pub", settings, prefix="gridpatrol")
    watch = MqttConnection("bad-watch", settings, prefix="gridpatrol")
    dead = watch.subscribe(deadletter_topic("gridpatrol", "alarm_bridge"), qos=1)
    assert pub.start(10) and watch.start(10)
    letters: list[tuple[str, str]] = []
    runs: list[tuple[int, int, int, int]] = []
    try:
        conn = MqttConnection("alarm_bridge", settings, prefix="gridpatrol")
        bridge = Bridge(site, outbox, conn, None, progress_s=3600)
        assert conn.start(10)
        try:
            for topic, payload in ((bad_status, b"{}"), (bad_alarm, b"{}"), (bad_will, b"x")):
                assert pub.publish_wait(topic, payload, qos=1, retain=True)  # sent live
            _pump(bridge, 3)
        finally:
            conn.stop()
        for _ in range(3):
            letter = dead.get(timeout=20)
            assert letter is not None
            body = json.loads(letter.payload)
            letters.append((body["reason"], body["topic"]))
        for _restart in range(2):
            conn = MqttConnection("alarm_bridge", settings, prefix="gridpatrol")
            bridge = Bridge(site, outbox, conn, None, progress_s=3600)
            assert conn.start(10)
            try:
                _pump(bridge, 3)  # the three retained copies
            finally:
                conn.stop()
            counts = bridge.core.counts
            runs.append((counts.dead_letters, counts.ignored, counts.retained_alarms))
    finally:
        pub.stop()
        watch.stop()
    assert letters == [
        ("bad_status", bad_status),
        ("bad_topic", bad_alarm),
        ("bad_topic", bad_will),
    ]
    assert runs == [(0, 2, 1), (0, 2, 1)]
    with outbox.transaction() as txn:
        waiting = txn.conn.execute("SELECT COUNT(*) FROM bridge_dead_letter").fetchone()[0]
    assert waiting == 0


def test_the_progress_line_says_what_was_not_used_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    bridge = Bridge(make_site(), outbox, MqttConnection("alarm_bridge", SETTINGS), None)
    late = json.loads(envelope("2", "update")) | {"ts": 1_790_000_000}
    manhole = {"sensor_id": "mh-1", "alarm_type": "manhole_tilt", "transition": "clear"}
    nothing_raised = json.loads(envelope("5")) | manhole | {"seq": 5}
    overtaken = json.loads(envelope("6")) | manhole | {"seq": 4, "ts": 1_790_000_004}
    messages = [
        ("sm-1/alarm", envelope("1"), False),  # raised, timed T0 + 1 s
        ("sm-1/alarm", envelope("1"), False),  # a redelivery
        ("sm-1/alarm", json.dumps(late).encode(), False),  # sent before the raise: stale
        ("sm-1/alarm", envelope("3"), True),  # a retained copy
        ("sm-1/alarm", b"{nope", False),
        ("zz-9/alarm", envelope("4"), False),
        ("sm-1/status", b"online", False),  # online while nothing is offline: nothing to do
        ("mh-1/alarm", json.dumps(nothing_raised).encode(), False),  # a clear: ignored
        ("mh-1/alarm", json.dumps(overtaken).encode(), False),  # seq 4 after 5: out of order
    ]
    out = BatchResult()
    with outbox.transaction() as txn:
        for topic, payload, retained in messages:
            received_at = datetime.fromtimestamp(1_790_000_010, UTC)
            bridge.core.handle(
                txn, f"gridpatrol/sensors/{topic}", payload, received_at, out, retained=retained
            )
        bridge.core.finish(txn, out)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gridpatrol.alarm_bridge.worker"):
        bridge._progress(1.5)
    assert caplog.messages == [
        "bridge: 1.5 alarms/s, candidates 1 created / 0 updated / 0 cleared, dead letters 2"
        " (bad_json 1, unknown_sensor 1), dead letters waiting 0, lost 0, duplicates 1,"
        " out of order 1, seq restarts 0, stale 1, updates of closed candidates dropped 0,"
        " ignored 1, retained alarms 1, timed at reception 0, snapshots 0"
        " (fallback 0, missing 0, deferred 0, failed 0, stale replies 0, replies timed at"
        " reception 0), outbox depth 2"
    ]


def test_a_progress_interval_must_be_positive(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection("alarm_bridge", SETTINGS)  # never started
    with pytest.raises(ValueError, match="progress_s must be positive, got 0"):
        Bridge(make_site(), outbox, conn, None, progress_s=0)


def test_only_alarm_and_status_topics_are_read_in_arrival_order(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """A device's other subtopics are not the bridge's (no bad_topic dead letter each); its
    last will and the reading after it are handled as they came, in one batch."""
    site = make_site(mqtt_prefix)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection("alarm_bridge", SETTINGS, prefix=mqtt_prefix)
    bridge = Bridge(site, outbox, conn, None, progress_s=3600)
    pub = MqttConnection("topics-pub", SETTINGS, prefix=mqtt_prefix)
    back = json.dumps({"sensor_id": "bf-1", "value": 40, "ts": time.time()}).encode()
    assert conn.start(10) and pub.start(10)
    try:
        for topic, payload in [
            (f"{mqtt_prefix}/sensors/bf-1/config", b"{}"),
            (sensor_status_topic(mqtt_prefix, "bf-1"), b"offline"),
            (sensor_alarm_topic(mqtt_prefix, "bf-1"), back),
        ]:
            assert pub.publish_wait(topic, payload, qos=1)
        _wait_until(lambda: conn.stats()["received"] >= 2, "messages not delivered")
        bridge._one_batch()
        bridge._flush_patches()
    finally:
        pub.stop()
        conn.stop()
    counts = bridge.core.counts
    assert (counts.received, counts.dead_letters) == (2, 0)
    ops = outbox_ops(outbox)
    assert [k for k, _, _ in ops] == ["evidence", "create", "patch"]  # raised, then cleared
    assert ops[1][2]["type"] == "device_offline"


def _persistent_bridge(
    tmp_path: Path, settings: MqttSettings, client_id: str
) -> tuple[Bridge, MqttConnection, Outbox]:
    """A bridge on a persistent manual-ack session, as the real one runs; not started."""
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection(
        "alarm_bridge", settings, persistent=True, manual_ack=True, client_id=client_id
    )
    return Bridge(make_site("gridpatrol"), outbox, conn, None, progress_s=3600), conn, outbox


def test_a_timeless_senml_pack_handled_across_a_reconnect_is_one_reading(
    tmp_path: Path, mosquitto: Any
) -> None:
    """Queued when the connection dropped, the pack is handled (its ack is void) and the
    broker sends it again on the resumed session: the same reading, not a second one."""
    settings = MqttSettings.from_url(mosquitto.url)
    bridge, conn, outbox = _persistent_bridge(tmp_path, settings, "gp-test-redo")
    sensor = MqttConnection("wl-1", settings, client_id="gp-test-wl-1")
    pack = json.dumps([{"n": "level", "u": "cm", "v": 20}]).encode()  # no bt, no t
    try:
        assert conn.start(10) and sensor.start(10)
        assert sensor.publish_wait(sensor_alarm_topic("gridpatrol", "wl-1"), pack, 1, timeout=10)
        deadline = time.monotonic() + 30
        while len(bridge._inbox) == 0:
            assert time.monotonic() < deadline, "the pack never arrived"
            time.sleep(0.05)
        mosquitto.stop()  # graceful: the bridge's session, with the pack in flight, is kept
        mosquitto.start()
        while conn.connects < 2:
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.05)
        while bridge.core.counts.received < 2:  # the queued pack, then its redelivery
            assert time.monotonic() < deadline, "no redelivery"
            bridge._one_batch()
    finally:
        sensor.stop()
        conn.stop()
    bridge._flush_patches()
    ops = [(kind, body) for kind, _, body in outbox_ops(outbox) if kind != "evidence"]
    assert [kind for kind, _ in ops] == ["create"]  # no update: count 1
    assert (bridge.core.counts.created, bridge.core.counts.duplicates) == (1, 1)


def test_thresholds_without_a_unit_read_only_the_records_without_one(
    tmp_path: Path, mosquitto: Any
) -> None:
    """sm-2 is judged without a unit ({raise: 1, clear: 0}): its smoke record is read, the
    battery record beside it is not (it used to raise a smoke candidate at 80 %EL, and clear it
    in the message that raised it at 0 V); a pack of records with units only reads nothing."""
    settings = MqttSettings.from_url(mosquitto.url)
    bridge, conn, outbox = _persistent_bridge(tmp_path, settings, "gp-test-units")
    sensor = MqttConnection("sm-2", settings, client_id="gp-test-sm-2")
    t = float(round(time.time()))
    packs = [
        [
            {"bn": "sm-2:", "bt": t, "n": "smoke", "vb": False},
            {"n": "battery", "u": "%EL", "v": 80},
        ],
        [
            {"bn": "sm-2:", "bt": t + 10, "n": "smoke", "vb": True},
            {"n": "battery", "u": "V", "v": 0},
        ],
        [{"bn": "sm-2:", "bt": t + 20, "n": "battery", "u": "%EL", "v": 80}],
    ]
    try:
        assert conn.start(10) and sensor.start(10)
        for pack in packs:
            topic = sensor_alarm_topic("gridpatrol", "sm-2")
            assert sensor.publish_wait(topic, json.dumps(pack).encode(), 1, timeout=10)
        _pump(bridge, 3)
    finally:
        sensor.stop()
        conn.stop()
    ops = [(kind, body) for kind, _, body in outbox_ops(outbox) if kind != "evidence"]
    assert [kind for kind, _ in ops] == ["create"]
    assert ops[0][1]["type"] == "smoke"
    assert ops[0][1]["measurements"] == [{"n": "sm-2:smoke", "vb": True, "t": t + 10}]
    counts = bridge.core.counts
    assert (counts.created, counts.cleared, counts.reasons) == (1, 0, {"no_reading": 1})


def _restart_without_persistence(broker: Any) -> None:
    """Restart the private broker as one that keeps nothing: every session is lost."""
    broker.stop()
    conf = broker.conf.read_text().replace("persistence true", "persistence false")
    broker.conf.write_text(conf)
    broker.start()


def _probed(sender: MqttConnection, probes: Subscription, topic: str) -> bool:
    """Send a QoS 0 probe (it takes no packet id); whether one reached the bridge, whose
    connection renews the probe's subscription in the SUBSCRIBE that renews its alarms'."""
    sender.publish(topic, b"?")
    return probes.get(0.2) is not None


def test_a_new_pack_with_a_lost_sessions_packet_id_is_a_new_reading(
    tmp_path: Path, mosquitto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker restarts without persistence while a pack is in flight: the handled pack's
    ack is void, and the new broker numbers the bridge's packets from 1 again, so the
    sensor's next identical pack comes with the same packet id, sent for the first time: a
    second reading, not the resend."""
    settings = MqttSettings.from_url(mosquitto.url)
    bridge, conn, outbox = _persistent_bridge(tmp_path, settings, "gp-test-lost")
    taken: list[tuple[int, int, bool, bool]] = []
    collect = bridge._collect

    def spying() -> list[Message]:
        batch = collect()
        taken.extend((m.mid, m.session, m.dup, m.session_present) for m in batch)
        return batch

    monkeypatch.setattr(bridge, "_collect", spying)
    sensor = MqttConnection("wl-1", settings, client_id="gp-test-wl-1")
    # The bridge says online after subscribing: then the sensor's pack has a subscriber.
    bridge_status = sensor.subscribe(component_status_topic("gridpatrol", "alarm_bridge"), 1)
    probe_topic = "gridpatrol/probe/wl-1"
    probes = conn.subscribe(probe_topic, 0)
    topic = sensor_alarm_topic("gridpatrol", "wl-1")
    pack = json.dumps([{"n": "level", "u": "cm", "v": 20}]).encode()  # no bt, no t
    try:
        assert conn.start(10) and sensor.start(10)
        first = bridge_status.get(10)
        assert first is not None and first.payload == b"online"
        assert sensor.publish_wait(topic, pack, 1, timeout=10)
        _wait_until(lambda: len(bridge._inbox) == 1, "the pack never arrived")
        _restart_without_persistence(mosquitto)
        _wait_until(lambda: conn.connects == 2, "no reconnect")
        assert bridge._one_batch() == 1  # the first pack, its ack void
        # Not the bridge's online status: on a broker that lost every session, the bridge
        # may say it before the sensor has subscribed again.
        _wait_until(lambda: _probed(sensor, probes, probe_topic), "the bridge never came back")
        assert sensor.publish_wait(topic, pack, 1, timeout=10)
        _wait_until(lambda: bridge._one_batch() == 1, "the second pack never arrived")
    finally:
        sensor.stop()
        conn.stop()
    assert taken == [(1, 1, False, False), (1, 2, False, False)]  # the same packet id
    assert _readings(bridge, outbox) == [("create", 1), ("patch", 2)]
    assert bridge.core.counts.duplicates == 0


class FakeLink:
    """The bridge's broker connection, dropped and resumed by the test: its acks are void
    across a drop, as on the real client."""

    manual_ack = True

    def __init__(self) -> None:
        self.connects = 1
        self.connected = True
        self.session_present = False  # a fresh session at the first connection
        self.acked: list[tuple[int, int]] = []  # (session, packet id) of the acks that count
        self._subs: list[Subscription] = []
        self._arrivals = itertools.count(1)

    def subscribe(
        self, topic_filter: str, qos: int, maxsize: int, wake: threading.Event
    ) -> Subscription:
        self._subs.append(Subscription(topic_filter, qos, maxsize, wake))
        return self._subs[-1]

    def publish(self, topic: str, payload: bytes | str, qos: int = 0) -> bool:
        return True

    def max_payload(self, topic: str, qos: int) -> int:
        """As a connection to a broker of the default packet limit says."""
        return DEFAULT_MAX_PACKET_SIZE - publish_overhead(topic, qos, v5=True)

    def ack(self, message: Message) -> None:
        if message.session == self.connects and self.connected:
            self.acked.append((message.session, message.mid))

    def drop_and_resume(self, kept: bool = True) -> None:
        """Reconnect; ``kept=False``: the broker lost the session (no session present)."""
        self.connected = False
        self.connects += 1
        self.session_present = kept
        self.connected = True

    def send(
        self, payload: bytes, mid: int, at_s: float, dup: bool = False, topic: str = ""
    ) -> None:
        """A QoS 1 message on ``topic`` (wl-1's alarm topic by default, or wl-1's status
        topic), received ``at_s`` after T0; ``dup``: the broker's resend."""
        topic = topic or WL1
        received_at = datetime.fromtimestamp(T0 + at_s, UTC)
        message = Message(
            topic,
            payload,
            1,
            False,
            received_at,
            mid,
            self.connects,
            dup,
            self.session_present,
            next(self._arrivals),
        )
        # The sensor alarm subscription, then the sensor status one.
        self._subs[1 if topic == WL1_STATUS else 0]._put(message)


T0 = 1_790_000_000.0
WL1 = sensor_alarm_topic("gridpatrol", "wl-1")
WL1_STATUS = sensor_status_topic("gridpatrol", "wl-1")
LEVEL_20 = json.dumps([{"n": "level", "u": "cm", "v": 20}]).encode()  # no bt, no t


def _fake_bridge(tmp_path: Path) -> tuple[Bridge, FakeLink, Outbox]:
    link = FakeLink()
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    bridge = Bridge(make_site("gridpatrol"), outbox, cast(Any, link), None, progress_s=3600)
    return bridge, link, outbox


def _dropping_in_commit(
    bridge: Bridge, link: FakeLink, monkeypatch: pytest.MonkeyPatch, kept: bool = True
) -> None:
    """The next commit loses the connection half way: its messages' acks are void.
    ``kept=False``: the reconnection finds the session lost."""
    commit = bridge._commit

    def dropping(messages: list[Message]) -> BatchResult:
        link.drop_and_resume(kept)
        monkeypatch.setattr(bridge, "_commit", commit)
        return commit(messages)

    monkeypatch.setattr(bridge, "_commit", dropping)


def _readings(bridge: Bridge, outbox: Outbox) -> list[tuple[str, int]]:
    bridge._flush_patches()
    return [
        (kind, body["alarm"]["count"] if kind == "patch" else 1)
        for kind, _, body in outbox_ops(outbox)
        if kind != "evidence"
    ]


def test_a_resend_of_a_pack_whose_connection_dropped_during_its_commit_is_one_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected when taken from the inbox, the pack loses its connection in the commit: its
    ack is void and the resumed session sends it again, the same reading."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=7, at_s=0)
    _dropping_in_commit(bridge, link, monkeypatch)
    assert bridge._one_batch() == 1
    assert link.acked == []
    link.send(LEVEL_20, mid=7, at_s=5, dup=True)  # the resumed session's resend
    assert bridge._one_batch() == 1
    assert link.acked == [(2, 7)]
    assert _readings(bridge, outbox) == [("create", 1)]
    assert (bridge.core.counts.created, bridge.core.counts.duplicates) == (1, 1)


def test_a_pack_resent_across_two_drops_in_a_row_is_one_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend is itself handled as the connection drops again: the third copy is still
    timed at the first reception."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=7, at_s=0)
    _dropping_in_commit(bridge, link, monkeypatch)
    bridge._one_batch()
    link.send(LEVEL_20, mid=7, at_s=5, dup=True)
    _dropping_in_commit(bridge, link, monkeypatch)
    bridge._one_batch()
    link.send(LEVEL_20, mid=7, at_s=10, dup=True)
    bridge._one_batch()
    assert link.acked == [(3, 7)]
    assert _readings(bridge, outbox) == [("create", 1)]
    assert (bridge.core.counts.created, bridge.core.counts.duplicates) == (1, 2)


def _offline_state(outbox: Outbox) -> tuple[list[str], bool]:
    """The ids of wl-1's device_offline creates, and whether the alarm is active."""
    creates = [
        cid
        for kind, cid, body in outbox_ops(outbox)
        if kind == "create" and body["type"] == "device_offline"
    ]
    with outbox.transaction() as txn:
        active = store.load_state(txn.conn, "wl-1", "device_offline").active
    return [str(c) for c in creates], active


WL1_READING = json.dumps({"sensor_id": "wl-1", "value": 1.0, "ts": T0 + 1}).encode()


def _an_outage_cleared_with_void_acks(
    bridge: Bridge, link: FakeLink, monkeypatch: pytest.MonkeyPatch, kept: bool = True
) -> None:
    """wl-1's last will (packet id 11) and the reading that cleared it, their acks void as
    the connection drops during the commit (``kept=False``: the broker lost the session)."""
    link.send(b"offline", mid=11, at_s=0, topic=WL1_STATUS)
    link.send(WL1_READING, mid=12, at_s=1)
    _dropping_in_commit(bridge, link, monkeypatch, kept)
    assert bridge._one_batch() == 2
    assert link.acked == []


def test_a_last_will_resent_after_its_connection_dropped_during_the_commit_acts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last will and the reading that cleared it lose their acks in the commit: both are
    resent, and the last will must not raise again what the reading cleared (the reading's
    dedup key keeps it from clearing a second time)."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    _an_outage_cleared_with_void_acks(bridge, link, monkeypatch)
    link.send(b"offline", mid=11, at_s=5, dup=True, topic=WL1_STATUS)
    link.send(WL1_READING, mid=12, at_s=6, dup=True)
    assert bridge._one_batch() == 2
    assert link.acked == [(2, 11), (2, 12)]
    creates, active = _offline_state(outbox)
    assert (len(creates), active) == (1, False)
    assert bridge.core.counts.duplicates == 2


def test_a_last_will_resent_after_a_crash_between_commit_and_ack_acts_once(
    tmp_path: Path,
) -> None:
    """A restarted bridge has nothing in memory of the first reception: the resend is told by
    the packet id and payload of the status kept in the state database."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(b"offline", mid=11, at_s=0, topic=WL1_STATUS)
    link.send(WL1_READING, mid=12, at_s=1)
    link.connected = False  # the process dies after the commit: no ack reaches the broker
    assert bridge._one_batch() == 2
    link = FakeLink()  # the restarted process's connection, resuming the session
    link.drop_and_resume()
    restarted = Bridge(make_site("gridpatrol"), outbox, cast(Any, link), None, progress_s=3600)
    link.send(b"offline", mid=11, at_s=60, dup=True, topic=WL1_STATUS)
    link.send(WL1_READING, mid=12, at_s=61, dup=True)
    assert restarted._one_batch() == 2
    creates, active = _offline_state(outbox)
    assert (len(creates), active) == (1, False)
    assert restarted.core.counts.duplicates == 2
    # A new last will, even with a packet id seen before, is not the resend: not DUP.
    link.send(b"offline", mid=11, at_s=900, topic=WL1_STATUS)
    restarted._one_batch()
    creates, active = _offline_state(outbox)
    assert (len(creates), active) == (2, True)


def _status_packets(outbox: Outbox) -> list[store.StatusPacket]:
    """The packets of wl-1's statuses kept as resend candidates."""
    with outbox.transaction() as txn:
        mark = store.last_status(txn.conn, "wl-1")
    assert mark is not None
    return mark.packets


OFFLINE_11 = (11, hashlib.sha256(b"offline").hexdigest())  # a last will's packet


def _a_new_last_will_resent_raises(bridge: Bridge, link: FakeLink, outbox: Outbox) -> None:
    """wl-1's new last will, given packet id 11 and lost on the way at a drop, comes with DUP
    in the resumed session: a new outage, raised."""
    link.drop_and_resume()
    link.send(b"offline", mid=11, at_s=600, dup=True, topic=WL1_STATUS)
    assert bridge._one_batch() == 1
    creates, active = _offline_state(outbox)
    assert (len(creates), active) == (2, True)
    assert bridge.core.counts.duplicates == 0


def test_a_new_last_will_reusing_an_acknowledged_status_packet_id_raises_again(
    tmp_path: Path,
) -> None:
    """Acknowledged, a status's packet id is free again at the broker: a later last will of
    the same bytes may get it, and be resent with DUP after a drop before it arrived. It is a
    new outage, not the resend of the first one."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(b"offline", mid=11, at_s=0, topic=WL1_STATUS)
    assert bridge._one_batch() == 1
    link.send(WL1_READING, mid=12, at_s=1)
    assert bridge._one_batch() == 1
    assert link.acked == [(1, 11), (1, 12)]
    assert _status_packets(outbox) == []  # its ack reached the broker: never resent
    _a_new_last_will_resent_raises(bridge, link, outbox)


def test_a_status_left_unacknowledged_is_forgotten_when_the_broker_lost_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker lost the session whose acks were void: nothing is resent, and a later last
    will reusing the packet id, resent with DUP in a session kept after, is a new outage."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    _an_outage_cleared_with_void_acks(bridge, link, monkeypatch, kept=False)
    assert _status_packets(outbox) == [OFFLINE_11]
    later = json.dumps({"sensor_id": "wl-1", "value": 1.0, "ts": T0 + 10}).encode()
    link.send(later, mid=1, at_s=10)  # the first message of the session not kept
    assert bridge._one_batch() == 1
    assert _status_packets(outbox) == []
    _a_new_last_will_resent_raises(bridge, link, outbox)


def test_a_status_not_resent_on_the_next_connection_is_forgotten_on_the_one_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next connection dropped before it brought anything (the ack had reached the
    broker after all, or the resend was cut off): on the one after, a DUP last will with the
    packet id is a new outage, as for a remembered alarm message."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    _an_outage_cleared_with_void_acks(bridge, link, monkeypatch)
    _a_new_last_will_resent_raises(bridge, link, outbox)


def test_status_packets_left_by_a_crash_are_forgotten_past_the_resend_burst(
    tmp_path: Path,
) -> None:
    """After a crash between commit and ack, the packets wait for the resumed session's
    opening burst; past it, nothing more is resent and they are forgotten."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(b"offline", mid=11, at_s=0, topic=WL1_STATUS)
    link.connected = False  # the process dies after the commit: no ack reaches the broker
    assert bridge._one_batch() == 1
    link = FakeLink()
    link.drop_and_resume()
    restarted = Bridge(make_site("gridpatrol"), outbox, cast(Any, link), None, progress_s=3600)
    link.send(WL1_READING, mid=3, at_s=60)  # the burst, without the resend: its ack counted
    assert restarted._one_batch() == 1
    assert _status_packets(outbox) == [OFFLINE_11]
    past = 60 + RESEND_BURST_S + 1
    later = json.dumps({"sensor_id": "wl-1", "value": 1.0, "ts": T0 + past}).encode()
    link.send(later, mid=4, at_s=past)
    assert restarted._one_batch() == 1
    assert _status_packets(outbox) == []


def test_a_lost_resend_does_not_swallow_a_later_reading_with_its_packet_id(
    tmp_path: Path,
) -> None:
    """The broker lost the session, so the resend never comes; two sessions later a new
    reading of the same level gets the same packet id: a reading at its own time."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=7, at_s=0)
    link.drop_and_resume(kept=False)  # before the pack is handled: its ack is void
    bridge._one_batch()
    link.send(LEVEL_20, mid=1, at_s=5)  # session 2, no resend: a new reading
    bridge._one_batch()
    link.drop_and_resume()
    link.send(LEVEL_20, mid=7, at_s=600)  # session 3
    bridge._one_batch()
    assert _readings(bridge, outbox) == [("create", 1), ("patch", 3)]
    assert bridge.core.counts.duplicates == 0


def test_a_packet_id_seen_again_after_the_resend_burst_is_a_new_reading(
    tmp_path: Path,
) -> None:
    """On the session after the drop but well past its opening burst, the same packet id
    and bytes are a new message, not the resend."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=7, at_s=0)
    link.drop_and_resume()  # before the pack is handled: its ack is void
    bridge._one_batch()
    link.send(LEVEL_20, mid=1, at_s=5)
    bridge._one_batch()
    link.send(LEVEL_20, mid=7, at_s=5 + RESEND_BURST_S + 1)
    bridge._one_batch()
    assert _readings(bridge, outbox) == [("create", 1), ("patch", 3)]
    assert bridge.core.counts.duplicates == 0


def test_a_resend_queued_behind_its_original_is_one_reading(tmp_path: Path) -> None:
    """The resumed session's resend is in the inbox with the original it repeats: the two
    are handled in separate batches, the original's void ack remembered first."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=7, at_s=0)
    link.drop_and_resume()
    link.send(LEVEL_20, mid=7, at_s=2, dup=True)
    assert (bridge._one_batch(), bridge._one_batch()) == (1, 1)
    assert _readings(bridge, outbox) == [("create", 1)]
    assert link.acked == [(2, 7)]


def test_a_new_message_like_a_remembered_one_on_a_new_session_is_a_new_reading(
    tmp_path: Path,
) -> None:
    """The broker lost the session and numbers its packets from 1 again: a new reading with
    the packet id and bytes of a remembered one, in the new session's first seconds, is
    sent for the first time (no DUP, no session present), not the resend."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=1, at_s=0)
    link.drop_and_resume(kept=False)  # before the pack is handled: its ack is void
    bridge._one_batch()
    link.send(LEVEL_20, mid=1, at_s=5)
    bridge._one_batch()
    assert _readings(bridge, outbox) == [("create", 1), ("patch", 2)]
    assert bridge.core.counts.duplicates == 0
    assert link.acked == [(2, 1)]


def test_a_first_sending_on_a_resumed_session_is_not_taken_for_the_resend(
    tmp_path: Path,
) -> None:
    """Only a packet marked DUP is the broker's resend."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=7, at_s=0)
    link.drop_and_resume()
    bridge._one_batch()
    link.send(LEVEL_20, mid=7, at_s=5)
    bridge._one_batch()
    assert _readings(bridge, outbox) == [("create", 1), ("patch", 2)]
    assert bridge.core.counts.duplicates == 0


def test_updates_pending_since_after_now_were_stamped_before_the_clock_was_set_back() -> None:
    """Pending since more than a second after now: stamped before the host clock was set
    back. Handed over at once (first: they are the oldest), not after waiting for as long as
    the clock went back; the others still coalesce for a second."""
    with sqlite3.connect(":memory:") as conn:
        store.init(conn)
        for candidate_id, since in (
            ("c-due", T0 - 5),
            ("c-coalescing", T0 - 0.5),
            ("c-near", T0 + 0.5),  # within the second: a clock read a little apart
            ("c-set-back", T0 + 3600),
        ):
            store.pend_patch(conn, candidate_id, {"id": candidate_id}, since)
        assert store.take_pending(conn, 500, T0 - 1, T0 + 1) == [
            ("c-set-back", {"id": "c-set-back"}),
            ("c-due", {"id": "c-due"}),
        ]
        assert store.take_pending(conn) == [
            ("c-coalescing", {"id": "c-coalescing"}),
            ("c-near", {"id": "c-near"}),
        ]


def test_a_clock_set_back_an_hour_does_not_hold_back_a_pending_update(tmp_path: Path) -> None:
    """The housekeeping is scheduled on the monotonic clock: the host's clock stepped back
    by an hour, the repeat pending since before the step is handed over at the next check,
    not an hour later."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    link.send(LEVEL_20, mid=1, at_s=0)
    assert bridge._one_batch() == 1
    with outbox.transaction() as txn:
        txn.conn.execute("DELETE FROM outbox_ops")  # the create delivered: the outbox idle
    link.send(LEVEL_20, mid=2, at_s=5)
    assert bridge._one_batch() == 1
    bridge._housekeeping(T0 + 5.5, 100.0)  # coalescing: pending since T0 + 5
    assert outbox_ops(outbox) == []
    bridge._housekeeping(T0 + 6 - 3600, 100.1)  # the clock set back an hour
    [(kind, _, body)] = outbox_ops(outbox)
    assert (kind, body["alarm"]["count"]) == ("patch", 2)


def _waiting_letters(outbox: Outbox) -> list[dict[str, Any]]:
    with outbox.transaction() as txn:
        rows = txn.conn.execute("SELECT body FROM bridge_dead_letter ORDER BY id").fetchall()
    return [json.loads(body) for (body,) in rows]


# Why b"{nope" (and b"{nope 0", ...) is bad JSON, as the decoder says.
NOPE = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"


def _letter(
    payload: bytes, at_s: float, reason: str = "bad_json", error: str | None = NOPE
) -> dict[str, Any]:
    letter = {
        "reason": reason,
        "topic": WL1,
        "payload_b64": base64.b64encode(payload).decode(),
        "received_at": datetime.fromtimestamp(T0 + at_s, UTC).isoformat().replace("+00:00", "Z"),
    }
    return letter if error is None else {**letter, "error": error}


def test_a_dead_letter_the_client_refuses_waits_in_the_state_database_and_is_published_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's queue is full: the dead letter, written with its batch, is kept; the
    message is acknowledged all the same. Not lost: published by the housekeeping once the
    client takes it, also after a restart of the bridge, and deleted then (at least once: a
    crash between the hand-over and that deletion would publish it again)."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    published: list[tuple[str, bytes]] = []
    taking = False

    def client(topic: str, payload: bytes | str, qos: int = 0) -> bool:
        if taking:
            published.append(
                (topic, bytes(payload, "utf-8") if isinstance(payload, str) else payload)
            )
        return taking

    monkeypatch.setattr(link, "publish", client)
    link.send(b"{nope", mid=3, at_s=0)
    link.send(LEVEL_20, mid=4, at_s=1)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.alarm_bridge.worker"):
        assert bridge._one_batch() == 2
    assert link.acked == [(1, 3), (1, 4)]
    assert [m for m in caplog.messages if m.startswith("dead letters not")] == [
        "dead letters not published (the client's queue full, or no client): 1 waiting,"
        " published again in 5 s"
    ]
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (1, 1, 0)
    assert _waiting_letters(outbox) == [_letter(b"{nope", 0)]
    assert [kind for kind, _, _ in outbox_ops(outbox)] == ["evidence", "create"]
    assert published == []
    # The bridge restarts on its state database; the client takes publications again.
    bridge = Bridge(make_site("gridpatrol"), outbox, cast(Any, link), None, progress_s=3600)
    assert bridge.core.counts.dead_letters_waiting == 1
    taking = True
    bridge._housekeeping(T0 + 10, T0 + 10)
    assert [(topic, json.loads(body)) for topic, body in published] == [
        (deadletter_topic("gridpatrol", "alarm_bridge"), _letter(b"{nope", 0))
    ]
    assert _waiting_letters(outbox) == []
    assert bridge.core.counts.dead_letters_waiting == 0
    bridge._housekeeping(T0 + 20, T0 + 20)
    assert len(published) == 1


def test_dead_letters_waiting_beyond_the_backlog_drop_the_oldest_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(worker, "DEAD_LETTER_BACKLOG", 2)
    bridge, link, outbox = _fake_bridge(tmp_path)
    monkeypatch.setattr(link, "publish", lambda topic, payload, qos=0: False)
    for n in range(3):
        link.send(b"{nope %d" % n, mid=3 + n, at_s=n)
        with caplog.at_level(logging.ERROR, logger="gridpatrol.alarm_bridge.worker"):
            assert bridge._one_batch() == 1
    assert link.acked == [(1, 3), (1, 4), (1, 5)]
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (3, 2, 1)
    assert _waiting_letters(outbox) == [_letter(b"{nope 1", 1), _letter(b"{nope 2", 2)]
    dropped = json.dumps(_letter(b"{nope 0", 0), separators=(",", ":"))
    assert caplog.messages == [f"dead letter dropped (more than 2 waiting): {dropped}"]


def _batch_with_a_raising_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> tuple[Bridge, Outbox]:
    """A batch of a bad message and a good one, handled and acknowledged (asserted) while
    the client raises ``exc`` on every publication."""
    bridge, link, outbox = _fake_bridge(tmp_path)

    def raising(topic: str, payload: bytes | str, qos: int = 0) -> bool:
        raise exc

    monkeypatch.setattr(link, "publish", raising)
    link.send(b"{nope", mid=3, at_s=0)
    link.send(LEVEL_20, mid=4, at_s=1)
    assert bridge._one_batch() == 2
    assert link.acked == [(1, 3), (1, 4)]
    return bridge, outbox


def test_a_dead_letter_the_client_raises_on_is_dropped_logged_and_its_batch_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised after the commit, the failure would leave the batch unacknowledged: redelivered,
    failing again, the bridge restarting for ever. A publication MQTT cannot carry never
    will: it is not kept."""
    with caplog.at_level(logging.ERROR, logger="gridpatrol.alarm_bridge.worker"):
        bridge, outbox = _batch_with_a_raising_client(
            tmp_path, monkeypatch, ValueError("Packet too large.")
        )
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (1, 0, 1)
    body = json.dumps(_letter(b"{nope", 0), separators=(",", ":"))
    assert caplog.messages == [
        f"dead letter dropped (refused by the client: Packet too large.): {body}"
    ]
    assert _waiting_letters(outbox) == []
    assert [kind for kind, _, _ in outbox_ops(outbox)] == ["evidence", "create"]


def test_a_dead_letter_over_the_packet_limit_is_cut_and_holds_up_no_other(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """A broker taking packets of up to 64 KiB: the letter of a 60 KiB payload (80 KiB in
    base64) was refused, taken for a full queue, and held up every later letter for ever,
    published again every 5 s. It goes out with its payload cut to fit; the two after it go
    out whole."""
    broker = Mosquitto(tmp_path, persistence=False)
    broker.conf.write_text(broker.conf.read_text() + "max_packet_size 65536\n")
    broker.start()
    settings = MqttSettings.from_url(broker.url)
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    conn = MqttConnection("alarm_bridge", settings, prefix=mqtt_prefix)
    bridge = Bridge(make_site(mqtt_prefix), outbox, conn, None, progress_s=3600)
    watch = MqttConnection("big-watch", settings, prefix=mqtt_prefix)
    letters_topic = deadletter_topic(mqtt_prefix, "alarm_bridge")
    dead = watch.subscribe(letters_topic, qos=1)
    topic = sensor_alarm_topic(mqtt_prefix, "sm-1")
    big = b"x" * 60 * 1024
    try:
        assert conn.start(10) and watch.start(10)
        for payload in (big, b"{nope 1", b"{nope 2"):
            assert watch.publish_wait(topic, payload, qos=1)
        _pump(bridge, 3)
        letters = []
        deadline = time.monotonic() + 20
        while len(letters) < 3 and time.monotonic() < deadline:
            letter = dead.get(timeout=0.5)
            if letter is not None:
                letters.append(letter)
        most = conn.max_payload(letters_topic, 1)
    finally:
        watch.stop()
        conn.stop()
        broker.stop()
    assert len(letters) == 3
    assert most - 4 < len(letters[0].payload) <= most  # as much as fits, in base64's steps
    bodies = [json.loads(letter.payload) for letter in letters]
    for body in bodies:
        del body["received_at"]
    kept = base64.b64decode(bodies[0]["payload_b64"])
    assert 0 < len(kept) < len(big)
    assert bodies == [
        {
            "reason": "bad_json",
            "topic": topic,
            "payload_b64": base64.b64encode(big[: len(kept)]).decode(),
            "error": "Expecting value: line 1 column 1 (char 0)",
            "payload_bytes": len(big),
            "payload_truncated": True,
        },
        *(
            {"reason": "bad_json", "topic": topic, "payload_b64": b64, "error": NOPE}
            for b64 in (
                base64.b64encode(b"{nope 1").decode(),
                base64.b64encode(b"{nope 2").decode(),
            )
        ),
    ]
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (3, 0, 0)
    assert _waiting_letters(outbox) == []


def test_a_dead_letter_that_cannot_fit_even_without_its_payload_is_dropped_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reason, topic and error alone are over what the packet limit leaves it: it could
    never go out, and is not kept to hold up the letters after it."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    handed = _recording(link, monkeypatch)
    monkeypatch.setattr(link, "max_payload", lambda topic, qos: 100)
    link.send(b"{nope", mid=3, at_s=0)
    with caplog.at_level(logging.ERROR, logger="gridpatrol.alarm_bridge.worker"):
        assert bridge._one_batch() == 1
    assert handed == []
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (1, 0, 1)
    body = json.dumps(_letter(b"{nope", 0), separators=(",", ":"))
    assert caplog.messages == [
        "dead letter dropped (over the 100 bytes the broker's packet limit leaves it, even with "
        f"no payload): {body}"
    ]
    assert _waiting_letters(outbox) == []


def _held_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines saying dead letters wait (not those of each dead letter)."""
    return [m for m in caplog.messages if m.startswith("dead letters not")]


def _recording(link: FakeLink, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The client takes every publication, also while disconnected (as paho queues a QoS 1
    one in memory): what it was handed."""
    handed: list[bytes] = []

    def client(topic: str, payload: bytes | str, qos: int = 0) -> bool:
        handed.append(bytes(payload, "utf-8") if isinstance(payload, str) else payload)
        return True

    monkeypatch.setattr(link, "publish", client)
    return handed


def test_no_dead_letter_is_handed_to_the_client_while_disconnected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """During a broker outage the client takes a QoS 1 publication into its memory only: a
    stop meanwhile would lose it, its row deleted. It waits in the state database until the
    connection is back."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    handed = _recording(link, monkeypatch)
    link.send(b"{nope", mid=3, at_s=0)
    link.connected = False  # the broker went away after the message came
    with caplog.at_level(logging.WARNING, logger="gridpatrol.alarm_bridge.worker"):
        assert bridge._one_batch() == 1
        bridge._housekeeping(T0 + 10, T0 + 10)
    assert handed == []
    assert _waiting_letters(outbox) == [_letter(b"{nope", 0)]
    assert bridge.core.counts.dead_letters_waiting == 1
    assert _held_lines(caplog) == [
        "dead letters not published (not connected to the broker): 1 waiting, published again"
        " in 5 s"
    ]
    link.connected = True
    bridge._housekeeping(T0 + 20, T0 + 20)
    assert [json.loads(body) for body in handed] == [_letter(b"{nope", 0)]
    assert _waiting_letters(outbox) == []
    assert bridge.core.counts.dead_letters_waiting == 0


def test_a_dead_letter_the_client_fails_on_waits_and_its_batch_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything but ValueError raised by the client, after the batch's commit: escaping, it
    would leave the batch unacknowledged, redelivered and failing again at every restart."""
    with caplog.at_level(logging.WARNING, logger="gridpatrol.alarm_bridge.worker"):
        bridge, outbox = _batch_with_a_raising_client(
            tmp_path, monkeypatch, RuntimeError("a bug in the client")
        )
    held = [r for r in caplog.records if r.getMessage().startswith("dead letters not")]
    assert [(r.levelname, r.getMessage()) for r in held] == [
        (
            "ERROR",
            "dead letters not published (the client failed): 1 waiting, published again in 5 s",
        )
    ]
    (record,) = held
    assert record.exc_info is not None
    assert repr(record.exc_info[1]) == "RuntimeError('a bug in the client')"
    counts = bridge.core.counts
    assert (counts.dead_letters, counts.dead_letters_waiting, counts.dead_letters_lost) == (1, 1, 0)
    assert _waiting_letters(outbox) == [_letter(b"{nope", 0)]


def test_a_batch_is_acknowledged_before_its_dead_letters_are_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead letters are committed with the batch: a publication transaction that fails
    (the state database) stops the bridge, but the batch is acknowledged, not redelivered."""
    bridge, link, outbox = _fake_bridge(tmp_path)

    def disk_failing() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(bridge, "_publish_dead_letters", disk_failing)
    link.send(b"{nope", mid=3, at_s=0)
    link.send(LEVEL_20, mid=4, at_s=1)
    with pytest.raises(sqlite3.OperationalError, match=r"^disk I/O error$"):
        bridge._one_batch()
    assert link.acked == [(1, 3), (1, 4)]
    assert _waiting_letters(outbox) == [_letter(b"{nope", 0)]


def test_a_refused_dead_letter_is_logged_at_most_once_per_retry_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of bad payloads while the client refuses: each batch tries again, but the
    line comes once per DEAD_LETTER_RETRY_S, not once per batch."""
    now = T0
    link = FakeLink()
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    site = make_site("gridpatrol")
    bridge = Bridge(site, outbox, cast(Any, link), None, progress_s=3600, clock=lambda: now)
    monkeypatch.setattr(link, "publish", lambda topic, payload, qos=0: False)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.alarm_bridge.worker"):
        for n, at_s in enumerate((0.0, 1.0, 4.9, 5.0, 6.0)):
            now = T0 + at_s
            link.send(b"{nope %d" % n, mid=3 + n, at_s=at_s)
            assert bridge._one_batch() == 1
    assert _held_lines(caplog) == [
        f"dead letters not published (the client's queue full, or no client): {n} waiting,"
        " published again in 5 s"
        for n in (1, 4)
    ]
    assert bridge.core.counts.dead_letters_waiting == 5


def test_a_dead_letter_dropped_in_a_batch_that_fails_to_commit_is_not_said_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond the backlog the oldest dead letter is deleted in the batch's transaction: when
    the commit fails, it is still waiting, neither logged nor counted as dropped."""
    monkeypatch.setattr(worker, "DEAD_LETTER_BACKLOG", 1)
    bridge, link, outbox = _fake_bridge(tmp_path)
    monkeypatch.setattr(link, "publish", lambda topic, payload, qos=0: False)
    link.send(b"{nope 0", mid=3, at_s=0)
    assert bridge._one_batch() == 1
    # The next commit fails: a deferred foreign key, checked at COMMIT, that a dead letter
    # written breaks.
    conn = outbox._thread_conn()
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(
        """
        CREATE TABLE trap_parent (id INTEGER PRIMARY KEY);
        CREATE TABLE trap_child (
            parent INTEGER REFERENCES trap_parent (id) DEFERRABLE INITIALLY DEFERRED
        );
        CREATE TRIGGER trap AFTER INSERT ON bridge_dead_letter
        BEGIN INSERT INTO trap_child VALUES (1); END;
        """
    )
    link.send(b"{nope 1", mid=4, at_s=1)
    caplog.clear()
    with (
        caplog.at_level(logging.ERROR, logger="gridpatrol.alarm_bridge.worker"),
        pytest.raises(sqlite3.IntegrityError, match=r"^FOREIGN KEY constraint failed$"),
    ):
        bridge._one_batch()
    assert not conn.in_transaction  # the failed COMMIT was rolled back with the batch
    assert caplog.messages == []
    assert bridge.core.counts.dead_letters_lost == 0
    assert _waiting_letters(outbox) == [_letter(b"{nope 0", 0)]
    assert link.acked == [(1, 3)]


def test_a_state_database_from_before_dead_letters_were_kept_gets_their_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is the state database's schema (store.init), and an existing state file
    without it gets it when the bridge opens it."""
    with sqlite3.connect(tmp_path / "fresh.db") as fresh:
        store.init(fresh)
        columns = [row[1] for row in fresh.execute("PRAGMA table_info(bridge_dead_letter)")]
    assert columns == ["id", "body"]
    _, _, outbox = _fake_bridge(tmp_path)
    with outbox.transaction() as txn:
        txn.conn.execute("DROP TABLE bridge_dead_letter")  # as a state file of before
    link = FakeLink()
    bridge = Bridge(make_site("gridpatrol"), outbox, cast(Any, link), None, progress_s=3600)
    assert bridge.core.counts.dead_letters_waiting == 0
    monkeypatch.setattr(link, "publish", lambda topic, payload, qos=0: False)
    link.send(b"{nope", mid=3, at_s=0)
    assert bridge._one_batch() == 1
    assert _waiting_letters(outbox) == [_letter(b"{nope", 0)]


def test_a_snapshot_still_wanted_is_read_without_the_write_lock(tmp_path: Path) -> None:
    """The read before the camera is asked must not wait for a batch's commit (nor take the
    lock a batch waits for)."""
    bridge, _, outbox = _fake_bridge(tmp_path)
    with outbox.transaction() as txn:
        store.want_snapshot(txn.conn, "c-1", "cam-1", T0)
    # No patience for a lock: a read that waited for the batch would fail at once here.
    bridge.outbox._thread_conn().execute("PRAGMA busy_timeout=0")
    with sqlite3.connect(tmp_path / "bridge.db", timeout=0) as other:
        other.execute("BEGIN IMMEDIATE")  # a batch committing meanwhile
        assert (bridge._still_wanted("c-1"), bridge._still_wanted("c-2")) == (True, False)
        other.execute("ROLLBACK")


def test_a_stopping_bridge_writes_the_connection_history_up_to_its_last_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looks 10 s apart, idle: the history is written at the first check and 60 s later, then
    at the stop with the last look (70 s), so the next run's downtime starts there."""
    now = T0
    link = FakeLink()
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    bridge = Bridge(
        make_site("gridpatrol"), outbox, cast(Any, link), None, progress_s=3600, clock=lambda: now
    )
    looks = iter(T0 + 10 * i for i in range(8))
    housekeeping = bridge._housekeeping

    def one_look(_: float, __: float) -> None:
        nonlocal now
        now = next(looks, now)
        if now == T0 + 70:
            bridge.stop()
        housekeeping(now, now)

    written: list[float] = []
    save = store.save_uptime

    def spy(conn: Any, state: Any) -> None:
        written.append(state[1] - T0)
        save(conn, state)

    monkeypatch.setattr(bridge, "_housekeeping", one_look)
    monkeypatch.setattr(store, "save_uptime", spy)
    bridge.run()
    assert written == [0, 60, 70]
    with outbox.transaction() as txn:
        assert store.load_uptime(txn.conn) == (T0, T0 + 70, [(T0, T0 + SETTLE_S)])


BF1 = sensor_alarm_topic("gridpatrol", "bf-1")


def _fill(value: float, at_s: float) -> bytes:
    """A bin_fill reading of bf-1 (raise 90, clear 60, no holds), timed ``at_s`` after T0."""
    return json.dumps({"sensor_id": "bf-1", "value": value, "ts": T0 + at_s}).encode()


def _patches(bridge: Bridge, outbox: Outbox) -> list[tuple[int, str, list[float] | None]]:
    """(count, last_seen, measured values or None) of each PATCH, once all are handed over."""
    bridge._flush_patches()
    return [
        (
            body["alarm"]["count"],
            body["alarm"]["last_seen"],
            [m["v"] for m in body["measurements"]] if "measurements" in body else None,
        )
        for kind, _, body in outbox_ops(outbox)
        if kind == "patch"
    ]


LATE_FILLS = [(92.0, 0.0), (99.0, 120.0), (95.0, 60.0)]  # the last one is late


def test_a_late_repeat_does_not_put_older_measurements_on_the_candidate(tmp_path: Path) -> None:
    """Each reading its own batch, its update handed over before the next: the late one's
    PATCH counts it, keeps last_seen, and leaves the newest measurements (99) in place."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    for mid, (value, at_s) in enumerate(LATE_FILLS, 1):
        link.send(_fill(value, at_s), mid=mid, at_s=200 + mid, topic=BF1)
        assert bridge._one_batch() == 1
        bridge._flush_patches()
    last_seen = candidates.iso(T0 + 120)
    assert _patches(bridge, outbox) == [(2, last_seen, [99.0]), (3, last_seen, None)]


def test_a_late_repeat_in_the_batch_of_a_newer_one_keeps_the_newer_measurements(
    tmp_path: Path,
) -> None:
    bridge, link, outbox = _fake_bridge(tmp_path)
    for mid, (value, at_s) in enumerate(LATE_FILLS, 1):
        link.send(_fill(value, at_s), mid=mid, at_s=200 + mid, topic=BF1)
    assert bridge._one_batch() == 3
    assert _patches(bridge, outbox) == [(3, candidates.iso(T0 + 120), [99.0])]


def test_a_late_repeat_after_a_restart_keeps_the_pending_updates_newer_measurements(
    tmp_path: Path,
) -> None:
    """The newer reading's update waits in the state database when the bridge restarts; the
    late reading handled by the next run merges into it without replacing its measurements."""
    bridge, link, _ = _fake_bridge(tmp_path)
    for mid, (value, at_s) in enumerate(LATE_FILLS[:2], 1):
        link.send(_fill(value, at_s), mid=mid, at_s=200 + mid, topic=BF1)
    assert bridge._one_batch() == 2
    bridge, link, outbox = _fake_bridge(tmp_path)  # the next run, on the same state file
    value, at_s = LATE_FILLS[2]
    link.send(_fill(value, at_s), mid=3, at_s=203, topic=BF1)
    assert bridge._one_batch() == 1
    assert _patches(bridge, outbox) == [(3, candidates.iso(T0 + 120), [99.0])]


def _senml_fill(record: dict[str, object]) -> bytes:
    return json.dumps([{"n": "fill", "u": "%", "v": 95, **record}]).encode()


@pytest.mark.parametrize(
    ("payload", "reason", "error"),
    [
        pytest.param(
            _senml_fill({"bt": 1_790_000_000_000}),  # milliseconds
            "bad_senml",
            "record 0: time out of range",
            id="senml-bt-in-ms",
        ),
        pytest.param(
            _senml_fill({"vb": "yes"}),
            "bad_senml",
            "record 0: vb has the wrong type",
            id="senml-vb-text",
        ),
        pytest.param(
            json.dumps({"sensor_id": "bf-1", "value": 95, "ts": "2026-09-21T14:13:20"}).encode(),
            "bad_ts",
            "RFC 3339 time needs an offset or Z",
            id="naive-rfc3339",
        ),
        pytest.param(
            json.dumps({"sensor_id": "bf-1", "value": 95, "ts": 1_790_000_000_000}).encode(),
            "bad_ts",
            "epoch seconds out of range: 1790000000000.0",
            id="ts-in-ms",
        ),
    ],
)
def test_a_dead_letter_says_what_its_reason_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, reason: str, error: str
) -> None:
    """One reason stands for many causes: ``error`` tells them apart for the integrator, in
    the letter kept in the state database and in the one published."""
    bridge, link, outbox = _fake_bridge(tmp_path)
    handed = _recording(link, monkeypatch)
    link.connected = False  # kept first, published once the connection is back
    link.send(payload, mid=3, at_s=0, topic=BF1)
    assert bridge._one_batch() == 1
    letter = {**_letter(payload, 0, reason, error), "topic": BF1}
    assert _waiting_letters(outbox) == [letter]
    link.connected = True
    bridge._housekeeping(T0 + 10, T0 + 10)
    assert [json.loads(body) for body in handed] == [letter]


def test_a_dead_letter_kept_by_an_earlier_release_is_published_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept before letters carried ``error``: its row is the JSON to publish, unchanged."""
    _, _, outbox = _fake_bridge(tmp_path)
    old = json.dumps(_letter(b"{nope", 0, error=None), separators=(",", ":")).encode()
    with outbox.transaction() as txn:
        txn.conn.execute("INSERT INTO bridge_dead_letter (body) VALUES (?)", (old,))
    bridge, link, outbox = _fake_bridge(tmp_path)
    handed = _recording(link, monkeypatch)
    bridge._housekeeping(T0 + 10, T0 + 10)
    assert handed == [old]
    assert _waiting_letters(outbox) == []
