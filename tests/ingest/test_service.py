"""The ingest service driven in-process: a grab held at a chosen moment, a fault injected."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.ingest import service as ingest_service
from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings, publish_overhead
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.snapshot import encode_request
from gridpatrol.ingest.sources import ENVELOPE_OVERHEAD
from gridpatrol.ingest.topics import snapshot_request_topic, snapshot_topic
from gridpatrol.site import parse_site

from ..conftest import Mosquitto
from .test_receiver import packet_limited

SHARED = "mqtt://127.0.0.1:1883"


def start_ingest(
    component_id: str, camera_url: str, prefix: str
) -> tuple[MqttConnection, IngestService]:
    """An ingest service publishing the HTTP camera ``h1`` at 4 fps, started."""
    site = parse_site(
        "site: {name: Test}\n"
        f"mqtt: {{prefix: {prefix}}}\n"
        "cameras:\n"
        f"  - {{id: h1, source: '{camera_url}', fps: 4, location: {{address: a}}}}\n"
    )
    conn = MqttConnection(component_id, MqttSettings.from_url(SHARED), prefix=prefix)
    service = IngestService(site, conn, site.cameras)
    assert conn.start(10)
    service.start()
    return conn, service


def test_a_grab_that_ends_after_stop_publishes_no_online_nor_frame(
    http_camera: Any, watch: Any, mqtt_prefix: str
) -> None:
    http_camera.hold_after = 1
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    conn, service = start_ingest("ing-s", http_camera.url, mqtt_prefix)
    # The first snapshot is published; the second is under way, held by the camera.
    assert http_camera.held.wait(20)
    service.stop(timeout=0.2)  # the camera thread is still in its grab when stop() gives up
    http_camera.release.set()
    grabbing = [t for t in threading.enumerate() if t.name == "camera-h1"]
    assert len(grabbing) == 1
    for thread in grabbing:
        thread.join(20)
    assert not any(t.is_alive() for t in grabbing)
    conn.stop()
    component = f"{mqtt_prefix}/components/ing-s/status"
    seen = watcher.collect(lambda s: watcher.payloads(component)[-1:] == [b"offline"])
    assert watcher.payloads(component)[-1:] == [b"offline"]
    # The held grab ended after the offline: it must not bring back a retained online.
    assert watcher.payloads(f"{mqtt_prefix}/cameras/h1/status") == [b"online", b"offline"]
    assert len([m for m in seen if m.topic == f"{mqtt_prefix}/cameras/h1/frame"]) == 1


def test_a_request_that_fails_unforeseen_is_dead_lettered_and_the_next_answered(
    http_camera: Any, watch: Any, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest_service.parse_request

    def parse(payload: bytes) -> str:
        if payload == b"boom":  # a payload the checks let through but that fails later on
            raise RuntimeError("unforeseen")
        return real(payload)

    monkeypatch.setattr(ingest_service, "parse_request", parse)
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    conn, service = start_ingest("ing-g", http_camera.url, mqtt_prefix)
    dead_topic = f"{mqtt_prefix}/deadletter/ing-g"
    reply_topic = snapshot_topic(mqtt_prefix, "h1")
    try:
        frame_topic = f"{mqtt_prefix}/cameras/h1/frame"
        watcher.collect(lambda s: bool(watcher.payloads(frame_topic)))
        request = snapshot_request_topic(mqtt_prefix, "h1")
        assert conn.publish_wait(request, b"boom", qos=1)
        assert conn.publish_wait(request, encode_request("r2"), qos=1)
        watcher.collect(
            lambda s: bool(watcher.payloads(dead_topic)) and bool(watcher.payloads(reply_topic))
        )
    finally:
        service.stop()
        conn.stop()
    letters = [json.loads(p) for p in watcher.payloads(dead_topic)]
    assert [(x["reason"], x["topic"], x["error"]) for x in letters] == [
        ("internal_error", request, "RuntimeError: unforeseen")
    ]
    replies = [
        decode_frame(p, topic_camera_id="h1", received_at=datetime.now(UTC))
        for p in watcher.payloads(reply_topic)
    ]
    assert [r.header.request_id for r in replies] == ["r2"]


def test_a_bad_boost_is_dead_lettered_without_a_patrol_camera_or_a_request(
    http_camera: Any, watch: Any, mqtt_prefix: str
) -> None:
    """Without patrol cameras the request loop drains the boosts: it did so only when a
    snapshot request came, so a bad one went unsaid until then."""
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    conn, service = start_ingest("ing-boost", http_camera.url, mqtt_prefix)
    dead_topic = f"{mqtt_prefix}/deadletter/ing-boost"
    boost = f"{mqtt_prefix}/cameras/bad id/patrol/boost"
    try:
        assert conn.publish_wait(boost, b"{}", qos=1)
        watcher.collect(lambda s: bool(watcher.payloads(dead_topic)), timeout=10)
    finally:
        service.stop()
        conn.stop()
    letters = [json.loads(p) for p in watcher.payloads(dead_topic)]
    assert [(x["reason"], x["topic"], x.get("error")) for x in letters] == [
        ("bad_topic", boost, None)
    ]
    assert service._requests.received == 0
    assert service.bad_requests == 1


def test_a_client_sending_garbage_requests_gets_ten_letters_and_every_one_counted(
    http_camera: Any, watch: Any, mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """25 malformed snapshot requests for h1 and 3 boosts for an id no camera can have, within
    a minute: 10 letters and warnings for the requests' topic, 3 for the boosts', the 15 others
    counted by reason; the closing line counts all 28."""
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    conn, service = start_ingest("ing-flood", http_camera.url, mqtt_prefix)
    request = snapshot_request_topic(mqtt_prefix, "h1")
    boost = f"{mqtt_prefix}/cameras/bad id/patrol/boost"
    try:
        with caplog.at_level(logging.INFO, logger="gridpatrol.ingest.service"):
            for n in range(25):
                assert conn.publish_wait(request, b"not json %d" % n, qos=1)
            for _ in range(3):
                assert conn.publish_wait(boost, b"{}", qos=1)
            deadline = time.monotonic() + 20
            while service.bad_requests < 28 and time.monotonic() < deadline:
                time.sleep(0.05)
            service.stop()
    finally:
        conn.stop()
    # Its "offline" leaves after its letters, on the same connection at QoS 1.
    status = f"{mqtt_prefix}/components/ing-flood/status"
    watcher.collect(lambda s: b"offline" in watcher.payloads(status))
    letters = [json.loads(p) for p in watcher.payloads(f"{mqtt_prefix}/deadletter/ing-flood")]
    # The request loop drains the boosts between requests: only each topic's order is kept.
    got = [(x["topic"], base64.b64decode(x["payload_b64"])) for x in letters]
    assert [payload for topic, payload in got if topic == request] == [
        b"not json %d" % n for n in range(10)
    ]
    assert [payload for topic, payload in got if topic != request] == [b"{}"] * 3
    assert service.rejected == {"bad_json": 25, "bad_topic": 3}
    said = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.ingest.service"]
    assert len([line for line in said if line.startswith("dead-lettered ")]) == 13
    closing = [line for line in said if line.startswith("ingest: snapshot requests ")]
    assert closing[-1].endswith(
        "; 28 malformed {'bad_json': 25, 'bad_topic': 3}, of them not dead-lettered (over the "
        "limit) {'bad_json': 15}"
    )


# A packet limit that leaves a frame's JPEG 300 bytes (past the room for the largest header
# and a snapshot reply's topic): less than any JPEG, however small, has.
TINY_JPEG_BUDGET = 300


@pytest.fixture
def tiny_broker(tmp_path: Path, mqtt_prefix: str) -> Iterator[Mosquitto]:
    """A private Mosquitto whose ``max_packet_size`` no frame of camera p1 fits."""
    topic = snapshot_topic(mqtt_prefix, "p1")
    limit = TINY_JPEG_BUDGET + ENVELOPE_OVERHEAD + publish_overhead(topic, 1, v5=True)
    broker = packet_limited(tmp_path / "broker", limit)
    yield broker
    broker.stop()


def test_a_patrol_visit_whose_frame_cannot_be_published_fails(
    tiny_broker: Mosquitto,
    http_camera: Any,
    watch: Any,
    mqtt_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The visit counted as a success before its frame was published: a camera whose every
    frame was dropped as too large was never offline, nor tried less often."""
    site = parse_site(
        "site: {name: Test}\n"
        f"mqtt: {{prefix: {mqtt_prefix}}}\n"
        "cameras:\n"
        f"  - {{id: p1, source: '{http_camera.url}', interval_s: 60, location: {{address: a}}}}\n"
    )
    watcher = watch(tiny_broker.url, f"{mqtt_prefix}/#", mqtt_prefix)
    conn = MqttConnection("ing-tiny", MqttSettings.from_url(tiny_broker.url), prefix=mqtt_prefix)
    service = IngestService(site, conn, site.cameras)  # not started: the test makes the visits
    status = f"{mqtt_prefix}/cameras/p1/status"
    caplog.set_level(logging.WARNING, logger="gridpatrol.ingest.service")
    try:
        assert conn.start(10)
        budget = conn.max_payload(snapshot_topic(mqtt_prefix, "p1"), 1) - ENVELOPE_OVERHEAD
        assert budget == TINY_JPEG_BUDGET
        visits = [service._visit("p1"), service._visit("p1")]
        watcher.collect(lambda s: bool(watcher.payloads(status)), timeout=10)
    finally:
        conn.stop()
    output = service.outputs["p1"]
    assert visits == [None, None]
    assert (output.online, output.stats.published, output.stats.failures) == (False, 0, 2)
    assert service.scheduler._cams["p1"].failures == 2
    assert watcher.payloads(status) == [b"offline"]
    assert not watcher.payloads(f"{mqtt_prefix}/cameras/p1/frame")
    assert [r.getMessage() for r in caplog.records if r.name == "gridpatrol.ingest.service"] == [
        f"camera p1: the patrol visit got a frame from {http_camera.url} too large for the "
        "broker's packet limit that cannot be made to fit (dropped); offline until a visit "
        "succeeds, next try in 120 s"
    ]
