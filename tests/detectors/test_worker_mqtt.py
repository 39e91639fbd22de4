"""``gridpatrol detect`` as a subprocess on the shared broker: what its motion gate infers."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.messages import DEAD_LETTER_PAYLOAD_BYTES, FrameHeader, encode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription
from gridpatrol.ingest.topics import component_status_topic, deadletter_topic, frame_topic

from ..ingest.test_receiver import BAD_60K, assert_cut_to_fit, packet_limited

SHARED = "mqtt://127.0.0.1:1883"
T0 = datetime(2026, 5, 4, 2, 0, tzinfo=UTC)
CAMERA = "yard"
SIZES = ((1280, 720), (640, 360))  # a camera switched to a lower resolution


class Detect:
    """``gridpatrol detect`` serving one camera without zones, with its metrics endpoint."""

    def __init__(
        self,
        tmp_path: Path,
        shared_dir: Path,
        prefix: str,
        url: str = SHARED,
        args: Sequence[str] = (),
        port: int | None = None,
        setting: str = "--metrics-port",
    ) -> None:
        """Its metrics on ``port`` (default a free one), given by ``setting``: the flag or
        ``GRIDPATROL_METRICS_PORT``."""
        site = tmp_path / "site.yaml"
        site.write_text(
            f"site: {{name: test}}\nmqtt: {{prefix: {prefix}}}\ncameras:\n"
            f"  - id: {CAMERA}\n    source: mqtt\n    location: {{address: here}}\n",
            encoding="utf-8",
        )
        self.port = port or free_port()
        self.log = tmp_path / "detect.log"
        env = {
            **os.environ,
            "GRIDPATROL_MQTT_URL": url,
            "GRIDPATROL_API_URL": "http://127.0.0.1:9",  # no zones: nothing is ever sent
            "GRIDPATROL_API_TOKEN": "tok-producer",
            "GRIDPATROL_OUTBOX": str(tmp_path / "outbox-detect.db"),
            "GRIDPATROL_MODEL": str(shared_dir / "models" / "yolo11n_int8_openvino_model"),
            "GRIDPATROL_METRICS_PORT": str(self.port),
        }
        flag = ["--metrics-port", str(self.port)] if setting == "--metrics-port" else []
        cmd = [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, *flag, "--progress-s", "3600", *args],
                env=env,
                stdout=log,
                stderr=log,
            )

    def metric(self, name: str) -> int:
        """The camera's counter ``gridpatrol_detect_{name}_total`` (0 before it serves)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.TransportError:
            return 0
        wanted = f"gridpatrol_detect_{name}_total"
        values = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == wanted and sample.labels == {"camera": CAMERA}
        ]
        return int(sum(values))

    def judged(self) -> int:
        """Frames judged: inferred, or skipped by the motion gate."""
        return self.metric("inferred_frames") + self.metric("skipped_frames")

    def wait_judged(self, count: int) -> None:
        self.wait(f"{count} judged frame(s)", lambda: self.judged() >= count)

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {what}; detect log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def publisher(mqtt_prefix: str) -> Iterator[tuple[MqttConnection, Subscription]]:
    """A connection to the shared broker and a subscription to the worker's status."""
    conn = MqttConnection("size-test", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    status_topic = component_status_topic(mqtt_prefix, "detect")
    status = conn.subscribe(status_topic, qos=1, maxsize=100)
    assert conn.start(timeout=10)
    try:
        yield conn, status
    finally:
        conn.publish(status_topic, b"", qos=1, retain=True)  # leave no retained status behind
        conn.stop()


def _says(status: Subscription, payload: bytes) -> bool:
    """Whether the next status message (within 0.2 s) is ``payload``."""
    message = status.get(0.2)
    return message is not None and message.payload == payload


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf.tobytes())


def test_a_frame_of_another_size_is_inferred(
    tmp_path: Path,
    shared_dir: Path,
    mqtt_prefix: str,
    publisher: tuple[MqttConnection, Subscription],
) -> None:
    """A camera switched from 1280×720 to 640×360 with the same view: the second frame looks
    static to the gate's small copy, but the first frame's boxes are not in its pixels, so it
    is inferred, not judged with them."""
    conn, status = publisher
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "car_park_overhead.mp4"))
    ok, road = cap.read()
    cap.release()
    assert ok
    large, small = (cv2.resize(road, size, interpolation=cv2.INTER_AREA) for size in SIZES)
    worker = Detect(tmp_path, shared_dir, mqtt_prefix)
    try:
        # "online" is published after the frame subscriptions on the same connection.
        worker.wait("online status", lambda: _says(status, b"online"))
        for seq, image in enumerate((large, small)):
            h, w = image.shape[:2]
            header = FrameHeader(
                ts=T0 + timedelta(seconds=seq), seq=seq, camera_id=CAMERA, width=w, height=h
            )
            assert conn.publish(
                frame_topic(mqtt_prefix, CAMERA), encode_frame(header, _jpeg(image))
            )
            worker.wait_judged(seq + 1)
        assert (worker.metric("inferred_frames"), worker.metric("skipped_frames")) == (2, 0)
        assert (worker.metric("frames"), worker.metric("dropped_frames")) == (2, 0)
    finally:
        worker.stop()


def test_the_frame_held_back_by_a_clock_jump_taken_is_counted_as_dropped(
    tmp_path: Path,
    shared_dir: Path,
    mqtt_prefix: str,
    publisher: tuple[MqttConnection, Subscription],
) -> None:
    """Two frames, then the camera's clock an hour back for two frames: the first frame on the
    new clock is held back, and lost when the second one takes the jump. Every frame taken is
    then counted once, as inferred, skipped, dropped or bad, in the metrics and in the report
    at stop."""
    conn, status = publisher
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "car_park_overhead.mp4"))
    ok, road = cap.read()
    cap.release()
    assert ok
    image = _jpeg(cv2.resize(road, SIZES[1], interpolation=cv2.INTER_AREA))
    back = T0 - timedelta(hours=1)
    times = (T0, T0 + timedelta(seconds=1), back, back + timedelta(seconds=1))
    worker = Detect(tmp_path, shared_dir, mqtt_prefix)
    try:
        worker.wait("online status", lambda: _says(status, b"online"))
        for seq, ts in enumerate(times):
            header = FrameHeader(ts=ts, seq=seq, camera_id=CAMERA, width=640, height=360)
            assert conn.publish(frame_topic(mqtt_prefix, CAMERA), encode_frame(header, image))
            # Each frame taken before the next comes: none is replaced in the slot.
            worker.wait(f"{seq + 1} frame(s) taken", lambda n=seq + 1: worker.metric("frames") >= n)
        worker.wait_judged(3)
        counts = {
            name: worker.metric(name)
            for name in ("frames", "inferred_frames", "skipped_frames", "dropped_frames")
        }
        bad = worker.metric("bad_frames")
    finally:
        worker.stop()
    assert (counts["frames"], counts["dropped_frames"], bad) == (4, 1, 0)
    inferred, skipped = counts["inferred_frames"], counts["skipped_frames"]
    assert inferred + skipped == 3
    log = worker.log.read_text()
    assert "camera yard: clock went back 3600 s; its rules start over" in log
    report = re.findall(
        r"camera yard: (\d+) frames in, (\d+) inferred, (\d+) skipped, "
        r"(\d+) dropped, (\d+) bad,",
        log,
    )
    assert report[-1] == ("4", str(inferred), str(skipped), "1", "0")


def test_a_large_malformed_frame_is_dead_lettered_cut_with_its_size(
    tmp_path: Path,
    shared_dir: Path,
    mqtt_prefix: str,
    publisher: tuple[MqttConnection, Subscription],
) -> None:
    """Whole in base64, a frame of up to 32 MiB makes a dead letter larger than a broker
    takes (16 MiB in the sample configuration): the letter carries its first 64 KiB. Its
    reason is the decoder's code, as in ingest's letters, and ``error`` the decoder's detail."""
    conn, status = publisher
    letters = conn.subscribe(deadletter_topic(mqtt_prefix, "detect"), qos=1, maxsize=10)
    worker = Detect(tmp_path, shared_dir, mqtt_prefix)
    topic = frame_topic(mqtt_prefix, CAMERA)
    payload = b"x" * (1 << 20)
    # A frame time in RFC 3339: the SPEC's frame header has epoch seconds.
    header = {"ts": "2026-12-01T12:00:00", "seq": 1, "camera_id": CAMERA, "width": 8}
    raw = json.dumps({**header, "height": 8}).encode()
    text_ts = b"GPF1" + len(raw).to_bytes(4, "big") + raw + _jpeg(np.zeros((8, 8, 3), np.uint8))
    try:
        worker.wait("online status", lambda: _says(status, b"online"))
        messages: list[Message | None] = []
        # One after the other: a frame arriving before the last one was taken replaces it.
        for frame in (payload, text_ts):
            assert conn.publish_wait(topic, frame, qos=1, timeout=30)
            messages.append(letters.get(60))
    finally:
        worker.stop()
    assert None not in messages, worker.log.read_text()[-3000:]
    large, text = (json.loads(m.payload) for m in messages if m is not None)
    fields = ("reason", "error", "topic", "payload_bytes", "payload_truncated")
    assert tuple(large[x] for x in fields) == (
        "bad_magic",
        "starts with b'xxxx'",
        topic,
        1 << 20,
        True,
    )
    assert base64.b64decode(large["payload_b64"]) == payload[:DEAD_LETTER_PAYLOAD_BYTES]
    assert {k: v for k, v in text.items() if k != "received_at"} == {
        "reason": "bad_ts",
        "error": "frame ts must be epoch seconds",
        "topic": topic,
        "payload_b64": base64.b64encode(text_ts).decode(),
    }


def test_a_camera_sending_garbage_gets_ten_letters_and_every_bad_frame_counted(
    tmp_path: Path,
    shared_dir: Path,
    mqtt_prefix: str,
    publisher: tuple[MqttConnection, Subscription],
) -> None:
    """15 bad frames of one camera within a minute (12 without the frame magic, then 3 with an
    RFC 3339 time): the first 10 get their letter and their warning line, the other 5 are
    counted by reason; the metric and the final tally count all 15."""
    conn, status = publisher
    letters = conn.subscribe(deadletter_topic(mqtt_prefix, "detect"), qos=1, maxsize=100)
    worker = Detect(tmp_path, shared_dir, mqtt_prefix)
    topic = frame_topic(mqtt_prefix, CAMERA)
    header = {"ts": "2026-12-01T12:00:00", "seq": 1, "camera_id": CAMERA, "width": 8}
    raw = json.dumps({**header, "height": 8}).encode()
    text_ts = b"GPF1" + len(raw).to_bytes(4, "big") + raw + _jpeg(np.zeros((8, 8, 3), np.uint8))
    frames = [b"garbage %d" % n for n in range(12)] + [text_ts] * 3
    try:
        worker.wait("online status", lambda: _says(status, b"online"))
        # One after the other: a frame arriving before the last one was taken replaces it.
        for count, frame in enumerate(frames, 1):
            assert conn.publish_wait(topic, frame, qos=1, timeout=30)
            worker.wait(f"{count} bad frame(s)", lambda c=count: worker.metric("bad_frames") >= c)
        assert worker.metric("bad_frames") == 15
    finally:
        worker.stop()
    # Its "offline" leaves after its letters, on the same connection at QoS 1.
    said = [status.get(10)]
    while said[-1] is not None and said[-1].payload != b"offline":
        said.append(status.get(10))
    assert said[-1] is not None, worker.log.read_text()[-3000:]
    got = []
    while (message := letters.get(0)) is not None:
        got.append(json.loads(message.payload))
    assert [(x["reason"], base64.b64decode(x["payload_b64"])) for x in got] == [
        ("bad_magic", b"garbage %d" % n) for n in range(10)
    ]
    log = worker.log.read_text()
    assert log.count("sent to the dead-letter topic") == 10
    assert (
        "detect: bad frames {'bad_magic': 12, 'bad_ts': 3}, of them not dead-lettered (over "
        "the limit) {'bad_magic': 2, 'bad_ts': 3}" in log
    )
    assert re.findall(r"camera yard: \d+ frames in, .* (\d+) bad,", log) == ["15"]


def test_a_dead_letter_over_the_packet_limit_is_cut_to_fit(
    tmp_path: Path, shared_dir: Path, mqtt_prefix: str
) -> None:
    """A broker taking 64 KiB: the letter of a 60 KiB frame, 80 KiB in base64, was refused by
    the connection and lost; it goes out with as much of the payload as fits, saying so."""
    broker = packet_limited(tmp_path / "broker", 65536)
    conn = MqttConnection("limit-test", MqttSettings.from_url(broker.url), prefix=mqtt_prefix)
    status = conn.subscribe(component_status_topic(mqtt_prefix, "detect"), qos=1, maxsize=100)
    dead_topic = deadletter_topic(mqtt_prefix, "detect")
    letters = conn.subscribe(dead_topic, qos=1, maxsize=10)
    assert conn.start(timeout=10)
    worker = Detect(tmp_path, shared_dir, mqtt_prefix, url=broker.url)
    topic = frame_topic(mqtt_prefix, CAMERA)
    try:
        worker.wait("online status", lambda: _says(status, b"online"))
        assert conn.publish_wait(topic, BAD_60K, qos=1, timeout=30)
        message = letters.get(60)
    finally:
        worker.stop()
        conn.stop()
        broker.stop()
    assert message is not None, worker.log.read_text()[-3000:]
    # The worker's limit: the same topic, broker and protocol.
    assert_cut_to_fit(message, conn.max_payload(dead_topic, 1))


def test_credentials_refused_by_a_broker_that_came_up_late_stop_detect_with_status_1(
    mosquitto: Any, tmp_path: Path, shared_dir: Path, mqtt_prefix: str
) -> None:
    """Not reachable at the start, the broker then refuses the credentials: never accepted,
    they are not retried, and detect must not run on without frames. Status 1, as ingest:
    the unit restarts, and a typo is refused at that start (status 2)."""
    mosquitto.stop()  # the port is known, and closed
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gp", "s3cret"], check=True)
    conf = mosquitto.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    mosquitto.conf.write_text(f"{conf}password_file {passwords}\n")
    url = f"mqtt://gp:wrong@127.0.0.1:{mosquitto.port}"
    worker = Detect(tmp_path, shared_dir, mqtt_prefix, url)
    waiting = f"detect: broker mqtt://gp@127.0.0.1:{mosquitto.port} not reachable yet"
    try:
        worker.wait("wait for the broker", lambda: waiting in worker.log.read_text())
        mosquitto.start()
        returncode = worker.proc.wait(60)
    finally:
        worker.stop()
    text = worker.log.read_text()
    assert returncode == 1, text[-3000:]
    (line,) = [x for x in text.splitlines() if " ERROR " in x]
    assert re.search(
        r" ERROR gridpatrol\.detectors\.worker: detect: stopping: broker "
        rf"mqtt://gp@127\.0\.0\.1:{mosquitto.port} refused the credentials of detect "
        r"\(Not authorized\)$",
        line,
    ), line
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("args", "component", "after"),
    [
        ((), "detect", [
            "camera yard: 0 frames in, 0 inferred, 0 skipped, 0 dropped, 0 bad, 0 ms mean "
            "inference latency, 0 candidate(s)",
            "detect: stopped (outbox flushed, 0 operation(s) left for the next start)",
        ]),
        (("--shard", "3/4"), "detect-3-of-4", ["detect-3-of-4: stopped"]),
    ],
    ids=["cameras", "idle shard"],
)  # fmt: skip
def test_a_signal_while_the_start_waits_for_the_broker_ends_the_wait(
    tmp_path: Path,
    shared_dir: Path,
    mqtt_prefix: str,
    args: tuple[str, ...],
    component: str,
    after: list[str],
) -> None:
    """A SIGTERM while the start waited for a broker not reachable yet was acted on only after
    the whole wait (10 s): 'not reachable yet; retrying in the background' followed the
    signal. The start now says it connects, as the other commands do, and the signal ends its
    wait: the worker's closing lines alone follow it, and the status is 0."""
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the start waits for it
    worker = Detect(tmp_path, shared_dir, mqtt_prefix, url, args)
    connecting = f"{component}: connecting to {url}"
    try:
        worker.wait("connecting line", lambda: connecting in worker.log.read_text())
        worker.proc.terminate()
        returncode = worker.proc.wait(60)
    finally:
        worker.stop()
    said = [line.split(" ", 3)[3] for line in worker.log.read_text().splitlines()]
    begun = said.index(f"gridpatrol.detectors.worker: {connecting}")
    assert said[begun + 1 :] == [
        f"gridpatrol.cli: {component}: signal 15, shutting down",
        *(f"gridpatrol.detectors.worker: {line}" for line in after),
    ], said
    assert returncode == 0, said


@pytest.mark.parametrize("setting", ["--metrics-port", "GRIDPATROL_METRICS_PORT"])
def test_a_metrics_port_in_use_exits_2_naming_the_port_and_its_setting(
    tmp_path: Path, shared_dir: Path, mqtt_prefix: str, setting: str
) -> None:
    """It said 'detect: cannot start: [Errno 98] Address already in use', naming neither the
    port nor where it was set, with status 1 (the unit restarts into the same error). An idle
    shard says it as well (test_worker)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Detect(tmp_path, shared_dir, mqtt_prefix, port=port, setting=setting)
        try:
            returncode = worker.proc.wait(120)
        finally:
            worker.stop()
    said = worker.log.read_text().splitlines()
    (line,) = [x for x in said if " ERROR " in x]
    assert line.split(" ", 2)[2] == (
        f"ERROR gridpatrol.detectors.worker: detect: cannot start: the metrics port {port} "
        f"({setting}): Address already in use"
    ), said
    assert returncode == 2, said
    assert "Traceback" not in worker.log.read_text()


def test_a_shard_without_cameras_stays_online_idle_and_stops_with_status_0(
    tmp_path: Path, shared_dir: Path, mqtt_prefix: str
) -> None:
    """The site's one camera (yard, CRC-32 0 mod 4) is on shard 0/4: shard 3/4 serves none.
    That is no setup error, which would have the unit restart it in a loop: it says so once,
    goes online, never opens its outbox file, and a SIGTERM stops it with status 0."""
    status_topic = component_status_topic(mqtt_prefix, "detect-3-of-4")
    conn = MqttConnection("shard-test", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    status = conn.subscribe(status_topic, qos=1, maxsize=100)
    assert conn.start(timeout=10)
    worker = Detect(tmp_path, shared_dir, mqtt_prefix, args=("--shard", "3/4"))
    try:
        worker.wait("online status", lambda: _says(status, b"online"))
        # Its metrics are served: an idle shard does not look like a worker down.
        metrics = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).text
        assert "gridpatrol_detect_outbox_depth 0.0" in metrics.splitlines()
        worker.proc.terminate()
        returncode = worker.proc.wait(30)
    finally:
        worker.stop()
        conn.stop()  # mqtt_prefix removes the retained status left behind
    text = worker.log.read_text()
    assert returncode == 0, text[-3000:]
    (line,) = [x for x in text.splitlines() if " WARNING " in x]
    assert line.endswith(
        " WARNING gridpatrol.detectors.worker: detect-3-of-4: shard 3/4 serves no camera of the "
        "site (its 1 camera(s) are on the other shards); it stays online and idle until stopped"
    ), line
    assert not (tmp_path / "outbox-detect.db").exists()
    assert "Traceback" not in text
