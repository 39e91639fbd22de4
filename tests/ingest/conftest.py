"""Ingest fixtures: watchers on a broker, site files for the CLI, the ingest process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription

from ..conftest import clear_retained

FOOTAGE = "car_park_people_bikes.mp4"
SHARED_BROKER = "mqtt://127.0.0.1:1883"


class Watcher:
    """A plain subscriber that collects what arrives on one topic filter."""

    def __init__(self, url: str, topic_filter: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.conn = MqttConnection("watcher", MqttSettings.from_url(url), prefix=prefix)
        self.sub: Subscription = self.conn.subscribe(topic_filter, qos=1, maxsize=100000)
        assert self.conn.start(10)
        self.seen: list[Message] = []

    def collect(
        self, until: Callable[[list[Message]], bool], timeout: float = 20.0
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while not until(self.seen) and time.monotonic() < deadline:
            message = self.sub.get(0.1)
            if message is not None:
                self.seen.append(message)
        return self.seen

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.seen if m.topic == topic]


@pytest.fixture
def watch() -> Iterator[Callable[[str, str, str], Watcher]]:
    made: list[Watcher] = []

    def make(url: str, topic_filter: str, prefix: str) -> Watcher:
        made.append(Watcher(url, topic_filter, prefix))
        return made[-1]

    yield make
    for watcher in made:
        watcher.conn.stop()
    # Its stop leaves the watcher's retained "offline" status, after a test's mqtt_prefix
    # fixture may have cleared the prefix already: the shared broker must not keep it.
    for prefix in {w.prefix for w in made if w.url == SHARED_BROKER}:
        clear_retained(prefix)


@pytest.fixture
def site_file(tmp_path: Path, mqtt_prefix: str, shared_dir: Path) -> Callable[[str], Path]:
    """Write a site file whose ``cameras:`` section is the given YAML text."""

    def write(cameras: str, max_fps: float = 4) -> Path:
        text = (
            "site: {name: Test}\n"
            f"mqtt: {{prefix: {mqtt_prefix}}}\n"
            f"patrol: {{max_fps: {max_fps}}}\n"
            "cameras:\n" + cameras.replace("$FOOTAGE", str(shared_dir / "footage" / FOOTAGE))
        )
        path = tmp_path / "site.yaml"
        path.write_text(text)
        return path

    return write


class IngestProcess:
    """``gridpatrol <args>`` in a subprocess; with ``log``, its stderr goes to that file, where
    the test can read each line as it is written (a pipe is read only at the end)."""

    def __init__(self, args: list[str], url: str, log: Path | None = None) -> None:
        env = {**os.environ, "GRIDPATROL_MQTT_URL": url}
        self.log = log
        err_file = log.open("w") if log is not None else None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gridpatrol.cli", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err_file if err_file is not None else subprocess.PIPE,
                text=True,
            )
        finally:
            if err_file is not None:
                err_file.close()  # the process has its own copy

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.log is not None:
            err = self.log.read_text()
        return self.proc.returncode, out, err

    def lines(self) -> list[str]:
        """The complete lines written to the ``log`` file so far."""
        assert self.log is not None, "started without a log file"
        text = self.log.read_text()
        return text.splitlines()[: text.count("\n")]

    def wait_for(self, until: Callable[[list[str]], bool], timeout: float) -> list[str]:
        """The log's lines once ``until(lines)`` holds, after ``timeout`` s or once the process
        has ended, whichever comes first; the caller asserts what it needs."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.proc.poll() is not None
            lines = self.lines()
            if until(lines) or ended or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


@pytest.fixture
def gridpatrol_proc() -> Iterator[Callable[..., IngestProcess]]:
    """Start ``gridpatrol <args>`` against a broker URL, its stderr to ``log`` if given; killed
    at the end if still running."""
    procs: list[IngestProcess] = []

    def start(args: list[str], url: str = SHARED_BROKER, log: Path | None = None) -> IngestProcess:
        procs.append(IngestProcess(args, url, log))
        return procs[-1]

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGKILL)
            p.proc.wait(10)


def write_clip(path: Path, frames: int) -> Path:
    """A video of ``frames`` 64x36 frames at 10 fps, each a shade brighter than the last."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 36))
    for i in range(frames):
        writer.write(np.full((36, 64, 3), (10 * i) % 256, np.uint8))
    writer.release()
    return path


def make_jpeg(width: int, height: int) -> bytes:
    image = np.zeros((height, width, 3), np.uint8)
    cv2.rectangle(image, (10, 10), (width // 2, height // 2), (0, 200, 255), -1)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return bytes(buf.tobytes())


class SnapshotServer:
    """An HTTP camera: ``/snap.jpg`` returns ``image`` (a 640x360 JPEG) until ``broken`` is
    set. With ``hold_after`` = n, every request after the n-th sets ``held`` and waits for
    ``release`` before it is answered: a grab under way for as long as a test wants."""

    def __init__(self) -> None:
        self.image = make_jpeg(640, 360)
        self.broken = threading.Event()
        self.hold_after: int | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self._answered = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if server.broken.is_set() or self.path != "/snap.jpg":
                    self.send_error(503)
                    return
                server._hold()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(server.image)))
                self.end_headers()
                self.wfile.write(server.image)

            def log_message(self, *_args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/snap.jpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _hold(self) -> None:
        self._answered += 1
        if self.hold_after is not None and self._answered > self.hold_after:
            self.held.set()
            self.release.wait(30)


@pytest.fixture
def http_camera() -> Iterator[SnapshotServer]:
    server = SnapshotServer()
    yield server
    server.release.set()
    server.httpd.shutdown()
