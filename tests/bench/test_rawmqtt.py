"""The benchmark's raw MQTT publisher: its packets, and delivery through a real broker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from rawmqtt import RawPublisher, remaining_length

SHARED_BROKER = "mqtt://127.0.0.1:1883"


@pytest.mark.parametrize(
    ("n", "encoded"),
    [  # the boundaries listed in the MQTT 3.1.1 specification, section 2.2.3
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_remaining_length(n: int, encoded: str) -> None:
    assert remaining_length(n).hex() == encoded


def test_frames_published_raw_arrive_intact(mqtt_prefix: str) -> None:
    payloads = [bytes([k]) * size for k, size in enumerate((1, 127, 128, 100_000, 300_000))]
    sub_conn = MqttConnection(
        "rawmqtt-sub", MqttSettings.from_url(SHARED_BROKER), prefix=mqtt_prefix
    )
    assert sub_conn.start(timeout=10)
    try:
        sub = sub_conn.subscribe(f"{mqtt_prefix}/frames/#", qos=0)
        # The broker handles one client's packets in order: once a probe sent on the same
        # connection comes back, the subscription is in place for the other connection's.
        assert sub_conn.publish(f"{mqtt_prefix}/frames/probe", b"probe")
        probe = sub.get(timeout=10)
        assert probe is not None and probe.topic == f"{mqtt_prefix}/frames/probe"
        pub = RawPublisher(SHARED_BROKER, f"{mqtt_prefix}-pub")
        for k, payload in enumerate(payloads):
            pub.publish(f"{mqtt_prefix}/frames/cam{k}", payload)
        pub.close()
        got = [sub.get(timeout=10) for _ in payloads]
    finally:
        sub_conn.stop()
    assert [(m.topic, m.payload) for m in got if m is not None] == [
        (f"{mqtt_prefix}/frames/cam{k}", payload) for k, payload in enumerate(payloads)
    ]
    assert pub.published == len(payloads)


def test_a_url_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="without credentials"):
        RawPublisher("mqtt://user:secret@127.0.0.1:1883", "x")
