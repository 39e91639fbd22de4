"""``FrameReceiver`` on the real broker: several cameras' frames, the consumer behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from gridpatrol.ingest.messages import FrameHeader, encode_frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.receiver import FrameReceiver
from gridpatrol.ingest.topics import frame_topic

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
