"""The ingest service driven in-process: a grab held at a chosen moment, a fault injected."""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.ingest import service as ingest_service
from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, publish_overhead
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


def test_requests_that_fail_unforeseen_log_a_traceback_only_with_each_letter(
    http_camera: Any,
    watch: Any,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """12 snapshot requests of one camera that all fail unforeseen: the first 10 (the letter
    limit per topic) get a letter and one record with the error's traceback, the other 2 are
    counted only. Every one of them logged its traceback."""

    def parse(_payload: bytes) -> str:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(ingest_service, "parse_request", parse)
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    request = snapshot_request_topic(mqtt_prefix, "h1")
    dead_topic = f"{mqtt_prefix}/deadletter/ing-t"
    with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest.service"):
        conn, service = start_ingest("ing-t", http_camera.url, mqtt_prefix)
        try:
            for n in range(12):
                assert conn.publish_wait(request, b"r%d" % n, qos=1)
            deadline = time.monotonic() + 10
            while service.rejected["internal_error"] < 12:
                assert time.monotonic() < deadline, service.rejected
                time.sleep(0.05)
            watcher.collect(lambda s: len(watcher.payloads(dead_topic)) >= 10)
        finally:
            service.stop()
            conn.stop()
    letters = [json.loads(p) for p in watcher.payloads(dead_topic)]
    assert [(x["reason"], x["topic"]) for x in letters] == [("internal_error", request)] * 10
    failed = [r for r in caplog.records if r.getMessage().startswith("dead-lettered internal")]
    assert [type(r.exc_info[1]) if r.exc_info else None for r in failed] == [RuntimeError] * 10
    assert not [r for r in caplog.records if r.exc_info and r not in failed]


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


def unstarted_ingest(component_id: str, prefix: str) -> tuple[MqttConnection, IngestService]:
    """An ingest service whose connection is up but whose loops are not: the test rejects."""
    site = parse_site(
        "site: {name: Test}\n"
        f"mqtt: {{prefix: {prefix}}}\n"
        "cameras:\n"
        "  - {id: h1, source: 'http://127.0.0.1:9/none.jpg', fps: 4, location: {address: a}}\n"
    )
    conn = MqttConnection(component_id, MqttSettings.from_url(SHARED), prefix=prefix)
    service = IngestService(site, conn, site.cameras)
    assert conn.start(10)
    return conn, service


def garbage(topic: str, n: int) -> Message:
    return Message(topic, b"not json %d" % n, 1, False, datetime.now(UTC), n)


FLOOD = 30_000


def test_the_progress_line_counts_a_flood_of_rejections_at_one_moment(
    mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One thread rejects 30,000 requests on two topics while another logs the progress line
    over and over: every line's malformed total is the sum of its reasons, and of each reason
    exactly the first 10 had a letter (the others are said not dead-lettered). Read one by one,
    the figures came from different moments: a rejection counted as malformed and not yet as
    unlettered, or a stretch of them ('21606 malformed {'bad_json': 21606}, of them not
    dead-lettered {'bad_json': 24666}')."""
    # Switch threads as often as possible, so the progress thread reads in mid-flood.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    conn, service = unstarted_ingest("ing-race", mqtt_prefix)
    service.letters.clock = lambda: 1000.0  # one window, however long the test takes
    topics = [snapshot_request_topic(mqtt_prefix, "h1"), f"{mqtt_prefix}/cameras/x y/patrol/boost"]
    reasons = ["bad_json", "bad_topic"]
    done = threading.Event()

    def flood() -> None:
        for n in range(FLOOD):
            service._dead_letter(reasons[n % 2], garbage(topics[n % 2], n))
        done.set()

    try:
        with caplog.at_level(logging.INFO, logger="gridpatrol.ingest.service"):
            flooding = threading.Thread(target=flood)
            flooding.start()
            while not done.is_set():
                service.log_progress()
            flooding.join()
            service.log_progress()
    finally:
        sys.setswitchinterval(interval)
        conn.stop()
    lines = [
        r.args
        for r in caplog.records
        if r.name == "gridpatrol.ingest.service" and r.msg.startswith("ingest: snapshot requests")
    ]
    assert len(lines) > 1
    torn = []
    for args in lines:
        assert isinstance(args, tuple)
        malformed, by_reason, unlettered = args[-3:]
        # One window, one topic per reason: the first 10 of each reason had their letter.
        lettered = {r: n - unlettered.get(r, 0) for r, n in by_reason.items()}
        if (
            malformed != sum(by_reason.values())
            or not unlettered.keys() <= by_reason.keys()
            or lettered != {r: min(n, 10) for r, n in by_reason.items()}
        ):
            torn.append((malformed, by_reason, unlettered))
    assert (len(torn), torn[:3]) == (0, [])
    assert lines[-1][-3:] == (
        FLOOD,
        {"bad_json": FLOOD // 2, "bad_topic": FLOOD // 2},
        {"bad_json": FLOOD // 2 - 10, "bad_topic": FLOOD // 2 - 10},
    )


def test_the_letters_window_warning_is_ingest_s_own(
    mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """11 garbage requests, then one more 60 s later: the warning for the one over the limit
    is logged under gridpatrol.ingest.service, with ingest's other lines (it went under
    gridpatrol.ingest.receiver, where watch-frames logs)."""
    conn, service = unstarted_ingest("ing-window", mqtt_prefix)
    now = [1000.0]
    service.letters.clock = lambda: now[0]
    topic = snapshot_request_topic(mqtt_prefix, "h1")
    try:
        with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest"):
            for n in range(11):
                service._dead_letter("bad_json", garbage(topic, n))
            now[0] += 60.0
            service._dead_letter("bad_json", garbage(topic, 11))
    finally:
        conn.stop()
    windows = [
        (r.name, r.getMessage()) for r in caplog.records if "in the last 60 s" in r.getMessage()
    ]
    assert windows == [
        (
            "gridpatrol.ingest.service",
            "1 malformed requests and boosts in the last 60 s were not dead-lettered nor logged "
            "one by one (over 10 letters per topic, 100 in all, in a window): {'bad_json': 1}",
        )
    ]


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


def test_a_failing_grab_is_warned_of_once_per_failing_streak(
    mosquitto: Mosquitto, http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A patrol camera and a continuous one answering 503: five failed visits, five failed
    snapshot grabs, one warning each, with the cause. The grab warned of its failure on every
    visit and request beside the streak's warning."""
    site = parse_site(
        "site: {name: Test}\n"
        "mqtt: {prefix: streak}\n"
        "cameras:\n"
        f"  - {{id: p1, source: '{http_camera.url}', interval_s: 60, location: {{address: a}}}}\n"
        f"  - {{id: h1, source: '{http_camera.url}', fps: 1, location: {{address: b}}}}\n"
    )
    conn = MqttConnection("ing-streak", MqttSettings.from_url(mosquitto.url), prefix="streak")
    service = IngestService(site, conn, site.cameras)  # not started: the test makes the grabs
    http_camera.broken.set()  # 503 to every request
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest")
    try:
        assert conn.start(10)
        assert [service._grab("p1") for _ in range(5)] == [None] * 5
        assert [service._grab("h1") for _ in range(5)] == [None] * 5
    finally:
        conn.stop()
    assert [service.outputs[c].stats.failures for c in ("p1", "h1")] == [5, 5]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"camera p1: the patrol visit got no frame from {http_camera.url} (HTTP 503); offline "
        "until a visit succeeds, next try in 120 s",
        f"camera h1: the snapshot grab got no frame from {http_camera.url} (HTTP 503; its stream "
        "is left as it is; not said again until a grab gets one)",
    ]
