"""ByteTrack-style multi-object tracking in numpy, with time in seconds.

Two-stage association (Zhang et al., ByteTrack): confident detections are matched to every
live track first, then the low-confidence leftovers are matched to the tracks still unmatched
(occluded or blurred objects keep their id instead of spawning a new one). Matching is IoU
against a constant-velocity prediction, assigned greedily best-first, never across classes.
Lost tracks are kept for ``lost_s`` seconds, not frames: frames arrive irregularly (motion
gate, patrol cameras), so every duration here comes from the injected timestamps. A track seen
once waits ``unconfirmed_s`` (1 s at most ``lost_s``) for its second sighting, matched only
after the confirmed tracks: an object the detector misses on every other frame still becomes
one track, and a one-frame false positive takes no box another track could have.

Besides ids, the tracker keeps a short position history per track so rules can ask whether an
object is stationary: displacement measured relative to the object's own size, which works
at any distance from the camera. A walk straight away from or towards the camera moves the
box's centre little against its size, so a box that shrank while its top and bottom both rose
(or grew while both sank) counts as moved in depth, see :func:`_walked_in_depth`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gridpatrol.detectors.types import Detections

TrackState = Literal["new", "tracked", "lost"]

# Extrapolating a lost track far ahead makes it match the wrong object: cap the prediction.
_MAX_PREDICT_S = 1.0
# A velocity is measured over at least this long: a duplicate frame a millisecond later turns
# 2 px of jitter into 2000 px/s, and a 25 fps camera's jitter into speeds of tens of px/s.
_MIN_VELOCITY_DT = 0.05
# The predicted shift is at most this share of the box's width (height) across (down): jitter
# read as speed and carried over a long gap (a camera dropping from 25 fps to 1 fps) must not
# push a standing object's prediction off its box (shifted 0.4 of both sides, IoU 0.22) ...
_MAX_SHIFT = 0.4
# ... unless the object has covered more than that at its pace over its history of at least
# this long: a walker hidden for half a second behind a pole is where its steps took it.
_MIN_PACE_S = 0.5
# A box whose height's trend over the window changed it by at least this share of the larger
# fitted height, while its top edge's trend moved it by at least _DEPTH_TOP of that change the
# same way (up as it shrank, down as it grew), went away from or towards the camera ...
_DEPTH_SCALE = 0.1
_DEPTH_TOP = 0.25
# ... when that trend explains at least this share of the height's variance over at least
# _DEPTH_MIN_SAMPLES samples: a still person's box jitters 5-20 % in height from frame to frame,
# top edge too, and some pair of jittered samples would pass the two tests above.
_DEPTH_FIT = 0.6
_DEPTH_MIN_SAMPLES = 4


def iou_matrix(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Pairwise IoU of boxes a (N, 4) and b (M, 4) in xyxy, each at least a pixel wide and high.

    A box clipped to the frame edge can come with zero width or height: it would have no area,
    an IoU of 0 even with itself, and take a new track id every frame (never stationary). It is
    measured as the pixel it covers instead, as ``Track.size`` does, rather than matched by
    some other test or dropped: every confident detection still comes back tracked, with the
    coordinates it came with.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a, b = _at_least_a_pixel(a), _at_least_a_pixel(b)
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    iou: NDArray[np.float32] = (inter / np.maximum(union, 1e-9)).astype(np.float32)
    return iou


def cover_matrix(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Pairwise share of each box of b (M, 4) that lies inside each box of a (N, 4), (N, M).

    Boxes are measured as at least a pixel wide and high, as in :func:`iou_matrix`.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a, b = _at_least_a_pixel(a), _at_least_a_pixel(b)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    cover: NDArray[np.float32] = (_intersection(a, b) / area_b[None, :]).astype(np.float32)
    return cover


def _intersection(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Pairwise intersection areas of boxes a (N, 4) and b (M, 4), (N, M)."""
    # Coordinate by coordinate: a product over a trailing axis of length 2 is slow in numpy.
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter: NDArray[np.float32] = np.maximum(iw, 0) * np.maximum(ih, 0)
    return inter


def _at_least_a_pixel(boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    """The boxes with x2 / y2 moved out to at least one pixel past x1 / y1."""
    out = boxes.astype(np.float32, copy=True)
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1.0)
    return out


def match(
    iou: NDArray[np.float32], min_iou: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy assignment on IoU, best pair first; pairs below ``min_iou`` are not matches.

    With a minimum IoU of 0.2 or more the optimal (Hungarian) and greedy assignments differ
    only in contrived overlaps, and greedy needs nothing beyond numpy.
    """
    rows, cols = iou.shape
    pairs: list[tuple[int, int]] = []
    if rows and cols:
        flat = np.argsort(-iou, axis=None, kind="stable")
        used_r = np.zeros(rows, dtype=bool)
        used_c = np.zeros(cols, dtype=bool)
        for k in flat.tolist():
            i, j = divmod(k, cols)
            if iou[i, j] < min_iou:
                break
            if not used_r[i] and not used_c[j]:
                used_r[i] = used_c[j] = True
                pairs.append((i, j))
    done_r = {i for i, _ in pairs}
    done_c = {j for _, j in pairs}
    return (
        pairs,
        [i for i in range(rows) if i not in done_r],
        [j for j in range(cols) if j not in done_c],
    )


@dataclass
class Track:
    id: int
    class_id: int
    box: NDArray[np.float64]  # xyxy at last_t
    # Of the box's centre, (x, y) per second: the box keeps its last size. Moving each corner
    # on its own would extrapolate an edge suddenly hidden (a box 120 px wide becoming 45 px
    # as a car passes in front) into a box shrinking on.
    velocity: NDArray[np.float64]
    confidence: float
    state: TrackState
    first_t: float
    last_t: float
    hits: int = 1
    # (t, cx, cy) the velocity was last measured at: at least _MIN_VELOCITY_DT before the next.
    anchor: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # (t, cx, cy) samples, the oldest within history_s and always at least two.
    history: list[tuple[float, float, float]] = field(default_factory=list)
    # (top, bottom) of the box at each sample of ``history``, in the same order.
    extents: list[tuple[float, float]] = field(default_factory=list)

    def predict(self, t: float) -> NDArray[np.float64]:
        predicted: NDArray[np.float64] = _predict([self], t)[0].astype(np.float64)
        return predicted

    @property
    def centre(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2

    @property
    def size(self) -> float:
        """The larger side of the box: a scale that does not shrink for a person sitting down."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1], 1.0))


@dataclass(frozen=True)
class Motion:
    """How far each track moved recently, relative to its size."""

    # Max distance of the centre over the window / size; infinite for a track that walked away
    # from or towards the camera over it (see _walked_in_depth).
    displacement: NDArray[np.float32]
    observed_s: NDArray[np.float32]  # span of the history the displacement covers

    def stationary(self, max_displacement: float, min_observed_s: float) -> NDArray[np.bool_]:
        return (self.displacement <= max_displacement) & (self.observed_s >= min_observed_s)


@dataclass
class Tracker:
    """ByteTrack-style tracker; ``update`` is called once per frame with its timestamp.

    high_conf: detections at or above start new tracks and take part in the first stage.
    low_conf: detections between low and high only continue existing tracks.
    first_iou / second_iou: minimum IoU to match in the first / second stage.
    lost_s: how long an unmatched track is kept for re-association.
    unconfirmed_s: how long a track seen only once is kept (at most ``lost_s``); it takes only
      the confident detections left over by the tracks seen more than once.
    history_s: the window over which stationarity is measured.
    kept_cover: the share of a detection that must lie inside the last box of a track lost for
      longer than ``lost_s`` (which this tracker never keeps, a subclass's ``_expire`` may) for
      the track to take it back.

    Tracks lost for longer than ``lost_s`` are matched last: only to the confident detections
    no other track took, of their class, and lying within their last box (80 % of the
    detection inside it). A stall revealed bit by bit as a lorry drives off comes back as a
    box inside its old one, however little of it shows: by IoU its first part would start a
    new track, which then keeps the growing box. 0.8 lets a box of the old size come back
    shifted by a fifth of its width (a stall back in place jitters by a few pixels). A
    passer-by crossing the spot where a stationary object was lost keeps their own track,
    taken in the first stage, rather than taking the old one and its stationary history;
    only a passer-by first seen within the old box could take it.
    """

    high_conf: float = 0.45
    low_conf: float = 0.1
    first_iou: float = 0.2
    second_iou: float = 0.4
    lost_s: float = 3.0
    unconfirmed_s: float = 1.0
    history_s: float = 10.0
    kept_cover: float = 0.8
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    last_t: float | None = None

    def update(self, detections: Detections, t: float) -> Detections:
        """Associate this frame's detections; returns the tracked ones with ``tracker_id``.

        Low-confidence detections that continue no track are dropped, as in ByteTrack.
        """
        if self.last_t is not None and t < self.last_t:
            # A frame older than the last one (reordered delivery): treat it as simultaneous.
            t = self.last_t
        previous = self.last_t
        self._expire(t)
        self.last_t = t
        conf = detections.confidence
        high = np.flatnonzero(conf >= self.high_conf)
        low = np.flatnonzero((conf >= self.low_conf) & (conf < self.high_conf))
        assigned = np.full(len(detections), -1, dtype=np.int64)

        # Tracks lost for longer than lost_s (only a subclass keeps them) are matched last, and
        # tracks seen once that missed a frame since after the confirmed ones: a false positive
        # lingering where a followed object arrives must not take its box.
        kept = [i for i, tr in enumerate(self.tracks) if self._kept(tr, t)]
        waiting = [
            i
            for i, tr in enumerate(self.tracks)
            if tr.state == "new" and previous is not None and tr.last_t < previous
        ]
        later = set(kept) | set(waiting)
        live = [i for i in range(len(self.tracks)) if i not in later]
        pairs, rest, new_high = self._associate(detections, high, live, t, self.first_iou)
        self._apply(detections, pairs, assigned, t)
        # Second stage: only tracks that were being followed (not already lost) pick up weak boxes.
        followed = [i for i in rest if self.tracks[i].state != "lost"]
        pairs2, unmatched, _ = self._associate(detections, low, followed, t, self.second_iou)
        self._apply(detections, pairs2, assigned, t)
        # Then tracks seen once, before a miss, take confident boxes no confirmed track took.
        high_left = np.asarray(new_high, dtype=np.intp)
        pairs_w, _, new_high = self._associate(detections, high_left, waiting, t, self.first_iou)
        self._apply(detections, pairs_w, assigned, t)
        # Last: tracks kept past lost_s take back boxes within their old one that no other took.
        high_left = np.asarray(new_high, dtype=np.intp)
        pairs3, _, new_high = self._associate(
            detections, high_left, kept, t, self.kept_cover, cover_matrix
        )
        self._apply(detections, pairs3, assigned, t)

        for i in set(unmatched) | (set(rest) - set(followed)):
            track = self.tracks[i]
            # A followed track waits as lost; one seen once stays unconfirmed (see _expire).
            if track.hits > 1 and track.state != "lost":
                track.state = "lost"
                self._lose(track)
        for d in new_high:
            assigned[d] = self._start(detections, int(d), t)
        keep = assigned >= 0
        return detections[keep].with_tracker_id(assigned[keep])

    def motion(self, track_ids: NDArray[np.int64]) -> Motion:
        """Displacement and observed span of the given tracks (0 / 0 for unknown ids)."""
        by_id = {tr.id: tr for tr in self.tracks}
        disp = np.zeros(len(track_ids), dtype=np.float32)
        span = np.zeros(len(track_ids), dtype=np.float32)
        for k, tid in enumerate(track_ids.tolist()):
            track = by_id.get(tid)
            if track is None or len(track.history) < 2:
                continue
            # A few dozen samples per track: plain floats beat building an array per track.
            t_now, cx, cy = track.history[-1]
            far = max(math.hypot(x - cx, y - cy) for _, x, y in track.history)
            walked = _walked_in_depth(track.history, track.extents)
            disp[k] = math.inf if walked else far / track.size
            span[k] = t_now - track.history[0][0]
        return Motion(disp, span)

    def states(self) -> dict[int, TrackState]:
        return {tr.id: tr.state for tr in self.tracks}

    # -- internals ---------------------------------------------------------------------------

    def _kept(self, track: Track, t: float) -> bool:
        """Whether ``track`` is lost for longer than ``lost_s`` (kept by a subclass)."""
        return track.state == "lost" and t - track.last_t > self.lost_s

    def _expire(self, t: float) -> None:
        """Forget lost tracks unmatched for longer than ``lost_s`` (unless ``_keep`` keeps
        them) and tracks seen once unmatched for longer than ``unconfirmed_s``; called before
        ``last_t`` moves on to ``t``. A track seen once on the last frame is kept for this one
        however long ago that was: a camera slower than ``unconfirmed_s`` confirms tracks."""
        wait = min(self.unconfirmed_s, self.lost_s)
        previous = t if self.last_t is None else self.last_t
        self.tracks = [
            tr
            for tr in self.tracks
            if not (tr.state == "new" and tr.last_t < previous and t - tr.last_t > wait)
            and not (tr.state == "lost" and t - tr.last_t > self.lost_s and not self._keep(tr, t))
        ]

    def _keep(self, track: Track, t: float) -> bool:
        """Whether to keep ``track``, lost for longer than ``lost_s``: never here (a subclass
        may, see ``kept_cover``)."""
        return False

    def _lose(self, track: Track) -> None:
        """Called as a followed track turns lost: a subclass that keeps lost tracks judges them
        once, here, rather than on every frame they stay kept."""

    def _associate(
        self,
        detections: Detections,
        det_idx: NDArray[np.intp],
        track_idx: list[int],
        t: float,
        min_iou: float,
        overlap: Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[np.float32]] = (
            iou_matrix
        ),
    ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Match detections ``det_idx`` to tracks ``track_idx`` by ``overlap`` (IoU unless
        given) of at least ``min_iou``; returns original indices."""
        if not track_idx or len(det_idx) == 0:
            return [], list(track_idx), [int(d) for d in det_idx]
        tracks = [self.tracks[i] for i in track_idx]
        iou = overlap(_predict(tracks, t), detections.xyxy[det_idx])
        classes = np.asarray([tr.class_id for tr in tracks])
        iou[classes[:, None] != detections.class_id[det_idx][None, :]] = 0.0
        pairs, rest_t, rest_d = match(iou, min_iou)
        return (
            [(track_idx[i], int(det_idx[j])) for i, j in pairs],
            [track_idx[i] for i in rest_t],
            [int(det_idx[j]) for j in rest_d],
        )

    def _apply(
        self,
        detections: Detections,
        pairs: list[tuple[int, int]],
        assigned: NDArray[np.int64],
        t: float,
    ) -> None:
        for ti, di in pairs:
            track = self.tracks[ti]
            track.box = detections.xyxy[di].astype(np.float64)
            t0, x0, y0 = track.anchor
            if t - t0 >= _MIN_VELOCITY_DT:
                # Smoothed velocity: detections jitter by a few pixels from frame to frame.
                cx, cy = track.centre
                step = np.asarray([cx - x0, cy - y0]) / (t - t0)
                track.velocity = 0.5 * track.velocity + 0.5 * step
                track.anchor = (t, cx, cy)
            track.last_t = t
            track.confidence = float(detections.confidence[di])
            track.hits += 1
            track.state = "tracked"
            self._remember(track, t)
            assigned[di] = track.id

    def _remember(self, track: Track, t: float) -> None:
        cx, cy = track.centre
        hist, extents = track.history, track.extents
        extent = (float(track.box[1]), float(track.box[3]))
        if len(hist) >= 2 and t - hist[-2][0] < self.history_s / 20:
            # Enough samples for this stretch already: keep the newest position only.
            hist[-1] = (t, cx, cy)
            extents[-1] = extent
        else:
            hist.append((t, cx, cy))
            extents.append(extent)
        while len(hist) > 2 and t - hist[1][0] >= self.history_s:
            hist.pop(0)
            extents.pop(0)

    def _start(self, detections: Detections, di: int, t: float) -> int:
        track = Track(
            id=self.next_id,
            class_id=int(detections.class_id[di]),
            box=detections.xyxy[di].astype(np.float64),
            velocity=np.zeros(2),
            confidence=float(detections.confidence[di]),
            state="new",
            first_t=t,
            last_t=t,
        )
        track.anchor = (t, *track.centre)
        self._remember(track, t)
        self.next_id += 1
        self.tracks.append(track)
        return track.id


def _predict(tracks: list[Track], t: float) -> NDArray[np.float32]:
    """Where the boxes of ``tracks`` are expected at ``t``, (N, 4): moved along the velocity of
    their centre for at most _MAX_PREDICT_S, by at most _MAX_SHIFT of their width and height or
    what their pace (see _pace) covers in that time, whichever is more."""
    boxes = np.array([tr.box for tr in tracks])
    velocity = np.array([tr.velocity for tr in tracks])
    dt = np.clip(t - np.array([tr.last_t for tr in tracks]), 0.0, _MAX_PREDICT_S)
    pace = np.array([_pace(tr) for tr in tracks]) * dt[:, None]
    limit = np.maximum(_MAX_SHIFT * np.maximum(boxes[:, 2:] - boxes[:, :2], 0.0), pace)
    shift = np.clip(velocity * dt[:, None], -limit, limit)
    predicted: NDArray[np.float32] = (boxes + np.tile(shift, 2)).astype(np.float32)
    return predicted


def _walked_in_depth(
    history: list[tuple[float, float, float]], extents: list[tuple[float, float]]
) -> bool:
    """Whether the box went away from or towards the camera over the window: ``extents``
    ((top, bottom) per sample, at the times of ``history``) follow such a trend.

    Seen from a camera above head height, a person walking away shrinks while both feet and
    head rise in the image (towards the horizon), and grows while both sink walking closer: the
    top edge moves the same way as the height changes, by (camera height / person height - 1)
    times that change, at least _DEPTH_TOP of it from 1.25 person heights up (2.1 m). The
    centre moves less than half a box in seconds of such a walk. Someone sitting down or
    bending over shrinks while the top sinks and the feet stay; standing up, they grow while
    the top rises; a passer-by hiding the legs shrinks the box from below while the top stays:
    none of these is a walk, and swaying barely changes the height at all. The trends are
    least-squares lines over the whole window, not any two samples: a still person's jittered
    box has some pair of samples that looks like a step in depth, but no line that fits.
    """
    n = len(extents)
    if n < _DEPTH_MIN_SAMPLES:
        return False
    # A few dozen samples per track: plain floats beat building an array per track.
    ts = [t for t, _, _ in history]
    tops = [top for top, _ in extents]
    heights = [max(bottom - top, 1.0) for top, bottom in extents]
    t_mean, top_mean, h_mean = sum(ts) / n, sum(tops) / n, sum(heights) / n
    dts = [t - t_mean for t in ts]
    var_t = sum(d * d for d in dts)
    var_h = sum((h - h_mean) ** 2 for h in heights)
    if var_t <= 0.0 or var_h <= 0.0:
        return False
    slope_h = sum(d * (h - h_mean) for d, h in zip(dts, heights, strict=True)) / var_t
    slope_top = sum(d * (top - top_mean) for d, top in zip(dts, tops, strict=True)) / var_t
    grown = slope_h * (ts[-1] - ts[0])
    larger = max(h_mean + slope_h * dts[0], h_mean + slope_h * dts[-1])
    explained = slope_h * slope_h * var_t / var_h
    return (
        abs(grown) >= _DEPTH_SCALE * larger
        and slope_top / slope_h >= _DEPTH_TOP
        and explained >= _DEPTH_FIT
    )


def _pace(track: Track) -> tuple[float, float]:
    """How far the track's centre went across and down per second over its whole history, if
    that spans _MIN_PACE_S: jitter averages out over it, steps do not."""
    if not track.history:
        return 0.0, 0.0
    (t0, x0, y0), (t1, x1, y1) = track.history[0], track.history[-1]
    span = t1 - t0
    if span < _MIN_PACE_S:
        return 0.0, 0.0
    return abs(x1 - x0) / span, abs(y1 - y0) / span
