"""Zone rules: the episode state machine and each rule's per-frame judgement, table-driven."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpatrol.detectors.rules import (
    COVER_CELLS,
    EVALUATORS,
    HELD_MAX,
    Presence,
    RuleState,
    ZoneObservation,
    crowd_gathering,
    garbage_overflow,
    illegal_parking,
    non_motor_parking,
    piled_materials,
    shop_front_occupation,
    step,
    street_vending,
)
from gridpatrol.site import (
    RULE_PARAMS,
    CrowdGatheringParams,
    GarbageOverflowParams,
    IllegalParkingParams,
    NonMotorParkingParams,
    PiledMaterialsParams,
    RuleParams,
    ShopFrontParams,
    StreetVendingParams,
)

SEEN = Presence(0.8, boxes=((0.0, 0.0, 1.0, 1.0),), track_ids=(1,), labels=("person",))

# -- episode state machine ----------------------------------------------------------------------

TIMING = RuleParams(dwell_s=10, gap_s=5, clear_s=8, update_s=6)


def run(frames: list[tuple[float, bool]], p: RuleParams = TIMING) -> list[tuple[str, float, float]]:
    """(t, visible) frames → (kind, t, dwell) of every transition."""
    state, out = RuleState(), []
    for t, visible in frames:
        state, transitions = step(state, SEEN if visible else None, t, p)
        out += [(tr.kind, tr.t, tr.dwell_s) for tr in transitions]
    return out


def seq(start: float, stop: float, visible: bool, every: float = 1.0) -> list[tuple[float, bool]]:
    return [(start + k * every, visible) for k in range(round((stop - start) / every) + 1)]


@pytest.mark.parametrize(
    ("name", "frames", "expected"),
    [
        ("too short: no raise", seq(0, 9, True), []),
        ("raise exactly at dwell", seq(0, 10, True), [("raise", 10, 10)]),
        (
            "update at most every update_s while present",
            seq(0, 23, True),
            [("raise", 10, 10), ("update", 16, 16), ("update", 22, 22)],
        ),
        (
            "clear after clear_s absence, dwell until last seen",
            seq(0, 12, True) + seq(13, 20, False),
            [("raise", 10, 10), ("clear", 20, 12)],
        ),
        (
            "absence shorter than clear_s keeps the episode",
            seq(0, 12, True) + seq(13, 18, False) + seq(19, 22, True),
            [("raise", 10, 10), ("update", 19, 19)],
        ),
        (
            "gap shorter than gap_s keeps the dwell running",
            seq(0, 4, True) + seq(5, 8, False) + seq(9, 10, True),
            [("raise", 10, 10)],
        ),
        (
            "gap longer than gap_s restarts the dwell",
            seq(0, 4, True) + seq(5, 10, False) + seq(11, 21, True),
            [("raise", 21, 10)],
        ),
        (
            "irregular frames: a silence no longer than gap_s + clear_s is no absence",
            [(0, True), (3, True), (12, True), (16, True), (20, True), (22, True)],
            [("raise", 12, 12), ("update", 20, 20)],
        ),
        (
            "irregular frames: a longer silence then presence restarts the dwell",
            [(0, True), (3, True), (17, True), (21, True), (25, True), (27, True)],
            [("raise", 27, 10)],
        ),
        (
            "a frame without the condition then a silence up to gap_s: absence from the last "
            "sighting to the next",
            [*seq(0, 4, True), (5, False), (10, True), *seq(11, 20, True)],
            [("raise", 20, 10)],
        ),
        (
            "a frame without the condition then a longer silence: absence only as far as "
            "frames showed it",
            [*seq(0, 4, True), (5, False), (12, True), *seq(13, 22, True)],
            [("raise", 12, 12), ("update", 18, 18)],
        ),
        (
            "a new episode after a clear",
            seq(0, 10, True) + seq(11, 18, False) + seq(19, 29, True),
            [("raise", 10, 10), ("clear", 18, 10), ("raise", 29, 10)],
        ),
        (
            "no frames for gap_s + clear_s while active: old episode cleared, new one starts",
            [*seq(0, 10, True), (30, True), (34, True), (38, True), (40, True)],
            [("raise", 10, 10), ("clear", 30, 10), ("raise", 40, 10)],
        ),
    ],
)
def test_episode_transitions(
    name: str, frames: list[tuple[float, bool]], expected: list[tuple[str, float, float]]
) -> None:
    assert run(frames) == expected, name


def run_off(
    frames: list[tuple[float, bool]], on_from: float, p: RuleParams = TIMING
) -> list[tuple[str, float, float, float]]:
    """(t, visible) frames, nothing may be reported before ``on_from`` → (kind, t, first seen,
    dwell) of every transition."""
    state, out = RuleState(), []
    for t, visible in frames:
        state, transitions = step(state, SEEN if visible else None, t, p, t >= on_from)
        out += [(tr.kind, tr.t, tr.first_seen, tr.dwell_s) for tr in transitions]
    return out


@pytest.mark.parametrize(
    ("name", "frames", "on_from", "expected"),
    [
        ("a dwell completed while off raises when reports may start",
         seq(0, 30, True), 25, [("raise", 25, 0, 25)]),
        ("a dwell completing after reports start raises then",
         seq(0, 30, True), 4, [("raise", 10, 0, 10), ("update", 16, 0, 16),
                               ("update", 22, 0, 22), ("update", 28, 0, 28)]),
        ("a completed dwell gone before reports start: raised, cleared after clear_s",
         seq(0, 12, True) + seq(13, 30, False), 25, [("raise", 25, 0, 12), ("clear", 25, 0, 12)]),
        ("a completed dwell gone for less than clear_s: raised, cleared later",
         seq(0, 12, True) + seq(13, 30, False), 15, [("raise", 15, 0, 12), ("clear", 20, 0, 12)]),
        ("a completed dwell outlasts a gap while off",
         seq(0, 12, True) + seq(13, 18, False) + seq(19, 30, True), 25, [("raise", 25, 0, 25)]),
        ("a completed dwell gone for clear_s when reports start, back later: a new dwell",
         seq(0, 12, True) + seq(13, 24, False) + seq(25, 36, True), 20,
         [("raise", 20, 0, 12), ("clear", 20, 0, 12), ("raise", 35, 25, 10)]),
        ("an incomplete dwell ends as usual while off",
         seq(0, 4, True) + seq(5, 30, False), 25, []),
    ],
)  # fmt: skip
def test_episode_reports_wait_for_may_report(
    name: str,
    frames: list[tuple[float, bool]],
    on_from: float,
    expected: list[tuple[str, float, float, float]],
) -> None:
    assert run_off(frames, on_from) == expected, name


def frames_at(
    start: float, stop: float, every: float = 0.5, dropped: tuple[tuple[float, float], ...] = ()
) -> list[tuple[float, bool]]:
    """Frames showing the condition, none strictly inside the ``dropped`` spans."""
    return [
        (t, True)
        for t, _ in seq(start, stop, True, every)
        if not any(a < t < b for a, b in dropped)
    ]


# gap_s 0 and clear_s 0 as a 2 fps camera floors them (2.5 frame intervals).
FLOORED = RuleParams(dwell_s=60, gap_s=1.25, clear_s=1.25, update_s=120)


@pytest.mark.parametrize(
    ("name", "frames", "expected"),
    [
        ("frames dropped for 1.5 s every 100 s while raised: one episode",
         frames_at(0, 300, dropped=((99.5, 101), (199.5, 201))),
         [("raise", 60, 60), ("update", 180, 180), ("update", 300, 300)]),
        ("frames dropped for 1.5 s every 30 s while the dwell runs: it completes",
         frames_at(0, 70, dropped=((29.5, 31), (59.5, 61))),
         [("raise", 61, 61)]),
        ("frames dropped for 2.5 s (gap_s + clear_s): still one episode",
         frames_at(0, 150, dropped=((99.5, 102),)),
         [("raise", 60, 60)]),
        ("no frame for longer than gap_s + clear_s: a new episode",
         frames_at(0, 170, dropped=((99.5, 102.5),)),
         [("raise", 60, 60), ("clear", 102.5, 99.5), ("raise", 162.5, 60)]),
        ("frames without the condition for clear_s: a new episode",
         [*frames_at(0, 100), *seq(100.5, 101.5, False, 0.5), *frames_at(102, 170)],
         [("raise", 60, 60), ("clear", 101.5, 100), ("raise", 162, 60)]),
    ],
)  # fmt: skip
def test_frames_that_never_came_are_no_absence(
    name: str, frames: list[tuple[float, bool]], expected: list[tuple[str, float, float]]
) -> None:
    """Frames the worker dropped while behind (it keeps only the newest) show nothing gone:
    with the shortest gap_s and clear_s a camera allows, the episode goes on across them."""
    assert run(frames, FLOORED) == expected, name


PARKING = IllegalParkingParams(dwell_s=300, gap_s=20, clear_s=60)
Frames = list[tuple[float, bool]]
Reported = list[tuple[str, float, float, float]]  # (kind, t, first seen, dwell)


def every(
    step_s: float, stop: float, missed: tuple[float, ...] = (), silent: tuple[float, float] = (0, 0)
) -> Frames:
    """A frame every ``step_s`` from 0 to ``stop``, none strictly inside ``silent``; those at
    ``missed`` without the condition."""
    return [
        (t, t not in missed) for t, _ in seq(0, stop, True, step_s) if not silent[0] < t < silent[1]
    ]


def episodes(frames: Frames, p: RuleParams) -> tuple[Reported, str]:
    """(kind, t, first seen, dwell) of every raise and clear, and the phase at the end."""
    state, out = RuleState(), []
    for t, visible in frames:
        state, transitions = step(state, SEEN if visible else None, t, p)
        out += [(tr.kind, tr.t, tr.first_seen, tr.dwell_s) for tr in transitions]
    return [tr for tr in out if tr[0] != "update"], state.phase


@pytest.mark.parametrize(
    ("name", "frames", "p", "expected"),
    [
        ("a car parked all along, one frame misses it",
         every(2, 1000, missed=(600,)), PARKING, [("raise", 300, 0, 300)]),
        ("no frame for 70 s, the car there on both sides",
         every(2, 1000, silent=(530, 600)), PARKING, [("raise", 300, 0, 300)]),
        ("no frame for 70 s, the first one after it misses the car",
         every(2, 1000, missed=(600,), silent=(530, 600)), PARKING, [("raise", 300, 0, 300)]),
        ("no frame for 30 s while the dwell runs, the first one after it misses the car",
         every(2, 1000, missed=(130,), silent=(100, 130)), PARKING, [("raise", 300, 0, 300)]),
        ("frames judged every 1.5 s with gap_s and clear_s at the 2 fps floor, one misses",
         every(1.5, 90, missed=(30,)), RuleParams(dwell_s=10, gap_s=1.25, clear_s=1.25),
         [("raise", 10.5, 0, 10.5)]),
    ],
)  # fmt: skip
def test_a_silence_then_a_miss_is_no_absence_before_the_miss(
    name: str, frames: Frames, p: RuleParams, expected: Reported
) -> None:
    """The first frame after frames that never came shows the condition gone: the absence
    starts at that frame, not at the last sighting before the silence (and ends at the last
    frame without it when another silence follows). One missed detection right after an outage
    neither ends a raised episode nor restarts a dwell."""
    assert episodes(frames, p) == (expected, "active"), name


@pytest.mark.parametrize(
    ("name", "silent", "expected"),
    [
        # Gone on every frame from 600 s: cleared clear_s later, the dwell up to 530 s.
        ("a silence no longer than gap_s + clear_s", (530, 600),
         [("raise", 300, 0, 300), ("clear", 660, 0, 530)]),
        # As long as the worker waits before ending a silent camera's episodes: over at once.
        ("a longer silence", (530, 612), [("raise", 300, 0, 300), ("clear", 612, 0, 530)]),
    ],
)  # fmt: skip
def test_an_object_gone_after_a_silence_clears_at_its_last_sighting(
    name: str, silent: tuple[float, float], expected: Reported
) -> None:
    frames = [(t, t < 600) for t, _ in every(2, 1000, silent=silent)]
    assert episodes(frames, PARKING) == (expected, "idle"), name


def run_window(
    frames: list[tuple[float, bool]], off: tuple[float, float], p: RuleParams = TIMING
) -> list[tuple[str, float, float, float]]:
    """(t, visible) frames, nothing may be reported from ``off[0]`` until ``off[1]`` → (kind,
    t, first seen, dwell) of every transition."""
    state, out = RuleState(), []
    for t, visible in frames:
        may = not off[0] <= t < off[1]
        state, transitions = step(state, SEEN if visible else None, t, p, may)
        out += [(tr.kind, tr.t, tr.first_seen, tr.dwell_s) for tr in transitions]
    return out


@pytest.mark.parametrize(
    ("name", "frames", "off", "expected"),
    [
        ("raised, gone for clear_s while off, something new before it opens: cleared, then a "
         "new episode raised with its own first sighting",
         seq(0, 14, True) + seq(15, 24, False) + seq(25, 40, True), (12, 40),
         [("raise", 10, 0, 10), ("clear", 40, 0, 14), ("raise", 40, 25, 15)]),
        ("raised, gone for clear_s while off, the new dwell completes after it opens",
         seq(0, 14, True) + seq(15, 34, False) + seq(35, 50, True), (12, 40),
         [("raise", 10, 0, 10), ("clear", 40, 0, 14), ("raise", 45, 35, 10)]),
        ("raised, gone for less than clear_s while off: the same episode",
         seq(0, 14, True) + seq(15, 19, False) + seq(20, 40, True), (12, 40),
         [("raise", 10, 0, 10), ("update", 40, 0, 40)]),
        ("raised, no frame for longer than gap_s + clear_s while off: a new episode",
         seq(0, 14, True) + seq(30, 40, True), (12, 40),
         [("raise", 10, 0, 10), ("clear", 40, 0, 14), ("raise", 40, 30, 10)]),
        ("a dwell completed while off, gone for clear_s, something new: two episodes",
         seq(0, 12, True) + seq(13, 24, False) + seq(25, 40, True), (0, 40),
         [("raise", 40, 0, 12), ("clear", 40, 0, 12), ("raise", 40, 25, 15)]),
        ("two dwells completed and over while off: both raised and cleared, oldest first",
         seq(0, 12, True) + seq(13, 21, False) + seq(22, 34, True) + seq(35, 60, False),
         (0, 60),
         [("raise", 60, 0, 12), ("clear", 60, 0, 12), ("raise", 60, 22, 12),
          ("clear", 60, 22, 12)]),
    ],
)  # fmt: skip
def test_an_episode_over_while_off_is_not_continued_by_the_next(
    name: str,
    frames: list[tuple[float, bool]],
    off: tuple[float, float],
    expected: list[tuple[str, float, float, float]],
) -> None:
    assert run_window(frames, off) == expected, name


def test_a_pile_gone_overnight_and_another_before_the_schedule_opens() -> None:
    """A zone scheduled 06:00–23:00: a pile from 21:00 to 23:30 (raised at 21:30), nothing
    from 23:30, another pile from 04:00. At 06:00 the first is cleared and the second raised."""
    p = PiledMaterialsParams()
    hour = 3600.0  # seconds after 21:00
    state, out = RuleState(), []
    for k in range(int(9 * hour) // 60 + 1):
        t = 60.0 * k
        seen = t <= 2.5 * hour or t >= 7 * hour
        state, trs = step(state, SEEN if seen else None, t, p, not 2 * hour < t < 9 * hour)
        if t == 9 * hour:
            out = [(tr.kind, tr.first_seen / hour, tr.dwell_s / hour) for tr in trs]
    assert out == [("clear", 0.0, 2.5), ("raise", 7.0, 2.0)]


def test_episodes_held_while_off_are_bounded() -> None:
    """Raised, then over while off, then twenty completed dwells come and go: the raised one's
    clear and the HELD_MAX - 1 latest wait for the schedule; the oldest others are dropped."""
    frames = seq(0, 14, True) + seq(15, 24, False)
    starts = [25.0 + 30 * k for k in range(20)]
    for s in starts:
        frames += seq(s, s + 12, True) + seq(s + 13, s + 29, False)
    out = run_window([*frames, (700.0, False)], (12, 700))
    late = starts[-(HELD_MAX - 1) :]
    assert out == [
        ("raise", 10, 0, 10),
        ("clear", 700, 0, 14),
        *[tr for s in late for tr in (("raise", 700, s, 12), ("clear", 700, s, 12))],
    ]


def test_a_raised_episode_held_while_off_reports_when_on_again() -> None:
    """Raised, then off from 12 s to 30 s: no update and no clear meanwhile, then both."""
    state, out = RuleState(), []
    frames = seq(0, 14, True) + seq(15, 35, False)
    for t, visible in frames:
        state, trs = step(state, SEEN if visible else None, t, TIMING, not 12 <= t < 30)
        out += [(tr.kind, tr.t) for tr in trs]
    assert out == [("raise", 10), ("clear", 30)]


def test_zero_dwell_raises_on_first_sight() -> None:
    p = RuleParams(dwell_s=0, gap_s=5, clear_s=3, update_s=100)
    assert run([(0, True), (1, False), (4, False)], p) == [("raise", 0, 0), ("clear", 4, 0)]


def test_transition_carries_first_seen_and_latest_presence() -> None:
    state, trs = step(RuleState(), SEEN, 100.0, RuleParams(dwell_s=0))
    assert trs[0].first_seen == 100.0 and trs[0].presence is SEEN
    later = Presence(0.95, boxes=((5.0, 5.0, 9.0, 9.0),), track_ids=(7,))
    state, trs = step(state, later, 150.0, RuleParams(dwell_s=0, update_s=40))
    assert [(tr.kind, tr.first_seen, tr.presence.track_ids) for tr in trs] == [
        ("update", 100.0, (7,))
    ]


# -- per-frame judgements ---------------------------------------------------------------------


@dataclass(frozen=True)
class Thing:
    label: str
    box: tuple[float, float, float, float]
    conf: float = 0.8
    disp: float = 0.0  # displacement / size over the recent window
    seen_s: float = 10.0  # observed span
    new: bool = True


def person(x: float, y: float = 200, **kw: float) -> Thing:
    return Thing("person", (x, y, x + 40, y + 100), **kw)  # type: ignore[arg-type]


def thing(label: str, x: float, y: float = 250, w: float = 40, h: float = 40, **kw: float) -> Thing:
    return Thing(label, (x, y, x + w, y + h), **kw)  # type: ignore[arg-type]


def observe(
    *objs: Thing,
    scene: dict[str, float] | None = None,
    heads: dict[str, float] | None = None,
    static: float | None = None,
    frame: tuple[Thing, ...] = (),
) -> ZoneObservation:
    n = len(objs)
    return ZoneObservation(
        xyxy=np.asarray([o.box for o in objs], np.float32).reshape(n, 4),
        confidence=np.asarray([o.conf for o in objs], np.float32),
        labels=tuple(o.label for o in objs),
        track_id=np.arange(1, n + 1, dtype=np.int64),
        displacement=np.asarray([o.disp for o in objs], np.float32),
        observed_s=np.asarray([o.seen_s for o in objs], np.float32),
        new_object=np.asarray([o.new for o in objs], bool),
        zone_box=(0.0, 0.0, 1000.0, 500.0),
        zone_area_px=500_000.0,
        scene=scene or {},
        head_thresholds=heads or {},
        static_fraction=static,
        static_bbox=None if static is None else (10.0, 10.0, 50.0, 50.0),
        frame_xyxy=np.asarray([o.box for o in frame], np.float32).reshape(len(frame), 4),
        frame_confidence=np.asarray([o.conf for o in frame], np.float32),
        frame_labels=tuple(o.label for o in frame),
    )


VENDING = StreetVendingParams()

VENDING_CASES = [
    # (name, objects, vending?)
    ("vendor beside a dining table", [person(100), thing("dining table", 150, 240, 80, 50)], True),
    ("vendor under a stall umbrella", [person(100), thing("umbrella", 60, 100, 200, 80)], True),
    ("fruit laid out beside the vendor", [person(100), thing("orange", 160, 280, 20, 20)], True),
    ("persons sitting on a bench", [person(100), person(150),
                                    thing("bench", 90, 250, 120, 50)], False),
    ("bench plus a chair is still only seating", [person(100), thing("bench", 90, 250, 120, 50),
                                                  thing("chair", 150, 250, 40, 50)], False),
    ("lunch put down on the bench beside a sitter", [person(100), thing("bench", 80, 250, 200, 50),
                                                     thing("sandwich", 160, 262, 20, 12)], False),
    ("table standing on the ground beside a bench", [person(100),
                                                     thing("bench", 160, 250, 200, 50),
                                                     thing("dining table", 150, 250, 80, 50)],
     True),
    ("fruit laid out on the ground in front of a bench", [person(100),
                                                          thing("bench", 80, 250, 200, 50),
                                                          thing("orange", 160, 290, 20, 20)],
     True),
    ("person resting on a chair", [person(100), thing("chair", 100, 250, 40, 50)], False),
    ("waiting with a suitcase", [person(100), thing("suitcase", 145, 260, 30, 40)], False),
    ("standing by a parked bicycle", [person(100), thing("bicycle", 145, 230, 80, 60)], False),
    ("cart and goods", [person(100), thing("bicycle", 145, 230, 80, 60),
                        thing("banana", 150, 200, 20, 15)], True),
    ("passer-by walking past a table", [person(100, disp=3.0),
                                        thing("dining table", 150, 240, 80, 50)], False),
    ("passer-by just appeared", [person(100, seen_s=0.4), thing("dining table", 150, 240, 80, 50)],
     False),
    ("table being carried (moving prop)", [person(100), thing("dining table", 150, 240, 80, 50,
                                                               disp=2.0)], False),
    ("eating a sandwich (held food)", [person(100), thing("sandwich", 110, 230, 15, 10)], False),
    ("holding an umbrella overhead", [person(100), thing("umbrella", 85, 170, 70, 40)], False),
    ("table far from anyone", [person(100), thing("dining table", 600, 240, 80, 50)], False),
    ("low-confidence prop", [person(100),
                             thing("dining table", 150, 240, 80, 50, conf=0.2)], False),
    ("handbag and backpack are not stall props", [person(100), thing("handbag", 145, 260, 20, 20),
                                                   thing("backpack", 170, 260, 20, 20)], False),
    ("bottles and cups are not stall props", [person(100), thing("bottle", 145, 260, 10, 20),
                                              thing("cup", 170, 260, 10, 10)], False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "objs", "vending"), VENDING_CASES, ids=[c[0] for c in VENDING_CASES]
)
def test_street_vending_judgement(name: str, objs: list[Thing], vending: bool) -> None:
    found = street_vending(observe(*objs), VENDING)
    assert (found is not None) is vending, name
    if found is not None:
        assert "person" in found.labels and len(found.boxes) == len(found.track_ids) >= 2


# The vendor is person(100): box (100, 200, 140, 300), 100 px tall, feet at y = 300. A prop
# whose centre lies on them is carried only while it hangs off the ground (its bottom above
# y = 290); one reaching down to the feet stands in front of them.
# Every detection of the frame, in the zone or not, may carry a prop: a bystander whose feet are
# outside the zone holds the umbrella over it.
# (name, objects in the zone, persons and props outside it, labels of the stall found or None)
HELD_OR_STANDING_CASES = [
    ("small folding table standing in front of the vendor",
     [person(100), thing("dining table", 95, 255, 50, 50)], [], ("person", "dining table")),
    ("table whose bottom is a few pixels above the vendor's feet",
     [person(100), thing("dining table", 100, 250, 40, 45)], [], ("person", "dining table")),
    ("apples laid out on the ground in front of the vendor",
     [person(100), thing("apple", 105, 285, 30, 20)], [], ("person", "apple")),
    ("table in front of a bystander outside the zone, beside the vendor",
     [person(200), thing("dining table", 295, 255, 50, 50)], [person(300)],
     ("person", "dining table")),
    ("bag of oranges carried at the hip", [person(100), thing("orange", 125, 250, 20, 25)], [],
     None),
    ("closed umbrella hanging from the hand", [person(100), thing("umbrella", 135, 240, 10, 45)],
     [], None),
    ("umbrella held overhead by a bystander outside the zone",
     [person(200), thing("umbrella", 285, 170, 70, 40)], [person(300)], None),
    ("fruit held up in front of the chest", [person(100), thing("banana", 105, 230, 30, 20)], [],
     None),
    ("sandwich eaten by a bystander outside the zone",
     [person(200), thing("sandwich", 310, 230, 15, 10)], [person(300)], None),
    ("stall umbrella beside a bystander outside the zone",
     [person(200), thing("umbrella", 160, 100, 200, 80)], [person(300)], ("person", "umbrella")),
    ("a table outside is no prop of the zone",
     [person(200)], [thing("dining table", 250, 240, 80, 50)], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "inside", "outside", "stall"),
    HELD_OR_STANDING_CASES,
    ids=[c[0] for c in HELD_OR_STANDING_CASES],
)
def test_street_vending_discards_only_props_held_off_the_ground(
    name: str, inside: list[Thing], outside: list[Thing], stall: tuple[str, ...] | None
) -> None:
    """A prop counts as carried only while someone in the frame holds it off the ground, not
    when it stands on the ground in front of a person (the vendor's own table, goods laid out)."""
    found = street_vending(observe(*inside, frame=(*inside, *outside)), VENDING)
    assert (None if found is None else found.labels) == stall, name
    if found is not None:
        assert found.boxes == tuple(o.box for o in inside)


@pytest.mark.parametrize(("bench_conf", "stall"), [(0.8, None), (0.3, ("person", "donut"))])
def test_food_on_a_bench_outside_the_zone_is_no_stall(
    bench_conf: float, stall: tuple[str, ...] | None
) -> None:
    """The bench a sitter put their food on may have its feet outside the zone: the frame's
    benches (at the rule's min_confidence) count too."""
    inside = [person(100), thing("donut", 160, 262, 20, 12)]
    bench = thing("bench", 80, 250, 200, 50, conf=bench_conf)
    found = street_vending(observe(*inside, frame=(*inside, bench)), VENDING)
    assert (None if found is None else found.labels) == stall


def test_street_vending_counts_vendors_and_props() -> None:
    scene = [
        person(100),
        thing("dining table", 150, 240, 80, 50),
        thing("umbrella", 60, 100, 200, 80),
    ]
    assert street_vending(observe(*scene), VENDING.model_copy(update={"min_props": 2}))
    assert not street_vending(observe(*scene), VENDING.model_copy(update={"min_props": 3}))
    assert not street_vending(observe(*scene), VENDING.model_copy(update={"min_persons": 2}))
    two = [*scene, person(160)]
    assert street_vending(observe(*two), VENDING.model_copy(update={"min_persons": 2}))
    # prop_distance is in person heights: 2.5 heights away counts only with a longer reach.
    far = [person(100), thing("dining table", 390, 240, 80, 50)]
    assert not street_vending(observe(*far), VENDING)
    assert street_vending(observe(*far), VENDING.model_copy(update={"prop_distance": 3.0}))


@pytest.mark.parametrize(
    ("persons", "min_persons", "crowd"),
    [(4, 5, False), (5, 5, True), (12, 8, True), (7, 8, False)],
)
def test_crowd_gathering_threshold(persons: int, min_persons: int, crowd: bool) -> None:
    objs = [person(50 * k, disp=5.0, seen_s=0.0) for k in range(persons)]  # moving is fine
    objs.append(person(900, conf=0.2))  # below min_confidence: not counted
    found = crowd_gathering(observe(*objs), CrowdGatheringParams(min_persons=min_persons))
    assert (found is not None) is crowd
    if found is not None:
        assert len(found.boxes) == persons and found.confidence == pytest.approx(0.8)


CAR_BOX = (300.0, 200.0, 500.0, 320.0)


@pytest.mark.parametrize(
    ("obj", "parked"),
    [
        (Thing("car", CAR_BOX), True),
        (Thing("truck", CAR_BOX), True),
        (Thing("bus", CAR_BOX), True),
        (Thing("car", CAR_BOX, disp=1.0), False),  # driving through
        (Thing("car", CAR_BOX, seen_s=0.5), False),  # just arrived
        (Thing("car", CAR_BOX, conf=0.2), False),
        (Thing("bicycle", CAR_BOX), False),
        (Thing("person", CAR_BOX), False),
    ],
)
def test_illegal_parking_judgement(obj: Thing, parked: bool) -> None:
    assert (illegal_parking(observe(obj), IllegalParkingParams()) is not None) is parked


@pytest.mark.parametrize(
    ("bikes", "moving", "min_count", "parked"),
    [(5, 0, 5, True), (4, 0, 5, False), (6, 2, 5, False), (3, 0, 3, True), (1, 1, 1, False)],
)
def test_non_motor_parking_counts_stationary_bikes(
    bikes: int, moving: int, min_count: int, parked: bool
) -> None:
    objs = [
        thing("bicycle" if k % 2 else "motorcycle", 60 * k, disp=2.0 if k < moving else 0.0)
        for k in range(bikes)
    ]
    found = non_motor_parking(observe(*objs), NonMotorParkingParams(min_count=min_count))
    assert (found is not None) is parked


@pytest.mark.parametrize(
    ("score", "zone_threshold", "head_threshold", "garbage"),
    [
        (0.7, None, None, True),  # default threshold 0.5
        (0.4, None, None, False),
        (0.6, None, 0.65, False),  # the head file's threshold
        (0.7, None, 0.65, True),
        (0.6, 0.55, 0.65, True),  # the zone overrides the head
        (None, None, None, False),  # head not scored (no scene head loaded)
    ],
)
def test_garbage_overflow_threshold(
    score: float | None, zone_threshold: float | None, head_threshold: float | None, garbage: bool
) -> None:
    obs = observe(
        scene={} if score is None else {"garbage": score},
        heads={} if head_threshold is None else {"garbage": head_threshold},
    )
    found = garbage_overflow(obs, GarbageOverflowParams(threshold=zone_threshold))
    assert (found is not None) is garbage
    if found is not None:
        assert found.boxes == ((0.0, 0.0, 1000.0, 500.0),) and found.confidence == score


@pytest.mark.parametrize(
    ("frame", "params", "judged"),
    [
        ((), {}, True),
        # The zone box is 1000 x 500 px: a 300 x 500 passer-by hides 30 % of it.
        ((thing("person", 100, 0, 300, 500),), {}, False),
        ((thing("bicycle", 100, 0, 300, 500),), {}, False),
        ((thing("person", 100, 0, 100, 250),), {}, True),  # 5 %: far off, small
        ((thing("person", 900, 0, 300, 500),), {}, True),  # 10 % inside the zone box, the rest out
        ((thing("person", 1100, 0, 300, 500),), {}, True),  # beside the zone, not in front
        ((thing("bicycle", 0, 0, 120, 250), thing("person", 500, 0, 120, 250)), {}, False),  # 12 %
        ((thing("car", 100, 0, 500, 500),), {}, True),  # not an occluder by default
        ((thing("car", 100, 0, 500, 500),), {"occluders": ["car"]}, False),
        ((thing("person", 100, 0, 300, 500, conf=0.2),), {}, True),  # below min_confidence
        ((thing("person", 0, 0, 1000, 500),), {"max_occluded": 1.0}, True),  # gate off
        ((thing("person", 100, 0, 300, 500),), {"max_occluded": 0.4}, True),
    ],
)
def test_garbage_overflow_is_not_judged_behind_passers_by(
    frame: tuple[Thing, ...], params: dict[str, object], judged: bool
) -> None:
    obs = observe(scene={"garbage": 0.9}, heads={"garbage": 0.7}, frame=frame)
    found = garbage_overflow(obs, GarbageOverflowParams.model_validate(params))
    assert (found is not None) is judged


@pytest.mark.parametrize(
    ("static", "objs", "shop", "piled"),
    [
        (None, [], False, False),  # no background model
        (0.02, [], False, False),
        (0.06, [], True, True),
        # A new table covering 8 % of the zone: shop front, but not piled materials.
        (0.0, [thing("dining table", 0, 0, 400, 100)], True, False),
        # The same table already in the learned background is not new.
        (0.0, [thing("dining table", 0, 0, 400, 100, new=False)], False, False),
        # A table carried through is not static.
        (0.0, [thing("dining table", 0, 0, 400, 100, disp=1.0)], False, False),
        # Benches are street furniture.
        (0.0, [thing("bench", 0, 0, 400, 100)], False, False),
        # Small static foreground plus a small new chair add up.
        (0.03, [thing("chair", 0, 0, 200, 75)], True, False),
    ],
)
def test_static_foreground_rules(
    static: float | None, objs: list[Thing], shop: bool, piled: bool
) -> None:
    obs = observe(*objs, static=static)
    assert (shop_front_occupation(obs, ShopFrontParams()) is not None) is shop
    assert (piled_materials(obs, PiledMaterialsParams()) is not None) is piled


SQUARE = ((0, 0), (100, 0), (100, 100), (0, 100))
TRIANGLE = ((0, 0), (100, 0), (0, 100))  # the half of the square above its diagonal
L_SHAPE = ((0, 0), (100, 0), (100, 50), (50, 50), (50, 100), (0, 100))  # concave, 7500 px²


@pytest.mark.parametrize(
    ("polygon", "boxes", "min_area", "covered"),
    [
        # 1100 px² of box, 600 of them inside the zone: 6 %, not the 11 % the box holds.
        (SQUARE, [(40, 90, 150, 100)], 0.1, None),
        (SQUARE, [(40, 90, 150, 100)], 0.05, 0.06),
        # Two detections of one table cover its 15 % once, not 30 %.
        (SQUARE, [(0, 0, 100, 15), (0, 0, 100, 15)], 0.2, None),
        # Overlapping boxes: 20 % together, not 24 %.
        (SQUARE, [(0, 0, 60, 20), (40, 0, 100, 20)], 0.21, None),
        (SQUARE, [(0, 0, 60, 20), (40, 0, 100, 20)], 0.2, 0.2),
        (SQUARE, [(0, 0, 100, 25)], 0.2, 0.25),
        (SQUARE, [(-50, -50, 150, 150)], 0.2, 1.0),
        # Any polygon: the box's part below the triangle's diagonal is out of the zone.
        (TRIANGLE, [(50, 50, 100, 100)], 0.01, None),
        (TRIANGLE, [(0, 0, 50, 50)], 0.4, 0.5),
        (TRIANGLE, [(0, 0, 100, 100)], 0.2, 1.0),
        (L_SHAPE, [(50, 50, 100, 100)], 0.01, None),
        (L_SHAPE, [(25, 25, 75, 75)], 0.2, 1875 / 7500),
    ],
)
def test_shop_front_counts_the_zone_its_objects_cover(
    polygon: tuple[tuple[float, float], ...],
    boxes: list[tuple[float, float, float, float]],
    min_area: float,
    covered: float | None,
) -> None:
    """The new objects must cover min_area of the zone: their boxes' union within its polygon,
    not the boxes' areas summed, in the zone or not."""
    n = len(boxes)
    xy = np.asarray(polygon, np.float32)
    obs = ZoneObservation(
        xyxy=np.asarray(boxes, np.float32),
        confidence=np.full(n, 0.8, np.float32),
        labels=("dining table",) * n,
        track_id=np.arange(1, n + 1, dtype=np.int64),
        displacement=np.zeros(n, np.float32),
        observed_s=np.full(n, 10.0, np.float32),
        new_object=np.ones(n, bool),
        zone_box=(*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()),
        zone_area_px=10_000.0,
        static_fraction=0.0,
        zone_polygon=xy,
    )
    found = shop_front_occupation(obs, ShopFrontParams(min_area=min_area))
    if covered is None:
        assert found is None
    else:
        assert found is not None
        expected = min(1.0, 0.5 + 0.25 * (covered / min_area - 1.0))
        # A zone that is its box is measured exactly, any other on COVER_CELLS cells across.
        off = 0.0 if polygon == SQUARE else 1 / COVER_CELLS
        assert found.confidence == pytest.approx(expected, abs=0.25 * off / min_area + 1e-9)
        assert found.labels == ("dining table",) * n


# Concave, its edges off the 128-cell grid over its 994 × 604 px box: 435,976 px².
U_SHAPE = ((3, 7), (997, 7), (997, 611), (700, 611), (700, 200), (300, 200), (300, 611), (3, 611))


@pytest.mark.parametrize("seed", range(5))
def test_the_zone_covered_by_many_boxes_is_measured_within_a_cell(seed: int) -> None:
    """100 scattered boxes, overlapping and reaching out of a concave zone: the share covered
    is within one cell's width (1/128) of the exact share, which whole-pixel coordinates let
    a one-pixel mask give."""
    rng = np.random.default_rng(seed)
    corner, size = rng.integers(0, 1000, (100, 2)), rng.integers(5, 120, (100, 2))
    boxes = np.concatenate([corner, corner + size], axis=1)
    zone = np.zeros((700, 1100), np.uint8)
    zone[7:611, 3:997] = 1
    zone[200:611, 300:700] = 0
    union = np.zeros_like(zone)
    for x1, y1, x2, y2 in boxes.tolist():
        union[y1:y2, x1:x2] = 1
    assert int(zone.sum()) == 435_976
    exact = int((zone & union).sum()) / int(zone.sum())
    xy = np.asarray(U_SHAPE, np.float32)
    obs = ZoneObservation(
        xyxy=boxes.astype(np.float32),
        confidence=np.full(100, 0.8, np.float32),
        labels=("dining table",) * 100,
        track_id=np.arange(1, 101, dtype=np.int64),
        displacement=np.zeros(100, np.float32),
        observed_s=np.full(100, 10.0, np.float32),
        new_object=np.ones(100, bool),
        zone_box=(*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()),
        zone_area_px=435_976.0,
        static_fraction=0.0,
        zone_polygon=xy,
    )
    found = shop_front_occupation(obs, ShopFrontParams(min_area=0.2))
    assert found is not None and found.confidence < 1.0
    covered = 0.2 * (1 + (found.confidence - 0.5) / 0.25)
    assert 0.2 < exact < 0.6
    assert covered == pytest.approx(exact, abs=1 / COVER_CELLS)


def test_static_confidence_grows_with_area() -> None:
    small = piled_materials(observe(static=0.05), PiledMaterialsParams())
    large = piled_materials(observe(static=0.2), PiledMaterialsParams())
    assert small is not None and large is not None
    assert small.confidence == pytest.approx(0.5) and large.confidence == 1.0
    assert small.labels == ("static",) and small.boxes == ((10.0, 10.0, 50.0, 50.0),)


def test_every_rule_type_has_an_evaluator_and_empty_zones_are_quiet() -> None:
    assert set(EVALUATORS) == set(RULE_PARAMS)
    for name, evaluate in EVALUATORS.items():
        assert evaluate(observe(), RULE_PARAMS[name]()) is None, name


# Up to 80 frames, irregularly spaced, and a flag for each.
FRAME_GAPS = st.lists(st.floats(0.1, 40.0), min_size=1, max_size=80)
FLAGS = st.lists(st.booleans(), min_size=80, max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    gaps=FRAME_GAPS,
    visible=FLAGS,
    reports=st.one_of(st.just([True] * 80), FLAGS),
    dwell=st.floats(0.0, 60.0),
    gap=st.floats(0.0, 30.0),
    clear=st.floats(0.0, 60.0),
    update=st.floats(0.0, 60.0),
)
def test_episode_invariants(
    gaps: list[float],
    visible: list[bool],
    reports: list[bool],
    dwell: float,
    gap: float,
    clear: float,
    update: float,
) -> None:
    """Any frame sequence: raise → update* → clear, never overlapping, spaced and dwelt; no
    transition on a frame that may not report (then a held dwell may raise on an empty frame)."""
    p = RuleParams(dwell_s=dwell, gap_s=gap, clear_s=clear, update_s=update)
    held = not all(reports)
    state, t, active, last_report = RuleState(), 0.0, False, 0.0
    for dt, seen, may in zip(gaps, visible, reports, strict=False):
        t += dt
        state, transitions = step(state, SEEN if seen else None, t, p, may)
        assert may or not transitions
        for tr in transitions:
            assert tr.t == t and tr.first_seen <= t
            if tr.kind == "raise":
                assert not active and (seen or held) and tr.dwell_s >= dwell
                active, last_report = True, t
            elif tr.kind == "update":
                assert active and seen and t - last_report >= update
                last_report = t
            else:
                assert active and tr.dwell_s >= 0
                active = False
        # Raised and not cleared yet: active, or over while off with its clear held.
        assert (state.raised_seen is not None) is active
