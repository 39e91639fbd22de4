"""The broker's packet limit: a publication over it is refused, never sent (the broker would drop
the connection, and every camera of the process with it); a frame over it is re-encoded to fit."""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gridpatrol.ingest import sources
from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import (
    Message,
    MqttConfigError,
    MqttConnection,
    MqttSettings,
    publish_overhead,
)
from gridpatrol.ingest.reliable import ReliableConsumer
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.sources import (
    ENVELOPE_OVERHEAD,
    CameraOutput,
    CameraPublisher,
    CameraStats,
)
from gridpatrol.ingest.topics import deadletter_topic, sensor_alarm_topic, snapshot_topic
from gridpatrol.site import parse_site

from ..conftest import Mosquitto
from .conftest import write_clip

MiB = 2**20
SAMPLE_LIMIT = 16 * MiB  # max_packet_size in samples/mosquitto.conf, the connection's default


@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[Callable[[int], Mosquitto]]:
    """A private Mosquitto whose ``max_packet_size`` is the given number of bytes."""
    made: list[Mosquitto] = []

    def start(max_packet_size: int) -> Mosquitto:
        workdir = tmp_path / f"broker-{len(made)}"
        workdir.mkdir()
        broker = Mosquitto(workdir, persistence=False)
        broker.conf.write_text(broker.conf.read_text() + f"max_packet_size {max_packet_size}\n")
        broker.start()
        made.append(broker)
        return broker

    yield start
    for broker in made:
        broker.stop()


def noise_jpeg(width: int, height: int) -> bytes:
    """A JPEG at quality 100 of noise: as large as a picture of that size gets."""
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return bytes(data.tobytes())


def test_a_publication_over_the_limit_is_refused_and_the_connection_stays(
    limited_broker: Callable[[int], Mosquitto], watch: Any, mqtt_prefix: str
) -> None:
    """The broker says its limit in the MQTT 5 CONNACK; a lower one of the settings (the only
    one there is with MQTT 3.1.1) wins."""
    broker = limited_broker(MiB)
    watcher = watch(broker.url, f"{mqtt_prefix}/#", mqtt_prefix)
    said = MqttConnection("pub-broker", MqttSettings.from_url(broker.url), prefix=mqtt_prefix)
    mine = MqttSettings.from_url(broker.url)
    capped = MqttConnection("pub-mine", replace(mine, max_packet_size=4096), prefix=mqtt_prefix)
    topic = f"{mqtt_prefix}/big"
    try:
        assert said.start(10) and capped.start(10)
        assert (said.max_packet_size, capped.max_packet_size) == (MiB, 4096)
        fits = said.max_payload(topic, 1)
        assert not said.publish(topic, bytes(fits + 1), qos=1)
        assert not said.publish_wait(topic, bytes(fits + 1), qos=1)
        assert not capped.publish(topic, bytes(4096), qos=0)
        assert said.publish_wait(topic, bytes(fits), qos=1)
        assert capped.publish_wait(topic, bytes(capped.max_payload(topic, 1)), qos=1)
        seen = watcher.collect(lambda s: len([m for m in s if m.topic == topic]) >= 2)
    finally:
        said.stop()
        capped.stop()
    assert sorted(len(m.payload) for m in seen if m.topic == topic) == [
        capped.max_payload(topic, 1),
        fits,
    ]
    assert (said.connects, capped.connects) == (1, 1)
    assert (said.publish_oversize, capped.publish_oversize) == (2, 1)


@pytest.mark.parametrize(
    ("text", "size"), [(None, SAMPLE_LIMIT), ("", SAMPLE_LIMIT), ("2048", 2048)]
)
def test_the_packet_limit_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str | None, size: int
) -> None:
    if text is None:
        monkeypatch.delenv("GRIDPATROL_MQTT_MAX_PACKET_SIZE", raising=False)
    else:
        monkeypatch.setenv("GRIDPATROL_MQTT_MAX_PACKET_SIZE", text)
    assert MqttSettings.from_env().max_packet_size == size


@pytest.mark.parametrize("text", ["16M", "100", "-5", "300000000"])
def test_a_packet_limit_that_cannot_be_is_a_setting_error(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("GRIDPATROL_MQTT_MAX_PACKET_SIZE", text)
    with pytest.raises(MqttConfigError, match="GRIDPATROL_MQTT_MAX_PACKET_SIZE must be"):
        MqttSettings.from_env()


def serve(
    broker: Mosquitto, prefix: str, cameras: str, base_dir: Path
) -> tuple[MqttConnection, IngestService]:
    site = parse_site(f"site: {{name: Test}}\nmqtt: {{prefix: {prefix}}}\ncameras:\n{cameras}")
    conn = MqttConnection("ing-limit", MqttSettings.from_url(broker.url), prefix=prefix)
    service = IngestService(site, conn, site.cameras, base_dir=base_dir)
    assert conn.start(10)
    service.start()
    return conn, service


def test_an_http_snapshot_over_the_limit_takes_nothing_off_the_broker(
    limited_broker: Callable[[int], Mosquitto],
    http_camera: Any,
    watch: Any,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    """An 18 MiB JPEG made the broker (16 MiB) drop ingest at every fetch: its will said every
    camera offline, and the other cameras' frames were lost while it reconnected."""
    broker = limited_broker(SAMPLE_LIMIT)
    http_camera.image = noise_jpeg(3600, 2700)
    assert len(http_camera.image) > 18 * MiB
    write_clip(tmp_path / "clip.avi", 80)  # 8 s, sampled at 2 fps: 16 frames
    watcher = watch(broker.url, f"{mqtt_prefix}/#", mqtt_prefix)
    cameras = (
        f"  - {{id: h1, source: '{http_camera.url}', fps: 0.5, location: {{address: a}}}}\n"
        "  - {id: f1, source: clip.avi, fps: 2, loop: false, location: {address: a}}\n"
    )
    conn, service = serve(broker, mqtt_prefix, cameras, tmp_path)
    status = f"{mqtt_prefix}/cameras/f1/status"
    try:
        seen = watcher.collect(lambda s: b"offline" in watcher.payloads(status), timeout=30)
    finally:
        service.stop()
        conn.stop()
    frames = watcher.payloads(f"{mqtt_prefix}/cameras/f1/frame")
    f1, h1 = service.outputs["f1"].stats, service.outputs["h1"].stats
    assert (len(frames), f1.published, f1.dropped) == (16, 16, 0)
    assert conn.connects == 1
    assert watcher.payloads(f"{mqtt_prefix}/components/ing-limit/status") == [b"online"]
    assert (h1.published, h1.dropped) == (0, 0)
    assert h1.failures >= 1  # refused at the fetch, as larger than a frame may be
    assert not [m for m in seen if m.topic == f"{mqtt_prefix}/cameras/h1/frame"]


def test_a_snapshot_too_large_for_the_broker_is_re_encoded_to_fit(
    limited_broker: Callable[[int], Mosquitto], http_camera: Any, watch: Any, mqtt_prefix: str
) -> None:
    """The broker takes 1 MiB and says so in its CONNACK; the camera's 1.4 MiB JPEG goes out
    re-encoded at the camera's quality, its size kept."""
    broker = limited_broker(MiB)
    http_camera.image = noise_jpeg(1000, 750)
    assert len(http_camera.image) > 1.4 * MiB
    watcher = watch(broker.url, f"{mqtt_prefix}/#", mqtt_prefix)
    cameras = f"  - {{id: h1, source: '{http_camera.url}', fps: 2, location: {{address: a}}}}\n"
    conn, service = serve(broker, mqtt_prefix, cameras, Path.cwd())
    topic = f"{mqtt_prefix}/cameras/h1/frame"
    try:
        watcher.collect(lambda s: len(watcher.payloads(topic)) >= 3, timeout=30)
        time.sleep(0.5)  # a frame under way counts too
    finally:
        service.stop()
        conn.stop()
    payloads = watcher.payloads(topic)
    frames = [
        decode_frame(p, topic_camera_id="h1", received_at=datetime.now(UTC)) for p in payloads
    ]
    assert len(frames) >= 3
    assert {(f.header.width, f.header.height) for f in frames} == {(1000, 750)}
    assert max(len(p) for p in payloads) < MiB
    assert conn.connects == 1
    assert service.outputs["h1"].stats.dropped == 0


# ---------------------------------------------------------------------------------------------
# A camera near the limit: its frames keep one size, each is encoded once.

STREET = "pedestrian_street_1080p.mp4"  # 30 fps, 1920x1080


def street_frames(shared_dir: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(shared_dir / "footage" / STREET))
    frames = []
    for _ in range(count):
        ok, image = cap.read()
        assert ok
        frames.append(image)
    cap.release()
    return frames


def jpeg_bytes(image: np.ndarray, quality: int) -> int:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return len(data)


def broker_for_budget(
    limited_broker: Callable[[int], Mosquitto], prefix: str, budget: int
) -> Mosquitto:
    """A broker whose packet limit leaves a frame of camera c1 a JPEG of ``budget`` bytes."""
    overhead = publish_overhead(snapshot_topic(prefix, "c1"), 1, v5=True)
    return limited_broker(budget + ENVELOPE_OVERHEAD + overhead)


class StopAfter(threading.Event):
    """A stop event set at its ``n + 1``-th wait: a file camera waits once before each frame,
    an HTTP camera once after each snapshot."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        if self.waits > self.n:
            self.set()
        return super().wait(0 if self.is_set() else timeout)


class Counting:
    """The module's JPEG encodes and decodes, counted by the frame under way (the number of
    frames the camera published or dropped before)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stats: CameraStats) -> None:
        self.stats = stats
        self.encodes: Counter[int] = Counter()
        self.decodes: Counter[int] = Counter()
        encode, decode = sources._jpeg, sources._decoded

        def counted_encode(image: np.ndarray, quality: int) -> tuple[bytes, int, int]:
            self.encodes[self._frame()] += 1
            return encode(image, quality)

        def counted_decode(data: bytes) -> np.ndarray | None:
            self.decodes[self._frame()] += 1
            return decode(data)

        monkeypatch.setattr(sources, "_jpeg", counted_encode)
        monkeypatch.setattr(sources, "_decoded", counted_decode)

    def _frame(self) -> int:
        return self.stats.published + self.stats.dropped

    @staticmethod
    def per_frame(counter: Counter[int], frames: int) -> list[int]:
        return [counter[i] for i in range(frames)]


def street_camera(
    broker: Mosquitto, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[CameraOutput, Counting, MqttConnection]:
    """Camera c1, the street footage sampled at its 30 fps, connected to ``broker``; its
    encodes and decodes counted."""
    site = parse_site(
        f"site: {{name: Test}}\nmqtt: {{prefix: {prefix}}}\ncameras:\n"
        f"  - {{id: c1, source: '{STREET}', fps: 30, location: {{address: a}}}}\n"
    )
    conn = MqttConnection("ing-near", MqttSettings.from_url(broker.url), prefix=prefix)
    assert conn.start(10)
    output = CameraOutput(site.cameras[0], conn)
    return output, Counting(monkeypatch, output.stats), conn


def replay_every_frame(output: CameraOutput, stop: StopAfter, shared_dir: Path) -> None:
    """Replay the street footage with no sample skipped as late, however long its encodes
    take on a busy machine: the tests follow each frame of the footage."""
    publisher = CameraPublisher(output, stop, shared_dir / "footage")
    publisher.late_s = math.inf
    publisher.run()


def published_sizes(watcher: Any, topic: str, count: int) -> list[tuple[int, int, int]]:
    """(width, height, JPEG bytes) of the first ``count`` frames on ``topic``."""
    watcher.collect(lambda s: len(watcher.payloads(topic)) >= count)
    frames = [
        decode_frame(p, topic_camera_id="c1", received_at=datetime.now(UTC))
        for p in watcher.payloads(topic)
    ]
    return [(f.header.width, f.header.height, len(f.image)) for f in frames]


def test_a_camera_near_the_limit_keeps_one_frame_size_and_encodes_each_frame_once(
    limited_broker: Callable[[int], Mosquitto],
    watch: Any,
    mqtt_prefix: str,
    shared_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The budget is the median size of the camera's frames: decided frame by frame, 8 went
    out at 1920x1080, 8 scaled to 1728x972, one at 1920x1080 again, ... (the detector's
    tracker lost its tracks at every change), each scaled one encoded 3 times. The first
    frame over the budget steps the camera's quality down, for all later frames."""
    footage = street_frames(shared_dir, 30)
    budget = sorted(jpeg_bytes(image, 85) for image in footage)[15]
    broker = broker_for_budget(limited_broker, mqtt_prefix, budget)
    topic = f"{mqtt_prefix}/cameras/c1/frame"
    watcher = watch(broker.url, topic, mqtt_prefix)
    output, counting, conn = street_camera(broker, mqtt_prefix, monkeypatch)
    try:
        with caplog.at_level(logging.INFO, logger=sources.__name__):
            replay_every_frame(output, StopAfter(30), shared_dir)
        sizes = published_sizes(watcher, topic, 30)
    finally:
        conn.stop()
    assert [(w, h) for w, h, _ in sizes] == [(1920, 1080)] * 30
    assert max(n for _, _, n in sizes) <= budget
    assert (output.stats.published, output.stats.dropped, conn.publish_oversize) == (30, 0, 0)
    # The first frame over the budget was encoded at quality 85, then 75; every other once.
    first_over = next(i for i, image in enumerate(footage) if jpeg_bytes(image, 85) > budget)
    assert counting.per_frame(counting.encodes, 30) == [
        2 if i == first_over else 1 for i in range(30)
    ]
    assert [m for m in caplog.messages if "JPEG quality" in m] == [
        f"camera c1: a frame of {jpeg_bytes(footage[first_over], 85)} bytes (1920x1080) is over "
        f"the {budget} bytes the broker's packet limit leaves it; frames go out at JPEG quality "
        "75, 1920x1080 from now on (set the camera's resize or jpeg_quality to spare the work)"
    ]


def test_frames_far_over_the_limit_are_scaled_once_to_one_size(
    limited_broker: Callable[[int], Mosquitto],
    watch: Any,
    mqtt_prefix: str,
    shared_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames still over the budget at the lowest quality step are scaled down: the first
    frame finds the size, every later one is resized to it before its one encode."""
    footage = street_frames(shared_dir, 20)
    budget = round(0.8 * min(jpeg_bytes(image, 60) for image in footage))
    broker = broker_for_budget(limited_broker, mqtt_prefix, budget)
    topic = f"{mqtt_prefix}/cameras/c1/frame"
    watcher = watch(broker.url, topic, mqtt_prefix)
    output, counting, conn = street_camera(broker, mqtt_prefix, monkeypatch)
    try:
        replay_every_frame(output, StopAfter(20), shared_dir)
        sizes = published_sizes(watcher, topic, 20)
    finally:
        conn.stop()
    assert len(sizes) == 20
    assert len({(w, h) for w, h, _ in sizes}) == 1
    width, height, _ = sizes[0]
    assert width < 1920 and abs(width / height - 16 / 9) < 0.01
    assert max(n for _, _, n in sizes) <= budget
    # The first: quality 85, then 60 (far over: straight to the floor), then scaled down.
    assert counting.per_frame(counting.encodes, 20) == [3] + [1] * 19


def test_a_camera_jpeg_over_the_limit_is_decoded_once_and_encoded_once(
    limited_broker: Callable[[int], Mosquitto],
    mqtt_prefix: str,
    shared_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An HTTP camera's JPEGs (quality 95) over the budget: the first re-encoded at the
    camera's quality (85: too large still), then at 75; each later one decoded and encoded
    once, at 75, its size kept. Each was decoded, encoded at 85, scaled and encoded again."""
    footage = street_frames(shared_dir, 20)
    came = [
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        for image in footage
    ]
    pixels = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in came]
    at_85 = [jpeg_bytes(image, 85) for image in pixels]
    at_75 = [jpeg_bytes(image, 75) for image in pixels]
    budget = (max(at_75) + min(at_85)) // 2
    assert max(at_75) < budget < min(at_85)
    broker = broker_for_budget(limited_broker, mqtt_prefix, budget)
    output, counting, conn = street_camera(broker, mqtt_prefix, monkeypatch)
    try:
        sent = [output.publish(data, 1920, 1080) for data in came]
    finally:
        conn.stop()
    assert [(f.header.width, f.header.height) for f in sent if f] == [(1920, 1080)] * 20
    assert [len(f.image) <= budget for f in sent if f] == [True] * 20
    assert counting.per_frame(counting.decodes, 20) == [1] * 20
    assert counting.per_frame(counting.encodes, 20) == [2] + [1] * 19


def test_a_step_down_is_taken_back_only_after_many_frames_with_room(shared_dir: Path) -> None:
    """Back to the camera's quality once UP_AFTER frames in a row would have fit it with room
    to spare (by the sizes measured on the way down); never while they would just fit."""
    (image,) = street_frames(shared_dir, 1)
    image = cv2.resize(image, (480, 270), interpolation=cv2.INTER_AREA)
    at_85, at_75 = jpeg_bytes(image, 85), jpeg_bytes(image, 75)
    camera = parse_site(
        "site: {name: Test}\nmqtt: {prefix: t}\ncameras:\n"
        "  - {id: c1, source: x.mp4, location: {address: a}}\n"
    ).cameras[0]
    fit = sources.FrameFit(camera)

    def sizes(budget: int, frames: int) -> list[int]:
        out = []
        for _ in range(frames):
            fitted = fit.image(image, budget)
            assert fitted is not None
            out.append(len(fitted[0]))
        return out

    up_after = sources.UP_AFTER
    assert sizes((at_75 + at_85) // 2, 3) == [at_75] * 3
    # The camera's quality would fit, but with less than 15 % to spare: the step holds.
    assert sizes(at_85 + 1, 3 * up_after) == [at_75] * 3 * up_after
    roomy = math.ceil(at_85 / sources.UP_MARGIN) + 1
    assert sizes(roomy, up_after + 2) == [at_75] * up_after + [at_85] * 2
    assert (fit.quality, fit.scale) == (85, 1.0)


def test_an_http_snapshot_up_to_a_raised_packet_limit_is_taken(
    limited_broker: Callable[[int], Mosquitto], http_camera: Any, mqtt_prefix: str
) -> None:
    """GRIDPATROL_MQTT_MAX_PACKET_SIZE set to 32 MiB (the broker takes 16): an 18 MiB JPEG
    is fetched, no longer refused at 16 MiB, and goes out re-encoded to fit."""
    broker = limited_broker(SAMPLE_LIMIT)
    http_camera.image = noise_jpeg(3600, 2700)
    assert len(http_camera.image) > 18 * MiB
    site = parse_site(
        f"site: {{name: Test}}\nmqtt: {{prefix: {mqtt_prefix}}}\ncameras:\n"
        f"  - {{id: h1, source: '{http_camera.url}', fps: 2, location: {{address: a}}}}\n"
    )
    settings = replace(MqttSettings.from_url(broker.url), max_packet_size=32 * MiB)
    conn = MqttConnection("ing-raised", settings, prefix=mqtt_prefix)
    assert conn.start(10)
    output = CameraOutput(site.cameras[0], conn)
    try:
        CameraPublisher(output, StopAfter(0)).run()
    finally:
        conn.stop()
    assert conn.max_packet_size == SAMPLE_LIMIT
    assert (output.stats.published, output.stats.failures, output.stats.dropped) == (1, 0, 0)
    assert output.latest is not None
    assert (output.latest.header.width, output.latest.header.height) == (3600, 2700)
    assert len(output.latest.image) < SAMPLE_LIMIT - ENVELOPE_OVERHEAD


# ---------------------------------------------------------------------------------------------
# Dead letters over the limit


def failing_consumer(broker: Mosquitto, prefix: str) -> ReliableConsumer:
    """A consumer of sensor alarms giving up on a message after one attempt."""
    return ReliableConsumer(
        "alarm-t",
        [f"{prefix}/sensors/+/alarm"],
        MqttSettings.from_url(broker.url),
        prefix=prefix,
        client_id=f"{prefix}-alarm-t",
        max_attempts=1,
        retry_delay_s=0.01,
    )


def test_a_handler_failed_letter_over_the_limit_is_cut_to_fit(
    limited_broker: Callable[[int], Mosquitto], mqtt_prefix: str
) -> None:
    """A 60 KiB message makes an 80 KiB letter: over a 64 KiB limit, it was refused and the
    message left for redelivery, to be refused again at every reconnection."""
    broker = limited_broker(65536)
    settings = MqttSettings.from_url(broker.url)
    reader = failing_consumer(broker, mqtt_prefix)
    sender = MqttConnection("sensor-gw", settings, prefix=mqtt_prefix)
    letters = sender.subscribe(deadletter_topic(mqtt_prefix, "alarm-t"), qos=1)
    payload = bytes(range(256)) * 240  # 60 KiB
    topic = sensor_alarm_topic(mqtt_prefix, "s1")

    def failing(message: Message) -> None:
        raise RuntimeError("the disk is full")

    assert reader.start(10) and sender.start(10)
    try:
        assert sender.publish_wait(topic, payload, qos=1)
        message = reader.get(10)
        assert message is not None
        assert not reader.handle(message, failing)
        letter = letters.get(10)
    finally:
        reader.stop()
        sender.stop()
    assert (reader.dead_lettered, reader.left_for_redelivery) == (1, 0)
    assert letter is not None
    most = reader.conn.max_payload(deadletter_topic(mqtt_prefix, "alarm-t"), 1)
    assert most - 4 < len(letter.payload) <= most  # as much as fits, in base64's steps of 4
    body = json.loads(letter.payload)
    kept = base64.b64decode(body.pop("payload_b64"))
    assert kept == payload[: len(kept)]
    received = datetime.fromisoformat(body.pop("received_at"))
    assert abs(received - message.received_at) < timedelta(milliseconds=1)
    assert body == {
        "reason": "handler_failed",
        "topic": topic,
        "payload_bytes": len(payload),
        "payload_truncated": True,
        "error": "RuntimeError: the disk is full",
    }


def test_a_handler_failed_letter_that_cannot_fit_at_all_is_dropped_logged(
    limited_broker: Callable[[int], Mosquitto],
    mqtt_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker taking 1 KiB packets, an error of 1000 characters: the letter is over the
    limit without any payload. It was refused and the message left for redelivery, to fail
    and be refused again at every reconnection; it is acknowledged, the letter logged."""
    broker = limited_broker(1024)
    reader = failing_consumer(broker, mqtt_prefix)
    sender = MqttConnection("sensor-gw", MqttSettings.from_url(broker.url), prefix=mqtt_prefix)
    topic = sensor_alarm_topic(mqtt_prefix, "s1")

    def failing(message: Message) -> None:
        raise RuntimeError("x" * 2000)

    assert reader.start(10) and sender.start(10)
    try:
        assert sender.publish_wait(topic, b"{}", qos=1)
        message = reader.get(10)
        assert message is not None
        with caplog.at_level(logging.ERROR, logger="gridpatrol.ingest.reliable"):
            assert not reader.handle(message, failing)
    finally:
        reader.stop()
        sender.stop()
    assert (reader.dead_lettered, reader.left_for_redelivery) == (0, 0)
    assert reader.dead_letters_lost == 1
    assert reader.conn.publish_oversize == 0  # never handed to the client
    (line,) = [m for m in caplog.messages if "dead letter" in m]
    assert line.startswith(
        f"alarm-t: the dead letter for {topic} (message id {message.mid}) is over the broker's "
        "packet limit of 1024 bytes even without its payload; the message is acknowledged "
        'without it: {"reason":"handler_failed",'
    )


@pytest.mark.parametrize("budget", [0, -1, -16_000])
def test_a_limit_leaving_no_room_for_a_frame_drops_it_and_says_so_once(
    budget: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker limit below the envelope's header leaves a frame no budget at all: each frame
    is dropped (no step is taken, no error raised) and the reason logged once."""
    camera = parse_site(
        "site: {name: Test}\nmqtt: {prefix: t}\ncameras:\n"
        "  - {id: c1, source: x.mp4, location: {address: a}}\n"
    ).cameras[0]
    fit = sources.FrameFit(camera)
    image = np.full((90, 160, 3), 128, np.uint8)
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        assert [fit.image(image, budget) for _ in range(3)] == [None] * 3
        assert fit.jpeg(cv2.imencode(".jpg", image)[1].tobytes(), 160, 90, budget) is None
    assert (fit.quality, fit.scale) == (85, 1.0)
    assert [
        r.getMessage().endswith(
            "has no room for any frame: dropped, as such frames will be (counted); not said again"
        )
        for r in caplog.records
    ] == [True]
