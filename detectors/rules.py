"""Zone rules: what each violation looks like in one frame, and the episode state machine.

Every rule has two pure parts:

* ``evaluate(observation, params) -> Presence | None`` decides from one frame of one zone
  whether the violation is visible (and which boxes show it);
* :func:`step` ``(state, presence, t, params) -> (state, transitions)`` turns the per-frame
  answers into an occupancy episode with ``raise`` / ``update`` / ``clear`` transitions.

Dwell belongs to the (zone, rule) episode, not to a track id: the episode starts when the
condition first holds and survives absences shorter than ``gap_s`` (occlusion, a missed
detection, an id switch that makes a stationary object look new for a moment); only frames
without the condition show an absence, not frames that never came. Time is the frame timestamp
in seconds, injected by the caller; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from gridpatrol.site import (
    CrowdGatheringParams,
    GarbageOverflowParams,
    IllegalParkingParams,
    NonMotorParkingParams,
    PiledMaterialsParams,
    RuleParams,
    ShopFrontParams,
    StaticForegroundParams,
    StreetVendingParams,
    fills_its_box,
    polygon_area,
)

Box = tuple[float, float, float, float]
TransitionKind = Literal["raise", "update", "clear"]

# A track must have been seen for this long before it can count as stationary: a passer-by
# detected for the first time has not yet had the chance to show that it moves.
STATIONARY_MIN_S = 2.0
DEFAULT_HEAD_THRESHOLD = 0.5


@dataclass(frozen=True)
class ZoneObservation:
    """One frame as seen by the rules of one zone (arrays are the detections in the zone).

    displacement / observed_s: how far each track moved over the recent window relative to
    its size, and how long that window is (0 for a track seen once). new_object: the box
    covers foreground that the long-term background does not contain (all True when the zone
    has no background model). static_fraction / static_bbox: static foreground not explained
    by any detection (None without a background model).
    """

    xyxy: NDArray[np.float32]
    confidence: NDArray[np.float32]
    labels: tuple[str, ...]
    track_id: NDArray[np.int64]
    displacement: NDArray[np.float32]
    observed_s: NDArray[np.float32]
    new_object: NDArray[np.bool_]
    zone_box: Box
    zone_area_px: float
    scene: Mapping[str, float] = field(default_factory=dict)
    head_thresholds: Mapping[str, float] = field(default_factory=dict)
    static_fraction: float | None = None
    static_bbox: Box | None = None
    # The zone's polygon in the frame's pixels, (N, 2); None: the zone is its box.
    zone_polygon: NDArray[np.float32] | None = None
    # Every detection of the frame, inside the zone or not: what may stand in front of it.
    frame_xyxy: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    frame_confidence: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    frame_labels: tuple[str, ...] = ()

    def of(
        self, wanted: list[str] | tuple[str, ...] | frozenset[str], min_conf: float
    ) -> NDArray[np.bool_]:
        return _named(self.labels, self.confidence, wanted, min_conf)

    def occluded(self, occluders: list[str], min_conf: float) -> float:
        """How much of the zone box the frame's ``occluders`` cover (summed overlaps, ≤ 1)."""
        sel = _named(self.frame_labels, self.frame_confidence, occluders, min_conf)
        if not sel.any():
            return 0.0
        zx1, zy1, zx2, zy2 = self.zone_box
        boxes = self.frame_xyxy[sel]
        w = np.clip(np.minimum(boxes[:, 2], zx2) - np.maximum(boxes[:, 0], zx1), 0, None)
        h = np.clip(np.minimum(boxes[:, 3], zy2) - np.maximum(boxes[:, 1], zy1), 0, None)
        area = max((zx2 - zx1) * (zy2 - zy1), 1e-9)
        return min(float((w * h).sum()) / area, 1.0)

    def stationary(self, max_displacement: float) -> NDArray[np.bool_]:
        return (self.displacement <= max_displacement) & (self.observed_s >= STATIONARY_MIN_S)


def _named(
    labels: tuple[str, ...],
    confidence: NDArray[np.float32],
    wanted: list[str] | tuple[str, ...] | frozenset[str],
    min_conf: float,
) -> NDArray[np.bool_]:
    # A dozen labels per zone: a set lookup beats np.isin on strings by far.
    classes = set(wanted)
    named = np.fromiter((lab in classes for lab in labels), bool, len(labels))
    found: NDArray[np.bool_] = named & (confidence >= min_conf)
    return found


@dataclass(frozen=True)
class Presence:
    """The violation is visible in this frame: how sure, and which objects show it."""

    confidence: float
    boxes: tuple[Box, ...] = ()
    track_ids: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()


def _presence(obs: ZoneObservation, sel: NDArray[np.bool_], confidence: float) -> Presence:
    idx = np.flatnonzero(sel)
    return Presence(
        confidence=float(min(max(confidence, 0.0), 1.0)),
        boxes=tuple(tuple(float(v) for v in obs.xyxy[i]) for i in idx),  # type: ignore[misc]
        track_ids=tuple(int(obs.track_id[i]) for i in idx),
        labels=tuple(obs.labels[i] for i in idx),
    )


# -- per-frame evaluation, one function per rule ---------------------------------------------


def crowd_gathering(obs: ZoneObservation, p: CrowdGatheringParams) -> Presence | None:
    persons = obs.of(["person"], p.min_confidence)
    if int(persons.sum()) < p.min_persons:
        return None
    top = np.sort(obs.confidence[persons])[::-1][: p.min_persons]
    return _presence(obs, persons, float(top.mean()))


def illegal_parking(obs: ZoneObservation, p: IllegalParkingParams) -> Presence | None:
    parked = obs.of(p.classes, p.min_confidence) & obs.stationary(p.max_displacement)
    if not parked.any():
        return None
    return _presence(obs, parked, float(obs.confidence[parked].max()))


def non_motor_parking(obs: ZoneObservation, p: NonMotorParkingParams) -> Presence | None:
    parked = obs.of(p.classes, p.min_confidence) & obs.stationary(p.max_displacement)
    if int(parked.sum()) < p.min_count:
        return None
    return _presence(obs, parked, float(obs.confidence[parked].mean()))


# A prop whose bottom comes within this many person heights of a person's feet stands on the
# ground (a folding table or a crate of fruit in front of them); what a person holds hangs higher.
GROUND_MARGIN = 0.1


def _held(props: NDArray[np.float32], persons: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Props carried by a person: not larger than 1.5 persons, centred on one, off the ground.

    The person's box is extended upwards by half its height so an umbrella held overhead
    counts as carried. A prop reaching down to the person's feet (its bottom within
    ``GROUND_MARGIN`` person heights of theirs, or below) stands on the ground in front of
    them however small it is: the vendor's own table, not something in their hands. A stall
    umbrella is larger and stands beside its owner.
    """
    if len(props) == 0 or len(persons) == 0:
        return np.zeros(len(props), dtype=bool)
    cx = (props[:, 0] + props[:, 2]) / 2
    cy = (props[:, 1] + props[:, 3]) / 2
    area = (props[:, 2] - props[:, 0]) * (props[:, 3] - props[:, 1])
    ph = persons[:, 3] - persons[:, 1]
    p_area = (persons[:, 2] - persons[:, 0]) * ph
    inside = (
        (cx[:, None] >= persons[None, :, 0])
        & (cx[:, None] <= persons[None, :, 2])
        & (cy[:, None] >= persons[None, :, 1] - ph[None, :] / 2)
        & (cy[:, None] <= persons[None, :, 3])
        & (area[:, None] <= 1.5 * p_area[None, :])
        & (props[:, 3, None] < persons[None, :, 3] - GROUND_MARGIN * ph[None, :])
    )
    return np.asarray(inside.any(axis=1), dtype=bool)


def _on_furniture(props: NDArray[np.float32], furniture: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Props put down on street furniture: the bottom centre on a bench, above its feet.

    Food left on the seat beside someone sitting there is their lunch, not goods on display.
    The lowest ``GROUND_MARGIN`` of the bench's height is where its legs meet the ground: a
    prop whose bottom lies there stands on the ground at the bench's depth (a table beside
    it), not on it.
    """
    if len(props) == 0 or len(furniture) == 0:
        return np.zeros(len(props), dtype=bool)
    cx = (props[:, 0] + props[:, 2]) / 2
    bottom = props[:, 3]
    height = furniture[:, 3] - furniture[:, 1]
    on = (
        (cx[:, None] >= furniture[None, :, 0])
        & (cx[:, None] <= furniture[None, :, 2])
        & (bottom[:, None] >= furniture[None, :, 1])
        & (bottom[:, None] < furniture[None, :, 3] - GROUND_MARGIN * height[None, :])
    )
    return np.asarray(on.any(axis=1), dtype=bool)


def _near(
    props: NDArray[np.float32], persons: NDArray[np.float32], reach: float
) -> NDArray[np.bool_]:
    """(persons, props): the prop's centre is within ``reach`` person heights of the person box."""
    cx = (props[:, 0] + props[:, 2]) / 2
    cy = (props[:, 1] + props[:, 3]) / 2
    dx = np.maximum(
        np.maximum(persons[:, None, 0] - cx[None, :], cx[None, :] - persons[:, None, 2]), 0
    )
    dy = np.maximum(
        np.maximum(persons[:, None, 1] - cy[None, :], cy[None, :] - persons[:, None, 3]), 0
    )
    height = (persons[:, 3] - persons[:, 1])[:, None]
    near: NDArray[np.bool_] = np.hypot(dx, dy) <= reach * height
    return near


def street_vending(obs: ZoneObservation, p: StreetVendingParams) -> Presence | None:
    """Stationary person(s) next to stationary stall props that nobody is carrying.

    At least one prop must be a primary one (not in ``supporting_props``): a person resting
    on a chair, standing by a parked bicycle or waiting with a suitcase is not a stall. Props
    carried by someone or put down on a bench are no stall either.
    """
    all_persons = obs.of(["person"], p.min_confidence)
    persons = all_persons & obs.stationary(p.max_displacement)
    props = obs.of(p.props, p.min_confidence) & obs.stationary(p.max_displacement)
    if int(persons.sum()) < p.min_persons or not props.any():
        return None
    prop_idx = np.flatnonzero(props)
    # Whoever carries a prop may stand outside the zone (feet beyond its edge, the umbrella
    # over it): every person of the frame can hold one.
    outside = _named(obs.frame_labels, obs.frame_confidence, ["person"], p.min_confidence)
    carriers = np.concatenate([obs.xyxy[all_persons], obs.frame_xyxy[outside]])
    carried = _held(obs.xyxy[prop_idx], carriers)
    # The bench a prop rests on may stand across the zone's edge: every bench of the frame.
    benches = np.concatenate(
        [
            obs.xyxy[obs.of(["bench"], p.min_confidence)],
            obs.frame_xyxy[
                _named(obs.frame_labels, obs.frame_confidence, ["bench"], p.min_confidence)
            ],
        ]
    )
    put_down = _on_furniture(obs.xyxy[prop_idx], benches)
    prop_idx = prop_idx[~(carried | put_down)]
    if len(prop_idx) < p.min_props:
        return None
    person_idx = np.flatnonzero(persons)
    near = _near(obs.xyxy[prop_idx], obs.xyxy[person_idx], p.prop_distance)
    vendors = person_idx[near.any(axis=1)]
    used = prop_idx[near[near.any(axis=1)].any(axis=0)] if len(vendors) else prop_idx[:0]
    supporting = set(p.supporting_props)
    if (
        len(vendors) < p.min_persons
        or len(used) < p.min_props
        or all(obs.labels[i] in supporting for i in used)
    ):
        return None
    sel = np.zeros(len(obs.labels), dtype=bool)
    sel[vendors] = True
    sel[used] = True
    conf = float(np.sqrt(obs.confidence[vendors].max() * obs.confidence[used].max()))
    return _presence(obs, sel, conf)


def garbage_overflow(obs: ZoneObservation, p: GarbageOverflowParams) -> Presence | None:
    score = obs.scene.get(p.head)
    if score is None:
        return None
    threshold = p.threshold
    if threshold is None:
        threshold = obs.head_thresholds.get(p.head, DEFAULT_HEAD_THRESHOLD)
    if score < threshold:
        return None
    if obs.occluded(p.occluders, p.min_confidence) > p.max_occluded:
        # Someone in front of the zone: the crop shows them, not the ground, and on a busy
        # street a passer-by every few seconds would otherwise keep the dwell alive.
        return None
    return Presence(confidence=float(score), boxes=(obs.zone_box,), labels=(p.head,))


def _static_confidence(area: float, min_area: float) -> float:
    """0.5 at the area threshold, rising to 1.0 at three times it (no detector score here)."""
    return min(1.0, 0.5 + 0.25 * (area / min_area - 1.0))


# Cells across the zone's box on each axis when its polygon is not that box: the covered share
# is then measured at cell centres, off by the cells the zone's and the boxes' edges cross.
COVER_CELLS = 128


def _painted(
    starts: NDArray[np.intp], ends: NDArray[np.intp], shape: tuple[int, int]
) -> NDArray[np.bool_]:
    """The cells of ``shape`` (rows, columns) inside any of the index ranges: each range is
    (row start, column start) to (row end, column end), end excluded."""
    painted = np.zeros(shape, bool)
    # One slice per box: far cheaper than a summed-area table's passes over every cell.
    for (r1, c1), (r2, c2) in zip(starts.tolist(), ends.tolist(), strict=True):
        painted[r1:r2, c1:c2] = True
    return painted


def _covered_box(zone: Box, boxes: NDArray[np.float64]) -> float:
    """The share of the rectangle ``zone`` the boxes' union covers, exactly: on the grid the
    boxes' own edges draw, each of whose cells is wholly in or out of the union."""
    x1, y1, x2, y2 = zone
    boxes = np.clip(boxes, [x1, y1, x1, y1], [x2, y2, x2, y2])
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if len(boxes) == 0 or x2 <= x1 or y2 <= y1:
        return 0.0
    xs, ys = np.unique(boxes[:, [0, 2]]), np.unique(boxes[:, [1, 3]])
    starts = np.stack([np.searchsorted(ys, boxes[:, 1]), np.searchsorted(xs, boxes[:, 0])], 1)
    ends = np.stack([np.searchsorted(ys, boxes[:, 3]), np.searchsorted(xs, boxes[:, 2])], 1)
    cells = _painted(starts, ends, (len(ys) - 1, len(xs) - 1))
    area = float((np.diff(ys)[:, None] * np.diff(xs)[None, :])[cells].sum())
    return min(area / ((x2 - x1) * (y2 - y1)), 1.0)


def _covered_polygon(zone: NDArray[np.float64], boxes: NDArray[np.float64]) -> float:
    """The share of the polygon ``zone`` the boxes' union covers, counted in the centres of
    COVER_CELLS × COVER_CELLS cells over its box (even–odd rule, as the shoelace's area)."""
    origin = zone.min(axis=0)
    step = (zone.max(axis=0) - origin) / COVER_CELLS
    p = (zone - origin) / step  # cell units: cell c spans [c, c + 1), its centre c + 0.5
    q = np.roll(p, -1, axis=0)
    centre = np.arange(COVER_CELLS)[:, None] + 0.5
    # Each edge crossing a row's centre line flips the cells from there on (half-open in y,
    # so a vertex on the line is counted once).
    crosses = (p[None, :, 1] <= centre) != (q[None, :, 1] <= centre)
    with np.errstate(divide="ignore", invalid="ignore"):  # level edges never cross
        x = p[:, 0] + (centre - p[:, 1]) * (q[:, 0] - p[:, 0]) / (q[:, 1] - p[:, 1])
    rows, edges = np.nonzero(crosses)
    first = np.clip(np.ceil(x[rows, edges] - 0.5), 0, COVER_CELLS).astype(np.intp)
    flips = np.zeros((COVER_CELLS, COVER_CELLS + 1), np.int32)
    np.add.at(flips, (rows, first), 1)
    inside = flips.cumsum(axis=1)[:, :-1] % 2 == 1
    zone_cells = int(inside.sum())
    if zone_cells == 0:  # thinner than a cell everywhere: nothing measurable covers it
        return 0.0
    # Cell c's centre is in [a, b) when ceil(a - 0.5) <= c < ceil(b - 0.5).
    b = (boxes - np.tile(origin, 2)) / np.tile(step, 2)
    first_cells = np.clip(np.ceil(b - 0.5), 0, COVER_CELLS).astype(np.intp)
    cells = _painted(first_cells[:, [1, 0]], first_cells[:, [3, 2]], (COVER_CELLS,) * 2)
    return int((inside & cells).sum()) / zone_cells


def _covered(obs: ZoneObservation, objects: NDArray[np.bool_]) -> float:
    """The share of the zone that the union of the ``objects``' boxes covers.

    A box reaching out of the zone counts only inside it, and boxes overlapping count once.
    Exact for a zone that is its box; any other polygon is measured on a grid of
    COVER_CELLS × COVER_CELLS cells across the zone's box.
    """
    boxes = obs.xyxy[objects].astype(np.float64)
    if len(boxes) == 0:
        return 0.0
    if obs.zone_polygon is None:
        return _covered_box(obs.zone_box, boxes)
    zone = np.asarray(obs.zone_polygon, np.float64).reshape(-1, 2)
    points = zone.tolist()
    # A polygon as large as its box is that box (a concave one is smaller).
    if fills_its_box(points):
        x1, y1 = zone.min(axis=0).tolist()
        x2, y2 = zone.max(axis=0).tolist()
        return _covered_box((x1, y1, x2, y2), boxes)
    if polygon_area(points) <= 0:
        return 0.0
    return _covered_polygon(zone, boxes)


def _static_presence(
    obs: ZoneObservation, p: StaticForegroundParams, objects: NDArray[np.bool_]
) -> Presence | None:
    area = (obs.static_fraction or 0.0) + _covered(obs, objects)
    if area < p.min_area:
        return None
    found = _presence(obs, objects, _static_confidence(area, p.min_area))
    if obs.static_bbox is not None and (obs.static_fraction or 0.0) > 0:
        found = replace(
            found, boxes=(*found.boxes, obs.static_bbox), labels=(*found.labels, "static")
        )
    return found


def shop_front_occupation(obs: ZoneObservation, p: ShopFrontParams) -> Presence | None:
    """Static foreground plus new stationary objects of ``classes`` cover ``min_area``."""
    objects = obs.of(p.classes, p.min_confidence) & obs.stationary(p.max_displacement)
    return _static_presence(obs, p, objects & obs.new_object)


def piled_materials(obs: ZoneObservation, p: PiledMaterialsParams) -> Presence | None:
    return _static_presence(obs, p, np.zeros(len(obs.labels), dtype=bool))


Evaluate = Callable[[ZoneObservation, RuleParams], Presence | None]
EVALUATORS: dict[str, Evaluate] = {
    "street_vending": street_vending,  # type: ignore[dict-item]
    "shop_front_occupation": shop_front_occupation,  # type: ignore[dict-item]
    "garbage_overflow": garbage_overflow,  # type: ignore[dict-item]
    "illegal_parking": illegal_parking,  # type: ignore[dict-item]
    "non_motor_parking": non_motor_parking,  # type: ignore[dict-item]
    "piled_materials": piled_materials,  # type: ignore[dict-item]
    "crowd_gathering": crowd_gathering,  # type: ignore[dict-item]
}


# -- the episode state machine ----------------------------------------------------------------

# At most this many episodes that ended while nothing could be reported wait for the first frame
# that may report: a zone off for days with things coming and going keeps a bounded state. Past
# it the oldest unraised ones are dropped (a raised one stays: its candidate waits for its clear).
HELD_MAX = 16


@dataclass(frozen=True)
class Ended:
    """An episode that ended while nothing could be reported: its clear (after its raise, when
    its dwell completed unreported) waits for the first frame that may report."""

    first_seen: float
    last_seen: float
    last: Presence
    raised: bool


@dataclass(frozen=True)
class RuleState:
    """idle → pending (condition holds, dwell running) → active (raised) → idle (cleared).

    missed: the first and the latest frame judged without the condition since ``last_seen``, if
    any (without one, the time since is frames that never came, not an absence). ended:
    episodes over while nothing could be reported, oldest first, whose transitions the first
    frame that may report emits.
    """

    phase: Literal["idle", "pending", "active"] = "idle"
    first_seen: float = 0.0
    last_seen: float = 0.0
    last_report: float = 0.0
    last: Presence | None = None
    missed: tuple[float, float] | None = None
    ended: tuple[Ended, ...] = ()

    @property
    def raised_seen(self) -> float | None:
        """The last sighting of the raised episode whose clear is not reported yet, if any
        (one over while nothing could be reported is the oldest of ``ended``)."""
        if self.phase == "active":
            return self.last_seen
        if self.ended and self.ended[0].raised:
            return self.ended[0].last_seen
        return None

    @property
    def held_seen(self) -> tuple[float, ...]:
        """The first sightings of the episodes this state still holds, whose raise, update or
        clear may yet come: the one timed (dwell running or raised), if any, and those over
        while nothing could be reported. Of any other no transition can come any more."""
        timed = (self.first_seen,) if self.phase != "idle" else ()
        return (*(e.first_seen for e in self.ended), *timed)

    def without_raised(self) -> RuleState:
        """This state without the raised episode of ``raised_seen`` (ended elsewhere at that
        sighting): the episodes over while nothing could be reported that were never raised,
        and a dwell running, stay."""
        if self.phase == "active":
            return RuleState(ended=self.ended)
        if self.ended and self.ended[0].raised:
            return replace(self, ended=self.ended[1:])
        return self


@dataclass(frozen=True)
class Transition:
    kind: TransitionKind
    t: float
    first_seen: float
    dwell_s: float
    presence: Presence


def step(
    state: RuleState,
    presence: Presence | None,
    t: float,
    p: RuleParams,
    may_report: bool = True,
) -> tuple[RuleState, list[Transition]]:
    """Advance one (zone, rule) episode by one frame; ``presence`` None = not visible now.

    Absence is what frames without the condition show: a silence (frames dropped while the
    worker is behind, or none sent) is no absence, unless it lasts longer than
    ``gap_s + clear_s`` (as long as the worker waits before ending the episodes of a silent
    camera): then the old episode ends, whatever the frame after it shows. Next to a frame
    without the condition, a silence longer than ``gap_s`` is no absence either: the condition
    went (or came back) somewhere in it, so the absence counts from the first such frame after
    it (or up to the last one before it), see :func:`_away`.

    ``may_report`` False (the zone's schedule is off) judges the frame as usual but reports
    nothing: a dwell that completes stays ``pending`` and raises on the first frame that may
    report (even if the condition has gone meanwhile: then it clears at once when ``clear_s``
    has passed), and an update waits for that frame too. An episode that ends meanwhile (gone
    for ``clear_s``, raised or with its dwell complete) is held in ``ended``: what appears
    later is a new episode, and the old one's clear (after its raise) comes first on that frame.
    """
    held: list[Transition] = []
    if may_report and state.ended:
        held = [tr for e in state.ended for tr in _ending(e, t)]
        state = replace(state, ended=())
    if presence is None:
        state, ended = _absent(state, t, p, may_report)
        return state, [*held, *ended]
    if _over(state, t, p):
        state, ended = _end(state, t, p, may_report)
        held += ended
    if state.phase == "idle":
        state = RuleState("pending", first_seen=t, last_seen=t, last=presence, ended=state.ended)
    else:
        state = replace(state, last_seen=t, last=presence, missed=None)
    if not may_report:
        return state, []
    dwell = t - state.first_seen
    if state.phase == "pending" and dwell >= p.dwell_s:
        state = replace(state, phase="active", last_report=t)
        return state, [*held, Transition("raise", t, state.first_seen, dwell, presence)]
    if state.phase == "active" and t - state.last_report >= p.update_s:
        state = replace(state, last_report=t)
        return state, [*held, Transition("update", t, state.first_seen, dwell, presence)]
    return state, held


def _due(state: RuleState, p: RuleParams) -> bool:
    """A pending episode whose dwell completed while it could not be reported (with reports
    allowed, a completed dwell raises at once)."""
    return state.phase == "pending" and state.last_seen - state.first_seen >= p.dwell_s


def _over(state: RuleState, t: float, p: RuleParams) -> bool:
    """Whether the condition seen again at ``t`` belongs to a new episode."""
    if state.phase == "idle":
        return False
    if _silent(state, t, p):
        return True
    if state.missed is None:
        # No frame came since the last sighting: nothing showed the condition gone.
        return False
    return _gone(state, _away(state, t, p), p)


def _absent(
    state: RuleState, t: float, p: RuleParams, may_report: bool = True
) -> tuple[RuleState, list[Transition]]:
    if state.phase == "idle":
        return state, []
    silent = _silent(state, t, p)
    state = replace(state, missed=(t if state.missed is None else state.missed[0], t))
    if silent or _gone(state, _away(state, t, p), p):
        return _end(state, t, p, may_report)
    if _due(state, p) and may_report and state.last is not None:
        # Its dwell completed while nothing could be reported: raised now, cleared later.
        dwell = state.last_seen - state.first_seen
        raised = Transition("raise", t, state.first_seen, dwell, state.last)
        return replace(state, phase="active", last_report=t), [raised]
    return state, []


def _silent(state: RuleState, t: float, p: RuleParams) -> bool:
    """No frame came for longer than ``gap_s + clear_s`` before ``t``: the episode is over (the
    worker ends a silent camera's episodes after as long)."""
    latest = state.last_seen if state.missed is None else state.missed[1]
    return t - latest > p.gap_s + p.clear_s


def _away(state: RuleState, t: float, p: RuleParams) -> float:
    """How long frames have shown the condition gone by the frame at ``t`` (the latest without
    it, or one showing it again). A silence longer than ``gap_s`` between the last sighting and
    the first frame without the condition shows nothing: the absence counts from that frame,
    not from the sighting; so a camera back after an outage that misses the object once does
    not end an episode that lasted all along. Likewise up to the last frame without it, not up
    to ``t``, when ``t`` comes more than ``gap_s`` after it. Shorter silences (a steady stream)
    count: the absence runs from the last sighting to ``t``."""
    assert state.missed is not None
    first, latest = state.missed
    start = state.last_seen if first - state.last_seen <= p.gap_s else first
    end = t if t - latest <= p.gap_s else latest
    return end - start


def _gone(state: RuleState, away: float, p: RuleParams) -> bool:
    """Whether an absence of ``away`` ends the episode of ``state``: ``clear_s`` for a raised
    one or a completed dwell (which lasts as a raised episode would, reported or not), more than
    ``gap_s`` for a dwell still running."""
    if state.phase == "active" or _due(state, p):
        return away >= p.clear_s
    return away > p.gap_s


def _end(
    state: RuleState, t: float, p: RuleParams, may_report: bool
) -> tuple[RuleState, list[Transition]]:
    """End the episode of ``state``: a dwell still running ends silently; a raised episode
    clears, a completed dwell raises and clears, now or (``may_report`` False) on the first
    frame that may report."""
    idle = RuleState(ended=state.ended)
    if state.last is None or not (state.phase == "active" or _due(state, p)):
        return idle, []
    ended = Ended(state.first_seen, state.last_seen, state.last, state.phase == "active")
    if may_report:
        return idle, _ending(ended, t)
    held = (*state.ended, ended)
    if len(held) > HELD_MAX:
        raised = held[:1] if held[0].raised else ()
        held = (*raised, *held[-(HELD_MAX - len(raised)) :])
    return RuleState(ended=held), []


def _ending(ended: Ended, t: float) -> list[Transition]:
    """The transitions of an episode over at its last sighting, reported at ``t``."""
    dwell = ended.last_seen - ended.first_seen
    cleared = Transition("clear", t, ended.first_seen, dwell, ended.last)
    if ended.raised:
        return [cleared]
    return [Transition("raise", t, ended.first_seen, dwell, ended.last), cleared]
