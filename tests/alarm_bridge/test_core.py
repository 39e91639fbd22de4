"""The bridge core against a real SQLite outbox: adapters, dedup, lifecycle, candidate bodies."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.adapters import Adapted, Rejected, adapt, alarm_id_for
from gridpatrol.alarm_bridge.lifecycle import AlarmState
from gridpatrol.alarm_bridge.uptime import MAX_GAPS, SETTLE_S, Uptime
from gridpatrol.alarm_bridge.worker import BatchResult, Bridge, BridgeCore
from gridpatrol.api.client import Outbox
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.site import Sensor, Site, load_site, parse_site

from .conftest import SITE_YAML, outbox_ops

T0 = 1_790_000_000.0
BROKER = "mqtt://127.0.0.1:1883"  # never connected to


def envelope(sensor: str, event_id: str, transition: str = "raise", **kw: Any) -> bytes:
    body = {
        "schema": "gridalarm/1",
        "event_id": event_id,
        "sensor_id": sensor,
        "alarm_type": kw.pop("alarm_type", "manhole_tilt"),
        "transition": transition,
        "severity": kw.pop("severity", "MAJOR"),
        "ts": kw.pop("ts", T0),
        "measurements": [{"n": "tilt", "u": "deg", "v": 21.5}],
        **kw,
    }
    return json.dumps(body).encode()


def reading(sensor: str, value: float, ts: float) -> bytes:
    return json.dumps({"sensor_id": sensor, "value": value, "ts": ts}).encode()


def named(cases: list[tuple[Any, ...]]) -> list[Any]:
    """The rows of a table whose first column names the case, as pytest parameters."""
    return [pytest.param(*case[1:], id=case[0]) for case in cases]


class Harness:
    def __init__(self, site: Site, outbox: Outbox, settle_s: float = 0.0) -> None:
        self.core = BridgeCore(site)
        self.outbox = outbox
        self.uptime = Uptime(self.core.silence_horizon(), settle_s)
        self.dead: list[str] = []
        self.snapshots: list[tuple[str, str]] = []
        with outbox.transaction() as txn:  # as a starting bridge does
            store.init(txn.conn)
            self.core.restore_uptime(txn, self.uptime)

    def send(self, topic: str, payload: bytes, at: float = T0, retained: bool = False) -> None:
        self.send_batch([(topic, payload)], at, retained)

    def send_batch(
        self, messages: list[tuple[str, bytes]], at: float = T0, retained: bool = False
    ) -> None:
        """One transaction, as the worker does for a batch of MQTT messages."""
        out = BatchResult()
        received_at = datetime.fromtimestamp(at, tz=UTC)
        with self.outbox.transaction() as txn:
            store.init(txn.conn)
            for topic, payload in messages:
                self.core.handle(txn, topic, payload, received_at, out, retained=retained)
            self.core.finish(txn, out)
            self.core.flush_patches(txn)
        self.dead += [d.reason for d in out.dead]
        self.snapshots += out.snapshots

    def alarm(self, sensor: str, payload: bytes, at: float = T0) -> None:
        self.send(f"gridpatrol/sensors/{sensor}/alarm", payload, at)

    def silence(self, now: float, connects: int = 1, tick: float | None = None) -> None:
        """A look at a connection (a new one when ``connects`` changed), then the check;
        ``tick``: the monotonic clock (None: the wall clock stands in for it)."""
        assert self.uptime.look(now, True, connects, tick)
        out = BatchResult()
        with self.outbox.transaction() as txn:
            store.init(txn.conn)
            self.core.check_silence(txn, now, out, self.uptime)
            self.core.finish(txn, out)

    def stop(self, now: float) -> None:
        """As a bridge stopping does: the connection's history written as it is."""
        with self.outbox.transaction() as txn:
            assert self.core.save_uptime(txn, self.uptime, now, final=True)


@pytest.fixture
def h(site: Site, outbox: Outbox) -> Harness:
    return Harness(site, outbox)


def test_raise_update_clear_and_redelivery(h: Harness) -> None:
    h.alarm("mh-1", envelope("mh-1", "e1", severity="MINOR"))
    h.alarm("mh-1", envelope("mh-1", "e2", "update", severity="CRITICAL", ts=T0 + 60))
    h.alarm("mh-1", envelope("mh-1", "e2", "update", severity="CRITICAL", ts=T0 + 60))  # replay
    h.alarm("mh-1", envelope("mh-1", "e3", "clear", ts=T0 + 120))
    ops = outbox_ops(h.outbox)
    assert [(k, c) for k, c, _ in ops] == [
        ("evidence", None),
        ("create", alarm_id_for("mh-1", "manhole_tilt", "e:e1")),
        ("patch", alarm_id_for("mh-1", "manhole_tilt", "e:e1")),
        ("patch", alarm_id_for("mh-1", "manhole_tilt", "e:e1")),
    ]
    assert ops[0][2] == "application/json"
    body = ops[1][2]
    assert body["type"] == "manhole_cover"
    assert body["urgency"] == "immediate"
    assert body["severity"] == "MINOR"
    assert body["source"] == {
        "type": "sensor",
        "system": "gridpatrol-bridge",
        "sensor_id": "mh-1",
        "source_event_id": "mh-1/e:e1",
    }
    assert body["location"]["address"] == "大宁路 102号"
    assert body["description"].startswith("井盖异常")
    assert "Manhole cover" in body["description"]
    assert body["evidence"][0]["kind"] == "sensor_trace"
    assert body["measurements"] == [{"n": "tilt", "u": "deg", "v": 21.5, "t": T0}]
    assert body["alarm"]["count"] == 1 and body["alarm"]["previous_alarm_id"] is None
    assert body["occurred_at"].endswith("Z")
    update = ops[2][2]
    assert update["alarm"]["count"] == 2 and update["severity"] == "CRITICAL"
    assert update["alarm"]["first_seen"] != update["alarm"]["last_seen"]
    assert h.core.counts.duplicates == 1
    assert (h.core.counts.created, h.core.counts.updated, h.core.counts.cleared) == (1, 1, 1)
    assert h.snapshots == [(body["id"], "cam-1")]


CLEAR_CASES = [
    # (name, [(topic, payload, received at)], alarm type, count, first_seen, cleared at)
    (
        "a device clear",
        [
            ("sensors/mh-1/alarm", envelope("mh-1", "r"), T0),
            ("sensors/mh-1/alarm", envelope("mh-1", "u", "update", ts=T0 + 60), T0 + 60),
            ("sensors/mh-1/alarm", envelope("mh-1", "c", "clear", ts=T0 + 90), T0 + 90),
        ],
        "manhole_tilt",
        2,
        "2026-09-21T14:13:20Z",
        "2026-09-21T14:14:50Z",
    ),
    (
        "a reading back below the clear level",
        [
            ("sensors/bf-1/alarm", reading("bf-1", 95, T0), T0),
            ("sensors/bf-1/alarm", reading("bf-1", 40, T0 + 30), T0 + 30),
        ],
        "bin_fill",
        1,
        "2026-09-21T14:13:20Z",
        "2026-09-21T14:13:50Z",
    ),
    (
        "a device_offline cleared by the sensor's online",
        [
            ("sensors/sm-1/status", b"offline", T0),
            ("sensors/sm-1/status", b"online", T0 + 45),
        ],
        "device_offline",
        1,
        "2026-09-21T14:13:20Z",
        "2026-09-21T14:14:05Z",
    ),
]


@pytest.mark.parametrize(
    ("messages", "alarm_type", "count", "first_seen", "cleared_at"),
    named(CLEAR_CASES),
)
def test_a_clear_tells_the_candidate_when_it_cleared(
    h: Harness,
    messages: list[tuple[str, bytes, float]],
    alarm_type: str,
    count: int,
    first_seen: str,
    cleared_at: str,
) -> None:
    for topic, payload, at in messages:
        h.send(f"gridpatrol/{topic}", payload, at)
    ops = [(k, c, b) for k, c, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _, _ in ops][-1] == "patch" and ops[-1][1] == ops[0][1]
    assert ops[-1][2] == {
        "alarm": {
            "alarm_id": ops[0][1],
            "alarm_type": alarm_type,
            "count": count,
            "first_seen": first_seen,
            "last_seen": cleared_at,
            "previous_alarm_id": None,
            "cleared_at": cleared_at,
        }
    }


def test_an_update_carries_no_cleared_at(h: Harness) -> None:
    h.alarm("mh-1", envelope("mh-1", "r"))
    h.alarm("mh-1", envelope("mh-1", "u", "update", ts=T0 + 60))
    patches = [b for k, _, b in outbox_ops(h.outbox) if k == "patch"]
    assert len(patches) == 1 and "cleared_at" not in patches[0]["alarm"]


def test_raise_after_clear_references_previous(h: Harness) -> None:
    h.alarm("sm-1", envelope("sm-1", "a", alarm_type="smoke"))
    h.alarm("sm-1", envelope("sm-1", "b", "clear", alarm_type="smoke"))
    h.alarm("sm-1", envelope("sm-1", "c", alarm_type="smoke"))
    creates = [body for kind, _, body in outbox_ops(h.outbox) if kind == "create"]
    first, second = creates
    assert second["alarm"]["previous_alarm_id"] == first["id"]
    assert second["references"] == [first["id"]]
    assert second["type"] == "smoke" and second["urgency"] == "immediate"


STALE_CASES = [
    # (name, [(event id, transition, seconds after T0)], kinds queued, created, stale)
    (
        "a late clear leaves the live alarm open",
        [("r", "raise", 100), ("u", "update", 300), ("c", "clear", 200)],
        ["evidence", "create", "patch"],
        1,
        1,
    ),
    (
        "a late update after the clear opens no false candidate",
        [("r", "raise", 100), ("c", "clear", 200), ("u", "update", 150)],
        ["evidence", "create", "patch"],
        1,
        1,
    ),
]


@pytest.mark.parametrize(
    ("messages", "kinds", "created", "stale"),
    named(STALE_CASES),
)
def test_device_transitions_sent_before_the_last_one_are_stale(
    h: Harness, messages: list[tuple[str, str, float]], kinds: list[str], created: int, stale: int
) -> None:
    for i, (event_id, transition, dt) in enumerate(messages):
        h.alarm(
            "sm-1",
            envelope("sm-1", event_id, transition, alarm_type="smoke", ts=T0 + dt),
            T0 + 400 + i,
        )
    assert [k for k, _, _ in outbox_ops(h.outbox)] == kinds
    assert (h.core.counts.created, h.core.counts.stale) == (created, stale)


@pytest.mark.parametrize("alarm_type", ["manhole_tilt", "manhole_open"])
def test_a_raise_its_clear_overtook_opens_no_candidate(h: Harness, alarm_type: str) -> None:
    """mh-1 reports its cover closed (t+20) before the raise it sent at t arrives: the raise
    is stale. It used to open a confirmed, urgent manhole case that nothing would clear."""
    h.alarm("mh-1", envelope("mh-1", "e2", "clear", alarm_type=alarm_type, ts=T0 + 20), T0 + 25)
    h.alarm("mh-1", envelope("mh-1", "e1", "raise", alarm_type=alarm_type, ts=T0), T0 + 26)
    assert outbox_ops(h.outbox) == []
    counts = h.core.counts
    assert (counts.created, counts.cleared, counts.ignored, counts.stale) == (0, 0, 1, 1)
    # The cover opening again later is a new alarm.
    h.alarm("mh-1", envelope("mh-1", "e3", "raise", alarm_type=alarm_type, ts=T0 + 60), T0 + 61)
    assert [k for k, _, _ in outbox_ops(h.outbox)] == ["evidence", "create"]


OVERTAKEN_CASES = [
    # (name, (clear's time, its reception), (raise's time, its reception)), after T0
    ("a clock on time", (20, 25), (0, 26)),
    ("a clock 30 s ahead", (10 + 30, 10.2), (30, 20)),
    ("a clock 5 s ahead, the clear 3 s after the raise", (3 + 5, 3.2), (0 + 5, 3.5)),
    # Timed to the second (2026-09-21T14:13:20Z both): received after the clear, the raise
    # is the one it overtook.
    ("a clock stamping whole seconds, both in one second", (0, 0.6), (0, 3)),
]


@pytest.mark.parametrize(("clear", "raised"), named(OVERTAKEN_CASES))
def test_a_raise_its_clear_overtook_is_stale_whatever_the_device_clock(
    h: Harness, clear: tuple[float, float], raised: tuple[float, float]
) -> None:
    """The raise is held up on its way longer than the clear by the same seconds whichever
    clock times both: a clock running ahead does not let it open an alarm."""
    h.alarm("mh-1", envelope("mh-1", "c1", "clear", ts=T0 + clear[0]), T0 + clear[1])
    h.alarm("mh-1", envelope("mh-1", "r1", ts=T0 + raised[0]), T0 + raised[1])
    assert outbox_ops(h.outbox) == []
    assert (h.core.counts.created, h.core.counts.stale) == (0, 1)


def test_clears_before_a_device_clock_is_set_back_leave_its_next_alarm_open(h: Harness) -> None:
    """mh-1 reports its cover closed every 10 minutes, then its clock is set back 50 minutes
    (less than a day: its times are kept). Its next raise and updates are held up no longer
    than its clears: a new alarm and its repeats, not stale until the clock passes the clears'
    time."""
    for at in (T0, T0 + 600, T0 + 1200):
        h.alarm("mh-1", envelope("mh-1", f"c{at}", "clear", ts=at), at)
    behind = 3000
    h.alarm("mh-1", envelope("mh-1", "r1", ts=T0 + 1400 - behind), T0 + 1400)
    for i in range(1, 41):
        at = T0 + 1400 + 60 * i
        h.alarm("mh-1", envelope("mh-1", f"u{i}", "update", ts=at - behind), at)
    counts = h.core.counts
    assert (counts.created, counts.updated, counts.stale) == (1, 40, 0)


def test_a_numbered_raise_after_a_clear_with_nothing_active_raises(h: Harness) -> None:
    """With seq the order is the device's: its raise sent after the clear (its clock set back
    in between) still raises, at its own time. The clear's time orders only envelopes
    without seq."""
    h.alarm("mh-1", envelope("mh-1", "e1", "clear", ts=T0 + 20, seq=1), T0 + 25)
    h.alarm("mh-1", envelope("mh-1", "e2", "raise", ts=T0, seq=2), T0 + 26)
    creates = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert [b["alarm"]["first_seen"] for b in creates] == ["2026-09-21T14:13:20Z"]
    assert (h.core.counts.created, h.core.counts.stale) == (1, 0)


FIRST_ALARM_CASES = [
    # (name, [(topic under gridpatrol/sensors/, payload, received at)], the create's occurred_at)
    (
        "a reading beyond raise timed at its reception after one beyond clear timed ahead",
        [
            ("bf-1/alarm", reading("bf-1", 50, T0 + 299), T0),  # 299 s ahead: kept
            ("bf-1/alarm", reading("bf-1", 95, T0 + 421), T0 + 120),  # 301 s ahead: moved
        ],
        "2026-09-21T14:15:20Z",
    ),
    (
        "a reading beyond raise timed before one beyond clear from a gateway running ahead",
        [
            ("bf-1/alarm", reading("bf-1", 50, T0 + 60), T0),
            ("bf-1/alarm", reading("bf-1", 95, T0 + 30), T0 + 30),
        ],
        "2026-09-21T14:13:50Z",
    ),
    (
        "a smoke raise timed a second before a pack without time that read no smoke",
        [
            ("sm-2/alarm", json.dumps([{"bn": "sm-2:", "n": "smoke", "vb": False}]).encode(), T0),
            ("sm-2/alarm", envelope("sm-2", "s1", alarm_type="smoke", ts=T0 - 1), T0 + 1),
        ],
        "2026-09-21T14:13:19Z",
    ),
    (
        "a tilt pack without time after a clear with nothing active timed ahead",
        [
            ("mh-1/alarm", envelope("mh-1", "c1", "clear", ts=T0 + 200), T0),
            (
                "mh-1/alarm",
                json.dumps([{"bn": "mh-1:", "n": "tilt", "u": "deg", "v": 40}]).encode(),
                T0 + 60,
            ),
        ],
        "2026-09-21T14:14:20Z",
    ),
    (
        "a device raise after a clear with nothing active timed ahead of its reception",
        [
            ("mh-1/alarm", envelope("mh-1", "c1", "clear", ts=T0 + 250), T0),
            ("mh-1/alarm", envelope("mh-1", "r1", ts=T0 + 100), T0 + 100),
        ],
        "2026-09-21T14:15:00Z",
    ),
    (
        "a device raise after a clear timed at its reception (its clock far ahead)",
        [
            ("mh-1/alarm", envelope("mh-1", "c1", "clear", ts=T0 + 1000), T0 + 60),
            ("mh-1/alarm", envelope("mh-1", "r1", ts=T0 + 30), T0 + 61),
        ],
        "2026-09-21T14:13:50Z",
    ),
    (
        "the bridge's device_offline after a device's clear of it timed ahead",
        [
            (
                "mh-1/alarm",
                envelope("mh-1", "c1", "clear", alarm_type="device_offline", ts=T0 + 250),
                T0,
            ),
            ("mh-1/status", b"offline", T0 + 10),
        ],
        "2026-09-21T14:13:30Z",
    ),
]


@pytest.mark.parametrize(("messages", "occurred_at"), named(FIRST_ALARM_CASES))
def test_a_first_alarm_is_not_stale_for_what_came_before_it(
    h: Harness, messages: list[tuple[str, bytes, float]], occurred_at: str
) -> None:
    """Only a device clear with nothing active keeps its time, at most its reception, and only
    device raises and updates without seq, neither timed at its reception, are judged by it:
    a sensor that never alarmed, whose clocks disagree, still raises when it alarms."""
    for topic, payload, at in messages:
        h.send(f"gridpatrol/sensors/{topic}", payload, at)
    creates = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert [b["occurred_at"] for b in creates] == [occurred_at]
    assert (h.core.counts.created, h.core.counts.stale) == (1, 0)


STORED_STATE_ROWS = [
    # (name, a state row as stored, its kept clears' times and receptions as loaded)
    (
        "before the clear time was kept (nine fields)",
        ["cleared", None, None, "a1", None, 1, T0, T0 + 20, "MAJOR"],
        (),
    ),
    (
        "before the clear's reception was kept (ten fields): at most it, taken for it",
        ["cleared", None, None, "a1", None, 1, T0, T0 + 20, "MAJOR", T0 + 30],
        ((T0 + 30, T0 + 30),),
    ),
    (
        "with no clear kept (ten fields)",
        ["cleared", None, None, "a1", None, 1, T0, T0 + 20, "MAJOR", None],
        (),
    ),
    (
        "with the one clear timed last kept (eleven fields)",
        ["cleared", None, None, "a1", None, 1, T0, T0 + 20, "MAJOR", T0 + 30, T0 + 25],
        ((T0 + 30, T0 + 25),),
    ),
    (
        "with every recent clear kept",
        ["cleared", None, None, "a1", None, 1, T0, T0 + 20, "MAJOR", [[T0 + 30, T0 + 25]]],
        ((T0 + 30, T0 + 25),),
    ),
]


@pytest.mark.parametrize(("row", "quiets"), named(STORED_STATE_ROWS))
def test_an_alarm_state_stored_before_a_field_was_added_still_loads(
    h: Harness, row: list[object], quiets: tuple[tuple[float, float], ...]
) -> None:
    """A state row written without the last fields, or with the one clear timed last where
    every recent clear is kept now, loads, with what it kept."""
    with h.outbox.transaction() as txn:
        txn.conn.execute(
            "INSERT INTO bridge_alarm_state (sensor_id, alarm_type, state) VALUES (?, ?, ?)",
            ("mh-1", "manhole_tilt", json.dumps(row)),
        )
        state = store.load_state(txn.conn, "mh-1", "manhole_tilt")
    assert (state.phase, state.alarm_id, state.last_seen) == ("cleared", "a1", T0 + 20)
    assert state.quiets == quiets


def test_a_state_with_clears_kept_is_stored_and_loaded_as_it_was(h: Harness) -> None:
    kept = AlarmState(phase="cleared", alarm_id="a1", quiets=((T0 + 100, T0), (T0 + 60, T0 + 61)))
    with h.outbox.transaction() as txn:
        store.save_state(txn.conn, "mh-1", "manhole_tilt", kept)
        assert store.load_state(txn.conn, "mh-1", "manhole_tilt") == kept


def test_a_raise_overtaken_by_a_clear_timed_before_the_one_timed_last_is_stale(
    h: Harness,
) -> None:
    """mh-1's clock runs 100 s ahead for its first clear, then is set back (NTP) before its
    next: the raise it sent before that clear, held up on its way, was overtaken by it, not by
    the first. Keeping only the clear timed last, the raise opened an alarm nothing cleared."""
    h.alarm("mh-1", envelope("mh-1", "c1", "clear", ts=T0 + 100), T0)
    h.alarm("mh-1", envelope("mh-1", "c2", "clear", ts=T0 + 60), T0 + 61)
    h.alarm("mh-1", envelope("mh-1", "r1", ts=T0 + 50), T0 + 90)
    assert outbox_ops(h.outbox) == []
    assert (h.core.counts.created, h.core.counts.stale) == (0, 1)


def test_a_message_received_before_a_silence_check_still_clears_its_alarm(h: Harness) -> None:
    """Handled after the check that raised device_offline, it is not a stale clear."""
    h.silence(T0)
    h.silence(T0 + 3 * 300 + 2)  # wl-1 silent: raised
    h.alarm("wl-1", reading("wl-1", 1.0, T0 + 900), T0 + 901)  # waited in the inbox
    ops = [(k, c, b) for k, c, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [(k, c) for k, c, _ in ops] == [("create", ops[0][1]), ("patch", ops[0][1])]
    assert ops[0][2]["type"] == "device_offline"
    assert ops[1][2]["alarm"]["cleared_at"] == "2026-09-21T14:28:22Z"  # the raise's time
    assert h.core.counts.stale == 0


DEAD_LETTERS = [
    ("unknown sensor", "gridpatrol/sensors/zz-9/alarm", envelope("zz-9", "1"), "unknown_sensor"),
    (
        "kind vs alarm type",
        "gridpatrol/sensors/sm-1/alarm",
        envelope("sm-1", "1", alarm_type="water_level"),
        "alarm_type_mismatch",
    ),
    (
        "reading without thresholds",
        "gridpatrol/sensors/sm-1/alarm",
        reading("sm-1", 3.0, T0),
        "no_thresholds",
    ),
    ("oversized", "gridpatrol/sensors/mh-1/alarm", b" " * 70_000, "too_large"),
    ("bad JSON", "gridpatrol/sensors/mh-1/alarm", b"{nope", "bad_json"),
    (
        "unknown schema",
        "gridpatrol/sensors/mh-1/alarm",
        envelope("mh-1", "1").replace(b"gridalarm/1", b"gridalarm/9"),
        "unknown_schema",
    ),
    ("not a sensor topic", "gridpatrol/sensors/mh-1/other", b"{}", "bad_topic"),
    ("garbage status", "gridpatrol/sensors/mh-1/status", b"maybe", "bad_status"),
    (
        "sensor id mismatch",
        "gridpatrol/sensors/mh-1/alarm",
        envelope("wl-1", "1", alarm_type="water_level"),
        "sensor_id_mismatch",
    ),
    ("huge integer", "gridpatrol/sensors/mh-1/alarm", reading("mh-1", 10**400, T0), "bad_value"),
    (
        # json.loads refuses to convert it before the envelope's seq check sees it
        "seq of more than 4300 digits",
        "gridpatrol/sensors/mh-1/alarm",
        envelope("mh-1", "1", seq=0).replace(b'"seq": 0', b'"seq": ' + b"9" * 4301),
        "bad_value",
    ),
    (
        "SenML value too large for a float",
        "gridpatrol/sensors/wl-1/alarm",
        json.dumps([{"bn": "wl-1:", "n": "level", "u": "cm", "v": 10**400}]).encode(),
        "bad_value",
    ),
    (
        "SenML without a reading in the unit",
        "gridpatrol/sensors/wl-1/alarm",
        json.dumps([{"bn": "wl-1:", "n": "battery", "u": "%EL", "v": 80}]).encode(),
        "no_reading",
    ),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    named(DEAD_LETTERS),
)
def test_dead_letters(h: Harness, topic: str, payload: bytes, reason: str) -> None:
    h.send(topic, payload)
    assert h.dead == [reason]
    assert outbox_ops(h.outbox) == []
    assert h.core.counts.dead_letters == 1


AHEAD_CASES = [
    # (name, sensor, payload received at T0, occurred_at of the candidate, alarm.count)
    (
        "a device raise timed an hour ahead",
        "mh-1",
        envelope("mh-1", "e1", ts=T0 + 3600),
        "2026-09-21T14:13:20Z",  # T0
        1,
    ),
    (
        "a device raise timed 8 h ahead (local time sent as UTC)",
        "sm-1",
        envelope("sm-1", "e1", alarm_type="smoke", ts="2026-09-21T22:13:20+00:00"),
        "2026-09-21T14:13:20Z",
        1,
    ),
    (
        "a threshold reading timed an hour ahead",
        "bf-1",
        reading("bf-1", 95, T0 + 3600),
        "2026-09-21T14:13:20Z",
        1,
    ),
    (
        "a SenML pack timed an hour ahead keeps its records 10 s apart",
        "wl-1",
        json.dumps(
            [
                {"bn": "wl-1:", "bt": T0 + 3600, "n": "level", "u": "cm", "v": 20},
                {"n": "level", "u": "cm", "t": 10, "v": 21},
            ]
        ).encode(),
        "2026-09-21T14:13:10Z",  # T0 - 10 s: the later record is at T0
        2,
    ),
]


@pytest.mark.parametrize(
    ("sensor", "payload", "occurred_at", "count"),
    named(AHEAD_CASES),
)
def test_a_message_timed_ahead_is_timed_at_its_reception(
    h: Harness, sensor: str, payload: bytes, occurred_at: str, count: int
) -> None:
    h.alarm(sensor, payload, T0)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert h.dead == []
    assert ops[0][0] == "create" and ops[0][1]["occurred_at"] == occurred_at
    assert ops[-1][1]["alarm"]["count"] == count
    assert ops[-1][1]["alarm"]["last_seen"] == "2026-09-21T14:13:20Z"
    assert h.core.counts.moved_to_reception == 1


DAY = 86400.0


def fill_pack(*records: tuple[float, float]) -> bytes:
    """A bf-1 pack of (time, fill in %) records."""
    return json.dumps(
        [{"bn": "bf-1:", "n": "fill", "u": "%", "v": v, "t": t} for t, v in records]
    ).encode()


def test_a_flushed_reading_older_than_an_active_alarms_sighting_does_not_clear_it(
    h: Harness,
) -> None:
    """bf-1 full 2 h and 1 h ago (raised), then a flushed buffer: empty 2 days ago, full now.
    The 2-day-old reading, taken before the alarm's latest sighting, is stale: it used to
    clear the alarm, and the current full reading raised a second candidate."""
    h.alarm("bf-1", fill_pack((T0 - 7200, 95)), T0 - 7200)
    h.alarm("bf-1", fill_pack((T0 - 3600, 95)), T0 - 3600)
    h.alarm("bf-1", fill_pack((T0 - 2 * DAY, 30), (T0 - 5, 95)), T0)
    counts = h.core.counts
    assert (counts.created, counts.cleared, counts.stale) == (1, 0, 1)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    # the sightings 1 h ago and now: updates of the one alarm, none clearing it
    assert [(k, b.get("alarm", {}).get("cleared_at")) for k, b in ops] == [
        ("create", None),
        ("patch", None),
        ("patch", None),
    ]


def test_a_flushed_buffer_beside_a_current_record_raises_and_clears_at_its_own_times(
    h: Harness,
) -> None:
    """A bin offline for days flushes its buffer with a current reading: full 3 days ago,
    emptied 2 days ago, still empty now. Its records are read at their own times (its latest
    is plausibly timed), so the past alarm is raised and cleared. Records more than a day
    behind beside the current one used to be left out, and the full bin was lost."""
    h.alarm("bf-1", fill_pack((T0 - 3 * DAY, 95), (T0 - 2 * DAY, 30), (T0 - 10, 30)), T0)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [
        (k, b["occurred_at"] if k == "create" else b["alarm"].get("cleared_at")) for k, b in ops
    ] == [("create", "2026-09-18T14:13:20Z"), ("patch", "2026-09-19T14:13:20Z")]
    counts = h.core.counts
    assert (counts.created, counts.cleared, counts.stale, counts.moved_to_reception) == (
        1,
        1,
        0,
        0,
    )
    assert h.dead == []


REBOOT_CASES = [
    # (name, the new boot's time, occurred_at of its raise, messages timed at reception)
    ("its clock reset to 2000-01-01", "2000-01-01T00:00:00Z", "2026-09-21T14:13:25Z", 2),
    ("its clock two hours behind", T0 - 7200, "2026-09-21T14:13:21Z", 0),  # the clear's time
]


@pytest.mark.parametrize(("ts", "occurred_at", "moved"), named(REBOOT_CASES))
def test_a_rebooted_device_with_its_clock_behind_raises_again(
    h: Harness, ts: float | str, occurred_at: str, moved: int
) -> None:
    """Its seq puts the new boot's raise after the clear: not stale, whatever its clock says."""
    h.alarm("mh-1", envelope("mh-1", "a1", seq=1, boot_id="A"), T0)
    h.alarm("mh-1", envelope("mh-1", "a2", "clear", seq=2, boot_id="A", ts=T0 + 1), T0 + 1)
    h.alarm("mh-1", envelope("mh-1", "b1", seq=1, boot_id="B", ts=ts), T0 + 5)
    later = ts if isinstance(ts, str) else ts + 10
    h.alarm("mh-1", envelope("mh-1", "b2", "update", seq=2, boot_id="B", ts=later), T0 + 15)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    creates = [b for k, b in ops if k == "create"]
    assert [b["occurred_at"] for b in creates] == ["2026-09-21T14:13:20Z", occurred_at]
    assert creates[1]["alarm"]["previous_alarm_id"] == creates[0]["id"]
    assert ops[-1][1]["alarm"]["count"] == 2  # the new boot's update counts too
    assert (h.core.counts.stale, h.core.counts.moved_to_reception) == (0, moved)
    assert h.core.counts.created == 2


def test_a_device_without_boot_id_rebooted_with_its_clock_reset_raises_and_clears_again(
    h: Harness,
) -> None:
    """No boot_id: after seq 500 the device reboots with its clock reset to 2000-01-01 and
    counts from 1 again. Its messages, timed at their reception, used to be out of order until
    their seq passed 500, so its raise and clear were lost; the first restarts the counter,
    and the reset clock's own times order the next ones (b2, sent before b3, is late)."""
    h.alarm("mh-1", envelope("mh-1", "a1", seq=1), T0)
    h.alarm("mh-1", envelope("mh-1", "a500", "clear", seq=500, ts=T0 + 500), T0 + 500)
    for event_id, transition, seq, at in [
        ("b1", "raise", 1, T0 + 600),
        ("b3", "update", 3, T0 + 630),
        ("b2", "update", 2, T0 + 640),
        ("b4", "clear", 4, T0 + 650),
    ]:
        ts = f"2000-01-01T00:00:{10 * seq:02d}Z"
        h.alarm("mh-1", envelope("mh-1", event_id, transition, seq=seq, ts=ts), at)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create", "patch", "create", "patch", "patch"]
    first, again = ops[0][1], ops[2][1]
    assert (again["occurred_at"], again["source"]["source_event_id"]) == (
        "2026-09-21T14:23:20Z",
        "mh-1/e:b1",
    )
    assert again["alarm"]["previous_alarm_id"] == first["id"]
    assert ops[3][1]["alarm"]["count"] == 2  # b3; b2 left out
    assert ops[4][1]["alarm"]["cleared_at"] == "2026-09-21T14:24:10Z"
    counts = h.core.counts
    assert (counts.seq_restarts, counts.out_of_order, counts.moved_to_reception) == (1, 1, 4)
    assert (counts.created, counts.cleared, counts.stale) == (2, 2, 0)


LATE_BEHIND_CASES = [
    # (name, [(event_id, transition, seq, ts, received at)]), no boot_id: the last is late
    (
        "a device offline for days flushes its buffer newest first",
        [("a510", "clear", 510, T0 - 3600, T0), ("a509", "raise", 509, T0 - 2 * DAY, T0 + 1)],
    ),
    (
        "a message sent before its clock, 3 days behind, was set right",
        [
            ("a508", "clear", 508, T0 - 3 * DAY - 60, T0 - 60),
            ("a510", "clear", 510, T0, T0),
            ("a509", "raise", 509, T0 - 3 * DAY - 30, T0 + 5),
        ],
    ),
]


@pytest.mark.parametrize("messages", named(LATE_BEHIND_CASES))
def test_a_late_message_a_day_behind_is_no_restart_when_its_seq_does_not_start_over(
    h: Harness, messages: list[tuple[str, str, int, float, float]]
) -> None:
    """Timed at its reception (a day or more behind) and received after the last message,
    whose clock was right, a message whose seq is where the counter had got to was sent
    before the last one, not after a reboot: it is late. It used to restart the counter and
    raise again what the last message had cleared."""
    for event_id, transition, seq, ts, at in messages:
        h.alarm("mh-1", envelope("mh-1", event_id, transition, seq=seq, ts=ts), at)
    assert [k for k, _, _ in outbox_ops(h.outbox)] == []
    counts = h.core.counts
    assert (counts.created, counts.out_of_order, counts.seq_restarts) == (0, 1, 0)


LOW_SEQ_HELD_UP_CASES = [
    # (name, boot_id, seqs of the old clear, the last clear and the held-up raise)
    ("within one boot_id", "b7", (4, 6, 5)),
    ("without boot_id, a young counter", None, (40, 42, 41)),
]


@pytest.mark.parametrize(("boot_id", "seqs"), named(LOW_SEQ_HELD_UP_CASES))
def test_a_held_up_message_days_behind_with_a_low_seq_is_no_restart(
    h: Harness, boot_id: str | None, seqs: tuple[int, int, int]
) -> None:
    """A raise taken 2 days ago, held up, arrives after the clear sent an hour ago: it is
    late, though its seq is among a counter's first ones. Within one boot_id the device did
    not reboot, and a clock only days behind is no clock reset by a reboot (those land at an
    epoch such as 2000-01-01). It used to restart the counter and reopen what was cleared."""
    old, last, held_up = seqs
    for event_id, transition, seq, ts, at in [
        ("c1", "clear", old, T0 - 3 * DAY, T0 - 3 * DAY),
        ("c2", "clear", last, T0 - 3600, T0),
        ("r1", "raise", held_up, T0 - 2 * DAY, T0 + 1),
    ]:
        payload = envelope("mh-1", event_id, transition, seq=seq, ts=ts, boot_id=boot_id)
        h.alarm("mh-1", payload, at)
    assert [k for k, _, _ in outbox_ops(h.outbox)] == []
    counts = h.core.counts
    assert (counts.created, counts.out_of_order, counts.seq_restarts) == (0, 1, 0)


def test_a_message_timed_more_than_a_day_before_its_reception_is_timed_at_it(
    h: Harness,
) -> None:
    h.alarm("bf-1", reading("bf-1", 95, T0 - 86400 - 1), T0)
    (create,) = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert create["occurred_at"] == "2026-09-21T14:13:20Z"
    assert h.core.counts.moved_to_reception == 1


def test_a_message_timed_a_day_before_its_reception_keeps_its_time(h: Harness) -> None:
    """Up to the broker's session expiry (a day) a message may have waited in the session."""
    h.alarm("bf-1", reading("bf-1", 95, T0 - 86400), T0)
    (create,) = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert create["occurred_at"] == "2026-09-20T14:13:20Z"
    assert h.core.counts.moved_to_reception == 0


def test_a_sensor_with_its_clock_ahead_is_ordered_by_its_own_times(h: Harness) -> None:
    """Timed at reception, a late message would look like a restart of the counter."""
    for event_id, seq, at in [("a", 5, T0), ("b", 7, T0 + 20), ("c", 6, T0 + 30)]:
        ts = at + 3600 - (10 if event_id == "c" else 0)  # c was sent before b
        h.alarm("mh-1", envelope("mh-1", event_id, "update", seq=seq, ts=ts), at)
    assert [k for k, _, _ in outbox_ops(h.outbox)] == ["evidence", "create", "patch"]
    assert (h.core.counts.out_of_order, h.core.counts.seq_restarts) == (1, 0)


def test_a_sensor_with_its_clock_ahead_is_heard(h: Harness) -> None:
    """Its alarms used to be dead-lettered, and it then looked silent: device_offline."""
    h.silence(T0)
    for i, at in enumerate((T0 + 600, T0 + 1200, T0 + 1800)):
        transition = "raise" if i == 0 else "update"
        h.alarm("mh-1", envelope("mh-1", f"e{i}", transition, ts=at + 3600), at)
    h.silence(T0 + 1900)  # mh-1 heard at T0 + 1800; wl-1 never: silent
    creates = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert [(b["type"], b["source"]["sensor_id"]) for b in creates] == [
        ("manhole_cover", "mh-1"),
        ("device_offline", "wl-1"),
    ]
    with h.outbox.transaction() as txn:
        assert store.last_heard(txn.conn)["mh-1"] == T0 + 1800


def test_a_well_formed_message_the_bridge_cannot_use_still_shows_the_sensor_alive(
    h: Harness,
) -> None:
    h.send("gridpatrol/sensors/sm-1/status", b"offline", T0)
    h.alarm("sm-1", reading("sm-1", 3.0, T0 + 10), T0 + 10)  # no thresholds: dead letter
    ops = outbox_ops(h.outbox)
    assert [(k, b["type"] if k == "create" else None) for k, _, b in ops] == [
        ("evidence", None),
        ("create", "device_offline"),
        ("patch", None),
    ]
    assert ops[2][1] == ops[1][1] and ops[2][2]["alarm"]["last_seen"] == "2026-09-21T14:13:30Z"
    assert h.dead == ["no_thresholds"]
    with h.outbox.transaction() as txn:
        assert store.last_heard(txn.conn)["sm-1"] == T0 + 10


def test_seq_out_of_order_and_new_boot(h: Harness) -> None:
    h.alarm("mh-1", envelope("mh-1", "a", seq=5, boot_id="b1"))
    h.alarm("mh-1", envelope("mh-1", "b", "update", seq=3, boot_id="b1"))  # late: ignored
    h.alarm("mh-1", envelope("mh-1", "c", "update", seq=1, boot_id="b2"))  # reboot: accepted
    kinds = [k for k, _, _ in outbox_ops(h.outbox)]
    assert kinds == ["evidence", "create", "patch"]
    assert h.core.counts.out_of_order == 1


RETURNING_BOOT_CASES = [
    # (name, boot B's clear: its ts and reception; A's raise again: its seq, ts and reception)
    ("its clock right", T0 + 10, T0 + 10, 1, T0 + 100, T0 + 100),
    ("its clock reset to 2000-01-01", T0 + 10, T0 + 10, 1, "2000-01-01T00:00:00Z", T0 + 100),
    ("boot B's clock an hour ahead", T0 + 3610, T0 + 10, 1, T0 + 100, T0 + 100),
    # a seq kept across boots, but the clock reset by the reboot: timed at its reception
    ("its clock reset, its seq not", T0 + 10, T0 + 10, 900, "2000-01-01T00:00:00Z", T0 + 100),
    # a seq kept across boots, timed more than MAX_AHEAD_S after B's clear: no late message
    ("its seq kept, 5 min after B's clear", T0 + 10, T0 + 10, 900, T0 + 311, T0 + 311),
]


@pytest.mark.parametrize(("b_ts", "b_at", "a_seq", "a_ts", "a_at"), named(RETURNING_BOOT_CASES))
def test_a_device_booting_an_earlier_boot_id_again_raises_again(
    h: Harness, b_ts: float, b_at: float, a_seq: int, a_ts: float | str, a_at: float
) -> None:
    """A/B firmware slots: boot A, B, then A again. A's new raise is timed (by the bridge, as
    the boots' clocks need not agree) after B's clear: a new boot, not a late message of A."""
    h.alarm("mh-1", envelope("mh-1", "a1", seq=1, boot_id="A"), T0)
    h.alarm("mh-1", envelope("mh-1", "b1", "clear", seq=1, boot_id="B", ts=b_ts), b_at)
    h.alarm("mh-1", envelope("mh-1", "a1-again", seq=a_seq, boot_id="A", ts=a_ts), a_at)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    creates = [b for k, b in ops if k == "create"]
    occurred = [datetime.fromisoformat(b["occurred_at"]).timestamp() for b in creates]
    assert occurred == [T0, a_at]
    assert creates[1]["alarm"]["previous_alarm_id"] == creates[0]["id"]
    assert ops[1][1]["alarm"]["cleared_at"] == "2026-09-21T14:13:30Z"
    assert (h.core.counts.out_of_order, h.core.counts.created) == (0, 2)


def test_the_boot_a_returning_boot_id_replaced_is_superseded_in_turn(h: Harness) -> None:
    """Boot A, B, A: B's update sent before A came back and arriving after it is ignored."""
    h.alarm("mh-1", envelope("mh-1", "a1", seq=1, boot_id="A"), T0)
    h.alarm("mh-1", envelope("mh-1", "b1", "clear", seq=1, boot_id="B", ts=T0 + 10), T0 + 10)
    h.alarm("mh-1", envelope("mh-1", "a1-again", seq=1, boot_id="A", ts=T0 + 100), T0 + 100)
    h.alarm("mh-1", envelope("mh-1", "b2", "update", seq=2, boot_id="B", ts=T0 + 50), T0 + 110)
    h.alarm("mh-1", envelope("mh-1", "a2", "update", seq=2, boot_id="A", ts=T0 + 120), T0 + 120)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create", "patch", "create", "patch"]
    assert ops[-1][1]["alarm"]["count"] == 2  # a1-again, then a2: b2 left out
    assert h.core.counts.out_of_order == 1


def test_a_late_message_of_an_old_boot_with_its_clock_ahead_is_still_superseded(
    h: Harness,
) -> None:
    """Boot A (seq 899) raises; the device reboots (B) and clears. A's update, sent before the
    reboot by a clock 95 s ahead, arrives after the clear and is timed after it, but its seq
    is where boot A had got to, not a boot starting again: ignored. B stays current: its next
    raise is followed, a new candidate."""
    h.alarm("mh-1", envelope("mh-1", "a899", seq=899, boot_id="A"), T0)
    h.alarm("mh-1", envelope("mh-1", "b5", "clear", seq=5, boot_id="B", ts=T0 + 1000), T0 + 1000)
    h.alarm(
        "mh-1", envelope("mh-1", "a900", "update", seq=900, boot_id="A", ts=T0 + 1100), T0 + 1005
    )
    h.alarm("mh-1", envelope("mh-1", "b6", seq=6, boot_id="B", ts=T0 + 1010), T0 + 1010)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create", "patch", "create"]
    assert ops[1][1]["alarm"]["cleared_at"] == "2026-09-21T14:30:00Z"
    again = ops[2][1]
    assert (again["occurred_at"], again["source"]["source_event_id"]) == (
        "2026-09-21T14:30:10Z",
        "mh-1/e:b6",
    )
    assert h.core.counts.out_of_order == 1


def test_a_message_without_boot_id_supersedes_no_boot(h: Harness) -> None:
    """A device that leaves boot_id out of some messages has not rebooted: its next message
    with its boot_id, sent the same second as the one without, is still followed."""
    h.alarm("mh-1", envelope("mh-1", "a1", seq=1, boot_id="A"), T0)
    h.alarm("mh-1", envelope("mh-1", "n2", "update", seq=2, ts=T0 + 10), T0 + 10)
    h.alarm("mh-1", envelope("mh-1", "a3", "update", seq=3, boot_id="A", ts=T0 + 10), T0 + 20)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create", "patch", "patch"]
    assert ops[-1][1]["alarm"]["count"] == 3
    assert h.core.counts.out_of_order == 0


SEQ_CASES = [
    # (name, [(seq, boot_id, seconds after T0)], alarm.count at the end, out of order, restarts)
    (
        "a 16-bit counter wraps from 65535 to 0",
        [(65534, "b1", 0), (65535, "b1", 1), (0, "b1", 2), (1, "b1", 3)],
        4,
        0,
        1,
    ),
    (
        "a device without boot_id reboots and counts from 1 again",
        [(499, None, 0), (500, None, 60), (1, None, 120), (2, None, 180)],
        4,
        0,
        1,
    ),
    (
        "a message overtaken by a later one is still out of order",
        [(5, None, 0), (7, None, 20), (6, None, 10), (8, None, 30)],
        3,
        1,
        0,
    ),
    (
        "a step back beyond the window is a restart, even at the same time",
        [(5000, "b1", 100), (3000, "b1", 100), (3001, "b1", 101)],
        3,
        0,
        1,
    ),
]


@pytest.mark.parametrize(
    ("messages", "count", "out_of_order", "restarts"),
    named(SEQ_CASES),
)
def test_seq_wraps_and_restarts_are_not_out_of_order(
    h: Harness,
    messages: list[tuple[int, str | None, float]],
    count: int,
    out_of_order: int,
    restarts: int,
) -> None:
    for i, (seq, boot_id, dt) in enumerate(messages):
        transition = "raise" if i == 0 else "update"
        extra: dict[str, Any] = {"seq": seq} | ({"boot_id": boot_id} if boot_id else {})
        h.alarm("mh-1", envelope("mh-1", f"s{i}", transition, ts=T0 + dt, **extra), T0 + 200)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create"] + ["patch"] * (count - 1)
    assert ops[-1][1]["alarm"]["count"] == count
    assert (h.core.counts.out_of_order, h.core.counts.seq_restarts) == (out_of_order, restarts)


def _earlier_state_file(outbox: Outbox, *statements: str) -> None:
    """The state file as an earlier version of the bridge left it."""
    with outbox.transaction() as txn:
        for statement in statements:
            txn.conn.execute(statement)


def test_seq_state_from_before_message_times_were_kept(site: Site, outbox: Outbox) -> None:
    """A state file written before the seq table had a time column still works."""
    _earlier_state_file(
        outbox,
        "CREATE TABLE bridge_seq (sensor_id TEXT PRIMARY KEY, boot_id TEXT,"
        " seq INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO bridge_seq VALUES ('mh-1', NULL, 500)",
    )
    h = Harness(site, outbox)
    h.alarm("mh-1", envelope("mh-1", "a", seq=499))  # no time to compare: late
    h.alarm("mh-1", envelope("mh-1", "b", seq=1, ts=T0 + 1))  # 499 back: within the window
    h.alarm("mh-1", envelope("mh-1", "c", seq=501, ts=T0 + 2))
    h.alarm("mh-1", envelope("mh-1", "d", "update", seq=1, ts=T0 + 3))  # timed later: restart
    assert [k for k, _, _ in outbox_ops(outbox)] == ["evidence", "create", "patch"]
    assert (h.core.counts.out_of_order, h.core.counts.seq_restarts) == (2, 1)


def test_a_status_table_from_before_status_packets_were_kept_gets_them(
    site: Site, outbox: Outbox
) -> None:
    """A state file whose bridge_status has no packets column: its statuses still count."""
    _earlier_state_file(
        outbox,
        "CREATE TABLE bridge_status (sensor_id TEXT PRIMARY KEY, status TEXT NOT NULL)"
        " WITHOUT ROWID",
        "INSERT INTO bridge_status VALUES ('mh-1', 'offline')",
    )
    h = Harness(site, outbox)
    h.send("gridpatrol/sensors/mh-1/status", b"offline", T0, retained=True)  # equal: nothing
    assert outbox_ops(outbox) == []
    with outbox.transaction() as txn:
        assert store.last_status(txn.conn, "mh-1") == store.StatusMark("offline", [])


def test_a_state_file_from_before_the_prune_index_gets_it_on_open(
    site: Site, outbox: Outbox
) -> None:
    with outbox.transaction() as txn:
        txn.conn.execute(
            "CREATE TABLE bridge_dedup (sensor_id TEXT NOT NULL, event_key TEXT NOT NULL,"
            " processed_at REAL NOT NULL, PRIMARY KEY (sensor_id, event_key)) WITHOUT ROWID"
        )
        txn.conn.execute("INSERT INTO bridge_dedup VALUES ('mh-1', 'e:old', ?)", (T0,))
    Bridge(site, outbox, MqttConnection("alarm_bridge", MqttSettings.from_url(BROKER)))
    with outbox.transaction() as txn:
        plan = txn.conn.execute(
            "EXPLAIN QUERY PLAN DELETE FROM bridge_dedup WHERE processed_at < ?", (T0 + 1,)
        ).fetchall()
        # A search by the index (covering or not, by SQLite version), not a scan of every key.
        assert [(row[3].split()[0], "INDEX bridge_dedup_processed" in row[3]) for row in plan] == [
            ("SEARCH", True)
        ]
        assert store.prune_dedup(txn.conn, T0 + 1) == 1


def test_threshold_readings_and_senml(h: Harness) -> None:
    for i, value in enumerate([40, 92, 95, 70, 50, 93]):
        h.alarm("bf-1", reading("bf-1", value, T0 + i))
    pack = [{"bn": "wl-1:", "bt": T0, "n": "level", "u": "cm", "v": 18.0}]
    h.alarm("wl-1", json.dumps(pack).encode())
    ops = outbox_ops(h.outbox)
    assert [(k, b["type"] if k == "create" else None) for k, _, b in ops if k != "evidence"] == [
        ("create", "bin_full"),
        ("patch", None),
        ("patch", None),  # 50 % clears (clear_hold_s 0)
        ("create", "bin_full"),
        ("create", "waterlogging"),
    ]
    creates = [b for k, _, b in ops if k == "create"]
    assert creates[0]["urgency"] == "normal" and creates[2]["urgency"] == "immediate"
    assert creates[0]["severity"] == "MAJOR"
    assert creates[1]["alarm"]["previous_alarm_id"] == creates[0]["id"]
    assert creates[2]["measurements"][0]["n"] == "wl-1:level"
    trace_evidence = [b for k, _, b in ops if k == "evidence"]
    assert trace_evidence == ["application/json"] * 3


def senml_level(value: float, **base: float) -> bytes:
    return json.dumps([{"bn": "wl-1:", **base, "n": "level", "u": "cm", "v": value}]).encode()


def test_senml_packs_without_a_time_are_a_new_reading_each_time(h: Harness) -> None:
    """A gauge sending the same bytes every minute: each pack is timed at its reception."""
    high, low = senml_level(35), senml_level(2)
    for at in (T0, T0 + 60, T0 + 120):
        h.alarm("wl-1", high, at)
    h.alarm("wl-1", low, T0 + 180)  # clears (clear_hold_s 0)
    h.alarm("wl-1", high, T0 + 240)  # raises again
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create", "patch", "patch", "patch", "create"]
    assert [b["alarm"]["count"] for _, b in ops] == [1, 2, 3, 3, 1]
    assert ops[4][1]["alarm"]["previous_alarm_id"] == ops[0][1]["id"]
    assert h.core.counts.duplicates == 0


def test_senml_pack_with_its_own_time_is_deduplicated(h: Harness) -> None:
    pack = senml_level(35, bt=T0)
    h.alarm("wl-1", pack, T0 + 1)
    h.alarm("wl-1", pack, T0 + 300)  # a redelivery, later
    assert [k for k, _, _ in outbox_ops(h.outbox) if k != "evidence"] == ["create"]
    assert h.core.counts.duplicates == 1


def smoke_pack(bt: float, *records: dict[str, object]) -> bytes:
    return json.dumps([{"bn": "sm-2:", "bt": bt, **records[0]}, *records[1:]]).encode()


BOOLEAN_CASES = [
    # (name, packs, kinds queued, measurements of the create, alarm of the last operation)
    (
        "true raises, false clears",
        [
            smoke_pack(T0, {"n": "smoke", "vb": True}),
            smoke_pack(T0 + 10, {"n": "smoke", "vb": False}),
        ],
        ["create", "patch"],
        [{"n": "sm-2:smoke", "vb": True, "t": T0}],
        {"count": 1, "last_seen": "2026-09-21T14:13:30Z", "cleared_at": "2026-09-21T14:13:30Z"},
    ),
    (
        "true again while raised is a repeat",
        [
            smoke_pack(T0, {"n": "smoke", "vb": True}),
            smoke_pack(T0 + 10, {"n": "smoke", "vb": True}),
        ],
        ["create", "patch"],
        [{"n": "sm-2:smoke", "vb": True, "t": T0}],
        {"count": 2, "last_seen": "2026-09-21T14:13:30Z"},
    ),
    (
        "false alone raises nothing",
        [smoke_pack(T0, {"n": "smoke", "vb": False})],
        [],
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("packs", "kinds", "measurements", "alarm"),
    named(BOOLEAN_CASES),
)
def test_senml_boolean_records_are_readings(
    h: Harness,
    packs: list[bytes],
    kinds: list[str],
    measurements: list[dict[str, object]] | None,
    alarm: dict[str, object] | None,
) -> None:
    for i, pack in enumerate(packs):
        h.alarm("sm-2", pack, T0 + 10 * i)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert h.dead == []
    assert [k for k, _ in ops] == kinds
    if ops:
        assert ops[0][1]["type"] == "smoke" and ops[0][1]["measurements"] == measurements
        assert {k: ops[-1][1]["alarm"][k] for k in alarm or {}} == alarm


UNITLESS_THRESHOLD_CASES = [
    # (name, pack records, records read as (name, unit, value) or the dead letter's reason)
    ("a level in cm", [{"n": "level", "u": "cm", "v": 20}], [("wl-9:level", "cm", 20.0)]),
    (
        "a level in the base unit",
        [{"bu": "cm", "n": "level", "v": 20}],
        [("wl-9:level", "cm", 20.0)],
    ),
    ("a level without a unit", [{"n": "level", "v": 20}], [("wl-9:level", None, 20.0)]),
    (
        "a level in cm beside a battery in V",
        [{"n": "level", "u": "cm", "v": 20}, {"n": "battery", "u": "V", "v": 3.6}],
        [("wl-9:level", "cm", 20.0)],
    ),
    (
        "a level in cm beside a battery level without a unit",
        [{"n": "level", "u": "cm", "v": 20}, {"n": "batteryLevel", "v": 80}],
        [("wl-9:level", "cm", 20.0)],
    ),
    (
        "a level in cm beside a radio and device temperature",
        [
            {"n": "level", "u": "cm", "v": 20},
            {"n": "rssi", "u": "dBW", "v": -90},
            {"n": "temperature", "u": "Cel", "v": 21},
        ],
        [("wl-9:level", "cm", 20.0)],
    ),
    *[
        (
            f"a level in cm beside {records[0]['n']} in {records[0]['u']}",
            [{"n": "level", "u": "cm", "v": 20}, *records],
            [("wl-9:level", "cm", 20.0)],
        )
        for records in (
            [{"n": "temp", "u": "Cel", "v": 21}],
            [{"n": "rssiDbm", "u": "dBm", "v": -90}],
            [{"n": "deviceTemperature", "u": "Cel", "v": 21}],
            # by name alone, in units that are not a device's
            [{"n": "temp", "u": "K", "v": 294}],
            [{"n": "snrDb", "u": "dB", "v": 7}],
            [{"n": "boardTemp", "u": "K", "v": 294}],
            # by a device unit alone, as another record remains
            [{"n": "supply", "u": "V", "v": 3.3}],
            [{"n": "uplink", "u": "dBm", "v": -90}],
            [{"n": "uplink", "u": "dBW", "v": -120}],
            [{"n": "enclosure", "u": "Cel", "v": 21}],
        )
    ],
    # a device unit only breaks ties: alone, or every record in one, it is read
    ("a supply in V alone", [{"n": "supply", "u": "V", "v": 3.3}], [("wl-9:supply", "V", 3.3)]),
    (
        "a supply in V and an uplink in dBm",
        [{"n": "supply", "u": "V", "v": 3.3}, {"n": "uplink", "u": "dBm", "v": -90}],
        "no_reading",
    ),
    ("a battery in %EL alone", [{"n": "battery", "u": "%EL", "v": 80}], "no_reading"),
    ("a battery in V alone", [{"n": "battery_voltage", "u": "V", "v": 3.6}], "no_reading"),
    ("a charge in %EL alone", [{"n": "charge", "u": "%EL", "v": 80}], "no_reading"),
    ("a battery without a unit alone", [{"n": "vbat", "v": 3.6}], "no_reading"),
    (
        "records in two units",
        [{"n": "level", "u": "cm", "v": 20}, {"n": "depth", "u": "m", "v": 0.2}],
        "no_reading",
    ),
]


def adapt_pack(
    records: list[dict[str, object]], unit: str | None
) -> list[tuple[str, str | None, float]] | str:
    """A pack for wl-9 judged with thresholds in ``unit``: the records read as (name, unit,
    value), or the dead letter's reason."""
    thresholds: dict[str, object] = {"raise": 15, "clear": 5}
    if unit is not None:
        thresholds["unit"] = unit
    sensor = Sensor.model_validate(
        {
            "id": "wl-9",
            "kind": "waterlogging",
            "location": {"lat": 31.0, "lon": 121.0},
            "thresholds": thresholds,
        }
    )
    pack = [{"bn": "wl-9:", "bt": T0, **records[0]}, *records[1:]]
    adapted = adapt(
        json.dumps(pack).encode(),
        sensor_id="wl-9",
        registry={"wl-9": sensor},
        received_at=datetime.fromtimestamp(T0, tz=UTC),
    )
    if isinstance(adapted, Rejected):
        assert adapted.heard
        return adapted.reason
    assert isinstance(adapted, Adapted)
    read = [(m.n, m.u, m.v) for item in adapted.inputs for m in item.measurements]
    units = {u for _, u, _ in read}
    expected_assumed = None if unit is not None or units == {None} else units.pop()
    assert adapted.assumed_unit == expected_assumed
    return read


@pytest.mark.parametrize(("records", "expected"), named(UNITLESS_THRESHOLD_CASES))
def test_thresholds_without_a_unit_read_the_one_unit_of_a_pack_never_a_battery(
    records: list[dict[str, object]], expected: list[tuple[str, str | None, float]] | str
) -> None:
    """Thresholds without a unit (it is optional) read a pack's records without one, else
    those in the one unit its measurements share; battery, radio and device temperature
    records never (a battery level once raised an urgent smoke alarm), and records in a
    device unit (V, dBm, dBW, Cel) only when no other remains."""
    assert adapt_pack(records, None) == expected


UNIT_THRESHOLD_CASES = [
    # (name, thresholds' unit, pack records, records read or the dead letter's reason)
    (
        # samples/site.yaml's bf-0001: the battery beside the fill used to be read too, so a
        # full bin never raised
        "a fill in % beside a battery in %",
        "%",
        [{"n": "fill", "u": "%", "v": 95}, {"n": "battery", "u": "%", "v": 40}],
        [("wl-9:fill", "%", 95.0)],
    ),
    (
        "a fill in % beside a batteryLevel and a temp in %",
        "%",
        [
            {"n": "fill", "u": "%", "v": 95},
            {"n": "batteryLevel", "u": "%", "v": 40},
            {"n": "temp", "u": "%", "v": 21},
        ],
        [("wl-9:fill", "%", 95.0)],
    ),
    (
        "a fill in % beside a battery in %EL",
        "%",
        [{"n": "fill", "u": "%", "v": 95}, {"n": "battery", "u": "%EL", "v": 40}],
        [("wl-9:fill", "%", 95.0)],
    ),
    # a sensor that measures what is housekeeping elsewhere, in a pack without units
    (
        "a temperature alone in no unit",
        "Cel",
        [{"n": "temperature", "v": 80}],
        [("wl-9:temperature", None, 80.0)],
    ),
    (
        "a voltage alone in no unit",
        "V",
        [{"n": "voltage", "v": 231}],
        [("wl-9:voltage", None, 231.0)],
    ),
    (
        "a level beside a battery in no unit",
        "cm",
        [{"n": "level", "v": 20}, {"n": "battery", "v": 80}],
        [("wl-9:level", None, 20.0)],
    ),
    (
        "a temperature in Cel beside a battery in %EL",
        "Cel",
        [{"n": "temperature", "u": "Cel", "v": 80}, {"n": "battery", "u": "%EL", "v": 40}],
        [("wl-9:temperature", "Cel", 80.0)],
    ),
    # a measurement without a unit beside housekeeping records with one (a simple device):
    # read, it used to be a no_reading dead letter as soon as any record had a unit
    (
        "a fill without a unit beside a battery in %EL",
        "%",
        [{"n": "fill", "v": 95}, {"n": "battery", "u": "%EL", "v": 40}],
        [("wl-9:fill", None, 95.0)],
    ),
    (
        "a fill without a unit beside a battery in %",
        "%",
        [{"n": "fill", "v": 95}, {"n": "battery", "u": "%", "v": 40}],
        [("wl-9:fill", None, 95.0)],
    ),
    (
        "a smoke boolean without a unit beside a battery in %EL",
        "%obs/m",
        [{"n": "smoke", "vb": True}, {"n": "battery", "u": "%EL", "v": 80}],
        [("wl-9:smoke", None, None)],
    ),
    (
        "a level without a unit beside an rssi in dBm and an uplink in dBW",
        "cm",
        [
            {"n": "level", "v": 20},
            {"n": "rssi", "u": "dBm", "v": -90},
            {"n": "uplink", "u": "dBW", "v": -120},
        ],
        [("wl-9:level", None, 20.0)],
    ),
    (
        "a level without a unit beside a depth in m",
        "cm",
        [{"n": "level", "v": 20}, {"n": "depth", "u": "m", "v": 0.2}],
        "no_reading",
    ),
    (
        "a temperature in Cel beside a humidity without a unit",
        "Cel",
        [{"n": "temperature", "u": "Cel", "v": 80}, {"n": "humidity", "v": 40}],
        [("wl-9:temperature", "Cel", 80.0)],
    ),
    ("a battery in %EL alone", "cm", [{"n": "battery", "u": "%EL", "v": 80}], "no_reading"),
    # a battery is no measurement of a sensor judged in another unit, also alone in its unit
    ("a battery alone in %, judged in %", "%", [{"n": "battery", "u": "%", "v": 95}], "no_reading"),
    ("a battery alone in no unit", "cm", [{"n": "battery", "v": 80}], "no_reading"),
    (
        "a battery beside an rssi in no unit (a heartbeat)",
        "%",
        [{"n": "battery", "v": 80}, {"n": "rssi", "v": -70}],
        "no_reading",
    ),
    ("a vbat alone in V, judged in V", "V", [{"n": "vbat", "u": "V", "v": 3.6}], "no_reading"),
    (
        "a voltage alone in V, judged in V",
        "V",
        [{"n": "voltage", "u": "V", "v": 231}],
        [("wl-9:voltage", "V", 231.0)],
    ),
    (
        "a battery in %EL alone, judged in %EL",
        "%EL",
        [{"n": "battery", "u": "%EL", "v": 8}],
        [("wl-9:battery", "%EL", 8.0)],
    ),
    # a thermometer or a voltmeter whose firmware adds its battery, no unit anywhere: the
    # battery left out, what the unit measures is read, not a heartbeat's other records
    (
        "a temperature beside a battery in no unit",
        "Cel",
        [{"n": "temperature", "v": 9}, {"n": "battery", "v": 80}],
        [("wl-9:temperature", None, 9.0)],
    ),
    (
        "a temperature beside a battery and an rssi in no unit",
        "Cel",
        [{"n": "temperature", "v": 9}, {"n": "battery", "v": 80}, {"n": "rssi", "v": -70}],
        [("wl-9:temperature", None, 9.0)],
    ),
    (
        "a voltage beside a battery in no unit",
        "V",
        [{"n": "voltage", "v": 240}, {"n": "battery", "v": 80}],
        [("wl-9:voltage", None, 240.0)],
    ),
    (
        "an rssi and a temperature in no unit, judged in %",
        "%",
        [{"n": "rssi", "v": -70}, {"n": "temperature", "v": 21}],
        "no_reading",
    ),
    ("an rssi alone in no unit, judged in %", "%", [{"n": "rssi", "v": -70}], "no_reading"),
    ("a temperature alone in no unit, judged in cm", "cm", [{"n": "temp", "v": 21}], "no_reading"),
]


@pytest.mark.parametrize(("unit", "records", "expected"), named(UNIT_THRESHOLD_CASES))
def test_thresholds_with_a_unit_read_housekeeping_records_only_when_nothing_else_remains(
    unit: str, records: list[dict[str, object]], expected: list[tuple[str, str | None, float]] | str
) -> None:
    """Thresholds with a unit read the records in it, else those without a unit when no other
    record has one but housekeeping records and those in a device unit; of those, a battery,
    radio or device temperature record only when no other remains."""
    assert adapt_pack(records, unit) == expected


def test_smoke_judged_without_a_unit_reads_its_smoke_record_in_a_unit_and_says_so_once(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """sm-2's thresholds have no unit; its packs give the smoke density in %obs/m: they are
    read (they used to be no_reading dead letters, and sm-2 never raised), the battery beside
    them or alone never, and the unit not configured is logged once."""
    smoke = {"n": "smoke", "u": "%obs/m", "v": 2.5}
    with caplog.at_level(logging.WARNING, logger="gridpatrol.alarm_bridge.worker"):
        h.alarm("sm-2", smoke_pack(T0, smoke, {"n": "battery", "u": "%EL", "v": 80}), T0)
        h.alarm("sm-2", smoke_pack(T0 + 10, {**smoke, "v": 0}, {"n": "battery", "u": "V", "v": 3}))
        h.alarm("sm-2", smoke_pack(T0 + 20, {"n": "battery", "u": "%EL", "v": 80}), T0 + 20)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [k for k, _ in ops] == ["create", "patch"]
    assert ops[0][1]["type"] == "smoke"
    assert ops[0][1]["measurements"] == [{"n": "sm-2:smoke", "u": "%obs/m", "v": 2.5, "t": T0}]
    assert ops[1][1]["alarm"]["cleared_at"] == "2026-09-21T14:13:30Z"
    assert h.dead == ["no_reading"]
    assert [r.getMessage() for r in caplog.records] == [
        "sensor sm-2: thresholds without a unit, SenML readings in '%obs/m' read as its"
        " measurement; set unit: '%obs/m' in its thresholds",
        "dead letter from gridpatrol/sensors/sm-2/alarm: no_reading no numeric or boolean"
        " SenML measurement without a unit or in one unit (the sensor's thresholds have none)",
    ]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # A battery record without a unit beside the level is not a level reading: the flood
        # stays raised (it used to be read as 3.6 cm and cleared at once).
        ([{"n": "level", "u": "cm", "v": 20.0}, {"n": "battery", "v": 3.6}], ["create"]),
        ([{"n": "level", "u": "cm", "v": 20.0}, {"n": "battery", "u": "V", "v": 3.6}], ["create"]),
        # Nor is a battery in %EL beside a level without a unit: the level is read (the pack
        # used to be a no_reading dead letter).
        ([{"n": "level", "v": 20.0}, {"n": "battery", "u": "%EL", "v": 80}], ["create"]),
        # A device that sends no units at all is read in the sensor's unit.
        ([{"n": "level", "v": 20.0}, {"n": "level", "t": 1, "v": 3.0}], ["create", "patch"]),
    ],
)
def test_senml_records_outside_the_sensor_unit_are_not_judged(
    h: Harness, records: list[dict[str, object]], expected: list[str]
) -> None:
    pack = [{"bn": "wl-1:", "bt": T0, **records[0]}, *records[1:]]
    h.alarm("wl-1", json.dumps(pack).encode())
    assert [k for k, _, _ in outbox_ops(h.outbox) if k != "evidence"] == expected
    assert h.dead == []


@pytest.mark.parametrize(
    "records",
    [
        [{"n": "battery", "u": "%", "v": 80}, {"n": "rssi", "v": -70}],
        [{"n": "battery", "u": "%EL", "v": 80}, {"n": "temperature", "v": 25}],
        # without any unit: the rssi, left alone once the battery is, used to be read
        [{"n": "battery", "v": 80}, {"n": "rssi", "v": -70}],
        [{"n": "rssi", "v": -70}, {"n": "temperature", "v": 21}],
        [{"n": "rssi", "v": -70}],
    ],
)
def test_a_heartbeat_pack_of_housekeeping_records_does_not_clear_the_fill(
    h: Harness, records: list[dict[str, object]]
) -> None:
    """bf-1 (judged in %) is full; then its heartbeat: a battery and an rssi or temperature
    without a unit. Neither is a fill: the bin stays full and the pack reads
    nothing. The unitless housekeeping record used to be read as the fill and clear it."""
    h.alarm("bf-1", fill_pack((T0, 95)), T0)
    heartbeat = [{"bn": "bf-1:", "bt": T0 + 60, **records[0]}, *records[1:]]
    h.alarm("bf-1", json.dumps(heartbeat).encode(), T0 + 60)
    assert [k for k, _, _ in outbox_ops(h.outbox) if k != "evidence"] == ["create"]
    assert (h.core.counts.cleared, h.dead) == (0, ["no_reading"])


SEVERAL_NAMES_CASES = [
    # (name, sensor, pack records, records read as (name, unit, value) or the dead letter's)
    (
        "an ultrasonic bin's fill beside its distance",
        "bf-1",
        [{"n": "fill", "v": 95}, {"n": "distance", "v": 12}],
        [("bf-1:fill", None, 95.0)],
    ),
    (
        "an ultrasonic bin's distance before its fill",
        "bf-1",
        [{"n": "distance", "v": 12}, {"n": "fillLevel", "v": 95}],
        [("bf-1:fillLevel", None, 95.0)],
    ),
    (
        "a smoke boolean beside a co reading",
        "sm-2",
        [{"n": "smoke", "vb": True}, {"n": "co", "v": 0}],
        [("sm-2:smoke", None, None)],
    ),
    (
        "a tilt beside an acceleration, judged in deg",
        "mh-1",
        [{"n": "tilt", "v": 20}, {"n": "acceleration", "v": 0.1}],
        [("mh-1:tilt", None, 20.0)],
    ),
    (
        "a water level beside a distance, both in the sensor's unit",
        "wl-1",
        [{"n": "distance", "u": "cm", "v": 180}, {"n": "water_level", "u": "cm", "v": 20}],
        [("wl-1:water_level", "cm", 20.0)],
    ),
    (
        "a flushed buffer of levels beside a distance",
        "wl-1",
        [{"n": "level", "v": 20}, {"n": "level", "t": 60, "v": 3}, {"n": "distance", "v": 200}],
        [("wl-1:level", None, 20.0), ("wl-1:level", None, 3.0)],
    ),
    (
        "two records, neither naming a bin's fill",
        "bf-1",
        [{"n": "distance", "v": 12}, {"n": "angle", "v": 3}],
        "no_reading",
    ),
    (
        "two records both naming a bin's fill",
        "bf-1",
        [{"n": "fill", "v": 95}, {"n": "level", "v": 12}],
        "no_reading",
    ),
    (
        "a noise meter's LAeq beside its LAmax, by the whole name",
        "ns-1",
        [{"n": "LAeq", "u": "dB", "v": 72.5}, {"n": "LAmax", "u": "dB", "v": 88}],
        [("ns-1:LAeq", "dB", 72.5)],
    ),
    (
        "a gauge's level beside its level_avg: the name saying only the level",
        "wl-1",
        [{"n": "level_avg", "u": "cm", "v": 12}, {"n": "level", "u": "cm", "v": 20}],
        [("wl-1:level", "cm", 20.0)],
    ),
    (
        "a water_level beside a level_max",
        "wl-1",
        [{"n": "waterLevel", "v": 20}, {"n": "level_max", "v": 40}],
        [("wl-1:waterLevel", None, 20.0)],
    ),
    (
        "two names both saying more than the level",
        "wl-1",
        [{"n": "level_avg", "v": 12}, {"n": "level_max", "v": 40}],
        "no_reading",
    ),
    (
        "an LwM2M distance object's value beside its minimum and maximum measured",
        "wl-1",
        [
            {"n": "/3330/0/5601", "u": "cm", "v": 3},
            {"n": "/3330/0/5700", "u": "cm", "v": 20},
            {"n": "/3330/0/5602", "u": "cm", "v": 40},
        ],
        [("wl-1:/3330/0/5700", "cm", 20.0)],
    ),
    (
        "two LwM2M Sensor Values",
        "wl-1",
        [{"n": "/3330/0/5700", "u": "cm", "v": 20}, {"n": "/3330/1/5700", "u": "cm", "v": 3}],
        "no_reading",
    ),
]


NOISE_SENSOR_YAML = """  - id: ns-1
    kind: noise
    location: {grid_code: JA-DN-0301}
    thresholds: {raise: 70, clear: 60, unit: dB}
  - id: noise-3
    kind: noise
    location: {grid_code: JA-DN-0302}
    thresholds: {raise: 70, clear: 60, unit: dB}
"""


@pytest.fixture
def noisy_site() -> Site:
    """The test site and two noise meters, ns-1 and noise-3, judged in dB."""
    return parse_site(SITE_YAML.replace("PREFIX", "gridpatrol") + NOISE_SENSOR_YAML, "s")


@pytest.mark.parametrize(("sensor", "records", "expected"), named(SEVERAL_NAMES_CASES))
def test_a_pack_of_several_measurements_reads_the_one_the_sensor_kind_names(
    noisy_site: Site,
    sensor: str,
    records: list[dict[str, object]],
    expected: list[tuple[str, str | None, float | None]] | str,
) -> None:
    """Records of several names left to read, at the pack's one time, would raise and clear
    at once: only those of the one name saying what the kind measures are read, else none."""
    pack = [{"bn": f"{sensor}:", "bt": T0, **records[0]}, *records[1:]]
    adapted = adapt(
        json.dumps(pack).encode(),
        sensor_id=sensor,
        registry={s.id: s for s in noisy_site.sensors},
        received_at=datetime.fromtimestamp(T0 + 60, tz=UTC),
    )
    if isinstance(adapted, Rejected):
        assert adapted.heard
        assert adapted.reason == expected
        return
    read = [(m.n, m.u, m.v) for item in adapted.inputs for m in item.measurements]
    assert read == expected


SEVERAL_NAMES_DETAILS = [
    # (name, pack records, the no_reading dead letter's detail)
    (
        "neither names a bin's fill",
        [{"n": "distance", "v": 12}, {"n": "angle", "v": 3}],
        "SenML measurements of several names (bf-1:angle, bf-1:distance): none says what a"
        " bin_fill sensor measures (fill, level), nor is one an LwM2M Sensor Value (5700)",
    ),
    (
        "both name a bin's fill",
        [{"n": "fill", "v": 95}, {"n": "level", "v": 12}, {"n": "fill_max", "v": 99}],
        "SenML measurements of several names (bf-1:fill, bf-1:fill_max, bf-1:level):"
        " bf-1:fill, bf-1:level all say what a bin_fill sensor measures (fill, level)",
    ),
    (
        "both say more than a bin's fill",
        [{"n": "fill_avg", "v": 95}, {"n": "fill_max", "v": 99}],
        "SenML measurements of several names (bf-1:fill_avg, bf-1:fill_max):"
        " bf-1:fill_avg, bf-1:fill_max all say what a bin_fill sensor measures (fill, level)",
    ),
    (
        "two LwM2M Sensor Values",
        [{"n": "/3330/0/5700", "v": 95}, {"n": "/3330/1/5700", "v": 12}],
        "SenML measurements of several names (bf-1:/3330/0/5700, bf-1:/3330/1/5700): none says"
        " what a bin_fill sensor measures (fill, level), and several are LwM2M Sensor Values"
        " (bf-1:/3330/0/5700, bf-1:/3330/1/5700)",
    ),
]


@pytest.mark.parametrize(("records", "detail"), named(SEVERAL_NAMES_DETAILS))
def test_a_pack_of_several_measurements_read_as_none_says_why(
    site: Site, records: list[dict[str, object]], detail: str
) -> None:
    pack = [{"bn": "bf-1:", **records[0]}, *records[1:]]
    adapted = adapt(
        json.dumps(pack).encode(),
        sensor_id="bf-1",
        registry={s.id: s for s in site.sensors},
        received_at=datetime.fromtimestamp(T0, tz=UTC),
    )
    assert adapted == Rejected("no_reading", detail, heard=True)


URN = "urn:dev:ow:10e2073a01080063;"
BASE_NAME_CASES = [
    # (name, sensor, pack, records read as (name, unit, value))
    (
        "a noise meter's base name ending in ;",
        "ns-1",
        [{"bn": "ns-1;", "n": "LAeq", "u": "dB", "v": 72.5}, {"n": "LAmax", "u": "dB", "v": 88}],
        [("ns-1;LAeq", "dB", 72.5)],
    ),
    (
        "a gauge's base name ending in .",
        "wl-1",
        [{"bn": "wl-1.", "n": "level", "u": "cm", "v": 20}, {"n": "level_avg", "u": "cm", "v": 12}],
        [("wl-1.level", "cm", 20.0)],
    ),
    (
        "a bin's URN base name ending in ;",
        "bf-1",
        [{"bn": URN, "n": "fill", "v": 95}, {"n": "fill_raw", "v": 97}],
        [(f"{URN}fill", None, 95.0)],
    ),
    (
        "a sensor id with a word of what its kind measures",
        "noise-3",
        [{"bn": "noise-3;", "n": "LAmax", "u": "dB", "v": 88}, {"n": "LAeq", "u": "dB", "v": 72}],
        [("noise-3;LAeq", "dB", 72.0)],
    ),
    # The same packs resolved (RFC 8428 section 4.6: no bn, the base folded into each n, as
    # a gateway sends them): read as with the base name.
    (
        "a noise meter's resolved names after ;",
        "ns-1",
        [{"n": "ns-1;LAeq", "u": "dB", "v": 72.5}, {"n": "ns-1;LAmax", "u": "dB", "v": 88}],
        [("ns-1;LAeq", "dB", 72.5)],
    ),
    (
        "a gauge's resolved names after .",
        "wl-1",
        [{"n": "wl-1.level", "u": "cm", "v": 20}, {"n": "wl-1.level_avg", "u": "cm", "v": 12}],
        [("wl-1.level", "cm", 20.0)],
    ),
    (
        "a bin's resolved names after its URN and ;",
        "bf-1",
        [{"n": f"{URN}fill", "v": 95}, {"n": f"{URN}fill_raw", "v": 97}],
        [(f"{URN}fill", None, 95.0)],
    ),
    (
        "a sensor id with a word of what its kind measures, resolved",
        "noise-3",
        [{"n": "noise-3;LAmax", "u": "dB", "v": 88}, {"n": "noise-3;LAeq", "u": "dB", "v": 72}],
        [("noise-3;LAeq", "dB", 72.0)],
    ),
]


@pytest.mark.parametrize(("sensor", "pack", "expected"), named(BASE_NAME_CASES))
def test_a_record_name_is_judged_without_its_base_name(
    noisy_site: Site,
    sensor: str,
    pack: list[dict[str, object]],
    expected: list[tuple[str, str | None, float | None]],
) -> None:
    """The base name, however it ends, is no part of what a record's name says: the sensor's
    id in it named neither the measurement (the whole name LAeq, the word fill alone) nor
    every record (noise-3)."""
    adapted = adapt(
        json.dumps(pack).encode(),
        sensor_id=sensor,
        registry={s.id: s for s in noisy_site.sensors},
        received_at=datetime.fromtimestamp(T0, tz=UTC),
    )
    assert isinstance(adapted, Adapted), adapted
    assert [(m.n, m.u, m.v) for item in adapted.inputs for m in item.measurements] == expected


@pytest.mark.parametrize(
    ("topic", "name"), [("ns-1", "noise-3;LAeq"), ("noise-3", "ns-1:LAeq"), ("ns-1", "ns-1;LAeq")]
)
def test_a_resolved_pack_naming_another_sensor_is_refused_as_with_its_bn(
    noisy_site: Site, topic: str, name: str
) -> None:
    """Resolved names carry the base name a pack with ``bn`` would: another sensor's id there
    is refused as the decoder refuses that ``bn``, where its reading went to the topic's
    sensor (a gateway sending one sensor's pack on another's topic)."""
    adapted = adapt(
        json.dumps([{"n": name, "u": "dB", "v": 85}]).encode(),
        sensor_id=topic,
        registry={s.id: s for s in noisy_site.sensors},
        received_at=datetime.fromtimestamp(T0, tz=UTC),
    )
    if name.startswith(topic):
        assert isinstance(adapted, Adapted), adapted
    else:
        expected = Rejected("sensor_id_mismatch", f"n {name!r} on {topic!r}")
        assert adapted == expected


@pytest.mark.parametrize(
    "pack",
    [
        [{"n": "mh-1:tilt", "u": "deg", "v": 40}],
        [{"bn": "mh-1:", "n": "tilt", "u": "deg", "v": 40}],
        [{"bn": "mh-1:probe:", "n": "tilt", "u": "deg", "v": 40}],
        [{"bn": "", "n": "mh-1:probe:tilt", "u": "deg", "v": 40}],
    ],
    ids=["resolved", "with bn", "with a bn of two levels", "resolved, two levels"],
)
def test_another_sensors_pack_on_a_topic_is_no_sign_of_its_sensors_life(
    h: Harness, pack: list[dict[str, Any]]
) -> None:
    """A gateway sends mh-1's pack on wl-1's topic after wl-1's last will: refused as
    sensor_id_mismatch in both forms, and wl-1 is still offline. In resolved form (no bn) it
    counted as wl-1 heard: its device_offline cleared, its silence restarted, while with the
    bn it did not."""
    h.send("gridpatrol/sensors/wl-1/status", b"offline", T0)
    h.send("gridpatrol/sensors/wl-1/alarm", json.dumps(pack).encode(), T0 + 60)
    assert h.dead == ["sensor_id_mismatch"]
    ops = outbox_ops(h.outbox)
    assert [kind for kind, _, _ in ops] == ["evidence", "create"]  # no clear patch
    assert ops[1][2]["type"] == "device_offline"
    with h.outbox.transaction() as txn:
        assert store.load_state(txn.conn, "wl-1", "device_offline").active
        assert "wl-1" not in store.last_heard(txn.conn)


@pytest.mark.parametrize("base", ["sm-1:", "sm-1:det:", "sm-1/det;", "sm-1.det:"])
def test_another_sensors_reading_with_a_base_name_raises_nothing_on_the_topics_sensor(
    h: Harness, base: str
) -> None:
    """sm-1's smoke reading sent on sm-2's topic (a gateway mixing its sensors up): a bn of
    more than the id and its separator (``sm-1:det:``) passed the decoder's check of the
    bn, which looks at the whole bn only, and raised a smoke alarm on sm-2."""
    pack = [{"bn": base, "n": "smoke", "v": 1}]
    h.send("gridpatrol/sensors/sm-2/alarm", json.dumps(pack).encode(), T0)
    assert h.dead == ["sensor_id_mismatch"]
    assert outbox_ops(h.outbox) == []
    with h.outbox.transaction() as txn:
        assert "sm-2" not in store.last_heard(txn.conn)


def test_a_record_named_by_its_base_name_alone_is_judged_by_it(site: Site) -> None:
    """Without ``n`` the base name is the record's whole name: a bin's battery named so, in
    %, is no fill."""
    adapted = adapt(
        json.dumps([{"bn": "bf-1:battery", "u": "%", "v": 80}]).encode(),
        sensor_id="bf-1",
        registry={s.id: s for s in site.sensors},
        received_at=datetime.fromtimestamp(T0, tz=UTC),
    )
    assert isinstance(adapted, Rejected) and adapted.reason == "no_reading"


def test_a_noise_meter_sending_laeq_and_lamax_raises_and_clears_on_laeq(
    noisy_site: Site, outbox: Outbox
) -> None:
    """LAeq, whose words (l, aeq) name nothing, is what a noise sensor measures by its whole
    name: the meter's packs raise and clear on it, never on the LAmax beside it."""
    h = Harness(noisy_site, outbox)
    for at, laeq, lamax in ((T0, 75.5, 92), (T0 + 60, 55, 80)):
        records = [{"bn": "ns-1:", "n": "LAeq", "u": "dB", "v": laeq}]
        h.alarm("ns-1", json.dumps([*records, {"n": "LAmax", "u": "dB", "v": lamax}]).encode(), at)
    creates = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert [b["measurements"] for b in creates] == [
        [{"n": "ns-1:LAeq", "u": "dB", "v": 75.5, "t": T0}]
    ]
    counts = h.core.counts
    assert (counts.created, counts.cleared, h.dead) == (1, 1, [])


@pytest.mark.parametrize(
    ("sensor", "records"),
    [
        ("bf-1", [{"n": "fill", "v": 95}, {"n": "distance", "v": 12}]),
        ("sm-2", [{"n": "smoke", "vb": True}, {"n": "co", "v": 0}]),
    ],
)
def test_packs_of_a_measurement_beside_another_raise_once_and_never_clear(
    h: Harness, sensor: str, records: list[dict[str, object]]
) -> None:
    """Three such packs (timed at reception): one candidate, repeated. Read as the
    measurement too, the second record cleared it at the same instant, and each pack raised
    a new candidate."""
    pack = json.dumps([{"bn": f"{sensor}:", **records[0]}, *records[1:]]).encode()
    for at in (T0, T0 + 60, T0 + 120):
        h.alarm(sensor, pack, at)
    counts = h.core.counts
    assert (counts.created, counts.updated, counts.cleared) == (1, 2, 0)
    assert h.dead == []


def test_offline_by_last_will_and_back(h: Harness) -> None:
    h.send("gridpatrol/sensors/mh-1/status", b"offline", T0)
    h.send("gridpatrol/sensors/mh-1/status", b"offline", T0 + 5)  # retained again: no new alarm
    h.alarm("mh-1", reading("mh-1", 1.0, T0 + 10), T0 + 10)  # any message clears it
    ops = outbox_ops(h.outbox)
    assert [k for k, _, _ in ops] == ["evidence", "create", "patch"]
    assert ops[1][2]["type"] == "device_offline"
    assert ops[1][2]["urgency"] == "normal"
    assert ops[2][1] == ops[1][1]
    assert h.core.counts.cleared == 1


def test_retained_last_will_replayed_after_readings_cleared_it(site: Site, outbox: Outbox) -> None:
    """The sensor came back without saying ``online``: its retained last will stays, and the
    broker sends it again on every resubscription, also to a restarted bridge."""
    h = Harness(site, outbox)
    status = "gridpatrol/sensors/mh-1/status"
    h.send(status, b"offline", T0, retained=True)  # first seen: raises
    h.alarm("mh-1", reading("mh-1", 1.0, T0 + 10), T0 + 10)  # clears
    h.send(status, b"offline", T0 + 60, retained=True)  # a broker blip
    restarted = Harness(site, outbox)
    restarted.send(status, b"offline", T0 + 120, retained=True)
    assert [k for k, _, _ in outbox_ops(outbox)] == ["evidence", "create", "patch"]
    restarted.send(status, b"offline", T0 + 180)  # a new last will: a new alarm
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [b["type"] for b in creates] == ["device_offline", "device_offline"]


def test_stale_retained_online_does_not_clear_silence(h: Harness) -> None:
    """A sensor died without a last will: its old retained ``online`` is replayed on every
    reconnection, and is neither a sign of life nor a clear."""
    status = "gridpatrol/sensors/wl-1/status"
    h.silence(T0)
    h.send(status, b"online", T0)
    h.silence(T0 + 3 * 300 + 1)  # silent: raised
    h.send(status, b"online", T0 + 1000, retained=True)  # the reconnection's replay
    h.silence(T0 + 1001)
    assert [k for k, _, _ in outbox_ops(h.outbox)] == ["evidence", "create"]
    h.send(status, b"online", T0 + 1100)  # the sensor is back: clears
    assert [k for k, _, _ in outbox_ops(h.outbox)] == ["evidence", "create", "patch"]
    with h.outbox.transaction() as txn:
        assert store.last_heard(txn.conn)["wl-1"] == T0 + 1100


def test_offline_by_silence(h: Harness) -> None:
    h.silence(T0)  # the bridge starts: silence is measured from now
    h.alarm("wl-1", reading("wl-1", 1.0, T0), T0 + 100)
    h.silence(T0 + 3 * 300 + 50)  # wl-1 heard at T0+100: not silent yet; mh-1: not yet
    assert outbox_ops(h.outbox) == []
    h.silence(T0 + 3 * 300 + 101)
    h.silence(T0 + 3 * 300 + 200)  # still silent: no second alarm
    creates = [(c, b) for k, c, b in outbox_ops(h.outbox) if k == "create"]
    assert [(b["type"], b["source"]["sensor_id"]) for _, b in creates] == [
        ("device_offline", "wl-1")
    ]
    h.send("gridpatrol/sensors/wl-1/status", b"online", T0 + 1000)
    assert [k for k, _, _ in outbox_ops(h.outbox)][-1] == "patch"
    h.silence(T0 + 3 * 600 + 1)
    creates = [b for k, _, b in outbox_ops(h.outbox) if k == "create"]
    assert [b["source"]["sensor_id"] for b in creates] == ["wl-1", "mh-1"]


def test_a_silence_check_with_a_sensor_offline_writes_nothing(h: Harness) -> None:
    """Checked every second: a sensor already offline is looked at, not written back, so an
    idle bridge with a dead sensor commits nothing (no sync) at each check."""
    h.silence(T0)
    h.silence(T0 + 3 * 300 + 1)  # wl-1 silent: raised (and the connection history written)
    assert [b["type"] for k, _, b in outbox_ops(h.outbox) if k == "create"] == ["device_offline"]
    conn = h.outbox._thread_conn()
    changes = conn.total_changes
    h.silence(T0 + 3 * 300 + 2)  # wl-1 still offline, its history written a second ago
    assert conn.total_changes == changes


def test_silence_does_not_count_an_outage_of_the_broker(site: Site, outbox: Outbox) -> None:
    """While cut off, and while the messages the persistent session queued meanwhile arrive
    (the first SETTLE_S of the new connection), nobody is silent; before, they were."""
    h = Harness(site, outbox, settle_s=SETTLE_S)
    h.silence(T0)  # the bridge starts: listening from T0 + 60
    h.alarm("wl-1", reading("wl-1", 1.0, T0 + 60), T0 + 60)
    h.silence(T0 + 600)  # 540 s of wl-1's 900
    outage_over = T0 + 2100  # 25 min without the broker, noticed at the next look
    h.silence(outage_over, connects=2)
    h.silence(outage_over + SETTLE_S + 360, connects=2)  # 540 + 360 = 900: not yet
    assert outbox_ops(outbox) == []
    h.silence(outage_over + SETTLE_S + 361, connects=2)
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates] == [
        ("wl-1", "2026-09-21T14:55:21Z")  # T0 + 2100 + 60 + 361
    ]


def test_silence_does_not_count_the_bridges_own_downtime(site: Site, outbox: Outbox) -> None:
    """Nor does a restart restart it: the 540 s listened before the restart still count."""
    before = Harness(site, outbox, settle_s=SETTLE_S)
    before.silence(T0)
    for sensor in ("wl-1", "mh-1"):
        before.alarm(sensor, reading(sensor, 1.0, T0), T0)
    before.silence(T0 + 600)  # listening from T0 + 60: 540 s
    restarted = Harness(site, outbox, settle_s=SETTLE_S)  # the bridge back after an hour down
    back = T0 + 3600
    restarted.silence(back)
    restarted.silence(back + SETTLE_S + 360)  # 540 + 360 = 900 s: wl-1 not yet silent
    assert outbox_ops(outbox) == []
    restarted.silence(back + SETTLE_S + 361)
    restarted.silence(back + SETTLE_S + 1260)  # 1800 s: mh-1 not yet
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates] == [
        ("wl-1", "2026-09-21T15:20:21Z")  # back + 60 + 361
    ]
    restarted.silence(back + SETTLE_S + 1261)
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates] == [
        ("wl-1", "2026-09-21T15:20:21Z"),
        ("mh-1", "2026-09-21T15:35:21Z"),  # back + 60 + 1261
    ]


def test_a_sensor_put_back_in_the_site_file_is_silent_from_its_return(
    site: Site, outbox: Outbox
) -> None:
    """wl-1 (300 s) heard, then out of the site file for a day, then back: its absence is not
    silence (it raised device_offline at the first check of the run it came back in)."""
    start, end = SITE_YAML.index("  - id: wl-1"), SITE_YAML.index("  - id: sm-1")
    without = parse_site((SITE_YAML[:start] + SITE_YAML[end:]).replace("PREFIX", "gridpatrol"), "s")
    h = Harness(site, outbox, settle_s=SETTLE_S)
    h.silence(T0)
    h.alarm("wl-1", reading("wl-1", 1.0, T0 + 70), T0 + 70)
    h.silence(T0 + 120)
    h = Harness(without, outbox, settle_s=SETTLE_S)
    for i in range(288):  # a day, mh-1 heard every 5 minutes
        h.silence(T0 + 200 + 300 * i)
        h.alarm("mh-1", reading("mh-1", 1.0, T0 + 200 + 300 * i), T0 + 200 + 300 * i)
    back = T0 + 200 + 86400
    h = Harness(site, outbox, settle_s=SETTLE_S)
    for at in (back, back + 1, back + 960):  # 900 s listened after the first minute settling
        h.silence(at)
    assert _offline_creates(outbox) == []
    h.silence(back + 961)
    assert _offline_creates(outbox) == [("wl-1", "2026-09-22T14:32:41Z")]  # back + 961
    with outbox.transaction() as txn:
        assert sorted(store.last_heard(txn.conn)) == ["mh-1"]
        assert sorted(store.watched(txn.conn)) == ["mh-1", "wl-1"]


def _offline_creates(box: Outbox) -> list[tuple[str, str]]:
    return [
        (b["source"]["sensor_id"], b["occurred_at"])
        for k, _, b in outbox_ops(box)
        if k == "create" and b["type"] == "device_offline"
    ]


def _restarted_every_5_minutes(
    site: Site, outbox: Outbox, *, stopping: bool
) -> list[tuple[str, str]]:
    """12 runs of 290 s, checks 10 s apart, wl-1 heard at T0: the device_offline raised."""
    for run in range(12):
        h = Harness(site, outbox, settle_s=SETTLE_S)
        start = T0 + 300 * run
        for at in range(int(start), int(start) + 291, 10):
            h.silence(at)
        if stopping:
            h.stop(start + 290)
        if run == 0:
            h.alarm("wl-1", reading("wl-1", 1.0, T0), T0)
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    return [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates]


def test_a_bridge_restarting_every_few_minutes_still_judges_silence(
    site: Site, outbox: Outbox
) -> None:
    """Restarted every 5 minutes (up 4 min 50 s, down 10 s), each run settling for a minute:
    wl-1 (900 s) and mh-1, never heard (1800 s), used to be judged silent never."""
    # 230 s of listening a run (its last look 290 s after its start, less the minute settling).
    assert _restarted_every_5_minutes(site, outbox, stopping=True) == [
        ("wl-1", "2026-09-21T14:33:00Z"),  # T0 + 900 + 280: 3 x 230 + 220 = 910 s
        ("mh-1", "2026-09-21T14:52:40Z"),  # T0 + 2100 + 260: 7 x 230 + 200 = 1810 s
    ]


def test_a_bridge_crashing_every_few_minutes_judges_silence_later_never_sooner(
    site: Site, outbox: Outbox
) -> None:
    """As above, but each run ends without its stop: what the next run reads of the
    connection is from its last write, 240 s after its start (written at its first check,
    then every 60 s), so each run before the current one counts 180 s of listening, not
    230 s: the alarms come later (wl-1 at T0 + 1180 and mh-1 at T0 + 2360 above)."""
    assert _restarted_every_5_minutes(site, outbox, stopping=False) == [
        ("wl-1", "2026-09-21T14:37:30Z"),  # T0 + 1200 + 250: 4 x 180 + 190 = 910 s
        ("mh-1", "2026-09-21T15:02:30Z"),  # T0 + 2700 + 250: 9 x 180 + 190 = 1810 s
    ]


def test_an_idle_bridge_writes_the_connection_history_every_minute_and_at_reconnections(
    site: Site, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked every second: the history is written at the first check, then only every 60 s
    while nothing changes, at once when the link came back, and at the stop (it was written
    at every check: a commit and its sync every second)."""
    h = Harness(site, outbox)
    written: list[float] = []
    save = store.save_uptime

    def spy(conn: Any, state: Any) -> None:
        written.append(state[1] - T0)  # its last look
        save(conn, state)

    monkeypatch.setattr(store, "save_uptime", spy)
    for i in range(150):
        h.silence(T0 + i)
    h.silence(T0 + 150, connects=2)  # the link came back: a new span not listened
    for i in range(151, 200):
        h.silence(T0 + i, connects=2)
    assert written == [0, 60, 120, 150]
    h.stop(T0 + 199.5)
    assert written == [0, 60, 120, 150, 199]
    with outbox.transaction() as txn:
        assert store.load_uptime(txn.conn) == (T0, T0 + 199, [(T0, T0), (T0 + 149, T0 + 150)])


def test_the_connection_history_kept_is_bounded(site: Site, outbox: Outbox) -> None:
    """A link dropping every 10 s, each connection settling for 1 s and listened to for 1 s:
    the state database keeps at most MAX_GAPS stretches not listened, the oldest merged."""
    h = Harness(site, outbox, settle_s=1)
    for i in range(MAX_GAPS + 5):
        h.silence(T0 + 10 * i, connects=i + 1)
        h.silence(T0 + 10 * i + 2, connects=i + 1)
    h.stop(T0 + 10 * (MAX_GAPS + 4) + 2)
    with outbox.transaction() as txn:
        state = store.load_uptime(txn.conn)
    assert state is not None
    started, last_up, gaps = state
    assert (started, last_up, len(gaps)) == (T0, T0 + 10 * (MAX_GAPS + 4) + 2, MAX_GAPS)
    # The first six merged: the 5 s listened between them no longer count.
    assert gaps[:3] == [(T0, T0 + 51), (T0 + 52, T0 + 61), (T0 + 62, T0 + 71)]


def test_a_flapping_link_does_not_restart_the_silence(site: Site, outbox: Outbox) -> None:
    """Reconnected every 20 minutes, mh-1 (600 s: 30 min of silence) used to never be judged
    silent. Looked at every 10 s: each reconnection costs the 10 s since the last look and
    the settling minute."""
    h = Harness(site, outbox, settle_s=SETTLE_S)
    h.silence(T0)
    for sensor in ("wl-1", "mh-1"):
        h.alarm(sensor, reading(sensor, 1.0, T0 + 60), T0 + 60)
    for at in range(int(T0) + 10, int(T0) + 4 * 1200, 10):
        h.silence(at, connects=1 + (at - int(T0)) // 1200)
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates] == [
        ("wl-1", "2026-09-21T14:29:30Z"),  # T0 + 970: 910 s heard nothing, connected
        ("mh-1", "2026-09-21T14:45:40Z"),  # T0 + 1940: 1130 s + 680 s after the reconnection
    ]


def _site_intervals(mh_1: int, wl_1: int | None) -> Site:
    """The test site with mh-1's expected_interval_s, and wl-1's (None: not watched)."""
    text = SITE_YAML.replace("PREFIX", "gridpatrol").replace(
        "expected_interval_s: 600", f"expected_interval_s: {mh_1}"
    )
    wl_1_line = "    expected_interval_s: 300\n"
    assert wl_1_line in text
    text = text.replace(wl_1_line, "" if wl_1 is None else f"    expected_interval_s: {wl_1}\n")
    return parse_site(text, "test-site.yaml")


def test_a_longer_horizon_after_a_restart_still_skips_the_downtime_before_it(
    outbox: Outbox,
) -> None:
    """Runs 1 and 2 judge mh-1 only (60 s: a horizon of 180 s); run 3 watches wl-1 too (600 s:
    1800 s of silence), last heard at T0, before the bridge's hour down between runs 1 and 2.
    The span of that hour, followed in run 2 by more than 180 s of listening before a link
    flap, was dropped there: run 3 counted the hour as listened and raised device_offline for
    wl-1 at its first check. Now it is kept (merged with the spans before it): wl-1 is judged
    on the listening after it, 230 + 40 s in run 2 and run 3's from T0 + 4170."""
    h = Harness(_site_intervals(60, None), outbox, settle_s=SETTLE_S)
    for at in range(int(T0), int(T0) + 101, 10):
        h.silence(at)
        if at == int(T0):
            h.alarm("wl-1", reading("wl-1", 1.0, T0), T0)
    h.stop(T0 + 100)
    h = Harness(_site_intervals(60, None), outbox, settle_s=SETTLE_S)  # an hour later
    for at in range(int(T0) + 3700, int(T0) + 4101, 10):
        h.silence(at, connects=1 if at < T0 + 4000 else 2)  # the link flapped at T0 + 4000
    h.stop(T0 + 4100)
    h = Harness(_site_intervals(60, 600), outbox, settle_s=SETTLE_S)
    offline: list[str] = []
    for at in range(int(T0) + 4110, int(T0) + 5801, 10):
        h.silence(at)
        creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
        offline = [b["occurred_at"] for b in creates if b["source"]["sensor_id"] == "wl-1"]
        # Real listening since T0: 40 s in run 1, 270 s in run 2, run 3's from T0 + 4170.
        assert offline == [] or at - (T0 + 4170) + 310 > 1800, at
    # T0 + 5710: 270 s + 1540 s = 1810 s (the 40 s of run 1 before the hour are not counted).
    assert offline == ["2026-09-21T15:48:30Z"]


def test_a_clock_set_back_a_day_judges_a_sensor_heard_after_it_on_time(
    site: Site, outbox: Outbox
) -> None:
    """Three days of a link back every 6 h, wl-1 and mh-1 heard every 5 minutes, then the
    clock set back a day: wl-1 heard once just after the step is offline 910 s later, as
    before the bridge kept the stretches of the old link drops (merged into its first
    stretch, which ran to T0 + 66 h + 60 s: device_offline came 18 h late). mh-1, last heard
    before the step, stays silent until the clock passes its last message again."""
    h = Harness(site, outbox, settle_s=SETTLE_S)
    for at in range(int(T0), int(T0) + 3 * 86400, 60):
        if (at - int(T0)) % 300 == 0:
            for sensor in ("wl-1", "mh-1"):
                h.alarm(sensor, reading(sensor, 1.0, at), at)
        h.silence(at, connects=1 + (at - int(T0)) // 21600)
    assert [k for k, _, _ in outbox_ops(outbox) if k == "create"] == []
    stepped = T0 + 2 * 86400  # the clock set back a day, a minute after the last check
    h.silence(stepped, connects=12)
    # Not the reading of a day before (wl-1 at T0 + 48 h): a duplicate, no sign of life.
    h.alarm("wl-1", reading("wl-1", 2.0, stepped + 1), stepped)
    for at in range(int(stepped) + 10, int(stepped) + 2000, 10):
        h.silence(at, connects=12)
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates] == [
        ("wl-1", "2026-09-23T14:28:30Z"),  # stepped + 910
    ]


def test_a_clock_set_back_then_forward_again_judges_a_sensor_on_its_listening(
    site: Site, outbox: Outbox
) -> None:
    """Four hours of wl-1 and mh-1 heard every 5 minutes, the link down from T0 + 3 h to
    T0 + 3 h 5 min; the clock set back 2 h, wl-1 heard just after, and 120 s later the clock
    stepped forward the 2 h again. wl-1 is offline after 910 s of listening: the step was
    taken for a stretch not listened from the start of the link drop's, ahead of the clock
    set back, and the listening from the step to there counted (device_offline at the step,
    after 120 s)."""
    h = Harness(site, outbox, settle_s=SETTLE_S)
    for at in range(int(T0), int(T0) + 4 * 3600, 10):
        if 3 * 3600 <= at - T0 < 3 * 3600 + 300:
            continue  # the link down: the bridge does not check
        if (at - int(T0)) % 300 == 0:
            for sensor in ("wl-1", "mh-1"):
                h.alarm(sensor, reading(sensor, 1.0, at), at)
        h.silence(at, connects=1 if at - T0 < 3 * 3600 else 2, tick=at - T0)
    stepped, tick = T0 + 2 * 3600, 4 * 3600.0  # set back 2 h, 10 s after the last check
    h.silence(stepped, connects=2, tick=tick)
    h.alarm("wl-1", reading("wl-1", 2.0, stepped + 1), stepped)
    for k in range(1, 200):
        h.silence(stepped + 10 * k + (7200 if k >= 12 else 0), connects=2, tick=tick + 10 * k)
    creates = [b for k, _, b in outbox_ops(outbox) if k == "create"]
    assert [(b["source"]["sensor_id"], b["occurred_at"]) for b in creates] == [
        ("wl-1", "2026-09-21T18:28:30Z"),  # stepped + 7200 + 910
        # Last heard at T0 + 3 h 55 min, before the step back: judged on the listening after
        # the clock passed the end of the step forward again, T0 + 4 h 2 min (less silent).
        ("mh-1", "2026-09-21T18:45:30Z"),
    ]


def test_sensor_trace_is_bounded(h: Harness) -> None:
    for i in range(store.TRACE_LEN + 30):
        h.alarm("bf-1", reading("bf-1", 10, T0 + i), T0 + i)
    h.alarm("bf-1", reading("bf-1", 99, T0 + 500), T0 + 500)
    with h.outbox.transaction() as txn:
        evidence = txn.conn.execute(
            "SELECT payload FROM outbox_ops WHERE kind = 'evidence'"
        ).fetchone()[0]
        rows = txn.conn.execute("SELECT COUNT(*) FROM bridge_trace").fetchone()[0]
    doc = json.loads(evidence)
    assert rows == store.TRACE_LEN
    assert len(doc["readings"]) == store.TRACE_LEN
    assert doc["readings"][-1]["value"] == 99
    assert doc["thresholds"]["raise"] == 90


def test_sensor_traces_stay_bounded_for_sensors_interleaved(h: Harness) -> None:
    """Four sensors taking turns, in batches and one by one: every ring is pruned."""
    rounds = store.TRACE_LEN + 20

    def turn(i: int) -> list[tuple[str, bytes]]:
        smoke = envelope("sm-1", f"s{i}", "raise" if i == 0 else "update", alarm_type="smoke")
        return [
            ("gridpatrol/sensors/mh-1/alarm", reading("mh-1", 1.0, T0 + i)),
            ("gridpatrol/sensors/wl-1/alarm", reading("wl-1", 1.0, T0 + i)),
            ("gridpatrol/sensors/bf-1/alarm", reading("bf-1", 10.0, T0 + i)),
            ("gridpatrol/sensors/sm-1/alarm", smoke),
        ]

    h.send_batch([m for i in range(rounds) for m in turn(i)], T0 + rounds)
    for i in range(rounds, 2 * rounds):
        for topic, payload in turn(i):
            h.send(topic, payload, T0 + 2 * rounds)
    with h.outbox.transaction() as txn:
        counts = dict(
            txn.conn.execute("SELECT sensor_id, COUNT(*) FROM bridge_trace GROUP BY sensor_id")
        )
        newest_bin = json.loads(store.trace(txn.conn, "bf-1")[-1])
    assert counts == dict.fromkeys(("mh-1", "wl-1", "bf-1", "sm-1"), store.TRACE_LEN)
    assert newest_bin["t"] == "2026-09-21T14:15:39Z"  # T0 + 2 * rounds - 1 = T0 + 139 s


def test_batch_queues_traces_first_and_coalesces_repeats(h: Harness) -> None:
    topic = "gridpatrol/sensors/{}/alarm"
    h.send_batch(
        [
            (topic.format("mh-1"), envelope("mh-1", "1")),
            (topic.format("sm-1"), envelope("sm-1", "1", alarm_type="smoke")),
            *[
                (topic.format("mh-1"), envelope("mh-1", f"u{i}", "update", ts=T0 + i))
                for i in range(1, 6)
            ],
        ]
    )
    ops = outbox_ops(h.outbox)
    assert [k for k, _, _ in ops] == ["evidence", "evidence", "create", "create", "patch"]
    patch = ops[-1][2]
    assert ops[-1][1] == ops[2][1]
    assert patch["alarm"]["count"] == 6
    assert patch["alarm"]["last_seen"] == "2026-09-21T14:13:25Z"  # T0 + 5 s


SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_sample_payloads_do_what_their_readme_says(outbox: Outbox) -> None:
    h = Harness(load_site(SAMPLES / "site.yaml"), outbox)
    for name, sensor in [
        ("envelope-raise", "mh-0001"),
        ("envelope-update", "mh-0001"),
        ("envelope-clear", "mh-0001"),
        ("senml-water-level", "wl-0001"),
        ("reading-bin-fill", "bf-0001"),
        ("invalid-kind-mismatch", "sm-0001"),
        ("invalid-reading-without-thresholds", "sm-0001"),
    ]:
        # Received an hour after the samples' latest time (1795833667, 2026-11-28 02:41 UTC).
        h.alarm(sensor, (SAMPLES / "alarms" / f"{name}.json").read_bytes(), 1_795_837_300.0)
    ops = [(k, b) for k, _, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [(k, b.get("type")) for k, b in ops] == [
        ("create", "manhole_cover"),
        ("patch", None),
        ("patch", None),
        ("create", "waterlogging"),
    ]
    assert ops[1][1]["alarm"]["count"] == 2 and ops[1][1]["severity"] == "CRITICAL"
    assert h.dead == ["alarm_type_mismatch", "no_thresholds"]


FLUSHED_CLEAR_CASES = [
    # (name, the raise's time, the clear's time, the clear's reception)
    ("a raise a day old timed at its reception", T0 - 25 * 3600, T0 - 23 * 3600, T0 + 1),
    ("a raise 299 s ahead, its clear 301 s ahead", T0 + 299, T0 + 302, T0 + 1),
]


@pytest.mark.parametrize(("raised", "cleared", "received"), named(FLUSHED_CLEAR_CASES))
def test_a_clear_after_a_raise_timed_at_its_reception_clears_it(
    h: Harness, raised: float, cleared: float, received: float
) -> None:
    """mh-1's raise, its time moved to its reception (or kept), then its clear, timed after
    it by the same clock but moved (or kept) the other way. The device's own times order the
    two: the clear used to be stale against the raise's time at its reception, and the alarm
    never cleared."""
    h.alarm("mh-1", envelope("mh-1", "r1", ts=raised), T0)
    h.alarm("mh-1", envelope("mh-1", "c1", "clear", ts=cleared), received)
    ops = [(k, c, b) for k, c, b in outbox_ops(h.outbox) if k != "evidence"]
    assert [(k, c) for k, c, _ in ops] == [
        ("create", alarm_id_for("mh-1", "manhole_tilt", "e:r1")),
        ("patch", alarm_id_for("mh-1", "manhole_tilt", "e:r1")),
    ]
    assert ops[1][2]["alarm"]["cleared_at"] >= ops[0][2]["occurred_at"]
    counts = h.core.counts
    assert (counts.created, counts.cleared, counts.stale) == (1, 1, 0)


def test_a_device_offline_envelope_and_its_updates_are_one_alarm(h: Harness) -> None:
    """A gateway reports sm-1 offline, then three updates of it: not signs of the sensor's
    life. Each used to clear the alarm first (the sensor heard) and then open a new one."""
    h.alarm("sm-1", envelope("sm-1", "o1", alarm_type="device_offline"), T0)
    for i in range(1, 4):
        at = T0 + 60 * i
        h.alarm(
            "sm-1", envelope("sm-1", f"o{i + 1}", "update", alarm_type="device_offline", ts=at), at
        )
    ops = [(k, c, b) for k, c, b in outbox_ops(h.outbox) if k != "evidence"]
    first = alarm_id_for("sm-1", "device_offline", "e:o1")
    assert [(k, c) for k, c, _ in ops] == [("create", first)] + [("patch", first)] * 3
    assert [b["alarm"]["count"] for _, _, b in ops[1:]] == [2, 3, 4]
    assert all("cleared_at" not in b["alarm"] for _, _, b in ops[1:])
    counts = h.core.counts
    assert (counts.created, counts.updated, counts.cleared) == (1, 3, 0)
    # Its clear, and any other message of the sensor, still tells it is back.
    h.alarm(
        "sm-1", envelope("sm-1", "o5", "clear", alarm_type="device_offline", ts=T0 + 300), T0 + 300
    )
    assert h.core.counts.cleared == 1


def test_an_update_in_its_clears_second_received_later_is_overtaken_by_it(h: Harness) -> None:
    """mh-1 raised, then its clear and an update stamped in the same second, the update
    received 10 s after the clear (held up by retries): sent before the clear, it is stale, as
    it is after a clear with nothing active. A clear that ended the alarm kept no such time,
    and the update opened a new candidate no clear would end."""
    h.alarm("mh-1", envelope("mh-1", "r1"), T0)
    h.alarm("mh-1", envelope("mh-1", "c1", "clear", ts=T0 + 60), T0 + 60)
    h.alarm("mh-1", envelope("mh-1", "u1", "update", ts=T0 + 60), T0 + 70)
    ops = [(k, c, b) for k, c, b in outbox_ops(h.outbox) if k != "evidence"]
    first = alarm_id_for("mh-1", "manhole_tilt", "e:r1")
    assert [(k, c) for k, c, _ in ops] == [("create", first), ("patch", first)]
    assert ops[1][2]["alarm"]["cleared_at"] == "2026-09-21T14:14:20Z"
    counts = h.core.counts
    assert (counts.created, counts.cleared, counts.stale) == (1, 1, 1)
    # One received within 1 s of the clear is a genuine raise in the clear's second.
    h.alarm("mh-1", envelope("mh-1", "c2", "clear", ts=T0 + 120), T0 + 120)
    h.alarm("mh-1", envelope("mh-1", "r2", ts=T0 + 120), T0 + 120.5)
    assert (counts.created, counts.stale) == (2, 1)


def _many_sensors_site(fast: int, slow: int) -> Site:
    """``fast`` smoke sensors sx-i expected every 60 s (silent after 180 s) and ``slow`` ones
    sy-i every 200 s (silent after 600 s)."""
    lines = ["site: {name: 测试街道, timezone: Asia/Shanghai}", "sensors:"]
    for prefix, count, interval in (("sx", fast, 60), ("sy", slow, 200)):
        lines += [
            f"  - {{id: {prefix}-{i}, kind: smoke, location: {{grid_code: G{i}}},"
            f" expected_interval_s: {interval}}}"
            for i in range(count)
        ]
    return parse_site("\n".join(lines), "many.yaml")


def test_a_mass_outage_raises_each_silent_sensor_once_and_then_loads_none(
    outbox: Outbox,
) -> None:
    """40 sensors of 60 s and 10 of 200 s, 10 of the first heard 100 s in: each raised once
    when silent, and one heard again after its device_offline raised once more. The checks in
    between, every second, load no sensor's alarm state: they used to load that of every
    silent sensor, one query each, and took a second a check with 20,000 offline."""
    h = Harness(_many_sensors_site(40, 10), outbox)
    h.silence(T0)
    for i in range(10):
        h.send(f"gridpatrol/sensors/sx-{i}/status", b"online", T0 + 100)
    h.silence(T0 + 181)
    assert sorted(_offline_creates(outbox)) == sorted(
        (f"sx-{i}", "2026-09-21T14:16:21Z") for i in range(10, 40)
    )
    statements: list[str] = []
    conn = outbox._thread_conn()
    conn.set_trace_callback(statements.append)
    try:
        for at in range(182, 281):
            h.silence(T0 + at)
    finally:
        conn.set_trace_callback(None)
    assert [s for s in statements if "SELECT state FROM bridge_alarm_state" in s] == []
    # One look at the sensors not offline, at T0 + 280, when the ten heard could be silent.
    assert len([s for s in statements if "FROM bridge_watched" in s]) == 1
    assert len(_offline_creates(outbox)) == 30
    h.silence(T0 + 281)  # the ten heard at T0 + 100: silent since T0 + 280
    h.silence(T0 + 601)  # the slow ones
    h.send("gridpatrol/sensors/sx-0/status", b"online", T0 + 700)  # sx-0 back...
    for at in range(602, 880, 7):
        h.silence(T0 + at)
    h.silence(T0 + 881)  # ...and silent again
    creates = _offline_creates(outbox)
    assert len(creates) == len(set(creates)) == 51
    assert sorted({s for s, _ in creates}) == sorted(
        [f"sx-{i}" for i in range(40)] + [f"sy-{i}" for i in range(10)]
    )
    assert [at for s, at in creates if s == "sx-0"] == [
        "2026-09-21T14:18:01Z",  # T0 + 281
        "2026-09-21T14:28:01Z",  # T0 + 881
    ]
    assert sorted(at for s, at in creates if s.startswith("sy-")) == ["2026-09-21T14:23:21Z"] * 10


Y2000 = 946684800.0  # 2000-01-01T00:00:00Z, where a reset clock starts
RESET_CLOCK_CASES = [
    # (name, [(payload, received at)], (created, cleared, stale))
    (
        "an update sent before a clear stamped by a reset clock opens nothing",
        [
            (envelope("mh-1", "r1", ts=T0), T0),
            (envelope("mh-1", "c1", "clear", ts=Y2000), T0 + 10),
            (envelope("mh-1", "u1", "update", ts=T0 + 5), T0 + 12),
        ],
        (1, 1, 1),
    ),
    (
        "a clear sent before an update stamped by a reset clock leaves the alarm open",
        [
            (envelope("mh-1", "r1", ts=T0), T0),
            (envelope("mh-1", "u1", "update", ts=Y2000), T0 + 10),
            (envelope("mh-1", "c1", "clear", ts=T0 + 5), T0 + 12),
        ],
        (1, 0, 1),
    ),
    (
        "a reading taken before one stamped by a reset clock that cleared raises nothing",
        [
            (reading("mh-1", 20, T0), T0),
            (reading("mh-1", 2, Y2000), T0 + 10),
            (reading("mh-1", 20, T0 + 5), T0 + 12),
        ],
        (1, 1, 1),
    ),
    (
        "a clear sent before a raise stamped by a reset clock leaves it open",
        [
            (envelope("mh-1", "r1", ts=Y2000), T0),
            (envelope("mh-1", "c1", "clear", ts=T0 - 5), T0 + 3),
        ],
        (1, 0, 1),
    ),
    (
        "a clear sent before a second reset's update leaves the alarm open",
        [
            (envelope("mh-1", "r1", ts=Y2000), T0),
            (envelope("mh-1", "u1", "update", ts=T0 + 100), T0 + 100),  # synchronised
            (envelope("mh-1", "u2", "update", ts=Y2000 + 30), T0 + 200),  # rebooted
            (envelope("mh-1", "c1", "clear", ts=T0 + 150), T0 + 205),
        ],
        (1, 0, 1),
    ),
    (
        "a clear sent before a reset clock's raise of a later alarm leaves it open",
        [
            (envelope("mh-1", "r1", ts=Y2000), T0),
            (envelope("mh-1", "c1", "clear", ts=T0 + 100), T0 + 100),  # synchronised
            (envelope("mh-1", "r2", ts=Y2000 + 30), T0 + 40 * DAY),  # rebooted
            (envelope("mh-1", "c2", "clear", ts=T0 + 40 * DAY - 10), T0 + 40 * DAY + 5),
        ],
        (2, 1, 1),
    ),
]


@pytest.mark.parametrize(("messages", "counts"), named(RESET_CLOCK_CASES))
def test_a_message_sent_before_one_stamped_by_a_reset_clock_is_stale(
    h: Harness, messages: list[tuple[bytes, float]], counts: tuple[int, int, int]
) -> None:
    """mh-1's clock is reset to 2000-01-01 for one message, timed at its reception; one sent
    before it by the clock still right arrives after it. Its device time kept as the sighting's,
    2000 was before the late one's, which then passed for sent after it: a clear ended the
    live alarm, an update or reading opened a second candidate no clear would end."""
    for payload, at in messages:
        h.alarm("mh-1", payload, at)
    c = h.core.counts
    assert (c.created, c.cleared, c.stale) == counts
    assert h.dead == []


@pytest.mark.parametrize("stored_before", [False, True], ids=["as stored", "stored before"])
def test_an_active_alarm_stored_before_device_times_were_kept_is_not_cleared_by_a_late_reading(
    h: Harness, stored_before: bool
) -> None:
    """mh-1 raised by a reading at T0 + 100, its state stored as it is or as it was before the
    device's time of the last sighting was kept (without it and the reset clock's lag). A late
    reading beyond ``raise`` (T0 + 50) counts, then one beyond ``clear`` at T0 + 60, taken
    before the raise's, is stale either way: loaded without that time, the repeat used to keep
    its own (T0 + 50) as the last sighting's, and the late reading cleared the alarm."""
    h.alarm("mh-1", reading("mh-1", 20, T0 + 100), T0 + 100)
    if stored_before:
        with h.outbox.transaction() as txn:
            query = "SELECT state FROM bridge_alarm_state WHERE sensor_id = 'mh-1'"
            (row,) = txn.conn.execute(query).fetchone()
            txn.conn.execute(
                "UPDATE bridge_alarm_state SET state = ? WHERE sensor_id = 'mh-1'",
                (json.dumps(json.loads(row)[:-2]),),
            )
            assert store.load_state(txn.conn, "mh-1", "manhole_tilt").last_device_seen is None
    h.alarm("mh-1", reading("mh-1", 20, T0 + 50), T0 + 101)
    h.alarm("mh-1", reading("mh-1", 2, T0 + 60), T0 + 102)
    c = h.core.counts
    assert (c.created, c.updated, c.cleared, c.stale) == (1, 1, 0, 1)


@pytest.mark.parametrize("behind_days", [29, 31])
def test_a_pack_spread_back_from_its_reception_clears_after_a_reading_of_a_reset_clock(
    h: Harness, behind_days: int
) -> None:
    """wl-1's clock is ``behind_days`` days behind: a reading beyond ``raise`` (its own time
    T0 + 100) received at R raises; a pack received at R + 10, a reading beyond ``clear``
    (T0 + 150) and one beyond ``raise`` (T0 + 300), is timed back from its reception (the
    first at R - 140). Sent after the raise by the device's clock, it clears and raises
    again, 30 days or more behind (a reset clock) as less: its first reading used to be stale
    against the raise kept at its reception, and the clear was lost."""
    received = T0 + 100 + behind_days * 86400
    level = {"n": "level", "u": "cm"}
    h.alarm(
        "wl-1", json.dumps([{"bn": "wl-1:", "bt": T0 + 100, **level, "v": 20}]).encode(), received
    )
    pack = [{"bn": "wl-1:", "bt": T0 + 150, **level, "v": 2}, {"t": 150, **level, "v": 20}]
    h.alarm("wl-1", json.dumps(pack).encode(), received + 10)
    ops = [(k, c, b) for k, c, b in outbox_ops(h.outbox) if k != "evidence"]
    # The batch's patches are flushed after its creates.
    first, second = ops[0][1], ops[1][1]
    assert [(k, c) for k, c, _ in ops] == [("create", first), ("create", second), ("patch", first)]
    assert ops[2][2]["alarm"]["cleared_at"] is not None
    assert ops[1][2]["alarm"]["previous_alarm_id"] == first != second
    c = h.core.counts
    assert (c.created, c.cleared, c.stale) == (2, 1, 0)
    assert h.dead == []
