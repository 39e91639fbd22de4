"""``gridpatrol scan``: detections, scene scores and violations for images, folders and videos.

One JSON object per image or sampled video frame on stdout; progress and problems on stderr.
Without ``--config`` a still is a photo, turned upright by its EXIF orientation tag as a photo
viewer shows it, and the rules that can judge a still image do so on the whole frame
(``dwell_verified: false``); with ``--config --camera`` a still is one of the camera's frames,
decoded as stored (the tag ignored) as the worker decodes them, so that size, boxes and zones
are the camera's. With ``--config --camera`` the rules judge a still within each of that
camera's zones, with the zone's parameters but no dwell or schedule (a still has neither a
duration nor a time; ``dwell_verified: false``), and a video runs through the camera's full
pipeline (tracking, zones, schedules, dwell) with timestamps from the video position, each
frame listing the raised episodes it shows and the raises sent on it of episodes it does not
show (``dwell_verified: true``). With ``--config --camera`` the detector keeps boxes down to
the confidence the worker keeps for that camera (lower than ``--conf`` when a rule's
``min_confidence`` or the tracker's weak boxes ask for it), and the pipeline is the worker's,
so a video is judged on the detections the worker would judge; ``detections`` lists only the
boxes at or above ``--conf`` in every mode.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import json
import logging
import math
import os
import stat as stat_module
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO
from zoneinfo import ZoneInfo

import cv2
import numpy as np
from numpy.typing import NDArray

from gridpatrol.detectors.models import (
    MissingExtraError,
    ModelLoadError,
    ModelNotFoundError,
    class_names,
    load_backend,
    model_info,
    resolve_model,
    served_spec,
)
from gridpatrol.detectors.motion import small_gray
from gridpatrol.detectors.pipeline import (
    STILL_RULES,
    CameraPipeline,
    Violation,
    detector_conf,
    judge_still,
    objects,
    warn_missing_heads,
)
from gridpatrol.detectors.rules import EVALUATORS, ZoneObservation
from gridpatrol.detectors.types import Backend, Detections, InferenceResult, ModelInfo
from gridpatrol.detectors.worker import camera_pipeline
from gridpatrol.detectors.zones import ZoneGeometry
from gridpatrol.site import Camera, SiteConfigError, load_site

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".ts"})
CHUNK = 8  # frames per backend call: enough to keep the async queue busy
Region = tuple[float, float, float, float]


class Head(Protocol):
    """What scan needs of a scene head (``gridpatrol.detectors.heads.SceneHead``)."""

    name: str
    threshold: float
    feature_nodes: tuple[str, ...]

    def score(self, result: InferenceResult, region: Region | None = None) -> float: ...


@dataclass(frozen=True, slots=True)
class Sample:
    """One image to judge: a still (frame 0, no ts) or a sampled video frame."""

    source: str
    frame: int
    ts: float | None
    image: NDArray[np.uint8]


class ScanError(Exception):
    """A source that cannot be read; reported and skipped."""


# --- sources -----------------------------------------------------------------------------------


def expand(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files to scan and the problems found on the way (one message each, a failure each).

    Given files are taken as they are; folders recursively (images and videos, the suffix in
    any case; hidden files and folders, named ``.*``, left out), into linked folders too, each
    folder once (a link back up is no endless loop).
    Problems: a given folder that holds none, a folder that cannot be listed, a file that cannot
    be looked at (in a folder that can be listed but not entered, e.g. mode ``r--``), and a
    link with an image's or a video's name that leads nowhere or cannot be followed.
    :class:`ScanError` for a given file or folder that does not exist."""
    found: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw)
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            # Path.exists() says False on these, so they stay "no such file or folder"; any
            # other error (a folder above that cannot be entered) is that file's failure.
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF):
                raise ScanError(f"{raw}: no such file or folder") from None
            problems.append(f"{raw}: cannot be read ({exc.strerror or exc})")
            continue
        if stat_module.S_ISDIR(mode):
            inside, trouble = _walk(path)
            found.extend(inside)
            problems.extend(trouble)
            if not inside and not trouble:
                problems.append(f"{raw}: no images or videos found")
        else:
            found.append(path)
    return found, problems


def _walk(root: Path) -> tuple[list[Path], list[str]]:
    """The images and videos under ``root`` (sorted) and the problems met on the way.

    A folder reached both as itself and by a link is scanned under its own path: the folders
    reached without a link are walked first, then the linked ones whose folders were not seen
    yet (those reached by one link before those that take two), each again without following
    the links inside, which are walked after it."""
    found: list[Path] = []
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()
    trees = [root]  # the root, then each linked folder met, in the order met

    def unlisted(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot list the folder ({exc.strerror or exc})")

    # Path.rglob does not enter linked folders (a camera share mounted by a link), so walk.
    for top in trees:  # grows while walked
        for folder, dirs, files in os.walk(top, onerror=unlisted):
            try:
                stat = Path(folder).stat()
            except OSError as exc:
                unlisted(exc)
                dirs[:] = []
                continue
            if (stat.st_dev, stat.st_ino) in seen:  # reached again by a link: a loop or a twin
                dirs[:] = []
                continue
            seen.add((stat.st_dev, stat.st_ino))
            # Hidden names are skipped: a camera share or a copied card holds macOS's
            # AppleDouble files (._IMG_1.jpg, no image) and thumbnail and cache folders.
            dirs[:] = sorted(name for name in dirs if not name.startswith("."))
            # os.path.islink says no where Path.is_symlink raises: in a folder that can be
            # listed but not entered, whose folders os.walk then names as unlistable.
            subfolders = [Path(folder, name) for name in dirs]
            trees.extend(sub for sub in subfolders if os.path.islink(sub))  # noqa: PTH114
            for name in files:
                file = Path(folder, name)
                if (
                    name.startswith(".")
                    or file.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES
                ):
                    continue
                try:
                    mode = file.stat().st_mode
                except OSError as exc:
                    problems.append(f"{file}: {_unfollowed(file)} ({exc.strerror or exc})")
                    continue
                if stat_module.S_ISREG(mode):
                    found.append(file)
    return sorted(found), problems


def _unfollowed(file: Path) -> str:
    """Why a listed file cannot be looked at: a link that leads nowhere (os.walk lists a link
    it cannot follow as a file), else it cannot be read (its folder can be listed but not
    entered, e.g. mode ``r--``, where Path.is_symlink fails too: only the link is read)."""
    try:
        return f"a link to {file.readlink()} that cannot be followed"
    except OSError:  # not a link (EINVAL), or not even that can be read (EACCES)
        return "cannot be read"


def decode_image(source: Path | bytes, flags: int = cv2.IMREAD_COLOR) -> NDArray[np.uint8] | None:
    """The image in a file or in bytes, None when OpenCV cannot decode it.

    OpenCV returns None for most unreadable files but raises for some, e.g. one of more pixels
    than it decodes (2^30 by default, ``OPENCV_IO_MAX_IMAGE_PIXELS``): caught, so one such file
    among many is skipped like any other unreadable one."""
    try:
        if isinstance(source, Path):
            image = cv2.imread(str(source), flags)
        else:
            buf = np.frombuffer(source, dtype=np.uint8)
            image = cv2.imdecode(buf, flags) if buf.size else None
    except cv2.error as exc:
        log.debug("cannot decode %s: %s", source if isinstance(source, Path) else "image", exc)
        return None
    return None if image is None else np.asarray(image, dtype=np.uint8)


def read_still(path: Path, as_stored: bool = False) -> Sample:
    """A still turned upright by its EXIF orientation, as photo viewers show it (a phone photo
    is stored on its side); ``as_stored`` ignores the tag, as the worker decodes a camera's
    frames, so that size, boxes and zones are those of the camera's pixels."""
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if as_stored else 0)
    if _truncated_jpeg(path):
        raise ScanError(f"{path}: truncated image")
    image = decode_image(path, flags)
    if image is None:
        raise ScanError(f"{path}: not a readable image")
    return Sample(str(path), 0, None, image)


def _truncated_jpeg(path: Path) -> bool:
    """Whether ``path`` is a JPEG whose image data ends before its end-of-image marker (FFD9).
    libjpeg decodes such a file, its missing part grey, with nothing but a warning on stderr:
    a cut-off upload or copy would be judged as a whole image. The marker is looked for after
    the first scan's start, where the data cannot hold it, and anything after it is the file's
    own business: phones append a motion photo's video or their own trailer. A file that
    cannot be read, or whose segments do not parse, is left to the decoder to report."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:3] != b"\xff\xd8\xff":  # not a JPEG
        return False
    try:
        scan = _first_scan(data)
    except ValueError:
        return False
    return scan is None or data.find(b"\xff\xd9", scan) < 0


# Markers without a length: TEM and the restart markers RST0-RST7.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _first_scan(data: bytes) -> int | None:
    """Where the first start-of-scan segment (FFDA) of the JPEG ``data`` begins, walking its
    segments from the start-of-image; None when the file ends before it. ValueError when the
    segments do not parse."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise ValueError(f"no marker at {at}")
        if data[at + 1] == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        marker = data[at + 1]
        if marker == 0xDA:
            return at
        if marker in _STANDALONE:
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def video_frames(path: Path, fps: float) -> Iterator[tuple[int, float, NDArray[np.uint8]]]:
    """``(index, t, image)`` of the frames of a video sampled at ``fps``, by time; frames in
    between are skipped undecoded, and one that cannot be retrieved is left out.

    ``t`` is the frame's own timestamp (seconds from the start): a variable-frame-rate video
    (a phone's, a recorder's that drops frames) places its frames at its own times, which the
    average rate the container gives would not. A frame less than half a frame period before a
    sampling time is taken for it (containers round the times). A frame without a usable
    timestamp (none, or not after the last one) is placed one native frame period after the
    last one, or at its index at the native rate when that is later; a container without a
    usable rate is read as 25 fps. :class:`ScanError` when the video cannot be opened."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ScanError(f"{path}: not a readable video")
    native = cap.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(native) and native > 0):
        # A container without a usable rate (0, NaN, negative, inf) would place every frame
        # at t = 0 or nowhere: none past the first would ever be sampled.
        native = 25.0
    step = 1.0 / fps
    period = 1.0 / native
    next_t = 0.0
    last = -math.inf
    index = 0
    try:
        while cap.grab():
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not (math.isfinite(t) and t >= 0 and t > last):
                t = max(index / native, last + period)
            # Containers round the times (Matroska to 1 ms: 33, 67, 100 ms at 30 fps), so the
            # frame due at a sampling time may come a little before it: one less than half a
            # frame period early is taken for it. The period is the shortest of the native one,
            # the time since the frame before (a variable-frame-rate video's average rate would
            # take a frame of a fast stretch far too early) and the sampling step; a frame
            # exactly half a period early is not taken (a tie goes to the later frame).
            tolerance = max(1e-6, 0.5 * min(period, t - last, step) - 1e-6)
            last = t
            if t + tolerance >= next_t:
                ok, image = cap.retrieve()
                if ok:
                    yield index, t, np.asarray(image, dtype=np.uint8)
                next_t += step * max(1, int((t - next_t) // step) + 1)
            index += 1
    finally:
        cap.release()


def read_video(path: Path, fps: float) -> Iterator[Sample]:
    """Frames sampled at ``fps`` by their timestamps (see :func:`video_frames`).

    :class:`ScanError` when the video cannot be opened or no frame of it could be decoded."""
    sampled = 0
    for index, t, image in video_frames(path, fps):
        sampled += 1
        yield Sample(str(path), index, round(t, 3), image)
    if sampled == 0:
        raise ScanError(f"{path}: no frames could be decoded")


def samples(path: Path, fps: float, as_stored: bool = False) -> Iterator[Sample]:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        yield from read_video(path, fps)
    else:
        yield read_still(path, as_stored)


# --- judging -----------------------------------------------------------------------------------


def heads_folder(heads: str | Path | None) -> Path | None:
    """The ``--heads`` folder (None: the shipped heads); :class:`ScanError` if it is not one."""
    folder = Path(heads) if heads else None
    if folder is not None and not folder.is_dir():
        raise ScanError(f"--heads {folder}: no such folder")
    return folder


def load_heads(info: ModelInfo, folder: Path | None = None) -> dict[str, Head]:
    """The scene heads in ``folder`` (default: the shipped ones) trained on this model."""
    heads_folder(folder)
    if importlib.util.find_spec("gridpatrol.detectors.heads") is None:
        log.warning("no scene heads available: scene scores and garbage_overflow are off")
        return {}
    heads_module = importlib.import_module("gridpatrol.detectors.heads")
    loaded: Mapping[str, Head] = heads_module.load_default_heads(info, folder)
    if folder is not None and not loaded:
        log.warning("--heads %s: no scene head for model %s there", folder, info.name)
    return dict(loaded)


def detections_json(detections: Detections, names: Sequence[str]) -> list[dict[str, Any]]:
    labels = detections.labels(names)
    return [
        {
            "label": label,
            "class_id": int(cls),
            "confidence": round(float(conf), 4),
            "bbox": [round(float(v), 1) for v in box],
        }
        for label, cls, conf, box in zip(
            labels, detections.class_id, detections.confidence, detections.xyxy, strict=True
        )
    ]


@dataclass(frozen=True, slots=True)
class SiteContext:
    """The camera whose zones apply (``--config --camera``) and the clock of a video's start."""

    camera: Camera | None
    tz: ZoneInfo | None
    start: datetime

    @classmethod
    def from_args(cls, args: argparse.Namespace, class_names: Sequence[str] = ()) -> SiteContext:
        start = datetime.now(UTC)
        if args.start:
            start = datetime.fromisoformat(args.start)
            if start.tzinfo is None:
                raise ScanError("--start needs a timezone offset, e.g. 2026-05-01T09:00:00+08:00")
        if not args.config:
            if args.camera:
                raise ScanError("--camera needs --config site.yaml")
            return cls(None, None, start)
        if not args.camera:
            raise ScanError("--config needs --camera ID (the camera whose zones to apply)")
        site = load_site(args.config, class_names=class_names or None)
        try:
            camera = site.camera(args.camera)
        except KeyError:
            known = ", ".join(c.id for c in site.cameras) or "none"
            raise ScanError(f"camera {args.camera!r} is not in {args.config} ({known})") from None
        return cls(camera, site.tz, start)


class Judge:
    """Turns inference results into violation dicts: still rules, or a camera's pipeline."""

    def __init__(self, info: ModelInfo, heads: Mapping[str, Head], context: SiteContext):
        self.info = info
        self.heads = heads
        self.thresholds = {name: head.threshold for name, head in heads.items()}
        self.camera = context.camera
        self.tz = context.tz
        self.start = context.start
        self.pipelines: dict[str, CameraPipeline] = {}

    def finish(self, source: str) -> None:
        """Forget a video's rule state once it has ended (a folder may hold many videos)."""
        self.pipelines.pop(source, None)

    def scene(self, result: InferenceResult, region: Region | None = None) -> dict[str, float]:
        return {name: float(head.score(result, region)) for name, head in self.heads.items()}

    def violations(
        self, sample: Sample, result: InferenceResult, scene: Mapping[str, float]
    ) -> list[dict[str, Any]]:
        h, w = sample.image.shape[:2]
        if self.camera is None:
            found = judge_still(
                result.detections, scene, (w, h), self.info.names, head_thresholds=self.thresholds
            )
        elif sample.ts is None:
            found = self._zones_still(result, (w, h))
        else:
            return self._pipeline(sample, result, (w, h))
        return [v.as_json() for v in found]

    def _zones_still(self, result: InferenceResult, size: tuple[int, int]) -> list[Violation]:
        """The still rules of each zone of the camera, judged on this one image."""
        assert self.camera is not None
        found: list[Violation] = []
        for zone in self.camera.zones:
            rules = {r: p for r, p in self.camera.zone_rules(zone).items() if r in STILL_RULES}
            if not rules:
                continue
            geometry = ZoneGeometry.of(zone.polygon)
            obs = self._observe(result, geometry, size, "garbage_overflow" in rules)
            for rule, params in rules.items():
                presence = EVALUATORS[rule](obs, params)
                if presence is not None and presence.boxes:
                    x1, y1, x2, y2 = _union(presence.boxes, size)
                    found.append(Violation(rule, presence.confidence, zone.id, (x1, y1, x2, y2)))
        return found

    def _observe(
        self,
        result: InferenceResult,
        geometry: ZoneGeometry,
        size: tuple[int, int],
        scored: bool,
    ) -> ZoneObservation:
        """One zone of a still: every object in it counts as stationary (as on a whole frame)."""
        det = result.detections
        labels = tuple(det.labels(self.info.names))
        idx = np.flatnonzero(geometry.boxes_in(det.xyxy, size))
        w, h = size
        zx1, zy1, zx2, zy2 = geometry.bbox
        return ZoneObservation(
            xyxy=det.xyxy[idx],
            confidence=det.confidence[idx],
            labels=tuple(labels[i] for i in idx),
            track_id=idx.astype(np.int64),
            displacement=np.zeros(len(idx), dtype=np.float32),
            observed_s=np.full(len(idx), np.inf, dtype=np.float32),
            new_object=np.ones(len(idx), dtype=bool),
            zone_box=(zx1 * w, zy1 * h, zx2 * w, zy2 * h),
            zone_area_px=float(geometry.area(size)),
            zone_polygon=np.asarray(geometry.polygon, np.float32) * np.asarray([w, h], np.float32),
            scene=self.scene(result, geometry.bbox) if scored else {},
            head_thresholds=self.thresholds,
            frame_xyxy=det.xyxy,
            frame_confidence=det.confidence,
            frame_labels=labels,
        )

    def _pipeline(
        self, sample: Sample, result: InferenceResult, size: tuple[int, int]
    ) -> list[dict[str, Any]]:
        pipeline = self.pipelines.get(sample.source)
        if pipeline is None:  # each video is its own timeline
            assert self.camera is not None and self.tz is not None
            pipeline = camera_pipeline(self.camera, self.tz, self.info.names, self.heads)
            self.pipelines[sample.source] = pipeline
        t = self.start + timedelta(seconds=sample.ts or 0.0)
        events = pipeline.process(
            t,
            size,
            result.detections,
            lambda region: self.scene(result, region),
            small_gray(sample.image),
        )
        # A frame lists what is in violation on it: every raised episode it shows, whether or
        # not the worker would send a raise or an update on it. It also lists every raise the
        # worker sends on it of an episode it does not show (one over, or whose dwell
        # completed, while the zone's schedule was off, raised when the schedule opens): that
        # raise makes a candidate, and no other frame lists it.
        shown = pipeline.seen(t)
        sent = {
            (ev.zone_id, ev.rule, ev.first_seen): ev.kind for ev in events if ev.kind != "clear"
        }
        keys: set[tuple[str, str, datetime]] = set()
        listed: list[dict[str, Any]] = []
        for s in shown:
            key = (s.zone_id, s.rule, s.first_seen)
            keys.add(key)
            dwell_s = (t - s.first_seen).total_seconds()
            listed.append(
                _listed(s.rule, s.zone_id, s.confidence, s.boxes, size, sent.get(key), dwell_s)
            )
        return listed + [
            _listed(ev.rule, ev.zone_id, ev.confidence, ev.boxes, size, "raise", ev.dwell_s)
            for ev in events
            if ev.kind == "raise" and (ev.zone_id, ev.rule, ev.first_seen) not in keys
        ]


def _listed(
    rule: str,
    zone_id: str,
    confidence: float,
    boxes: Sequence[Sequence[float]],
    size: tuple[int, int],
    event: str | None,
    dwell_s: float,
) -> dict[str, Any]:
    """A video frame's violation: a raised episode, its dwell verified."""
    return {
        "type": rule,
        "confidence": round(float(confidence), 4),
        "zone": zone_id,
        "bbox": [round(float(v), 1) for v in _union(boxes, size)],
        "dwell_verified": True,
        "event": event,
        "dwell_s": round(float(dwell_s), 1),
    }


def _union(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> tuple[float, ...]:
    if not boxes:
        return (0.0, 0.0, float(size[0]), float(size[1]))
    arr = np.asarray(boxes, dtype=np.float64)
    return (arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max())


def record(
    sample: Sample, result: InferenceResult, judge: Judge, info: ModelInfo, conf: float = 0.0
) -> dict[str, Any]:
    """The JSON record of one sample. ``detections`` lists the boxes at or above ``conf``
    (``--conf``) in every mode; the rules judge all the boxes the detector kept."""
    scene = judge.scene(result)
    h, w = sample.image.shape[:2]
    return {
        "source": sample.source,
        "frame": sample.frame,
        "ts": sample.ts,
        "width": w,
        "height": h,
        "detections": detections_json(objects(result.detections, conf), info.names),
        "scene": {k: round(v, 4) for k, v in scene.items()},
        "violations": judge.violations(sample, result, scene),
        "model": info.as_record(),
    }


# --- driver ------------------------------------------------------------------------------------


def chunks(items: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def scan_file(
    path: Path,
    backend: Backend,
    judge: Judge,
    fps: float,
    out: TextIO,
    as_stored: bool = False,
    conf: float = 0.0,
) -> int:
    """Scan one file; returns the number of records written. ``as_stored``: see read_still;
    ``conf``: see record."""
    written = 0
    try:
        for batch in chunks(samples(path, fps, as_stored), CHUNK):
            results = backend.infer([s.image for s in batch])
            for sample, result in zip(batch, results, strict=True):
                line = record(sample, result, judge, backend.info, conf)
                out.write(json.dumps(line) + "\n")
                written += 1
            out.flush()
    finally:
        judge.finish(str(path))
    return written


def _conf(conf: float, context: SiteContext) -> float:
    """The detector's confidence threshold: ``--conf``, or lower for a site's camera, whose
    tracker and rules get the weak boxes the worker keeps for them (the record still lists
    only the boxes at or above ``--conf``)."""
    if context.camera is None:
        return conf
    return min(conf, detector_conf([context.camera]))


def _refused_numbers(fps: float, conf: float) -> str | None:
    """Why ``--fps`` or ``--conf`` cannot be used (they parse nan and inf too), or None."""
    if not (math.isfinite(fps) and fps > 0):
        return f"--fps must be a positive number of frames per second, not {fps:g}"
    if not (math.isfinite(conf) and 0 < conf < 1):
        return f"--conf must be a confidence between 0 and 1 (both excluded), not {conf:g}"
    return None


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every source was scanned, 1 when some could not be read (or a given folder
    held no image or video), 2 on setup errors."""
    refused = _refused_numbers(args.fps, args.conf)
    if refused is not None:
        print(f"scan: {refused}", file=sys.stderr)
        return 2
    try:
        files, problems = expand(args.paths)
    except ScanError as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return 2
    try:
        # Checked whatever the backend, before the model loads: a misspelt folder is a
        # mistake on any backend, and ultralytics would otherwise run without a word.
        folder = heads_folder(args.heads)
        spec = resolve_model(args.model)
        context = SiteContext.from_args(args, class_names(spec))
        if args.backend == "openvino":
            spec = served_spec(spec)  # heads are keyed to the weights that run (a .pt's IR)
        heads = load_heads(model_info(spec), folder) if args.backend == "openvino" else {}
        if args.backend != "openvino":
            # Scene heads read intermediate feature maps, which only the OpenVINO path returns.
            log.warning("scan: scene heads need the openvino backend; garbage_overflow is off")
        if context.camera is not None:
            warn_missing_heads([context.camera], heads)
        nodes = tuple(dict.fromkeys(n for h in heads.values() for n in h.feature_nodes))
        backend = load_backend(spec, args.backend, nodes, conf=_conf(args.conf, context))
        judge = Judge(backend.info, heads, context)
    except (ScanError, SiteConfigError, ModelNotFoundError, MissingExtraError, ValueError) as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return 2
    except (ModelLoadError, OSError, RuntimeError) as exc:  # the model's files, its runtime
        what = "" if isinstance(exc, ModelLoadError) else "cannot load the model or the heads: "
        print(f"scan: {what}{exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"scan: {problem}", file=sys.stderr, flush=True)
    failed = len(problems)
    camera = context.camera is not None
    try:
        for number, path in enumerate(files, 1):
            print(f"scan: [{number}/{len(files)}] {path}", file=sys.stderr, flush=True)
            try:
                # A camera's stills are its frames: decoded as the worker does.
                count = scan_file(
                    path, backend, judge, args.fps, sys.stdout, as_stored=camera, conf=args.conf
                )
            except ScanError as exc:
                print(f"scan: {exc}", file=sys.stderr, flush=True)
                failed += 1
                continue
            print(f"scan: {path}: {count} frame(s)", file=sys.stderr, flush=True)
    finally:
        backend.close()
    return 1 if failed else 0
