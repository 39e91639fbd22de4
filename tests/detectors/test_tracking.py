"""ByteTrack-style tracker: ids across frames, both association stages, time-based loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpatrol.detectors.tracking import Tracker, iou_matrix, match
from gridpatrol.detectors.types import Detections

PERSON, CAR = 0, 2


@dataclass(frozen=True)
class Obj:
    box: tuple[float, float, float, float]
    conf: float = 0.9
    cls: int = PERSON


def frame(*objs: Obj) -> Detections:
    if not objs:
        return Detections.empty()
    return Detections.from_arrays(
        [o.box for o in objs], [o.conf for o in objs], [o.cls for o in objs]
    )


def ids(tracker: Tracker, t: float, *objs: Obj) -> list[int]:
    """Track ids in input order; -1 for a detection the tracker dropped."""
    det = frame(*objs)
    out = tracker.update(det, t)
    assert out.tracker_id is not None
    result = []
    for o in objs:
        hit = np.flatnonzero((out.xyxy == np.asarray(o.box, np.float32)).all(axis=1))
        result.append(int(out.tracker_id[hit[0]]) if len(hit) else -1)
    return result


def walk(x: float, y: float = 100.0, w: float = 40.0, h: float = 100.0) -> Obj:
    return Obj((x, y, x + w, y + h))


def test_iou_and_greedy_match() -> None:
    a = np.asarray([[0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    b = np.asarray([[100, 100, 110, 110], [0, 0, 10, 5], [500, 500, 510, 510]], np.float32)
    iou = iou_matrix(a, b)
    assert iou[0, 1] == pytest.approx(0.5) and iou[1, 0] == pytest.approx(1.0)
    pairs, rest_a, rest_b = match(iou, 0.3)
    assert sorted(pairs) == [(0, 1), (1, 0)] and rest_a == [] and rest_b == [2]
    assert match(np.zeros((0, 3), np.float32), 0.3) == ([], [], [0, 1, 2])


def test_moving_object_keeps_its_id_with_irregular_frames() -> None:
    tracker = Tracker()
    # 60 px/s walker seen at irregular instants (motion gate): prediction bridges the gaps.
    seen = {ids(tracker, t, walk(60 * t))[0] for t in (0.0, 0.1, 0.3, 0.35, 0.9, 1.0, 1.6)}
    assert seen == {1}


def test_two_objects_get_distinct_stable_ids() -> None:
    tracker = Tracker()
    first = ids(tracker, 0.0, walk(0), walk(300))
    assert first == [1, 2]
    for k in range(1, 10):
        t = k * 0.2
        assert ids(tracker, t, walk(300 - 50 * t), walk(50 * t)) == [2, 1]


def test_low_confidence_detection_continues_a_track_but_never_starts_one() -> None:
    tracker = Tracker()
    assert ids(tracker, 0.0, walk(0)) == [1]
    assert ids(tracker, 0.2, walk(0)) == [1]
    # Partly occluded: confidence drops below the first-stage threshold, second stage keeps it.
    assert ids(tracker, 0.4, Obj(walk(2).box, conf=0.2)) == [1]
    # A weak detection elsewhere is not a new object.
    assert ids(tracker, 0.6, walk(4), Obj((500, 0, 540, 100), conf=0.2)) == [1, -1]


def test_classes_never_match_each_other() -> None:
    tracker = Tracker()
    assert ids(tracker, 0.0, Obj((0, 0, 50, 50), cls=CAR)) == [1]
    assert ids(tracker, 0.2, Obj((0, 0, 50, 50), cls=CAR)) == [1]
    assert ids(tracker, 0.4, Obj((0, 0, 50, 50), cls=PERSON)) == [2]


@pytest.mark.parametrize(
    ("absent_s", "same_id"),
    [(1.0, True), (2.9, True), (3.5, False), (30.0, False)],
)
def test_lost_tracks_are_kept_for_lost_s_seconds(absent_s: float, same_id: bool) -> None:
    tracker = Tracker(lost_s=3.0)
    for t in (0.0, 0.5, 1.0):
        assert ids(tracker, t, Obj((10, 10, 60, 110))) == [1]
    assert ids(tracker, 1.5) == []
    assert tracker.states() == {1: "lost"}
    again = ids(tracker, 1.0 + absent_s, Obj((10, 10, 60, 110)))
    assert (again == [1]) is same_id


@dataclass
class _Keeping(Tracker):
    """A tracker that keeps every lost track for 60 s, as a subclass may keep some."""

    def _expire(self, t: float) -> None:
        self.tracks = [tr for tr in self.tracks if tr.state != "lost" or t - tr.last_t <= 60]


@pytest.mark.parametrize(
    ("box", "conf", "cls", "track_id"),
    [
        ((100, 100, 140, 200), 0.9, PERSON, 1),
        ((107, 100, 147, 200), 0.9, PERSON, 1),  # 33 / 40 = 0.83 of it inside the old box
        ((109, 100, 149, 200), 0.9, PERSON, 2),  # 31 / 40 = 0.78: a new track
        ((100, 100, 113, 200), 0.9, PERSON, 1),  # its left third, as a lorry drives off
        ((127, 100, 140, 200), 0.9, PERSON, 1),  # its right third
        ((100, 150, 140, 200), 0.9, PERSON, 1),  # its lower half
        ((100, 100, 140, 200), 0.9, CAR, 2),  # never across classes
        ((100, 100, 140, 200), 0.3, PERSON, -1),  # weak boxes continue only followed tracks
    ],
    ids=[
        "in place",
        "83 % inside",
        "78 % inside",
        "left third",
        "right third",
        "lower half",
        "another class",
        "weak",
    ],
)
def test_a_track_kept_past_lost_s_takes_back_only_a_confident_box_within_its_last_one(
    box: tuple[float, float, float, float], conf: float, cls: int, track_id: int
) -> None:
    tracker = _Keeping()
    for t in (0.0, 0.5, 1.0):
        assert ids(tracker, t, walk(100)) == [1]
    assert ids(tracker, 1.5) == []  # lost from here
    assert ids(tracker, 11.0, Obj(box, conf, cls)) == [track_id]


@pytest.mark.parametrize(
    "shown",
    [
        [(100, 113), (100, 127), (100, 140)],  # a lorry drives off to the right
        [(127, 140), (113, 140), (100, 140)],  # to the left
        [(100, 140)],
    ],
    ids=["from the left", "from the right", "at once"],
)
def test_an_object_revealed_bit_by_bit_comes_back_on_its_kept_track(
    shown: list[tuple[float, float]],
) -> None:
    """Its first box is the part a lorry driving off shows, within its old box but far from
    it by IoU (0.33 for a third): it takes the kept track back, still stationary."""
    tracker = _Keeping()
    for k in range(5):
        assert ids(tracker, k / 2, walk(100)) == [1]
    assert ids(tracker, 2.5) == []  # lost from here
    seen = []
    for k, (x1, x2) in enumerate([*shown, (100, 140), (100, 140)]):
        (track_id,) = ids(tracker, 12.0 + k / 2, Obj((x1, 100, x2, 200)))
        still = tracker.motion(np.asarray([track_id])).stationary(0.3, 2.0)
        seen.append((track_id, bool(still[0])))
    assert seen == [(1, True)] * (len(shown) + 2)
    assert tracker.states() == {1: "tracked"}


def test_a_track_within_lost_s_wins_over_one_kept_past_it() -> None:
    """A box matches a track lost for 1 s (IoU 0.6) rather than one lost for 11 s that it
    covers exactly (IoU 1): tracks kept past lost_s come back only with boxes no other took."""
    tracker = _Keeping()
    for t in (0.0, 0.5, 1.0):
        assert ids(tracker, t, walk(100)) == [1]
    # Someone else walks in from the right, 20 px/s, and is lost at x = 110.
    for k in range(11):
        assert ids(tracker, 10.0 + k / 2, walk(210 - 10 * k)) == [2]
    assert ids(tracker, 16.0, walk(100)) == [2]
    assert tracker.states() == {1: "lost", 2: "tracked"}


def test_unconfirmed_single_detection_is_forgotten_after_unconfirmed_s() -> None:
    tracker = Tracker(unconfirmed_s=1.0)
    assert ids(tracker, 0.0, Obj((10, 10, 60, 110))) == [1]
    assert ids(tracker, 0.5) == []
    assert ids(tracker, 1.0) == []
    assert tracker.states() == {1: "new"}
    assert ids(tracker, 1.5) == []
    assert tracker.states() == {}
    assert ids(tracker, 1.6, Obj((10, 10, 60, 110))) == [2]


def test_an_object_detected_on_every_other_frame_keeps_one_track() -> None:
    """2 fps, the detector finding a parked car on even frames only: one track, stationary."""
    tracker = Tracker()
    car = Obj((300, 300, 600, 480), cls=CAR)
    seen = [ids(tracker, k / 2, *([car] if k % 2 == 0 else [])) for k in range(21)]
    assert seen == [[1] if k % 2 == 0 else [] for k in range(21)]
    motion = tracker.motion(np.asarray([1], np.int64))
    assert motion.observed_s.tolist() == [10.0]
    assert motion.stationary(0.1, 2.0).tolist() == [True]


def test_a_track_seen_once_takes_no_box_a_followed_track_continues() -> None:
    """A false positive at 1 s lies where a walker (40 px/s) is 1 s later, and matches that
    box better than the walker's prediction; the walker keeps its box and its id."""
    tracker = Tracker()
    for k in range(3):
        assert ids(tracker, k / 2, walk(20 * k)) == [1]
    assert ids(tracker, 1.0, walk(40), walk(85)) == [1, 2]  # the false positive, once
    assert ids(tracker, 1.5, walk(60)) == [1]
    assert ids(tracker, 2.0, walk(85)) == [1]
    assert ids(tracker, 2.5, walk(105)) == [1]
    assert tracker.states() == {1: "tracked"}


@pytest.mark.parametrize(
    ("speed_px_s", "stationary"),
    [(0.0, True), (3.0, True), (30.0, False), (100.0, False)],
)
def test_motion_is_relative_to_box_size(speed_px_s: float, stationary: bool) -> None:
    tracker = Tracker(history_s=10.0)
    for k in range(26):  # 5 s at 5 fps; a 100 px tall person
        t = k * 0.2
        out = tracker.update(frame(walk(speed_px_s * t)), t)
    assert out.tracker_id is not None
    motion = tracker.motion(out.tracker_id)
    assert motion.observed_s[0] == pytest.approx(5.0)
    assert bool(motion.stationary(0.5, 2.0)[0]) is stationary


def test_new_track_has_no_observed_span_and_unknown_ids_are_zero() -> None:
    tracker = Tracker()
    out = tracker.update(frame(walk(0)), 0.0)
    assert out.tracker_id is not None
    motion = tracker.motion(np.asarray([*out.tracker_id.tolist(), 99], np.int64))
    assert motion.observed_s.tolist() == [0.0, 0.0]
    assert not motion.stationary(0.5, 2.0).any()


def test_history_window_forgets_old_positions() -> None:
    tracker = Tracker(history_s=2.0)
    # Walks for 2 s, then stands still for 4 s: stationary again once the walk leaves the window.
    for k in range(31):
        t = k * 0.2
        x = 50 * min(t, 2.0)
        out = tracker.update(frame(walk(x)), t)
    assert out.tracker_id is not None
    motion = tracker.motion(out.tracker_id)
    assert motion.stationary(0.5, 1.5).tolist() == [True]
    assert motion.observed_s[0] <= 2.2


def test_out_of_order_frame_is_treated_as_simultaneous() -> None:
    tracker = Tracker()
    assert ids(tracker, 5.0, walk(0)) == [1]
    assert ids(tracker, 4.0, walk(0)) == [1]
    assert tracker.last_t == 5.0


@pytest.mark.parametrize(
    "box",
    [(100.0, 100.0, 100.0, 200.0), (300.0, 300.0, 340.0, 300.0), (50.0, 50.0, 50.0, 50.0)],
)
def test_a_box_clipped_to_no_area_keeps_its_track_and_is_stationary(
    box: tuple[float, float, float, float],
) -> None:
    tracker = Tracker()
    seen = [ids(tracker, float(t), Obj(box)) for t in range(5)]
    assert seen == [[1], [1], [1], [1], [1]]
    motion = tracker.motion(np.asarray([1], np.int64))
    assert motion.observed_s.tolist() == [4.0]
    assert motion.stationary(0.0, 2.0).tolist() == [True]
    assert iou_matrix(np.asarray([box], np.float32), np.asarray([box], np.float32)).tolist() == [
        [1.0]
    ]


box_st = st.tuples(
    st.floats(0, 600), st.floats(0, 400), st.floats(5, 200), st.floats(5, 200),
    st.floats(0.0, 1.0), st.integers(0, 2),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    frames=st.lists(
        st.tuples(st.floats(0.01, 5.0), st.lists(box_st, max_size=12)), min_size=1, max_size=25
    )
)
def test_tracker_invariants(frames: list[tuple[float, list[tuple[float, ...]]]]) -> None:
    """Any input: output rows are input rows, ids unique per frame, weak boxes never new."""
    tracker = Tracker()
    t, seen_ids = 0.0, set()
    for dt, boxes in frames:
        t += dt
        det = Detections.from_arrays(
            [(x, y, x + w, y + h) for x, y, w, h, _, _ in boxes],
            [c for *_, c, _ in boxes],
            [k for *_, k in boxes],
        )
        out = tracker.update(det, t)
        assert out.tracker_id is not None
        assert len(set(out.tracker_id.tolist())) == len(out)
        assert (out.confidence >= tracker.low_conf).all()
        rows = {tuple(r) for r in det.xyxy.tolist()}
        assert all(tuple(r) in rows for r in out.xyxy.tolist())
        new = set(out.tracker_id.tolist()) - seen_ids
        fresh = np.isin(out.tracker_id, list(new))
        assert (out.confidence[fresh] >= tracker.high_conf).all()
        seen_ids |= new


def test_a_duplicate_frame_a_millisecond_later_gives_no_speed() -> None:
    """A frame and its copy 1 ms later, the box jittering by 2 px: no 4000 px/s to carry on."""
    tracker = Tracker()
    seen = [
        ids(tracker, t, Obj((100 + dx, 100, 140 + dx, 200)))
        for t, dx in ((0.0, 0.0), (0.5, 2.0), (0.501, -2.0), (1.0, 2.0), (1.5, 0.0))
    ]
    assert seen == [[1]] * 5


@pytest.mark.parametrize("seed", range(10))
def test_a_standing_person_keeps_the_id_when_the_camera_drops_from_25_to_1_fps(
    seed: int,
) -> None:
    """A person 20 x 50 px, the box jittering by up to 2 px at 25 fps for 4 s, then seen one
    frame a second for 10 s."""
    rng = np.random.default_rng(seed)
    times = [k / 25 for k in range(100)] + [4.0 + k for k in range(11)]
    tracker = Tracker()
    seen = set()
    for t in times:
        x1, y1, x2, y2 = (np.asarray([300, 200, 320, 250]) + rng.uniform(-2, 2, 4)).tolist()
        seen |= set(ids(tracker, t, Obj((x1, y1, x2, y2))))
    assert seen == {1}


def test_a_box_half_hidden_at_once_keeps_its_track() -> None:
    """A parked car 120 px wide; a passing van hides its left part (45 px left) for 2 s."""
    tracker = Tracker()
    boxes = [(100, 300, 220, 380)] * 4 + [(175, 300, 220, 380)] * 4 + [(100, 300, 220, 380)] * 2
    seen = [ids(tracker, k / 2, Obj(box, cls=CAR)) for k, box in enumerate(boxes)]
    assert seen == [[1]] * len(boxes)


@pytest.mark.parametrize(("fps", "hidden_s"), [(25, 0.6), (6, 0.5), (6, 0.84)])
def test_a_walker_hidden_behind_a_pole_keeps_the_id(fps: int, hidden_s: float) -> None:
    """A person 40 px wide walking 80 px/s (two widths a second), seen for 2 s, hidden, then
    seen again where their steps took them: more than the 0.4 of a box a standing object's
    prediction may move."""
    seen_until = 2.0
    times = [k / fps for k in range(int(3.5 * fps))]
    tracker = Tracker()
    seen = [
        ids(tracker, t, walk(100 + 80 * t))
        for t in times
        if not seen_until < t <= seen_until + hidden_s
    ]
    assert seen == [[1]] * len(seen)
