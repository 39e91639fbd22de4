"""Alarm lifecycle per (sensor, alarm type): pure state machines with injected time.

The lifecycle is described in docs/alarm-bridge.md.

``step(state, input, t) -> (state, effects)`` never reads a clock, a database or the network:
the worker feeds it decoded inputs and turns the effects into candidate operations. Two kinds of
input drive it:

* device transitions (alarm envelopes, the device's last will, silence): followed as sent,
  except one timed before the alarm's ``last_seen`` (a late message: ignored as stale);
* threshold readings: NORMAL -> PENDING (beyond ``raise`` for ``debounce_s``) -> ACTIVE ->
  CLEARED (beyond ``clear`` held for ``clear_hold_s``), with hysteresis in between; one timed
  before the ``last_seen`` of an alarm that is not active (taken before its clear) is stale.

While no alarm is active, a device clear and a reading beyond ``clear`` still move
``last_seen`` (never back): they say the condition was over at their time, so a raise or a
reading beyond ``raise`` timed before them, arriving after them, is stale. Without that, a clear
that overtook its raise was ignored and the raise then opened an alarm nothing would clear.

A value between ``clear`` and ``raise`` keeps an ACTIVE alarm active (and restarts its clear
hold), but breaks a debounce: noise around the raise level must not accumulate into an alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from gridpatrol.site import Thresholds

Phase = Literal["normal", "pending", "active", "cleared"]
Transition = Literal["raise", "update", "clear"]
Severity = Literal["CRITICAL", "MAJOR", "MINOR", "WARNING"]
EffectKind = Literal["raise", "update", "clear", "ignore"]

SEVERITY_RANK: dict[str, int] = {"WARNING": 0, "MINOR": 1, "MAJOR": 2, "CRITICAL": 3}


@dataclass(frozen=True)
class AlarmState:
    """Where one (sensor, alarm type) stands; ``alarm_id`` is the active or the last alarm.

    ``last_seen`` is the active alarm's last sighting; while none is active, the latest time
    the sensor said the condition was over (the clear, a later clear or a reading beyond
    ``clear``), or None.
    """

    phase: Phase = "normal"
    pending_since: float | None = None
    clear_since: float | None = None
    alarm_id: str | None = None
    previous_alarm_id: str | None = None
    count: int = 0
    first_seen: float | None = None
    last_seen: float | None = None
    severity: Severity = "MAJOR"

    @property
    def active(self) -> bool:
        return self.phase == "active"


@dataclass(frozen=True)
class DeviceInput:
    """A transition as the device (or the bridge, for ``device_offline``) sent it.

    ``new_alarm_id`` is the id a raise would give a new alarm: derived by the caller from the
    message's dedup key, so a replayed message proposes the same id.
    """

    transition: Transition
    severity: Severity
    new_alarm_id: str


@dataclass(frozen=True)
class ReadingInput:
    """A measured value judged against the sensor's thresholds."""

    value: float
    thresholds: Thresholds
    new_alarm_id: str
    severity: Severity = "MAJOR"


LifecycleInput = DeviceInput | ReadingInput


@dataclass(frozen=True)
class Effect:
    """What the worker must do: create (raise), patch (update, clear) or only count (ignore)."""

    kind: EffectKind
    alarm: AlarmState  # the alarm after the step: id, count, first/last seen, severity
    reason: str = ""


def step(state: AlarmState, event: LifecycleInput, t: float) -> tuple[AlarmState, list[Effect]]:
    """Advance one (sensor, alarm type) by one input at time ``t`` (epoch seconds)."""
    if isinstance(event, DeviceInput):
        return _device(state, event, t)
    return _reading(state, event, t)


def _ignore(state: AlarmState, reason: str) -> tuple[AlarmState, list[Effect]]:
    return state, [Effect("ignore", state, reason)]


def _raise(
    state: AlarmState, alarm_id: str, severity: Severity, t: float
) -> tuple[AlarmState, list[Effect]]:
    """A new alarm; one that follows a cleared alarm refers to it."""
    new = AlarmState(
        phase="active",
        alarm_id=alarm_id,
        previous_alarm_id=state.alarm_id,
        count=1,
        first_seen=t,
        last_seen=t,
        severity=severity,
    )
    return new, [Effect("raise", new)]


def _repeat(state: AlarmState, severity: Severity, t: float) -> tuple[AlarmState, list[Effect]]:
    """A repeat while active: count it and escalate severity, never de-escalate."""
    escalated = severity if SEVERITY_RANK[severity] > SEVERITY_RANK[state.severity] else None
    new = replace(
        state,
        count=state.count + 1,
        last_seen=max(t, state.last_seen or t),
        severity=escalated or state.severity,
        clear_since=None,
    )
    return new, [Effect("update", new)]


def _clear(state: AlarmState, t: float) -> tuple[AlarmState, list[Effect]]:
    new = replace(
        state,
        phase="cleared",
        pending_since=None,
        clear_since=None,
        last_seen=max(t, state.last_seen or t),
    )
    return new, [Effect("clear", new)]


def _device(state: AlarmState, event: DeviceInput, t: float) -> tuple[AlarmState, list[Effect]]:
    if state.last_seen is not None and t < state.last_seen:
        # Sent before the last transition followed (a repeat or the clear): overtaken by it.
        return _ignore(state, "stale")
    if event.transition == "clear":
        if state.active:
            return _clear(state, t)
        # Nothing to clear, but its time is kept: its raise may still be on the way (sent
        # before it, without seq to order them) and must arrive stale, not open an alarm.
        return _ignore(_quiet_at(state, t), "clear_not_active")
    if state.active:
        return _repeat(state, event.severity, t)
    # An update for an alarm we never saw raised (its raise was lost upstream) still is one.
    return _raise(state, event.new_alarm_id, event.severity, t)


def beyond_raise(value: float, th: Thresholds) -> bool:
    return value >= th.raise_ if th.rising else value <= th.raise_


def beyond_clear(value: float, th: Thresholds) -> bool:
    return value <= th.clear if th.rising else value >= th.clear


def _reading(state: AlarmState, event: ReadingInput, t: float) -> tuple[AlarmState, list[Effect]]:
    th = event.thresholds
    late = state.last_seen is not None and t < state.last_seen
    if late and (not state.active or not beyond_raise(event.value, th)):
        # Taken before the clear (a buffer flushed late, a resend): it must not reopen the
        # alarm; while it is active, taken before its latest sighting, it must not clear it
        # either. A late reading beyond the raise level is a harmless repeat of an active one
        # (last_seen never goes back).
        return _ignore(state, "stale")
    if state.active:
        if beyond_raise(event.value, th):
            return _repeat(state, event.severity, t)
        if not beyond_clear(event.value, th):
            return replace(state, clear_since=None), []
        since = state.clear_since if state.clear_since is not None else t
        if t - since >= th.clear_hold_s:
            return _clear(state, t)
        return replace(state, clear_since=since), []
    if not beyond_raise(event.value, th):
        rested = state
        if state.phase == "pending":
            rested = replace(state, phase=_resting(state), pending_since=None)
        if beyond_clear(event.value, th):
            # Over at t: a reading beyond raise taken before it and arriving after it (a
            # buffer flushed late) must neither raise nor start a debounce. A value between
            # the levels is not kept: it would not have cleared an alarm raised before it.
            rested = _quiet_at(rested, t)
        return rested, []
    started = state.pending_since if state.phase == "pending" else None
    pending_since = t if started is None else started
    if t - pending_since >= th.debounce_s:
        return _raise(state, event.new_alarm_id, event.severity, t)
    return replace(state, phase="pending", pending_since=pending_since), []


def _quiet_at(state: AlarmState, t: float) -> AlarmState:
    """A state with no alarm active told the condition was over at ``t``: never before its
    ``last_seen``, as an input timed before that is stale."""
    return replace(state, last_seen=t)


def _resting(state: AlarmState) -> Phase:
    """Where a broken debounce returns to: CLEARED when an alarm came before, else NORMAL."""
    return "cleared" if state.alarm_id is not None else "normal"
