"""Ingest against a broker that stops reading while its connection stays open (hung, a network
partition): each camera keeps at most one frame waiting, the rest are dropped and counted."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.sources import CameraOutput
from gridpatrol.site import parse_site

from ..conftest import Mosquitto
from .test_transport import wait_for

FRAMES = 60  # per camera, of FRAME_BYTES: far more than the sockets' buffers hold
FRAME_BYTES = 500_000
PUBLISH = 0x30


def unwritten_frames(conn: MqttConnection) -> Counter[str]:
    """The QoS 0 publications paho holds unwritten, by topic (read from each packet)."""
    client: Any = conn._client
    held: Counter[str] = Counter()
    for packet in list(client._out_packet):
        if packet["command"] & 0xF0 != PUBLISH or packet["qos"] != 0:
            continue
        if packet["info"] is None or packet["info"].is_published():
            continue
        data = bytes(packet["packet"])
        at = 1  # the remaining length, a variable byte integer, follows the fixed header
        while data[at] & 0x80:
            at += 1
        at += 1
        length = int.from_bytes(data[at : at + 2], "big")
        held[data[at + 2 : at + 2 + length].decode()] += 1
    return held


def test_a_broker_that_stops_reading_leaves_one_frame_per_camera_waiting(
    mosquitto: Mosquitto,
) -> None:
    site = parse_site(
        "site: {name: Test}\n"
        "mqtt: {prefix: stall}\n"
        "cameras:\n"
        "  - {id: c1, source: rtsp://127.0.0.1:9/a, fps: 10, location: {address: a}}\n"
        "  - {id: c2, source: rtsp://127.0.0.1:9/b, fps: 10, location: {address: a}}\n"
    )
    conn = MqttConnection("ing-stall", MqttSettings.from_url(mosquitto.url), prefix="stall")
    assert conn.start(10)
    outputs = [CameraOutput(camera, conn) for camera in site.cameras]
    jpeg = os.urandom(FRAME_BYTES)
    assert mosquitto.proc is not None
    pid = mosquitto.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(FRAMES):
            for output in outputs:
                output.publish(jpeg, 640, 480)
        held = unwritten_frames(conn)
        # Each camera holds at most its one frame in paho's queue, not every frame since the
        # broker stopped (the queue grew by the cameras' bitrate, counted as published).
        assert set(held) <= {output.topic for output in outputs}
        assert all(count == 1 for count in held.values()), held
        for output in outputs:
            assert output.stats.published + output.stats.dropped == FRAMES
            assert output.stats.dropped >= 1
        dropped = sum(output.stats.dropped for output in outputs)
        assert conn.stats()["publish_behind"] == dropped
        assert conn.stats()["publish_dropped"] == dropped
        assert conn.published == 2 + sum(output.stats.published for output in outputs)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        # The broker reads again: the waiting frames are written and the next ones go out.
        wait_for(lambda: not unwritten_frames(conn))
        for output in outputs:
            before = output.stats.published
            output.publish(jpeg, 640, 480)
            assert output.stats.published == before + 1
    finally:
        conn.stop()
