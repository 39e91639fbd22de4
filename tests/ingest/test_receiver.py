"""``FrameReceiver`` on the real broker: several cameras' frames, the consumer behind, and
the dead letters of what it cannot decode."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.ingest import receiver as receiver_module
from gridpatrol.ingest.messages import Frame, FrameHeader, MessageError, encode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings
from gridpatrol.ingest.receiver import FrameReceiver
from gridpatrol.ingest.reliable import ERROR_CHARS
from gridpatrol.ingest.topics import deadletter_topic, frame_topic

from ..conftest import Mosquitto
from .conftest import SHARED_BROKER

JPEG = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()


@pytest.fixture
def connections(mqtt_prefix: str) -> Iterator[tuple[MqttConnection, MqttConnection]]:
    settings = MqttSettings.from_url(SHARED_BROKER)
    consumer = MqttConnection("watch", settings, prefix=mqtt_prefix)
    producer = MqttConnection("camera", settings, prefix=mqtt_prefix)
    yield consumer, producer
    producer.stop()
    consumer.stop()


def publish(producer: MqttConnection, camera: str, seq: int) -> None:
    header = FrameHeader(datetime.now(UTC), seq, camera, 8, 8)
    topic = frame_topic(producer.prefix, camera)
    assert producer.publish(topic, encode_frame(header, JPEG), qos=1)


def test_a_busy_camera_does_not_starve_the_others(
    connections: tuple[MqttConnection, MqttConnection],
) -> None:
    """Two cameras' queues full (the consumer behind): frames come from each in turn, not all
    from the first camera while the second's wait until they are dropped."""
    consumer, producer = connections
    receiver = FrameReceiver(consumer, ["a", "b"], maxsize=4)
    assert consumer.start(10) and producer.start(10)
    for seq in range(6):
        publish(producer, "a", seq)
        publish(producer, "b", seq)
    deadline = time.monotonic() + 10
    while receiver.dropped < 4:  # 6 frames each into queues of 4: both full
        assert time.monotonic() < deadline, [len(s) for s in receiver.subs]
        time.sleep(0.02)
    got = [receiver.get(1) for _ in range(8)]
    assert [(f.header.camera_id, f.header.seq) for f in got if f is not None] == [
        ("a", 2),
        ("b", 2),
        ("a", 3),
        ("b", 3),
        ("a", 4),
        ("b", 4),
        ("a", 5),
        ("b", 5),
    ]
    assert receiver.get(0.2) is None


def test_a_frame_arriving_while_waiting_is_returned(
    connections: tuple[MqttConnection, MqttConnection],
) -> None:
    """With several cameras, get() waits for any of them and returns the frame that comes."""
    consumer, producer = connections
    receiver = FrameReceiver(consumer, ["a", "b"], maxsize=4)
    assert consumer.start(10) and producer.start(10)
    assert receiver.get(0.1) is None
    publish(producer, "b", 7)
    frame = receiver.get(10)
    assert frame is not None and (frame.header.camera_id, frame.header.seq) == ("b", 7)


@pytest.mark.parametrize(
    ("failure", "reason", "error"),
    [
        pytest.param(
            RuntimeError("unforeseen"), "internal_error", "RuntimeError: unforeseen", id="bug"
        ),
        # Cut as the bridge's and ReliableConsumer's: a detail quoting a whole payload must
        # not make the letter twice its size.
        pytest.param(
            MessageError("bad_magic", "x" * 5000), "bad_magic", "x" * ERROR_CHARS, id="cut"
        ),
    ],
)
def test_a_frame_the_decoder_fails_on_is_dead_lettered_with_the_error(
    connections: tuple[MqttConnection, MqttConnection],
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    reason: str,
    error: str,
) -> None:
    def decode(*_args: object, **_kwargs: object) -> Frame:
        raise failure

    monkeypatch.setattr(receiver_module, "decode_frame", decode)
    consumer, producer = connections
    letters = producer.subscribe(deadletter_topic(producer.prefix, "watch"), qos=1, maxsize=4)
    receiver = FrameReceiver(consumer, ["a"], maxsize=4)
    assert consumer.start(10) and producer.start(10)
    publish(producer, "a", 1)
    deadline = time.monotonic() + 10
    while not receiver.rejected:
        assert time.monotonic() < deadline
        assert receiver.get(0.5) is None
    message = letters.get(10)
    assert message is not None
    letter = json.loads(message.payload)
    assert (letter["reason"], letter["topic"], letter["error"]) == (
        reason,
        frame_topic(producer.prefix, "a"),
        error,
    )
    assert receiver.rejected == {reason: 1}


def packet_limited(workdir: Path, max_packet_size: int) -> Mosquitto:
    """A private Mosquitto, started, taking packets of ``max_packet_size`` bytes at most."""
    workdir.mkdir(exist_ok=True)
    broker = Mosquitto(workdir, persistence=False)
    broker.conf.write_text(broker.conf.read_text() + f"max_packet_size {max_packet_size}\n")
    broker.start()
    return broker


BAD_60K = bytes(range(256)) * 240  # a frame of 60 KiB without the magic


def assert_cut_to_fit(message: Message, most: int) -> None:
    """``message`` is the ``bad_magic`` letter of :data:`BAD_60K` with as much of it as fits
    in ``most`` bytes, and says so."""
    assert most - 4 < len(message.payload) <= most  # base64 goes by 4 characters
    letter = json.loads(message.payload)
    kept = base64.b64decode(letter["payload_b64"])
    assert (letter["reason"], letter["payload_bytes"], letter["payload_truncated"]) == (
        "bad_magic",
        len(BAD_60K),
        True,
    )
    assert kept == BAD_60K[: len(kept)]


def test_a_dead_letter_over_the_packet_limit_is_cut_to_fit(
    tmp_path: Path, mqtt_prefix: str
) -> None:
    """A broker taking 64 KiB: the letter of a 60 KiB frame, 80 KiB in base64, was refused by
    the connection and lost; it goes out with as much of the payload as fits, saying so."""
    broker = packet_limited(tmp_path / "broker", 65536)
    settings = MqttSettings.from_url(broker.url)
    consumer = MqttConnection("watch", settings, prefix=mqtt_prefix)
    producer = MqttConnection("camera", settings, prefix=mqtt_prefix)
    topic = deadletter_topic(mqtt_prefix, "watch")
    letters = producer.subscribe(topic, qos=1, maxsize=4)
    receiver = FrameReceiver(consumer, ["a"], maxsize=4)
    try:
        assert consumer.start(10) and producer.start(10)
        assert producer.publish_wait(frame_topic(mqtt_prefix, "a"), BAD_60K, qos=1)
        deadline = time.monotonic() + 10
        while not receiver.rejected:
            assert time.monotonic() < deadline
            assert receiver.get(0.5) is None
        message = letters.get(10)
    finally:
        producer.stop()
        consumer.stop()
        broker.stop()
    assert receiver.rejected == {"bad_magic": 1}
    assert consumer.publish_oversize == 0
    assert message is not None
    assert_cut_to_fit(message, consumer.max_payload(topic, 1))
