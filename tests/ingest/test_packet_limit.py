"""The broker's packet limit: a publication over it is refused, never sent (the broker would drop
the connection, and every camera of the process with it); a frame over it is re-encoded to fit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import MqttConfigError, MqttConnection, MqttSettings
from gridpatrol.ingest.service import IngestService
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
