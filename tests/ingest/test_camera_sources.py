"""Camera sources read in-process: the bounds of an HTTP snapshot, credentials kept out of the
log, the backoff of a stream that drops, the pace of a looped file."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from gridpatrol.ingest import sources
from gridpatrol.ingest.messages import Frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.service import IngestService
from gridpatrol.ingest.sources import CameraOutput, CameraPublisher, grab_frame
from gridpatrol.site import Camera, Site, parse_site

from .test_transport import make_certificates


def one_camera_site(source: str, rate: str = "interval_s: 1") -> Site:
    return parse_site(
        "site: {name: Test}\nmqtt: {prefix: t}\ncameras:\n"
        f"  - {{id: h1, source: '{source}', {rate}, location: {{address: a}}}}\n"
    )


def site_camera(source: str, rate: str = "interval_s: 1") -> Camera:
    return one_camera_site(source, rate).cameras[0]


class RawServer:
    """One HTTP response at a time, written by ``respond(server, socket)`` as a camera might;
    ``sent`` counts the body bytes it got out, ``answered`` is set when a response ended."""

    def __init__(
        self,
        respond: Callable[[RawServer, socket.socket], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.respond = respond
        self.tls = tls
        self.stop = threading.Event()
        self.sent = 0
        self.answered = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}/snap.jpg"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:  # the client went away
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                conn.recv(65536)
                self.respond(self, conn)
            self.answered.set()

    def body(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(
        respond: Callable[[RawServer, socket.socket], None], tls: ssl.SSLContext | None = None
    ) -> RawServer:
        made.append(RawServer(respond, tls))
        return made[-1]

    yield make
    for server in made:
        server.stop.set()
        server.sock.close()


def failed_grab(source: str, bound_s: float, caplog: pytest.LogCaptureFixture) -> list[str]:
    """A patrol visit of camera h1 at ``source`` in a thread, asserted to get no frame within
    ``bound_s``; the warnings ingest logged (the visit's streak warning carries the cause)."""
    site = one_camera_site(source)
    conn = MqttConnection("ing-grab", MqttSettings.from_url("mqtt://127.0.0.1:1883"))
    service = IngestService(site, conn, site.cameras)  # not started: the test makes the visit
    out: list[object] = []
    done = threading.Event()

    def run() -> None:
        out.append(service._grab("h1"))
        done.set()

    with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest"):
        threading.Thread(target=run, daemon=True).start()
        assert done.wait(bound_s)
    assert out == [None]
    assert service.outputs["h1"].stats.failures == 1
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("gridpatrol.ingest") and r.levelno == logging.WARNING
    ]


def visit_warning(shown: str, cause: str) -> str:
    """What a failed patrol visit of camera h1 (interval 1 s) warns, ``shown`` its source."""
    return (
        f"camera h1: the patrol visit got no frame from {shown} ({cause}); offline until a "
        "visit succeeds, next try in 2 s"
    )


class SteppingClock:
    """time.monotonic that moves on ``step_s`` at each reading."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += self.step_s
        return self.now


def test_a_snapshot_trickling_in_is_given_up_at_the_deadline(
    raw_server: Callable[..., RawServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A byte now and then keeps each read under httpx's timeout: without a deadline for the
    whole response the grab (and the patrol of every camera behind it) never ends."""

    def trickle(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not server.stop.is_set():
            server.body(conn, b"\xff")
            server.stop.wait(0.05)

    server = raw_server(trickle)
    # Each reading of the clock is 3 s later: the deadline passes after a few chunks.
    monkeypatch.setattr(sources, "time", SimpleNamespace(monotonic=SteppingClock(3).monotonic))
    assert failed_grab(server.url, 10, caplog) == [
        visit_warning(server.url, "no complete response within 10 s")
    ]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_snapshot_trickling_its_headers_is_given_up_at_the_deadline(
    scheme: str,
    raw_server: Callable[..., RawServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """No hook runs before the headers are complete: a camera trickling them a byte now and
    then is cut at the deadline, not when it gives up by itself (here after 20 s); over TLS
    too, which takes the connection's socket over."""

    def trickle(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        for _ in range(400):
            server.body(conn, b"a")
            if server.stop.wait(0.05):
                return

    tls = None
    if scheme == "https":
        ca, cert, key = make_certificates(tmp_path)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    server = raw_server(trickle, tls)
    monkeypatch.setattr(sources, "HTTP_DEADLINE_S", 0.5)
    assert failed_grab(server.url, 60, caplog) == [
        visit_warning(server.url, "no complete response within 0.5 s")
    ]
    # Cut then, not given up only when the camera stopped by itself.
    assert server.answered.wait(30)
    assert server.sent < 400


def test_a_snapshot_cut_at_the_deadline_is_not_taken_for_a_whole_one(
    raw_server: Callable[..., RawServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body of no declared length ends with its connection: the cut at the deadline must
    not pass for its end, nor the half picture read until then for a frame."""

    picture = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))[1].tobytes()

    def stalls(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n\r\n")
        conn.sendall(picture[: len(picture) * 3 // 5])  # its header whole, its scan not
        server.stop.wait(20)

    server = raw_server(stalls)
    monkeypatch.setattr(sources, "HTTP_DEADLINE_S", 0.5)  # httpx's read timeout stays 10 s
    assert failed_grab(server.url, 60, caplog) == [
        visit_warning(server.url, "no complete response within 0.5 s")
    ]


def test_a_snapshot_declared_over_the_cap_is_refused_before_its_body(
    raw_server: Callable[..., RawServer], caplog: pytest.LogCaptureFixture
) -> None:
    def huge(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 419430400\r\n\r\n")
        server.stop.wait(30)  # the body would come now

    server = raw_server(huge)
    assert failed_grab(server.url, 30, caplog) == [
        visit_warning(server.url, "the response is 419430400 bytes, over the 16 MiB limit")
    ]


def test_a_snapshot_of_no_declared_length_is_read_only_up_to_the_cap(
    raw_server: Callable[..., RawServer], caplog: pytest.LogCaptureFixture
) -> None:
    chunk = bytes(2**20)

    def endless(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(120):  # 120 MiB, ended by the close
            server.body(conn, chunk)

    server = raw_server(endless)
    assert failed_grab(server.url, 60, caplog) == [
        visit_warning(server.url, "the response goes on past the 16 MiB limit")
    ]
    # Reading stopped there: the rest never left the camera (socket buffers hold a few MiB).
    assert server.answered.wait(30)
    assert server.sent < 100 * 2**20


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("rtsp://user:secret@127.0.0.1:554/live", "rtsp://***@127.0.0.1:554/live"),
        ("rtsp://admin@10.0.0.9/live", "rtsp://***@10.0.0.9/live"),
        ("rtsp://admin:@10.0.0.9/live", "rtsp://***@10.0.0.9/live"),
        ("rtsp://u:p@[fe80::1]:8554/live", "rtsp://***@[fe80::1]:8554/live"),
        ("http://[::1]:8080/snap.jpg", "http://[::1]:8080/snap.jpg"),
        (
            "http://10.0.0.9/cgi-bin/snapshot.cgi?user=admin&pwd=secret&chn",
            "http://10.0.0.9/cgi-bin/snapshot.cgi?user=***&pwd=***&***",
        ),
        (
            "http://a:b@[2001:db8::7]/s.jpg?token=secret",
            "http://***@[2001:db8::7]/s.jpg?token=***",
        ),
        ("RTSP://Cam.Local/live", "RTSP://Cam.Local/live"),
        ("footage/lot?pwd=x.mp4", "footage/lot?pwd=x.mp4"),
        # a password holding an '@'
        ("rtsp://admin:p@ss@10.0.0.9/live", "rtsp://***@10.0.0.9/live"),
        # XMEye and other DVRs: credentials in the path, between '&' or ';'
        (
            "rtsp://10.0.0.9:554/user=admin&password=S3cret&channel=1&stream=0.sdp",
            "rtsp://10.0.0.9:554/user=***&password=***&channel=***&stream=***",
        ),
        ("rtsp://10.0.0.9/live;user=admin;pwd=S3cret", "rtsp://10.0.0.9/live;user=***;pwd=***"),
        ("rtsp://10.0.0.9/a;pwd=S3/cret&ch=1", "rtsp://10.0.0.9/a;pwd=***&ch=***"),
        ("rtsp://10.0.0.9/live;pwd=", "rtsp://10.0.0.9/live;pwd="),
        # a bare token for a query
        ("http://10.0.0.9/snap.jpg?S3cretToken", "http://10.0.0.9/snap.jpg?***"),
        ("http://10.0.0.9/snap.jpg?S3cret&chn", "http://10.0.0.9/snap.jpg?***&***"),
        (
            "http://10.0.0.9/snap.jpg?channel=1&S3cretToken",
            "http://10.0.0.9/snap.jpg?channel=***&***",
        ),
        # a password may hold an unencoded '#' or '?', which ends the user info for urlsplit
        ("http://admin:Pa#ss1@10.0.0.9/snap.jpg", "http://***@10.0.0.9/snap.jpg"),
        ("rtsp://admin:Pa?ss1@10.0.0.9/live", "rtsp://***@10.0.0.9/live"),
        # a query value holding an '@', no path: no user info
        (
            "rtsp://10.0.0.5:554?user=admin&password=p@ss99",
            "rtsp://10.0.0.5:554?user=***&password=***",
        ),
        ("http://cam?user=admin&pwd=Se@cret", "http://cam?user=***&pwd=***"),
        ("http://10.0.0.9/snap.jpg?", "http://10.0.0.9/snap.jpg?"),
    ],
)
def test_redact_hides_every_user_and_query_value(source: str, shown: str) -> None:
    assert sources.redact(source) == shown


def test_a_refused_snapshot_is_logged_by_its_status_without_the_url_it_was_asked_from(
    http_camera: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The text of httpx's status error holds the URL it was asked from, password included."""
    http_camera.broken.set()  # 503 to every request
    netloc = http_camera.url.split("/")[2]
    source = f"http://admin:S3cret@{netloc}/snap.jpg?user=admin&pwd=S3cret"
    shown = f"http://***@{netloc}/snap.jpg?user=***&pwd=***"
    assert failed_grab(source, 30, caplog) == [visit_warning(shown, "HTTP 503")]


def test_a_refused_snapshot_says_why_without_the_credentials(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator tells a camera that is down from a name that does not resolve by the cause
    httpx gives, not by its class alone."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    source = f"http://admin:S3cret@127.0.0.1:{port}/snap.jpg?user=admin&pwd=S3cret"
    assert failed_grab(source, 30, caplog) == [
        visit_warning(
            f"http://***@127.0.0.1:{port}/snap.jpg?user=***&pwd=***",
            "ConnectError: [Errno 111] Connection refused",
        )
    ]


@pytest.mark.parametrize("password", ["Pa#ss1", "Pa?ss1", "Pa/ss1"])
def test_a_url_a_password_breaks_is_said_without_a_piece_of_it(
    password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx takes the password's first piece for a port ("Invalid port: 'Pa'")."""
    source = f"http://admin:{password}@127.0.0.1:1/snap.jpg"
    said = failed_grab(source, 30, caplog)
    assert said == [
        visit_warning(
            "http://***@127.0.0.1:1/snap.jpg",
            "InvalidURL: the URL cannot be parsed (percent-encode # ? / @ in a password)",
        )
    ]
    assert "Pa" not in said[0]


def test_a_failure_that_names_the_camera_url_names_it_redacted() -> None:
    source = "http://admin:S3cret@Cam.Local/s.cgi?user=admin&pwd=S3cret"
    shown = "http://***@Cam.Local/s.cgi?user=***&pwd=***"
    # As written, as httpx normalises it, and as httpx shows it (only the password hidden).
    said = f"{source} = {httpx.URL(source)} = {httpx.URL(source)!r}"
    assert sources.failure(httpx.ConnectError(said), source) == (
        f"ConnectError: {shown} = {shown} = URL('{shown}')"
    )
    assert sources.failure(ValueError(said), source) == f"{shown} = {shown} = URL('{shown}')"
    assert sources.failure(httpx.ReadTimeout(""), source) == "ReadTimeout"


class ScriptedStop(threading.Event):
    """A stop event whose waits take no time and are recorded; set at the ``last``-th wait."""

    def __init__(self, last: int) -> None:
        super().__init__()
        self.last = last
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.last:
            self.set()
        return self.is_set()


class ScriptedCapture:
    """A stream that holds ``frames`` frames (None: it cannot be opened)."""

    def __init__(self, frames: int | None) -> None:
        self.frames = frames

    def isOpened(self) -> bool:
        return self.frames is not None

    def grab(self) -> bool:
        if not self.frames:
            return False
        self.frames -= 1
        return True

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((36, 64, 3), np.uint8)

    def release(self) -> None:
        return


def test_a_stream_that_drops_before_a_frame_backs_off_as_one_that_cannot_be_opened(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A camera that accepts the connection and drops it at once would otherwise be opened
    again every second for ever: only a frame shows the source works again."""
    sessions = [0, 0, 0, 2, 0, 0, None, None]  # frames of each connection
    opened: list[str] = []

    def open_capture(source: str, base_dir: object) -> ScriptedCapture:
        opened.append(source)
        return ScriptedCapture(sessions[len(opened) - 1] if len(opened) <= len(sessions) else None)

    monkeypatch.setattr(sources, "open_capture", open_capture)
    camera = site_camera("rtsp://10.0.0.9/live", rate="fps: 2")
    conn = MqttConnection("ing-backoff", MqttSettings.from_url("mqtt://127.0.0.1:1883"))
    output = CameraOutput(camera, conn)  # never connected: its frames count as dropped
    stop = ScriptedStop(last=len(sessions))
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        CameraPublisher(output, stop).run()
    assert len(opened) == len(sessions)
    assert stop.waits == [1, 2, 4, 1, 1, 2, 4, 8]
    assert output.stats.dropped == 1  # the one frame sampled from the good connection
    assert [r.getMessage() for r in caplog.records if r.name == sources.__name__] == [
        f"camera h1: {why} rtsp://10.0.0.9/live; retrying in {wait} s"
        for why, wait in [
            *(("stream lost", w) for w in (1, 2, 4, 1, 1, 2)),
            ("cannot open", 4),
            ("cannot open", 8),
        ]
    ]


class SteppedWallClock:
    """Monotonic time that moves only as waited; the wall clock with it, give or take a step."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.step_s = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now + self.step_s


class ClockedStop(threading.Event):
    """A stop event whose waits move ``clock`` on at once, the wall clock stepped to
    ``steps[n]`` at the n-th wait; set at the ``last``-th."""

    def __init__(self, clock: SteppedWallClock, steps: dict[int, float], last: int) -> None:
        super().__init__()
        self.clock, self.steps, self.last = clock, steps, last
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        self.clock.now += timeout or 0.0
        self.clock.step_s = self.steps.get(len(self.waits), self.clock.step_s)
        if len(self.waits) >= self.last:
            self.set()
        return self.is_set()


class RecordingOutput(CameraOutput):
    def __init__(self, camera: Camera, conn: MqttConnection) -> None:
        super().__init__(camera, conn)
        self.stamps: list[datetime] = []

    def publish_image(self, image: np.ndarray, ts: datetime | None = None) -> Frame | None:
        assert ts is not None
        self.stamps.append(ts)
        return super().publish_image(image, ts)


def test_a_looped_file_is_paced_through_steps_of_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minute back (an NTP correction) held the replay for that minute, ten forward
    published ten minutes of frames at once. The frames still bear the wall clock's time."""
    path = tmp_path / "clip.avi"  # 10 s at 10 fps, sampled at 2 fps: a frame every 0.5 s
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 36))
    for i in range(100):
        writer.write(np.full((36, 64, 3), i, np.uint8))
    writer.release()
    clock = SteppedWallClock()
    monkeypatch.setattr(sources, "time", clock)
    camera = site_camera(str(path), rate="fps: 2, loop: true")
    conn = MqttConnection("ing-pace", MqttSettings.from_url("mqtt://127.0.0.1:1883"))
    output = RecordingOutput(camera, conn)  # never connected: its frames count as dropped
    # The wall clock steps back a minute before the 5th frame, ten minutes on before the 10th.
    stop = ClockedStop(clock, {5: -60.0, 10: 600.0}, last=30)
    CameraPublisher(output, stop, tmp_path).run()
    # The first frame at once, then one every 0.5 s, across the steps and the file's end.
    assert stop.waits == pytest.approx([0.0] + [0.5] * 29)
    started = 1_800_000_000.0 + 5000.0  # the wall clock at the first frame, before the steps
    expected = [
        started + 0.5 * k + (0.0 if k < 4 else -60.0 if k < 9 else 600.0) for k in range(29)
    ]
    assert [ts.timestamp() for ts in output.stamps] == pytest.approx(expected, abs=1e-3)


NO_SOCKSIO = (
    "Using SOCKS proxy, but the 'socksio' package is not installed. Make sure to install httpx"
    " using `pip install httpx[socks]`. (a SOCKS proxy needs httpx's socks extra: pip install"
    " 'httpx[socks]'); or add the host to no_proxy"
)


@pytest.fixture
def socks_shell(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A shell with a SOCKS ``all_proxy`` (the socks extra not installed)."""
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("all_proxy", "socks5://127.0.0.1:1")
    return monkeypatch


def test_a_camera_no_proxy_names_is_grabbed_directly_beside_a_socks_all_proxy(
    http_camera: Any, socks_shell: pytest.MonkeyPatch
) -> None:
    socks_shell.setenv("no_proxy", "127.0.0.1")
    grabbed = grab_frame(site_camera(http_camera.url), None)
    assert not isinstance(grabbed, str) and grabbed[0][:2] == b"\xff\xd8"


def test_a_camera_behind_a_socks_proxy_without_the_extra_says_what_to_install(
    http_camera: Any, socks_shell: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert failed_grab(http_camera.url, 30, caplog) == [
        visit_warning(
            http_camera.url,
            f"the environment's proxy socks5://127.0.0.1:1 cannot be used: {NO_SOCKSIO}",
        )
    ]


def test_a_camera_behind_a_socks_proxy_without_the_extra_keeps_its_credentials_out(
    socks_shell: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy's error names the proxy alone: the camera is named by the log line, redacted."""
    source = "http://admin@cam.example/s.cgi?user=admin&pwd=S3cret"
    said = failed_grab(source, 30, caplog)
    assert said == [
        visit_warning(
            "http://***@cam.example/s.cgi?user=***&pwd=***",
            f"the environment's proxy socks5://127.0.0.1:1 cannot be used: {NO_SOCKSIO}",
        )
    ]
    assert "S3cret" not in caplog.text and "admin@" not in caplog.text
