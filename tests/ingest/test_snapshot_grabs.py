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
from dataclasses import replace
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
from gridpatrol.ingest.sources import HTTP_MAX_BYTES, NO_FRAME
from gridpatrol.ingest.topics import snapshot_request_topic, snapshot_topic
from gridpatrol.site import Camera, load_site, parse_site

from ..conftest import Mosquitto
from .conftest import write_clip

SHARED = MqttSettings.from_url("mqtt://127.0.0.1:1883")


class SnapshotCamera:
    """grab_frame for snapshot threads, counting the grabs; the patrol's own visits get none."""

    def __init__(self) -> None:
        self.grabs = 0
        ok, data = cv2.imencode(".jpg", np.full((36, 64, 3), 128, np.uint8))
        assert ok
        self.image = data.tobytes()

    def __call__(
        self, camera: object, base_dir: Path | None, max_bytes: int = HTTP_MAX_BYTES
    ) -> tuple[bytes, int, int] | str:
        if not threading.current_thread().name.startswith("snapshot"):
            return NO_FRAME
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

    def __call__(
        self, camera: object, base_dir: Path | None, max_bytes: int = HTTP_MAX_BYTES
    ) -> tuple[bytes, int, int] | str:
        if threading.current_thread().name.startswith("snapshot"):
            self.grabs += 1
        return NO_FRAME


class SlowDeadCamera(DeadCamera):
    """Every grab takes until released, then gets no frame."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(
        self, camera: object, base_dir: Path | None, max_bytes: int = HTTP_MAX_BYTES
    ) -> tuple[bytes, int, int] | str:
        if threading.current_thread().name.startswith("snapshot"):
            self.grabs += 1
            self.started.set()
            assert self.release.wait(30)
        return NO_FRAME


class FlakyCamera(SnapshotCamera):
    """Grabs get no frame while ``dead``."""

    dead = True

    def __call__(
        self, camera: object, base_dir: Path | None, max_bytes: int = HTTP_MAX_BYTES
    ) -> tuple[bytes, int, int] | str:
        if self.dead and threading.current_thread().name.startswith("snapshot"):
            self.grabs += 1
            return NO_FRAME
        return super().__call__(camera, base_dir, max_bytes)


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
    monkeypatch.setattr(ingest_service, "grab_frame", camera)
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
    monkeypatch.setattr(ingest_service, "grab_frame", camera)
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
    monkeypatch.setattr(ingest_service, "grab_frame", camera)
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


@contextmanager
def serving_c1(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    name: str,
    source: str,
    camera: SnapshotCamera,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[IngestService, MqttConnection, Subscription, Subscription]]:
    """:func:`serving` the streaming camera c1 from ``source``, whose grabs are ``camera``'s
    and whose stream frames the test publishes, with the service's info lines captured."""
    monkeypatch.setattr(ingest_service, "grab_frame", camera)
    monkeypatch.setattr(ingest_service, "CameraPublisher", IdlePublisher)
    with (
        caplog.at_level(logging.INFO, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, name, streaming_c1(source), "c1") as served,
    ):
        yield served


def test_a_failed_grab_of_a_streaming_camera_leaves_its_status(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A continuous camera's grab opens its source beside the stream (a camera may refuse a
    second connection): its failure is no patrol visit and takes nothing offline."""
    camera = DeadCamera()
    source = "rtsp://cam:secret@127.0.0.1:9/x"
    served = serving_c1(site_file, mqtt_prefix, "streaming", source, camera, monkeypatch, caplog)
    with served as (service, asker, replies, seen):
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


def c1_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """What the service said about camera c1's snapshots, with its level (not the progress
    line at the stop)."""
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == ingest_service.__name__
        and r.getMessage().startswith("camera c1: ")
        and "snapshot" in r.getMessage()
    ]


def wait_for_lines(caplog: pytest.LogCaptureFixture, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(c1_lines(caplog)) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_streaming_camera_whose_grabs_fail_warns_once_and_says_when_one_gets_a_frame(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    camera = FlakyCamera()

    def ask(request_id: str, count: int) -> None:
        asker.publish(snapshot_request_topic(mqtt_prefix, "c1"), encode_request(request_id), 1)
        wait_for_lines(caplog, count)

    source = "rtsp://127.0.0.1:9/x"
    served = serving_c1(site_file, mqtt_prefix, "flaky", source, camera, monkeypatch, caplog)
    with served as (_, asker, replies, _):
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
    assert c1_lines(caplog) == [
        ("WARNING", "camera c1: the snapshot grab got no frame from rtsp://127.0.0.1:9/x (its "
                    "stream is left as it is; not said again until a grab gets one)"),
        ("WARNING", unanswered),
        ("INFO", unanswered),
        ("INFO", "camera c1: the snapshot grab got a frame again"),
        ("INFO", "camera c1: answered snapshot request r3"),
    ]  # fmt: skip


def test_a_request_answered_from_the_stream_ends_a_failing_stretch_so_the_next_outage_warns(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A grab is made only while the stream's newest frame is stale: once the stream is back,
    requests are answered from it and no grab comes to end the failing stretch."""
    camera = DeadCamera()
    source = "rtsp://127.0.0.1:9/x"
    served = serving_c1(site_file, mqtt_prefix, "back", source, camera, monkeypatch, caplog)
    with served as (service, _, replies, _):
        output = service.outputs["c1"]
        service._answer("c1", "r1", datetime.now(UTC))  # the stream is down: no frame yet
        wait_for_lines(caplog, 2)
        output.publish(camera.image, 64, 36)  # the stream is back
        service._answer("c1", "r2", datetime.now(UTC))
        # The stream is down again: its last frame is 5 s old.
        output.publish(camera.image, 64, 36, ts=datetime.now(UTC) - timedelta(seconds=5))
        service._answer("c1", "r3", datetime.now(UTC))
        wait_for_lines(caplog, 6)
        answered = [replies.get(10), replies.get(10)]
    assert camera.grabs == 2
    assert [
        decode_frame(
            m.payload, topic_camera_id="c1", received_at=datetime.now(UTC)
        ).header.request_id
        for m in answered
        if m is not None
    ] == ["r2", "r3"]
    failed = (
        "camera c1: the snapshot grab got no frame from rtsp://127.0.0.1:9/x (its stream is left "
        "as it is; not said again until a grab gets one)"
    )
    assert c1_lines(caplog) == [
        ("WARNING", failed),
        ("WARNING", "camera c1: no frame for 1 snapshot request(s); not answered"),
        ("INFO", "camera c1: the stream answers snapshot requests again"),
        ("INFO", "camera c1: answered snapshot request r2"),
        ("WARNING", failed),
        ("INFO", "camera c1: answered snapshot request r3"),
    ]


def test_a_failed_grab_judges_the_newest_frame_by_each_requests_own_arrival(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The age limit counts back from each request, not from the end of a grab that took
    long (10-20 s for a dead camera, more behind other grabs), nor from the first of the
    requests that waited for it: a later one must not get a frame captured more than the
    limit before it came."""
    camera = SlowDeadCamera()
    monkeypatch.setattr(ingest_service, "grab_frame", camera)
    monkeypatch.setattr(ingest_service, "SNAPSHOT_FALLBACK_MAX_AGE_S", 5.0)
    with (
        caplog.at_level(logging.INFO, logger=ingest_service.__name__),
        serving(site_file, mqtt_prefix, "each") as (service, _, replies, _),
    ):
        captured = datetime.now(UTC) - timedelta(seconds=10)
        service.outputs["p1"].publish(camera.image, 64, 36, ts=captured)
        # Over 10 s old when the grab ends, 4 s when r1 came and 7 s when r2 came.
        service._answer("p1", "r1", captured + timedelta(seconds=4))
        assert camera.started.wait(10)
        service._answer("p1", "r2", captured + timedelta(seconds=7))  # waits for the same grab
        camera.release.set()
        message = replies.get(10)
        late = replies.get(1)
        deadline = time.monotonic() + 10
        while len(said(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert camera.grabs == 1
    assert message is not None
    frame = decode_frame(message.payload, topic_camera_id="p1", received_at=datetime.now(UTC))
    assert (frame.header.request_id, frame.image) == ("r1", camera.image)
    assert abs((frame.header.ts - captured).total_seconds()) < 1e-3
    assert late is None
    assert said(caplog) == [
        "camera p1: no frame for 1 snapshot request(s) and the newest was captured 7 s before "
        "the request (over 5 s); not answered",
        "camera p1: answered snapshot request r1",
    ]


def until_offline(statuses: Subscription) -> list[bytes]:
    """The statuses that come until ``offline`` (or 20 s have passed)."""
    seen: list[bytes] = []
    deadline = time.monotonic() + 20
    while b"offline" not in seen and time.monotonic() < deadline:
        message = statuses.get(0.1)
        if message is not None:
            seen.append(message.payload)
    return seen


def subscribed(asker: MqttConnection, topic: str) -> Subscription:
    """A subscription to ``topic`` the broker has taken on, with nothing left in it:
    ``subscribe`` does not wait for that, so a publication from another connection right after
    could reach the broker first and go to no one. Marks go out on ``topic`` until one comes
    back; the broker keeps one connection's packets in order, so then every later mark comes
    back too, the last one last."""
    sub = asker.subscribe(topic, qos=0)
    marks: list[bytes] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        marks.append(uuid.uuid4().bytes)
        assert asker.publish(topic, marks[-1], 0)
        message = sub.get(0.1)
        if message is not None and message.payload in marks:
            last = marks[-1]
            while message is not None and message.payload != last:
                message = sub.get(10)
            assert message is not None, f"the last mark on {topic} did not come back"
            return sub
    raise AssertionError(f"the subscription to {topic} was not taken on")


def reply_to(asker: MqttConnection, replies: Subscription, camera_id: str) -> Message | None:
    asker.publish(snapshot_request_topic(asker.prefix, camera_id), encode_request("r1"), 1)
    return replies.get(10)


def test_a_request_after_a_file_ended_leaves_its_camera_offline_and_publishes_no_frame(
    site_file: Callable[..., Path], mqtt_prefix: str, tmp_path: Path
) -> None:
    """Its grab read the file where the wall clock pointed, published that frame (taken by the
    detector for a live one) and brought back a retained ``online`` that stayed until ingest
    stopped. The request gets the file's last frame, still recent."""
    path = write_clip(tmp_path / "clip.avi", 10)  # 1 s, sampled at 2 fps
    camera = f"  - {{id: f1, source: '{path}', fps: 2, loop: false, location: {{address: a}}}}\n"
    with serving(site_file, mqtt_prefix, "ended", camera, "f1") as (service, asker, replies, seen):
        frames = asker.subscribe(f"{mqtt_prefix}/cameras/f1/frame", qos=0)
        statuses = until_offline(seen)
        frames.drain()  # those of the replay
        last = service.outputs["f1"].latest
        assert last is not None
        # Stale, so a request is no longer answered from it at once (the stream's way).
        time.sleep(max(0.0, 1.5 - (datetime.now(UTC) - last.header.ts).total_seconds()))
        message = reply_to(asker, replies, "f1")
        after = frames.drain()
        statuses += [m.payload for m in seen.drain()]
    assert statuses == [b"online", b"offline"]
    assert after == []
    assert service.outputs["f1"].stats.published == 2
    assert message is not None
    frame = decode_frame(message.payload, topic_camera_id="f1", received_at=datetime.now(UTC))
    assert (frame.header.request_id, frame.header.seq, frame.image) == ("r1", 1, last.image)


def test_a_grab_beside_a_dead_stream_answers_the_request_alone(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second connection to a camera whose stream is lost may succeed: its frame is no sign
    of the stream, so it neither goes on the frame topic nor brings the camera online."""
    camera = SnapshotCamera()
    source = "rtsp://127.0.0.1:9/x"
    served = serving_c1(site_file, mqtt_prefix, "beside", source, camera, monkeypatch, caplog)
    with served as (service, asker, replies, seen):
        frames = subscribed(asker, f"{mqtt_prefix}/cameras/c1/frame")
        output = service.outputs["c1"]
        stale = output.publish(camera.image, 64, 36, ts=datetime.now(UTC) - timedelta(seconds=5))
        output.set_status(False)  # the stream is lost
        statuses = until_offline(seen)
        assert frames.get(10) is not None  # the stale frame
        message = reply_to(asker, replies, "c1")
        after = frames.drain()
        statuses += [m.payload for m in seen.drain()]
    assert camera.grabs == 1
    assert statuses == [b"online", b"offline"]
    assert after == []
    assert (output.latest, output.online, output.stats.published) == (stale, False, 1)
    assert message is not None
    frame = decode_frame(message.payload, topic_camera_id="c1", received_at=datetime.now(UTC))
    assert (frame.header.request_id, frame.header.seq, frame.image) == ("r1", 1, camera.image)


def test_visits_and_grabs_take_http_snapshots_up_to_a_raised_packet_limit(
    mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A patrol visit and a continuous camera's grab fetched at most 16 MiB where the camera's
    own sampling took up to ``GRIDPATROL_MQTT_MAX_PACKET_SIZE``: a camera whose JPEG was
    published sampled failed every visit and grab."""
    limit = 32 * 2**20
    site = parse_site(
        f"site: {{name: Test}}\nmqtt: {{prefix: {mqtt_prefix}}}\ncameras:\n{PATROL_P1}"
        "  - {id: c1, source: 'http://127.0.0.1:9/snap.jpg', fps: 1, location: {address: a}}\n"
    )
    conn = MqttConnection("ing-cap", replace(SHARED, max_packet_size=limit), prefix=mqtt_prefix)
    service = IngestService(site, conn, site.cameras)
    caps: list[tuple[str, int]] = []
    image = SnapshotCamera().image

    def grab(
        camera: Camera, base_dir: Path | None, max_bytes: int = HTTP_MAX_BYTES
    ) -> tuple[bytes, int, int]:
        caps.append((camera.id, max_bytes))
        return image, 64, 36

    monkeypatch.setattr(ingest_service, "grab_frame", grab)
    assert service._visit("p1") is not None  # never started: the frame is dropped, not sent
    assert service._grab("c1") is not None
    assert caps == [("p1", limit), ("c1", limit)]


def test_a_snapshot_reply_the_connection_refuses_is_said_and_counted_not_answered(
    site_file: Callable[..., Path],
    mqtt_prefix: str,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    camera = SnapshotCamera()
    monkeypatch.setattr(ingest_service, "grab_frame", camera)
    site = load_site(site_file(PATROL_P1))
    settings = MqttSettings.from_url(mosquitto.url)
    served = MqttConnection("ing-refused", settings, prefix=mqtt_prefix, max_queued_messages=1)
    service = IngestService(site, served, site.cameras)
    assert served.start(10)
    mosquitto.stop(kill=True)  # the broker is away: QoS 1 publications wait in the queue
    deadline = time.monotonic() + 30
    while served._connected.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not served._connected.is_set()
    # Fill the connection's queue of one: the reply finds it full.
    filled = [served.publish(f"{mqtt_prefix}/filler", b"x", qos=1) for _ in range(2)]
    assert filled == [True, False]
    request_id = uuid.uuid4().hex
    topic = snapshot_request_topic(mqtt_prefix, "p1")
    with caplog.at_level(logging.INFO, logger="gridpatrol.ingest.service"):
        service.start()
        try:
            request = encode_request(request_id)
            service._requests._put(Message(topic, request, 1, False, datetime.now(UTC), 1))
            while request_id not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
            service.log_progress()
        finally:
            service.stop()
            served.stop()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if request_id in r.getMessage()]
    assert lines == [
        (
            "WARNING",
            f"camera p1: snapshot request {request_id} not answered: the connection refused "
            "the reply (its queue is full or the reply is over the packet limit)",
        )
    ]
    assert camera.grabs == 1
    assert (
        "snapshot requests 1 received, 0 dropped (queue full); 1 snapshot replies refused by "
        "the connection;" in caplog.text
    )
