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
