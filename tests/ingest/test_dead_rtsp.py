"""RTSP cameras that take the connection and never send a picture. OpenCV opens every FFmpeg
source under one lock of the process, held for the open's timeout (10 s) by such a camera."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.ingest import sources
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.snapshot import encode_request
from gridpatrol.ingest.topics import snapshot_request_topic
from gridpatrol.site import load_site

from .conftest import write_clip

SHARED = "mqtt://127.0.0.1:1883"


class SilentRtsp:
    """A camera that accepts every connection and answers nothing (a black hole), or, with
    ``options``, OPTIONS alone: FFmpeg's open then waits for the answer to its DESCRIBE until
    its timeout, past any probe."""

    def __init__(self, options: bool) -> None:
        self.options = options
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self.server.getsockname()[1]}/stream"
        self.closed = threading.Event()
        self.requests: list[bytes] = []  # the first line of each request received
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self.closed.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                self.requests.append(data.split(b"\r\n", 1)[0])
                cseq = re.search(rb"CSeq: *(\d+)", data)
                if self.options and data.startswith(b"OPTIONS") and cseq is not None:
                    conn.sendall(
                        b"RTSP/1.0 200 OK\r\nCSeq: " + cseq[1] + b"\r\n"
                        b"Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n"
                    )

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def silent_rtsp() -> Iterator[Callable[[bool], SilentRtsp]]:
    made: list[SilentRtsp] = []

    def make(options: bool) -> SilentRtsp:
        made.append(SilentRtsp(options))
        return made[-1]

    yield make
    for camera in made:
        camera.close()


def streamed(camera_id: str, url: str) -> str:
    return f"  - {{id: {camera_id}, source: '{url}', fps: 1, location: {{address: a}}}}\n"


def test_sigterm_ends_ingest_promptly_whatever_its_dead_cameras_hold(
    site_file: Callable[..., Path],
    silent_rtsp: Callable[[bool], SilentRtsp],
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    """Each open waited its turn at OpenCV's lock, 10 s apiece, and the interpreter joined the
    snapshot grabs' threads at its exit: 4 such cameras and 2 grabs held the exit up for about
    a minute, and the cameras' failures were logged, with a retry, after the shutdown began."""
    ids = ["c1", "c2", "c3", "c4"]
    site = site_file("".join(streamed(i, silent_rtsp(True).url) for i in ids))
    log = tmp_path / "ingest.log"
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-term"], log=log)
    started = proc.wait_for(lambda lines: any("continuous and" in x for x in lines), 30)
    assert any("ingest: 4 continuous and 0 patrol camera(s)" in x for x in started)
    asker = MqttConnection("asker-term", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert asker.start(10)
    try:
        for camera_id in ["c1", "c2"]:
            topic = snapshot_request_topic(mqtt_prefix, camera_id)
            assert asker.publish_wait(topic, encode_request(f"r-{camera_id}"))
    finally:
        asker.stop()
    time.sleep(1)  # the grabs are queued behind the cameras' opens
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(25)
    assert code == 0, err
    lines = err.splitlines()
    (stop,) = [n for n, line in enumerate(lines) if "shutting down" in line]
    assert [x for x in lines[stop:] if "cannot open" in x or "retrying" in x] == []


def test_a_camera_that_never_answers_holds_up_no_other_cameras_open(
    site_file: Callable[..., Path],
    silent_rtsp: Callable[[bool], SilentRtsp],
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    """Each open of the black hole held OpenCV's lock for 10 s, and every other open (the
    patrol's visits here) waited behind it: 3 visits in 15 s where 15 are due."""
    write_clip(tmp_path / "clip.avi", 20)
    cameras = streamed("c1", silent_rtsp(False).url)
    cameras += "  - {id: p1, source: clip.avi, interval_s: 1, location: {address: a}}\n"
    site = load_site(site_file(cameras))
    conn = MqttConnection("ing-hole", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    service = IngestService(site, conn, site.cameras, base_dir=tmp_path)
    assert conn.start(10)
    service.start()
    try:
        service.stop_event.wait(15)
        visits = service.outputs["p1"].stats.published
    finally:
        service.stop()
        conn.stop()
    assert visits >= 10
    assert service.outputs["c1"].stats.published == 0


@pytest.mark.parametrize(
    "path",
    ["/stream", "/cam/realmonitor?channel=1&user=admin&password=hunter2", "/user=admin_password="],
)
def test_the_probe_names_the_server_alone(
    silent_rtsp: Callable[[bool], SilentRtsp], path: str
) -> None:
    """The probe went out with the URL's path and query, where cameras take credentials too:
    in clear, before every open and on every reconnect."""
    camera = silent_rtsp(True)
    port = camera.server.getsockname()[1]
    assert sources.rtsp_answers(f"rtsp://admin:secret@127.0.0.1:{port}{path}")
    assert camera.requests == [f"OPTIONS rtsp://127.0.0.1:{port}/ RTSP/1.0".encode()]
