"""Table-driven tests of the pure alarm lifecycle: every path in docs/alarm-bridge.md."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gridpatrol.alarm_bridge.lifecycle import (
    AlarmState,
    DeviceInput,
    LifecycleInput,
    ReadingInput,
    Severity,
    Transition,
    step,
)
from gridpatrol.site import Thresholds

RISING = Thresholds.model_validate(
    {"raise": 15, "clear": 5, "unit": "deg", "debounce_s": 10, "clear_hold_s": 60}
)
FALLING = Thresholds.model_validate({"raise": 10, "clear": 20, "debounce_s": 0})
INSTANT = Thresholds.model_validate({"raise": 80, "clear": 60})


def dev(transition: Transition, severity: Severity = "MAJOR", aid: str = "a") -> DeviceInput:
    return DeviceInput(transition=transition, severity=severity, new_alarm_id=aid)


def sent(
    transition: Transition, received: float, severity: Severity = "MAJOR", aid: str = "a"
) -> DeviceInput:
    """A device's envelope without seq, timed by the device, received at ``received``."""
    return DeviceInput(transition, severity, new_alarm_id=aid, received_at=received)


def rd(value: float, th: Thresholds = RISING, aid: str = "a") -> ReadingInput:
    return ReadingInput(value=value, thresholds=th, new_alarm_id=aid)


@dataclass(frozen=True)
class Case:
    name: str
    inputs: list[tuple[float, LifecycleInput]]
    effects: list[str]  # "kind:alarm_id:count[:severity]" per effect, in order
    phase: str


def run(inputs: list[tuple[float, LifecycleInput]]) -> tuple[AlarmState, list[str]]:
    state = AlarmState()
    out: list[str] = []
    for t, event in inputs:
        state, effects = step(state, event, t)
        for e in effects:
            text = f"{e.kind}:{e.alarm.alarm_id}:{e.alarm.count}"
            if e.kind in ("raise", "update"):
                text += f":{e.alarm.severity}"
            if e.kind == "ignore":
                text += f":{e.reason}"
            out.append(text)
    return state, out


CASES = [
    # Device transitions followed as sent.
    Case("device raise", [(0, dev("raise"))], ["raise:a:1:MAJOR"], "active"),
    Case(
        "device raise, update, clear",
        [(0, dev("raise")), (5, dev("update")), (9, dev("clear"))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR", "clear:a:2"],
        "cleared",
    ),
    Case(
        "raise while active is an update",
        [(0, dev("raise")), (1, dev("raise", aid="b"))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR"],
        "active",
    ),
    Case(
        "severity escalates while active",
        [(0, dev("raise", "MINOR")), (1, dev("update", "CRITICAL"))],
        ["raise:a:1:MINOR", "update:a:2:CRITICAL"],
        "active",
    ),
    Case(
        "severity never de-escalates while active",
        [(0, dev("raise", "CRITICAL")), (1, dev("update", "WARNING"))],
        ["raise:a:1:CRITICAL", "update:a:2:CRITICAL"],
        "active",
    ),
    Case(
        "clear when not active is ignored",
        [(0, dev("clear"))],
        ["ignore:None:0:clear_not_active"],
        "normal",
    ),
    Case(
        "clear twice: the second is ignored",
        [(0, dev("raise")), (1, dev("clear")), (2, dev("clear"))],
        ["raise:a:1:MAJOR", "clear:a:1", "ignore:a:1:clear_not_active"],
        "cleared",
    ),
    Case(
        "update without a raise raises",
        [(0, dev("update", "MINOR"))],
        ["raise:a:1:MINOR"],
        "active",
    ),
    Case(
        "raise after clear is a new alarm",
        [(0, dev("raise")), (1, dev("clear")), (2, dev("raise", aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "raise:b:1:MAJOR"],
        "active",
    ),
    # Device transitions sent before the last one followed are stale (no seq to order them).
    Case(
        "a late clear does not end a live alarm",
        [(100, dev("raise")), (300, dev("update")), (200, dev("clear"))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR", "ignore:a:2:stale"],
        "active",
    ),
    Case(
        "a late update after the clear opens no new alarm",
        [(100, dev("raise")), (200, dev("clear")), (150, dev("update", aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "ignore:a:1:stale"],
        "cleared",
    ),
    Case(
        "a late raise while active is not a repeat",
        [(100, dev("raise")), (300, dev("update")), (250, dev("raise", aid="b"))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR", "ignore:a:2:stale"],
        "active",
    ),
    Case(
        "a clear at the same time as the raise is not late",
        [(100, dev("raise")), (100, dev("clear"))],
        ["raise:a:1:MAJOR", "clear:a:1"],
        "cleared",
    ),
    Case(
        "a raise after a clear, timed after it, is a new alarm",
        [(100, dev("raise")), (200, dev("clear")), (201, dev("raise", aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "raise:b:1:MAJOR"],
        "active",
    ),
    # A device's clear with nothing active keeps its time, at most its reception: the raise it
    # overtook (no seq) is stale.
    Case(
        "a raise overtaken by its clear opens no alarm",
        [(120, sent("clear", 125)), (100, sent("raise", 126))],
        ["ignore:None:0:clear_not_active", "ignore:None:0:stale"],
        "normal",
    ),
    Case(
        "an update overtaken by a clear opens no alarm",
        [(120, sent("clear", 125)), (100, sent("update", 126))],
        ["ignore:None:0:clear_not_active", "ignore:None:0:stale"],
        "normal",
    ),
    Case(
        "a raise overtaken by a second clear after a cleared alarm opens no new one",
        [
            (0, sent("raise", 0)),
            (10, sent("clear", 10)),
            (30, sent("clear", 30)),
            (20, sent("raise", 31, aid="b")),
        ],
        ["raise:a:1:MAJOR", "clear:a:1", "ignore:a:1:clear_not_active", "ignore:a:1:stale"],
        "cleared",
    ),
    Case(
        "a clear timed before the last one kept never moves its time back",
        [(120, sent("clear", 125)), (110, sent("clear", 126)), (115, sent("raise", 127))],
        [
            "ignore:None:0:clear_not_active",
            "ignore:None:0:clear_not_active",
            "ignore:None:0:stale",
        ],
        "normal",
    ),
    Case(
        "a raise timed after a clear with nothing active raises",
        [(100, sent("clear", 100)), (101, sent("raise", 101))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a raise at the time of a clear with nothing active is not late",
        [(100, sent("clear", 100)), (100, sent("raise", 100))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a raise in the second of the clear, received after it, opens no alarm",
        [(100, sent("clear", 100.6)), (100, sent("raise", 103))],
        ["ignore:None:0:clear_not_active", "ignore:None:0:stale"],
        "normal",
    ),
    Case(
        "a raise in the second of the clear, received within 1 s of it, is a genuine raise",
        [(100, sent("clear", 100.2)), (100, sent("raise", 100.9))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a raise in the second of the clear, held up beyond the window longer, raises",
        [(100, sent("clear", 100.6)), (100, sent("raise", 221))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a raise held up more than the window longer than the clear raises",
        [(300, sent("clear", 100)), (150, sent("raise", 151))],  # held up 201 s longer
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    # The hold-up compares the device's own times: its clock's offset cancels out.
    Case(
        "a raise overtaken by its clear from a clock 30 s ahead opens no alarm",
        [(40, sent("clear", 10.2)), (30, sent("raise", 20))],
        ["ignore:None:0:clear_not_active", "ignore:None:0:stale"],
        "normal",
    ),
    Case(
        "a raise overtaken by its clear 3 s later from a clock 5 s ahead opens no alarm",
        [(8, sent("clear", 3.2)), (5, sent("raise", 3.5))],
        ["ignore:None:0:clear_not_active", "ignore:None:0:stale"],
        "normal",
    ),
    Case(
        "a raise held up the window longer than its clear opens no alarm",
        [(100, sent("clear", 100)), (99, sent("raise", 219))],
        ["ignore:None:0:clear_not_active", "ignore:None:0:stale"],
        "normal",
    ),
    Case(
        "a raise held up beyond the window longer than a clear raises",
        [(100, sent("clear", 100)), (99, sent("raise", 219.5))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a clock set back by more than the window after a clear makes no raise stale",
        [(1000, sent("clear", 1000)), (500, sent("raise", 1010))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a clock set back by less than the window only until it passes the clear's time",
        [
            (1000, sent("clear", 1000)),
            (950, sent("raise", 1010)),  # 60 s behind: held up 60 s longer
            (990, sent("update", 1050)),
            (1000, sent("update", 1060)),  # in the clear's second: taken for overtaken
            (1001, sent("update", 1061)),
        ],
        [
            "ignore:None:0:clear_not_active",
            "ignore:None:0:stale",
            "ignore:None:0:stale",
            "ignore:None:0:stale",
            "raise:a:1:MAJOR",
        ],
        "active",
    ),
    Case(
        "a raise overtaken by a clear timed before the one timed last opens no alarm",
        [
            (100, sent("clear", 0)),  # the clock 100 s ahead, then set back
            (60, sent("clear", 61)),
            (50, sent("raise", 90)),  # held up 140 s longer than the first, 39 s the second
        ],
        [
            "ignore:None:0:clear_not_active",
            "ignore:None:0:clear_not_active",
            "ignore:None:0:stale",
        ],
        "normal",
    ),
    Case(
        "a clear timed before the one kept replaces it once that one's window is over",
        [(120, sent("clear", 125)), (110, sent("clear", 250)), (105, sent("raise", 251))],
        [
            "ignore:None:0:clear_not_active",
            "ignore:None:0:clear_not_active",
            "ignore:None:0:stale",
        ],
        "normal",
    ),
    Case(
        "a clear not ordered by its own time keeps no time",
        [(120, dev("clear")), (100, sent("raise", 126))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a raise not ordered by its own time is not judged by a clear's",
        [(120, sent("clear", 125)), (100, dev("raise"))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "readings are not judged by a device clear's time",
        [(120, sent("clear", 125)), (100, rd(95, INSTANT))],
        ["ignore:None:0:clear_not_active", "raise:a:1:MAJOR"],
        "active",
    ),
    # Threshold readings with debounce and hysteresis.
    Case("below raise stays normal", [(0, rd(3)), (20, rd(14.9))], [], "normal"),
    Case("beyond raise starts the debounce", [(0, rd(16))], [], "pending"),
    Case(
        "debounce held raises",
        [(0, rd(16)), (5, rd(20)), (10, rd(17))],
        ["raise:a:1:MAJOR"],
        "active",
    ),
    Case("debounce broken by a dip", [(0, rd(16)), (5, rd(14)), (12, rd(16))], [], "pending"),
    Case(
        "noisy readings around the raise level never raise",
        [(t, rd(16 if t % 2 == 0 else 14)) for t in range(0, 60, 3)],
        [],
        "normal",
    ),
    Case("zero debounce raises at once", [(0, rd(81, INSTANT))], ["raise:a:1:MAJOR"], "active"),
    Case(
        "repeats while active update",
        [(0, rd(16)), (10, rd(16)), (20, rd(30)), (30, rd(18))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR", "update:a:3:MAJOR"],
        "active",
    ),
    Case(
        "between clear and raise keeps active",
        [(0, rd(16)), (10, rd(16)), (20, rd(10)), (200, rd(10))],
        ["raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "clear needs the hold",
        [(0, rd(16)), (10, rd(16)), (20, rd(3)), (50, rd(4))],
        ["raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "clear held clears",
        [(0, rd(16)), (10, rd(16)), (20, rd(3)), (50, rd(4)), (80, rd(2))],
        ["raise:a:1:MAJOR", "clear:a:1"],
        "cleared",
    ),
    Case(
        "a value between breaks the clear hold",
        [(0, rd(16)), (10, rd(16)), (20, rd(3)), (50, rd(8)), (80, rd(2)), (100, rd(2))],
        ["raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a repeat breaks the clear hold",
        [(0, rd(16)), (10, rd(16)), (20, rd(3)), (50, rd(20)), (80, rd(2)), (100, rd(2))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR"],
        "active",
    ),
    Case(
        "falling thresholds (low value alarms)",
        [(0, rd(12, FALLING)), (1, rd(9, FALLING)), (2, rd(15, FALLING)), (3, rd(21, FALLING))],
        ["raise:a:1:MAJOR", "clear:a:1"],
        "cleared",
    ),
    Case(
        "re-raise after clear is a new alarm",
        [(0, rd(90, INSTANT)), (1, rd(50, INSTANT)), (2, rd(85, INSTANT, aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "raise:b:1:MAJOR"],
        "active",
    ),
    Case(
        "broken debounce after a clear rests in cleared",
        [(0, rd(90, INSTANT)), (1, rd(50, INSTANT)), (2, rd(16)), (3, rd(3))],
        ["raise:a:1:MAJOR", "clear:a:1"],
        "cleared",
    ),
    # Readings taken before the clear and arriving after it (a flushed buffer, a resend).
    Case(
        "a late reading after the clear opens no new alarm",
        [(100, rd(90, INSTANT)), (200, rd(50, INSTANT)), (150, rd(95, INSTANT, aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "ignore:a:1:stale"],
        "cleared",
    ),
    Case(
        "a late reading while active is a repeat",
        [(100, rd(90, INSTANT)), (300, rd(90, INSTANT)), (200, rd(95, INSTANT, aid="b"))],
        ["raise:a:1:MAJOR", "update:a:2:MAJOR", "update:a:3:MAJOR"],
        "active",
    ),
    Case(
        "a reading after the clear, timed after it, is a new alarm",
        [(100, rd(90, INSTANT)), (200, rd(50, INSTANT)), (201, rd(85, INSTANT, aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "raise:b:1:MAJOR"],
        "active",
    ),
    Case(
        "a reading at the time of the clear is not late",
        [(100, rd(90, INSTANT)), (200, rd(50, INSTANT)), (200, rd(85, INSTANT, aid="b"))],
        ["raise:a:1:MAJOR", "clear:a:1", "raise:b:1:MAJOR"],
        "active",
    ),
    Case(
        "a late reading does not break the debounce of the next alarm",
        [
            (100, rd(90, INSTANT)),
            (200, rd(50, INSTANT)),
            (205, rd(16)),
            (150, rd(3)),
            (215, rd(16, aid="b")),
        ],
        ["raise:a:1:MAJOR", "clear:a:1", "ignore:a:1:stale", "raise:b:1:MAJOR"],
        "active",
    ),
    # With nothing active a reading keeps no time: a device's clock and its gateway's may
    # disagree, and a genuine first alarm must not be stale for an earlier normal reading.
    Case(
        "a reading beyond clear keeps no time: a late one beyond raise still raises",
        [(200, rd(50, INSTANT)), (150, rd(95, INSTANT))],
        ["raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a reading between the levels keeps no time: a late one beyond raise still raises",
        [(200, rd(70, INSTANT)), (150, rd(95, INSTANT))],
        ["raise:a:1:MAJOR"],
        "active",
    ),
    Case(
        "a reading beyond clear after a clear keeps no time either",
        [
            (100, rd(90, INSTANT)),
            (200, rd(50, INSTANT)),
            (300, rd(40, INSTANT)),
            (250, rd(95, INSTANT, aid="b")),
        ],
        ["raise:a:1:MAJOR", "clear:a:1", "raise:b:1:MAJOR"],
        "active",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lifecycle(case: Case) -> None:
    state, effects = run(case.inputs)
    assert effects == case.effects
    assert state.phase == case.phase


def test_new_alarm_references_the_previous_one() -> None:
    state, _ = step(AlarmState(), dev("raise", aid="first"), 0)
    state, _ = step(state, dev("clear"), 10)
    state, effects = step(state, dev("raise", aid="second"), 20)
    assert [(e.kind, e.alarm.alarm_id, e.alarm.previous_alarm_id) for e in effects] == [
        ("raise", "second", "first")
    ]
    assert (state.first_seen, state.last_seen, state.count) == (20, 20, 1)


def test_repeat_tracks_first_and_last_seen() -> None:
    state, _ = step(AlarmState(), dev("raise"), 100)
    state, effects = step(state, dev("update"), 160)
    alarm = effects[0].alarm
    assert (alarm.first_seen, alarm.last_seen, alarm.count) == (100, 160, 2)
    # A late device repeat is stale: it neither counts nor moves last_seen backwards.
    state, effects = step(state, dev("update"), 120)
    assert [(e.kind, e.reason, e.alarm.last_seen, e.alarm.count) for e in effects] == [
        ("ignore", "stale", 160, 2)
    ]


def test_a_late_reading_counts_but_never_moves_last_seen_backwards() -> None:
    state, _ = step(AlarmState(), rd(81, INSTANT), 100)
    state, _ = step(state, rd(90, INSTANT), 160)
    state, effects = step(state, rd(85, INSTANT), 120)
    assert (effects[0].kind, effects[0].alarm.last_seen, effects[0].alarm.count) == (
        "update",
        160,
        3,
    )


def test_a_late_reading_after_the_clear_leaves_the_ended_alarm_as_it_was() -> None:
    state, _ = step(AlarmState(), rd(90, INSTANT, aid="first"), 100)
    cleared, _ = step(state, rd(50, INSTANT), 200)
    state, effects = step(cleared, rd(95, INSTANT, aid="second"), 150)
    assert state == cleared
    assert [(e.kind, e.reason, e.alarm.alarm_id, e.alarm.last_seen) for e in effects] == [
        ("ignore", "stale", "first", 200)
    ]


def test_a_clear_with_nothing_active_keeps_its_time_and_the_last_alarm() -> None:
    state, _ = step(AlarmState(), sent("raise", 100, aid="first"), 100)
    cleared, _ = step(state, sent("clear", 200), 200)
    state, effects = step(cleared, sent("clear", 300), 300)
    assert state == AlarmState(
        phase="cleared",
        alarm_id="first",
        count=1,
        first_seen=100,
        last_seen=200,
        quiets=((200, 200), (300, 300)),  # the one that ended the alarm too
        last_device_seen=200,
    )
    assert [(e.kind, e.reason) for e in effects] == [("ignore", "clear_not_active")]
    # An older one is kept beside it; a raise before either is stale.
    later, effects = step(state, sent("clear", 301), 250)
    assert (later.quiets, [e.reason for e in effects]) == (
        ((200, 200), (300, 300), (250, 301)),
        ["clear_not_active"],
    )
    later, effects = step(state, sent("raise", 302, aid="second"), 290)
    assert (later, [e.reason for e in effects]) == (state, ["stale"])
    # So is one in its second received after it; one timed after it opens the next alarm,
    # which last_seen orders from then on.
    later, effects = step(state, sent("raise", 303, aid="second"), 300)
    assert (later, [e.reason for e in effects]) == (state, ["stale"])
    raised, _ = step(state, sent("raise", 303, aid="second"), 301)
    assert raised == AlarmState(
        phase="active",
        alarm_id="second",
        previous_alarm_id="first",
        count=1,
        first_seen=301,
        last_seen=301,
        last_device_seen=301,
    )


def test_clears_are_kept_while_they_can_make_a_raise_stale_and_at_most_eight() -> None:
    """One received more than the window before the latest clear can make no raise arriving
    after it stale; of many in the window, the latest received are kept."""
    state, _ = step(AlarmState(), sent("clear", 100), 100)
    state, _ = step(state, sent("clear", 220), 90)  # 120 s later: kept
    assert state.quiets == ((100, 100), (90, 220))
    state, _ = step(state, sent("clear", 220.5), 95)
    assert state.quiets == ((90, 220), (95, 220.5))
    for i in range(10):
        state, _ = step(state, sent("clear", 221 + i), 96 + i)
    assert state.quiets == tuple((96 + i, 221 + i) for i in range(2, 10))


@pytest.mark.parametrize("behind_days", [29, 31])
def test_a_pack_spread_back_from_its_reception_orders_by_its_clock_after_a_reset_one(
    behind_days: int,
) -> None:
    """A reading 95 (its own time 100) received ``behind_days`` days later, at R, raises; a
    pack received at R + 10 holds 45 (own 150) and 95 (own 300), timed back from R + 10 by
    its spacing (the 45 at R - 140). Sent after the raise by the device's clock, the 45
    clears and the 95 raises again, its clock reset (30 days or more behind) or not: with
    the reset clock's raise kept at its reception, the 45, before it, used to be stale."""
    received = 100 + behind_days * 86400.0
    state, effects = step(AlarmState(), rd(95, INSTANT), received, 100)
    assert [e.kind for e in effects] == ["raise"]
    kinds = []
    for own, value in ((150, 45), (300, 95)):
        state, effects = step(state, rd(value, INSTANT, aid="b"), received + 10 - 300 + own, own)
        kinds += [e.kind for e in effects]
    assert kinds == ["clear", "raise"]
    assert (state.alarm_id, state.previous_alarm_id) == ("b", "a")
