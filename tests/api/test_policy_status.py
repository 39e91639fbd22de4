"""Pure policy and status-machine functions, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from gridpatrol.api import status as sm
from gridpatrol.api.policy import SitePolicy, night_end
from gridpatrol.api.schemas import REQUIRED
from gridpatrol.site import Policy, TimeWindow, parse_hhmm

SH = ZoneInfo("Asia/Shanghai")


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=SH)


@pytest.mark.parametrize(
    ("start", "end", "at", "expected"),
    [
        ("22:00", "08:00", local(27, 23, 30), local(28, 8)),
        ("22:00", "08:00", local(28, 2, 0), local(28, 8)),
        ("22:00", "08:00", local(27, 22, 0), local(28, 8)),
        ("22:00", "08:00", local(28, 7, 59), local(28, 8)),
        ("22:00", "08:00", local(28, 8, 0), None),
        ("22:00", "08:00", local(27, 21, 59), None),
        ("22:00", "08:00", local(27, 12, 0), None),
        ("01:00", "05:00", local(27, 3, 0), local(27, 5)),
        ("01:00", "05:00", local(27, 5, 0), None),
        ("01:00", "05:00", local(27, 0, 30), None),
        ("00:00", "00:00", local(27, 3, 0), None),
    ],
)
def test_night_window(start: str, end: str, at: datetime, expected: datetime | None) -> None:
    got = night_end(at.astimezone(UTC), parse_hhmm(start), parse_hhmm(end), SH)
    assert got == (expected.astimezone(UTC) if expected else None)
    if got is not None:
        assert got.tzinfo is UTC


def test_night_window_rejects_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        night_end(datetime(2026, 1, 1), parse_hhmm("22:00"), parse_hhmm("08:00"), SH)  # noqa: DTZ001


POLICY = SitePolicy.of(Policy(night=TimeWindow(start="22:00", end="08:00")), "Asia/Shanghai")


@pytest.mark.parametrize(
    ("ctype", "requested", "expected"),
    [
        ("smoke", "normal", "immediate"),
        ("crowd_gathering", None, "immediate"),
        ("garbage_overflow", "normal", "normal"),
        ("garbage_overflow", "immediate", "immediate"),
        ("garbage_overflow", None, None),
    ],
)
def test_urgency_is_raised_never_lowered(
    ctype: str, requested: str | None, expected: str | None
) -> None:
    assert POLICY.urgency(ctype, requested) == expected


def test_hold_routing_and_sla() -> None:
    night = local(27, 23).astimezone(UTC)
    assert POLICY.hold_until("normal", night) == local(28, 8).astimezone(UTC)
    assert POLICY.hold_until("immediate", night) is None
    assert POLICY.hold_until("normal", local(27, 12).astimezone(UTC)) is None
    assert POLICY.suggested_unit("illegal_parking") == "交警中队"
    assert POLICY.suggested_unit(None) is None
    assert POLICY.category("garbage_overflow") is None
    dispatched = local(27, 10).astimezone(UTC)
    assert (POLICY.arrive_by(dispatched) - dispatched).total_seconds() == 15 * 60
    assert POLICY.auto_confirms("smoke") and not POLICY.auto_confirms("street_vending")


@pytest.mark.parametrize(
    ("status", "decision", "expected"),
    [
        ("new", "confirm", "confirmed"),
        ("new", "reject", "rejected"),
        ("new", "return", "returned"),
        ("new", "merge", "merged"),
        ("incomplete", "reject", "rejected"),
        ("incomplete", "return", "returned"),
        ("incomplete", "confirm", None),
        ("returned", "confirm", None),
        ("confirmed", "confirm", None),
        ("confirmed", "reject", None),
        ("rejected", "confirm", None),
        ("merged", "reject", None),
        ("closed", "return", None),
    ],
)
def test_review_transitions(status: str, decision: sm.Decision, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(sm.IllegalTransition):
            sm.review(status, decision)
    else:
        assert sm.review(status, decision) == expected


@pytest.mark.parametrize(
    ("status", "stage", "expected"),
    [
        ("confirmed", "registered", "registered"),
        ("pulled", "registered", "registered"),
        ("registered", "dispatched", "dispatched"),
        ("dispatched", "arrived", "arrived"),
        ("arrived", "resolved", "resolved"),
        ("resolved", "verified", "verified"),
        ("verified", "closed", "closed"),
        ("registered", "registered", None),
        ("new", "registered", "illegal"),
        ("confirmed", "dispatched", "illegal"),
        ("resolved", "closed", "illegal"),
        ("closed", "verified", "illegal"),
        ("rejected", "registered", "illegal"),
    ],
)
def test_stage_transitions(status: str, stage: sm.Stage, expected: str | None) -> None:
    if expected == "illegal":
        with pytest.raises(sm.IllegalTransition):
            sm.advance(status, stage)
    else:
        assert sm.advance(status, stage) == expected


@pytest.mark.parametrize(
    ("status", "complete", "answered", "expected"),
    [
        ("incomplete", True, False, "new"),
        ("incomplete", False, False, "incomplete"),
        ("returned", True, True, "new"),
        ("returned", False, True, "incomplete"),
        ("returned", True, False, "returned"),
        ("returned", False, False, "returned"),
        ("confirmed", True, True, "confirmed"),
    ],
)
def test_after_supplement(status: str, complete: bool, answered: bool, expected: str) -> None:
    assert sm.after_supplement(status, complete, answered) == expected


CLEAN = {"sha256": "a" * 64, "kind": "clean"}
LATEST = {"sha256": "b" * 64, "kind": "latest"}


@pytest.mark.parametrize(
    ("change", "answers"),
    [
        ({"detection": {"dwell_s": 900}}, False),
        ({"evidence": [CLEAN, LATEST]}, False),
        ({"measurements": [{"n": "pm25", "v": 80}]}, False),
        ({"description": "moved"}, True),
        ({"location": {"address": "大宁路 100号"}}, True),
        ({"occurred_at": "2026-11-27T03:00:00+00:00"}, True),
        ({"severity": "MAJOR"}, True),
        ({"urgency": "immediate"}, True),
        ({"type": "illegal_dumping"}, True),
        ({"source": {"camera_id": "cam-2"}}, True),
        ({"evidence": [CLEAN, {"sha256": "c" * 64, "kind": "crop"}]}, True),
        ({"evidence": [CLEAN, {"sha256": "c" * 64}]}, True),
    ],
)
def test_answers_return(change: dict[str, object], answers: bool) -> None:
    before = {"type": "garbage_overflow", "description": "bin", "evidence": [CLEAN]}
    assert sm.answers_return(before, {**before, **change}, REQUIRED) is answers
