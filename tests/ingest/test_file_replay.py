"""File replay at real speed: a sample that comes too late is skipped, not sent in a burst
stamped with times long gone, and a file back after a spell missing plays from then on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gridpatrol.ingest import sources
from gridpatrol.ingest.messages import Frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.sources import CameraOutput, CameraPublisher
from gridpatrol.site import parse_site

from ..conftest import Mosquitto
from .conftest import write_clip
from .test_transport import wait_for

FPS = 10
PERIOD_S = 1 / FPS


def replaying(
    mosquitto: Mosquitto, clip: Path, component_id: str, fps: int = FPS
) -> tuple[MqttConnection, CameraOutput, list[Frame], threading.Event]:
    """A looping file camera's output at ``fps``; the frames it publishes are kept in order."""
    site = parse_site(
        "site: {name: Test}\n"
        "mqtt: {prefix: replay}\n"
        "cameras:\n"
        f"  - {{id: f1, source: '{clip}', fps: {fps}, loop: true, location: {{address: a}}}}\n"
    )
    conn = MqttConnection(component_id, MqttSettings.from_url(mosquitto.url), prefix="replay")
    assert conn.start(10)
    output = CameraOutput(site.cameras[0], conn)
    frames: list[Frame] = []
    real = output.publish_image

    def publish_image(image: np.ndarray, ts: datetime | None = None) -> Frame | None:
        frame = real(image, ts)
        if frame is not None:
            frames.append(frame)
        return frame

    output.publish_image = publish_image  # type: ignore[method-assign]
    return conn, output, frames, threading.Event()


def stamped_within(frames: list[Frame], first: float, last: float) -> list[float]:
    return [f.header.ts.timestamp() for f in frames if first < f.header.ts.timestamp() < last]


def run(output: CameraOutput, stop: threading.Event) -> threading.Thread:
    thread = CameraPublisher(output, stop)
    thread.start()
    return thread


def test_samples_due_while_the_publisher_was_held_are_skipped(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    conn, output, frames, stop = replaying(mosquitto, write_clip(tmp_path / "c.avi", 40), "f-held")
    held, release = threading.Event(), threading.Event()
    real: Callable[..., Any] = output.publish_image

    def publish_image(image: np.ndarray, ts: datetime | None = None) -> Frame | None:
        frame = real(image, ts)
        if len(frames) == 3:  # the process starved for a second after its third frame
            held.set()
            release.wait(20)
        return frame

    output.publish_image = publish_image  # type: ignore[method-assign]
    thread = run(output, stop)
    try:
        assert held.wait(20)
        time.sleep(1.0)
        released = time.time()
        release.set()
        wait_for(lambda: len(frames) >= 8)
    finally:
        stop.set()
        thread.join(10)
        conn.stop()
    third = frames[2].header.ts.timestamp()
    # Each later frame goes out within a period of its due time, after the release: none is
    # stamped in the second the publisher was held.
    assert stamped_within(frames, third, released - PERIOD_S) == []
    assert output.stats.late >= 1


def test_a_file_back_after_a_spell_missing_plays_from_then_on(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_BACKOFF_S", 1.0)
    clip = write_clip(tmp_path / "c.avi", 10)  # a second, reopened at each pass
    hidden = tmp_path / "hidden.avi"
    conn, output, frames, stop = replaying(mosquitto, clip, "f-gone")
    offline_at: list[float] = []
    real_status = output.set_status

    def set_status(online: bool, force: bool = False) -> None:
        if not online and not offline_at:
            offline_at.append(time.time())  # before the status goes out: every frame is older
        real_status(online, force)

    output.set_status = set_status  # type: ignore[method-assign]
    thread = run(output, stop)
    try:
        wait_for(lambda: len(frames) >= 3)
        clip.rename(hidden)  # the pass under way plays on; the next open fails
        wait_for(lambda: bool(offline_at))
        time.sleep(1.5)  # a retry finds it missing again
        before = len(frames)
        hidden.rename(clip)
        back = time.time()
        wait_for(lambda: len(frames) >= before + 5)
    finally:
        stop.set()
        thread.join(10)
        conn.stop()
    assert before == len([f for f in frames if f.header.ts.timestamp() < offline_at[0]])
    # No frame is stamped while the file was missing, and none went out in a burst for it.
    assert stamped_within(frames, offline_at[0], back) == []
    assert output.stats.failures >= 1
    assert datetime.fromtimestamp(back, UTC) < frames[before].header.ts


class SlowCapture:
    """A cv2.VideoCapture whose grab() takes 100 ms: a 25 fps file is read at 10 fps, slower
    than it plays (a decoder that cannot keep up with the footage). Counts its grabs."""

    real = cv2.VideoCapture
    grabs = 0

    def __init__(self, *args: Any) -> None:
        self.cap = self.real(*args)

    def grab(self) -> bool:
        time.sleep(0.1)
        SlowCapture.grabs += 1
        return bool(self.cap.grab())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cap, name)


def test_a_file_read_slower_than_real_time_plays_on(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = tmp_path / "c25.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 36))
    for i in range(100):
        writer.write(np.full((36, 64, 3), (5 * i) % 256, np.uint8))
    writer.release()
    monkeypatch.setattr(cv2, "VideoCapture", SlowCapture)
    monkeypatch.setattr(SlowCapture, "grabs", 0)
    # Sampled at 5 fps, each sample takes 5 grabs: 500 ms of reading for 200 ms of footage.
    conn, output, frames, stop = replaying(mosquitto, clip, "f-slow", fps=5)
    thread = run(output, stop)
    try:
        wait_for(lambda: SlowCapture.grabs >= 60)  # some 6 s of reading
        assert output.online
    finally:
        stop.set()
        thread.join(10)
        conn.stop()
    # Every sample read is played, slower than real time: none is skipped, as skipping would
    # not catch up (grab() reads the skipped sample's frames all the same).
    assert output.stats.late <= 1
    assert len(frames) >= SlowCapture.grabs // 5 - 1
    stamps = [f.header.ts for f in frames]
    assert stamps == sorted(stamps)
