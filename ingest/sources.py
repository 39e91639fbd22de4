"""Camera sources republished to MQTT: video files, RTSP streams and HTTP snapshot URLs.

Each continuously sampled camera runs one thread (:class:`CameraPublisher`) that reads its
source, samples it at the camera's ``fps``, resizes, encodes JPEG and publishes a frame
envelope. Streams are drained with ``grab()`` and only the sampled frame is decoded, so a slow
consumer never makes us fall behind the live picture. :func:`grab_once` is the open-grab-close
visit used by patrol and by snapshot requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from gridpatrol import proxies
from gridpatrol.ingest.messages import (
    MAGIC,
    MAX_HEADER_BYTES,
    Frame,
    FrameHeader,
    encode_frame,
    jpeg_size,
)
from gridpatrol.ingest.topics import camera_status_topic, frame_topic, snapshot_topic
from gridpatrol.site import SNAPSHOT_SCHEMES, STREAM_SCHEMES

if TYPE_CHECKING:
    import httpx
    import numpy as np

    from gridpatrol.ingest.mqtt import MqttConnection
    from gridpatrol.site import Camera

log = logging.getLogger(__name__)

SourceKind = Literal["mqtt", "stream", "http", "file"]
OPEN_TIMEOUT_MS = 10000
MAX_BACKOFF_S = 30.0
# An HTTP snapshot is given up after this long in all, and past this size (a JPEG of even a
# 4K camera is a few MB). The size is the default packet limit of a connection
# (mqtt.DEFAULT_MAX_PACKET_SIZE): a larger JPEG could not go out as it came.
HTTP_DEADLINE_S = 10.0
# httpx's timeout for each read, connect and write of a snapshot; the deadline covers the whole.
HTTP_READ_TIMEOUT_S = 10.0
HTTP_MAX_BYTES = 16 * 2**20
# How long an RTSP camera gets to answer an OPTIONS request before each open (see rtsp_answers).
RTSP_PROBE_S = 2.0
# A frame too large for the broker is scaled down at most this many times before it is dropped.
FIT_STEPS = 6
# What a frame envelope adds to its JPEG at most: the magic, the header's length, the header.
ENVELOPE_OVERHEAD = len(MAGIC) + 4 + MAX_HEADER_BYTES


def source_kind(source: str) -> SourceKind:
    """How ``source``, as the site schema normalised it, is read."""
    if source == "mqtt":
        return "mqtt"
    scheme = urlsplit(source).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return "stream"
    if scheme in SNAPSHOT_SCHEMES:
        return "http"
    return "file"


def _expanded(source: str) -> Path:
    return Path(os.path.expandvars(source)).expanduser()


def resolve_path(source: str, base_dir: Path | None) -> Path:
    """A file source: as given (``$VARS`` and ``~`` expanded), else beside the site file."""
    path = _expanded(source)
    if path.is_absolute() or path.exists() or base_dir is None:
        return path
    return base_dir / path


def redact(source: str) -> str:
    """The source without credentials, for logs: any user (with a password or not) shown as
    ``***``, every query value too (cameras take ``?user=admin&pwd=...``), a query of no
    ``name=value`` (a bare token) whole, and the values of ``name=value`` fields of the path
    between ``&`` and ``;`` (DVRs take ``/user=admin&password=...&channel=1``, others
    ``;user=...;pwd=...``)."""
    if "://" not in source:
        return source  # a file: a ``?`` in its name is no query
    # A password may hold what would end the user info for urlsplit (``@ ? # /``).
    split = proxies.user_info(source)
    at = split is not None
    parts = urlsplit(split[0] + split[2] if split is not None else source)
    # A value may hold a ``/``: it runs to the next ``&`` or ``;``, at the cost of a path
    # after it.
    path = "".join(
        f"{name}=***" if value else field
        for field in re.split(r"([&;])", parts.path)
        for name, _, value in [field.partition("=")]
    )
    query = "&".join(
        (f"{name}=***" if value else field) if eq else ("***" if field else field)
        for field in parts.query.split("&")
        for name, eq, value in [field.partition("=")]
    )
    if not at and query == parts.query and path == parts.path:
        return source  # as written, not as urlsplit normalises it
    netloc = f"***@{parts.netloc}" if at else parts.netloc
    return parts._replace(netloc=netloc, path=path, query=query).geturl()


def failure(exc: Exception, source: str) -> str:
    """Why a read of ``source`` failed, for logs: what the exception says, without the
    credentials of the source. An httpx status error is its status alone: its text holds the
    URL it was asked from, maybe a redirect's, with its credentials. The text of another httpx
    error is the cause an operator needs ("Connection refused", "Name or service not known");
    the source, should it be in there, is shown redacted."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.InvalidURL):
        # Its words quote the piece it could not parse, which may be a piece of a password
        # ("Invalid port: 'Pa'" for user:Pa#ss@host).
        return "InvalidURL: the URL cannot be parsed (percent-encode # ? / @ in a password)"
    text = _scrubbed(str(exc), source)
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or type(exc).__name__


def _scrubbed(text: str, source: str) -> str:
    """``text`` with ``source`` redacted where it appears: as written, as httpx writes it
    (normalised) and as httpx shows it (its password alone hidden, as ``[secure]``)."""
    import httpx

    forms = {source}
    with contextlib.suppress(httpx.InvalidURL):
        forms.add(str(httpx.URL(source)))
    forms |= {proxies.masked(form, "[secure]") for form in forms}
    shown = redact(source)
    for form in sorted(forms, key=len, reverse=True):  # a form inside a longer one after it
        text = text.replace(form, shown)
    return text


# ---------------------------------------------------------------------------------------------
# Image helpers


def encode_image(image: np.ndarray, camera: Camera) -> tuple[bytes, int, int]:
    """Resize as configured and JPEG-encode; returns (jpeg, width, height)."""
    import cv2

    if camera.resize is not None and (image.shape[1], image.shape[0]) != tuple(camera.resize):
        image = cv2.resize(image, camera.resize, interpolation=cv2.INTER_AREA)
    return _jpeg(image, camera.jpeg_quality)


def _jpeg(image: np.ndarray, quality: int) -> tuple[bytes, int, int]:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), int(image.shape[1]), int(image.shape[0])


def _decoded(data: bytes) -> np.ndarray | None:
    """An image's pixels; None when it cannot be decoded."""
    import cv2
    import numpy as np

    # As stored, like the detector decodes frames: an EXIF rotation applied here alone would
    # turn and squash the picture under zone polygons drawn on the camera's own frames.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image: np.ndarray | None = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    return image


def reencode_jpeg(data: bytes, camera: Camera) -> tuple[bytes, int, int]:
    """A JPEG from an HTTP camera: passed through unless it must be resized."""
    if camera.resize is None and data.startswith(b"\xff\xd8"):
        width, height = jpeg_size(data)
        return data, width, height
    image = _decoded(data)
    if image is None:
        raise ValueError("the snapshot URL did not return a decodable image")
    return encode_image(image, camera)


def fit_jpeg(data: bytes, camera: Camera, budget: int) -> tuple[bytes, int, int] | None:
    """A JPEG of at most ``budget`` bytes showing what ``data`` does: re-encoded at the
    camera's ``jpeg_quality``, then scaled down (its aspect kept, so zones stay in place) until
    it fits; None when it cannot be decoded or does not fit after :data:`FIT_STEPS` steps."""
    import cv2

    image = _decoded(data)
    if image is None:
        return None
    for _ in range(FIT_STEPS):
        jpeg, width, height = _jpeg(image, camera.jpeg_quality)
        if len(jpeg) <= budget:
            return jpeg, width, height
        # JPEG bytes go with the pixel count: a side scaled by the square root of the excess.
        scale = min(0.9, 0.95 * (budget / len(jpeg)) ** 0.5)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return None


def open_capture(source: str, base_dir: Path | None) -> object:
    """An opened capture, or one that is not (``isOpened()`` False) when it cannot be opened.

    OpenCV opens every FFmpeg source under one lock of the whole process: an RTSP camera that
    takes the connection and never answers would hold up every other open for the open's
    timeout. Such a camera is asked first (:func:`rtsp_answers`), outside the lock.
    """
    import cv2

    if urlsplit(source).scheme.lower() == "rtsp" and not rtsp_answers(source):
        return cv2.VideoCapture()
    if source_kind(source) == "stream":
        # Interleaved TCP survives the packet loss that corrupts UDP RTP on busy networks.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
        params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap
    return cv2.VideoCapture(str(resolve_path(source, base_dir)))


def rtsp_answers(source: str, timeout: float = RTSP_PROBE_S) -> bool:
    """Whether the RTSP server of ``source`` answers an OPTIONS request (any answer, a refusal
    of the credentials too) within ``timeout`` s, the connection included. The request carries
    no credentials. A URL whose host or port cannot be read is left to FFmpeg (True)."""
    split = proxies.user_info(source)
    bare = split[0] + split[2] if split is not None else source
    try:
        parts = urlsplit(bare)
        address = (parts.hostname, parts.port or 554)
    except ValueError:
        return True
    if not address[0]:
        return True
    request = f"OPTIONS {bare} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: gridpatrol\r\n\r\n"
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(request.encode())
            answered = bool(sock.recv(1))
    except OSError:
        answered = False
    if not answered:
        log.debug("%s: no RTSP answer within %g s", redact(source), timeout)
    return answered


class SnapshotRefused(Exception):
    """An HTTP snapshot that is too large or too slow to wait for."""


class _Cutoff:
    """Shuts a response's connections down when its deadline passes.

    No hook runs before a response's headers are complete, and httpx's timeout bounds each
    read alone: a camera trickling its headers a byte now and then would hold the grab for
    ever. Shutting the socket down wakes the read that waits on it. The cutoff keeps
    duplicates of the connections' sockets: TLS takes the original over (detaching it), and a
    descriptor of its own cannot be one the system has since given to another connection.
    """

    def __init__(self, seconds: float) -> None:
        self.passed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Cutoff:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: keeps each connection's socket, the proxy's too."""
        if not event.endswith(".connect_tcp.complete"):
            return
        sock = info["return_value"].get_extra_info("socket").dup()
        with self._lock:
            self._sockets.append(sock)
            if self.passed.is_set():
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed.set()
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


def http_get(url: str) -> bytes:
    """The body at ``url``, read within ``HTTP_DEADLINE_S`` and at most ``HTTP_MAX_BYTES``.

    The deadline covers the whole response, headers and redirects included (see `_Cutoff`);
    it is also checked as each response's headers arrive and between chunks of the body.
    """
    import httpx

    deadline = time.monotonic() + HTTP_DEADLINE_S

    def check(response: httpx.Response) -> None:
        # Before any body is read, redirects' too.
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > HTTP_MAX_BYTES:
            raise SnapshotRefused(f"the response is {declared} bytes, over {_limit()}")
        if time.monotonic() > deadline:
            raise SnapshotRefused(_too_slow())

    # Identity: one compressed chunk could unpack to many times the cap before it is checked.
    with (
        _Cutoff(HTTP_DEADLINE_S) as cutoff,
        httpx.Client(
            timeout=HTTP_READ_TIMEOUT_S,
            transport=proxies.transport(url),
            follow_redirects=True,
            headers={"Accept-Encoding": "identity"},
            event_hooks={"response": [check]},
        ) as client,
    ):
        try:
            with client.stream("GET", url, extensions={"trace": cutoff.trace}) as response:
                response.raise_for_status()
                body = _read_body(response, deadline)
        except httpx.TransportError:
            if cutoff.passed.is_set():
                raise SnapshotRefused(_too_slow()) from None
            raise
        if cutoff.passed.is_set():
            # A body without a declared length ends with its connection: the cut would pass
            # for its end, and half a picture for a frame.
            raise SnapshotRefused(_too_slow())
        return body


def _read_body(response: httpx.Response, deadline: float) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > HTTP_MAX_BYTES:
            raise SnapshotRefused(f"the response goes on past {_limit()}")
        if time.monotonic() > deadline:
            raise SnapshotRefused(_too_slow())
    return bytes(body)


def _too_slow() -> str:
    return f"no complete response within {HTTP_DEADLINE_S:g} s"


def _limit() -> str:
    return f"the {HTTP_MAX_BYTES / 2**20:g} MiB limit"


def grab_once(camera: Camera, base_dir: Path | None) -> tuple[bytes, int, int] | None:
    """One frame by open-grab-close (patrol visits, snapshots); None when the source failed.

    A file is read at the position the wall clock points to (modulo its length), so successive
    visits see the scene move on as a live camera's would.
    """
    import cv2

    kind = source_kind(camera.source)
    try:
        if kind == "http":
            return reencode_jpeg(http_get(camera.source), camera)
        cap = open_capture(camera.source, base_dir)
        try:
            if not cap.isOpened():  # type: ignore[attr-defined]
                return None
            if kind == "file":
                count = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0  # type: ignore[attr-defined]
                rate = cap.get(cv2.CAP_PROP_FPS) or 25.0  # type: ignore[attr-defined]
                if count > 1:
                    position = int(time.time() * rate) % int(count)
                    cap.set(cv2.CAP_PROP_POS_FRAMES, position)  # type: ignore[attr-defined]
            ok, image = cap.read()  # type: ignore[attr-defined]
            return encode_image(image, camera) if ok else None
        finally:
            cap.release()  # type: ignore[attr-defined]
    except Exception as exc:
        source = redact(camera.source)
        log.warning(
            "camera %s: grab from %s failed: %s", camera.id, source, failure(exc, camera.source)
        )
        return None


# ---------------------------------------------------------------------------------------------
# Publishing


@dataclass
class CameraStats:
    published: int = 0
    dropped: int = 0
    failures: int = 0


class CameraOutput:
    """Frame numbering, publication, the newest frame and the retained status of one camera."""

    def __init__(self, camera: Camera, conn: MqttConnection) -> None:
        self.camera = camera
        self.conn = conn
        self.topic = frame_topic(conn.prefix, camera.id)
        self.status_topic = camera_status_topic(conn.prefix, camera.id)
        self.reply_topic = snapshot_topic(conn.prefix, camera.id)
        self.stats = CameraStats()
        self.latest: Frame | None = None
        self.online: bool | None = None
        self.closed = False
        # The camera's file, which does not loop, has ended: no more frames come from it.
        self.ended = False
        self._seq = 0
        self._fit_said: set[bool] = set()  # frames re-encoded to fit (True) or dropped, said
        # Held while publishing, so that close() comes between two publications, never inside.
        self._lock = threading.Lock()

    def publish(
        self, jpeg: bytes, width: int, height: int, ts: datetime | None = None
    ) -> Frame | None:
        """Publish a frame (and ``online`` before it); once closed, nothing is published. None
        when the frame cannot be made to fit the broker's packet limit (see :meth:`_fit`)."""
        fitted = self._fit(jpeg, width, height)
        if fitted is None:
            return None
        with self._lock:
            frame = self._numbered(*fitted, ts)
            if self.closed:
                return frame
            self.latest = frame
            # Before the frame: a watcher never sees frames of an offline camera.
            self._set_status(True, force=False)
            sent = self.conn.publish(self.topic, encode_frame(frame.header, frame.image), qos=0)
        if sent:
            self.stats.published += 1
        else:
            self.stats.dropped += 1
        return frame

    def reply_frame(self, jpeg: bytes, width: int, height: int) -> Frame | None:
        """A frame for snapshot replies alone: numbered and fitted as a published one, but not
        published, not the newest and no change of status (a grab beside the camera's own
        source says nothing of how that one fares). None when it cannot be made to fit."""
        fitted = self._fit(jpeg, width, height)
        if fitted is None:
            return None
        with self._lock:
            return self._numbered(*fitted, None)

    def _numbered(self, jpeg: bytes, width: int, height: int, ts: datetime | None) -> Frame:
        header = FrameHeader(ts or datetime.now(UTC), self._seq, self.camera.id, width, height)
        self._seq += 1
        return Frame(header, jpeg)

    def _fit(self, jpeg: bytes, width: int, height: int) -> tuple[bytes, int, int] | None:
        """The JPEG as is when its envelope fits the connection's packet limit (a snapshot
        reply's, QoS 1 on the longer topic, with any header); else re-encoded smaller
        (:func:`fit_jpeg`): a larger packet would make the broker drop the connection, and
        every camera of this process with it. None, counted as dropped, when it cannot fit."""
        budget = self.conn.max_payload(self.reply_topic, qos=1) - ENVELOPE_OVERHEAD
        if len(jpeg) <= budget:
            return jpeg, width, height
        fitted = fit_jpeg(jpeg, self.camera, budget)
        if fitted is None:
            self.stats.dropped += 1
        if (fitted is not None) not in self._fit_said:  # once for each outcome
            self._fit_said.add(fitted is not None)
            log.warning(
                "camera %s: a frame of %d bytes (%dx%d) is over the %d bytes the broker's packet "
                "limit leaves it; %s; not said again",
                self.camera.id,
                len(jpeg),
                width,
                height,
                budget,
                "re-encoded smaller to fit (set the camera's resize or jpeg_quality to spare the "
                "work)"
                if fitted is not None
                else "dropped: it could not be re-encoded to fit",
            )
        return fitted

    def set_status(self, online: bool, force: bool = False) -> None:
        with self._lock:
            self._set_status(online, force)

    def close(self) -> None:
        """``offline`` for good: a grab that ends after ingest stopped must not bring back a
        retained ``online`` for a camera nobody publishes any more."""
        with self._lock:
            self._set_status(False, force=False)
            self.closed = True

    def _set_status(self, online: bool, force: bool) -> None:
        if self.closed or (online == self.online and not force):
            return
        self.online = online
        self.conn.publish(self.status_topic, b"online" if online else b"offline", 1, retain=True)
        if not force:
            log.info("camera %s: %s", self.camera.id, "online" if online else "offline")


class CameraPublisher(threading.Thread):
    """Samples one continuous camera at its ``fps`` until ``stop`` is set."""

    def __init__(
        self, output: CameraOutput, stop: threading.Event, base_dir: Path | None = None
    ) -> None:
        super().__init__(name=f"camera-{output.camera.id}", daemon=True)
        self.output = output
        self.camera = output.camera
        self.stop_event = stop
        self.base_dir = base_dir
        self.period = 1.0 / self.camera.sample_fps

    def run(self) -> None:
        kind = source_kind(self.camera.source)
        try:
            if kind == "file":
                self._run_file()
            elif kind == "stream":
                self._run_stream()
            elif kind == "http":
                self._run_http()
        except Exception:
            log.exception("camera %s: source thread failed", self.camera.id)
        finally:
            self.output.set_status(False)

    # -- files ----------------------------------------------------------------------------------

    def _run_file(self) -> None:
        path = resolve_path(self.camera.source, self.base_dir)
        # Monotonic: a step of the wall clock (an NTP correction) would stall or burst replay.
        start = time.monotonic()
        offset = 0.0  # file seconds played before the current pass (looping)
        next_sample = 0.0
        while not self.stop_event.is_set():
            played = self._play_file_once(path, start, offset, next_sample)
            if played is None:
                self._file_missing(path, "cannot open")
                continue
            offset, next_sample, frames = played
            if frames == 0 and not self.stop_event.is_set():
                # Opens but holds no frame (empty, audio only, an unknown codec): looping it
                # would spin without a pause.
                self._file_missing(path, "no video frame could be read from")
                continue
            if not self.camera.loop:
                log.info("camera %s: end of %s", self.camera.id, path.name)
                self.output.ended = True
                return

    def _file_missing(self, path: Path, what: str) -> None:
        if self.stop_event.is_set():
            return  # the open failed as ingest stops: no retry to announce
        self.output.stats.failures += 1
        self.output.set_status(False)
        log.error(
            "camera %s: %s %s%s; retrying in %g s",
            self.camera.id,
            what,
            path,
            self._lookup_hint(path),
            MAX_BACKOFF_S,
        )
        self.stop_event.wait(MAX_BACKOFF_S)

    def _lookup_hint(self, path: Path) -> str:
        # A relative source that works from one directory and not another is the usual cause.
        if path.exists() or _expanded(self.camera.source).is_absolute():
            return ""
        return (
            f": no such file; {self.camera.source!r} was looked up from the working directory"
            f" ({Path.cwd()}), then beside the site file"
        )

    def _play_file_once(
        self, path: Path, start: float, offset: float, next_sample: float
    ) -> tuple[float, float, int] | None:
        """Play one pass at real speed; returns (offset, next_sample) for the next pass and the
        number of frames the pass read, or None when the file cannot be opened."""
        import cv2

        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            return None
        position = 0.0
        frames = 0
        frame_step = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 25.0)
        try:
            while not self.stop_event.is_set() and cap.grab():
                frames += 1
                position = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                moment = offset + position
                if moment + 1e-6 < next_sample:
                    continue
                ok, image = cap.retrieve()
                if not ok:
                    continue
                # The file's own timing paces the replay, as a live camera would.
                due = start + moment
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    break
                jpeg, width, height = encode_image(image, self.camera)
                # Stamped as a live camera's: the wall clock's time when the frame was due.
                ts = time.time() - (time.monotonic() - due)
                self.output.publish(jpeg, width, height, datetime.fromtimestamp(ts, UTC))
                while next_sample <= moment + 1e-6:
                    next_sample += self.period
        finally:
            cap.release()
        return offset + position + frame_step, next_sample, frames

    # -- streams --------------------------------------------------------------------------------

    def _run_stream(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            cap = open_capture(self.camera.source, None)
            if not cap.isOpened():  # type: ignore[attr-defined]
                self._lost(backoff, "cannot open")
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            log.info("camera %s: connected to %s", self.camera.id, redact(self.camera.source))
            try:
                published = self._drain(cap)
            finally:
                cap.release()  # type: ignore[attr-defined]
            if self.stop_event.is_set():
                return
            # A source that accepts and drops at once, frameless, backs off as one that refuses:
            # only a frame shows it works again.
            if published:
                backoff = 1.0
            self._lost(backoff, "stream lost")
            if not published:
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _drain(self, cap: object) -> int:
        """Sample the stream until it ends; the number of frames published."""
        published = 0
        next_due = time.monotonic()
        while not self.stop_event.is_set():
            # grab() without decoding keeps up with the stream; only sampled frames decode.
            if not cap.grab():  # type: ignore[attr-defined]
                break
            now = time.monotonic()
            if now < next_due:
                continue
            ok, image = cap.retrieve()  # type: ignore[attr-defined]
            if ok:
                self.output.publish(*encode_image(image, self.camera))
                published += 1
            next_due = max(next_due + self.period, now)
        return published

    def _lost(self, backoff: float, why: str) -> None:
        if self.stop_event.is_set():
            return  # lost as ingest stops (the open may have waited long): no retry to announce
        self.output.stats.failures += 1
        self.output.set_status(False)
        log.warning(
            "camera %s: %s %s; retrying in %g s",
            self.camera.id,
            why,
            redact(self.camera.source),
            backoff,
        )
        self.stop_event.wait(backoff)

    # -- HTTP snapshots -------------------------------------------------------------------------

    def _run_http(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.output.publish(*reencode_jpeg(http_get(self.camera.source), self.camera))
                backoff = 1.0
            except Exception as exc:
                self._lost(backoff, f"snapshot failed ({failure(exc, self.camera.source)})")
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self.stop_event.wait(max(0.0, self.period - (time.monotonic() - started)))
