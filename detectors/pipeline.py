"""Per-camera rule pipeline: tracking → zones → schedules → background → rules → events.

:class:`CameraPipeline` holds all the state of one camera (tracker, per-zone background
models, one episode per (zone, rule)) and turns each inferred frame into rule events. It does
no I/O and reads no clock: the frame timestamp is the time. :func:`judge_still` applies the
rules that can judge a single image, on the whole frame, with default parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from gridpatrol.detectors import background as bg
from gridpatrol.detectors.episodes import Occupancy
from gridpatrol.detectors.rules import (
    EVALUATORS,
    STATIONARY_MIN_S,
    Box,
    Presence,
    RuleState,
    Transition,
    ZoneObservation,
    crowd_gathering,
    garbage_overflow,
    step,
    street_vending,
)
from gridpatrol.detectors.tracking import Motion, Track, Tracker, iou_matrix
from gridpatrol.detectors.types import Detections
from gridpatrol.detectors.zones import ZoneGeometry, schedule_active
from gridpatrol.site import (
    DETECTING_RULES,
    PATROL_VISITS,
    Camera,
    CrowdGatheringParams,
    GarbageOverflowParams,
    IllegalParkingParams,
    NonMotorParkingParams,
    RuleParams,
    ShopFrontParams,
    StaticForegroundParams,
    StreetVendingParams,
    Zone,
)

log = logging.getLogger(__name__)

EventKind = Literal["raise", "update", "clear"]
SceneFn = Callable[[tuple[float, float, float, float]], Mapping[str, float]]
# Boxes this confident are objects: they are drawn on evidence and keep their pixels out of
# the background model. Weaker ones, down to the tracker's low_conf, mostly keep tracks alive.
OBJECT_CONF = 0.25
# The detector keeps no box below this however low a rule's min_confidence: weaker ones are
# noise, and thousands of them would slow the detector's NMS.
MIN_BOX_CONF = 0.01
# Rules that can judge one still image without a zone or a learned background.
STILL_RULES = ("street_vending", "crowd_gathering", "garbage_overflow")


@dataclass(frozen=True)
class RuleEvent:
    """A rule's episode transition; ``boxes`` in pixels of the frame, times timezone-aware."""

    kind: EventKind
    rule: str
    zone_id: str
    t: datetime
    confidence: float
    dwell_s: float
    boxes: tuple[Box, ...]
    track_ids: tuple[int, ...]
    first_seen: datetime
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sighting:
    """A raised episode whose condition a frame shows: what it shows, and since when the
    episode lasts (its dwell verified, its candidate raised)."""

    rule: str
    zone_id: str
    confidence: float
    boxes: tuple[Box, ...]
    first_seen: datetime


@dataclass(frozen=True)
class Violation:
    """A violation judged on a single image (``gridpatrol scan``)."""

    type: str
    confidence: float
    zone: str | None = None
    bbox: Box = (0.0, 0.0, 0.0, 0.0)
    dwell_verified: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "confidence": round(self.confidence, 4),
            "zone": self.zone,
            "bbox": [round(v, 1) for v in self.bbox],
            "dwell_verified": self.dwell_verified,
        }


@dataclass
class _ZoneRuntime:
    zone: Zone
    geometry: ZoneGeometry
    rules: dict[str, RuleParams]
    states: dict[str, RuleState] = field(default_factory=dict)
    # One background model per learning time: shop fronts and piled materials in one zone
    # each absorb at their own rate.
    bg_params: tuple[bg.BackgroundParams, ...] = ()
    backgrounds: dict[float, bg.BackgroundState] = field(default_factory=dict)
    # learn_s of models restored without the polygon they were learned for (saved by a version
    # before it was kept): taken back on the old rule, if the first crop has their shape.
    unsure: set[float] = field(default_factory=set)

    @property
    def needs_scene(self) -> bool:
        return "garbage_overflow" in self.rules


# A zone's static foreground, with the crop origin and the small frame size it refers to.
Foreground = tuple[bg.StaticForeground, tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class _Frame:
    """One frame's detections as the zones read them."""

    tracked: Detections  # with tracker ids: what a rule judges inside a zone
    labels: tuple[str, ...]
    motion: Motion
    # Every box of the frame, tracked or not: what may stand in front of a zone. The tracker
    # drops weak boxes that continue no track, and a camera whose only rule is
    # garbage_overflow starts tracks at 0.45 only, yet its occluders count from min_confidence.
    boxes: Detections
    box_labels: tuple[str, ...]


def _static(found: bg.StaticForeground, frame_size: tuple[int, int]) -> tuple[float, Box | None]:
    """Static-foreground fraction and its box in frame pixels."""
    if found.bbox is None:
        return found.fraction, None
    w, h = frame_size
    bx1, by1, bx2, by2 = found.bbox
    return found.fraction, (float(bx1 * w), float(by1 * h), float(bx2 * w), float(by2 * h))


def _with_static(
    obs: ZoneObservation, fg: Foreground, frame_size: tuple[int, int]
) -> ZoneObservation:
    """The observation as seen against one particular background model."""
    fraction, box = _static(fg[0], frame_size)
    return replace(obs, static_fraction=fraction, static_bbox=box)


def _union(boxes: NDArray[np.float32]) -> Box:
    return (
        float(boxes[:, 0].min()),
        float(boxes[:, 1].min()),
        float(boxes[:, 2].max()),
        float(boxes[:, 3].max()),
    )


# Rules whose min_confidence picks detections: the tracked ones, and garbage_overflow's
# occluders, which it reads from the frame's detections (piled_materials reads none).
FRAME_DETECTING_RULES = (*DETECTING_RULES, "garbage_overflow")


def _rule_floors(camera: Camera, rules: Sequence[str] = DETECTING_RULES) -> list[float]:
    """The ``min_confidence`` of each of the camera's enabled ``rules``."""
    return [
        p.min_confidence
        for z in camera.zones
        for name, p in z.rules.enabled().items()
        if name in rules
    ]


def detector_conf(cameras: Iterable[Camera]) -> float:
    """The confidence the detector must keep boxes from for ``cameras``: the tracker's weak
    boxes (they keep tracks alive), and a lower ``min_confidence`` of a rule that reads
    detections (MIN_BOX_CONF at least)."""
    floors = [f for camera in cameras for f in _rule_floors(camera, FRAME_DETECTING_RULES)]
    return max(min([Tracker.low_conf, *floors]), MIN_BOX_CONF)


def objects(detections: Detections, conf: float = OBJECT_CONF) -> Detections:
    """The detections confident enough to be objects."""
    return detections[detections.confidence >= conf]


def _bg_params(
    rules: Mapping[str, RuleParams], frame_interval_s: float
) -> tuple[bg.BackgroundParams, ...]:
    """The zone's background models, fastest learner first.

    One frame teaches the model at most a few of the camera's configured frame intervals (a
    patrol camera's visits are far apart) or of the gaps the model sees between its frames
    (a camera slower than configured), never the whole of a silence before it.
    """
    learn = {p.learn_s for p in rules.values() if isinstance(p, StaticForegroundParams)}
    step = max(bg.BackgroundParams.max_step_s, PATROL_VISITS * frame_interval_s)
    return tuple(bg.BackgroundParams(learn_s=t, max_step_s=step) for t in sorted(learn))


# At most this many tracks per camera are kept lost past lost_s, the longest unseen dropped
# first: with a week's clear_s, every stationary object that ever vanished in place would be
# kept, matched and judged on every frame (900 tracks, 30 ms a frame after 100 minutes).
MAX_KEPT_TRACKS = 64
# A kept track whose place a stationary live track of its class covers this much (IoU) is
# dropped: what stands there now is another object, or the same one under a new id.
_TAKEN_IOU = 0.5


@dataclass
class _StillTracker(Tracker):
    """A tracker that keeps a lost track stationary when last seen for up to ``still_lost_s``.

    A vendor and their table hidden by a lorry for longer than ``lost_s`` come back in place:
    matched to their old tracks, they are stationary at once, as before the occlusion. As new
    tracks they would be stationary only ``STATIONARY_MIN_S`` after reappearing, and that
    delay added to the occlusion could exceed the episode's ``gap_s`` and restart its dwell.
    Moving tracks still expire after ``lost_s``, so passers-by do not pile up. A track kept
    past ``lost_s`` takes back only a confident box of its class within its last one that no
    other track took (see :class:`Tracker`): a stall a lorry shows bit by bit as it drives off
    comes back on it, a passer-by crossing the spot keeps their own track, not its history.

    Whether a track was stationary is judged once, when it is lost (its history does not
    change while lost). Kept tracks are dropped once a stationary live track of their class
    covers their place (IoU 0.5; a passer-by does not), and beyond ``max_kept`` the longest
    unseen go first.
    """

    still_lost_s: float = 0.0
    still_displacement: float = 0.0
    max_kept: int = MAX_KEPT_TRACKS
    # Ids of the lost tracks that were stationary when lost.
    still_ids: set[int] = field(default_factory=set)

    def update(self, detections: Detections, t: float) -> Detections:
        tracked = super().update(detections, t)
        self._drop_taken(self.last_t if self.last_t is not None else t)
        return tracked

    def _lose(self, track: Track) -> None:
        if self.still_lost_s > self.lost_s and self._stationary([track])[0]:
            self.still_ids.add(track.id)
        else:
            self.still_ids.discard(track.id)

    def _keep(self, track: Track, t: float) -> bool:
        return track.id in self.still_ids and t - track.last_t <= self.still_lost_s

    def _expire(self, t: float) -> None:
        super()._expire(t)
        kept = sorted((tr for tr in self.tracks if self._kept(tr, t)), key=lambda tr: tr.last_t)
        if len(kept) > self.max_kept:
            self._drop({tr.id for tr in kept[: len(kept) - self.max_kept]})
        self.still_ids &= {tr.id for tr in self.tracks}

    def _drop_taken(self, t: float) -> None:
        """Drop the kept tracks whose place a stationary track seen at ``t`` now covers."""
        kept = [tr for tr in self.tracks if self._kept(tr, t)]
        live = [tr for tr in self.tracks if tr.last_t == t]
        if not kept or not live:
            return
        iou = iou_matrix(
            np.asarray([tr.box for tr in kept], np.float32),
            np.asarray([tr.box for tr in live], np.float32),
        )
        same = np.asarray([tr.class_id for tr in kept])[:, None] == np.asarray(
            [tr.class_id for tr in live]
        )
        over = (iou >= _TAKEN_IOU) & same
        if not over.any():
            return
        # Judged only for the live tracks over a kept one: most frames have none.
        near = np.flatnonzero(over.any(axis=0))
        still = np.zeros(len(live), dtype=bool)
        still[near] = self._stationary([live[j] for j in near.tolist()])
        self._drop({tr.id for tr, row in zip(kept, over, strict=True) if (row & still).any()})

    def _stationary(self, tracks: list[Track]) -> NDArray[np.bool_]:
        ids = np.asarray([tr.id for tr in tracks], dtype=np.int64)
        return self.motion(ids).stationary(self.still_displacement, STATIONARY_MIN_S)

    def _drop(self, ids: set[int]) -> None:
        if ids:
            self.tracks = [tr for tr in self.tracks if tr.id not in ids]
            self.still_ids -= ids


# The rules that judge whether objects are stationary.
_STATIONARY_PARAMS = (
    StreetVendingParams,
    IllegalParkingParams,
    NonMotorParkingParams,
    ShopFrontParams,
)


def _still_tracking(camera: Camera) -> tuple[float, float]:
    """How long to keep a lost stationary track, and the displacement that is stationary: the
    longest ``clear_s`` (at least ``gap_s``) and the largest ``max_displacement`` of the
    camera's rules that judge stationary objects (0, 0 without such a rule)."""
    rules = [
        p
        for z in camera.zones
        for p in camera.zone_rules(z).values()
        if isinstance(p, _STATIONARY_PARAMS)
    ]
    if not rules:
        return 0.0, 0.0
    return (
        max(max(p.gap_s, p.clear_s) for p in rules),
        max(p.max_displacement for p in rules),
    )


class CameraPipeline:
    """All rule state of one camera; call :meth:`process` once per inferred frame.

    ``names`` are the model's class names (index = class id). ``head_thresholds`` are the
    decision thresholds of the loaded scene heads (``garbage_overflow`` uses its head's
    threshold unless the zone overrides it; 0.5 when the head is unknown).
    """

    def __init__(
        self,
        camera: Camera,
        tz: ZoneInfo,
        names: Sequence[str],
        *,
        head_thresholds: Mapping[str, float] | None = None,
        object_conf: float = 0.0,
    ) -> None:
        self.camera = camera
        # Weaker boxes (a detector run below OBJECT_CONF for the tracker) are no objects.
        self.object_conf = object_conf
        self.tz = tz
        self.names = tuple(names)
        self.head_thresholds = dict(head_thresholds or {})
        # Patrol cameras are seen every interval_s: keep tracks (and the stationarity window)
        # across a few intervals so a parked car keeps its id between visits.
        interval = camera.frame_interval_s
        # An object a rule would accept must be able to start a track. A stationary one hidden
        # for a while keeps its track as long as an episode survives its absence.
        still_lost_s, still_displacement = _still_tracking(camera)
        self.tracker: Tracker = _StillTracker(
            high_conf=min([Tracker.high_conf, *_rule_floors(camera)]),
            lost_s=max(3.0, PATROL_VISITS * interval),
            # A car the detector misses on every other frame waits for its next sighting.
            unconfirmed_s=max(1.0, PATROL_VISITS * interval),
            history_s=max(10.0, PATROL_VISITS * interval),
            still_lost_s=still_lost_s,
            still_displacement=still_displacement,
        )
        self.zones = [
            _ZoneRuntime(
                zone=z,
                geometry=ZoneGeometry.of(z.polygon),
                rules=camera.zone_rules(z),
                bg_params=_bg_params(z.rules.enabled(), interval),
            )
            for z in camera.zones
        ]

    @property
    def needs_gray(self) -> bool:
        """Whether a zone keeps a background model, which needs the small grayscale copy."""
        return any(zr.bg_params for zr in self.zones)

    def process(
        self,
        t: datetime,
        frame_size: tuple[int, int],
        detections: Detections,
        scene_fn: SceneFn | None = None,
        gray_small: NDArray[np.uint8] | None = None,
    ) -> list[RuleEvent]:
        """Run tracking and every zone rule on one frame.

        t: the frame timestamp (timezone-aware). frame_size: (width, height) of the image the
        detection boxes refer to. scene_fn: scene-head scores of a normalized region; called
        only for active zones with ``garbage_overflow``. gray_small: a small grayscale copy of
        the whole frame (e.g. 160×90) for the background model of shop-front / piled-materials
        zones; None leaves those zones without static foreground.
        """
        if t.tzinfo is None:
            raise ValueError("CameraPipeline.process needs a timezone-aware timestamp")
        ts = t.timestamp()
        tracked = self.tracker.update(detections, ts)
        assert tracked.tracker_id is not None
        frame = _Frame(
            tracked=tracked,
            labels=tuple(tracked.labels(self.names)),
            motion=self.tracker.motion(tracked.tracker_id),
            boxes=detections,
            box_labels=tuple(detections.labels(self.names)),
        )
        sure = objects(detections, self.object_conf)
        events: list[RuleEvent] = []
        for zr in self.zones:
            fgs = self._backgrounds(zr, ts, frame_size, sure, gray_small)
            active = schedule_active(zr.zone.schedule, t, self.tz)
            obs = None
            if active or zr.bg_params:
                # The background model learns whatever the schedule: its rules judge every frame,
                # or a pile left while the schedule is off would be learned before it opens.
                fg = next(iter(fgs.values()), None)
                obs = self._observe(zr, frame_size, frame, fg, scene_fn if active else None)
            for rule, params in zr.rules.items():
                background = isinstance(params, StaticForegroundParams)
                seen = obs if active or background else None
                if seen is not None and isinstance(params, StaticForegroundParams):
                    # Without a grayscale frame the zone has no model: no static foreground.
                    found = fgs.get(params.learn_s)
                    seen = seen if found is None else _with_static(seen, found, frame_size)
                presence = EVALUATORS[rule](seen, params) if seen is not None else None
                # Outside the schedule a background rule reports nothing until it opens; the
                # other rules see nothing, and an episode of theirs clears.
                state, transitions = step(
                    zr.states.get(rule, RuleState()), presence, ts, params, active or not background
                )
                zr.states[rule] = state
                events.extend(self._event(t, zr.zone.id, rule, tr) for tr in transitions)
        for ev in events:
            log.info(
                "camera %s zone %s %s %s (dwell %.0f s, confidence %.2f)",
                self.camera.id, ev.zone_id, ev.rule, ev.kind, ev.dwell_s, ev.confidence,
            )  # fmt: skip
        return events

    def backgrounds(self) -> dict[tuple[str, float], bg.BackgroundState]:
        """(zone, learn_s) → the zone's background model with the zone's polygon, for saving
        across a restart. A model restored without its polygon that has seen no frame yet is
        given as it came, still without one."""
        return {
            (zr.zone.id, learn_s): (
                state if learn_s in zr.unsure else replace(state, polygon=zr.geometry.polygon)
            )
            for zr in self.zones
            for learn_s, state in zr.backgrounds.items()
        }

    def restore_backgrounds(self, saved: Mapping[tuple[str, float], bg.BackgroundState]) -> int:
        """Take back saved models of zones that still have one of that learn_s and the same
        polygon; how many. A zone moved or reshaped (or a deleted zone's id given to another)
        learns anew: the saved model is of other pixels. A model saved without its polygon
        (by an earlier version) is taken back on the old rule: kept if the zone's first crop
        has its shape (see ``_old_rule``)."""
        restored = 0
        for zr in self.zones:
            for params in zr.bg_params:
                state = saved.get((zr.zone.id, params.learn_s))
                if state is None:
                    continue
                if state.polygon is None:
                    zr.unsure.add(params.learn_s)
                elif state.polygon != zr.geometry.polygon:
                    log.warning(
                        "camera %s zone %s: the zone moved or changed shape since its background "
                        "model was saved; learned anew",
                        self.camera.id,
                        zr.zone.id,
                    )
                    continue
                zr.backgrounds[params.learn_s] = state
                restored += 1
        return restored

    def _old_rule(
        self, zr: _ZoneRuntime, learn_s: float, state: bg.BackgroundState, shape: tuple[int, ...]
    ) -> bg.BackgroundState | None:
        """A model saved without its polygon, met by the zone's first crop: kept when the crop
        has its shape, as before the polygon was kept (the model is then saved with the zone's
        polygon), else learned anew."""
        zr.unsure.discard(learn_s)
        if state.background.shape == shape:
            log.info(
                "camera %s zone %s: background model saved without its zone's polygon taken "
                "back on the old rule (its crop has the zone's shape); saved with the polygon "
                "from now on",
                self.camera.id,
                zr.zone.id,
            )
            return state
        log.warning(
            "camera %s zone %s: background model saved without its zone's polygon is of "
            "another crop shape; learned anew",
            self.camera.id,
            zr.zone.id,
        )
        return None

    def carry_backgrounds(self, old: CameraPipeline, shift_s: float) -> int:
        """Take over ``old``'s background models with their times moved by ``shift_s`` (the
        camera's clock stepped by that much): what the zones normally look like does not
        change with the clock. How many were taken."""
        return self.restore_backgrounds(
            {
                key: replace(state, t=state.t + shift_s, start_t=state.start_t + shift_s)
                for key, state in old.backgrounds().items()
            }
        )

    def shift_time(self, shift_s: float) -> None:
        """Move every time the tracker, the rules and the background models keep by ``shift_s``
        (the camera's clock stepped that far ahead of the time that passed): the next frame
        comes right after the last one, and an occupancy in view goes on, neither timed as an
        absence nor as a silence."""
        tracker = self.tracker
        if tracker.last_t is not None:
            tracker.last_t += shift_s
        for tr in tracker.tracks:
            tr.first_t += shift_s
            tr.last_t += shift_s
            t, x, y = tr.anchor
            tr.anchor = (t + shift_s, x, y)
            tr.history = [(t + shift_s, x, y) for t, x, y in tr.history]
        for zr in self.zones:
            zr.states = {rule: _shifted(st, shift_s) for rule, st in zr.states.items()}
            zr.backgrounds = {
                learn_s: replace(state, t=state.t + shift_s, start_t=state.start_t + shift_s)
                for learn_s, state in zr.backgrounds.items()
            }

    def occupied(self) -> dict[tuple[str, str], Occupancy]:
        """(zone, rule) → when the occupancy began and was last seen, for every rule timing a
        dwell or raised."""
        return {
            (zr.zone.id, rule): Occupancy(
                datetime.fromtimestamp(st.first_seen, UTC),
                datetime.fromtimestamp(st.last_seen, UTC),
            )
            for zr in self.zones
            for rule, st in zr.states.items()
            if st.phase != "idle"
        }

    def seen(self, t: datetime) -> list[Sighting]:
        """The raised episodes whose condition the frame at ``t`` (the last one processed)
        showed, zone by zone in rule order. An episode raised but not seen on it (in a gap,
        or raised on a frame without the condition) is left out, as is one that cleared or
        whose dwell still runs. Read-only: the states are not changed."""
        ts = t.timestamp()
        return [
            Sighting(rule, zr.zone.id, st.last.confidence, st.last.boxes, _at(st.first_seen, t))
            for zr in self.zones
            for rule, st in zr.states.items()
            if st.phase == "active" and st.last_seen == ts and st.last is not None
        ]

    def held(self) -> dict[tuple[str, str], tuple[datetime, ...]]:
        """(zone, rule) → the first sightings of the occupancies its rule still holds, whose
        transitions may yet come (the one it times, those over while the zone's schedule is
        off); rules holding none are left out. Read-only: the states are not changed."""
        return {
            (zr.zone.id, rule): tuple(datetime.fromtimestamp(t, UTC) for t in seen)
            for zr in self.zones
            for rule, st in zr.states.items()
            if (seen := st.held_seen)
        }

    def last_seen(self) -> dict[tuple[str, str], datetime]:
        """(zone, rule) → the last frame time its condition held, for every raised rule (also
        one over while its zone's schedule is off, its clear waiting for the schedule)."""
        return {
            (zr.zone.id, rule): datetime.fromtimestamp(seen, UTC)
            for zr in self.zones
            for rule, st in zr.states.items()
            if (seen := st.raised_seen) is not None
        }

    def forget(self, zone_id: str, rule: str) -> None:
        """Drop the raised (zone, rule) episode whose last sighting ``last_seen`` gives (the
        worker ended it there): its next occupancy has a dwell of its own. Episodes over while
        the zone's schedule is off that were never raised stay, to be raised and cleared when
        it opens, and so does a dwell running."""
        for zr in self.zones:
            if zr.zone.id == zone_id and (st := zr.states.get(rule)) is not None:
                zr.states[rule] = st.without_raised()

    # -- internals ---------------------------------------------------------------------------

    def _event(self, t: datetime, zone_id: str, rule: str, tr: Transition) -> RuleEvent:
        return RuleEvent(
            kind=tr.kind,
            rule=rule,
            zone_id=zone_id,
            t=t,
            confidence=tr.presence.confidence,
            dwell_s=tr.dwell_s,
            boxes=tr.presence.boxes,
            track_ids=tr.presence.track_ids,
            first_seen=_at(tr.first_seen, t),
            labels=tr.presence.labels,
        )

    def _backgrounds(
        self,
        zr: _ZoneRuntime,
        ts: float,
        frame_size: tuple[int, int],
        detections: Detections,
        gray: NDArray[np.uint8] | None,
    ) -> dict[float, Foreground]:
        """Update the zone's background models; learn_s → static foreground and crop."""
        if not zr.bg_params or gray is None:
            return {}
        small = (gray.shape[1], gray.shape[0])
        c1, r1, c2, r2 = bg.crop_of(zr.geometry.bbox, small)
        crop = gray[r1:r2, c1:c2]
        zone_mask = zr.geometry.mask(small)[r1:r2, c1:c2]
        w, h = frame_size
        norm = (detections.xyxy / np.asarray([w, h, w, h], dtype=np.float32)).astype(np.float32)
        objects = bg.boxes_mask(norm, (c1, r1), crop.shape, small)
        found: dict[float, Foreground] = {}
        for params in zr.bg_params:
            state = zr.backgrounds.get(params.learn_s)
            if state is not None and params.learn_s in zr.unsure:
                state = self._old_rule(zr, params.learn_s, state, crop.shape)
            state, static = bg.step(state, crop, ts, zone_mask, objects, params)
            zr.backgrounds[params.learn_s] = state
            measured = bg.measure(static, zone_mask, objects, (c1, r1), small)
            found[params.learn_s] = (measured, (c1, r1), small)
        return found

    def _observe(
        self,
        zr: _ZoneRuntime,
        frame_size: tuple[int, int],
        frame: _Frame,
        fg: Foreground | None,
        scene_fn: SceneFn | None,
    ) -> ZoneObservation:
        tracked, labels, motion = frame.tracked, frame.labels, frame.motion
        inside = zr.geometry.boxes_in(tracked.xyxy, frame_size)
        idx = np.flatnonzero(inside)
        w, h = frame_size
        zx1, zy1, zx2, zy2 = zr.geometry.bbox
        zone_box = (zx1 * w, zy1 * h, zx2 * w, zy2 * h)
        new_object = np.ones(len(idx), dtype=bool)
        static_fraction = static_bbox = None
        if fg is not None:
            found, origin, small = fg
            static_fraction, static_bbox = _static(found, frame_size)
            new_object = _covers_foreground(
                tracked.xyxy[idx], frame_size, found.foreground, origin, small
            )
        scene: Mapping[str, float] = {}
        if zr.needs_scene and scene_fn is not None:
            scene = scene_fn(zr.geometry.bbox)
        assert tracked.tracker_id is not None
        polygon = np.asarray(zr.geometry.polygon, np.float32) * np.asarray([w, h], np.float32)
        return ZoneObservation(
            xyxy=tracked.xyxy[idx],
            confidence=tracked.confidence[idx],
            labels=tuple(labels[i] for i in idx),
            track_id=tracked.tracker_id[idx],
            displacement=motion.displacement[idx],
            observed_s=motion.observed_s[idx],
            new_object=new_object,
            zone_box=zone_box,
            zone_area_px=float(zr.geometry.area(frame_size)),
            zone_polygon=polygon,
            scene=scene,
            head_thresholds=self.head_thresholds,
            static_fraction=static_fraction,
            static_bbox=static_bbox,
            frame_xyxy=frame.boxes.xyxy,
            frame_confidence=frame.boxes.confidence,
            frame_labels=frame.box_labels,
        )


def _at(ts: float, like: datetime) -> datetime:
    """The epoch time ``ts`` in the timezone of ``like``."""
    return datetime.fromtimestamp(ts, tz=like.tzinfo)


def _shifted(state: RuleState, shift_s: float) -> RuleState:
    """``state`` with its times moved by ``shift_s``."""
    missed = state.missed
    return replace(
        state,
        first_seen=state.first_seen + shift_s,
        last_seen=state.last_seen + shift_s,
        last_report=state.last_report + shift_s,
        missed=None if missed is None else (missed[0] + shift_s, missed[1] + shift_s),
        ended=tuple(
            replace(e, first_seen=e.first_seen + shift_s, last_seen=e.last_seen + shift_s)
            for e in state.ended
        ),
    )


def _covers_foreground(
    xyxy: NDArray[np.float32],
    frame_size: tuple[int, int],
    foreground: NDArray[np.bool_],
    origin: tuple[int, int],
    small: tuple[int, int],
    min_cover: float = 0.3,
) -> NDArray[np.bool_]:
    """Whether each box covers foreground the long-term background lacks (a new object)."""
    w, h = frame_size
    out = np.zeros(len(xyxy), dtype=bool)
    for k, (x1, y1, x2, y2) in enumerate(xyxy.tolist()):
        box: NDArray[np.float32] = np.asarray([[x1 / w, y1 / h, x2 / w, y2 / h]], np.float32)
        cover = bg.boxes_mask(box, origin, foreground.shape, small, grow=0.0)
        if cover.any():
            out[k] = foreground[cover].mean() >= min_cover
    return out


def judge_still(
    detections: Detections,
    scene: Mapping[str, float],
    frame_size: tuple[int, int],
    names: Sequence[str],
    *,
    head_thresholds: Mapping[str, float] | None = None,
) -> list[Violation]:
    """Violations visible in one still image, judged on the whole frame with defaults.

    Judged: ``street_vending`` (persons with uncarried stall props near them; stationarity
    cannot be seen in a still, so every object counts as stationary), ``crowd_gathering``
    (person count) and ``garbage_overflow`` (scene score vs the head's threshold). Not judged:
    ``illegal_parking`` and ``non_motor_parking`` (a vehicle is only illegal in a no-parking
    zone, and parked cannot be told from stopped), ``shop_front_occupation`` and
    ``piled_materials`` (they need the zone's learned background).
    """
    w, h = frame_size
    n = len(detections)
    obs = ZoneObservation(
        xyxy=detections.xyxy,
        confidence=detections.confidence,
        labels=tuple(detections.labels(names)),
        track_id=np.arange(n, dtype=np.int64),
        displacement=np.zeros(n, dtype=np.float32),
        observed_s=np.full(n, np.inf, dtype=np.float32),
        new_object=np.ones(n, dtype=bool),
        zone_box=(0.0, 0.0, float(w), float(h)),
        zone_area_px=float(w * h),
        scene=dict(scene),
        head_thresholds=dict(head_thresholds or {}),
    )
    found: list[tuple[str, Presence | None]] = [
        ("street_vending", street_vending(obs, StreetVendingParams())),
        ("crowd_gathering", crowd_gathering(obs, CrowdGatheringParams())),
        ("garbage_overflow", garbage_overflow(obs, GarbageOverflowParams())),
    ]
    return [
        Violation(type=rule, confidence=p.confidence, bbox=_union(np.asarray(p.boxes, np.float32)))
        for rule, p in found
        if p is not None and p.boxes
    ]


def warn_missing_heads(cameras: Sequence[Camera], heads: Mapping[str, object]) -> None:
    """Warn about each ``garbage_overflow`` zone whose scene head is not loaded.

    Such a zone is never scored, so without this line it would stay silent for good.
    """
    for cam in cameras:
        for zone in cam.zones:
            rule = zone.rules.garbage_overflow
            if rule is not None and rule.head not in heads:
                log.warning(
                    "camera %s zone %s: garbage_overflow needs the scene head %r, which is not "
                    "loaded (loaded: %s); this zone cannot raise candidates",
                    cam.id,
                    zone.id,
                    rule.head,
                    ", ".join(sorted(heads)) or "none",
                )
