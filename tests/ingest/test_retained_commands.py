"""Retained patrol boosts and snapshot requests: commands left on the broker are not acted on
again at each start and reconnection of ingest."""

from __future__ import annotations

import base64
import json
import logging
import shlex
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.receiver import LetterLimit
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
    mosquitto: Mosquitto, client_id: str, cameras: str, letters: LetterLimit | None = None
) -> tuple[IngestService, MqttConnection]:
    """Ingest of the site of ``cameras`` (its lines), started on ``mosquitto``."""
    site = parse_site(f"site: {{name: Test}}\nmqtt: {{prefix: {PREFIX}}}\ncameras:\n{cameras}")
    conn = MqttConnection(client_id, MqttSettings.from_url(mosquitto.url), prefix=PREFIX)
    service = IngestService(site, conn, site.cameras, letters=letters)
    assert conn.start(10)
    service.start()
    return service, conn


class DeadLetters:
    """The dead letters of ingest ``component`` on ``mosquitto``, taken by a persistent session:
    the letters published while it reconnects wait for it."""

    def __init__(self, mosquitto: Mosquitto, component: str) -> None:
        settings = MqttSettings.from_url(mosquitto.url)
        self.conn = MqttConnection(f"letters-{component}", settings, prefix=PREFIX, persistent=True)
        self._sub = self.conn.subscribe(deadletter_topic(PREFIX, component), qos=1, maxsize=1000)
        assert self.conn.start(10)
        self.got: dict[bytes, dict[str, Any]] = {}  # by body: QoS 1 may deliver one twice

    def came(self, payload: bytes, error: str | None = "") -> bool:
        """Whether the letter of ``payload`` with ``error`` (None: any) came. Each loop of
        ingest letters in order: once one came, those it sent before came too."""
        while (message := self._sub.get(0.1)) is not None:
            self.got[message.payload] = json.loads(message.payload)
        return any(p == payload and error in (None, e) for _, _, p, e in self.seen())

    def seen(self) -> list[tuple[str, str, bytes, str]]:
        """The letters that came: reason, topic, payload and error, sorted."""
        return sorted(
            (g["reason"], g["topic"], base64.b64decode(g["payload_b64"]), g.get("error", ""))
            for g in self.got.values()
        )


def publish_retained(mosquitto: Mosquitto, messages: dict[str, bytes]) -> None:
    """Leave ``messages`` (by topic) retained on ``mosquitto``."""
    publisher = MqttConnection("old-cmds", MqttSettings.from_url(mosquitto.url), prefix=PREFIX)
    assert publisher.start(10)
    try:
        for topic, payload in messages.items():
            assert publisher.publish_wait(topic, payload, qos=1, retain=True)
    finally:
        publisher.stop()


def reconnect(mosquitto: Mosquitto, conn: MqttConnection) -> None:
    """Restart ``mosquitto`` (its persistence keeps the retained messages), once ``conn`` saw
    it gone."""
    mosquitto.stop()
    wait_for(lambda: not conn.connected)
    mosquitto.start()


HINT = (
    "handed over again at every connection and dead-lettered only this once; an empty "
    "retained message on its topic clears it: mosquitto_pub -r -n -t"
)


def hint(what: str, topic: str) -> str:
    """The letter's error of a retained ``what`` on ``topic`` (with a space, no quote)."""
    return f"a retained {what}, {HINT} '{topic}'"


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
    publish_retained(mosquitto, {boost: b'{"factor": 16}', request: encode_request("old")})
    letters = DeadLetters(mosquitto, "ing-bad")
    service, conn = started_service(mosquitto, "ing-bad", patrol_camera(http_camera.url))
    try:
        wait_for(lambda: (service._boosts.received, service._requests.received) == (1, 1))
        reconnect(mosquitto, conn)
        wait_for(lambda: (service._boosts.received, service._requests.received) == (2, 2))
        # Live ones after the hand-overs: once theirs came, any letter of the hand-overs came.
        assert conn.publish_wait(boost, b'{"factor": 2}', qos=1)
        assert conn.publish_wait(request, encode_request("new"), qos=1)
        wait_for(lambda: letters.came(b'{"factor": 2}') and letters.came(encode_request("new")))
    finally:
        service.stop()
        conn.stop()
        letters.conn.stop()
    assert sorted((topic, error) for _, topic, _, error in letters.seen()) == [
        (boost, ""),
        (boost, hint("patrol boost", boost)),
        (request, ""),
        (request, hint("snapshot request", request)),
    ]
    assert (service.bad_requests, service.rejected) == (4, {"bad_topic": 4})
    said = [r for r in caplog.records if r.name == "gridpatrol.ingest.service"]
    warned = [r.getMessage() for r in said if r.levelno == logging.WARNING]
    assert sorted(line.split(" from ")[0] for line in warned) == [
        "dead-lettered bad_topic ",
        "dead-lettered bad_topic ",
        f"dead-lettered bad_topic {hint('patrol boost', boost)}",
        f"dead-lettered bad_topic {hint('snapshot request', request)}",
    ]
    service.log_progress()
    progress = caplog.records[-1].getMessage()
    assert "; 2 retained (ignored); 4 malformed {'bad_topic': 4}, " in progress


def test_a_retained_bad_topic_over_the_letter_limit_is_dead_lettered_at_a_later_hand_over(
    mosquitto: Mosquitto, http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Retained requests on more topics no camera can have than a window's letters allow: the
    limit refuses the letters of some, and those get theirs at a hand-over after the window,
    once each; the topics lettered are not lettered again. Before, a topic refused its letter
    was taken as lettered, and never got one for the process's life."""
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest.service")
    topics = [f"{PREFIX}/cameras/bad id{n}/snapshot/request" for n in range(5)]
    publish_retained(mosquitto, {t: encode_request(f"old{n}") for n, t in enumerate(topics)})
    letters = DeadLetters(mosquitto, "ing-limit")
    now = [0.0]  # the limit's clock: the test ends its window
    limit = LetterLimit(clock=lambda: now[0], per_window=3, what="requests", topics="topic")
    service, conn = started_service(mosquitto, "ing-limit", patrol_camera(http_camera.url), limit)
    try:
        wait_for(lambda: service.bad_requests == 5)  # 3 lettered, 2 over the limit
        now[0] = 61.0
        reconnect(mosquitto, conn)
        wait_for(lambda: service._requests.received == 10)
        assert conn.publish_wait(topics[0], encode_request("live"), qos=1)
        wait_for(lambda: letters.came(encode_request("live")))
    finally:
        service.stop()
        conn.stop()
        letters.conn.stop()
    expected = [
        ("bad_topic", t, encode_request(f"old{n}"), hint("snapshot request", t))
        for n, t in enumerate(topics)
    ]
    assert letters.seen() == sorted(
        [*expected, ("bad_topic", topics[0], encode_request("live"), "")]
    )
    assert service._bad_retained == set(topics)
    service.log_progress()
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith(
            "; 3 retained (ignored); 8 malformed {'bad_topic': 8}, of them not dead-lettered "
            "(over the limit) {'bad_topic': 2}"
        )
    )


def test_clearing_a_retained_message_on_a_bad_topic_is_no_fault_and_forgets_the_topic(
    mosquitto: Mosquitto, http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The empty retained message the letter of a retained boost on a bad topic asks for comes
    to the running ingest without the flag: it is said at INFO, not dead-lettered as a new
    fault, and the topic is forgotten, so that a retained boost left there again gets its
    letter at the next hand-over. Before, the clearing got a blank letter and a warning, and
    the boost left again was ignored for the process's life."""
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest.service")
    boost = f"{PREFIX}/cameras/bad id1/patrol/boost"
    publish_retained(mosquitto, {boost: b'{"factor": 16}'})
    letters = DeadLetters(mosquitto, "ing-clear")
    service, conn = started_service(mosquitto, "ing-clear", patrol_camera(http_camera.url))
    try:
        wait_for(lambda: service._boosts.received == 1)
        reconnect(mosquitto, conn)
        wait_for(lambda: service._boosts.received == 2)
        assert conn.publish_wait(boost, b"", qos=1, retain=True)
        # Left again while ingest runs: it comes without the flag, a live one, lettered as such.
        assert conn.publish_wait(boost, b'{"factor": 8}', qos=1, retain=True)
        wait_for(lambda: letters.came(b'{"factor": 8}'))
        assert letters.seen() == [
            ("bad_topic", boost, b'{"factor": 16}', hint("patrol boost", boost)),
            ("bad_topic", boost, b'{"factor": 8}', ""),
        ]
        assert service._bad_retained == set()
        reconnect(mosquitto, conn)
        wait_for(lambda: letters.came(b'{"factor": 8}', hint("patrol boost", boost)))
    finally:
        service.stop()
        conn.stop()
        letters.conn.stop()
    assert len(letters.seen()) == 3
    said = [r for r in caplog.records if r.name == "gridpatrol.ingest.service"]
    assert [r.getMessage() for r in said if "cleared" in r.getMessage()] == [
        f"the retained patrol boost on {boost} was cleared (an empty message there, not "
        "dead-lettered); a retained one there again is dead-lettered again"
    ]
    assert [r.levelno for r in said if "cleared" in r.getMessage()] == [logging.INFO]
    service.log_progress()
    assert "; 1 retained (ignored); 3 malformed {'bad_topic': 3}, " in said[-1].getMessage()


def test_the_clearing_command_of_a_retained_bad_topic_is_whole_and_quoted_for_the_shell(
    mosquitto: Mosquitto, http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The command a retained request's letter gives to clear its topic is quoted for a POSIX
    shell (the topic has a quote and a space), and it clears it; one too long for the letter's
    error is left out, saying so, not cut. Before, the topic was put between single quotes
    as it was, which its own quote broke, and the long one was cut before its closing quote."""
    caplog.set_level(logging.INFO, logger="gridpatrol.ingest.service")
    quoted = f"{PREFIX}/cameras/o'brien x/snapshot/request"
    long = f"{PREFIX}/cameras/{'x' * 1200} y/snapshot/request"
    publish_retained(mosquitto, {quoted: encode_request("q"), long: encode_request("long")})
    letters = DeadLetters(mosquitto, "ing-quote")
    service, conn = started_service(mosquitto, "ing-quote", patrol_camera(http_camera.url))
    try:
        wait_for(lambda: letters.came(encode_request("q"), None))
        wait_for(lambda: letters.came(encode_request("long"), None))
        errors = {topic: error for _, topic, _, error in letters.seen()}
        said, command = errors[quoted].split(" clears it: ")
        assert said == "a retained snapshot request, " + HINT.split(" clears it: ")[0]
        argv = shlex.split(command)
        assert argv == ["mosquitto_pub", "-r", "-n", "-t", quoted]
        where = ["-h", "127.0.0.1", "-p", str(mosquitto.port)]
        subprocess.run([*argv, *where], check=True, timeout=10)
        # The clearing comes before this one, on the same loop: once its letter came, it was done.
        assert conn.publish_wait(long, encode_request("live"), qos=1)
        wait_for(lambda: letters.came(encode_request("live")))
    finally:
        service.stop()
        conn.stop()
        letters.conn.stop()
    assert errors[long] == (
        f"{said} clears it (mosquitto_pub -r -n -t with the letter's topic, too long to quote here)"
    )
    assert [(topic, payload) for _, topic, payload, _ in letters.seen()] == sorted(
        [
            (long, encode_request("live")),
            (long, encode_request("long")),
            (quoted, encode_request("q")),
        ]
    )
    assert service._bad_retained == {long}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(line.split(": b'")[0] for line in warned if "dead-lettered" in line) == [
        f"dead-lettered bad_topic  from {long}",
        f"dead-lettered bad_topic {errors[long]} from {long}",
        f"dead-lettered bad_topic {errors[quoted]} from {quoted}",
    ]
