"""Silence is listening time: a host clock stepped forward (an NTP step at boot, a VM resumed
with its clock set right) is not taken for time the bridge listened."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.uptime import SETTLE_S, Uptime, UptimeState
from gridpatrol.alarm_bridge.worker import Bridge
from gridpatrol.api.client import Outbox
from gridpatrol.site import parse_site

from .conftest import SITE_YAML
from .test_worker import LEVEL_20, T0, FakeLink, _offline_creates

TICK0 = 1000.0  # the monotonic clock at T0: it has its own origin


def _bridge_with_wl1_every_minute(tmp_path: Path) -> tuple[Bridge, FakeLink, Outbox]:
    """The test site with wl-1 expected every 60 s: silent after 180 s of listening."""
    yaml = SITE_YAML.replace("PREFIX", "gridpatrol")
    assert yaml.count("expected_interval_s: 300") == 1  # wl-1's
    site = parse_site(yaml.replace("expected_interval_s: 300", "expected_interval_s: 60"), "s")
    link = FakeLink()
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    return Bridge(site, outbox, cast(Any, link), None, progress_s=3600), link, outbox


def test_a_clock_stepped_forward_an_hour_is_not_silence(tmp_path: Path) -> None:
    """wl-1 heard at T0; settled at T0 + 60; then the wall clock jumps an hour while the
    monotonic clock advances 1 s: 1 s listened, no device_offline. It is raised after more
    than 3 x 60 s of listening on both clocks, timed on the wall clock."""
    bridge, link, outbox = _bridge_with_wl1_every_minute(tmp_path)
    link.send(LEVEL_20, mid=1, at_s=0)
    assert bridge._one_batch() == 1
    bridge._housekeeping(T0, TICK0)  # the connection settles until T0 + 60
    bridge._housekeeping(T0 + SETTLE_S, TICK0 + SETTLE_S)
    jumped = T0 + SETTLE_S + 1 + 3600
    bridge._housekeeping(jumped, TICK0 + SETTLE_S + 1)
    assert _offline_creates(outbox) == []
    with outbox.transaction() as txn:  # the step kept on the wall clock, for the next run
        assert store.load_uptime(txn.conn) == (
            T0,
            jumped,
            [(T0, T0 + SETTLE_S), (T0 + SETTLE_S + 1, jumped)],
        )
    bridge._housekeeping(jumped + 179, TICK0 + SETTLE_S + 180)  # 180 s listened: not yet
    assert _offline_creates(outbox) == []
    bridge._housekeeping(jumped + 180, TICK0 + SETTLE_S + 181)
    assert _offline_creates(outbox) == [("wl-1", "2026-09-21T15:17:21Z")]


def test_a_step_while_settling_moves_the_rest_of_the_settling_on() -> None:
    """Connected at T0 (settling until T0 + 60), the clock jumps an hour 10 s later: the 50 s
    of settling left follow the step. A wall clock read up to a second ahead of the monotonic
    one is no step."""
    uptime = Uptime(horizon_s=1800, settle_s=SETTLE_S)
    assert uptime.look(T0, True, 1, TICK0)
    assert uptime.look(T0 + 3610, True, 1, TICK0 + 10)
    assert uptime.state() == (T0, T0 + 3610, [(T0, T0 + 3660)])
    assert uptime.connected_for(T0, T0 + 3700) == 40.0
    assert uptime.look(T0 + 3701, True, 1, TICK0 + 100)  # 1 s ahead: within the reading
    assert uptime.state() == (T0, T0 + 3701, [(T0, T0 + 3660)])
    assert uptime.connected_for(T0, T0 + 3701) == 41.0


DAY = 86400.0


def _three_days_of_link_drops(uptime: Uptime) -> tuple[float, float]:
    """Looked at every 10 s for three days from T0, the link back every 6 h (a new connection
    at T0 + 6 h, ..., T0 + 66 h): the wall clock and the monotonic one of the last look."""
    for k in range(int(3 * DAY) // 10):
        assert uptime.look(T0 + 10 * k, True, 1 + 10 * k // 21600, TICK0 + 10 * k)
    return T0 + 3 * DAY - 10, TICK0 + 3 * DAY - 10


def _silent_after(uptime: Uptime, heard: float, tick: float, silence_s: float) -> float:
    """Looked at every 10 s on the connection of the last look: the seconds from ``heard``
    to the first look judging a sensor heard then silent for more than ``silence_s``."""
    connects = uptime._connects
    assert connects is not None
    for k in range(1, 10_000):
        if uptime.look(heard + 10 * k, True, connects, tick + 10 * k) and (
            uptime.connected_for(heard, heard + 10 * k) > silence_s
        ):
            return 10.0 * k
    raise AssertionError("never judged silent")


def test_a_clock_set_back_a_day_leaves_the_listening_after_it_counted() -> None:
    """The stretches of the first 60 h's link drops, each followed by 6 h of listening (more
    than the 5400 s horizon), are merged into the first one, which ran to T0 + 66 h + 60 s.
    The clock then set back a day (to T0 + 48 h) took all listening up to that end for not
    listened: a 300 s sensor heard just after the step was judged silent only at T0 + 66 h +
    960 s, more than 18 h late. The first stretch now ends at the step; the one of T0 + 66 h,
    ahead of it, is kept as it was."""
    uptime = Uptime(horizon_s=5400, settle_s=SETTLE_S)
    last, tick = _three_days_of_link_drops(uptime)
    now = last + 10 - DAY  # the clock set back a day between two looks 10 s apart
    assert uptime.look(now, True, 12, tick + 10)
    assert uptime.connected_for(now, now + 1000) == 1000.0
    assert _silent_after(uptime, now, tick + 10, 3 * 300) == 910.0
    assert uptime.state() == (
        T0,
        now + 910,
        [(T0, now), (T0 + 66 * 3600 - 10, T0 + 66 * 3600 + 60)],
    )


def test_a_clock_set_back_a_day_between_two_runs() -> None:
    """As above, the bridge restarted on the state of its last look, its first look a day
    before it: the first stretch ends at that look, and the sensor heard then is judged on
    the listening after it (after the new connection's settling at most)."""
    first = Uptime(horizon_s=5400, settle_s=SETTLE_S)
    last, _ = _three_days_of_link_drops(first)
    state = first.state()
    assert state is not None
    uptime = Uptime(horizon_s=5400, settle_s=SETTLE_S)
    uptime.restore(state)
    now = last + 10 - DAY
    assert uptime.look(now, True, 1, 5.0)
    assert 910.0 <= _silent_after(uptime, now, 5.0, 3 * 300) <= 910.0 + SETTLE_S
    restored = uptime.state()
    assert restored is not None and restored[2][0] == (T0, now)


def test_a_clock_set_back_then_forward_again_is_no_listening() -> None:
    """Four hours looked at every 10 s, the link down from T0 + 3 h to T0 + 3 h 5 min; the
    clock set back 2 h, a sensor heard then, and 110 s later the clock stepped forward 2 h
    again. The step was kept from its start up to the stretch of the link drop, ahead of it,
    and that stretch's own start: the listening between counted, 3590 s, and a 300 s sensor
    was judged silent at the step. It is 120 s, and the sensor silent after 910 s."""
    uptime = Uptime(horizon_s=900, settle_s=SETTLE_S)
    for k in range(4 * 360):
        link = not 3 * 3600 <= 10 * k < 3 * 3600 + 300
        uptime.look(T0 + 10 * k, link, 1 if 10 * k < 3 * 3600 else 2, TICK0 + 10 * k)
    heard, tick = T0 + 4 * 3600 - 7200, TICK0 + 4 * 3600
    assert uptime.look(heard, True, 2, tick)
    for k in range(1, 12):
        assert uptime.look(heard + 10 * k, True, 2, tick + 10 * k)
    assert uptime.look(heard + 7200 + 120, True, 2, tick + 120)
    assert uptime.connected_for(heard, heard + 7200 + 120) == 120.0
    assert _silent_after(uptime, heard + 7200 + 120, tick + 120, 900 - 120) == 790.0


def test_a_clock_set_back_a_day_then_put_right() -> None:
    """The day's set-back of the tests above, put right 110 s after the sensor was heard: the
    step forward was merged into the stretch of the last link drop, ahead of the clock, from
    that stretch's start, and the listening between counted (64790 s: silent at once). It
    takes that stretch in from its own start: 110 s listened, the sensor silent after 910 s."""
    uptime = Uptime(horizon_s=5400, settle_s=SETTLE_S)
    last, tick = _three_days_of_link_drops(uptime)
    now = last + 10 - DAY
    assert uptime.look(now, True, 12, tick + 10)
    for k in range(1, 11):
        assert uptime.look(now + 10 * k, True, 12, tick + 10 + 10 * k)
    assert uptime.look(now + DAY + 110, True, 12, tick + 120)
    assert uptime.connected_for(now, now + DAY + 110) == 110.0
    assert _silent_after(uptime, now + DAY + 110, tick + 120, 900 - 110) == 800.0


def test_a_clock_set_back_to_before_the_start() -> None:
    """Two hours from T0, the link back at T0 + 1 h, then the clock set back to T0 - 1800:
    the start moves back with it, and a sensor heard then is silent after 910 s of listening
    (it was judged on the listening after T0 only, its first connection's settling left out:
    2770 s late; 2710 s before that settling was kept)."""
    uptime = Uptime(horizon_s=900, settle_s=SETTLE_S)
    for k in range(720):
        assert uptime.look(T0 + 10 * k, True, 1 if 10 * k < 3600 else 2, TICK0 + 10 * k)
    heard, tick = T0 - 1800, TICK0 + 7200
    assert uptime.look(heard, True, 2, tick)
    assert uptime.state() == (heard, heard, [(T0 + 3590, T0 + 3660)])
    assert _silent_after(uptime, heard, tick, 900) == 910.0


# Random histories: the bridge looks every 10 s, its link drops, it restarts (after a crash,
# on the state saved at most a minute before), the wall clock is stepped back and forward.
# The truth is kept on a real clock: the seconds listened, each connection's first SETTLE_S
# left out. A sensor is judged silent only after more than the horizon of them.

LOOK_S = 10.0


@dataclass
class _Run:
    """A history's real course, the wall clock's offset, the bridge as it is."""

    rng: random.Random
    horizon_s: float
    make: Callable[[float], Uptime]
    real: float = 0.0
    offset: float = T0
    uptime: Uptime | None = None
    saved: UptimeState | None = None
    saved_at: float = -1e9
    runs: int = 0
    connects: int = 0
    connected: bool = False
    tick_origin: float = 0.0
    listened: list[tuple[float, float]] = field(default_factory=list)  # real, settled
    corrections: list[tuple[float, float]] = field(default_factory=list)  # (real, step)

    def listened_between(self, begin: float, end: float) -> float:
        return sum(max(0.0, min(e, end) - max(b, begin)) for b, e in self.listened)


def _random_history(
    seed: int, make: Callable[[float], Uptime], hours: float = 6.0
) -> list[tuple[float, float, float]]:
    """One history; each silence's first verdict: (when the sensor was last heard, the
    seconds listened since, the seconds from then to the verdict), on the real clock."""
    rng = random.Random(seed)
    run = _Run(rng, rng.choice([900.0, 1800.0, 5400.0]), make)
    verdicts: list[tuple[float, float, float]] = []
    heard: tuple[float, float] | None = None  # real, wall
    judged = False
    chatty = True
    down_until = 0.0  # the link, or the bridge, is down until then
    restart_at: float | None = None

    def start() -> None:
        uptime = make(run.horizon_s)
        if run.saved is not None:
            uptime.restore(run.saved)
        run.uptime, run.runs, run.connects = uptime, run.runs + 1, 0
        run.tick_origin = 1000.0 * run.runs - run.real  # each run's own monotonic clock

    start()
    while run.real < hours * 3600:
        wall = run.real + run.offset
        uptime = run.uptime
        assert uptime is not None
        up = run.real >= down_until and restart_at is None
        if up and not run.connected:  # a new connection, settled SETTLE_S later
            run.connects, run.connected = run.connects + 1, True
            run.listened.append((run.real + SETTLE_S, run.real + SETTLE_S))
            run.saved_at = -1e9  # the bridge writes the history when the link comes back
        tick = run.real + run.tick_origin
        if restart_at is None and uptime.look(wall, up, run.connects, tick):
            begin, _ = run.listened[-1]
            run.listened[-1] = (begin, max(begin, run.real))
            if run.real - run.saved_at >= 60:
                run.saved, run.saved_at = uptime.state(), run.real
            silent = heard is not None and uptime.connected_for(heard[1], wall) > run.horizon_s
            if heard is not None and silent and not judged:
                judged = True
                truth = run.listened_between(heard[0], run.real)
                verdicts.append((heard[0], truth, run.real - heard[0]))
            if chatty and rng.random() < 1 / 30:
                heard, judged = (run.real, wall), False
        if rng.random() < 1 / 90:
            chatty = not chatty
        # What happens before the next look.
        roll = rng.random()
        if up and roll < 1 / 720:  # the link drops (the next look sees a new connection)
            down_until = run.real + rng.choice([5.0, 60.0, 600.0]) * rng.random()
            run.connected = False
        elif up and roll < 2 / 720:  # the bridge stops, or crashes
            if rng.random() < 0.5:  # stopped: else the state of the last save
                run.saved, run.saved_at = uptime.state(), run.real
            restart_at = run.real + rng.choice([10.0, 600.0, 3600.0]) * rng.random()
            run.connected = False
        elif roll < 2 / 720 + 1 / 200:  # a small step back, the clock slewed
            run.offset -= rng.uniform(0.1, 5.0)
        elif roll < 2 / 720 + 1 / 200 + 1 / 1500:  # set back, put right later or not
            step = rng.choice([60.0, 3600.0, 2 * DAY]) * rng.uniform(0.02, 1.0)
            run.offset -= step
            if rng.random() < 0.5:
                run.corrections.append((run.real + rng.uniform(10.0, 7200.0), step))
        elif roll < 2 / 720 + 1 / 200 + 2 / 1500:  # set forward
            run.offset += rng.choice([2.0, 3600.0, 2 * DAY]) * rng.uniform(0.6, 1.0)
        for at, step in [c for c in run.corrections if c[0] <= run.real + LOOK_S]:
            run.corrections.remove((at, step))
            run.offset += step
        run.real += LOOK_S
        if restart_at is not None and run.real >= restart_at:
            restart_at = None
            start()
    return verdicts


def test_random_histories_never_judge_a_sensor_silent_early() -> None:
    """200 histories of 6 h: no verdict comes before the horizon of real listening since the
    sensor was last heard, whatever the link, the restarts and the clock did."""
    early: list[tuple[int, float, float]] = []
    count = 0
    for seed in range(200):
        verdicts = _random_history(seed, lambda horizon: Uptime(horizon, SETTLE_S))
        count += len(verdicts)
        horizon = random.Random(seed).choice([900.0, 1800.0, 5400.0])
        early += [(seed, truth, horizon) for _, truth, _ in verdicts if truth <= horizon]
    assert early == []
    assert count > 500  # the histories do judge sensors silent
