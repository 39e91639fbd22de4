"""Patrol scheduling with a fake clock: budget, intervals, weighted fairness and boosts."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from gridpatrol.ingest.patrol import Decision, PatrolScheduler, expected_revisit_s


def simulate(
    sched: PatrolScheduler, start: float, end: float, late_s: float = 0.0
) -> tuple[Counter[str], list[float]]:
    """Drive the scheduler as the patrol loop does; visits take no time, and every wait ends
    ``late_s`` after the time asked for."""
    now, visits, times = start, Counter[str](), []
    while now < end:
        decision = sched.next(now)
        if decision.camera_id is None:
            now += decision.wait_s + late_s
            continue
        visits[decision.camera_id] += 1
        times.append(now)
    return visits, times


def test_budget_is_never_exceeded() -> None:
    sched = PatrolScheduler(max_fps=4)
    for i in range(50):
        sched.add(f"cam-{i:02d}", interval_s=1.0)
    visits, times = simulate(sched, 0.0, 100.0)
    assert sum(visits.values()) == 400
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(0.25)


def test_equal_weights_share_equally() -> None:
    sched = PatrolScheduler(max_fps=2)
    for i in range(10):
        sched.add(f"cam-{i}", interval_s=0.1)
    visits, _ = simulate(sched, 0.0, 100.0)
    assert set(visits.values()) == {20}


def test_weights_share_in_proportion() -> None:
    sched = PatrolScheduler(max_fps=4)
    sched.add("a", interval_s=0.1, weight=1)
    sched.add("b", interval_s=0.1, weight=1)
    sched.add("c", interval_s=0.1, weight=2)
    visits, _ = simulate(sched, 0.0, 100.0)
    assert visits == {"a": 100, "b": 100, "c": 200}


def test_a_camera_never_comes_round_more_often_than_its_interval() -> None:
    sched = PatrolScheduler(max_fps=10)
    sched.add("slow", interval_s=30.0, weight=100)
    sched.add("fast", interval_s=0.5)
    visits, _ = simulate(sched, 0.0, 300.0)
    assert visits["slow"] == 10
    assert visits["fast"] == 600


def test_spare_budget_goes_to_the_others() -> None:
    sched = PatrolScheduler(max_fps=4)
    sched.add("rare", interval_s=10.0, weight=10)
    sched.add("x", interval_s=0.01)
    sched.add("y", interval_s=0.01)
    visits, _ = simulate(sched, 0.0, 100.0)
    assert visits["rare"] == 10
    assert visits["x"] + visits["y"] == 390
    assert abs(visits["x"] - visits["y"]) <= 1


def test_boost_raises_the_share_then_expires() -> None:
    sched = PatrolScheduler(max_fps=8)
    for cid in ("a", "b", "c", "d", "e"):
        sched.add(cid, interval_s=0.01)
    sched.boost("a", now=0.0, factor=4.0, duration_s=80.0)
    during, _ = simulate(sched, 0.0, 80.0)
    assert during == {"a": 320, "b": 80, "c": 80, "d": 80, "e": 80}
    after, _ = simulate(sched, 80.0, 180.0)
    assert set(after.values()) == {160}


def test_a_boost_under_overload_brings_the_camera_round_at_its_interval() -> None:
    # 100 cameras every 30 s on 2 fps: each comes round every 50 s. Boosted 4 times, p7's
    # share (one visit every 12.9 s) is more than its interval asks: every 30 s for the boost's
    # 600 s, 19 or 20 visits as the first falls due 30 s after its last one (12 before, with
    # its credit wiped while its interval held it back). Then every 50 s again.
    sched = PatrolScheduler(max_fps=2)
    for i in range(100):
        sched.add(f"p{i}", interval_s=30.0)
    simulate(sched, 0.0, 3000.0)
    sched.boost("p7", now=3000.0, factor=4.0, duration_s=600.0)
    during, _ = simulate(sched, 3000.0, 3600.0)
    assert during["p7"] in (19, 20)
    assert sum(during.values()) == 1200
    assert max(n for cid, n in during.items() if cid != "p7") == 12
    # The credit left is at most a round's: a visit more in the next 600 s, then none.
    after, _ = simulate(sched, 3600.0, 4200.0)
    assert after["p7"] == 13
    later, _ = simulate(sched, 4200.0, 4800.0)
    assert set(later.values()) == {12}


@pytest.mark.parametrize("rare_weight", [None, 0.01])
def test_a_camera_held_back_for_long_takes_at_most_a_round_ahead(rare_weight: float | None) -> None:
    # "dead" fails for 1000 s and is tried every 8 s meanwhile: far fewer visits than its
    # share (one every 2 s). Recovered, it gets its share again, not the 400-odd visits it
    # missed at the expense of the others: at most one round (a visit) ahead of them. Also
    # beside a light camera due once a day, which is no part of the round while not due.
    sched = PatrolScheduler(max_fps=2)
    for cid in ("x", "y", "z", "dead"):
        sched.add(cid, interval_s=1.0)
    if rare_weight is not None:
        sched.add("rare", interval_s=86400.0, weight=rare_weight)
    now, dead_visits = 0.0, 0
    while now < 1000.0:
        decision = sched.next(now)
        if decision.camera_id is None:
            now += decision.wait_s
        elif decision.camera_id == "dead":
            dead_visits += 1
            sched.failed("dead")
    assert dead_visits == 127
    sched.succeeded("dead")
    visits, _ = simulate(sched, 1000.0, 1100.0)
    assert visits["dead"] <= 51
    assert min(visits[cid] for cid in ("x", "y", "z")) >= 49


def test_newcomer_gets_no_credit_for_the_past() -> None:
    sched = PatrolScheduler(max_fps=2)
    sched.add("old", interval_s=0.01)
    simulate(sched, 0.0, 100.0)
    sched.add("new", interval_s=0.01)
    visits, _ = simulate(sched, 100.0, 200.0)
    assert visits["old"] + visits["new"] == 200
    assert abs(visits["old"] - visits["new"]) <= 1


def test_idle_scheduler_waits_for_the_earliest_due_camera() -> None:
    sched = PatrolScheduler(max_fps=100)
    sched.add("a", interval_s=30.0)
    assert sched.next(0.0).camera_id == "a"
    decision = sched.next(1.0)
    assert decision.camera_id is None
    assert decision.wait_s == pytest.approx(29.0)


def test_two_cameras_due_together_after_an_idle_spell_keep_the_budget() -> None:
    # "a" at 0 and "b" at 0.25 are both due again at 10.25, long after the last slot.
    sched = PatrolScheduler(max_fps=4)
    sched.add("a", interval_s=10.25)
    sched.add("b", interval_s=10.0)
    decisions = [sched.next(now) for now in (0.0, 0.0, 0.25, 0.5, 10.25, 10.25, 10.5)]
    assert decisions == [
        Decision("a", 0.0), Decision(None, 0.25), Decision("b", 0.0), Decision(None, 9.75),
        Decision("a", 0.0), Decision(None, 0.25), Decision("b", 0.0),
    ]  # fmt: skip


def test_a_loop_that_wakes_late_still_uses_the_budget() -> None:
    # Each wait ends 1 ms late, a tenth of the 10 ms period: the visits keep the slots' pace
    # instead of restarting the period from every late wake-up (which gave 9091 visits).
    sched = PatrolScheduler(max_fps=100)
    for i in range(20):
        sched.add(f"cam-{i:02d}", interval_s=0.01)
    visits, times = simulate(sched, 0.0, 100.0, late_s=0.001)
    assert sum(visits.values()) == 10000
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(0.01)


def test_a_camera_that_cannot_be_scheduled_is_refused() -> None:
    sched = PatrolScheduler(max_fps=4)
    for interval in (math.inf, math.nan, 0.0):
        with pytest.raises(ValueError, match="interval_s must be positive, finite"):
            sched.add("c", interval, 1.0)
    # Finite weights too small or large would make 1 / weight or a camera's share overflow.
    for weight in (math.inf, math.nan, 0.0, 1.0e-320, 1.0e10):
        with pytest.raises(ValueError, match=r"weight must be within 0\.01-100"):
            sched.add("c", 30.0, weight)
    for max_fps in (math.inf, math.nan, 0.0):
        with pytest.raises(ValueError, match="positive and finite"):
            PatrolScheduler(max_fps)


@pytest.mark.parametrize(
    ("cameras", "max_fps"),
    [
        ({"rare": (10.0, 10.0), "x": (0.01, 1.0), "y": (0.01, 1.0)}, 4.0),
        ({"a": (0.1, 1.0), "b": (0.1, 1.0), "c": (0.1, 2.0)}, 4.0),
        ({f"p{i}": (30.0, 1.0) for i in range(200)} | {"half": (30.0, 0.5)}, 4.0),
        ({"slow": (30.0, 100.0), "fast": (0.5, 1.0)}, 10.0),
        ({"one": (30.0, 1.0), "two": (60.0, 1.0)}, 4.0),
        # Under overload a camera whose weighted share is more than its interval asks comes
        # round at its interval (once every 2.0 s when its credit was wiped while held back).
        ({"a": (1.0, 1.0), "b": (1.0, 1.0), "c": (1.0, 1.0), "hot": (1.0, 5.0)}, 2.0),
        ({f"p{i}": (30.0, 1.0) for i in range(100)} | {"big": (30.0, 4.0)}, 2.0),
    ],
)
def test_expected_revisit_matches_the_scheduler(
    cameras: dict[str, tuple[float, float]], max_fps: float
) -> None:
    sched = PatrolScheduler(max_fps)
    for camera_id, (interval, weight) in cameras.items():
        sched.add(camera_id, interval, weight)
    visits, _ = simulate(sched, 0.0, 3000.0)
    expected = expected_revisit_s(cameras, max_fps)
    for camera_id in cameras:
        assert 3000.0 / expected[camera_id] == pytest.approx(visits[camera_id], rel=0.03, abs=1)


@pytest.mark.parametrize(
    ("outcomes", "next_due"),
    [
        ("", 30.0),  # never failed: every interval
        ("F", 60.0),
        ("FF", 120.0),
        ("FFF", 240.0),
        ("FFFFFF", 240.0),  # at most every 8 intervals
        ("FFFS", 30.0),  # one success and it is back to every interval
    ],
)
def test_a_failing_camera_is_tried_less_often_until_a_visit_succeeds(
    outcomes: str, next_due: float
) -> None:
    sched = PatrolScheduler(max_fps=10)
    sched.add("dead", interval_s=30.0)
    assert sched.next(0.0).camera_id == "dead"
    for outcome in outcomes:
        if outcome == "F":
            sched.failed("dead")
        else:
            sched.succeeded("dead")
    assert sched.next(next_due - 0.1).camera_id is None
    assert sched.next(next_due).camera_id == "dead"
