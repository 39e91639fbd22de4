"""Evidence for camera candidates.

A candidate carries the clean frame exactly as received (the original JPEG bytes, so its
hash proves it came from the camera untouched), an annotated copy (boxes, zone, labels with
confidence, timestamp and camera id burned in), and the first-seen and latest frames that
prove the dwell. First-seen frames come from a small per-camera ring of recent clean frames
that is thinned evenly over time, so it covers long dwell times with bounded memory; a raise
reported after its last sighting may take them from the frames kept for its occupancy instead
(SightingFrames), when the ring has none within it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from gridpatrol.site import TYPE_NAMES

if TYPE_CHECKING:
    from gridpatrol.detectors.episodes import Episode

Image = npt.NDArray[np.uint8]
Box = Sequence[float]

# BGR colours.
_EVENT = (0, 0, 255)
_OTHER = (200, 200, 200)
_ZONE = (0, 220, 255)
_TEXT_BG = (0, 0, 0)


@dataclass(frozen=True)
class StoredFrame:
    """A received frame: the original bytes and their size, with the frame's timestamp."""

    t: datetime
    data: bytes
    width: int
    height: int


class FrameRing:
    """Recent clean frames of one camera, bounded in count and age.

    When full, the interior frame whose removal opens the smallest time gap is dropped, so the
    newest frames stay dense and older ones thin out evenly across ``horizon_s``. The newest
    ``keep_recent`` frames are never thinned.
    """

    def __init__(self, capacity: int = 32, horizon_s: float = 3600.0, keep_recent: int = 4):
        if capacity < keep_recent + 2:
            raise ValueError("capacity must exceed keep_recent by at least 2")
        self.capacity = capacity
        self.horizon_s = horizon_s
        self.keep_recent = keep_recent
        self._frames: list[StoredFrame] = []

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, frame: StoredFrame) -> None:
        if self._frames and frame.t < self._frames[-1].t:
            self._frames.clear()  # the camera clock went backwards: the history is not comparable
        self._frames.append(frame)
        oldest_allowed = frame.t.timestamp() - self.horizon_s
        while len(self._frames) > 1 and self._frames[0].t.timestamp() < oldest_allowed:
            self._frames.pop(0)
        if len(self._frames) > self.capacity:
            self._frames.pop(self._thin_index())

    def _thin_index(self) -> int:
        times = [f.t.timestamp() for f in self._frames]
        last = len(times) - self.keep_recent
        best, best_gap = 1, float("inf")
        for i in range(1, last):
            gap = times[i + 1] - times[i - 1]
            if gap < best_gap:
                best, best_gap = i, gap
        return best

    def at(self, t: datetime) -> StoredFrame | None:
        """The earliest frame at or after ``t`` (the occupancy already visible), else the
        newest frame before it."""
        for frame in self._frames:
            if frame.t >= t:
                return frame
        return self._frames[-1] if self._frames else None

    def latest(self) -> StoredFrame | None:
        return self._frames[-1] if self._frames else None

    def within(self, start: datetime, end: datetime) -> list[StoredFrame]:
        """The frames kept from ``start`` to ``end``, both included, oldest first."""
        return [f for f in self._frames if start <= f.t <= end]


class SightingFrames:
    """The frames of the first and the last sighting of each occupancy a rule may raise after
    its last sighting, by key (a zone and rule) and the occupancy's first sighting.

    A background rule of a scheduled zone raises a dwell completed while the schedule is off
    when it opens, maybe hours after the occupancy was last seen: the frame ring, thinned over
    that time, may keep no frame of it, neither for the clean frame nor for first_seen.
    Bounded: at most ``per_key`` occupancies of a key, the latest begun (its rule holds at most
    that many: those it has ended and the one it times), two frames each.
    """

    def __init__(self, per_key: int):
        if per_key < 1:
            raise ValueError("per_key must be at least 1")
        self.per_key = per_key
        # first_seen -> (frame of the first sighting, frame of the latest sighting)
        self._held: dict[tuple[str, str], dict[datetime, tuple[StoredFrame, StoredFrame]]] = {}

    def __len__(self) -> int:
        """The number of occupancies kept (two frames each)."""
        return sum(len(held) for held in self._held.values())

    def seen(self, key: tuple[str, str], first_seen: datetime, frame: StoredFrame) -> None:
        """``frame`` is the latest sighting of ``key``'s occupancy begun at ``first_seen``; the
        first one given of that occupancy stays its first sighting."""
        held = self._held.setdefault(key, {})
        first = held[first_seen][0] if first_seen in held else frame
        held[first_seen] = (first, frame)
        while len(held) > self.per_key:
            del held[min(held)]

    def _pair(
        self, key: tuple[str, str], first_seen: datetime, tolerance: timedelta
    ) -> tuple[StoredFrame, StoredFrame] | None:
        for began, pair in self._held.get(key, {}).items():
            if abs(began - first_seen) <= tolerance:
                return pair
        return None

    def get(
        self, key: tuple[str, str], first_seen: datetime, tolerance: timedelta
    ) -> StoredFrame | None:
        """The latest sighting kept for ``key``'s occupancy begun at ``first_seen`` (give or
        take ``tolerance``), if any."""
        pair = self._pair(key, first_seen, tolerance)
        return pair[1] if pair is not None else None

    def first(
        self, key: tuple[str, str], first_seen: datetime, tolerance: timedelta
    ) -> StoredFrame | None:
        """The first sighting kept for ``key``'s occupancy begun at ``first_seen`` (give or
        take ``tolerance``), if any."""
        pair = self._pair(key, first_seen, tolerance)
        return pair[0] if pair is not None else None

    def forget(self, drop: Callable[[tuple[str, str], datetime, StoredFrame], bool]) -> None:
        """Forget the occupancies for which ``drop(key, first_seen, latest frame)`` is true."""
        for key, held in list(self._held.items()):
            for began, (_, latest) in list(held.items()):
                if drop(key, began, latest):
                    del held[began]
            if not held:
                del self._held[key]

    def clear(self) -> None:
        self._held.clear()


@dataclass(frozen=True)
class EvidenceFile:
    """An image to upload and reference as ``kind`` once the outbox has its hash."""

    kind: str
    data: bytes
    captured_at: datetime
    width: int
    height: int

    @classmethod
    def of(cls, kind: str, frame: StoredFrame) -> EvidenceFile:
        return cls(kind, frame.data, frame.t, frame.width, frame.height)

    def item(self, sha256: str) -> dict[str, Any]:
        return evidence_item(sha256, self.kind, self.captured_at, self.width, self.height)


# Evidence larger than this is re-encoded to fit: the API refuses files over its own limit
# (10 MiB by default), which would leave the candidate incomplete for good.
EVIDENCE_MAX_BYTES = 8 << 20


def fit_evidence(f: EvidenceFile, max_bytes: int = EVIDENCE_MAX_BYTES) -> EvidenceFile:
    """``f`` unchanged when it is at most ``max_bytes``; otherwise re-encoded to fit, at
    JPEG quality 85, 70 or 50 at its own size, else halved until it fits (its width and height
    then say so). Unchanged too when it cannot be decoded."""
    if len(f.data) <= max_bytes:
        return f
    image = decode_jpeg(f.data)
    if image is None:
        return f
    for quality in (85, 70, 50):
        data = _jpeg(image, quality)
        if len(data) <= max_bytes:
            return replace(f, data=data)
    while True:
        h, w = image.shape[:2]
        image = np.asarray(
            cv2.resize(image, (max(w // 2, 1), max(h // 2, 1)), interpolation=cv2.INTER_AREA),
            dtype=np.uint8,
        )
        data = _jpeg(image, 70)
        if len(data) <= max_bytes or max(image.shape[:2]) == 1:
            return replace(f, data=data, width=image.shape[1], height=image.shape[0])


def _jpeg(image: Image, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding of an evidence frame failed")
    return bytes(buf.tobytes())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def evidence_item(
    sha256: str, kind: str, captured_at: datetime, width: int, height: int
) -> dict[str, Any]:
    return {
        "sha256": sha256,
        "kind": kind,
        "captured_at": captured_at.isoformat(),
        "width": width,
        "height": height,
    }


@dataclass(frozen=True)
class Label:
    """A box to draw, in pixels of the image being annotated."""

    box: Box
    text: str
    highlight: bool


_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Text scales never fall below these, so a 640×360 frame still gets labels about 10 px high
# (half the base scale alone gave 5 px glyphs there); lines stay proportional to the frame.
_LABEL_MIN_SCALE = 0.4
_HEADER_MIN_SCALE = 0.45
# A header wider than a narrow frame shrinks to fit, down to this (then its end is cut off).
_HEADER_FIT_MIN_SCALE = 0.3
_MARGIN = 4  # pixels between the header and the frame's edges

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive


def _text_size(text: str, scale: float) -> tuple[int, int, int, int]:
    """Width, height above the baseline, depth below it, and stroke thickness of ``text``."""
    thickness = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h, base, thickness


def _text_rect(shape: tuple[int, ...], text: str, x: int, top: int, scale: float) -> Rect:
    """The background of ``text`` whose top-left corner is wanted at (``x``, ``top``), moved
    left and up as needed so the whole text fits in the frame (when the frame is large enough)."""
    img_h, img_w = shape[:2]
    w, h, base, _ = _text_size(text, scale)
    x = max(0, min(x, img_w - w - 1))
    top = max(0, min(top, img_h - (h + 2 * base) - 1))
    return x, top, x + w, top + h + 2 * base


def _put_text(img: Image, text: str, rect: Rect, scale: float, color: Any) -> None:
    """Draw ``text`` on a black background filling ``rect`` (from :func:`_text_rect`)."""
    _, _, base, thickness = _text_size(text, scale)
    x0, y0, x1, y1 = rect
    cv2.rectangle(img, (x0, y0), (x1, y1), _TEXT_BG, -1)
    cv2.putText(img, text, (x0, y1 - base), _FONT, scale, color, thickness, cv2.LINE_AA)


def _overlap(a: Rect, b: Rect) -> int:
    """The area two inclusive rectangles share."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    return max(0, w) * max(0, h)


def _header_scale(width: int, text: str, scale: float) -> float:
    """The header's text scale: at least the floor, shrunk to fit a narrow frame's width."""
    header = max(_HEADER_MIN_SCALE, 0.7 * scale)
    room = max(width - 2 * _MARGIN, 0)
    text_w = _text_size(text, header)[0]
    # The text's width is not quite proportional to its scale (strokes, rounding): repeat,
    # each time a little smaller, until it fits or reaches the floor.
    while text_w > room and header > _HEADER_FIT_MIN_SCALE:
        header = max(_HEADER_FIT_MIN_SCALE, header * room / text_w - 0.01)
        text_w = _text_size(text, header)[0]
    return header


@dataclass(frozen=True)
class _Drawn:
    """A box as it will be drawn: corners inside the frame, line width, its label's place."""

    label: Label
    corners: Rect
    line: int
    text_rect: Rect
    text_scale: float

    @property
    def outline(self) -> Rect:
        x0, y0, x1, y1 = self.corners
        pad = (self.line + 1) // 2
        return x0 - pad, y0 - pad, x1 + pad, y1 + pad


def _layout(shape: tuple[int, ...], label: Label, scale: float) -> _Drawn:
    img_h, img_w = shape[:2]
    # Clipped to the last pixel, not to w/h: the backend clips boxes to [0, w], and a line
    # at x = w lies outside the frame, so a box touching the border lost that edge.
    x1, y1, x2, y2 = (round(float(v)) for v in label.box[:4])
    x1, x2 = (min(max(v, 0), img_w - 1) for v in (x1, x2))
    y1, y2 = (min(max(v, 0), img_h - 1) for v in (y1, y2))
    line = max(1, round((3 if label.highlight else 1) * scale))
    text_scale = max(_LABEL_MIN_SCALE, 0.5 * scale)
    _, h, base, _ = _text_size(label.text, text_scale)
    gap = (line + 1) // 2 + 1  # clear of the box's own line, which is drawn centred
    top = y1 - gap - (h + 2 * base)
    # Above the box; a box at the top of the frame has no room there, so just inside its top.
    x = x1
    if top < 0:
        x, top = x1 + gap, y1 + gap
    rect = _text_rect(shape, label.text, x, top, text_scale)
    return _Drawn(label, (x1, y1, x2, y2), line, rect, text_scale)


def _header_rect(drawn: Sequence[_Drawn], shape: tuple[int, ...], text: str, scale: float) -> Rect:
    """Top-left, unless the event's boxes or labels lie there: then the first corner free of
    them (bottom-left, top-right, bottom-right), or the one that covers least of them (and
    then least of the other boxes)."""
    img_h, img_w = shape[:2]
    _, h, base, _ = _text_size(text, scale)
    low = img_h - _MARGIN - (h + 2 * base) - 1
    # A corner on the right is moved left as far as the whole text needs (_text_rect).
    corners = [(_MARGIN, _MARGIN), (_MARGIN, low), (img_w, _MARGIN), (img_w, low)]
    rects = [_text_rect(shape, text, x, y, scale) for x, y in corners]

    def covered(rect: Rect, highlight: bool) -> int:
        return sum(
            _overlap(rect, r)
            for d in drawn
            if d.label.highlight == highlight
            for r in (d.outline, d.text_rect)
        )

    free = [r for r in rects if covered(r, True) == 0]
    if free:
        return free[0]
    return min(rects, key=lambda r: (covered(r, True), covered(r, False)))


def annotate(
    image: Image,
    *,
    labels: Iterable[Label],
    zone_polygon: Sequence[tuple[float, float]] | None,
    camera_id: str,
    t: datetime,
    tz: tzinfo,
    title: str,
    quality: int = 85,
) -> bytes:
    """Draw the zone, a header (camera id, local time, title) and the boxes; return a JPEG.

    The header goes where it hides none of the event's boxes and labels, and is drawn before
    the boxes, so the evidence is never painted over."""
    img = image.copy()
    h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 900.0)
    if zone_polygon:
        # Zone coordinates are fractions of the frame: 1.0 maps to the last pixel, not past it.
        pts = np.array(
            [[min(round(x * w), w - 1), min(round(y * h), h - 1)] for x, y in zone_polygon],
            dtype=np.int32,
        ).clip(0)
        cv2.polylines(img, [pts], True, _ZONE, max(1, round(2 * scale)), cv2.LINE_AA)
    # Context boxes first so the event's boxes are drawn on top.
    drawn = [_layout(img.shape, lb, scale) for lb in sorted(labels, key=lambda lb: lb.highlight)]
    stamp = t.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")
    header = f"{camera_id}  {stamp}  {title}"
    header_scale = _header_scale(w, header, scale)
    rect = _header_rect(drawn, img.shape, header, header_scale)
    _put_text(img, header, rect, header_scale, (255, 255, 255))
    for d in drawn:
        color = _EVENT if d.label.highlight else _OTHER
        x1, y1, x2, y2 = d.corners
        cv2.rectangle(img, (x1, y1), (x2, y2), color, d.line)
        _put_text(img, d.label.text, d.text_rect, d.text_scale, color)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of the annotated frame failed for camera {camera_id}")
    return bytes(buf.tobytes())


def title_for(type_: str, confidence: float) -> str:
    """The header line: English name (the Hershey font has no CJK glyphs) and confidence."""
    name = TYPE_NAMES.get(type_, (type_, type_))[1]
    return f"{name} {confidence:.2f}"


def description(type_: str, camera_name: str, zone_id: str, dwell_s: float) -> str:
    zh, en = TYPE_NAMES.get(type_, (type_, type_))
    where = camera_name or "camera"
    return (
        f"{zh}：{where} 区域 {zone_id} 持续 {dwell_s:.0f} 秒 / "
        f"{en}: zone {zone_id} at {where} for {dwell_s:.0f} s"
    )


def detection_block(
    *,
    model: str,
    model_version: str,
    model_sha256: str | None,
    score: float,
    boxes: Sequence[Box],
    track_ids: Sequence[int],
    zone_id: str,
    dwell_s: float,
    ended_at: datetime | None = None,
) -> dict[str, Any]:
    """The candidate's ``detection`` element; boxes in pixels of the clean frame."""
    block: dict[str, Any] = {
        "model": model,
        "model_version": model_version,
        "score": round(float(score), 4),
        "boxes": [[round(float(v), 1) for v in box[:4]] for box in boxes],
        "track_ids": [int(i) for i in track_ids],
        "zone_id": zone_id,
        "dwell_s": round(float(dwell_s), 1),
    }
    if model_sha256:
        block["model_sha256"] = model_sha256
    if ended_at is not None:
        block["ended_at"] = ended_at.isoformat()
    return block


def end_detection(
    ep: Episode, model: str | None = None, model_version: str = "", model_sha256: str | None = None
) -> dict[str, Any]:
    """An ending's ``detection``: no boxes, so those of the candidate's evidence stand (after
    a restart the worker no longer knows them). Without ``model`` (no model judged the end,
    e.g. a retired shard's file) the candidate keeps the model of its evidence."""
    block = detection_block(
        model=model or "",
        model_version=model_version,
        model_sha256=model_sha256,
        score=ep.best_confidence,
        boxes=(),
        track_ids=(),
        zone_id=ep.zone_id,
        dwell_s=ep.dwell_s,
        ended_at=ep.ended_at,
    )
    del block["boxes"], block["track_ids"]
    if model is None:
        del block["model"], block["model_version"]
    block["started_at"] = ep.started_at.isoformat()
    return block


def decode_jpeg(data: bytes, reduce: int = 1) -> Image | None:
    """Decode image bytes at 1/1, 1/2, 1/4 or 1/8 scale (the JPEG decoder's own DCT scaling).

    The pixels come as stored: an EXIF orientation tag is ignored, so the image has the
    JPEG's own width and height, which the frame header, the boxes and the clean evidence's
    size all refer to (OpenCV would otherwise turn a camera's Orientation=6 frame on its side).
    """
    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }
    img = cv2.imdecode(
        np.frombuffer(data, dtype=np.uint8), flags[reduce] | cv2.IMREAD_IGNORE_ORIENTATION
    )
    return None if img is None else np.asarray(img, dtype=np.uint8)


def reduction_for(width: int, height: int, imgsz: int) -> int:
    """The largest decode reduction that keeps the long side at or above the model input."""
    long_side = max(width, height)
    for factor in (4, 2):
        if long_side >= factor * imgsz:
            return factor
    return 1
