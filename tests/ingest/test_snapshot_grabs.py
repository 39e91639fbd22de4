"""Snapshot requests for a camera that takes long to open: a burst takes one grab; requests
that overflow the queue are counted in the progress line."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.ingest import service as ingest_service
from gridpatrol.ingest.messages import decode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.snapshot import encode_request
from gridpatrol.ingest.topics import snapshot_request_topic, snapshot_topic
from gridpatrol.site import load_site

SHARED = MqttSettings.from_url("mqtt://127.0.0.1:1883")


class SlowCamera:
    """grab_once for snapshot threads: blocks until released, counting the grabs."""

    def __init__(self) -> None:
        self.grabs = 0
        self.started = threading.Event()
        self.release = threading.Event()
        ok, data = cv2.imencode(".jpg", np.full((36, 64, 3), 128, np.uint8))
        assert ok
        self.image = data.tobytes()

    def __call__(self, camera: object, base_dir: Path | None) -> tuple[bytes, int, int] | None:
        if not threading.current_thread().name.startswith("snapshot"):
            return None  # the patrol's own visits
        self.grabs += 1
        self.started.set()
        assert self.release.wait(30)
        return self.image, 64, 36


def test_a_burst_of_requests_takes_one_grab_and_every_request_is_answered(
    site_file: Callable[..., Path], mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera = SlowCamera()
    monkeypatch.setattr(ingest_service, "grab_once", camera)
    site = load_site(
        site_file("  - {id: p1, source: 'rtsp://127.0.0.1:9/x', interval_s: 3600,\n"
                  "     location: {address: a}}\n")
    )  # fmt: skip
    served = MqttConnection("ing-grabs", SHARED, prefix=mqtt_prefix)
    asker = MqttConnection("asker-grabs", SHARED, prefix=mqtt_prefix)
    replies = asker.subscribe(snapshot_topic(mqtt_prefix, "p1"), qos=1)
    service = IngestService(site, served, site.cameras)
    assert served.start(10) and asker.start(10)
    service.start()
    try:
        ids = [uuid.uuid4().hex for _ in range(5)]
        for request_id in ids:
            asker.publish(snapshot_request_topic(mqtt_prefix, "p1"), encode_request(request_id), 1)
        assert camera.started.wait(10)
        # Release the first grab only once every request has come in and waits for it.
        deadline = time.monotonic() + 30
        while len(service._waiting.get("p1", ())) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        camera.release.set()
        answered = set()
        while len(answered) < len(ids) and (message := replies.get(10)) is not None:
            frame = decode_frame(
                message.payload, topic_camera_id="p1", received_at=datetime.now(UTC)
            )
            answered.add(frame.header.request_id)
    finally:
        service.stop()
        served.stop()
        asker.stop()
    assert answered == set(ids)
    assert camera.grabs == 1


def test_the_progress_line_counts_snapshot_requests_dropped_from_a_full_queue(
    site_file: Callable[..., Path], mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    site = load_site(
        site_file("  - {id: p1, source: 'rtsp://127.0.0.1:9/x', interval_s: 3600,\n"
                  "     location: {address: a}}\n")
    )  # fmt: skip
    conn = MqttConnection("ing-progress", SHARED, prefix=mqtt_prefix)  # never started
    service = IngestService(site, conn, site.cameras)
    topic = snapshot_request_topic(mqtt_prefix, "p1")
    for mid in range(1, 106):  # a burst while nothing serves them: the queue holds 100
        request = encode_request(uuid.uuid4().hex)
        service._requests._put(Message(topic, request, 1, False, datetime.now(UTC), mid))
    with caplog.at_level(logging.INFO, logger="gridpatrol.ingest.service"):
        service.log_progress()
    assert "snapshot requests 105 received, 5 dropped (queue full);" in caplog.text
