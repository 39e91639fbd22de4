"""``FrameReceiver`` on the real broker: several cameras' frames, the consumer behind, and
the dead letters of what it cannot decode."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.ingest import receiver as receiver_module
from gridpatrol.ingest.messages import Frame, FrameHeader, MessageError, encode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription
from gridpatrol.ingest.receiver import FrameReceiver, LetterLimit
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


def consume_until(receiver: FrameReceiver, rejected: int) -> None:
    """Take frames until ``rejected`` rejections in all (none of them valid)."""
    deadline = time.monotonic() + 10
    while receiver.rejected.total() < rejected:
        assert time.monotonic() < deadline, receiver.rejected
        assert receiver.get(0.5) is None


def letters_up_to(letters: Subscription, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
    """The (topic, payload) of the dead letters up to the first one of ``payload`` on
    ``topic``: the consumer's letters leave at QoS 1 in order, so none sent before that one is
    still on its way."""
    got: list[tuple[str, bytes]] = []
    while not got or got[-1] != (topic, payload):
        message = letters.get(10)
        assert message is not None, got
        letter = json.loads(message.payload)
        got.append((letter["topic"], base64.b64decode(letter["payload_b64"])))
    return got


def test_a_camera_sending_garbage_gets_a_few_letters_and_every_rejection_counted(
    connections: tuple[MqttConnection, MqttConnection], caplog: pytest.LogCaptureFixture
) -> None:
    """30 bad frames of one camera: 10 letters and 10 warnings (one each, before a window of
    60 s, which this test takes far less than, ends), every one counted; the 3 of another
    camera each get theirs, and so does the next camera's after them."""
    consumer, producer = connections
    prefix = producer.prefix
    letters = producer.subscribe(deadletter_topic(prefix, "watch"), qos=1, maxsize=1000)
    receiver = FrameReceiver(consumer, ["a", "b", "c"], maxsize=100)
    assert consumer.start(10) and producer.start(10)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest.receiver"):
        for camera, count in (("a", 30), ("b", 3)):
            for _ in range(count):
                assert producer.publish_wait(frame_topic(prefix, camera), b"garbage", qos=1)
        consume_until(receiver, 33)
        assert producer.publish_wait(frame_topic(prefix, "c"), b"garbage", qos=1)
        consume_until(receiver, 34)
    got = letters_up_to(letters, frame_topic(prefix, "c"), b"garbage")
    assert Counter(topic for topic, _ in got) == {
        frame_topic(prefix, "a"): 10,
        frame_topic(prefix, "b"): 3,
        frame_topic(prefix, "c"): 1,
    }
    assert receiver.rejected == {"bad_magic": 34}
    said = [r.getMessage() for r in caplog.records if r.name == "gridpatrol.ingest.receiver"]
    assert len(said) == 14
    assert all(line.startswith("dead-lettered a frame on ") for line in said)


def test_letters_over_the_limit_are_said_in_one_warning_when_their_window_ends(
    connections: tuple[MqttConnection, MqttConnection], caplog: pytest.LogCaptureFixture
) -> None:
    """At most 3 letters in a window of 60 s: the 2 bad frames over it are counted, said in
    one warning once the window is over, and the next bad frame gets its letter again."""
    consumer, producer = connections
    prefix = producer.prefix
    topic = frame_topic(prefix, "a")
    letters = producer.subscribe(deadletter_topic(prefix, "watch"), qos=1, maxsize=100)
    now = [1000.0]
    limit = LetterLimit(clock=lambda: now[0], per_window=3)
    receiver = FrameReceiver(consumer, ["a"], maxsize=100, letters=limit)
    assert consumer.start(10) and producer.start(10)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest.receiver"):
        for n in range(1, 6):
            assert producer.publish_wait(topic, b"garbage %d" % n, qos=1)
        consume_until(receiver, 5)
        now[0] += 59.9
        assert receiver.get(0) is None  # the window is not over yet: nothing said
        before = len(caplog.records)
        now[0] += 0.1
        assert receiver.get(0) is None
        summary = [r.getMessage() for r in caplog.records[before:]]
        assert producer.publish_wait(topic, b"garbage 6", qos=1)
        consume_until(receiver, 6)
    assert before == 3
    assert summary == [
        "2 malformed frames in the last 60 s were not dead-lettered nor logged one by one "
        "(over 10 letters per camera topic, 3 in all, in a window): {'bad_magic': 2}"
    ]
    got = letters_up_to(letters, topic, b"garbage 6")
    assert got == [(topic, b"garbage %d" % n) for n in (1, 2, 3, 6)]
    assert receiver.rejected == {"bad_magic": 6}
    assert limit.suppressed == {"bad_magic": 2}


def test_a_decoder_bug_on_every_frame_logs_a_traceback_only_with_each_letter(
    connections: tuple[MqttConnection, MqttConnection],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """15 frames of one camera that trip an unforeseen error: each is counted, the first 10
    get a letter and one log record carrying the error's traceback, the other 5 nothing. A
    traceback for every frame was written however many letters the limit held back."""

    def decode(*_args: object, **_kwargs: object) -> Frame:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(receiver_module, "decode_frame", decode)
    consumer, producer = connections
    receiver = FrameReceiver(consumer, ["a"], maxsize=100)
    assert consumer.start(10) and producer.start(10)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest.receiver"):
        for seq in range(15):
            publish(producer, "a", seq)
        consume_until(receiver, 15)
    assert receiver.rejected == {"internal_error": 15}
    records = [r for r in caplog.records if r.name == "gridpatrol.ingest.receiver"]
    assert [r.getMessage().split(": ", 1)[1] for r in records] == [
        "internal_error RuntimeError: unforeseen"
    ] * 10
    assert [type(r.exc_info[1]) if r.exc_info else None for r in records] == [RuntimeError] * 10


def test_a_bugs_letter_is_not_kept_back_by_a_cameras_garbage(
    connections: tuple[MqttConnection, MqttConnection],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """12 malformed frames of a camera use up its 10 letters of the window; a frame of it that
    then trips an unforeseen error still gets its letter, and its warning its traceback."""
    real = receiver_module.decode_frame

    def decode(payload: bytes, **kwargs: object) -> Frame:
        if payload == b"boom":
            raise RuntimeError("unforeseen")
        return real(payload, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(receiver_module, "decode_frame", decode)
    consumer, producer = connections
    prefix = producer.prefix
    topic = frame_topic(prefix, "a")
    letters = producer.subscribe(deadletter_topic(prefix, "watch"), qos=1, maxsize=100)
    receiver = FrameReceiver(consumer, ["a"], maxsize=100)
    assert consumer.start(10) and producer.start(10)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest.receiver"):
        for _ in range(12):
            assert producer.publish_wait(topic, b"garbage", qos=1)
        consume_until(receiver, 12)
        assert producer.publish_wait(topic, b"boom", qos=1)
        consume_until(receiver, 13)
    got = letters_up_to(letters, topic, b"boom")
    assert got == [(topic, b"garbage")] * 10 + [(topic, b"boom")]
    assert receiver.rejected == {"bad_magic": 12, "internal_error": 1}
    (bug,) = [r for r in caplog.records if r.exc_info]
    assert bug.getMessage() == f"dead-lettered a frame on {topic}: internal_error " + (
        "RuntimeError: unforeseen"
    )
