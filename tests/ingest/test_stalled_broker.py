"""Ingest against a broker that stops reading while its connection stays open (hung, a network
partition): each camera keeps at most LATEST_UNWRITTEN frames waiting, the rest are dropped and
counted; a short backlog of a broker that keeps up drops nothing."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from typing import Any

import paho.mqtt.client as paho

from gridpatrol.ingest.mqtt import LATEST_UNWRITTEN, MqttConnection, MqttSettings
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


def two_cameras(mosquitto: Mosquitto, prefix: str) -> tuple[MqttConnection, list[CameraOutput]]:
    """A started connection under ``prefix`` and the outputs of two 10 fps cameras on it."""
    site = parse_site(
        "site: {name: Test}\n"
        f"mqtt: {{prefix: {prefix}}}\n"
        "cameras:\n"
        "  - {id: c1, source: rtsp://127.0.0.1:9/a, fps: 10, location: {address: a}}\n"
        "  - {id: c2, source: rtsp://127.0.0.1:9/b, fps: 10, location: {address: a}}\n"
    )
    conn = MqttConnection(f"ing-{prefix}", MqttSettings.from_url(mosquitto.url), prefix=prefix)
    assert conn.start(10)
    return conn, [CameraOutput(camera, conn) for camera in site.cameras]


def test_a_broker_that_stops_reading_leaves_a_few_frames_per_camera_waiting(
    mosquitto: Mosquitto,
) -> None:
    conn, outputs = two_cameras(mosquitto, "stall")
    jpeg = os.urandom(FRAME_BYTES)
    assert mosquitto.proc is not None
    pid = mosquitto.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(FRAMES):
            for output in outputs:
                output.publish(jpeg, 640, 480)
        held = unwritten_frames(conn)
        # Each camera holds at most LATEST_UNWRITTEN frames in paho's queue, not every frame
        # since the broker stopped (the queue grew by the cameras' bitrate, counted as published).
        assert set(held) <= {output.topic for output in outputs}
        assert all(1 <= count <= LATEST_UNWRITTEN for count in held.values()), held
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


def hold_writes(conn: MqttConnection) -> threading.Event:
    """While the returned event is set, paho's network thread writes nothing: the frames wait
    in its queue as behind a broker slow to read."""
    client: Any = conn._client
    real = client._packet_write
    held = threading.Event()
    held.set()

    def packet_write() -> Any:
        if held.is_set():
            held.wait(0.01)  # polled by the network loop while it has packets to write
            return paho.MQTT_ERR_AGAIN
        return real()

    client._packet_write = packet_write
    return held


def test_a_short_backlog_drops_no_frame_and_a_longer_one_is_bounded(
    mosquitto: Mosquitto,
) -> None:
    conn, outputs = two_cameras(mosquitto, "backlog")
    jpeg = os.urandom(100_000)

    def publish_each(times: int) -> list[tuple[int, int]]:
        """Each camera publishes ``times`` frames; (published, dropped) of each camera."""
        for _ in range(times):
            for output in outputs:
                output.publish(jpeg, 640, 480)
        return [(output.stats.published, output.stats.dropped) for output in outputs]

    try:
        publish_each(1)  # the camera's status goes out before its first frame
        wait_for(lambda: not unwritten_frames(conn))
        held = hold_writes(conn)
        waiting = {output.topic: LATEST_UNWRITTEN for output in outputs}
        # Each camera's frames wait behind the others': as many as the allowance, none dropped.
        assert publish_each(LATEST_UNWRITTEN) == [(1 + LATEST_UNWRITTEN, 0)] * 2
        assert unwritten_frames(conn) == waiting
        # Beyond it, the new frames are dropped and counted: the backlog stays bounded.
        assert publish_each(5) == [(1 + LATEST_UNWRITTEN, 5)] * 2
        assert unwritten_frames(conn) == waiting
        assert conn.stats()["publish_behind"] == 10
        # Written at last, the backlog is gone and the next frames go out.
        held.clear()
        wait_for(lambda: not unwritten_frames(conn))
        assert publish_each(1) == [(2 + LATEST_UNWRITTEN, 5)] * 2
    finally:
        conn.stop()
