"""``gridpatrol detect``: the detector worker.

Frames arrive on ``{prefix}/cameras/{id}/frame`` (QoS 0). Each camera has its own one-slot
subscription queue, so paho's network thread only replaces the pending frame (counted as a
drop) and never blocks. One processing thread takes the newest frame of each camera that
has none in flight, decodes it (at 1/2 or 1/4 scale when it is much larger than the model
input, keeping the original bytes as clean evidence) and runs the motion gate; moving frames
go into the backend's inference stream, which stays full across cameras and cycles, and each
frame's rules run as soon as its result is back while later frames are still being inferred.
Rule events become episode operations that go, with rendered evidence, into the outbox in one
SQLite transaction together with the episode book.

This module is imported when the CLI is built: OpenCV, OpenVINO and the rules are imported
inside the functions that need them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import importlib
import itertools
import logging
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gridpatrol.cli import stop_on_signals
from gridpatrol.detectors.episodes import CLOCK_RESET_S
from gridpatrol.ingest.cli import ID_HASH_CHARS, MAX_ID, positive_seconds

if TYPE_CHECKING:
    import sqlite3
    from zoneinfo import ZoneInfo

    import numpy as np
    from numpy.typing import NDArray

    from gridpatrol.api.client import Outbox
    from gridpatrol.detectors.episodes import Episode, Key, Op
    from gridpatrol.detectors.evidence import (
        EvidenceFile,
        FrameRing,
        SightingFrames,
        StoredFrame,
    )
    from gridpatrol.detectors.models import ModelSpec
    from gridpatrol.detectors.motion import MotionSettings, MotionState
    from gridpatrol.detectors.pipeline import CameraPipeline
    from gridpatrol.detectors.types import Backend, Detections, InferenceResult, ModelInfo
    from gridpatrol.ingest.messages import Frame
    from gridpatrol.ingest.mqtt import MqttConnection, Subscription
    from gridpatrol.site import Camera, RuleParams, Schedule, Site

    # A candidate operation's evidence files and JSON body, rendered before the transaction.
    Rendered = tuple[list[EvidenceFile], dict[str, Any]]

log = logging.getLogger(__name__)

SYSTEM = "gridpatrol-detect"
COMPONENT = "detect"
# Crowds and blocked roads are a public-order matter; the rest is street management.
SEVERITY: dict[str, str] = {"crowd_gathering": "MAJOR"}
DEFAULT_SEVERITY = "MINOR"
RING_FRAMES = 24  # clean frames kept per camera for first-seen evidence
# Operations of one episode kept for the next frame while the outbox file fails (see Unqueued):
# more than this (a failure outlasting several occupancies) and they are dropped, logged.
MAX_UNQUEUED_OPS = 24
UNQUEUED_LOG_S = 60.0  # an episode's kept operations failing again are logged this often
# SQLite result codes (their low byte) of a failure that may pass: busy, locked, I/O, full.
TRANSIENT_SQLITE = {5, 6, 10, 13}
# SQLite result codes (their low byte) of the outbox file failing to take a write, which no fix
# of the code mends: busy, locked, read-only, I/O error, corrupt, full, cannot open, lock
# protocol, not a database. Any other (no such table, a constraint, misuse) is a bug.
OUTBOX_SQLITE = frozenset(
    getattr(sqlite3, name, code)
    for name, code in (
        ("SQLITE_BUSY", 5),
        ("SQLITE_LOCKED", 6),
        ("SQLITE_READONLY", 8),
        ("SQLITE_IOERR", 10),
        ("SQLITE_CORRUPT", 11),
        ("SQLITE_FULL", 13),
        ("SQLITE_CANTOPEN", 14),
        ("SQLITE_PROTOCOL", 15),
        ("SQLITE_NOTADB", 26),
    )
)
# CLOCK_RESET_S: a frame more than this behind the camera's last one, or this far ahead of the
# camera's clock as its quickest deliveries lately show it (its reception less its time more
# than this below the least such offset: a frame delivered late, as in a burst after a stall, has
# a larger one, not a smaller), is a clock jump: taken only when the next frame follows it. The
# last frame's time outlives a restart (kept with the episode book).
# The least offset rises this many seconds per second of reception time, so that it follows a
# camera clock drifting behind the worker's: a forward step still shows as one.
OFFSET_RISE = 1e-3
# How far a camera's step may outrun the room its frames leave (jitter of the receptions): less
# than CLOCK_RESET_S, so that the worker's own clock stepped back far enough to make a jump is
# always cut, whatever the camera's frame rate.
JUMP_JITTER_S = 1.0
MAX_AHEAD_S = 300.0  # a frame timed further after its reception is refused (a wrong clock)
BACKGROUND_SAVE_S = 60.0  # a crash loses at most this much of the background models' learning
WAKE_TIMEOUT_S = 0.05  # the idle loop's longest sleep (it also wakes on frames and results)
# Preparing the model for a frame's input shape longer than this is logged: a compile for a new
# shape (about 0.7 s); a shape already compiled is a dictionary lookup.
PREPARE_LOG_S = 0.1
# How long a frame in inference keeps its camera from being silent: a compile on a loaded host
# takes seconds, a host far behind as many inference times as it has requests; a result still
# not there after this is an inference stuck (a device hung), which would keep the camera's
# episodes open for ever.
IN_FLIGHT_MAX_S = 60.0
SILENCE_CHECK_S = 1.0  # how often the worker looks for cameras that stopped sending frames
# A waiting episode's moving last sighting is written at most this often, also for a rule whose
# update_s is shorter (0: a patch with every event), which would write with every frame.
SIGHTING_SAVE_MIN_S = 1.0
# A rule's times are float seconds: its last sighting (first_seen + dwell_s) may miss the frame
# time it was taken from by a microsecond or so.
SIGHTING_ROUNDING = timedelta(milliseconds=1)
EARLIEST, LATEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("GRIDPATROL_CONFIG"),
        help="site file (default $GRIDPATROL_CONFIG)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cameras", help="comma-separated camera ids served by this worker")
    which.add_argument(
        "--shard", help="k/n: serve the cameras whose stable id hash mod n is k (0-based)"
    )
    parser.add_argument(
        "--model", help="OpenVINO IR folder, .xml, .onnx, .pt or manifest name (GRIDPATROL_MODEL)"
    )
    parser.add_argument(
        "--keyframe-s",
        type=positive_seconds,
        default=10.0,
        help="infer at least every this many seconds on a static scene (default 10)",
    )
    parser.add_argument(
        "--no-motion-gate", action="store_true", help="infer every frame (no motion gate)"
    )
    parser.add_argument(
        "--square-input",
        action="store_true",
        help="letterbox every frame into the square model input (default: the smallest "
        "multiple of 32 that holds the frame, e.g. 640x384 for 16:9, which is faster)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        # Not read from the environment here: every gridpatrol command builds this parser, and
        # a malformed variable is detect's setup error alone (resolve_metrics_port).
        help="serve Prometheus metrics on this port (0 = off; $GRIDPATROL_METRICS_PORT)",
    )
    parser.add_argument(
        "--heads", help="folder of scene-head files (default: the heads shipped with gridpatrol)"
    )
    parser.add_argument(
        "--component-id",
        help="MQTT component id (default detect, detect-k-of-n or detect-<camera>-...)",
    )
    parser.add_argument(
        "--progress-s",
        type=positive_seconds,
        default=30.0,
        help="seconds between progress log lines",
    )


def shard_of(camera_id: str, n: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    return zlib.crc32(camera_id.encode("utf-8")) % n


def parse_shard(value: str) -> tuple[int, int]:
    try:
        k_text, n_text = value.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError as exc:
        raise ValueError(f"--shard must be k/n, got {value!r}") from exc
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard {value}: need 0 <= k < n")
    return k, n


def check_selection(cameras: str | None, shard: str | None) -> None:
    """ValueError when ``--cameras`` or ``--shard`` was given empty (as an unset variable in a
    unit file gives it): read as no selection, every worker would serve every camera."""
    for flag, value in (("--cameras", cameras), ("--shard", shard)):
        if value is not None and not value.strip():
            raise ValueError(
                f"{flag} is empty: name the cameras (a,b) or the shard (k/n), or leave the "
                "flag out to serve every camera"
            )


def select_cameras(site: Site, cameras: str | None, shard: str | None) -> list[Camera]:
    """The site's cameras this worker serves; unknown ids and an empty ``cameras`` or
    ``shard`` are an error."""
    check_selection(cameras, shard)
    if cameras is not None:
        wanted = [c.strip() for c in cameras.split(",") if c.strip()]
        known = {c.id for c in site.cameras}
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise ValueError(f"unknown camera id(s) {unknown}; the site has {sorted(known)}")
        return [c for c in site.cameras if c.id in wanted]
    if shard is not None:
        k, n = parse_shard(shard)
        return [c for c in site.cameras if shard_of(c.id, n) == k]
    return list(site.cameras)


def _component_id(args: argparse.Namespace) -> str:
    """``--component-id``, else ``detect-k-of-n`` for a shard, ``detect-<a>-<b>`` for
    ``--cameras`` (sorted, as ingest names its own: the same id for the same cameras in any
    order, and on the status and dead-letter topics the cameras a worker serves), else
    ``detect``. An id longer than a topic level allows keeps a readable head and a hash of the
    whole, so two workers whose lists differ only late do not share it."""
    if args.component_id:
        return str(args.component_id)
    if args.shard is not None:
        k, n = parse_shard(args.shard)
        return f"{COMPONENT}-{k}-of-{n}"
    cameras = _camera_ids(args.cameras)
    if not cameras:
        return COMPONENT
    full = "-".join([COMPONENT, *cameras])
    if len(full) <= MAX_ID:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:ID_HASH_CHARS]
    return f"{full[: MAX_ID - ID_HASH_CHARS - 1].rstrip('-_.')}-{digest}"


def _camera_ids(cameras: str | None) -> list[str]:
    """The ids ``--cameras`` names, sorted, each once."""
    return sorted({c.strip() for c in (cameras or "").split(",") if c.strip()})


# ---------------------------------------------------------------------------------------------
# Per-camera state


@dataclass(frozen=True)
class EpisodeEvent:
    """A rule event normalised for :mod:`episodes` (aware datetimes, plain boxes)."""

    kind: str
    rule: str
    zone_id: str
    t: datetime
    confidence: float
    dwell_s: float
    first_seen: datetime
    boxes: tuple[tuple[float, float, float, float], ...]
    track_ids: tuple[int, ...]
    labels: tuple[str, ...]


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)


def normalise_event(ev: Any) -> EpisodeEvent:
    boxes = tuple(
        (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        for b in (getattr(ev, "boxes", ()) or ())
    )
    return EpisodeEvent(
        kind=str(ev.kind),
        rule=str(ev.rule),
        zone_id=str(ev.zone_id),
        t=_when(ev.t),
        confidence=float(ev.confidence),
        dwell_s=float(ev.dwell_s),
        first_seen=_when(getattr(ev, "first_seen", ev.t)),
        boxes=boxes,
        track_ids=tuple(int(i) for i in (getattr(ev, "track_ids", ()) or ())),
        labels=tuple(str(x) for x in (getattr(ev, "labels", ()) or ())),
    )


def _offset(ts: datetime, received_at: datetime) -> float:
    """A frame's reception less its time, in seconds: its delivery's delay plus how far the
    camera's clock is behind the worker's."""
    return (received_at - ts).total_seconds()


@dataclass(frozen=True)
class ClockJump:
    """A frame whose time jumped away from its camera's clock, held until the next frame
    says whether the clock really moved there (and kept for the dead-letter topic)."""

    ts: datetime
    received_at: datetime
    topic: str
    payload: bytes

    def followed_by(self, ts: datetime, received_at: datetime) -> bool:
        """Whether a frame at ``ts`` continues this frame's clock: not before it, and not
        further ahead of it than the time passed between their receptions allows."""
        ahead = (ts - self.ts).total_seconds() - (received_at - self.received_at).total_seconds()
        return ts >= self.ts and ahead <= CLOCK_RESET_S


@dataclass(frozen=True)
class Unqueued:
    """Operations of one episode, rendered, that the outbox did not take: ``episode`` is where
    they leave it, ``kinds`` the rule events they came from."""

    episode: Episode
    rendered: list[tuple[Op, Rendered, EpisodeEvent]]
    kinds: tuple[str, ...]
    t: datetime
    logged: float = float("-inf")  # the worker's clock when their failure was last logged


@dataclass
class CameraRuntime:
    camera: Camera
    sub: Subscription
    pipeline: Any
    ring: FrameRing
    # The frames of each background rule occupancy's first and last sightings, while a raise may
    # still come after it (_keep_sightings): the ring may have thinned them out by then.
    sightings: SightingFrames
    motion: MotionState
    last: InferenceResult | None = None
    last_size: tuple[int, int] | None = None  # (width, height) of the frame ``last`` is of
    last_ts: datetime | None = None
    last_received_at: datetime | None = None  # the reception of the frame at last_ts
    # The least of the judged frames' reception less frame time (seconds) lately, risen by
    # OFFSET_RISE since the frame at last_ts: the camera's clock as its quickest deliveries see it.
    least_offset: float | None = None
    # Seconds between the camera's last two frames taken in order (None before two): how far
    # apart its frames come, to bound the step of a clock jump by.
    interval_s: float | None = None
    jump: ClockJump | None = None  # a frame off the camera's clock, waiting for the next one
    out_of_order: int = 0  # frames taken but dropped: late ones, those lost to a clock jump
    frames_in: int = 0
    inferred: int = 0
    skipped: int = 0
    bad: int = 0
    dropped_seen: int = 0
    latency_s: float = 0.0
    candidates: int = 0
    # Open episodes no rule follows yet (reloaded at start): ended unless they come back.
    waiting: set[Key] = field(default_factory=set)
    # Waiting episodes their rule cleared but whose ending the outbox did not take, with their
    # last sighting: no event of the rule will end them, the camera's next frame does.
    ending: dict[Key, datetime] = field(default_factory=dict)
    # A frame's operations of one episode the outbox did not take that no later event would
    # redo (a raise cleared on the same frame: its rule is idle): tried again with each frame.
    unqueued: dict[Key, Unqueued] = field(default_factory=dict)
    judged_at: float = 0.0  # the worker's clock when a frame of the camera was last judged
    # The worker's clock when the processing thread last looked at the camera's slot: a frame
    # waiting there came after it, and only the time up to it counts as the camera's silence.
    visited_at: float = 0.0
    in_flight_at: float = 0.0  # the worker's clock when its frame in inference was submitted
    stuck_said: bool = False  # whether that frame's wait beyond IN_FLIGHT_MAX_S was logged


@dataclass
class Ready:
    """A decoded frame on its way through one processing cycle."""

    rt: CameraRuntime
    frame: Frame
    image: NDArray[np.uint8]
    # Original pixels per decoded pixel, (x, y): a reduced decode rounds each side up, so an
    # odd side shrinks by a little less than the factor and the two axes differ.
    scale: tuple[float, float]
    gray: NDArray[np.uint8] | None  # None when neither the gate nor a background model needs it
    infer: bool
    result: InferenceResult | None = None
    submitted: float = 0.0  # perf_counter when handed to the backend


# ---------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """Prometheus metrics per camera, in a registry of the worker's own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["camera"]
        self.frames = Counter(
            "gridpatrol_detect_frames",
            "Frames taken from the camera's slot to process (those replaced in it are dropped)",
            labels,
            registry=self.registry,
        )
        self.inferred = Counter(
            "gridpatrol_detect_inferred_frames", "Frames inferred", labels, registry=self.registry
        )
        self.skipped = Counter(
            "gridpatrol_detect_skipped_frames",
            "Frames skipped by the motion gate",
            labels,
            registry=self.registry,
        )
        self.dropped = Counter(
            "gridpatrol_detect_dropped_frames",
            "Frames replaced by a newer one before processing, older than the last one, or held "
            "back by a clock jump that was taken",
            labels,
            registry=self.registry,
        )
        # Not only undecodable ones: a camera whose clock runs ahead sends sound JPEGs.
        self.bad = Counter(
            "gridpatrol_detect_bad_frames",
            "Frames refused (malformed, undecodable, another size than their header says, timed "
            "ahead of their reception or off the camera's clock), dead-lettered or not",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "gridpatrol_detect_inference_seconds",
            "Time from handing a frame to the model runtime to its result",
            labels,
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.candidates = Counter(
            "gridpatrol_detect_candidate_ops",
            "Candidate operations queued",
            [*labels, "op"],
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "gridpatrol_detect_outbox_depth", "Operations waiting", registry=self.registry
        )
        self.outbox_bytes = Gauge(
            "gridpatrol_detect_outbox_bytes",
            "Size of the outbox file on disk, with its write-ahead log",
            registry=self.registry,
        )

    def register(self, camera_id: str) -> None:
        """Export the camera's series at 0 from the start, so that an alert on a camera whose
        frame rate is 0 also fires for one that never sent a frame."""
        for counter in (self.frames, self.inferred, self.skipped, self.dropped, self.bad):
            counter.labels(camera_id)

    def serve(self, port: int, setting: str) -> None:
        """Serve the metrics on ``port``, chosen by ``setting`` (the flag or the variable);
        :class:`MetricsPortError` when it cannot be bound (in use, or a privileged port)."""
        from prometheus_client import start_http_server

        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(
                f"the metrics port {port} ({setting}): {exc.strerror or exc}"
            ) from exc
        log.info("metrics on :%d/metrics", port)


class MetricsPortError(RuntimeError):
    """The metrics port cannot be served: mend the setting that chose it (status 2)."""


# ---------------------------------------------------------------------------------------------
# The worker


class DetectorWorker:
    """The processing side of ``gridpatrol detect`` for a set of cameras (one thread)."""

    def __init__(
        self,
        site: Site,
        cameras: Sequence[Camera],
        backend: Backend,
        heads: dict[str, Any],
        outbox: Outbox,
        conn: MqttConnection,
        *,
        motion: MotionSettings,
        component_id: str,
        progress_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        evidence_max_bytes: int | None = None,
    ) -> None:
        from gridpatrol.detectors import episodes
        from gridpatrol.ingest.receiver import LetterLimit
        from gridpatrol.ingest.topics import frame_topic

        self.site = site
        self.backend = backend
        self.heads = heads
        self.outbox = outbox
        self.conn = conn
        self.motion_settings = motion
        self.component_id = component_id
        self.progress_s = progress_s
        self.metrics = metrics or Metrics()
        # Seconds on a clock that never steps (not the cameras' clocks): how long a camera
        # has been silent.
        self.clock = clock
        self.evidence_max_bytes = evidence_max_bytes or evidence_max_bytes_from_env()
        self.stop_event = threading.Event()
        # Set when a frame arrives or an inference finishes: the loop's only reasons to go on.
        self._wake = threading.Event()
        self.names = tuple(backend.info.names)
        self.imgsz = backend.info.imgsz
        self.cams: dict[str, CameraRuntime] = {}
        for cam in cameras:
            sub = conn.subscribe(
                frame_topic(site.mqtt.prefix, cam.id), qos=0, maxsize=1, wake=self._wake
            )
            self.cams[cam.id] = self._runtime(cam, sub)
            self.metrics.register(cam.id)
        unserved = end_unserved_episodes(outbox, set(self.cams), datetime.now(UTC), backend.info)
        for ep, queued in unserved:
            log.warning(
                "camera %s is not served by this worker any more: its candidate %s (%s in "
                "zone %s) ended at its last sighting %s%s",
                ep.camera_id,
                ep.candidate_id,
                ep.type,
                ep.zone_id,
                ep.last_event_at.isoformat(),
                "" if queued else " in the book only (the API refused it for good: no end is sent)",
            )
        with outbox.transaction() as txn:
            self.book: dict[Key, Episode] = episodes.load_book(txn.conn, set(self.cams))
            self._restore_clocks(txn.conn)
            self._restore_backgrounds(txn.conn)
        open_eps = [ep for ep in self.book.values() if ep.open]
        for ep in open_eps:
            self.cams[ep.camera_id].waiting.add(ep.key)
        # The last sighting of each reloaded episode as the outbox file holds it: moved on while
        # the episode waits for its rule (_sightings_to_keep). Only episodes open at start wait.
        self._written: dict[Key, datetime] = {ep.key: ep.last_event_at for ep in open_eps}
        log.info(
            "%s: serving %d camera(s) %s; %d open episode(s) reloaded",
            component_id,
            len(self.cams),
            ",".join(self.cams),
            len(open_eps),
        )
        self._last_detection: dict[str, dict[str, Any]] = {}
        self._closed: set[str] = set()  # candidates the API takes no more updates of
        self._in_flight: set[str] = set()  # cameras with a frame in the inference queue
        self._last_progress = self._last_save = time.monotonic()
        self._silence_checked = self.clock()
        # The connection's connect count when silence was last checked: a (re)connect since
        # means frames were lost while it was down, so silence is counted afresh (_end_silent).
        self._connects_seen = conn.connects
        # When each failure of the outbox file (_failed) was last logged, and how many of the
        # same failure were not logged since. An episode's entry goes when it ends (_commit).
        self._failures: dict[tuple[str, ...], tuple[float, int]] = {}
        # The operations of _episode_events' last transaction, which _not_queued looks at when
        # it failed: a failed open is a lost alarm, never kept quiet.
        self._tried: Sequence[Op] = ()
        # A camera publishing garbage got a dead letter and a warning line per frame (about a
        # thousand a second on a flood): as watch-frames, a few per camera and window, the
        # others counted. Bad frames by reason, with a letter or not.
        # Its windows follow self.clock even when it is replaced after construction (tests do).
        self.letters = LetterLimit(clock=lambda: self.clock(), what="bad frames", logger=log)
        self.rejected: collections.Counter[str] = collections.Counter()

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Stream frames through the backend until stopped.

        One long-lived stream keeps the backend's inference queue full: a camera's next frame
        is decoded and letterboxed, and finished frames are tracked and judged, while earlier
        frames are still being inferred. A camera has at most one frame in flight, so its frames
        are judged in order and the newest one waits in its one-slot queue meanwhile.
        """
        while not self.stop_event.is_set():
            self._in_flight.clear()
            try:
                for item, result in self._stream(self._source()):
                    self._done(item, result)
            except Exception:
                log.exception("%s: inference stream failed; restarting it", self.component_id)
                self.stop_event.wait(0.5)

    def _stream(
        self, source: Iterator[tuple[Ready, NDArray[np.uint8]] | None]
    ) -> Iterator[tuple[Ready, InferenceResult]]:
        stream = getattr(self.backend, "stream", None)
        if callable(stream):
            return cast("Iterator[tuple[Ready, InferenceResult]]", stream(source, self._wake))
        return _serial_stream(self.backend, source)

    def _source(self) -> Iterator[tuple[Ready, NDArray[np.uint8]] | None]:
        """The frames to infer, as they become ready; None hands finished results back."""
        while not self.stop_event.is_set():
            took = False
            for rt in self.cams.values():
                if rt.camera.id in self._in_flight:
                    continue
                item = self._take(rt)
                if item is None:
                    continue
                took = True
                if item.infer:
                    self._in_flight.add(rt.camera.id)
                    rt.in_flight_at, rt.stuck_said = self.clock(), False
                    # The first frame of a size compiles the model for its input shape (about
                    # 0.7 s, seconds on a loaded host): done before the clock starts, it is no
                    # part of that frame's inference latency (the histogram, the progress line).
                    input_shape = getattr(self.backend, "input_shape", None)
                    if callable(input_shape):
                        self._prepare_shape(rt, input_shape, item.image.shape[:2])
                    item.submitted = time.perf_counter()
                    yield item, item.image
                else:
                    self._judge_safely(item)
            self._progress()
            self._end_silent()
            self.letters.tick()
            if not took:
                yield None
                # Nothing new: sleep until a frame or a result comes. A fixed short sleep
                # left the inference queue empty for up to its length, and cost wake-ups.
                self._wake.wait(WAKE_TIMEOUT_S)
                self._wake.clear()

    def _prepare_shape(
        self,
        rt: CameraRuntime,
        input_shape: Callable[[tuple[int, int]], object],
        shape: tuple[int, int],
    ) -> None:
        """Have the backend prepare the model for images of ``shape`` (h, w). A compile it
        takes is no part of the latency metrics: its time is logged instead, so an operator can
        still tell what held the worker's frames up (a compile for every new size of a camera
        sending ever new sizes, seconds each on a loaded host)."""
        started = time.perf_counter()
        input_shape(shape)
        spent = time.perf_counter() - started
        if spent >= PREPARE_LOG_S:
            log.info(
                "camera %s: preparing the model for a %d×%d image took %.1f s (a new input "
                "shape compiled; not counted as inference latency)",
                rt.camera.id,
                shape[1],
                shape[0],
                spent,
            )

    def _take(self, rt: CameraRuntime) -> Ready | None:
        """The camera's newest pending frame, decoded and gated; None when there is none."""
        self._count_drops(rt)
        rt.visited_at = self.clock()
        message = rt.sub.get(0)
        if message is None:
            return None
        try:
            return self._decode(rt, message.topic, message.payload, message.received_at)
        except Exception as exc:
            if _outbox_refusal(exc):
                # The frame is sound: the outbox file refused what it set off (a clock step's
                # endings).
                cam = rt.camera.id
                self._failed(("frame", cam), exc, "camera %s: taking a frame failed: %s", cam, exc)
                return None
            # A frame the checks let through but that trips a bug is dead-lettered with its
            # traceback, under the letters' limit: a camera whose every frame tripped it wrote
            # a traceback per frame, and the frames went nowhere.
            from gridpatrol.ingest.reliable import error_text

            reason, error = "internal_error", error_text(exc)
            self._bad(rt, message.topic, message.payload, message.received_at, reason, error, exc)
            return None

    def _done(self, item: Ready, result: InferenceResult) -> None:
        rt = item.rt
        self._in_flight.discard(rt.camera.id)
        self._wake.set()  # the camera's next frame, if one came meanwhile, may go now
        elapsed = time.perf_counter() - item.submitted
        h = item.frame.header
        rt.last_size = (h.width, h.height)
        item.result = _to_original(result, item.scale, rt.last_size)
        rt.last = item.result
        rt.inferred += 1
        rt.latency_s += elapsed
        self.metrics.inferred.labels(rt.camera.id).inc()
        self.metrics.latency.labels(rt.camera.id).observe(elapsed)
        self._judge_safely(item)

    def _judge_safely(self, item: Ready) -> None:
        try:
            self._judge(item)
        except Exception as exc:
            # One camera's bad frame or rule state must not stop the others.
            cam = item.rt.camera.id
            self._failed(
                ("judge", cam),
                exc,
                "camera %s: judging frame %d failed: %s",
                cam,
                item.frame.header.seq,
                exc,
            )

    def _failed(
        self, what: tuple[str, ...] | None, exc: BaseException, msg: str, *args: object
    ) -> None:
        """Log ``msg % args``, which says the failure ``exc``: one of the outbox file (locked,
        full, an I/O error: no bug) as one line, any other (a bug) with its traceback; at most
        once a minute (UNQUEUED_LOG_S) for each ``what`` (None: each time), saying how many
        were not logged since. A full disk, or a rule's bug, fails every frame: a line or a
        traceback each (hundreds a minute) would bury the log, and fill the disk it is on."""
        bug = None if _outbox_refusal(exc) else exc
        if what is None:
            log.error(msg, *args, exc_info=bug)
            return
        # A bug and a refusal of the file each have their minute: a full disk's lines must not
        # keep a bug's traceback from ever being said, nor count it among theirs.
        key = (*what, "refusal" if bug is None else "bug")
        now = self.clock()
        logged, missed = self._failures.get(key, (float("-inf"), 0))
        if now - logged < UNQUEUED_LOG_S:
            self._failures[key] = (logged, missed + 1)
            return
        self._failures[key] = (now, 0)
        more = f" ({missed} more such failure(s) since the last line)" if missed else ""
        log.error(msg + "%s", *args, more, exc_info=bug)

    def _count_drops(self, rt: CameraRuntime) -> None:
        dropped = rt.sub.dropped
        if dropped > rt.dropped_seen:
            self.metrics.dropped.labels(rt.camera.id).inc(dropped - rt.dropped_seen)
            rt.dropped_seen = dropped

    def _decode(
        self, rt: CameraRuntime, topic: str, payload: bytes, received_at: datetime
    ) -> Ready | None:
        from gridpatrol.detectors.evidence import decode_jpeg, reduction_for
        from gridpatrol.detectors.motion import gate, small_gray
        from gridpatrol.ingest.messages import MessageError, decode_frame, jpeg_size

        cam = rt.camera.id
        rt.frames_in += 1
        self.metrics.frames.labels(cam).inc()
        try:
            frame = decode_frame(payload, topic_camera_id=cam, received_at=received_at)
        except MessageError as exc:
            self._bad(rt, topic, payload, received_at, exc.reason, exc.detail)
            return None
        h = frame.header
        ahead = (h.ts - received_at).total_seconds()
        if ahead > MAX_AHEAD_S:
            # One frame from a clock far ahead would end every episode of the camera and
            # make the frames after it look like a clock reset.
            why = f"frame time {h.ts.isoformat()} is {ahead:.0f} s after its reception"
            self._bad(rt, topic, payload, received_at, "future_ts", why)
            return None
        try:
            size = jpeg_size(frame.image)
        except MessageError as exc:
            self._bad(rt, topic, payload, received_at, exc.reason, exc.detail)
            return None
        if size != (h.width, h.height):
            # Boxes, evidence sizes and the zones' cached masks all go by the header.
            why = f"the header says {h.width}x{h.height}, the JPEG is {size[0]}x{size[1]}"
            self._bad(rt, topic, payload, received_at, "size_mismatch", why)
            return None
        if not self._in_order(rt, h.ts, received_at, topic, payload):
            return None
        reduce = reduction_for(h.width, h.height, self.imgsz)
        image = decode_jpeg(frame.image, reduce)
        if image is None:
            self._bad(rt, topic, payload, received_at, "undecodable_image", "")
            return None
        scale = (h.width / image.shape[1], h.height / image.shape[0])
        if not (self.motion_settings.enabled or rt.pipeline.needs_gray):
            # The small copy costs about a tenth of the worker's CPU; nothing would read it.
            return Ready(rt, frame, image, scale, None, True)
        gray = small_gray(image)
        size = (h.width, h.height)
        rt.motion, decision = gate(
            rt.motion, gray, h.ts.timestamp(), self.motion_settings, frame_size=size
        )
        # A skipped frame is judged with the last result's boxes, in pixels of its frame: none
        # fits when that inference was lost (a failed stream) or was of another size.
        infer = decision.infer or rt.last is None or rt.last_size != size
        return Ready(rt, frame, image, scale, gray, infer)

    def _in_order(
        self, rt: CameraRuntime, ts: datetime, received_at: datetime, topic: str, payload: bytes
    ) -> bool:
        """Whether to judge a frame at ``ts``: a frame older than the last one is dropped, and a
        clock jump (CLOCK_RESET_S) counts only when the camera's clock stays there.

        A jump back is a camera resynchronised to NTP: its rules start over. A jump ahead
        that the time between receptions does not explain (an outage does) is a clock stepped
        forward. Either way one frame is not enough: a lone frame off the clock, followed by
        frames on the old one, would end every episode of the camera. The jumping frame is
        held back; when the next frame continues its clock the jump is taken and the held frame
        is lost (counted as dropped), otherwise the frame was an outlier (one ahead goes to the
        dead-letter topic, one behind counts as a late frame) and the next frame is judged on
        the old clock.
        """
        offset = _offset(ts, received_at)
        jump, rt.jump = rt.jump, None
        if jump is not None:
            if jump.followed_by(ts, received_at):
                self._drop(rt)  # the held frame: taken from the slot, never judged
                ahead = self._take_jump(rt, ts, received_at, jump.ts)
                # The new clock as the quicker of its two frames' deliveries shows it.
                least = min(offset, _offset(jump.ts, jump.received_at))
                rt.last_ts, rt.last_received_at, rt.least_offset = ts, received_at, least
                rt.interval_s = (ts - jump.ts).total_seconds() or rt.interval_s
                if ahead > 0:
                    self._shift(rt, ahead)
                return True
            self._outlier(rt, jump)
        last, last_received = rt.last_ts, rt.last_received_at
        if last is None or last_received is None:
            rt.last_ts, rt.last_received_at, rt.least_offset = ts, received_at, offset
            return True
        behind = (last - ts).total_seconds()
        least = self._least_offset(rt, received_at)
        if behind > CLOCK_RESET_S or least - offset > CLOCK_RESET_S:
            rt.jump = ClockJump(ts, received_at, topic, payload)
            return False
        if ts < last:
            self._drop(rt)  # a late frame
            return False
        rt.interval_s = (ts - last).total_seconds() or rt.interval_s
        rt.last_ts, rt.last_received_at, rt.least_offset = ts, received_at, min(least, offset)
        return True

    @staticmethod
    def _least_offset(rt: CameraRuntime, received_at: datetime) -> float:
        """The camera's least offset (CameraRuntime.least_offset) at ``received_at``."""
        assert rt.last_ts is not None and rt.last_received_at is not None
        least = rt.least_offset
        if least is None:  # restored from the book: its last frame's
            least = _offset(rt.last_ts, rt.last_received_at)
        passed = (received_at - rt.last_received_at).total_seconds()
        return least + OFFSET_RISE * max(0.0, passed)

    def _take_jump(
        self, rt: CameraRuntime, ts: datetime, received_at: datetime, held: datetime
    ) -> float:
        """The camera's clock moved to ``ts`` (received at ``received_at``) for good: two frames
        in a row say so (the held one at ``held``, then this one). Of a jump ahead, how far its
        clock went beyond the time passed between the receptions of the camera's last frame and
        this one (0 for a jump back). A worker's own clock stepped back shortens the time
        between receptions, not the frames' times: a step that would bring the last frame more
        than JUMP_JITTER_S nearer this one than two frame intervals is cut to that. The interval
        is the lesser of the camera's last one before the jump and ``ts`` less ``held``, so
        frames lost after the held one leave more room, never less."""
        last, last_received = rt.last_ts, rt.last_received_at
        assert last is not None
        if ts >= last:
            if last_received is None:  # no reception kept: nothing to measure the step by
                return 0.0
            step = _offset(last, last_received) - _offset(ts, received_at)
            # The frames' interval: the lesser of the camera's before the jump and the new
            # clock's two frames' (frames lost before the jump or after the held one widen one).
            seen = (rt.interval_s, (ts - held).total_seconds())
            interval = min((s for s in seen if s is not None and s > 0), default=0.0)
            room = (ts - last).total_seconds() - 2 * interval
            log.warning(
                "camera %s: clock went ahead %.0f s more than the time between frames",
                rt.camera.id,
                self._least_offset(rt, received_at) - _offset(ts, received_at),
            )
            if step <= room + JUMP_JITTER_S:
                return step
            log.warning(
                "camera %s: its stored times move only %.0f s, as far as its frames went"
                " (%.0f s ahead)",
                rt.camera.id,
                max(0.0, room),
                (ts - last).total_seconds(),
            )
            return room
        log.warning(
            "camera %s: clock went back %.0f s; its rules start over",
            rt.camera.id,
            (last - ts).total_seconds(),
        )
        self._reset(rt, ts)
        return 0.0

    def _shift(self, rt: CameraRuntime, ahead_s: float) -> None:
        """The camera's clock went ``ahead_s`` further than the time that passed (it was
        stepped forward): the times its rules, tracker, frames and open episodes keep move as
        far, so an occupancy in view goes on as one episode, neither ended by the false gap nor
        lasting the longer for it. The moved episodes are written with the camera's clock: a
        restart reads both on the new clock."""
        from gridpatrol.detectors import episodes
        from gridpatrol.detectors.evidence import FrameRing, SightingFrames

        cam, delta = rt.camera.id, timedelta(seconds=ahead_s)
        rt.pipeline.shift_time(ahead_s)
        ring = FrameRing(capacity=RING_FRAMES, horizon_s=_horizon_s(rt.camera))
        for frame in rt.ring.within(EARLIEST, LATEST):
            ring.add(replace(frame, t=frame.t + delta))
        held: list[tuple[tuple[str, str], datetime, StoredFrame]] = []

        def keep(key: tuple[str, str], began: datetime, latest: StoredFrame) -> bool:
            held.append((key, began, latest))
            return False  # read, not forgotten

        rt.sightings.forget(keep)
        sightings = SightingFrames(per_key=rt.sightings.per_key)
        for key, began, latest in held:
            first = rt.sightings.first(key, began, timedelta(0)) or latest
            for frame in (first, latest):
                sightings.seen(key, began + delta, replace(frame, t=frame.t + delta))
        rt.ring, rt.sightings = ring, sightings
        rt.ending = {key: t + delta for key, t in rt.ending.items()}
        moved = [
            replace(
                ep,
                started_at=ep.started_at + delta,
                reported_at=ep.reported_at + delta,
                last_event_at=ep.last_event_at + delta,
            )
            for ep in self.book.values()
            if ep.open and ep.camera_id == cam
        ]
        for ep in moved:
            self.book[ep.key] = ep
        try:
            with self.outbox.transaction() as txn:
                for ep in moved:
                    episodes.save_episode(txn.conn, ep)
                self._save_clocks(txn.conn, [cam])
        except Exception as exc:
            self._failed(
                None,
                exc,
                "camera %s: its open episodes moved to its new clock were not written (%s); "
                "they are with their next change",
                cam,
                exc,
            )
            return
        for ep in moved:
            if ep.key in self._written:
                self._written[ep.key] = ep.last_event_at

    def _outlier(self, rt: CameraRuntime, jump: ClockJump) -> None:
        """A lone frame off the camera's clock: the frames around it disagree with it."""
        last = rt.last_ts
        assert last is not None
        if jump.ts < last:
            self._drop(rt)  # a late frame
            return
        why = (
            f"frame time {jump.ts.isoformat()} is {(jump.ts - last).total_seconds():.0f} s "
            "ahead of the camera's frames before and after it"
        )
        self._bad(rt, jump.topic, jump.payload, jump.received_at, "clock_outlier", why)

    def _drop(self, rt: CameraRuntime) -> None:
        """A frame taken from the camera's slot that will not be judged: a late one, or the
        one a clock jump held back. It counts as dropped, as a frame replaced in the slot."""
        rt.out_of_order += 1
        self.metrics.dropped.labels(rt.camera.id).inc()

    def _runtime(self, cam: Camera, sub: Subscription) -> CameraRuntime:
        """A camera's fresh processing state: rules, motion gate and frame ring."""
        from gridpatrol.detectors.evidence import FrameRing, SightingFrames
        from gridpatrol.detectors.motion import MotionState
        from gridpatrol.detectors.rules import HELD_MAX

        return CameraRuntime(
            camera=cam,
            sub=sub,
            pipeline=camera_pipeline(cam, self.site.tz, self.names, self.heads),
            ring=FrameRing(capacity=RING_FRAMES, horizon_s=_horizon_s(cam)),
            # A rule holds at most HELD_MAX ended occupancies and times one more.
            sightings=SightingFrames(per_key=HELD_MAX + 1),
            motion=MotionState(),
            judged_at=self.clock(),
            visited_at=self.clock(),
        )

    def _reset(self, rt: CameraRuntime, ts: datetime) -> None:
        # Its open episodes were timed on the clock that was abandoned: they end where their
        # rules last saw them (asked before the rules start over: the book's last event of a
        # raised episode may be up to update_s older), and an occupancy that is still there
        # opens a new episode. They end first: when that fails (the outbox file locked or
        # full), the camera stays on its old clock with its rules, and the next two frames on
        # the new clock take the jump again.
        cam = rt.camera.id
        seen = {(cam, zone, rule): t for (zone, rule), t in rt.pipeline.last_seen().items()}
        old = {k for k, ep in self.book.items() if ep.open and k[0] == cam}
        self._end_unfollowed(rt, ts, everything=True, seen=seen, keys=old)
        fresh = self._runtime(rt.camera, rt.sub)
        # The zones' background models stay, moved to the new clock as if ``ts`` came right
        # after the last frame: learned afresh they would take whatever stands there now for
        # normal, and the next save would overwrite the good model kept in the outbox file.
        shift = 0.0 if rt.last_ts is None else (ts - rt.last_ts).total_seconds()
        fresh.pipeline.carry_backgrounds(rt.pipeline, shift)
        rt.pipeline, rt.ring, rt.motion, rt.last = fresh.pipeline, fresh.ring, fresh.motion, None
        rt.sightings = fresh.sightings  # of occupancies the fresh rules know nothing of

    def _bad(
        self,
        rt: CameraRuntime,
        topic: str,
        payload: bytes,
        received_at: datetime,
        reason: str,
        error: str,
        exc: BaseException | None = None,
    ) -> None:
        """Dead-letter a frame: ``reason`` a code (the decoder's, as ingest's letters, or the
        worker's own), ``error`` what it alone does not say, left out when empty; the warning
        line carries ``exc``'s traceback, if given."""
        from gridpatrol.ingest.receiver import dead_letter_body, publish_fitted
        from gridpatrol.ingest.topics import deadletter_topic

        rt.bad += 1
        self.metrics.bad.labels(rt.camera.id).inc()
        self.rejected[reason] += 1
        if not self.letters.admit(topic, reason):
            return
        log.warning(
            "camera %s: %s %s; sent to the dead-letter topic",
            rt.camera.id,
            reason,
            error,
            exc_info=exc,
        )
        # Cut to the broker's packet limit: a letter over it would be refused, and lost.
        publish_fitted(
            self.conn,
            deadletter_topic(self.site.mqtt.prefix, self.component_id),
            dead_letter_body(reason, topic, payload, received_at, error),
        )

    def _judge(self, item: Ready) -> None:
        from gridpatrol.detectors.evidence import StoredFrame
        from gridpatrol.detectors.pipeline import objects

        rt = item.rt
        if item.result is None:
            rt.skipped += 1
            self.metrics.skipped.labels(rt.camera.id).inc()
        # A skipped frame shows the same scene as the last inferred one: its detections stand.
        result = item.result or rt.last
        if result is None:
            return
        h = item.frame.header
        rt.judged_at = self.clock()
        frame = StoredFrame(h.ts, item.frame.image, h.width, h.height)
        rt.ring.add(frame)
        events = list(
            rt.pipeline.process(
                h.ts, (h.width, h.height), result.detections, self._scene_fn(result), item.gray
            )
        )
        self._keep_sightings(rt, frame)
        sure = objects(result.detections)  # evidence draws objects, not boxes kept for tracks
        self._episodes(rt, h.ts, events, item, sure)
        self._forget_sightings(rt)

    def _keep_sightings(self, rt: CameraRuntime, frame: StoredFrame) -> None:
        """Keep ``frame`` as the last sighting of each background rule occupancy seen on it (and
        as its first, when it is the first): a dwell completed while its zone's schedule is off
        is raised when it opens, maybe hours later, on a frame that may show bare ground, and
        the ring, thinned over that time (24 frames over the longest time off), may keep no
        frame of the occupancy for its clean or first_seen frame. A zone without a schedule
        raises on the last sighting, whose frame is the current one: nothing is kept for it."""
        from gridpatrol.site import StaticForegroundParams

        scheduled = {zone.id for zone in rt.camera.zones if zone.schedule is not None}
        for (zone, rule), occ in rt.pipeline.occupied().items():
            if zone not in scheduled:
                continue
            params = _rule_params(rt.camera, zone, rule)
            if not isinstance(params, StaticForegroundParams):
                continue  # blind while its schedule is off: raised on the frame it saw
            if abs(occ.seen - frame.t) <= SIGHTING_ROUNDING:
                rt.sightings.seen((zone, rule), occ.began, frame)

    def _forget_sightings(self, rt: CameraRuntime) -> None:
        """Keep only the sightings of occupancies their rule still holds (the one it times, and
        those over while the zone's schedule is off, whose raise or clear waits for it), run
        after the frame's events were rendered: no raise can follow any other. So are
        forgotten an occupancy cleared on this frame, one over before its dwell completed, one
        the rule dropped past HELD_MAX while the schedule was off, and one the worker ended
        (a silent camera), which has no clear."""
        if not len(rt.sightings):
            return
        held = rt.pipeline.held()

        def done(key: tuple[str, str], began: datetime, _: StoredFrame) -> bool:
            return not any(abs(first - began) <= SIGHTING_ROUNDING for first in held.get(key, ()))

        rt.sightings.forget(done)

    def _episodes(
        self,
        rt: CameraRuntime,
        ts: datetime,
        events: Iterable[Any],
        item: Ready,
        detections: Detections,
    ) -> None:
        """A judged frame's rule events into episode operations, then its waiting episodes.

        The events of one episode go in one transaction (a raise and a clear on one frame are
        queued together or not at all), each episode on its own: one the outbox did not take
        (the file locked beyond the busy timeout, a full disk) is logged, and the frame's other
        events and waiting episodes go on (two rules clearing in one frame each end their
        episode). Operations kept from an earlier frame (``rt.unqueued``) go first."""
        grouped: dict[Key, list[EpisodeEvent]] = {key: [] for key in rt.unqueued}
        for raw in events:
            ev = normalise_event(raw)
            grouped.setdefault((rt.camera.id, ev.zone_id, ev.rule), []).append(ev)
        for key, evs in grouped.items():
            before = rt.unqueued.get(key)
            try:
                self._episode_events(rt, key, evs, item, detections)
            except Exception as exc:
                self._not_queued(rt, key, evs, before, exc)
                if before is None or key in rt.unqueued or not evs:
                    continue
                # The kept operations failed for good and are dropped: the frame's own events
                # go on their own, as if nothing had been kept.
                try:
                    self._episode_events(rt, key, evs, item, detections)
                except Exception as again:
                    self._not_queued(rt, key, evs, None, again)
        if rt.waiting:
            self._end_unfollowed(rt, ts)

    def _not_queued(
        self,
        rt: CameraRuntime,
        key: Key,
        evs: Sequence[EpisodeEvent],
        before: Unqueued | None,
        exc: BaseException,
    ) -> None:
        """Log the failure ``exc`` _episode_events just raised: ``before``, the operations kept
        from earlier frames it tried first. Kept operations failing again are logged once a
        minute, and so are the failures of an open episode's operations (_failed: one line each
        when the outbox file failed), but not of an open: each is logged."""
        kept = rt.unqueued.get(key)
        now = self.clock()
        if kept is not None and before is not None and now - before.logged < UNQUEUED_LOG_S:
            rt.unqueued[key] = replace(kept, logged=before.logged)
            return
        kinds = (before.kinds if before is not None else ()) + tuple(ev.kind for ev in evs)
        if kept is not None:
            rt.unqueued[key] = replace(kept, logged=now)
            then = "; they are tried again with the next frame"
        else:
            then = "; they are dropped" if before is not None else ""
        # Kept operations have their own minute (``logged``), dropped ones are always said, and
        # so is each failed open: a lost alarm, and the next occupancy's within the minute of
        # the last one's would be lost silently. An episode's updates and ending fail frame
        # after frame while the disk is full: said once a minute for each episode.
        what: tuple[str, ...] | None = None
        # A raise that failed before its open was tried (its rendering, say) is a lost alarm
        # all the same: said each time.
        opening = any(op.kind == "open" for op in self._tried) or any(
            ev.kind == "raise" for ev in evs
        )
        if kept is None and before is None and not opening:
            ep = self.book.get(key)
            what = ("queue", *key, *(() if ep is None else (ep.candidate_id,)))
        self._failed(
            what,
            exc,
            "camera %s: the %s of rule %s in zone %s at %s %s not queued (%s)%s",
            rt.camera.id,
            " and ".join(kinds),
            key[2],
            key[1],
            (before.t if before is not None else evs[0].t).isoformat(),
            "were" if len(kinds) > 1 else "was",
            exc,
            then,
        )

    def finish_unqueued(self) -> None:
        """At stop: the operations kept from earlier frames (``rt.unqueued``) tried once more,
        each episode's in one transaction; those the outbox still does not take are lost, and
        logged as such. Raises nothing."""
        for rt in self.cams.values():
            for key, kept in list(rt.unqueued.items()):
                try:
                    # No event: nothing is rendered, the kept operations are committed.
                    self._episode_events(rt, key, (), cast("Ready", None), cast("Detections", None))
                except Exception as exc:
                    log.error(  # the error says it all: it was logged with the frame
                        "camera %s: the %s of rule %s in zone %s (episode started at %s) were "
                        "not queued before the stop and are lost: %s",
                        rt.camera.id,
                        " and ".join(kept.kinds),
                        key[2],
                        key[1],
                        kept.episode.started_at.isoformat(),
                        exc,
                    )
                rt.unqueued.pop(key, None)

    def _scene_fn(
        self, result: InferenceResult
    ) -> Callable[[tuple[float, float, float, float]], dict[str, float]]:
        """Scene-head scores of a normalized region, from the frame's one forward pass."""

        def scores(region: tuple[float, float, float, float]) -> dict[str, float]:
            return {name: float(h.score(result, region)) for name, h in self.heads.items()}

        return scores

    # -- episodes -> outbox ---------------------------------------------------------------------

    def _episode(
        self, rt: CameraRuntime, ev: EpisodeEvent, item: Ready, detections: Detections
    ) -> None:
        """One rule event into episode operations (see _episode_events)."""
        self._episode_events(rt, (rt.camera.id, ev.zone_id, ev.rule), [ev], item, detections)

    def _episode_events(
        self,
        rt: CameraRuntime,
        key: Key,
        evs: Sequence[EpisodeEvent],
        item: Ready,
        detections: Detections,
    ) -> None:
        """A frame's rule events of one episode into operations, queued in one transaction
        after those kept from an earlier frame (``rt.unqueued``)."""
        from gridpatrol.detectors import episodes

        self._tried = ()
        params = _rule_params(rt.camera, key[1], key[2])
        if params is None:
            log.warning("camera %s: event for unknown rule %s/%s", rt.camera.id, key[1], key[2])
            return
        book: Mapping[Key, Episode] = self.book
        kept = rt.unqueued.get(key)
        rendered = [] if kept is None else list(kept.rendered)
        if kept is not None:
            book = {**book, key: kept.episode}
        cleared = rt.ending.get(key)
        if cleared is None:
            self._stop_waiting(rt, [key])  # its rule follows it now
        elif evs:
            # Its rule cleared it but the outbox did not take the ending: the episode ends at
            # that clear's last sighting first (else this event, of a later occupancy, would
            # continue it), in the same transaction.
            book, ended = episodes.end_silent(book, [key], evs[0].t, {key: cleared})
            rendered += [
                (op, self._render(rt, op, evs[0], item, detections), evs[0]) for op in ended
            ]
        for ev in evs:
            book, ops = episodes.step(
                book,
                rt.camera.id,
                ev,
                update_s=params.update_s,
                resume_s=_resume_s(params),
                new_id=lambda: str(uuid.uuid4()),
            )
            rendered += [(op, self._render(rt, op, ev, item, detections), ev) for op in ops]
        if not rendered:
            self.book = dict(book)
            if cleared is not None:  # the episode was no longer open
                self._stop_waiting(rt, [key])
            return
        ops = [op for op, _, _ in rendered]
        self._tried = ops
        try:
            refused = self._commit([(op, body) for op, body, _ in rendered])
        except Exception as exc:
            # Only a committed transaction moves the book: after a failure the next event of
            # the episode tries again, and an ending, which no event follows, waits. A raise
            # its rule cleared on the same frame has no next event: kept, with the clear, for
            # the next frame, and so is whatever follows them until they are queued, while the
            # failure may pass (the file locked, full) and they are not too many.
            raised_and_ended = any(op.kind == "open" for op in ops) and not book[key].open
            if cleared is None and (kept is not None or raised_and_ended):
                rendered = _latest_updates(rendered)
                if _transient(exc) and len(rendered) <= MAX_UNQUEUED_OPS:
                    kinds = (kept.kinds if kept else ()) + tuple(ev.kind for ev in evs)
                    when = kept.t if kept else evs[0].t
                    logged = kept.logged if kept else float("-inf")
                    rt.unqueued[key] = Unqueued(book[key], rendered, kinds, when, logged)
                    raise
                # Dropped: only the ending of an episode the book has open waits.
                rt.unqueued.pop(key, None)
                now = self.book.get(key)
                ops = [
                    op
                    for op in ops
                    if now is not None and now.open and op.episode.candidate_id == now.candidate_id
                ]
            self._end_later(rt, ops)
            raise
        self.book = dict(book)
        rt.unqueued.pop(key, None)
        if cleared is not None:
            self._stop_waiting(rt, [key])
        for op, _, ev in rendered:
            if op.episode.candidate_id in refused:
                continue
            rt.candidates += op.kind == "open"
            self.metrics.candidates.labels(rt.camera.id, op.kind).inc()
            log.info(
                "camera %s: %s candidate %s (%s in zone %s, dwell %.0f s, confidence %.2f)",
                rt.camera.id,
                {"open": "created", "update": "updated", "end": "ended"}[op.kind],
                op.episode.candidate_id,
                op.episode.type,
                op.episode.zone_id,
                op.episode.dwell_s,
                ev.confidence,
            )

    def _end_later(self, rt: CameraRuntime, ops: Sequence[Op]) -> None:
        """The endings among ``ops``, which the outbox did not take, wait (_end_unfollowed, after
        the frame's events and with each next frame), at their last sighting."""
        for op in ops:
            ep = op.episode
            if op.kind != "end" or ep.ended_at is None:
                continue
            rt.waiting.add(ep.key)
            rt.ending[ep.key] = ep.ended_at
            log.warning(
                "camera %s: ending candidate %s (%s in zone %s) was not queued; it is tried "
                "again with the waiting episodes",
                rt.camera.id,
                ep.candidate_id,
                ep.type,
                ep.zone_id,
            )

    def _end_unfollowed(
        self,
        rt: CameraRuntime,
        t: datetime,
        everything: bool = False,
        seen: Mapping[Key, datetime] | None = None,
        keys: set[Key] | None = None,
    ) -> None:
        """End the camera's waiting episodes that did not come back (all, with ``everything``).

        seen: when the rules that no longer run last saw their occupancies; a waiting episode
        seen there later than its book says ends then. keys: the episodes to look at instead
        of the waiting ones (those left waiting wait from then on).

        The book and the waiting set change only once the outbox transaction is committed:
        when it fails (the file locked beyond the busy timeout, a full disk), the episodes it
        was ending still wait, and the camera's next frame tries again. An episode whose rule
        cleared it (``rt.ending``) ends at once, at the last sighting of that clear.
        """
        from gridpatrol.detectors import episodes

        cam = rt.camera
        waiting = rt.waiting if keys is None else keys

        def resume(zone_id: str, rule: str) -> float | None:
            params = _rule_params(cam, zone_id, rule)
            cleared = (cam.id, zone_id, rule) in rt.ending  # its rule ended it already
            return None if params is None or everything or cleared else _resume_s(params)

        book: Mapping[Key, Episode] = self.book
        # A key in rt.ending was cleared by its rule: a later sighting of the rule belongs to
        # the next occupancy, not to the episode waiting to end.
        sightings = {**(seen or {}), **rt.ending}
        moved = {k: when for k, when in sightings.items() if k in waiting and k in book}
        if moved:  # end_unfollowed copies the book anyway: copied here only to move sightings
            book = dict(book)
            for key, when in moved.items():
                book[key] = episodes.seen_until(book[key], when)
        book, ops, still = episodes.end_unfollowed(book, waiting, t, rt.pipeline.occupied(), resume)
        kept = self._sightings_to_keep(rt, still, book)
        refused: set[str] = set()
        if ops or kept:  # else only the waiting episodes' sightings moved, in memory
            refused = self._commit(
                [(op, ([], {"detection": self._end_block(op.episode)})) for op in ops], kept
            )
        self.book = book
        self._stop_waiting(rt, (rt.waiting | waiting) - still)
        rt.waiting = still
        self._written.update((ep.key, ep.last_event_at) for ep in kept)
        for op in ops:
            if op.episode.candidate_id in refused:
                continue  # ended in the book, nothing sent
            self.metrics.candidates.labels(cam.id, "end").inc()
            log.info(
                "camera %s: ended candidate %s (%s in zone %s): not seen since %s",
                cam.id,
                op.episode.candidate_id,
                op.episode.type,
                op.episode.zone_id,
                op.episode.last_event_at.isoformat(),
            )

    def _sightings_to_keep(
        self, rt: CameraRuntime, waiting: set[Key], book: Mapping[Key, Episode]
    ) -> list[Episode]:
        """The ``waiting`` episodes whose last sighting moved ``update_s`` (at least
        SIGHTING_SAVE_MIN_S) past the one the outbox file holds. Kept only in memory, it would
        be lost by a second restart before the rule raises again (dwell_s may be far longer
        than the resume window): the episode would end at the older sighting, and the same
        occupancy would raise a second candidate. Saved this often, the file is never further
        behind than the resume window allows for (_resume_s)."""
        kept = []
        for key in waiting:
            ep, written = book.get(key), self._written.get(key)
            params = _rule_params(rt.camera, key[1], key[2])
            if ep is None or written is None or params is None:
                continue
            if (ep.last_event_at - written).total_seconds() >= _sighting_save_s(params):
                kept.append(ep)
        return kept

    def _stop_waiting(self, rt: CameraRuntime, keys: Iterable[Key]) -> None:
        """The episodes ``keys`` wait no more: their rule follows them, or they ended."""
        for key in keys:
            rt.waiting.discard(key)
            rt.ending.pop(key, None)
            self._written.pop(key, None)

    def _end_silent(self) -> None:
        """End the open episodes of cameras that have sent no frame for longer than their
        rule's ``gap_s + clear_s``: a dead camera or a finished file sends none that would
        clear them. Each ends at its last sighting; the camera's next occupancy is a new
        episode.

        Silence counts only while the worker's own broker connection is up: while it is down
        no camera's frames can arrive, and ending every episode then would raise each scene
        still there as a second candidate once frames come back. After a (re)connect, the
        first connect included, every camera's silence is counted from the check that sees
        it (a dead camera's episodes end ``gap_s + clear_s`` after the reconnect). A camera
        with a frame in inference is not silent for IN_FLIGHT_MAX_S (an inference stuck longer
        is logged);
        one with a frame waiting in its slot is silent only up to when the worker last looked
        at its slot (a refused frame is no sign of life)."""
        now = self.clock()
        if now - self._silence_checked < SILENCE_CHECK_S:
            return
        self._silence_checked = now
        if not self.conn.connected:
            return
        # Read after "connected": the count goes up before that is set, so the connect seen
        # up here is counted.
        connects = self.conn.connects
        if connects != self._connects_seen:
            self._connects_seen = connects
            for rt in self.cams.values():
                rt.judged_at = now
            return
        for rt in self.cams.values():
            in_flight = rt.camera.id in self._in_flight
            if in_flight and not self._stuck(rt, now):
                # Its frame waits for its result (a host far behind, a new input shape being
                # compiled): the camera sent it, and the worker is what is slow. Judged, that
                # frame says whether the occupancy is still there.
                continue
            silent_s = now - rt.judged_at
            if len(rt.sub) and not in_flight:
                # A frame waits in its slot: it came after the processing thread last looked
                # (held up meanwhile by another camera's compile or evidence), and only says
                # something once taken. Up to that look the camera's silence counts: a camera
                # whose every frame is refused, sent faster than the passes, has one waiting
                # at each check, and is as silent as one that sends none. Behind a stuck
                # inference its frames wait for ever: they say nothing.
                silent_s = rt.visited_at - rt.judged_at
            try:
                self._end_silent_camera(rt, silent_s)
            except Exception as exc:
                cam = rt.camera.id
                self._failed(
                    ("silent", cam), exc, "camera %s: ending the episodes of a silent camera "
                    "failed: %s", cam, exc
                )  # fmt: skip

    def _stuck(self, rt: CameraRuntime, now: float) -> bool:
        """Whether the camera's frame in inference has waited for its result longer than
        IN_FLIGHT_MAX_S (said once per frame): its silence counts again."""
        waited = now - rt.in_flight_at
        if waited <= IN_FLIGHT_MAX_S:
            return False
        if not rt.stuck_said:
            rt.stuck_said = True
            log.error(
                "camera %s: its frame has waited %.0f s for its inference result (the model "
                "runtime stuck?); the camera's silence counts again",
                rt.camera.id,
                waited,
            )
        return True

    def _end_silent_camera(self, rt: CameraRuntime, silent_s: float) -> None:
        from gridpatrol.detectors import episodes

        cam = rt.camera
        keys: list[Key] = []
        for key, ep in self.book.items():
            if ep.open and ep.camera_id == cam.id:
                params = _rule_params(cam, ep.zone_id, ep.type)
                if silent_s > (0.0 if params is None else _silence_s(params)):
                    keys.append(key)
        if not keys:
            return
        # A clear the outbox did not take (rt.ending) gives the episode's last sighting: a later
        # one of its rule belongs to the next occupancy.
        last_seen = rt.pipeline.last_seen().items()
        seen = {(cam.id, zone, rule): when for (zone, rule), when in last_seen}
        seen.update(rt.ending)
        t = rt.last_ts or max(self.book[k].last_event_at for k in keys)
        book, ops = episodes.end_silent(self.book, keys, t, seen)
        refused = self._commit(
            [(op, ([], {"detection": self._end_block(op.episode)})) for op in ops]
        )
        self.book = book
        for key in keys:
            rt.pipeline.forget(key[1], key[2])
        self._stop_waiting(rt, keys)
        for op in ops:
            if op.episode.candidate_id in refused:
                continue  # ended in the book, nothing sent
            self.metrics.candidates.labels(cam.id, "end").inc()
            log.warning(
                "camera %s has sent no frame for %.0f s: ended candidate %s (%s in zone %s) at "
                "its last sighting %s",
                cam.id,
                silent_s,
                op.episode.candidate_id,
                op.episode.type,
                op.episode.zone_id,
                op.episode.last_event_at.isoformat(),
            )

    def _commit(
        self, rendered: list[tuple[Op, Rendered]], followed: Sequence[Episode] = ()
    ) -> set[str]:
        """Evidence, candidate operations and episode state in one outbox transaction, so a
        restart neither loses an operation nor repeats one; with them the clocks of their
        cameras, so the book is never ahead of the clock a restart compares frames with.
        Returns the candidates the API refused for good, whose operations were not queued.
        ``followed``: episodes saved without an operation (a waiting episode's last
        sighting)."""
        from gridpatrol.detectors import episodes

        refused: set[str] = set()
        with self.outbox.transaction() as txn:
            for ep in followed:
                episodes.save_episode(txn.conn, ep)
            for op, (files, body) in rendered:
                if op.kind != "open" and self._refused(txn.conn, op.episode):
                    episodes.save_episode(txn.conn, op.episode)  # followed, not reported
                    refused.add(op.episode.candidate_id)
                    continue
                if files:
                    body["evidence"] = [
                        f.item(txn.add_evidence(f.data, "image/jpeg")) for f in files
                    ]
                if op.kind == "open":
                    txn.create_candidate(body, op.episode.candidate_id)
                else:
                    txn.patch_candidate(op.episode.candidate_id, body)
                episodes.save_episode(txn.conn, op.episode)
            cams = {op.episode.camera_id for op, _ in rendered} | {ep.camera_id for ep in followed}
            self._save_clocks(txn.conn, cams)
        # An ended episode has no more operations: neither its refusal nor when its failures
        # were logged need be remembered (else the failures would grow with every episode).
        ended = [op.episode for op, _ in rendered if op.kind == "end"]
        self._closed -= {ep.candidate_id for ep in ended}
        for ep, kind in itertools.product(ended, ("refusal", "bug")):
            self._failures.pop(("queue", *ep.key, ep.candidate_id, kind), None)
        return refused

    def _refused(self, conn: sqlite3.Connection, ep: Episode) -> bool:
        """Whether the API refused the episode's candidate for good (410 Gone for a patch:
        a reviewer rejected or merged it, or it was closed): its episode goes on, so the
        occupancy raises no second candidate, but nothing more of it is sent."""
        from gridpatrol.api.client import candidate_closed

        if ep.candidate_id in self._closed:
            return True
        if not candidate_closed(conn, ep.candidate_id):
            return False
        self._closed.add(ep.candidate_id)
        log.warning(
            "camera %s: candidate %s (%s in zone %s) takes no more updates (the API refused "
            "it for good); its episode is followed without reporting",
            ep.camera_id,
            ep.candidate_id,
            ep.type,
            ep.zone_id,
        )
        return True

    def _render(
        self, rt: CameraRuntime, op: Op, ev: EpisodeEvent, item: Ready, detections: Detections
    ) -> Rendered:
        """The evidence files and the create / patch body for ``op``."""
        from gridpatrol.detectors.evidence import EvidenceFile, StoredFrame

        ep = op.episode
        h = item.frame.header
        if op.kind == "end":
            return [], {"detection": self._end_block(ep)}
        now = StoredFrame(h.ts, item.frame.image, h.width, h.height)
        # The clean and annotated frames are those the event's boxes were seen on: a raise
        # reported after its last sighting (a background rule's dwell completed while its zone's
        # schedule was off, raised when it opens) would otherwise draw them on a frame that may
        # show bare ground. The latest frame stays the current one.
        shot = _sighting_frame(rt, ev, now)
        detection = self._detection(ep, ev, op, (shot.width, shot.height))
        files: list[EvidenceFile] = []
        if op.better:
            files.append(EvidenceFile.of("clean", shot))
            if shot is now:
                full = item.image if item.scale == (1.0, 1.0) else None
                annotated = self._annotated(rt, ev, now, full, detections)
            else:  # the current frame's detections are not of that frame: only the event's
                annotated = self._annotated(rt, ev, shot, None, None)
            if annotated is not None:
                files.append(EvidenceFile.of("annotated", replace(shot, data=annotated)))
        first = _first_seen_frame(rt, ep, ev) if op.kind == "open" else None
        if first is not None:
            files.append(EvidenceFile.of("first_seen", first))
        files.append(EvidenceFile.of("latest", now))
        files = self._fit(files)
        if op.kind == "update":
            return files, {"detection": detection}
        return files, self._create_body(rt.camera, ep, detection)

    def _fit(self, files: list[EvidenceFile]) -> list[EvidenceFile]:
        """The files, each re-encoded when it is larger than the API would take (one frame
        serving as two kinds is re-encoded once)."""
        from gridpatrol.detectors.evidence import fit_evidence

        fitted: dict[bytes, EvidenceFile] = {}
        out = []
        for f in files:
            if f.data not in fitted:
                fitted[f.data] = fit_evidence(f, self.evidence_max_bytes)
            done = fitted[f.data]
            out.append(replace(f, data=done.data, width=done.width, height=done.height))
        return out

    def _detection(
        self, ep: Episode, ev: EpisodeEvent, op: Op, frame_size: tuple[int, int]
    ) -> dict[str, Any]:
        previous = self._last_detection.get(ep.candidate_id)
        block = candidate_detection(ep, ev, op.better, previous, self.backend.info, frame_size)
        self._last_detection[ep.candidate_id] = block
        return block

    def _end_block(self, ep: Episode) -> dict[str, Any]:
        from gridpatrol.detectors.evidence import end_detection

        self._last_detection.pop(ep.candidate_id, None)
        info = self.backend.info
        return end_detection(ep, info.name, info.version, info.sha256)

    def _create_body(self, cam: Camera, ep: Episode, detection: dict[str, Any]) -> dict[str, Any]:
        from gridpatrol.detectors.evidence import description

        body: dict[str, Any] = {
            "source": {
                "type": "camera",
                "system": SYSTEM,
                "camera_id": cam.id,
                "source_event_id": ep.source_event_id,
            },
            "type": ep.type,
            "description": description(ep.type, cam.name, ep.zone_id, ep.dwell_s),
            "occurred_at": ep.started_at.isoformat(),
            "location": cam.location.model_dump(exclude_none=True),
            "severity": SEVERITY.get(ep.type, DEFAULT_SEVERITY),
            "urgency": "immediate" if ep.type in self.site.policy.urgent_types else "normal",
            "detection": detection,
        }
        if ep.previous_id is not None:
            body["references"] = [ep.previous_id]
        return body

    def _annotated(
        self,
        rt: CameraRuntime,
        ev: EpisodeEvent,
        frame: StoredFrame,
        full: NDArray[np.uint8] | None,
        detections: Detections | None,
    ) -> bytes | None:
        """``frame`` (``full``: its pixels at full size, decoded when None) with the zone, the
        event's boxes and ``detections`` (those of ``frame``; None: none known) drawn on it."""
        from gridpatrol.detectors.evidence import Label, annotate, decode_jpeg, title_for

        full = decode_jpeg(frame.data) if full is None else full
        if full is None:
            return None
        labels = (
            []
            if detections is None
            else [
                Label(tuple(float(v) for v in box), f"{name} {conf:.2f}", highlight=False)
                for box, name, conf in zip(
                    detections.xyxy.tolist(),
                    detections.labels(self.names),
                    detections.confidence.tolist(),
                    strict=True,
                )
            ]
        )
        for i, box in enumerate(ev.boxes):
            text = ev.labels[i] if i < len(ev.labels) else ev.rule
            labels.append(Label(box, text, highlight=True))
        zone = next((z for z in rt.camera.zones if z.id == ev.zone_id), None)
        return annotate(
            full,
            labels=labels,
            zone_polygon=[(float(x), float(y)) for x, y in zone.polygon] if zone else None,
            camera_id=rt.camera.id,
            t=frame.t,
            tz=self.site.tz,
            title=f"{ev.zone_id}: {title_for(ev.rule, ev.confidence)}",
        )

    # -- reporting ------------------------------------------------------------------------------

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_save >= BACKGROUND_SAVE_S:
            self._last_save = now
            self.save_state()
        if now - self._last_progress < self.progress_s:
            return
        self._last_progress = now
        self.report_safely()

    def _restore_clocks(self, conn: sqlite3.Connection) -> None:
        """Each camera's last frame before the stop: the first frames after the start are judged
        against it (_in_order), so a clock that went back meanwhile is a jump as within a run."""
        from gridpatrol.detectors import episodes

        for cam_id, clock in episodes.load_clocks(conn, set(self.cams)).items():
            rt = self.cams[cam_id]
            rt.last_ts, rt.last_received_at = clock.ts, clock.received_at
            rt.least_offset = _offset(clock.ts, clock.received_at)

    def _save_clocks(self, conn: sqlite3.Connection, camera_ids: Iterable[str]) -> None:
        from gridpatrol.detectors import episodes

        for cam_id in camera_ids:
            rt = self.cams.get(cam_id)
            if rt is not None and rt.last_ts is not None and rt.last_received_at is not None:
                episodes.save_clock(
                    conn, cam_id, episodes.CameraClock(rt.last_ts, rt.last_received_at)
                )

    def _restore_backgrounds(self, conn: sqlite3.Connection) -> None:
        from gridpatrol.detectors import bg_store

        bg_store.ensure_schema(conn)
        for cam_id, rt in self.cams.items():
            if rt.pipeline.needs_gray:
                restored = rt.pipeline.restore_backgrounds(bg_store.load(conn, cam_id))
                if restored:
                    log.info("camera %s: %d saved background model(s) restored", cam_id, restored)

    def save_state(self) -> None:
        """Keep the cameras' last frame times and the zones' background models with the outbox
        (every minute, and at stop), in one transaction: the models are on the clock saved.
        With them go the open episodes whose last sighting moved on since the book was written
        (_moved_sightings): the book is written with operations, up to ``update_s`` apart, and a
        restart ends a reloaded episode at the sighting its file holds.

        A failure (the file locked beyond the busy timeout, a full disk) is logged with the
        cameras and zones it was for and goes no further: it runs inside the frame source, and
        at stop the outbox must still drain. The file keeps what was saved before; the next
        save writes the state of then."""
        models: dict[str, dict[tuple[str, float], Any]] = {}
        try:
            models = {cam_id: rt.pipeline.backgrounds() for cam_id, rt in self.cams.items()}
            self._write_state(models)
        except Exception:
            log.exception(
                "%s: saving the last frame times and background models of %s failed; the "
                "outbox file keeps those saved before",
                self.component_id,
                _state_owners(list(self.cams), models),
            )

    def _write_state(self, models: Mapping[str, Mapping[tuple[str, float], Any]]) -> None:
        from gridpatrol.detectors import bg_store, episodes

        timed = [cam_id for cam_id, rt in self.cams.items() if rt.last_ts is not None]
        if not timed and not any(models.values()):
            return
        with self.outbox.transaction() as txn:
            moved = self._moved_sightings(txn.conn)
            for ep in moved:  # no operation: only the sighting and the dwell moved
                episodes.save_episode(txn.conn, ep)
            self._save_clocks(txn.conn, timed)
            for cam_id, states in models.items():
                bg_store.save(txn.conn, cam_id, states)
        # Only a committed save moves the book: after a failure the next save tries again.
        for ep in moved:
            self.book[ep.key] = ep
            if ep.key in self._written:  # a waiting episode: its sighting is written up to here
                self._written[ep.key] = ep.last_event_at

    def _moved_sightings(self, conn: sqlite3.Connection) -> list[Episode]:
        """The open episodes whose last sighting (and with it the dwell) is later than the one
        the outbox file holds for them, moved there.

        A followed episode's sighting is the one its rule saw last (or, when the outbox did not
        take its rule's clear, the one that clear gave): the book moves only with the events
        written, ``update_s`` apart, and without this a restart would end the episode up to
        ``update_s`` before the occupancy was last seen. A waiting episode's sighting has moved
        in the book already (_end_unfollowed): its rule times an occupancy that only may
        continue it."""
        from gridpatrol.detectors import episodes

        written = episodes.load_book(conn, set(self.cams))
        moved = []
        for rt in self.cams.values():
            cam = rt.camera.id
            seen = {(cam, zone, rule): t for (zone, rule), t in rt.pipeline.last_seen().items()}
            for key, ep in self.book.items():
                if key[0] != cam or not ep.open or key in rt.unqueued:
                    # With operations held (rt.unqueued: a raise and clear, maybe another
                    # occupancy's open after them), the book may still hold an occupancy the
                    # rule ended, and the rule's sighting be of the next: written only with them.
                    continue
                when = rt.ending.get(key) if key in rt.waiting else seen.get(key)
                now = ep if when is None else episodes.seen_until(ep, when)
                old = written.get(key)
                if old is None or not old.open or old.candidate_id != now.candidate_id:
                    continue  # nothing of it written (yet): an operation will write it
                if now.last_event_at > old.last_event_at or now.dwell_s > old.dwell_s:
                    moved.append(now)
        return moved

    def report_safely(self) -> None:
        """:meth:`report`, a failure (the outbox file unreadable) logged, not raised."""
        try:
            self.report()
        except Exception:
            log.exception("%s: the progress report failed", self.component_id)

    def report(self) -> None:
        """One line per camera: what came in, what was inferred, dropped and reported."""
        self.metrics.outbox_depth.set(self.outbox.depth())
        self.metrics.outbox_bytes.set(_file_bytes(self.outbox.path))
        for rt in self.cams.values():
            mean_ms = 1000 * rt.latency_s / rt.inferred if rt.inferred else 0.0
            log.info(
                "camera %s: %d frames in, %d inferred, %d skipped, %d dropped, %d bad, "
                "%.0f ms mean inference latency, %d candidate(s)",
                rt.camera.id,
                rt.frames_in,
                rt.inferred,
                rt.skipped,
                rt.sub.dropped + rt.out_of_order,
                rt.bad,
                mean_ms,
                rt.candidates,
            )
        if self.rejected:
            log.info(
                "%s: bad frames %s, of them not dead-lettered (over the limit) %s",
                self.component_id,
                dict(self.rejected),
                dict(self.letters.suppressed),
            )


def _file_bytes(path: Path) -> int:
    """The size of the SQLite file ``path`` with its write-ahead log: what it takes of the disk
    (pages freed by delivered operations are reused, not given back)."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):  # no log yet, or checkpointed away
            total += part.stat().st_size
    return total


def _state_owners(
    cameras: Sequence[str], models: Mapping[str, Mapping[tuple[str, float], Any]]
) -> str:
    """``camera a (zones x, y), camera b``: whose state a save was for."""
    parts = []
    for cam_id in cameras:
        zones = sorted({zone for zone, _ in models.get(cam_id, {})})
        parts.append(f"camera {cam_id}" + (f" (zones {', '.join(zones)})" if zones else ""))
    return ", ".join(parts)


def candidate_detection(
    ep: Episode,
    ev: EpisodeEvent,
    better: bool,
    previous: dict[str, Any] | None,
    model: ModelInfo,
    frame_size: tuple[int, int],
) -> dict[str, Any]:
    """The ``detection`` of a create / update: boxes in pixels of the candidate's clean frame.

    Only an operation with a better snapshot sends a new clean frame, and with it this event's
    boxes; otherwise the boxes sent with the clean frame stand (``previous``: the block this
    worker sent last). When the worker does not know them (it restarted since), the update
    carries no boxes at all, as an ending does, so those of the evidence stay.

    With the boxes go ``frame_width`` / ``frame_height``, the size of the frame they are in
    (``frame_size`` for this event's frame): a clean frame too large for the API is stored
    smaller, and whoever reads the boxes against it (``train-head --from-reviews``) must scale.
    """
    from gridpatrol.detectors.evidence import detection_block

    known = previous is not None and "boxes" in previous
    # A better snapshot's clean frame is new: boxes of another frame would be drawn on it,
    # so it goes with its event's boxes, none when the event names none.
    kept = previous if not better and previous and known else None
    block = detection_block(
        model=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        score=ep.best_confidence,
        boxes=kept["boxes"] if kept else ev.boxes,
        track_ids=kept["track_ids"] if kept else ev.track_ids,
        zone_id=ep.zone_id,
        dwell_s=ep.dwell_s,
        ended_at=ep.ended_at,
    )
    if not better and not known:
        del block["boxes"], block["track_ids"]
    elif kept is None:
        block["frame_width"], block["frame_height"] = frame_size
    elif "frame_width" in kept:
        block["frame_width"], block["frame_height"] = kept["frame_width"], kept["frame_height"]
    block["started_at"] = ep.started_at.isoformat()
    return block


def _serial_stream(
    backend: Backend, source: Iterator[tuple[Ready, NDArray[np.uint8]] | None]
) -> Iterator[tuple[Ready, InferenceResult]]:
    """``stream`` for a backend without one: each frame inferred on its own, in order."""
    for entry in source:
        if entry is not None:
            item, image = entry
            yield item, backend.infer([image])[0]


def _to_original(
    result: InferenceResult, scale: tuple[float, float], size: tuple[int, int]
) -> InferenceResult:
    """Express a result on a reduced decode in pixels of the original frame of ``size``
    (width, height), each axis by its own factor of ``scale`` (x, y), clipped to the frame:
    a box reaching the decoded image's edge would otherwise end past it (the decoder rounds
    an odd side up) or short of it."""
    if scale == (1.0, 1.0):
        return result
    import numpy as np

    from gridpatrol.detectors.types import Detections, InferenceResult, Letterbox

    sx, sy = scale
    width, height = size
    d = result.detections
    lb = result.letterbox
    xyxy = d.xyxy * np.array([sx, sy, sx, sy], dtype=d.xyxy.dtype)
    np.clip(xyxy[:, 0::2], 0.0, width, out=xyxy[:, 0::2])
    np.clip(xyxy[:, 1::2], 0.0, height, out=xyxy[:, 1::2])
    detections = Detections(xyxy, d.confidence, d.class_id, d.tracker_id)
    # The letterbox keeps one factor: the axes differ by under a decoded pixel over the
    # frame, and its readers (the heads' feature cells) go by its padding alone.
    letterbox = Letterbox(lb.scale / sx, lb.pad_x, lb.pad_y)
    return InferenceResult(detections, result.features, letterbox)


def _transient(exc: BaseException) -> bool:
    """Whether the outbox file may take later what it failed to take now: busy or locked by
    another process, an I/O error, a full disk (TRANSIENT_SQLITE). Told by SQLite's result code
    alone, which each of its errors carries (Python 3.11+), as _outbox_refusal tells a failure
    from a bug; its message is no sign (a bug's may name a "locked" table). A refusal of the
    operation itself (one no request could carry) is for good."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return isinstance(code, int) and code & 0xFF in TRANSIENT_SQLITE


def _outbox_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` says the outbox file did not take an operation (SQLite could not write:
    locked, full, an I/O error, a corrupt file: OUTBOX_SQLITE; or a body no request can carry),
    rather than a bug. Told by SQLite's result code, not the exception's class: a corrupt file
    raises DatabaseError, and a missing table (a bug) OperationalError, as a full disk does."""
    from gridpatrol.api.client import UnsendableOperation

    if isinstance(exc, UnsendableOperation):
        return True
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return isinstance(code, int) and code & 0xFF in OUTBOX_SQLITE


def _latest_updates(
    rendered: list[tuple[Op, Rendered, EpisodeEvent]],
) -> list[tuple[Op, Rendered, EpisodeEvent]]:
    """``rendered`` but updates a later update of their candidate supersedes (the API keeps
    the latest state), so operations kept over a long failure grow only by occupancy."""
    last = {
        op.episode.candidate_id: i for i, (op, _, _) in enumerate(rendered) if op.kind == "update"
    }
    return [
        r
        for i, r in enumerate(rendered)
        if r[0].kind != "update" or last[r[0].episode.candidate_id] == i
    ]


def _sighting_frame(rt: CameraRuntime, ev: EpisodeEvent, now: StoredFrame) -> StoredFrame:
    """The frame on which ``ev``'s boxes were seen: ``now``, the frame the event came with, when
    it is the event's last sighting (``first_seen + dwell_s``). For an event reported after that
    sighting: the frame of that sighting kept for it (``rt.sightings``), else the newest frame
    the ring kept within the occupancy (from ``first_seen`` to that sighting: one before it
    shows what was there before, one after it may no longer show what was seen), else ``now``
    (no such frame was kept: more than HELD_MAX occupancies of its rule ended after it)."""
    seen = ev.first_seen + timedelta(seconds=ev.dwell_s)
    if seen >= now.t - SIGHTING_ROUNDING:
        return now
    start, end = ev.first_seen - SIGHTING_ROUNDING, seen + SIGHTING_ROUNDING
    kept = rt.sightings.get((ev.zone_id, ev.rule), ev.first_seen, SIGHTING_ROUNDING)
    if kept is not None and start <= kept.t <= end:
        return kept
    within = rt.ring.within(start, end)
    return within[-1] if within else now


def _first_seen_frame(rt: CameraRuntime, ep: Episode, ev: EpisodeEvent) -> StoredFrame | None:
    """The ``first_seen`` frame of ``ep``: the ring's first frame at or after its start (else
    its newest), unless that frame lies outside the occupancy (from its start to ``ev``'s last
    sighting) and the frame of the occupancy's first sighting was kept for it (a raise reported
    hours after its last sighting: the ring, thinned over that time, may hold no frame of a
    short occupancy, and its first frame after the start then shows the ground after)."""
    first = rt.ring.at(ep.started_at)
    seen = ev.first_seen + timedelta(seconds=ev.dwell_s)
    start, end = ep.started_at - SIGHTING_ROUNDING, seen + SIGHTING_ROUNDING
    if first is not None and start <= first.t <= end:
        return first  # always so for a raise on its last sighting: the ring holds that frame
    kept = rt.sightings.first((ev.zone_id, ev.rule), ev.first_seen, SIGHTING_ROUNDING)
    if kept is not None and start <= kept.t <= end:
        return kept
    return first


def _rule_params(cam: Camera, zone_id: str, rule: str) -> RuleParams | None:
    for zone in cam.zones:
        if zone.id == zone_id:
            return cam.zone_rules(zone).get(rule)
    return None


def _resume_s(params: RuleParams) -> float:
    """How long after its last sighting a reloaded episode may still be continued.

    The book's last-seen time is written with an operation (or, while a reloaded episode waits
    for its rule, once it moved on by ``update_s``, at least SIGHTING_SAVE_MIN_S), so up to
    that interval comes on top of the rule's own gap and clear times.
    """
    return params.gap_s + params.clear_s + _sighting_save_s(params)


def _sighting_save_s(params: RuleParams) -> float:
    """How far a waiting episode's last sighting moves on before it is written again."""
    return max(params.update_s, SIGHTING_SAVE_MIN_S)


def _silence_s(params: RuleParams) -> float:
    """How long a camera may send no frame before the rule's open episode ends: the time its
    rule would take to clear it had frames without the condition kept coming."""
    return params.gap_s + params.clear_s


def _horizon_s(cam: Camera) -> float:
    """How far back first-seen frames are kept: the longest dwell plus its gap and 30 s, at
    least 60 s. Not capped: an episode opens a dwell after its occupancy began, and the ring
    holds RING_FRAMES frames however long its horizon is (they only lie further apart).

    A background rule of a scheduled zone judges while the schedule is off and raises a dwell
    completed there when it opens, with the first_seen it had: its horizon adds the schedule's
    longest time off (at most a day), so first_seen shows the object even when it was gone
    by then."""
    from gridpatrol.site import StaticForegroundParams

    longest = 60.0
    for zone in cam.zones:
        off = 0.0 if zone.schedule is None else _longest_off_s(zone.schedule)
        for params in cam.zone_rules(zone).values():
            waits = off if isinstance(params, StaticForegroundParams) else 0.0
            longest = max(longest, waits + params.dwell_s + params.gap_s + 30.0)
    return longest


def _longest_off_s(schedule: Schedule) -> float:
    """The longest time ``schedule`` stays off in a row, at most a day (DAY_S), on the local
    clock: from the end of a day's window to the start of the next scheduled day's."""
    from gridpatrol.site import ALL_DAYS, DAY_S

    start = 60.0 * schedule.minutes[0]
    starts = sorted(ALL_DAYS.index(d) * DAY_S + start for d in set(schedule.days))
    week = 7 * DAY_S
    nexts = [*starts[1:], starts[0] + week]
    longest = max(
        after - (first + schedule.window_s) for first, after in zip(starts, nexts, strict=True)
    )
    return min(longest, DAY_S)


def camera_pipeline(
    cam: Camera, tz: ZoneInfo, names: Sequence[str], heads: Mapping[str, Any]
) -> CameraPipeline:
    """The camera's rules as the worker runs them (``gridpatrol scan --config --camera`` too):
    boxes below OBJECT_CONF, which the detector keeps for the tracker and for rules with a
    lower ``min_confidence`` (``pipeline.detector_conf``), are no objects."""
    from gridpatrol.detectors.pipeline import OBJECT_CONF, CameraPipeline

    thresholds = {name: float(h.threshold) for name, h in heads.items()}
    return CameraPipeline(cam, tz, names, head_thresholds=thresholds, object_conf=OBJECT_CONF)


def _needs_heads(cameras: Sequence[Camera]) -> bool:
    return any(z.rules.garbage_overflow is not None for c in cameras for z in c.zones)


# ---------------------------------------------------------------------------------------------
# Entry point


def evidence_max_bytes_from_env() -> int:
    """``GRIDPATROL_EVIDENCE_MAX_BYTES``: evidence larger than this is re-encoded to fit
    (default 8 MiB, under the API's default limit of 10 MiB); ValueError when it is not a
    positive number of bytes."""
    from gridpatrol.detectors.evidence import EVIDENCE_MAX_BYTES

    text = os.environ.get("GRIDPATROL_EVIDENCE_MAX_BYTES", "").strip()
    if not text:
        return EVIDENCE_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"GRIDPATROL_EVIDENCE_MAX_BYTES must be a positive number of bytes, got {text!r}"
        )
    return value


def metrics_port_setting(flag: int | None) -> str:
    """The setting that chose the metrics port, as :func:`resolve_metrics_port` reads them."""
    return "--metrics-port" if flag is not None else "GRIDPATROL_METRICS_PORT"


def resolve_metrics_port(flag: int | None) -> int:
    """``--metrics-port`` when given, else ``GRIDPATROL_METRICS_PORT`` (0 = off, also when
    unset); ValueError when it is not a port number, a setup error like any other."""
    if flag is not None:
        return _port(str(flag), "--metrics-port")
    text = os.environ.get("GRIDPATROL_METRICS_PORT", "").strip()
    return _port(text, "GRIDPATROL_METRICS_PORT") if text else 0


def _port(text: str, source: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise ValueError(f"{source} must be a port number (0 = off), got {text!r}")
    return value


def end_unserved_episodes(
    outbox: Outbox, served: set[str], t: datetime, model: ModelInfo | None = None
) -> list[tuple[Episode, bool]]:
    """End the outbox file's open episodes of cameras not in ``served`` at their last sighting,
    queueing each ending in the same transaction as the book; each ended episode comes with
    whether its end was queued: not for a candidate the API refused for good (it takes no more
    patches). ``model``: the model of the worker that stopped following them (none for a
    retired file)."""
    from gridpatrol.api.client import candidate_closed
    from gridpatrol.detectors import episodes
    from gridpatrol.detectors.evidence import end_detection

    with outbox.transaction() as txn:
        for cam_id in episodes.ensure_schema(txn.conn):
            log.warning(
                "camera %s: an older version wrote its episodes after its last frame time was "
                "saved; that time is not used (a clock step back meanwhile is not seen)",
                cam_id,
            )
        _, ops = episodes.end_unserved(episodes.load_book(txn.conn), served, t)
        ended = []
        for op in ops:
            ep = op.episode
            episodes.save_episode(txn.conn, ep)
            if candidate_closed(txn.conn, ep.candidate_id):
                ended.append((ep, False))  # rejected, merged or closed: no more patches
                continue
            ident = () if model is None else (model.name, model.version, model.sha256)
            txn.patch_candidate(ep.candidate_id, {"detection": end_detection(ep, *ident)})
            ended.append((ep, True))
    return ended


def run(args: argparse.Namespace) -> int:
    from gridpatrol.detectors.models import ModelNotFoundError, class_names, resolve_model
    from gridpatrol.site import SiteConfigError, load_site

    if not args.config:
        log.error("detect needs --config (or GRIDPATROL_CONFIG)")
        return 2
    try:
        check_selection(args.cameras, args.shard)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        # The model first: its class names are part of what makes the site file valid.
        spec = resolve_model(args.model)
        site = load_site(args.config, class_names=class_names(spec) or None)
        cameras = select_cameras(site, args.cameras, args.shard)
        evidence_max_bytes_from_env()
        port = resolve_metrics_port(args.metrics_port)
        check_heads_folder(args.heads)
    except (ModelNotFoundError, SiteConfigError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if not cameras and args.cameras is not None:
        # Only a list of no id gets here ("--cameras ,"): unknown ids were refused above.
        log.error("--cameras %r names no camera of the site", args.cameras)
        return 2
    if not site.cameras:
        log.error("the site file %s has no camera", args.config)
        return 2
    from gridpatrol.api.client import OutboxBusy
    from gridpatrol.detectors.models import MissingExtraError, ModelLoadError
    from gridpatrol.ingest.mqtt import MqttConfigError

    component_id = _component_id(args)
    try:
        conn = _connection(component_id, site)
    except (MqttConfigError, RuntimeError) as exc:  # the environment or --component-id
        log.error("%s: cannot start: %s", component_id, exc)
        return 2
    if not cameras:
        # CRC-32 sharding of a small site often leaves a shard without cameras. That is no
        # setup error: exiting would have Compose or systemd restart the worker in a loop.
        log.warning(
            "%s: shard %s serves no camera of the site (its %d camera(s) are on the other "
            "shards); it stays online and idle until stopped",
            component_id,
            args.shard,
            len(site.cameras),
        )
        return _idle(component_id, conn, port, metrics_port_setting(args.metrics_port))
    try:
        worker, backend = _build(args, site, cameras, component_id, spec, conn, port)
    except (
        ModelLoadError,
        ModelNotFoundError,
        MissingExtraError,
        OutboxBusy,
        OutboxUnusable,
        MetricsPortError,
    ) as exc:
        # Setup the operator must mend (weights, the extra a .pt needs, another worker on the
        # file, the metrics port in use): as scan does.
        log.error("%s: cannot start: %s", component_id, exc)
        return 2
    except Exception as exc:
        log.error("%s: cannot start: %s", component_id, exc)
        return 1
    return _serve(worker, backend, conn, args)


def _idle(component_id: str, conn: MqttConnection, metrics_port: int, setting: str) -> int:
    """A worker without cameras: online on the broker (and its metrics served) until SIGTERM or
    SIGINT, without the model or the outbox file. Exit status as :func:`_serve`'s."""
    from gridpatrol.ingest.mqtt import mqtt_started, stop_when_refused

    stop = threading.Event()
    stop_on_signals(stop, component_id)
    refused = stop_when_refused(log, component_id, stop, conn)
    if metrics_port:  # the scrape target stays up: an idle shard is no worker down
        try:
            Metrics().serve(metrics_port, setting)
        except MetricsPortError as exc:  # the port in use: as a worker with cameras says (run)
            log.error("%s: cannot start: %s", component_id, exc)
            return 2
    # Refused credentials: retrying would lock the account out, so mend and restart (2). A
    # signal while the start waits for the broker ends the wait.
    if not mqtt_started(log, component_id, conn, stop):
        return 2
    stop.wait()
    conn.stop()
    log.info("%s: stopped", component_id)
    return 1 if refused.is_set() else 0


def _connection(component_id: str, site: Site) -> MqttConnection:
    """The broker connection (not yet connected) once the setup can work, checked before the
    model takes seconds to load: RuntimeError without an API token, MqttConfigError for a
    malformed GRIDPATROL_MQTT_URL or a component id that is no topic level."""
    from gridpatrol.api.client import ApiClient
    from gridpatrol.ingest.mqtt import MqttConnection

    ApiClient.from_env().close()
    return MqttConnection(component_id, prefix=site.mqtt.prefix)


class OutboxUnusable(RuntimeError):
    """The outbox file cannot be opened as one: mend GRIDPATROL_OUTBOX (status 2)."""


# Said when another process holds the worker's outbox file.
BUSY_HINT = (
    "another worker runs on it (one on the same --cameras, --shard or --component-id, or with "
    "the same GRIDPATROL_OUTBOX): stop it, or give this worker its own GRIDPATROL_OUTBOX"
)


def _open_outbox(component_id: str, cameras: Sequence[str] = ()) -> Outbox:
    """The worker's outbox, claimed before the episode book is read: one process per file.
    ``cameras``: the ``--cameras`` list its default component id was derived from."""
    from gridpatrol.api.client import ApiClient, Outbox

    own = path = Path(Outbox.env_path(component_id))
    try:
        if cameras:
            path = _outbox_path(component_id, cameras)
        hint = BUSY_HINT if path == own else _old_outbox_hint(own)
        outbox = Outbox(path, ApiClient.from_env(), component=component_id, busy_hint=hint)
    except (OSError, sqlite3.Error) as exc:  # a folder, another kind of file, no permission
        raise OutboxUnusable(f"the outbox {path} (GRIDPATROL_OUTBOX): {exc}") from exc
    outbox.claim()
    return outbox


def _old_outbox_hint(own: Path) -> str:
    """What to do when the file a ``--cameras`` worker went on with (:func:`_outbox_path`) is
    held: the other process may be a worker of every camera, not one of the same list."""
    return (
        f"this worker went on with it as it keeps the state of its cameras alone and its own "
        f"file {own} is not there yet; another worker runs on it (one of every camera, or of "
        f"the same --cameras): stop that one, or set GRIDPATROL_OUTBOX={own} to start this one "
        f"on its own file"
    )


# The tables of the outbox file that name the cameras whose state it keeps.
CAMERA_TABLES = ("detector_episodes", "detector_clocks", "detector_backgrounds")


def _outbox_path(component_id: str, cameras: Sequence[str]) -> Path:
    """The outbox file of a ``--cameras`` worker on its default id: its own default file, but
    the one it used as ``detect`` (before the id followed its cameras) while its own is not
    there yet and that one keeps state of its cameras and no other's: its queued operations
    and open episodes are there. Nothing is moved, so nothing a crash or another process can
    cut short: a second worker of the list is refused that file, as one of its own."""
    from gridpatrol.api.client import Outbox

    own = Path(Outbox.env_path(component_id))
    old = Path(Outbox.env_path(COMPONENT))
    if os.environ.get("GRIDPATROL_OUTBOX") or own.exists() or not old.is_file():
        return own
    named = _cameras_kept(old)
    if not named or not named <= set(cameras):
        if named:
            log.warning(
                "%s: the outbox %s keeps state of other cameras (%s) than this worker's; it "
                "starts on its own file %s",
                component_id,
                old,
                ", ".join(sorted(named - set(cameras))),
                own,
            )
        return own
    log.warning(
        "%s: goes on with the outbox %s, which keeps the state of its cameras alone (its own "
        "default is %s; GRIDPATROL_OUTBOX=%s keeps this one)",
        component_id,
        old,
        own,
        old,
    )
    return old


def _cameras_kept(path: Path) -> set[str] | None:
    """The cameras whose state the outbox file ``path`` keeps; None when it cannot be read
    (also when it is not there: opened read-only, it is never created)."""
    try:
        uri = f"{path.absolute().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            return {
                str(row[0])
                for table in CAMERA_TABLES
                if table in tables
                for row in conn.execute(f"SELECT DISTINCT camera_id FROM {table}")
            }
    except sqlite3.Error:
        return None


def _build(
    args: argparse.Namespace,
    site: Site,
    cameras: list[Camera],
    component_id: str,
    spec: ModelSpec,
    conn: MqttConnection,
    metrics_port: int,
) -> tuple[DetectorWorker, Backend]:
    from gridpatrol.detectors.models import load_backend, model_info, served_spec
    from gridpatrol.detectors.motion import MotionSettings
    from gridpatrol.detectors.pipeline import detector_conf, warn_missing_heads

    # Before the model takes seconds to load.
    outbox = _open_outbox(component_id, [] if args.component_id else _camera_ids(args.cameras))
    spec = served_spec(spec)  # heads are keyed to the weights that run (a .pt's IR)
    heads = _load_heads(model_info(spec), args.heads, cameras) if _needs_heads(cameras) else {}
    warn_missing_heads(cameras, heads)
    nodes = sorted({n for h in heads.values() for n in h.feature_nodes})
    # Weak boxes reach the tracker, and a rule's min_confidence below the backend's default
    # takes effect; each rule still judges only boxes at or above its own.
    conf = detector_conf(cameras)
    backend = load_backend(spec, feature_nodes=nodes, rect=not args.square_input, conf=conf)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port, metrics_port_setting(args.metrics_port))
    worker = DetectorWorker(
        site,
        cameras,
        backend,
        heads,
        outbox,
        conn,
        motion=MotionSettings(enabled=not args.no_motion_gate, keyframe_s=args.keyframe_s),
        component_id=component_id,
        progress_s=args.progress_s,
        metrics=metrics,
    )
    return worker, backend


def check_heads_folder(folder: str | None) -> None:
    """A ``--heads`` folder that is not there is a setup error, as scan says too: globbing it
    would find no head, and every garbage_overflow zone would stay silent."""
    if folder is not None and not Path(folder).is_dir():
        raise ValueError(f"--heads {folder}: no such folder")


def _load_heads(info: Any, folder: str | None, cameras: Sequence[Camera]) -> dict[str, Any]:
    try:
        module = importlib.import_module("gridpatrol.detectors.heads")
    except ModuleNotFoundError:
        log.warning("no scene heads installed: garbage_overflow zones cannot fire")
        return {}
    # The heads the configured zones need: one of them not loaded is an error, not a warning.
    required = {
        zone.rules.garbage_overflow.head
        for cam in cameras
        for zone in cam.zones
        if zone.rules.garbage_overflow is not None
    }
    heads: dict[str, Any] = module.load_default_heads(
        info, Path(folder) if folder else None, required
    )
    log.info("scene heads: %s", ", ".join(sorted(heads)) or "none")
    return heads


def _serve(
    worker: DetectorWorker, backend: Backend, conn: MqttConnection, args: argparse.Namespace
) -> int:
    from gridpatrol.ingest.mqtt import mqtt_started, stop_when_refused

    stop_on_signals(worker.stop_event, worker.component_id)
    # A broker not reachable at the start that refuses the credentials later: stop, rather
    # than run on without a connection (exit 1, as ingest: the unit restarts).
    refused = stop_when_refused(log, worker.component_id, worker.stop_event, conn)
    # Refused credentials: retrying would lock the account out, so mend and restart (2). A
    # signal while the start waits for the broker ends the wait; run() then returns at once.
    if not mqtt_started(log, worker.component_id, conn, worker.stop_event):
        worker.outbox.stop()
        backend.close()
        return 2
    worker.outbox.start()
    try:
        worker.run()
    finally:
        # Each of these logs its own failure and raises none: the outbox still gets to drain,
        # the connection to say offline and the model to close.
        worker.report_safely()  # the final tally, however short the run
        worker.finish_unqueued()  # what the outbox did not take from the last frames
        worker.save_state()
        # Processing has stopped; the outbox gets a few seconds to drain before going offline.
        flushed = worker.outbox.flush(timeout=5.0)
        worker.outbox.stop()
        conn.stop()
        backend.close()
        log.info(
            "%s: stopped (outbox %s, %s operation(s) left for the next start)",
            worker.component_id,
            "flushed" if flushed else "not flushed",
            _depth(worker),
        )
    return 1 if refused.is_set() else 0


def _depth(worker: DetectorWorker) -> str:
    """How many operations wait in the outbox, as said at stop ("?" when it cannot be read)."""
    try:
        return str(worker.outbox.depth())
    except Exception:
        log.exception("%s: reading the outbox depth failed", worker.component_id)
        return "?"
