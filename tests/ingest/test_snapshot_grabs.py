"""Snapshot requests for a camera that takes long to open: a burst takes one grab; a grab that
fails leaves later requests answered, with the newest frame only while it is recent; requests
that overflow the queue are counted in the progress line."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.ingest import service as ingest_service
from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.snapshot import encode_request
from gridpatrol.ingest.topics import snapshot_request_topic, snapshot_topic
from gridpatrol.site import load_site

SHARED = MqttSettings.from_url("mqtt://127.0.0.1:1883")


class SnapshotCamera:
    """grab_once for snapshot threads, counting the grabs; the patrol's own visits get none."""

    def __init__(self) -> None:
        self.grabs = 0
        ok, data = cv2.imencode(".jpg", np.full((36, 64, 3), 128, np.uint8))
        assert ok
        self.image = data.tobytes()

    def __call__(self, camera: object, base_dir: Path | None) -> tuple[bytes, int, int] | None:
        if not threading.current_thread().name.startswith("snapshot"):
            return None
        self.grabs += 1
        self.grab()
        return self.image, 64, 36

    def grab(self) -> None:
        """What the source does before it hands over the frame."""


class SlowCamera(SnapshotCamera):
    """Each grab blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def grab(self) -> None:
        self.started.set()
        assert self.release.wait(30)


class DeadCamera(SnapshotCamera):
    """Every grab gets no frame (the source cannot be opened)."""

    def __call__(self, camera: object, base_dir: Path | None) -> tuple[bytes, int, int] | None:
        if threading.current_thread().name.startswith("snapshot"):
            self.grabs += 1
        return None


class SlowDeadCamera(DeadCamera):
    """Every grab takes until released, then gets no frame."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, camera: object, base_dir: Path | None) -> tuple[bytes, int, int] | None:
        if threading.current_thread().name.startswith("snapshot"):
            self.grabs += 1
            self.started.set()
            assert self.release.wait(30)
        return None


class FlakyCamera(SnapshotCamera):
    """Grabs get no frame while ``dead``."""

    dead = True

    def __call__(self, camera: object, base_dir: Path | None) -> tuple[bytes, int, int] | None:
        if self.dead and threading.current_thread().name.startswith("snapshot"):
            self.grabs += 1
            return None
        return super().__call__(camera, base_dir)


class FaultyOnceCamera(SnapshotCamera):
    """The first grab raises, the next ones return a frame."""

    def grab(self) -> None:
        if self.grabs == 1:
            raise RuntimeError("the decoder crashed")


PATROL_P1 = (
    "  - {id: p1, source: 'rtsp://127.0.0.1:9/x', interval_s: 3600, location: {address: a}}\n"
)


@contextmanager
def serving(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    name: str,
    camera: str = PATROL_P1,
    camera_id: str = "p1",
) -> Iterator[tuple[IngestService, MqttConnection, Subscription, Subscription]]:
    """Ingest serving ``camera`` (patrol camera p1), and a client subscribed to its snapshots
    and its status."""
    site = load_site(site_file(camera))
    served = MqttConnection(f"ing-{name}", SHARED, prefix=mqtt_prefix)
    asker = MqttConnection(f"asker-{name}", SHARED, prefix=mqtt_prefix)
    replies = asker.subscribe(snapshot_topic(mqtt_prefix, camera_id), qos=1)
    statuses = asker.subscribe(f"{mqtt_prefix}/cameras/{camera_id}/status", qos=1)
    service = IngestService(site, served, site.cameras)
    assert served.start(10) and asker.start(10)
    service.start()
    try:
        yield service, asker, replies, statuses
    finally:
        service.stop()
        served.stop()
        asker.stop()


def test_a_burst_of_requests_takes_one_grab_and_every_request_is_answered(
    site_file: Callable[..., Path], mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera = SlowCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    with serving(site_file, mqtt_prefix, "grabs") as (service, asker, replies, _):
        ids = [uuid.uuid4().hex for _ in range(5)]
        for request_id in ids:
            asker.publish(snapshot_request_topic(mqtt_prefix, "p1"), encode_request(request_id), 1)
        assert camera.started.wait(10)
        # Release the first grab only once every request has come in and waits for it.
        deadline = time.monotonic() + 30
        while len(service._waiting.get("p1", ())) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        camera.release.set()
        answered: set[str | None] = set()
        while len(answered) < len(ids) and (message := replies.get(10)) is not None:
            frame = decode_frame(
                message.payload, topic_camera_id="p1", received_at=datetime.now(UTC)
            )
            answered.add(frame.header.request_id)
    assert answered == set(ids)
    assert camera.grabs == 1


def test_the_progress_line_counts_snapshot_requests_dropped_from_a_full_queue(
    site_file: Callable[..., Path], mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    site = load_site(
        site_file("  - {id: p1, source: 'rtsp://127.0.0.1:9/x', interval_s: 3600,\n"
                  "     location: {address: a}}\n")
    )  # fmt: skip
    conn = MqttConnection("ing-progress", SHARED, prefix=mqtt_prefix)  # never started
    service = IngestService(site, conn, site.cameras)
    topic = snapshot_request_topic(mqtt_prefix, "p1")
    for mid in range(1, 106):  # a burst while nothing serves them: the queue holds 100
        request = encode_request(uuid.uuid4().hex)
        service._requests._put(Message(topic, request, 1, False, datetime.now(UTC), mid))
    with caplog.at_level(logging.INFO, logger="gridpatrol.ingest.service"):
        service.log_progress()
    assert "snapshot requests 105 received, 5 dropped (queue full);" in caplog.text


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the service logged as errors: logged once the waiting requests are let go."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == ingest_service.__name__ and r.levelno >= logging.ERROR
    ]


def test_a_grab_that_raises_leaves_later_requests_answered(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    camera = FaultyOnceCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    topic = snapshot_request_topic(mqtt_prefix, "p1")
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    with (
        caplog.at_level(logging.ERROR, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, "fault") as (_, asker, replies, _),
    ):
        asker.publish(topic, encode_request(first), 1)
        # The second request comes once the failed grab is over, not to join it.
        deadline = time.monotonic() + 10
        while not failures(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
        asker.publish(topic, encode_request(second), 1)
        message = replies.get(10)
    assert failures(caplog) == ["camera p1: the snapshot grab failed"]
    assert message is not None
    frame = decode_frame(message.payload, topic_camera_id="p1", received_at=datetime.now(UTC))
    assert frame.header.request_id == second
    assert camera.grabs == 2


@pytest.mark.parametrize(("age_s", "answered"), [(3 * 3600, False), (60, True)])
def test_a_failed_grab_answers_with_the_newest_frame_only_while_it_is_recent(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    age_s: float,
    answered: bool,
) -> None:
    """A requester takes the reply for a fresh picture: the last frame of a camera dead for
    hours must not go on a new alarm."""
    camera = DeadCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    captured = datetime.now(UTC) - timedelta(seconds=age_s)
    with (
        caplog.at_level(logging.INFO, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, f"stale-{age_s}") as (service, asker, replies, _),
    ):
        service.outputs["p1"].publish(camera.image, 64, 36, ts=captured)  # its last frame
        asker.publish(snapshot_request_topic(mqtt_prefix, "p1"), encode_request("r1"), 1)
        deadline = time.monotonic() + 10
        while not said(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
        # A reply leaves before the line saying so.
        message = replies.get(5 if answered else 1)
    assert camera.grabs == 1
    if answered:
        assert message is not None
        frame = decode_frame(message.payload, topic_camera_id="p1", received_at=datetime.now(UTC))
        assert (frame.header.request_id, frame.image) == ("r1", camera.image)
        assert abs((frame.header.ts - captured).total_seconds()) < 1e-3
        assert said(caplog) == ["camera p1: answered snapshot request r1"]
    else:
        assert message is None
        (line,) = said(caplog)
        assert re.fullmatch(
            r"camera p1: no frame for 1 snapshot request\(s\) and the newest was captured "
            r"108\d\d s before the request \(over 120 s\); not answered",
            line,
        ), line


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the service said about camera p1's snapshot requests (not the progress line)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == ingest_service.__name__
        and r.getMessage().startswith("camera p1: ")
        and "snapshot request" in r.getMessage()
    ]


def streaming_c1(source: str) -> str:
    """The site's camera c1, streamed from ``source`` at 2 fps."""
    return f"  - {{id: c1, source: '{source}', fps: 2, location: {{address: a}}}}\n"


class IdlePublisher(threading.Thread):
    """Stands in for a continuous camera's publisher: the test publishes its frames."""

    def __init__(self, *_args: object) -> None:
        super().__init__()

    def run(self) -> None:
        return


def test_a_failed_grab_of_a_streaming_camera_leaves_its_status(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A continuous camera's grab opens its source beside the stream (a camera may refuse a
    second connection): its failure is no patrol visit and takes nothing offline."""
    camera = DeadCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    monkeypatch.setattr(ingest_service, "CameraPublisher", IdlePublisher)
    c1 = streaming_c1("rtsp://cam:secret@127.0.0.1:9/x")
    with (
        caplog.at_level(logging.INFO, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, "streaming", c1, "c1") as (service, asker, replies, seen),
    ):
        # The stream's last frame, 5 s ago: too old to answer without a grab.
        captured = datetime.now(UTC) - timedelta(seconds=5)
        service.outputs["c1"].publish(camera.image, 64, 36, ts=captured)
        asker.publish(snapshot_request_topic(mqtt_prefix, "c1"), encode_request("r1"), 1)
        message = replies.get(10)
        statuses = [m.payload for m in seen.drain()]
    assert camera.grabs == 1
    assert message is not None  # the stream's recent frame
    assert statuses == [b"online"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == ingest_service.__name__ and r.levelno == logging.WARNING
    ]
    assert warnings == [
        "camera c1: the snapshot grab got no frame from rtsp://***@127.0.0.1:9/x (its stream "
        "is left as it is; not said again until a grab gets one)"
    ]


def test_a_grab_that_ends_late_answers_with_a_frame_recent_when_the_request_came(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The age limit counts back from the request, not from the end of a grab that took
    long (10-20 s for a dead camera, more behind other grabs)."""
    camera = SlowDeadCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    monkeypatch.setattr(ingest_service, "SNAPSHOT_FALLBACK_MAX_AGE_S", 2.0)
    with (
        caplog.at_level(logging.INFO, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, "late") as (service, asker, replies, _),
    ):
        captured = datetime.now(UTC) - timedelta(seconds=1)
        service.outputs["p1"].publish(camera.image, 64, 36, ts=captured)
        asker.publish(snapshot_request_topic(mqtt_prefix, "p1"), encode_request("r1"), 1)
        assert camera.started.wait(10)
        time.sleep(2.5)  # the frame is over 3.5 s old when the grab ends, 1 s at the request
        camera.release.set()
        message = replies.get(10)
    assert camera.grabs == 1
    assert message is not None
    frame = decode_frame(message.payload, topic_camera_id="p1", received_at=datetime.now(UTC))
    assert (frame.header.request_id, frame.image) == ("r1", camera.image)
    assert abs((frame.header.ts - captured).total_seconds()) < 1e-3
    assert said(caplog) == ["camera p1: answered snapshot request r1"]


def test_a_streaming_camera_whose_grabs_fail_warns_once_and_says_when_one_gets_a_frame(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    camera = FlakyCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    monkeypatch.setattr(ingest_service, "CameraPublisher", IdlePublisher)

    def lines() -> list[tuple[str, str]]:
        return [
            (r.levelname, r.getMessage())
            for r in caplog.records
            if r.name == ingest_service.__name__
            and r.getMessage().startswith("camera c1: ")
            and "snapshot" in r.getMessage()  # not the progress line at the stop
        ]

    def ask(request_id: str, count: int) -> None:
        asker.publish(snapshot_request_topic(mqtt_prefix, "c1"), encode_request(request_id), 1)
        deadline = time.monotonic() + 10
        while len(lines()) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    c1 = streaming_c1("rtsp://127.0.0.1:9/x")
    with (
        caplog.at_level(logging.INFO, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, "flaky", c1, "c1") as (_, asker, replies, _),
    ):
        ask("r1", 2)
        ask("r2", 3)
        camera.dead = False
        ask("r3", 5)
        message = replies.get(10)
    assert camera.grabs == 3
    assert message is not None
    frame = decode_frame(message.payload, topic_camera_id="c1", received_at=datetime.now(UTC))
    assert frame.header.request_id == "r3"
    unanswered = "camera c1: no frame for 1 snapshot request(s); not answered"
    assert lines() == [
        ("WARNING", "camera c1: the snapshot grab got no frame from rtsp://127.0.0.1:9/x (its "
                    "stream is left as it is; not said again until a grab gets one)"),
        ("WARNING", unanswered),
        ("INFO", unanswered),
        ("INFO", "camera c1: the snapshot grab got a frame again"),
        ("INFO", "camera c1: answered snapshot request r3"),
    ]  # fmt: skip
