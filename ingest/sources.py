"""Camera sources republished to MQTT: video files, RTSP streams and HTTP snapshot URLs.

Each continuously sampled camera runs one thread (:class:`CameraPublisher`) that reads its
source, samples it at the camera's ``fps``, resizes, encodes JPEG and publishes a frame
envelope. Streams are drained with ``grab()`` and only the sampled frame is decoded, so a slow
consumer never makes us fall behind the live picture. :func:`grab_frame` is the open-grab-close
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
# (mqtt.DEFAULT_MAX_PACKET_SIZE): a larger JPEG could not go out as it came. A connection set
# to a larger limit raises it (CameraOutput.http_max_bytes).
HTTP_DEADLINE_S = 10.0
# httpx's timeout for each read, connect and write of a snapshot; the deadline covers the whole.
HTTP_READ_TIMEOUT_S = 10.0
HTTP_MAX_BYTES = 16 * 2**20
# How long an RTSP camera gets to answer an OPTIONS request before each open (see rtsp_answers).
RTSP_PROBE_S = 2.0
# A camera whose frames are too large for the broker steps down (see FrameFit): its JPEG quality
# first, by QUALITY_STEP down to QUALITY_FLOOR, the picture's size kept (so the detector's pixel
# boxes and tracks are), and only then its size, aspect kept. A frame over its budget by more
# than QUALITY_REACH times goes to the floor at once: a quality step would not do.
QUALITY_STEP = 10
QUALITY_FLOOR = 60
QUALITY_REACH = 1.3
# At most this many steps down for one frame; a frame still too large after them is dropped.
FIT_STEPS = 6
# A step down is taken back only once this many frames in a row would have fit the step above
# within UP_MARGIN of the budget, by the ratio of a frame's sizes measured on the way down.
UP_AFTER = 100
UP_MARGIN = 0.85
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


def _pixels(data: bytes) -> np.ndarray:
    """A snapshot's pixels; ValueError when it cannot be decoded."""
    image = _decoded(data)
    if image is None:
        raise ValueError("the snapshot URL did not return a decodable image")
    return image


def passes_through(data: bytes, camera: Camera) -> bool:
    """Whether a snapshot goes on as it came: a JPEG, of a camera without ``resize``."""
    return camera.resize is None and data.startswith(b"\xff\xd8")


def reencode_jpeg(data: bytes, camera: Camera) -> tuple[bytes, int, int]:
    """A JPEG from an HTTP camera: passed through unless it must be resized."""
    if passes_through(data, camera):
        width, height = jpeg_size(data)
        return data, width, height
    return encode_image(_pixels(data), camera)


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
    of the credentials too) within ``timeout`` s, the connection included. The request names
    the server alone (``rtsp://host:port/``): not the URL's user and password, nor its path or
    query, where cameras take credentials too (``?user=…&password=…``) and which would go out
    in clear on every probe. A URL whose host or port cannot be read is left to FFmpeg (True)."""
    split = proxies.user_info(source)
    bare = split[0] + split[2] if split is not None else source
    try:
        parts = urlsplit(bare)
        address = (parts.hostname, parts.port or 554)
    except ValueError:
        return True
    if not address[0]:
        return True
    target = f"{parts.scheme}://{parts.netloc}/"
    request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: gridpatrol\r\n\r\n"
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


def http_get(url: str, max_bytes: int = HTTP_MAX_BYTES) -> bytes:
    """The body at ``url``, read within ``HTTP_DEADLINE_S`` and at most ``max_bytes``.

    The deadline covers the whole response, headers and redirects included (see `_Cutoff`);
    it is also checked as each response's headers arrive and between chunks of the body.
    """
    import httpx

    deadline = time.monotonic() + HTTP_DEADLINE_S

    def check(response: httpx.Response) -> None:
        # Before any body is read, redirects' too.
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise SnapshotRefused(f"the response is {declared} bytes, over {_limit(max_bytes)}")
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
                body = _read_body(response, deadline, max_bytes)
        except httpx.TransportError:
            if cutoff.passed.is_set():
                raise SnapshotRefused(_too_slow()) from None
            raise
        if cutoff.passed.is_set():
            # A body without a declared length ends with its connection: the cut would pass
            # for its end, and half a picture for a frame.
            raise SnapshotRefused(_too_slow())
        return body


def _read_body(response: httpx.Response, deadline: float, max_bytes: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise SnapshotRefused(f"the response goes on past {_limit(max_bytes)}")
        if time.monotonic() > deadline:
            raise SnapshotRefused(_too_slow())
    return bytes(body)


def _too_slow() -> str:
    return f"no complete response within {HTTP_DEADLINE_S:g} s"


def _limit(max_bytes: int) -> str:
    return f"the {max_bytes / 2**20:g} MiB limit"


# What :func:`grab_frame` says of a source that cannot be opened or returned no frame.
NO_FRAME = "it cannot be opened or returned none"
# What is said of a folder named as a camera's source: no retry or visit will open it.
FOLDER = "a folder, not a video file (name one of its files)"


def grab_frame(
    camera: Camera, base_dir: Path | None, max_bytes: int = HTTP_MAX_BYTES
) -> tuple[bytes, int, int] | str:
    """One frame by open-grab-close (patrol visits, snapshots), or why there is none: the
    cause of the failure (redacted) or :data:`NO_FRAME`; its caller says it, once a failing
    streak. An HTTP snapshot may have ``max_bytes`` (:attr:`CameraOutput.http_max_bytes`).

    A file is read at the position the wall clock points to (modulo its length), so successive
    visits see the scene move on as a live camera's would.
    """
    import cv2

    kind = source_kind(camera.source)
    try:
        if kind == "http":
            return reencode_jpeg(http_get(camera.source, max_bytes), camera)
        cap = open_capture(camera.source, base_dir)
        try:
            if not cap.isOpened():  # type: ignore[attr-defined]
                # A folder of footage: told as the publisher tells it, not as a file missing.
                folder = kind == "file" and resolve_path(camera.source, base_dir).is_dir()
                return FOLDER if folder else NO_FRAME
            if kind == "file":
                count = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0  # type: ignore[attr-defined]
                rate = cap.get(cv2.CAP_PROP_FPS) or 25.0  # type: ignore[attr-defined]
                if count > 1:
                    position = int(time.time() * rate) % int(count)
                    cap.set(cv2.CAP_PROP_POS_FRAMES, position)  # type: ignore[attr-defined]
            ok, image = cap.read()  # type: ignore[attr-defined]
            return encode_image(image, camera) if ok else NO_FRAME
        finally:
            cap.release()  # type: ignore[attr-defined]
    except Exception as exc:
        return failure(exc, camera.source)


# ---------------------------------------------------------------------------------------------
# Publishing


@dataclass
class CameraStats:
    published: int = 0
    dropped: int = 0
    failures: int = 0
    late: int = 0  # a file's samples skipped as due more than a period ago


Fitted = tuple[bytes, int, int]  # a JPEG and its width and height


class FrameFit:
    """The JPEG quality and the size one camera's frames go out at so that they fit the
    broker's packet limit: a step down, once taken, holds for the camera's later frames.

    Decided frame by frame, the frames of a camera near the limit would change size from one
    to the next (one that fits as it is, the next a few KB larger scaled down): the detector's
    tracker, which follows pixel boxes, would lose its tracks (new ids, dwell timers started
    again, episodes twice). So a frame over the budget steps the camera down, its quality
    first (:data:`QUALITY_STEP`), which keeps the picture's size, then its size; every later
    frame is encoded once at that step, from its pixels when the source gives them (a JPEG is
    decoded once). A step is taken back only after :data:`UP_AFTER` frames in a row would have
    fit the step above within :data:`UP_MARGIN` of the budget. Thread-safe: a camera's
    snapshot grabs are fitted beside its stream.
    """

    def __init__(self, camera: Camera) -> None:
        self.camera = camera
        self.quality = camera.jpeg_quality
        self.scale = 1.0
        # Each step down taken, newest last: the quality and scale before it, and the ratio of
        # a frame's bytes there to its bytes after it (as measured on the frame that took it).
        self._steps: list[tuple[int, float, float]] = []
        self._roomy = 0  # frames in a row that would have fit the step above, with room
        self._said: set[str] = set()  # what was logged once: "fitted", "dropped"
        self._lock = threading.Lock()

    def jpeg(self, data: bytes, width: int, height: int, budget: int) -> Fitted | None:
        """A camera's JPEG (an HTTP snapshot as it came, a grab's frame): as it is while the
        camera took no step and it fits, else decoded and encoded at the camera's step (at
        its ``jpeg_quality`` first, for a JPEG of a higher one). None when it cannot fit."""
        with self._lock:
            if not self._steps and len(data) <= budget:
                return data, width, height
            image = _decoded(data)
            if image is None:
                self._dropped(len(data), width, height, budget, "cannot be decoded")
                return None
            return self._encoded(image, budget, len(data))

    def image(self, image: np.ndarray, budget: int) -> Fitted | None:
        """A frame's pixels, resized as configured and encoded at the camera's step: one
        encode while it fits there. None when it cannot fit."""
        with self._lock:
            return self._encoded(image, budget, None)

    def _encoded(self, image: np.ndarray, budget: int, came: int | None) -> Fitted | None:
        """``image`` encoded at the camera's step, stepping down while it does not fit;
        ``came``: the size of the JPEG it was decoded from, if any."""
        import cv2

        height, width = int(image.shape[0]), int(image.shape[1])
        resize = self.camera.resize
        base = (int(resize[0]), int(resize[1])) if resize is not None else (width, height)
        if budget <= 0:  # a limit below the envelope's header: no step can make room
            self._dropped(came or image.nbytes, *base, budget, "has no room for any frame")
            return None
        steps = len(self._steps)
        sizes: list[int] = []  # of this frame, at each step tried
        for attempt in range(FIT_STEPS + 1):
            size = self._size(base)
            sized = (
                image
                if size == (width, height)
                else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            )
            jpeg, w, h = _jpeg(sized, self.quality)
            if sizes:  # the step just taken: what it took off this frame
                quality, scale, _ = self._steps[-1]
                self._steps[-1] = (quality, scale, sizes[-1] / len(jpeg))
            sizes.append(len(jpeg))
            if len(jpeg) <= budget:
                # A step taken, or a camera's JPEG re-encoded at its quality (said once).
                if len(self._steps) != steps or (came is not None and "fitted" not in self._said):
                    self._fitted(came or sizes[0], base, budget, w, h)
                self._count_room(len(jpeg), budget, base)
                return jpeg, w, h
            if attempt < FIT_STEPS:
                self._down(len(jpeg), budget)
        self._dropped(came or sizes[0], *base, budget, "could not be made to fit")
        return None

    def _size(self, base: tuple[int, int]) -> tuple[int, int]:
        if self.scale == 1.0:
            return base
        return max(1, round(base[0] * self.scale)), max(1, round(base[1] * self.scale))

    def _down(self, size: int, budget: int) -> None:
        self._steps.append((self.quality, self.scale, 1.0))
        self._roomy = 0
        excess = size / budget
        if self.quality > QUALITY_FLOOR:
            lower = max(QUALITY_FLOOR, self.quality - QUALITY_STEP)
            self.quality = QUALITY_FLOOR if excess > QUALITY_REACH else lower
        else:
            # JPEG bytes shrink more slowly than the pixel count: about with the side's power
            # 1.4 for a street scene (detail gets denser), 2 for noise; 1.5 takes the first
            # close to the budget, the second a little under.
            self.scale *= min(0.9, 0.95 / excess ** (1 / 1.5))

    def _count_room(self, size: int, budget: int, base: tuple[int, int]) -> None:
        """Count a frame that fit toward taking the last step back; take it after UP_AFTER."""
        if not self._steps:
            return
        quality, scale, ratio = self._steps[-1]
        self._roomy = self._roomy + 1 if size * ratio <= UP_MARGIN * budget else 0
        if self._roomy < UP_AFTER:
            return
        self._steps.pop()
        self.quality, self.scale, self._roomy = quality, scale, 0
        log.info(
            "camera %s: frames go out at JPEG quality %d, %dx%d again: the last %d would have "
            "fit there with room to spare",
            self.camera.id,
            self.quality,
            *self._size(base),
            UP_AFTER,
        )

    def _fitted(self, first: int, base: tuple[int, int], budget: int, w: int, h: int) -> None:
        """Say where the camera's frames go now: a warning the first time, info later."""
        level = logging.INFO if "fitted" in self._said else logging.WARNING
        self._said.add("fitted")
        log.log(
            level,
            "camera %s: a frame of %d bytes (%dx%d) is over the %d bytes the broker's packet "
            "limit leaves it; frames go out at JPEG quality %d, %dx%d from now on (set the "
            "camera's resize or jpeg_quality to spare the work)",
            self.camera.id,
            first,
            *base,
            budget,
            self.quality,
            w,
            h,
        )

    def _dropped(self, size: int, width: int, height: int, budget: int, why: str) -> None:
        if "dropped" in self._said:
            return
        self._said.add("dropped")
        log.warning(
            "camera %s: a frame of %d bytes (%dx%d) over the %d bytes the broker's packet limit "
            "leaves it %s: dropped, as such frames will be (counted); not said again",
            self.camera.id,
            size,
            width,
            height,
            budget,
            why,
        )


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
        self.fit = FrameFit(camera)
        # Held while publishing, so that close() comes between two publications, never inside.
        self._lock = threading.Lock()

    @property
    def http_max_bytes(self) -> int:
        """The most an HTTP snapshot of the camera may have: :data:`HTTP_MAX_BYTES`, or the
        connection's configured packet limit when that is larger (such a JPEG, fitted to the
        broker's limit, was accepted before the limit was known)."""
        return max(HTTP_MAX_BYTES, self.conn.settings.max_packet_size)

    def publish(
        self, jpeg: bytes, width: int, height: int, ts: datetime | None = None
    ) -> Frame | None:
        """Publish a camera's JPEG as a frame (and ``online`` before it); once closed, nothing
        is published. None when it cannot be made to fit the broker's packet limit (see
        :class:`FrameFit`), counted as dropped."""
        return self._send(self.fit.jpeg(jpeg, width, height, self._budget()), ts)

    def publish_image(self, image: np.ndarray, ts: datetime | None = None) -> Frame | None:
        """Publish a frame's pixels, resized as configured and encoded once, at the camera's
        ``jpeg_quality`` or the step its frames fit the broker's packet limit at."""
        return self._send(self.fit.image(image, self._budget()), ts)

    def _send(self, fitted: Fitted | None, ts: datetime | None) -> Frame | None:
        if fitted is None:
            self.stats.dropped += 1
            return None
        with self._lock:
            frame = self._numbered(*fitted, ts)
            if self.closed:
                return frame
            self.latest = frame
            # Before the frame: a watcher never sees frames of an offline camera.
            self._set_status(True, force=False)
            # At most LATEST_UNWRITTEN frames of the camera wait for a broker that stopped
            # reading; a newer one is dropped while they do (see MqttConnection.publish).
            payload = encode_frame(frame.header, frame.image)
            sent = self.conn.publish(self.topic, payload, qos=0, latest=True)
        if sent:
            self.stats.published += 1
        else:
            self.stats.dropped += 1
        return frame

    def reply_frame(self, jpeg: bytes, width: int, height: int) -> Frame | None:
        """A frame for snapshot replies alone: numbered and fitted as a published one, but not
        published, not the newest and no change of status (a grab beside the camera's own
        source says nothing of how that one fares). None when it cannot be made to fit."""
        fitted = self.fit.jpeg(jpeg, width, height, self._budget())
        if fitted is None:
            self.stats.dropped += 1
            return None
        with self._lock:
            return self._numbered(*fitted, None)

    def _numbered(self, jpeg: bytes, width: int, height: int, ts: datetime | None) -> Frame:
        header = FrameHeader(ts or datetime.now(UTC), self._seq, self.camera.id, width, height)
        self._seq += 1
        return Frame(header, jpeg)

    def _budget(self) -> int:
        """The most a frame's JPEG may have: its envelope must fit the connection's packet
        limit as a snapshot reply (QoS 1 on the longer topic, with any header); a larger packet
        would make the broker drop the connection, and every camera of this process with it."""
        return self.conn.max_payload(self.reply_topic, qos=1) - ENVELOPE_OVERHEAD

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
        # A file's sample due longer ago than this is skipped (see _play_file_once).
        self.late_s = self.period
        # Whether the file's last sample was skipped as late (kept across passes: a pass may
        # hold a single sample).
        self._behind = False
        # Whether the file's last published sample had to wait for its due time (it was read
        # ahead of it). A late sample after one that did not wait was made late by the decoder,
        # not a stall: skipping it would not catch up, as grab() reads every frame it skips.
        self._waited = True

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
        # None: the replay's timing starts at the first sample read.
        start: float | None = None
        offset = 0.0  # file seconds played before the current pass (looping)
        next_sample = 0.0
        while not self.stop_event.is_set():
            played = self._play_file_once(path, start, offset, next_sample)
            if played is None:
                self._file_missing(path, "cannot open")
                # Played again from its beginning once back: the offline time is no part of it.
                start, offset, next_sample = None, 0.0, 0.0
                continue
            start, offset, next_sample, frames = played
            if frames == 0 and not self.stop_event.is_set():
                # Opens but holds no frame (empty, audio only, an unknown codec): looping it
                # would spin without a pause.
                self._file_missing(path, "no video frame could be read from")
                start, offset, next_sample = None, 0.0, 0.0
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
        if path.is_dir():  # a folder of footage: no retry will open it
            return f": {FOLDER}"
        # A relative source that works from one directory and not another is the usual cause.
        if path.exists() or _expanded(self.camera.source).is_absolute():
            return ""
        return (
            f": no such file; {self.camera.source!r} was looked up from the working directory"
            f" ({Path.cwd()}), then beside the site file"
        )

    def _play_file_once(
        self, path: Path, start: float | None, offset: float, next_sample: float
    ) -> tuple[float | None, float, float, int] | None:
        """Play one pass at real speed from ``start`` (monotonic; None: from its first sample);
        returns (start, offset, next_sample) for the next pass and the number of frames the
        pass read, or None when the file cannot be opened. A sample due more than a period ago
        (the process was starved, a publication or the reopen took long) is skipped and
        counted: played late, a burst of them would go out at once, stamped with times long
        gone, and the delay would grow with every slow frame. Only a stall is skipped so: a
        late sample after a published one that did not have to wait for its due time, or right
        after a skipped one, restarts the timing from now and is played. The file is then read
        slower than it plays (a decoder slower than real time): skipping would never catch up,
        as grab() still reads every frame of the skipped sample, and would lose every other
        sample for good; it plays slower than real time instead, stamped with current times."""
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
                if start is None:
                    start = time.monotonic() - moment
                # The file's own timing paces the replay, as a live camera would.
                due = start + moment
                if time.monotonic() - due > self.late_s:
                    if self._waited and not self._behind:  # a stall: skipped, caught up
                        self._behind = True
                        self.output.stats.late += 1
                        next_sample = self._sample_after(next_sample, moment)
                        continue
                    # The decoder is behind, or behind again after a skip: skipping would
                    # starve the camera for good.
                    start = time.monotonic() - moment
                    due = start + moment
                self._behind = False
                ok, image = cap.retrieve()
                if not ok:
                    continue
                self._waited = due > time.monotonic()
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    break
                # Stamped as a live camera's: the wall clock's time when the frame was due.
                ts = time.time() - (time.monotonic() - due)
                self.output.publish_image(image, datetime.fromtimestamp(ts, UTC))
                next_sample = self._sample_after(next_sample, moment)
        finally:
            cap.release()
        return start, offset + position + frame_step, next_sample, frames

    def _sample_after(self, next_sample: float, moment: float) -> float:
        """The file moment of the sample after the one at ``moment``."""
        while next_sample <= moment + 1e-6:
            next_sample += self.period
        return next_sample

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
                self.output.publish_image(image)
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
                self._publish_snapshot(http_get(self.camera.source, self.output.http_max_bytes))
                backoff = 1.0
            except Exception as exc:
                self._lost(backoff, f"snapshot failed ({failure(exc, self.camera.source)})")
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self.stop_event.wait(max(0.0, self.period - (time.monotonic() - started)))

    def _publish_snapshot(self, data: bytes) -> None:
        """A snapshot as it came when it passes through, else decoded once and encoded once."""
        if passes_through(data, self.camera):
            self.output.publish(data, *jpeg_size(data))
        else:
            self.output.publish_image(_pixels(data))
