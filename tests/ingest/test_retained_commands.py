"""Retained patrol boosts and snapshot requests: commands left on the broker are not acted on
again at each start and reconnection of ingest."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.snapshot import encode_request
from gridpatrol.ingest.topics import (
    deadletter_topic,
    patrol_boost_topic,
    snapshot_request_topic,
    snapshot_topic,
)
from gridpatrol.site import parse_site

from ..conftest import Mosquitto
from .test_transport import wait_for

PREFIX = "stale"


def patrol_camera(source: str) -> str:
    """The site's lines of patrol camera p1, visited once an hour."""
    return f"  - {{id: p1, source: '{source}', interval_s: 3600, location: {{address: b}}}}\n"


def started_service(
    mosquitto: Mosquitto, client_id: str, cameras: str
) -> tuple[IngestService, MqttConnection]:
    """Ingest of the site of ``cameras`` (its lines), started on ``mosquitto``."""
    site = parse_site(f"site: {{name: Test}}\nmqtt: {{prefix: {PREFIX}}}\ncameras:\n{cameras}")
    conn = MqttConnection(client_id, MqttSettings.from_url(mosquitto.url), prefix=PREFIX)
    service = IngestService(site, conn, site.cameras)
    assert conn.start(10)
    service.start()
    return service, conn


def test_retained_boosts_and_requests_are_ignored_at_each_connection(
    mosquitto: Mosquitto, http_camera: Any, watch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest.service")
    boost = patrol_boost_topic(PREFIX, "p1")
    request = snapshot_request_topic(PREFIX, "h1")
    publisher = MqttConnection("old-cmds", MqttSettings.from_url(mosquitto.url), prefix=PREFIX)
    assert publisher.start(10)
    try:
        assert publisher.publish_wait(
            boost, b'{"factor": 16, "duration_s": 86400}', qos=1, retain=True
        )
        assert publisher.publish_wait(request, encode_request("old-req-1"), qos=1, retain=True)
    finally:
        publisher.stop()
    watcher = watch(mosquitto.url, snapshot_topic(PREFIX, "h1"), PREFIX)
    service, conn = started_service(
        mosquitto,
        "ing-stale",
        f"  - {{id: h1, source: '{http_camera.url}', fps: 4, location: {{address: a}}}}\n"
        + patrol_camera(http_camera.url),
    )
    try:
        wait_for(lambda: service._boosts.received == service._requests.received == 1)
        # The broker hands them over again at the reconnection: counted, not said again.
        mosquitto.stop()
        wait_for(lambda: not conn.connected)
        mosquitto.start()
        wait_for(
            lambda: (
                service._boosts.received == service._requests.received == 2
                and watcher.conn.connected
            )
        )
        # Cleared as the warning says (an empty retained message): the broker hands the empty
        # message to ingest, subscribed already, without the flag. It is neither the default
        # boost nor a malformed request.
        assert conn.publish_wait(boost, b"", qos=1, retain=True)
        assert conn.publish_wait(request, b"", qos=1, retain=True)
        wait_for(lambda: service._boosts.received == service._requests.received == 3)
        # Another empty boost is taken for a cleared one too, said once a topic; one on a topic
        # no camera can have is still a malformed topic.
        assert conn.publish_wait(boost, b"", qos=1)
        assert conn.publish_wait(f"{PREFIX}/cameras/bad id/patrol/boost", b"", qos=1)
        # Empty ones of a camera this process does not serve are no concern of it: neither said
        # nor kept (a flood of them on ever new ids would keep and say each).
        assert conn.publish_wait(patrol_boost_topic(PREFIX, "elsewhere"), b"", qos=1)
        assert conn.publish_wait(snapshot_request_topic(PREFIX, "elsewhere"), b"", qos=1)
        wait_for(lambda: service._boosts.received == 6 and service._requests.received == 4)
        # Sent now, they are acted on; the queues are in order, so the old ones came first.
        assert conn.publish_wait(request, encode_request("new-req-1"), qos=1)
        watcher.collect(lambda seen: bool(seen))
        assert service.scheduler.weight("p1", time.monotonic()) == 1.0
        assert conn.publish_wait(boost, b'{"factor": 2, "duration_s": 600}', qos=1)
        wait_for(lambda: service.scheduler.weight("p1", time.monotonic()) == 2.0)
    finally:
        service.stop()
        conn.stop()
    replies = [
        decode_frame(m.payload, topic_camera_id="h1", received_at=datetime.now(UTC))
        for m in watcher.seen
    ]
    assert [r.header.request_id for r in replies] == ["new-req-1"]
    assert service.stale == {boost: 2, request: 2}
    assert (service.bad_requests, service.rejected) == (1, {"bad_topic": 1})
    said = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.ingest.service"]
    assert [line for line in said if "patrol boosted" in line] == [
        "camera p1: patrol boosted x2 for 600 s"
    ]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    stale = [line.split(":")[0] for line in warned if line.startswith("ignoring a retained")]
    assert sorted(stale) == [
        f"ignoring a retained patrol boost on {boost}",
        f"ignoring a retained snapshot request on {request}",
    ]
    assert "; 4 retained (ignored); " in said[-1]
    letters = [line.split(":")[0] for line in warned if line.startswith("dead-lettered")]
    assert letters == [f"dead-lettered bad_topic  from {PREFIX}/cameras/bad id/patrol/boost"]
    assert service._cleared_said == {boost, request}
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sorted(line for line in infos if line.startswith("ignoring an empty")) == [
        f"ignoring an empty patrol boost on {boost}: taken for a retained one cleared (empty "
        "ones there are not said again); {} asks for the default boost",
        f"ignoring an empty snapshot request on {request}: taken for a retained one cleared "
        "(empty ones there are not said again)",
    ]


def test_retained_boosts_and_requests_of_cameras_served_elsewhere_are_no_concern(
    mosquitto: Mosquitto, http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Retained boosts and requests of cameras this process does not serve (another process's,
    or ids no camera has) are neither said nor kept: they were kept and said before the
    process looked at the camera, one topic each, so ever new ids grew the map without bound.
    Its own camera's are ignored and said once a topic; one on a topic no camera can have is
    dead-lettered once."""
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest.service")
    boost = patrol_boost_topic(PREFIX, "p1")
    request = snapshot_request_topic(PREFIX, "p1")
    elsewhere = [f"elsewhere{n}" for n in range(5)]
    retained = [boost, request, f"{PREFIX}/cameras/bad id/patrol/boost"]
    retained += [patrol_boost_topic(PREFIX, cid) for cid in elsewhere]
    retained += [snapshot_request_topic(PREFIX, cid) for cid in elsewhere]
    publisher = MqttConnection("old-cmds", MqttSettings.from_url(mosquitto.url), prefix=PREFIX)
    assert publisher.start(10)
    try:
        for topic in retained:
            payload = encode_request("old") if "request" in topic else b'{"factor": 16}'
            assert publisher.publish_wait(topic, payload, qos=1, retain=True)
    finally:
        publisher.stop()
    service, conn = started_service(mosquitto, "ing-elsewhere", patrol_camera(http_camera.url))
    try:
        # 7 boosts (the own camera's, the bad id's, 5 elsewhere) and 6 requests a connection.
        wait_for(lambda: (service._boosts.received, service._requests.received) == (7, 6))
        mosquitto.stop()
        wait_for(lambda: not conn.connected)
        mosquitto.start()
        wait_for(lambda: (service._boosts.received, service._requests.received) == (14, 12))
        assert service.scheduler.weight("p1", time.monotonic()) == 1.0
        # Sent now, one of each is acted on; the queues are in order, so the old ones are done.
        assert conn.publish_wait(boost, b'{"factor": 2, "duration_s": 600}', qos=1)
        assert conn.publish_wait(request, encode_request(""), qos=1)
        wait_for(
            lambda: (
                service.scheduler.weight("p1", time.monotonic()) == 2.0
                and service.rejected["bad_request_id"] == 1
            )
        )
    finally:
        service.stop()
        conn.stop()
    assert service.stale == {boost: 2, request: 2}
    # The bad topic's retained boost: dead-lettered at the first hand-over, counted after.
    assert service.rejected == {"bad_topic": 1, "bad_request_id": 1}
    said = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.ingest.service"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(line.split(":")[0] for line in warned if "ignoring a retained" in line) == [
        f"ignoring a retained patrol boost on {boost}",
        f"ignoring a retained snapshot request on {request}",
    ]
    assert "; 5 retained (ignored); " in said[-1]
    assert not [line for line in said if "elsewhere" in line]


def test_a_retained_message_on_a_bad_topic_is_dead_lettered_once(
    mosquitto: Mosquitto, http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A retained boost and a retained request on topics no camera can have come back at
    every connection: each is dead-lettered once for the process's life, its letter and its
    warning saying that it is retained and how to clear it, and later hand-overs are counted
    as retained (ignored). Live ones on those topics are dead-lettered each time, as before."""
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest.service")
    boost = f"{PREFIX}/cameras/bad id1/patrol/boost"
    request = f"{PREFIX}/cameras/bad id1/snapshot/request"
    publisher = MqttConnection("old-cmds", MqttSettings.from_url(mosquitto.url), prefix=PREFIX)
    assert publisher.start(10)
    try:
        assert publisher.publish_wait(boost, b'{"factor": 16}', qos=1, retain=True)
        assert publisher.publish_wait(request, encode_request("old"), qos=1, retain=True)
    finally:
        publisher.stop()
    # A persistent session: the letters published while it reconnects wait for it.
    letters = MqttConnection(
        "letters", MqttSettings.from_url(mosquitto.url), prefix=PREFIX, persistent=True
    )
    sub = letters.subscribe(deadletter_topic(PREFIX, "ing-bad"), qos=1, maxsize=1000)
    assert letters.start(10)
    service, conn = started_service(mosquitto, "ing-bad", patrol_camera(http_camera.url))
    got: dict[bytes, dict[str, Any]] = {}  # by body: QoS 1 may deliver one twice
    try:
        wait_for(lambda: (service._boosts.received, service._requests.received) == (1, 1))
        mosquitto.stop()
        wait_for(lambda: not conn.connected)
        mosquitto.start()
        wait_for(lambda: (service._boosts.received, service._requests.received) == (2, 2))
        # Live ones after the hand-overs: each loop letters in order, so once theirs came, any
        # letter of the hand-overs came before.
        assert conn.publish_wait(boost, b'{"factor": 2}', qos=1)
        assert conn.publish_wait(request, encode_request("new"), qos=1)

        def live_lettered() -> bool:
            while (message := sub.get(0.1)) is not None:
                got[message.payload] = json.loads(message.payload)
            payloads = {base64.b64decode(g["payload_b64"]) for g in got.values()}
            return {b'{"factor": 2}', encode_request("new")} <= payloads

        wait_for(live_lettered)
    finally:
        service.stop()
        conn.stop()
        letters.stop()
    hint = (
        "handed over again at every connection and dead-lettered only this once; an empty "
        "retained message on its topic clears it: mosquitto_pub -r -n -t"
    )
    assert sorted((g["reason"], g["topic"], g.get("error", "")) for g in got.values()) == [
        ("bad_topic", boost, ""),
        ("bad_topic", boost, f"a retained patrol boost, {hint} '{boost}'"),
        ("bad_topic", request, ""),
        ("bad_topic", request, f"a retained snapshot request, {hint} '{request}'"),
    ]
    assert (service.bad_requests, service.rejected) == (4, {"bad_topic": 4})
    said = [r for r in caplog.records if r.name == "gridpatrol.ingest.service"]
    warned = [r.getMessage() for r in said if r.levelno == logging.WARNING]
    assert sorted(line.split(" from ")[0] for line in warned) == [
        "dead-lettered bad_topic ",
        "dead-lettered bad_topic ",
        f"dead-lettered bad_topic a retained patrol boost, {hint} '{boost}'",
        f"dead-lettered bad_topic a retained snapshot request, {hint} '{request}'",
    ]
    service.log_progress()
    progress = caplog.records[-1].getMessage()
    assert "; 2 retained (ignored); 4 malformed {'bad_topic': 4}, " in progress
