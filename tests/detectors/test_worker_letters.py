"""The worker's limit on dead letters keeps to the worker's clock, also one set after it was
built."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.detectors.types import Detections
from gridpatrol.ingest.messages import FrameHeader, encode_frame
from gridpatrol.ingest.mqtt import Message
from tests.detectors import test_worker
from tests.detectors.test_worker_schedule import _worker


def test_the_letter_window_ends_on_the_clock_the_worker_was_given_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """10 bad frames of a camera get their letters, the 11th none; 60 s later on the worker's
    clock (replaced after construction) a new window starts, saying the one it suppressed."""
    worker, _outbox = _worker(tmp_path)
    now = [1000.0]
    worker.clock = lambda: now[0]
    topic = "gridpatrol/cameras/cam-00/frame"
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    assert [worker.letters.admit(topic, "bad_magic") for _ in range(11)] == [True] * 10 + [False]
    now[0] += 60.0
    assert worker.letters.admit(topic, "bad_magic")
    assert [r.getMessage() for r in caplog.records if r.name == "gridpatrol.detectors.worker"] == [
        "1 bad frames in the last 60 s were not dead-lettered nor logged one by one (over 10 "
        "letters per camera topic, 100 in all, in a window): {'bad_magic': 1}"
    ]


class _Letters:
    """A connection that takes every dead letter (and subscriptions that deliver nothing)."""

    connected = True
    connects = 1

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def subscribe(self, *args: object, **kwargs: object) -> object:
        return None

    def max_payload(self, topic: str, qos: int) -> int:
        return 1 << 20

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        self.sent.append(json.loads(payload))
        return True


class _Frames:
    """cam-00's subscription holding valid frames: ``count`` a second apart, or one for each
    (camera time, reception) of ``times``."""

    dropped = 0

    def __init__(self, count: int = 0, times: list[tuple[datetime, datetime]] | None = None):
        jpeg = cv2.imencode(".jpg", np.zeros((36, 64, 3), np.uint8))[1].tobytes()
        start = datetime.now(UTC) - timedelta(minutes=1)
        if times is None:
            times = [(start + timedelta(seconds=k),) * 2 for k in range(count)]
        self.messages = [
            Message(
                "gridpatrol/cameras/cam-00/frame",
                encode_frame(FrameHeader(ts, k, "cam-00", 64, 36), jpeg),
                1,
                False,
                received,
                k,
            )
            for k, (ts, received) in enumerate(times)
        ]

    def get(self, timeout: float) -> Message | None:
        return self.messages.pop(0) if self.messages else None


def test_a_frame_that_trips_a_bug_is_dead_lettered_with_its_traceback_under_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 valid frames of a camera whose decoding fails unforeseen: each is counted bad, the
    first 10 get an ``internal_error`` letter with the error and one warning carrying its
    traceback, the other 2 nothing. Such frames went to no letter, and each logged a
    traceback, whatever the rate."""
    from gridpatrol.detectors import evidence

    def decode(*_args: object) -> None:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(evidence, "decode_jpeg", decode)
    conn = _Letters()
    worker, _outbox = test_worker._worker(tmp_path, conn=conn)  # type: ignore[arg-type]
    rt = worker.cams["cam-00"]
    rt.sub = _Frames(12)  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    assert [worker._take(rt) for _ in range(12)] == [None] * 12
    assert (rt.bad, dict(worker.rejected)) == (12, {"internal_error": 12})
    assert [(x["reason"], x["error"]) for x in conn.sent] == [
        ("internal_error", "RuntimeError: unforeseen")
    ] * 10
    records = [r for r in caplog.records if r.name == "gridpatrol.detectors.worker"]
    assert [r.getMessage() for r in records] == [
        "camera cam-00: internal_error RuntimeError: unforeseen; sent to the dead-letter topic"
    ] * 10
    assert [type(r.exc_info[1]) if r.exc_info else None for r in records] == [RuntimeError] * 10


def test_a_sound_frame_whose_clock_step_the_outbox_refuses_is_no_dead_letter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crowd raised on cam-00; then its clock steps an hour back (two frames), and ending
    its episodes fails as the outbox file is locked. The frames are sound: no letter, no bad
    count, one ERROR line without a traceback."""
    now = [5.0]
    conn = _Letters()
    worker, outbox = test_worker._worker(tmp_path, test_worker.CROWD_SITE, conn=conn)  # type: ignore[arg-type]
    worker.clock = lambda: now[0]
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(7):
        assert test_worker._judge(worker, test_worker._at(k), test_worker._at(k), person)
    assert len(worker.book) == 1
    test_worker._failing(
        monkeypatch, outbox, test_worker._sqlite_error(tmp_path / "scratch", "locked")
    )
    rt = worker.cams["cam-00"]
    back = test_worker._at(7) - timedelta(hours=1)
    rt.sub = _Frames(  # type: ignore[assignment]
        times=[(back + timedelta(seconds=k), test_worker._at(7 + k)) for k in range(2)]
    )
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    assert [worker._take(rt) for _ in range(2)] == [None] * 2
    assert (rt.bad, dict(worker.rejected), conn.sent) == (0, {}, [])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.getMessage(), r.exc_info) for r in errors] == [
        ("camera cam-00: taking a frame failed: database is locked", None)
    ]
