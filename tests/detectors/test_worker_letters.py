"""The worker's limit on dead letters keeps to the worker's clock, also one set after it was
built."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

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
