"""Alarm lifecycle per (sensor, alarm type): pure state machines with injected time.

The lifecycle is described in docs/alarm-bridge.md.

``step(state, input, t) -> (state, effects)`` never reads a clock, a database or the network:
the worker feeds it decoded inputs and turns the effects into candidate operations. Two kinds of
input drive it:

* device transitions (alarm envelopes, the device's last will, silence): followed as sent,
  except one sent before the alarm's last sighting (a late message: ignored as stale);
* threshold readings: NORMAL -> PENDING (beyond ``raise`` for ``debounce_s``) -> ACTIVE ->
  CLEARED (beyond ``clear`` held for ``clear_hold_s``), with hysteresis in between; one taken
  before the last sighting of an alarm that is not active (before its clear) is stale.

Sent (or taken) before the last sighting: timed before its ``last_seen`` and, by the device's
own time, before the sighting's (``last_device_seen``, see :func:`_before_last`). The two differ
for a message timed more than a day behind or 300 s ahead of its reception, which is timed at
its reception: a raise flushed from a day-old buffer and its clear flushed after it, or a raise
299 s ahead and its clear 301 s ahead, are in the device's order by its own times, while the
clear's time is before the raise's reception. Either time alone misjudges a clock reset
between the two (to 2000-01-01: the device's times go back, the receptions on). A sighting by
a reset clock (:data:`RESET_CLOCK_BEHIND_S` behind its reception) keeps its reception as the
device's time: its own, in 2000, would let a message sent before the reset, arriving late,
pass for one sent after it. The clock's later messages count at their own times carried
forward by as much as it was behind then (``reset_clock_lag``, see :func:`_own`): its
reception alone would make one sent after that sighting but timed before its reception (a
pack spread back from its own) stale.

A device's own clear (an envelope without seq, timed by the device and not at its reception),
whether it ended an alarm or found none active, keeps its time and its reception (``quiets``,
every such clear received in the last :data:`OVERTAKE_WINDOW_S`): a raise or update of the
device's own, alike, timed before one of them (or at its time and received after it: see
:func:`_overtaken`) and arriving after it, held up on its way at most :data:`OVERTAKE_WINDOW_S`
longer than that clear, is stale. Without that, a clear that overtook its raise was ignored and
the raise then opened an alarm nothing would clear. The hold-up is the raise's reception minus
its time, less the clear's: one clock's offset cancels out, so a clock running ahead hides no
overtaken raise. A clock set back between the two by B makes a raise stale when B is at most
the window plus how much longer the clear was held up than the raise, and then only until the
clock passes the clear's time: time stamps going backwards between messages (more than one
clock stamping them, two gateways) drop genuine raises sent up to that difference after the
clear, until the next update. The bridge's own downtime is hold-up too: an overtaken raise
queued for the bridge (its persistent session) while it was down, its clear received before, is
held up longer by the downtime and can open an alarm. Nothing else keeps or is judged by those
times: a reading, the bridge's own transitions (``device_offline``), a message ordered by its
seq or timed at its reception (its clock too far off to compare with another message's) would
make a genuine first alarm stale wherever two clocks disagree. Those times never date anything.

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
# How much longer than the clear that overtook it a raise may have been held up on its way and
# still be taken for sent before that clear: longer than the retries that hold a message up
# (a CoAP confirmable message is retransmitted for up to 93 s, RFC 7252 MAX_TRANSMIT_WAIT; an
# MQTT client notices a dead connection after 1.5 keep-alives, 90 s at the usual 60 s, and
# then sends again what it had not got through). Bounded: a device clock set back by more
# (plus how much longer the clear was held up than the raise) makes no raise stale, and one
# set back by less only the raises before the clock passes the clear's time again.
OVERTAKE_WINDOW_S = 120.0
# A raise stamped in its clear's very second and received within this many seconds after it
# is taken for a genuine one (a heartbeat clear, then the condition): an overtaken raise is
# held up by retries (seconds to 90 s), and a device sending only raise and clear would
# otherwise lose the whole incident.
TIE_SETTLE_S = 1.0
# The clears kept at most, the latest received: only a device repeating its state every few
# seconds sends more in the window, and then the latest are the ones a raise was sent before.
MAX_QUIETS = 8
# A clock this far behind a message's reception was reset (by a reboot, to 2000-01-01, say):
# a buffer held up by a device offline is only days old. A sighting by such a clock keeps
# its reception as the device's time (``last_device_seen``): its own is before every message
# sent before the reset. The adapters judge a seq starting over by it too.
RESET_CLOCK_BEHIND_S = 30 * 86400.0

Quiet = tuple[float, float]  # a device clear's own time and its reception


@dataclass(frozen=True)
class AlarmState:
    """Where one (sensor, alarm type) stands; ``alarm_id`` is the active or the last alarm.

    ``last_seen`` is the alarm's last sighting, its clear's time once it ended. ``quiets``: the
    own times and receptions of the device clears that said the condition was over, the one
    that ended the alarm and those with no alarm active (see :class:`DeviceInput`), those
    received at most :data:`OVERTAKE_WINDOW_S` before the latest (at most
    :data:`MAX_QUIETS`), in the order received; a raise drops them
    (``last_seen`` then orders). A state stored with the one clear timed last kept (``quiet_at``
    and ``quiet_received``, or ``quiet_at`` alone) loads with it alone (see
    :func:`gridpatrol.alarm_bridge.store.load_state`).
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
    # Last, with a default: states stored before it (their fields in this order) still load.
    quiets: tuple[Quiet, ...] = ()
    # The latest own time of the device among the alarm's sightings (its clear's included),
    # where ``last_seen`` holds the times given them (a message's time moved to its reception;
    # a reset clock's first sighting counts at its reception here too, see _own);
    # None in states stored before it was kept: then ``last_seen`` stands in for it.
    last_device_seen: float | None = None
    # How far a reset clock was behind the reception of its first sighting: its later
    # messages' own times, carried forward by as much, order them against ``last_device_seen``
    # (None: no reset clock seen, or a state stored before it was kept).
    reset_clock_lag: float | None = None

    @property
    def active(self) -> bool:
        return self.phase == "active"


@dataclass(frozen=True)
class DeviceInput:
    """A transition as the device (or the bridge, for ``device_offline``) sent it.

    ``new_alarm_id`` is the id a raise would give a new alarm: derived by the caller from the
    message's dedup key, so a replayed message proposes the same id.

    ``received_at``: the reception of a device's envelope that only its own time orders (it has
    no seq, and that time was not moved to its reception); None for the bridge's own
    transitions and for other envelopes. Only such a clear keeps its time (ending an alarm or
    with nothing active), and only such a raise or update is judged by it.
    """

    transition: Transition
    severity: Severity
    new_alarm_id: str
    received_at: float | None = None


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


def step(
    state: AlarmState, event: LifecycleInput, t: float, device_t: float | None = None
) -> tuple[AlarmState, list[Effect]]:
    """Advance one (sensor, alarm type) by one input at time ``t`` (epoch seconds);
    ``device_t``: the time its device gave it, where ``t`` was moved to its reception (None:
    ``t``)."""
    at = _At(t, t if device_t is None else device_t)
    if isinstance(event, DeviceInput):
        return _device(state, event, at)
    return _reading(state, event, at)


@dataclass(frozen=True)
class _At:
    """An input's time (``t``, maybe moved to its reception) and its device's (``own``)."""

    t: float
    own: float


def _before_last(state: AlarmState, at: _At) -> bool:
    """Whether an input was sent before the alarm's last sighting: timed before its
    ``last_seen`` and, by the device's own times, before the sighting's (when known). One
    moved to its reception, the other not, the device's times order them (the same clock, a
    day behind or minutes ahead); a clock reset in between, the times given them do. A reset
    clock's own time is carried forward by its lag (:func:`_own`), when one is kept."""
    if state.last_seen is None or at.t >= state.last_seen:
        return False
    if state.last_device_seen is None:
        return True
    lag = state.reset_clock_lag if _reset(at) else None
    return at.own + (lag or 0.0) < state.last_device_seen


def _reset(at: _At) -> bool:
    """Whether the input's clock was reset: :data:`RESET_CLOCK_BEHIND_S` behind its time."""
    return at.t - at.own >= RESET_CLOCK_BEHIND_S


def _own(at: _At, state: AlarmState) -> tuple[float, float | None]:
    """The device's time kept for a sighting, and the reset clock's lag kept with it: its own
    time, but a reset clock's is before every message the device sent before the reset. Its
    first sighting counts at its time (``t``, its reception) and keeps how far it was behind;
    its later ones count at their own times carried forward by as much, so they order among
    themselves by their own times (a pack spread back from its reception before the first
    sighting's, sent after it) and against a clock that was right by their receptions. A
    message of a clock that is right again (synchronised) ends the reset: the next reset (a
    reboot) counts anew from its first sighting, as a new alarm's does; the old lag would put
    its messages days before they were sent. A reset again with no message of a right clock
    in between keeps the lag: its messages count earlier than sent, and one timed before
    ``last_seen`` is stale, as every reset clock's was before the lag was kept."""
    if not _reset(at):
        return at.own, None
    if state.reset_clock_lag is None:
        return at.t, at.t - at.own
    return at.own + state.reset_clock_lag, state.reset_clock_lag


def _latest(at: _At, state: AlarmState) -> tuple[float, float | None]:
    """The device's time of the alarm's last sighting after this one, and the reset clock's
    lag (see :func:`_own`). A state stored before it was kept has its ``last_seen`` in its
    place: the message's own time alone would let a later one of its clock, sent before the
    sighting, end the alarm."""
    last = state.last_device_seen if state.last_device_seen is not None else state.last_seen
    own, lag = _own(at, state)
    return (own if last is None else max(own, last)), lag


def _ignore(state: AlarmState, reason: str) -> tuple[AlarmState, list[Effect]]:
    return state, [Effect("ignore", state, reason)]


def _raise(
    state: AlarmState, alarm_id: str, severity: Severity, at: _At
) -> tuple[AlarmState, list[Effect]]:
    """A new alarm; one that follows a cleared alarm refers to it. It keeps no reset clock's
    lag of the alarm before: a reset now is one of its own."""
    own, lag = _own(at, replace(state, reset_clock_lag=None))
    new = AlarmState(
        phase="active",
        alarm_id=alarm_id,
        previous_alarm_id=state.alarm_id,
        count=1,
        first_seen=at.t,
        last_seen=at.t,
        severity=severity,
        last_device_seen=own,
        reset_clock_lag=lag,
    )
    return new, [Effect("raise", new)]


def _repeat(state: AlarmState, severity: Severity, at: _At) -> tuple[AlarmState, list[Effect]]:
    """A repeat while active: count it and escalate severity, never de-escalate."""
    escalated = severity if SEVERITY_RANK[severity] > SEVERITY_RANK[state.severity] else None
    seen, lag = _latest(at, state)
    new = replace(
        state,
        count=state.count + 1,
        last_seen=max(at.t, state.last_seen or at.t),
        severity=escalated or state.severity,
        clear_since=None,
        last_device_seen=seen,
        reset_clock_lag=lag,
    )
    return new, [Effect("update", new)]


def _clear(state: AlarmState, at: _At) -> tuple[AlarmState, list[Effect]]:
    seen, lag = _latest(at, state)
    new = replace(
        state,
        phase="cleared",
        pending_since=None,
        clear_since=None,
        last_seen=max(at.t, state.last_seen or at.t),
        last_device_seen=seen,
        reset_clock_lag=lag,
    )
    return new, [Effect("clear", new)]


def _device(state: AlarmState, event: DeviceInput, at: _At) -> tuple[AlarmState, list[Effect]]:
    t = at.t
    if _before_last(state, at):
        # Sent before the last transition followed (a repeat or the clear): overtaken by it.
        return _ignore(state, "stale")
    if event.transition == "clear":
        if state.active:
            new, effects = _clear(state, at)
            if event.received_at is not None:
                # Kept as a clear with nothing active is: a repeat stamped in its very second,
                # held up on its way, would otherwise open an alarm nothing clears.
                new = _quiet(new, t, event.received_at)
            return new, effects
        if event.received_at is None:
            return _ignore(state, "clear_not_active")
        # Nothing to clear, but its time is kept: its raise may still be on the way (sent
        # before it, without seq to order them) and must arrive stale, not open an alarm.
        return _ignore(_quiet(state, t, event.received_at), "clear_not_active")
    if state.active:
        return _repeat(state, event.severity, at)
    if event.received_at is not None and _overtaken(state, t, event.received_at):
        # Sent before a clear that overtook it: the condition it reports is over.
        return _ignore(state, "stale")
    # An update for an alarm we never saw raised (its raise was lost upstream) still is one.
    return _raise(state, event.new_alarm_id, event.severity, at)


def _quiet(state: AlarmState, t: float, received_at: float) -> AlarmState:
    """A state with no alarm active that a device clear timed ``t``, received at
    ``received_at``, told the condition was over. Every clear is kept while it can make a
    raise stale: one received more than :data:`OVERTAKE_WINDOW_S` before this one cannot (a
    raise arriving after this one and timed before it was held up more than that longer).
    Keeping only the clear timed last missed the raises an earlier-timed one overtook: a clock
    ahead set back between two clears."""
    kept = [q for q in state.quiets if received_at - q[1] <= OVERTAKE_WINDOW_S]
    kept = sorted([*kept, (t, received_at)], key=lambda q: q[1])
    return replace(state, quiets=tuple(kept[-MAX_QUIETS:]))


def _overtaken(state: AlarmState, t: float, received_at: float) -> bool:
    """Whether a raise or update timed ``t``, received at ``received_at``, was sent before a
    kept clear and overtaken by it (:func:`_overtaken_by`)."""
    return any(_overtaken_by(quiet, t, received_at) for quiet in state.quiets)


def _overtaken_by(quiet: Quiet, t: float, received_at: float) -> bool:
    """Whether a raise or update timed ``t``, received at ``received_at``, was sent before the
    clear ``quiet`` and overtaken by it: timed before it, or at its time and received more
    than :data:`TIE_SETTLE_S` after it, and held up on its way (its reception minus its time)
    at most :data:`OVERTAKE_WINDOW_S` longer than the clear was. Both times are the device's:
    an offset of its clock cancels out. A clock stamping whole seconds (RFC 3339 without a
    fraction, epoch seconds) gives a raise and the clear sent in the same second after it one
    time: the raise held up by retries is taken for overtaken; one received within a second
    of the clear, for a genuine raise in the clear's second."""
    quiet_at, quiet_received = quiet
    if t > quiet_at or (t == quiet_at and received_at - quiet_received <= TIE_SETTLE_S):
        return False
    held_longer = (received_at - t) - (quiet_received - quiet_at)
    return held_longer <= OVERTAKE_WINDOW_S


def beyond_raise(value: float, th: Thresholds) -> bool:
    return value >= th.raise_ if th.rising else value <= th.raise_


def beyond_clear(value: float, th: Thresholds) -> bool:
    return value <= th.clear if th.rising else value >= th.clear


def _reading(state: AlarmState, event: ReadingInput, at: _At) -> tuple[AlarmState, list[Effect]]:
    th = event.thresholds
    t = at.t
    late = _before_last(state, at)
    if late and (not state.active or not beyond_raise(event.value, th)):
        # Taken before the clear (a buffer flushed late, a resend): it must not reopen the
        # alarm; while it is active, taken before its latest sighting, it must not clear it
        # either. A late reading beyond the raise level is a harmless repeat of an active one
        # (last_seen never goes back).
        return _ignore(state, "stale")
    if state.active:
        if beyond_raise(event.value, th):
            return _repeat(state, event.severity, at)
        if not beyond_clear(event.value, th):
            return replace(state, clear_since=None), []
        since = state.clear_since if state.clear_since is not None else t
        if t - since >= th.clear_hold_s:
            return _clear(state, at)
        return replace(state, clear_since=since), []
    if not beyond_raise(event.value, th):
        if state.phase == "pending":
            return replace(state, phase=_resting(state), pending_since=None), []
        return state, []
    started = state.pending_since if state.phase == "pending" else None
    pending_since = t if started is None else started
    if t - pending_since >= th.debounce_s:
        return _raise(state, event.new_alarm_id, event.severity, at)
    return replace(state, phase="pending", pending_since=pending_since), []


def _resting(state: AlarmState) -> Phase:
    """Where a broken debounce returns to: CLEARED when an alarm came before, else NORMAL."""
    return "cleared" if state.alarm_id is not None else "normal"
