"""Camera rule pipeline: composed scenes through tracking, zones, schedules and rules, still
images, and the real model on the real pedestrian-street footage (a negative vending scene)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gridpatrol.detectors import background as bg
from gridpatrol.detectors import bg_store
from gridpatrol.detectors.pipeline import (
    CameraPipeline,
    RuleEvent,
    Violation,
    detector_conf,
    judge_still,
)
from gridpatrol.detectors.rules import STATIONARY_MIN_S
from gridpatrol.detectors.types import Detections
from gridpatrol.site import Camera

SHANGHAI = ZoneInfo("Asia/Shanghai")
NAMES = ("person", "bicycle", "car", "bench", "dining table", "umbrella", "chair", "sandwich")
CLS = {n: i for i, n in enumerate(NAMES)}
SIZE = (1280, 720)
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=SHANGHAI)  # a Monday morning
WHOLE = [[0, 0], [1, 0], [1, 1], [0, 1]]
Obj = tuple[str, tuple[float, float, float, float]]


def camera(zones: list[dict[str, Any]], **extra: Any) -> Camera:
    return Camera.model_validate(
        {"id": "cam-t", "source": "mqtt", "location": {"address": "x"}, "zones": zones, **extra}
    )


def dets(objs: list[Obj], conf: float = 0.8) -> Detections:
    if not objs:
        return Detections.empty()
    return Detections.from_arrays(
        [b for _, b in objs], [conf] * len(objs), [CLS[n] for n, _ in objs]
    )


def play(
    pipe: CameraPipeline,
    scene: Callable[[float], list[Obj]],
    seconds: float,
    fps: float = 2.0,
    start: datetime = T0,
    conf: float = 0.8,
    **kw: Any,
) -> list[RuleEvent]:
    events: list[RuleEvent] = []
    for k in range(round(seconds * fps) + 1):
        s = k / fps
        events += pipe.process(start + timedelta(seconds=s), SIZE, dets(scene(s), conf), **kw)
    return events


def summary(events: list[RuleEvent], t0: datetime = T0) -> list[tuple[str, str, str, float]]:
    return [(e.kind, e.rule, e.zone_id, (e.t - t0).total_seconds()) for e in events]


VENDOR: Obj = ("person", (400, 300, 460, 450))
TABLE: Obj = ("dining table", (470, 370, 600, 450))
VENDING_ZONE = {
    "id": "pavement",
    "polygon": WHOLE,
    "rules": {"street_vending": {"dwell_s": 20, "gap_s": 10, "clear_s": 15, "update_s": 30}},
}


def test_vending_stall_raises_once_updates_and_clears() -> None:
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)
    events = play(pipe, lambda s: [VENDOR, TABLE] if s < 60 else [], 90)
    # Stationary from 2 s (the tracker must see the stall for STATIONARY_MIN_S first).
    assert summary(events) == [
        ("raise", "street_vending", "pavement", 22.0),
        ("update", "street_vending", "pavement", 52.0),
        ("clear", "street_vending", "pavement", 74.5),
    ]
    raised = events[0]
    assert raised.first_seen == T0 + timedelta(seconds=2)
    assert raised.labels == ("person", "dining table") and len(raised.track_ids) == 2
    assert raised.boxes[0] == pytest.approx(VENDOR[1])
    assert events[-1].dwell_s == pytest.approx(57.5)


@pytest.mark.parametrize(("conf", "raised"), [(0.4, True), (0.3, False)])
def test_weak_detections_a_rule_accepts_are_tracked(conf: float, raised: bool) -> None:
    # 0.4 is below the tracker's usual bar for new tracks but above the rule's min_confidence.
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)
    events = play(pipe, lambda s: [VENDOR, TABLE], 30, conf=conf)
    assert [e.kind for e in events] == (["raise"] if raised else [])


PILE = {"dwell_s": 300, "gap_s": 60, "clear_s": 120, "update_s": 300}


@pytest.mark.parametrize(
    ("rule", "params", "conf", "high_conf"),
    [
        ("crowd_gathering", {}, 0.1, 0.35),
        ("crowd_gathering", {"min_confidence": 0.2}, 0.1, 0.2),
        ("crowd_gathering", {"min_confidence": 0.05}, 0.05, 0.05),
        ("crowd_gathering", {"min_confidence": 0.0}, 0.01, 0.0),
        # Its occluders are the frame's detections, never tracked.
        ("garbage_overflow", {"min_confidence": 0.05}, 0.05, 0.45),
        # It judges no detection at all.
        ("piled_materials", {**PILE, "min_confidence": 0.05}, 0.1, 0.45),
    ],
    ids=["default", "above weak boxes", "below them", "zero", "occluders", "piles"],
)
def test_the_detector_keeps_the_boxes_tracker_and_rules_need(
    rule: str, params: dict[str, Any], conf: float, high_conf: float
) -> None:
    """The detector's floor and the tracker's bar for new tracks follow the rules that read
    detections, and only those."""
    if rule == "crowd_gathering":
        params = {"min_persons": 3, **params}
    zone = {"id": "plaza", "polygon": WHOLE, "rules": {rule: params}}
    cameras = [camera([VENDING_ZONE]), camera([zone])]
    assert detector_conf(cameras) == conf
    pipe = CameraPipeline(cameras[1], SHANGHAI, NAMES)
    assert pipe.tracker.high_conf == high_conf


def aside(obj: Obj, dx: float = 140.0) -> Obj:
    x1, y1, x2, y2 = obj[1]
    return (obj[0], (x1 + dx, y1, x2 + dx, y2))


@pytest.mark.parametrize(
    ("occlusion_s", "moved", "track_ids"),
    [
        (6.0, False, (1, 2)),
        # 8 s hidden, plus the 2 s a new track needs to be stationary, would exceed gap_s.
        (8.0, False, (1, 2)),
        (9.5, False, (1, 2)),
        # Back a step aside: too far to match the old tracks, new ids stationary 2 s later.
        (6.0, True, (3, 4)),
    ],
    ids=["6 s", "8 s", "9.5 s", "6 s and a step aside"],
)
def test_dwell_survives_an_occlusion_and_id_switch(
    occlusion_s: float, moved: bool, track_ids: tuple[int, int]
) -> None:
    """A lorry hides the stall for longer than the tracker's lost_s but shorter than gap_s:
    the episode (and its first_seen) is the same, whether the stall keeps its track ids or
    comes back under new ones."""
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)

    def scene(s: float) -> list[Obj]:
        if 8 <= s < 8 + occlusion_s:
            return []
        if moved and s >= 8:
            return [aside(VENDOR), aside(TABLE)]
        return [VENDOR, TABLE]

    events = play(pipe, scene, 30)
    assert summary(events) == [("raise", "street_vending", "pavement", 22.0)]
    assert events[0].track_ids == track_ids
    assert events[0].first_seen == T0 + timedelta(seconds=2)


def revealed(obj: Obj, left: float, right: float) -> Obj:
    """The part of ``obj`` between the fractions ``left`` and ``right`` of its width."""
    x1, y1, x2, y2 = obj[1]
    return (obj[0], (x1 + left * (x2 - x1), y1, x1 + right * (x2 - x1), y2))


@pytest.mark.parametrize(
    ("shown", "still"),
    [
        # The lorry drives off to the right. A third of the table is off its old centre by a
        # third of its width, more than max_displacement (0.5) of the 80 px it is high.
        ([(0, 1 / 3), (0, 2 / 3)], [False, True, True]),
        ([(2 / 3, 1), (1 / 3, 1)], [False, True, True]),  # to the left
        ([], [True]),
    ],
    ids=["from the left", "from the right", "at once"],
)
def test_a_stall_revealed_bit_by_bit_comes_back_on_its_old_tracks(
    shown: list[tuple[float, float]], still: list[bool]
) -> None:
    """A lorry hides the stall from 8 s, then drives off and shows it a third at a time from
    16 s: the first boxes lie within the old ones but far from them by IoU. The stall comes
    back on its old tracks, stationary by the full boxes (17 s, 9.5 s after it was last
    seen at 7.5 s), and the episode goes on. As new tracks it would be stationary at 18 s,
    absent for 10.5 s, more than gap_s (10)."""
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)
    back = 16.0

    def scene(s: float) -> list[Obj]:
        if 8 <= s < back:
            return []
        k = round((s - back) * 2)
        if 0 <= k < len(shown):
            return [revealed(VENDOR, *shown[k]), revealed(TABLE, *shown[k])]
        return [VENDOR, TABLE]

    seen: list[tuple[list[int], bool]] = []
    events: list[RuleEvent] = []
    for k in range(61):
        s = k / 2
        events += pipe.process(T0 + timedelta(seconds=s), SIZE, dets(scene(s)))
        if back <= s <= back + len(shown) / 2:
            ts = (T0 + timedelta(seconds=s)).timestamp()
            tracks = sorted(tr.id for tr in pipe.tracker.tracks if tr.last_t == ts)
            motion = pipe.tracker.motion(np.asarray(tracks))
            seen.append((tracks, bool(motion.stationary(0.5, STATIONARY_MIN_S).all())))
    assert seen == [([1, 2], s) for s in still]
    assert summary(events) == [("raise", "street_vending", "pavement", 22.0)]
    assert events[0].track_ids == (1, 2)
    assert events[0].first_seen == T0 + timedelta(seconds=2)


def test_occlusion_longer_than_gap_restarts_the_dwell() -> None:
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)
    events = play(pipe, lambda s: [] if 8 <= s < 20 else [VENDOR, TABLE], 50)
    # Back in place after 12 s (more than gap_s 10), on their old tracks: the dwell restarts
    # at 20 s.
    assert summary(events) == [("raise", "street_vending", "pavement", 40.0)]
    assert events[0].first_seen == T0 + timedelta(seconds=20)


def test_a_lost_track_is_kept_only_while_it_was_stationary_and_an_episode_may_wait() -> None:
    """Stationary tracks lost are kept for the longest clear_s of the camera's stationarity
    rules (15 s here), moving ones for lost_s (3 s) only."""
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)
    walking = walker(0, speed=40.0)
    play(pipe, lambda s: [VENDOR, walking(s)], 9.5)  # both last seen at 9.5 s
    assert sorted(pipe.tracker.states().items()) == [(1, "tracked"), (2, "tracked")]

    def alive_after(seconds: float) -> list[int]:
        pipe.tracker.update(dets([]), (T0 + timedelta(seconds=9.5 + seconds)).timestamp())
        return sorted(pipe.tracker.states())

    assert alive_after(3.0) == [1, 2]
    assert alive_after(3.5) == [1]  # the walker, lost for more than lost_s
    assert alive_after(15.0) == [1]
    assert alive_after(15.5) == []


@pytest.mark.parametrize(
    ("back_s", "x", "speed", "track_id", "stationary"),
    [
        # Someone walks through the spot 30 s after the vendor was lost (clear_s is 60 s): at
        # 41 s half their box is within the old one, at 41.5 s it is the old box, but their
        # own track has taken it first.
        (40.5, 340.0, 60.0, 2, False),
        # From the right, 5 s after (more than lost_s, 3 s).
        (15.0, 460.0, -60.0, 2, False),
        (22.0, 360.0, 40.0, 2, False),
        # The vendor back in place, a couple of pixels off: the old track, stationary at once.
        (22.0, 402.0, 0.0, 1, True),
    ],
    ids=["walking through 30 s later", "from the right 5 s later", "slowly", "back in place"],
)
def test_a_passer_by_never_takes_the_track_of_a_stall_lost_in_that_spot(
    back_s: float, x: float, speed: float, track_id: int, stationary: bool
) -> None:
    """A track kept past lost_s because it was stationary takes back only a near-same box
    that no track within lost_s took: a passer-by keeps their own track, not the old one and
    its stationary history."""
    zone = {**VENDING_ZONE, "rules": {"street_vending": {}}}  # clear_s 60 s
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)

    def scene(s: float) -> list[Obj]:
        if s <= 10:
            return [VENDOR]
        if s < back_s:
            return []
        x1 = x + speed * (s - back_s)
        return [("person", (x1, 300, x1 + 60, 450))]

    seen: list[tuple[float, int, bool]] = []
    for k in range(round((back_s + 2.5) * 2) + 1):
        s = k / 2
        ts = (T0 + timedelta(seconds=s)).timestamp()
        pipe.process(T0 + timedelta(seconds=s), SIZE, dets(scene(s)))
        if s >= back_s:
            (track,) = [tr for tr in pipe.tracker.tracks if tr.last_t == ts]
            motion = pipe.tracker.motion(np.asarray([track.id]))
            still = bool(motion.stationary(0.5, STATIONARY_MIN_S)[0])
            seen.append((s - back_s, track.id, still))
    assert seen == [(k / 2, track_id, stationary) for k in range(6)]


def walker(offset: float, speed: float = 120.0) -> Callable[[float], Obj]:
    def at(s: float) -> Obj:
        x = (offset + speed * s) % 1400 - 100
        return ("person", (x, 320, x + 55, 460))

    return at


def test_passers_by_and_bench_sitters_never_make_vending() -> None:
    zone = {**VENDING_ZONE, "rules": {"street_vending": {"dwell_s": 10}}}
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)
    walkers = [walker(o) for o in (0, 300, 700)]
    bench: Obj = ("bench", (800, 400, 1000, 470))
    sitters: list[Obj] = [("person", (820, 330, 870, 460)), ("person", (930, 330, 980, 460))]

    def scene(s: float) -> list[Obj]:
        # People stream past a café table; two people sit on a bench, one eats a sandwich, and
        # another sandwich lies on the seat between them.
        return [w(s) for w in walkers] + [
            TABLE,
            bench,
            *sitters,
            ("sandwich", (835, 380, 855, 395)),
            ("sandwich", (880, 420, 900, 432)),
        ]

    assert play(pipe, scene, 120) == []


def test_zones_see_only_their_own_objects() -> None:
    left = {"id": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]],
            "rules": {"crowd_gathering": {"min_persons": 2, "dwell_s": 5}}}  # fmt: skip
    right = {**left, "id": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}
    pipe = CameraPipeline(camera([left, right]), SHANGHAI, NAMES)
    two_left: list[Obj] = [("person", (100, 300, 150, 450)), ("person", (300, 300, 350, 450))]
    events = play(pipe, lambda s: [*two_left, ("person", (900, 300, 950, 450))], 10)
    assert summary(events) == [("raise", "crowd_gathering", "left", 5.0)]


@pytest.mark.parametrize(
    ("start_local", "schedule", "expected"),
    [
        # Stall from 19:50 for 30 min, rules active 08:00-20:00 (to the end of the 20:00 minute):
        # raised, then cleared clear_s after the last frame inside the window.
        ((19, 50), {"from": "08:00", "to": "20:00"}, [("raise", 50.0), ("clear", 718.0)]),
        # The same stall starting 20:05: nothing (zone inactive).
        ((20, 5), {"from": "08:00", "to": "20:00"}, []),
        # Night market zone 22:00-02:00 crossing midnight, stall from 23:55 into the next day.
        ((23, 55), {"from": "22:00", "to": "02:00"}, [("raise", 50.0)]),
        ((2, 30), {"from": "22:00", "to": "02:00"}, []),
        # Weekdays only: Saturday is quiet.
        ((10, 0), {"days": ["sat", "sun"]}, []),
        ((10, 0), {"days": ["mon"]}, [("raise", 50.0)]),
    ],
)
def test_zone_schedule_in_site_time_zone(
    start_local: tuple[int, int], schedule: dict[str, Any], expected: list[tuple[str, float]]
) -> None:
    zone = {
        "id": "market",
        "polygon": WHOLE,
        "schedule": schedule,
        "rules": {"street_vending": {"dwell_s": 48, "clear_s": 60, "update_s": 10_000}},
    }
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)
    start = datetime(2026, 3, 2, *start_local, tzinfo=SHANGHAI)  # Monday
    events = play(pipe, lambda s: [VENDOR, TABLE], 1800, fps=0.5, start=start)
    assert [(e.kind, (e.t - start).total_seconds()) for e in events] == expected


def test_garbage_scene_scored_lazily_on_the_zone_crop() -> None:
    bins = {"id": "bins", "polygon": [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]],
            "rules": {"garbage_overflow": {"dwell_s": 10, "gap_s": 4}}}  # fmt: skip
    other = {"id": "road", "polygon": WHOLE, "rules": {"illegal_parking": {}}}
    pipe = CameraPipeline(camera([bins, other]), SHANGHAI, NAMES, head_thresholds={"garbage": 0.6})
    asked: list[tuple[float, ...]] = []

    def scene_fn(region: tuple[float, float, float, float]) -> dict[str, float]:
        asked.append(region)
        return {"garbage": 0.55 if len(asked) < 10 else 0.8}

    events = play(pipe, lambda s: [], 20, scene_fn=scene_fn)
    assert asked == [(0.5, 0.5, 1.0, 1.0)] * 41  # only the zone with the rule, every frame
    assert [(e.kind, e.rule, e.dwell_s) for e in events] == [("raise", "garbage_overflow", 10.0)]
    assert events[0].boxes == ((640.0, 360.0, 1280.0, 720.0),)
    assert events[0].confidence == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("gate", "conf", "raised"),
    [({}, 0.8, []), ({}, 0.4, []), ({"max_occluded": 1.0}, 0.8, [60.0])],
    ids=["occluded", "weakly detected", "not checked"],
)
def test_a_cyclist_passing_every_ten_seconds_does_not_make_garbage(
    gate: dict[str, float], conf: float, raised: list[float]
) -> None:
    # As the looped street clip in the demo: the head scores the empty pavement of the zone
    # 0.1, and 0.95 while a cyclist crosses it (3 s of every 10), within gap_s each time.
    # Detected at 0.4 the cyclist starts no track (the camera's tracker starts them at 0.45)
    # but is at the rule's min_confidence (0.35): an occluder all the same.
    rule = {"dwell_s": 60, "gap_s": 20, **gate}
    bins = {"id": "bins", "polygon": [[0.3, 0.45], [0.55, 0.45], [0.55, 0.75], [0.3, 0.75]],
            "rules": {"garbage_overflow": rule}}  # fmt: skip
    pipe = CameraPipeline(camera([bins]), SHANGHAI, NAMES, head_thresholds={"garbage": 0.7})
    cyclist: Obj = ("bicycle", (583, 262, 680, 427))
    crossing: list[bool] = []

    def scene(s: float) -> list[Obj]:
        crossing.append(s % 10 < 3)
        return [cyclist] if crossing[-1] else []

    def scene_fn(region: tuple[float, float, float, float]) -> dict[str, float]:
        return {"garbage": 0.95 if crossing[-1] else 0.1}

    events = play(pipe, scene, 120, conf=conf, scene_fn=scene_fn)
    assert [(e.kind, e.dwell_s) for e in events] == [("raise", d) for d in raised]


def gray_street(t: float, pile: bool) -> np.ndarray:
    base = np.tile(np.linspace(60, 140, 160, dtype=np.float32), (90, 1))
    noise = np.random.default_rng(int(t * 10)).normal(0, 2, base.shape)
    img = np.clip(base + noise, 0, 255)
    if pile:
        img[50:80, 40:80] = 230
    return img.astype(np.uint8)


def test_piled_materials_and_shop_front_from_the_background_model() -> None:
    zones = [
        {"id": "lane", "polygon": WHOLE,
         "rules": {"piled_materials": {"dwell_s": 30, "learn_s": 600, "min_area": 0.05}}},
        {"id": "shop", "polygon": [[0, 0], [0.2, 0], [0.2, 0.3], [0, 0.3]],
         "rules": {"shop_front_occupation": {"dwell_s": 30, "learn_s": 600}}},
    ]  # fmt: skip
    pipe = CameraPipeline(camera(zones), SHANGHAI, NAMES)
    chair: Obj = ("chair", (40, 60, 200, 200))  # in the shop zone, placed at 60 s
    events: list[RuleEvent] = []
    for k in range(0, 61):
        s = 2.0 * k
        objs = [chair] if s >= 60 else []
        gray = gray_street(s, pile=s >= 60)
        if s >= 60:
            gray[5:25, 5:20] = 20  # the chair, seen by the background model too
        events += pipe.process(T0 + timedelta(seconds=s), SIZE, dets(objs), None, gray)
    got = [(e.kind, e.rule, e.zone_id) for e in events]
    # The chair is a detected new object at once; the pile must first settle in the short-term
    # average (short_s) before it counts as static foreground.
    assert got == [
        ("raise", "shop_front_occupation", "shop"),
        ("raise", "piled_materials", "lane"),
    ]
    shop, piled = events
    assert shop.labels == ("chair",) and shop.boxes == (chair[1],)
    assert 60 < (shop.first_seen - T0).total_seconds() <= 70
    assert 60 < (piled.first_seen - T0).total_seconds() <= 85
    # The pile's box in frame pixels, from the 160×90 background model.
    assert piled.labels == ("static",)
    assert piled.boxes == ((320.0, 400.0, 640.0, 640.0),)


@pytest.mark.parametrize(
    "rules",
    [
        {"piled_materials": {}},
        # A shop-front rule on the same zone learns faster (learn_s 3600): it has its own model.
        {"piled_materials": {}, "shop_front_occupation": {}},
    ],
    ids=["alone", "beside a shop-front rule"],
)
def test_a_modest_contrast_pile_outlasts_the_default_dwell(rules: dict[str, Any]) -> None:
    """A pile 35 grey levels darker than the lane, with every default of piled_materials
    (dwell 30 min): the background must not absorb it before the dwell is over."""
    zone = {"id": "lane", "polygon": WHOLE, "rules": rules}
    pipe = CameraPipeline(camera([zone], fps=0.1), SHANGHAI, NAMES)
    events: list[RuleEvent] = []
    for k in range(0, 241):  # 40 min at one frame every 10 s; the pile from 5 min
        s = 10.0 * k
        gray = gray_street(s, pile=False)
        if s >= 300:
            gray[50:80, 40:80] -= 35
        found = pipe.process(T0 + timedelta(seconds=s), SIZE, dets([]), None, gray)
        events += [e for e in found if e.rule == "piled_materials"]
    # Raised 30 min after it settled; learned into the background (learn_s 7200, from the
    # dwell) a few minutes later, when the episode clears. Being the lane 35 levels darker, the
    # pile keeps its grey levels' order as a shadow would and counts in the light's fit, which
    # it draws a little towards itself (cleared 70 s sooner than when it was kept out). With
    # learn_s 3600 it was absorbed before the dwell was over, and nothing was raised.
    assert [(e.kind, (e.t - T0).total_seconds(), (e.first_seen - T0).total_seconds())
            for e in events] == [
        ("raise", 2110.0, 310.0), ("clear", 2260.0, 310.0),
    ]  # fmt: skip


@pytest.mark.parametrize("brighter", [0, 30], ids=["steady light", "lights up meanwhile"])
def test_taking_a_pile_away_clears_it_without_a_ghost(brighter: int) -> None:
    """A bright pile stays an hour, long enough for the background to learn part of it, and
    is taken away: the ground it uncovers differs from the background, but is no pile."""
    zone = {"id": "lane", "polygon": WHOLE, "rules": {"piled_materials": {}}}
    pipe = CameraPipeline(camera([zone], fps=0.1), SHANGHAI, NAMES)
    events: list[tuple[str, float]] = []
    for k in range(0, 721):  # two hours at one frame every 10 s
        s = 10.0 * k
        gray = gray_street(s, pile=300 <= s < 4000).astype(np.int16)
        gray += round(brighter * min(max(s - 2400, 0) / 1200, 1))  # between 2400 and 3600 s
        small = np.clip(gray, 0, 255).astype(np.uint8)
        found = pipe.process(T0 + timedelta(seconds=s), SIZE, dets([]), None, small)
        events += [(e.kind, (e.t - T0).total_seconds()) for e in found]
    # Raised after the dwell, updated every update_s while it stays, cleared clear_s after it
    # went. Before, the uncovered ground kept the episode going for another 1.6 hours.
    updates = [("update", 2110.0 + 120 * n) for n in range(1, 16)]
    assert events == [("raise", 2110.0), *updates, ("clear", 4050.0)]


@pytest.mark.parametrize("restored", [True, False], ids=["restored", "started afresh"])
def test_a_restored_background_takes_no_uncovered_road_for_a_pile(restored: bool) -> None:
    zone = {"id": "lane", "polygon": WHOLE, "rules": {"piled_materials": {}}}
    cam = camera([zone], fps=0.1)

    def feed(pipe: CameraPipeline, start: float, stop: float, pile: bool) -> list[str]:
        kinds = []
        for k in range(int(start / 10), int(stop / 10)):
            gray = gray_street(10.0 * k, pile=pile)
            at = T0 + timedelta(seconds=10.0 * k)
            kinds += [e.kind for e in pipe.process(at, SIZE, dets([]), None, gray)]
        return kinds

    before = CameraPipeline(cam, SHANGHAI, NAMES)
    feed(before, 0, 300, pile=False)
    assert feed(before, 300, 2200, pile=True) == ["raise"]
    after = CameraPipeline(cam, SHANGHAI, NAMES)  # the worker restarted
    if restored:
        saved = {key: bg.decode(bg.encode(st)) for key, st in before.backgrounds().items()}
        assert after.restore_backgrounds(saved) == 1
    feed(after, 2200, 2400, pile=True)
    # The pile is taken away: only a model learned afresh on it takes the road for a pile.
    raised = [kind for kind in feed(after, 2400, 4800, pile=False) if kind == "raise"]
    assert raised == ([] if restored else ["raise"])


def road_learned() -> tuple[Camera, CameraPipeline]:
    """A camera every 10 s on a lane for piled materials, and its pipeline after 300 s of
    the empty road."""
    zone = {"id": "lane", "polygon": WHOLE, "rules": {"piled_materials": {}}}
    cam = camera([zone], fps=0.1)
    before = CameraPipeline(cam, SHANGHAI, NAMES)
    for k in range(30):
        before.process(
            T0 + timedelta(seconds=10.0 * k), SIZE, dets([]), None, gray_street(10.0 * k, False)
        )
    return cam, before


def pile_stands(pipe: CameraPipeline, clock: float) -> list[RuleEvent]:
    """The events of frames from 300 s to 2200 s (on a clock moved by ``clock``) with a pile
    on the road."""
    events = []
    for k in range(30, 220):
        at = T0 + timedelta(seconds=10.0 * k + clock)
        events += pipe.process(at, SIZE, dets([]), None, gray_street(10.0 * k, pile=True))
    return events


@pytest.mark.parametrize(
    ("clock", "raised_at"), [(0.0, 2110.0), (-86400.0, 2120.0)], ids=["same clock", "a day back"]
)
def test_a_restored_background_on_a_camera_clock_gone_back_still_sees_a_pile(
    clock: float, raised_at: float
) -> None:
    """The worker restarts and the camera's clock went back a day meanwhile (it rebooted to an
    old date): the restored model is moved to the new clock and raises a pile as on the
    unchanged one (a frame later: the first frame on the new clock, taken as coming right
    after the last one, teaches nothing). Before, it learned as a model in its first second,
    and took the pile for the road at once."""
    cam, before = road_learned()
    saved = {key: bg.decode(bg.encode(st)) for key, st in before.backgrounds().items()}
    after = CameraPipeline(cam, SHANGHAI, NAMES)
    assert after.restore_backgrounds(saved) == 1
    events = pile_stands(after, clock)
    assert [(e.kind, (e.t - T0).total_seconds() - clock) for e in events] == [("raise", raised_at)]


def striped_zone(x0: float) -> dict[str, Any]:
    """A zone 0.3 wide at ``x0``: left at 0.05 and right at 0.6 it sees opposite stripes."""
    x1 = x0 + 0.3
    rules = {"piled_materials": {"dwell_s": 30, "gap_s": 5, "clear_s": 10, "min_area": 0.05}}
    return {"id": "lane", "polygon": [[x0, 0.5], [x1, 0.5], [x1, 0.9], [x0, 0.9]], "rules": rules}


STRIPES = np.tile(np.where(np.arange(160) % 16 < 8, 200, 40).astype(np.uint8), (90, 1))


@pytest.mark.parametrize(
    ("x0", "restored", "warning"),
    [
        (0.05, 1, None),
        (0.6, 0, "the zone moved or changed shape since its background model was saved"),
    ],
    ids=["same place", "moved"],
)  # fmt: skip
def test_a_saved_background_comes_back_only_to_the_same_zone_polygon(
    x0: float, restored: int, warning: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A zone dragged elsewhere (same size, so the same crop shape), or given a deleted
    zone's id, learns anew: the saved model is of other pixels, which would look like a pile."""
    before = CameraPipeline(camera([striped_zone(0.05)], fps=1), SHANGHAI, NAMES)
    for s in range(120):
        before.process(T0 + timedelta(seconds=s), SIZE, dets([]), None, STRIPES)
    saved = {key: bg.decode(bg.encode(st)) for key, st in before.backgrounds().items()}
    after = CameraPipeline(camera([striped_zone(x0)], fps=1), SHANGHAI, NAMES)
    with caplog.at_level(logging.WARNING, "gridpatrol.detectors.pipeline"):
        assert after.restore_backgrounds(saved) == restored
    expected = [] if warning is None else [f"camera cam-t zone lane: {warning}; learned anew"]
    assert caplog.messages == expected
    events = []
    for s in range(120, 240):
        events += after.process(T0 + timedelta(seconds=s), SIZE, dets([]), None, STRIPES)
    assert events == []


LANE = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))  # WHOLE as the zone keeps it


def test_a_background_saved_without_its_polygon_is_taken_back_once_on_the_old_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upgrade: the models in the outbox file were saved by a version that did not keep the
    zone's polygon, and a pile appeared while the worker was down. The model is taken back as
    before (its crop has the zone's shape), so the pile is raised; a save before the camera's
    first frame keeps it (still without a polygon), and once a frame confirmed it, it is saved
    with the zone's polygon. Before, it was refused and its row deleted by the first save: the
    pile was learned as normal."""
    cam, before = road_learned()
    conn = sqlite3.connect(":memory:")
    bg_store.ensure_schema(conn)
    older = {key: replace(st, polygon=None) for key, st in before.backgrounds().items()}
    bg_store.save(conn, "cam-t", older)  # what the earlier version wrote: no polygon
    after = CameraPipeline(cam, SHANGHAI, NAMES)
    assert after.restore_backgrounds(bg_store.load(conn, "cam-t")) == 1
    bg_store.save(conn, "cam-t", after.backgrounds())  # the minutely save, before a frame
    assert [(key, st.polygon) for key, st in bg_store.load(conn, "cam-t").items()] == [
        (("lane", 7200.0), None)
    ]
    with caplog.at_level(logging.INFO, "gridpatrol.detectors.pipeline"):
        events = pile_stands(after, 0.0)
    assert caplog.messages == [
        "camera cam-t zone lane: background model saved without its zone's polygon taken back "
        "on the old rule (its crop has the zone's shape); saved with the polygon from now on",
        "camera cam-t zone lane piled_materials raise (dwell 1800 s, confidence 0.67)",
    ]
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == [("raise", 2110.0)]
    bg_store.save(conn, "cam-t", after.backgrounds())
    assert [(key, st.polygon) for key, st in bg_store.load(conn, "cam-t").items()] == [
        (("lane", 7200.0), LANE)
    ]


def test_a_background_saved_without_its_polygon_of_another_crop_shape_is_learned_anew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The old rule keeps a model saved without its polygon only when the zone's crop has its
    shape: a zone resized meanwhile learns anew, from its first frame."""
    before = CameraPipeline(camera([striped_zone(0.05)], fps=1), SHANGHAI, NAMES)
    for s in range(120):
        before.process(T0 + timedelta(seconds=s), SIZE, dets([]), None, STRIPES)
    older = {key: replace(st, polygon=None) for key, st in before.backgrounds().items()}
    wider = {**striped_zone(0.05), "polygon": [[0.05, 0.5], [0.45, 0.5], [0.45, 0.9], [0.05, 0.9]]}
    assert older[("lane", 3600.0)].background.shape == (36, 48)
    after = CameraPipeline(camera([wider], fps=1), SHANGHAI, NAMES)
    assert after.restore_backgrounds(older) == 1
    with caplog.at_level(logging.INFO, "gridpatrol.detectors.pipeline"):
        after.process(T0 + timedelta(seconds=200), SIZE, dets([]), None, STRIPES)
    assert caplog.messages == [
        "camera cam-t zone lane: background model saved without its zone's polygon is of "
        "another crop shape; learned anew"
    ]
    [(key, state)] = after.backgrounds().items()
    assert (key, state.start_t, state.background.shape) == (
        ("lane", 3600.0),
        200.0 + T0.timestamp(),
        (36, 64),  # 0.4 of 160 px wide, where the saved model is 0.3 (48 px)
    )


@pytest.mark.parametrize("carried", [True, False], ids=["carried over", "learned afresh"])
def test_a_clock_reset_keeps_what_the_zone_normally_looks_like(carried: bool) -> None:
    """The camera's clock steps back an hour while a pile is there: its rules start over, but
    the background model carried to the new clock still knows the road."""
    zone = {"id": "lane", "polygon": WHOLE, "rules": {"piled_materials": {}}}
    cam = camera([zone], fps=0.1)

    def feed(
        pipe: CameraPipeline, start: float, stop: float, pile: bool, clock: float = 0
    ) -> list[str]:
        kinds = []
        for k in range(int(start / 10), int(stop / 10)):
            gray = gray_street(10.0 * k, pile=pile)
            at = T0 + timedelta(seconds=10.0 * k + clock)
            kinds += [e.kind for e in pipe.process(at, SIZE, dets([]), None, gray)]
        return kinds

    before = CameraPipeline(cam, SHANGHAI, NAMES)
    feed(before, 0, 300, pile=False)
    assert feed(before, 300, 2200, pile=True) == ["raise"]
    after = CameraPipeline(cam, SHANGHAI, NAMES)
    if carried:
        assert after.carry_backgrounds(before, -3600.0) == 1
        ((_, state),) = after.backgrounds().items()
        ((_, old),) = before.backgrounds().items()
        assert (state.t, state.start_t) == (old.t - 3600.0, old.start_t - 3600.0)
    # On the new clock (an hour back) the pile stays half an hour more, then is taken away:
    # carried over, the model raises it again and clears it; learned afresh, it takes the
    # pile for the road and the road for a pile.
    assert feed(after, 2200, 4100, pile=True, clock=-3600) == (["raise"] if carried else [])
    assert feed(after, 4100, 6000, pile=False, clock=-3600) == (["clear"] if carried else ["raise"])


@pytest.mark.parametrize("rules", [{"piled_materials": {}}, {"shop_front_occupation": {}}])
def test_without_a_grayscale_frame_a_background_zone_has_no_static_foreground(
    rules: dict[str, Any],
) -> None:
    zone = {"id": "lane", "polygon": WHOLE, "rules": rules}
    pipe = CameraPipeline(camera([zone]), SHANGHAI, NAMES)
    assert pipe.process(T0, SIZE, Detections.empty()) == []


def test_timestamps_must_be_aware() -> None:
    pipe = CameraPipeline(camera([VENDING_ZONE]), SHANGHAI, NAMES)
    with pytest.raises(ValueError, match="timezone-aware"):
        pipe.process(datetime(2026, 3, 2, 10), SIZE, Detections.empty())  # noqa: DTZ001


def still(objs: list[Obj], conf: float = 0.8) -> Detections:
    return dets(objs, conf)


CROWD = [("person", (60.0 * k, 300.0, 60.0 * k + 50, 450.0)) for k in range(9)]


@pytest.mark.parametrize(
    ("name", "objs", "scene", "expected"),
    [
        ("empty", [], {}, []),
        ("stall", [VENDOR, TABLE], {}, ["street_vending"]),
        ("bench sitters", [("person", (820, 330, 870, 460)), ("bench", (800, 400, 1000, 470))], {},
         []),
        ("crowd of nine", CROWD, {}, ["crowd_gathering"]),
        ("seven persons", CROWD[:7], {}, []),
        ("garbage", [], {"garbage": 0.9}, ["garbage_overflow"]),
        ("clean bin", [], {"garbage": 0.2}, []),
        ("parked car: needs a zone", [("car", (100, 300, 400, 450))], {}, []),
    ],
)  # fmt: skip
def test_judge_still(
    name: str, objs: list[Obj], scene: dict[str, float], expected: list[str]
) -> None:
    found = judge_still(still(objs), scene, SIZE, NAMES)
    assert [v.type for v in found] == expected, name
    for v in found:
        assert v.zone is None and v.dwell_verified is False


def test_violation_json_and_still_boxes() -> None:
    found = judge_still(still([VENDOR, TABLE]), {"garbage": 0.7}, SIZE, NAMES,
                        head_thresholds={"garbage": 0.65})  # fmt: skip
    assert [v.as_json() for v in found] == [
        {"type": "street_vending", "confidence": 0.8, "zone": None,
         "bbox": [400.0, 300.0, 600.0, 450.0], "dwell_verified": False},
        {"type": "garbage_overflow", "confidence": 0.7, "zone": None,
         "bbox": [0.0, 0.0, 1280.0, 720.0], "dwell_verified": False},
    ]  # fmt: skip
    assert (
        judge_still(still([]), {"garbage": 0.6}, SIZE, NAMES, head_thresholds={"garbage": 0.65})
        == []
    )
    assert Violation("crowd_gathering", 0.5).bbox == (0.0, 0.0, 0.0, 0.0)


# -- the real model on real footage -----------------------------------------------------------

SHARED = Path(os.environ.get("GRIDPATROL_SHARED", Path(__file__).resolve().parents[3] / "shared"))
STREET = SHARED / "footage" / "pedestrian_street_1080p.mp4"
MODEL = SHARED / "models" / "yolo11n_int8_openvino_model"


@pytest.fixture(scope="module")
def street_frames() -> Iterator[tuple[tuple[str, ...], list[tuple[float, Detections, np.ndarray]]]]:
    """The pedestrian street at 6 fps through the real OpenVINO model (names, frames)."""
    import cv2

    from gridpatrol.detectors.models import load_backend, resolve_model

    backend = load_backend(resolve_model(str(MODEL)), mode="latency", conf=0.1)
    capture = cv2.VideoCapture(str(STREET))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames: list[tuple[float, Detections, np.ndarray]] = []
    index = 0
    try:
        while capture.grab():  # decode every frame, convert only the sampled ones
            if index % 5 == 0:
                ok, image = capture.retrieve()
                assert ok
                detections = backend.infer([image])[0].detections
                gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (160, 90),
                                  interpolation=cv2.INTER_AREA)  # fmt: skip
                frames.append((index / fps, detections, gray))
            index += 1
    finally:
        capture.release()
        backend.close()
    assert len(frames) >= 60
    yield backend.info.names, frames


def test_real_street_raises_no_vending_and_one_crowd_episode(
    street_frames: tuple[tuple[str, ...], list[tuple[float, Detections, np.ndarray]]],
) -> None:
    names, frames = street_frames
    quick = {"dwell_s": 3, "gap_s": 5, "clear_s": 5}
    zone = {
        "id": "street",
        "polygon": WHOLE,
        "rules": {
            "street_vending": quick,
            "crowd_gathering": {"min_persons": 5, "dwell_s": 5},
            "illegal_parking": quick,
            "non_motor_parking": {**quick, "min_count": 1},
            "shop_front_occupation": quick,
            "piled_materials": quick,
        },
    }
    pipe = CameraPipeline(camera([zone], fps=6), SHANGHAI, names)
    events: list[RuleEvent] = []
    for s, detections, gray in frames:
        t = T0 + timedelta(seconds=s)
        events += pipe.process(t, (1920, 1080), detections, None, gray)
    # People walk, stop to talk, sit on benches, wheel bicycles: no other rule fires.
    assert [(e.kind, e.rule) for e in events] == [("raise", "crowd_gathering")]
    assert events[0].dwell_s == pytest.approx(5.0, abs=0.2)
    assert len(events[0].boxes) >= 5 and set(events[0].labels) == {"person"}
    # Every frame judged as a still: busy, but no stall.
    assert all(
        "street_vending" not in {v.type for v in judge_still(d, {}, (1920, 1080), names)}
        for _, d, _ in frames
    )


def test_real_street_tracks_are_stable(
    street_frames: tuple[tuple[str, ...], list[tuple[float, Detections, np.ndarray]]],
) -> None:
    names, frames = street_frames
    pipe = CameraPipeline(camera([], fps=6), SHANGHAI, names)
    persons_per_frame = []
    for s, detections, _ in frames:
        tracked = pipe.tracker.update(detections, s)
        persons_per_frame.append(int((tracked.class_id == names.index("person")).sum()))
    ids = pipe.tracker.next_id - 1
    # A busy street (about a dozen people in view) followed with few id changes:
    # far fewer ids than person detections over the clip.
    assert np.mean(persons_per_frame) >= 8
    assert ids < sum(persons_per_frame) / 5


@pytest.mark.parametrize(
    ("name", "scene", "expected"),
    [
        # Seen every 30 s: the parked car keeps its track between visits and raises once; it
        # clears 2.5 visits (75 s, the patrol floor of clear_s 60) after it was last seen.
        ("parked for ten minutes", lambda s: [("car", (300, 300, 600, 480))] if s < 600 else [],
         [("raise", 210.0), ("clear", 660.0)]),
        # Traffic: a different car at a different place on every visit.
        ("passing traffic", lambda s: [("car", (s * 11 % 900, 300, s * 11 % 900 + 300, 480))], []),
    ],
)  # fmt: skip
def test_patrol_camera_parking(
    name: str, scene: Callable[[float], list[Obj]], expected: list[tuple[str, float]]
) -> None:
    zone = {"id": "kerb", "polygon": WHOLE,
            "rules": {"illegal_parking": {"dwell_s": 180, "gap_s": 40, "clear_s": 60,
                                          "update_s": 3600}}}  # fmt: skip
    pipe = CameraPipeline(camera([zone], interval_s=30), SHANGHAI, NAMES)
    events = play(pipe, scene, 900, fps=1 / 30)
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == expected, name


PARKED: Obj = ("car", (300, 300, 600, 480))


@pytest.mark.parametrize(
    ("name", "rules", "seen", "expected"),
    [
        # The rule's default timing (gap 20 s, clear 60 s) on a camera visited every 30 s: the
        # gap and clear floors of 2.5 visits let the dwell accumulate from visit to visit.
        ("defaults", {"dwell_s": 120}, lambda s: s < 600,
         [("raise", 150.0), ("update", 270.0), ("update", 390.0), ("update", 510.0),
          ("clear", 660.0)]),
        # One visit without the car (a lorry in front) neither restarts the dwell nor splits the
        # episode into two candidates.
        ("a missed visit", {"dwell_s": 120}, lambda s: s < 600 and s != 150,
         [("raise", 180.0), ("update", 300.0), ("update", 420.0), ("update", 540.0),
          ("clear", 660.0)]),
        ("a missed visit, raised", {"dwell_s": 0, "update_s": 3600},
         lambda s: s < 600 and s != 300, [("raise", 30.0), ("clear", 660.0)]),
        # Longer settings than the floor are kept.
        ("long clear", {"dwell_s": 120, "clear_s": 200, "update_s": 3600}, lambda s: s < 600,
         [("raise", 150.0), ("clear", 780.0)]),
    ],
)  # fmt: skip
def test_patrol_timing_survives_the_gaps_between_visits(
    name: str, rules: dict[str, float], seen: Callable[[float], bool], expected: list[Any]
) -> None:
    zone = {"id": "kerb", "polygon": WHOLE, "rules": {"illegal_parking": rules}}
    pipe = CameraPipeline(camera([zone], interval_s=30), SHANGHAI, NAMES)
    events = play(pipe, lambda s: [PARKED] if seen(s) else [], 900, fps=1 / 30)
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == expected, name


def test_a_slow_continuous_camera_gets_the_same_floor() -> None:
    # One frame every 50 s: gap_s and clear_s become 125 s (2.5 frames), the dwell accumulates.
    zone = {"id": "kerb", "polygon": WHOLE, "rules": {"illegal_parking": {"dwell_s": 120}}}
    pipe = CameraPipeline(camera([zone], fps=0.02), SHANGHAI, NAMES)
    events = play(pipe, lambda s: [PARKED] if s < 600 else [], 900, fps=0.02)
    # Stationary from the second frame (50 s); raised at the first frame 120 s later; the car
    # was last seen at 550 s and the episode clears at the first frame 125 s after that.
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == [
        ("raise", 200.0), ("update", 350.0), ("update", 500.0), ("clear", 700.0),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "rules", "dropped", "expected"),
    [
        # gap_s and clear_s 0 become 1.25 s (2.5 frames at 2 fps). The frames a worker behind
        # drops (it keeps the newest) show nothing gone: the parked car stays one episode.
        ("gap_s and clear_s 0", {"dwell_s": 60, "gap_s": 0, "clear_s": 0}, 1.5,
         [("raise", 62.0), ("update", 182.0)]),
        # No frame for longer than gap_s + clear_s (2.5 s) is an outage: a new episode.
        ("gap_s and clear_s 0, an outage", {"dwell_s": 60, "gap_s": 0, "clear_s": 0}, 3.0,
         [("raise", 62.0), ("clear", 102.5), ("raise", 162.5), ("clear", 202.5)]),
        ("the defaults", {"dwell_s": 60}, 1.5, [("raise", 62.0), ("update", 182.0)]),
    ],
)  # fmt: skip
def test_frames_dropped_while_the_worker_is_behind_split_no_episode(
    name: str, rules: dict[str, float], dropped: float, expected: list[tuple[str, float]]
) -> None:
    """A car parked in view of a 2 fps camera for 250 s; no frame for ``dropped`` seconds after
    99.5 s and 199.5 s."""
    zone = {"id": "kerb", "polygon": WHOLE, "rules": {"illegal_parking": rules}}
    pipe = CameraPipeline(camera([zone], fps=2), SHANGHAI, NAMES)
    events: list[RuleEvent] = []
    for k in range(501):
        s = k / 2
        if any(last < s < last + dropped for last in (99.5, 199.5)):
            continue
        events += pipe.process(T0 + timedelta(seconds=s), SIZE, dets([PARKED]))
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == expected, name


@pytest.mark.parametrize("pile", [False, True])
def test_real_street_background_finds_a_composed_pile(
    street_frames: tuple[tuple[str, ...], list[tuple[float, Detections, np.ndarray]]],
    pile: bool,
) -> None:
    """The real clip looped for 80 s; from 31 s a dark pile of bags is composed into the
    grayscale frames on the pavement (people keep walking around and in front of it, with their
    real detections). The empty street must stay quiet; the pile must be found, where it is."""
    names, frames = street_frames
    zone = {"id": "corner", "polygon": [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]],
            "rules": {"piled_materials": {"dwell_s": 5, "gap_s": 5, "learn_s": 600}}}  # fmt: skip
    pipe = CameraPipeline(camera([zone], fps=6), SHANGHAI, names)
    events: list[RuleEvent] = []
    for loop in range(8):
        for s, detections, gray in frames:
            at = loop * 10.1 + s
            small = gray.copy()
            if pile and at >= 31:
                small[60:75, 110:135] = 30
            events += pipe.process(T0 + timedelta(seconds=at), (1920, 1080), detections,
                                   None, small)  # fmt: skip
    if not pile:
        assert events == []
        return
    assert [(e.kind, e.rule) for e in events] == [("raise", "piled_materials")]
    found = events[0]
    assert 31 < (found.first_seen - T0).total_seconds() < 60
    x1, y1, x2, y2 = found.boxes[-1]
    # The pile covers x 1320-1560, y 720-900 in frame pixels.
    assert 1260 <= x1 <= 1340 and 1540 <= x2 <= 1620 and 680 <= y1 <= 740 and 880 <= y2 <= 940


def test_real_street_with_a_composed_stall_raises_one_vending_episode(
    street_frames: tuple[tuple[str, ...], list[tuple[float, Detections, np.ndarray]]],
) -> None:
    """The real detections of the busy street, plus a vendor and a stall table composed into
    every frame from 2 s (with the detector's usual jitter): one vending episode, with the
    stall's boxes only — none of the real passers-by."""
    names, frames = street_frames
    zone = {"id": "street", "polygon": WHOLE,
            "rules": {"street_vending": {"dwell_s": 3, "gap_s": 5, "clear_s": 5}}}  # fmt: skip
    pipe = CameraPipeline(camera([zone], fps=6), SHANGHAI, names)
    rng = np.random.default_rng(7)
    vendor = np.asarray([1500, 500, 1580, 720], np.float32)
    table = np.asarray([1590, 610, 1760, 720], np.float32)
    events: list[RuleEvent] = []
    for s, detections, _ in frames:
        if s >= 2:
            jitter = rng.normal(0, 3, (2, 4)).astype(np.float32)
            stall = Detections.from_arrays(
                np.stack([vendor, table]) + jitter,
                [0.72, 0.55],
                [names.index("person"), names.index("dining table")],
            )
            detections = Detections.from_arrays(
                np.concatenate([detections.xyxy, stall.xyxy]),
                np.concatenate([detections.confidence, stall.confidence]),
                np.concatenate([detections.class_id, stall.class_id]),
            )
        events += pipe.process(T0 + timedelta(seconds=s), (1920, 1080), detections)
    assert [e.kind for e in events] == ["raise"]
    raised = events[0]
    assert sorted(raised.labels) == ["dining table", "person"]
    assert np.asarray(raised.boxes) == pytest.approx(np.stack([vendor, table]), abs=15)
    assert 3.9 <= (raised.first_seen - T0).total_seconds() <= 5.0


def kerb(rules: dict[str, float]) -> CameraPipeline:
    """The pipeline of a 2 fps camera whose whole view is a no-parking zone with ``rules``."""
    zone = {"id": "kerb", "polygon": WHOLE, "rules": {"illegal_parking": rules}}
    return CameraPipeline(camera([zone], fps=2), SHANGHAI, NAMES)


@pytest.mark.parametrize(
    ("name", "seen", "expected"),
    [
        ("every other frame", lambda k: k % 2 == 0, [("raise", 32.0)]),
        ("two frames of three", lambda k: k % 3 != 2, [("raise", 32.0)]),
    ],
)
def test_a_car_the_detector_misses_on_some_frames_is_one_track_and_raises(
    name: str, seen: Callable[[int], bool], expected: list[tuple[str, float]]
) -> None:
    """A car parked for 120 s in view of a 2 fps camera, found on some frames only: one track,
    stationary from 2 s, raised once the dwell of 30 s is over."""
    pipe = kerb({"dwell_s": 30, "gap_s": 20})
    events: list[RuleEvent] = []
    for k in range(241):
        found = dets([PARKED] if seen(k) else [])
        events += pipe.process(T0 + timedelta(seconds=k / 2), SIZE, found)
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == expected, name
    assert pipe.tracker.next_id == 2, name  # one track id given


def test_a_parked_car_with_duplicate_frames_a_millisecond_later_raises() -> None:
    """A 2 fps camera sending every third frame twice, the copy 1 ms later with the box moved
    by 2 px (the detector's jitter): the car keeps one track and raises after its dwell."""
    pipe = kerb({"dwell_s": 30, "gap_s": 20})
    moved: Obj = ("car", (302, 300, 602, 480))
    events: list[RuleEvent] = []
    for k in range(241):
        at = T0 + timedelta(seconds=k / 2)
        events += pipe.process(at, SIZE, dets([PARKED]))
        if k % 3 == 0:
            events += pipe.process(at + timedelta(milliseconds=1), SIZE, dets([moved]))
    assert [(e.kind, (e.t - T0).total_seconds()) for e in events] == [("raise", 32.0)]
    assert pipe.tracker.next_id == 2


def test_stationary_objects_vanishing_in_place_for_hours_keep_a_bounded_track_count() -> None:
    """A camera keeping lost stationary tracks for a day (clear_s 86400): every 5 s a car parks
    somewhere for 5-30 s and vanishes in place (10,000 frames at 2 fps). At most
    MAX_KEPT_TRACKS tracks are kept lost, the longest unseen dropped first."""
    pipe = kerb({"dwell_s": 600, "clear_s": 86400})
    rng = np.random.default_rng(5)
    cars = [(5.0 * k, 5.0 * k + rng.uniform(5, 30), rng.uniform(0, 1100), rng.uniform(0, 600))
            for k in range(1001)]  # fmt: skip
    for k in range(10_000):
        s = k / 2
        seen: list[Obj] = [("car", (x, y, x + 150, y + 100)) for a, b, x, y in cars if a <= s < b]
        pipe.process(T0 + timedelta(seconds=s), SIZE, dets(seen))
    end = (T0 + timedelta(seconds=4999.5)).timestamp()
    kept = [tr for tr in pipe.tracker.tracks if tr.state == "lost" and end - tr.last_t > 3]
    # 64 kept, 2 lost within lost_s (3 s), 3 cars in view.
    assert (len(kept), len(pipe.tracker.tracks)) == (64, 69)


def test_a_kept_track_whose_place_another_parked_car_takes_is_dropped() -> None:
    """A car vanishes in place and is kept; a larger car parks over its place (IoU 0.6, the old
    box not within the new one's 80 %): once that one is stationary the kept track goes."""
    pipe = kerb({"dwell_s": 600, "clear_s": 3600})
    van: Obj = ("car", (250, 260, 650, 490))
    kept: list[list[int]] = []
    for k in range(81):
        s = k / 2
        seen = [PARKED] if s < 10 else [van] if s >= 20 else []
        pipe.process(T0 + timedelta(seconds=s), SIZE, dets(seen))
        kept.append(sorted(tr.id for tr in pipe.tracker.tracks if tr.state == "lost"))
    # Lost from 10 s and kept; the van seen from 20 s is stationary from 22 s.
    assert kept[19:21] == [[], [1]] and kept[43] == [1] and kept[44:] == [[]] * 37
