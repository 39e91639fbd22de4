"""Silence is listening time: a host clock stepped forward (an NTP step at boot, a VM resumed
with its clock set right) is not taken for time the bridge listened."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.uptime import SETTLE_S, Uptime
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
