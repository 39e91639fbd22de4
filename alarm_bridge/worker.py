"""The bridge worker: sensor messages in, candidate operations out, exactly once in effect.

Per batch of MQTT messages: one SQLite transaction writes every dedup key, lifecycle state,
outbox entry and dead letter the batch causes; only after the commit are the messages
acknowledged, in arrival order, and then the dead letters published. A crash before the
commit leaves the messages unacknowledged (the persistent session redelivers them); a crash
after it finds their dedup keys on redelivery. Camera snapshots are fetched on a side thread
and added by PATCH later, so a slow camera never holds up an alarm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from gridpatrol.alarm_bridge import candidates, store
from gridpatrol.alarm_bridge.adapters import (
    DEVICE_OFFLINE,
    MAX_AHEAD_S,
    Adapted,
    AlarmInput,
    Rejected,
    adapt,
    alarm_id_for,
    seq_mark,
    seq_verdict,
)
from gridpatrol.alarm_bridge.inbox import Inbox
from gridpatrol.alarm_bridge.lifecycle import DeviceInput, Effect, step
from gridpatrol.alarm_bridge.uptime import Uptime
from gridpatrol.api.client import candidate_closed, merge_patches
from gridpatrol.ingest.messages import (
    DEAD_LETTER_PAYLOAD_BYTES,
    Frame,
    MessageError,
    dead_letter,
    decode_frame,
)
from gridpatrol.ingest.reliable import (
    DEAD_LETTER_LOG_BYTES,
    ERROR_CHARS,
    error_text,
    fit_dead_letter,
)
from gridpatrol.ingest.topics import (
    TopicKind,
    deadletter_topic,
    frame_topic,
    parse_topic,
    wildcard,
)
from gridpatrol.site import Sensor, Site

if TYPE_CHECKING:
    from gridpatrol.api.client import Outbox, OutboxTxn
    from gridpatrol.ingest.mqtt import Message, MqttConnection

log = logging.getLogger(__name__)

COMPONENT = "alarm_bridge"
BATCH = 100  # messages per transaction (the broker's in-flight window may make it fewer)
SILENCE_FACTOR = 3.0
# How often the connection's history is written while its spans do not change: what a crash
# loses of it (the next run counts that much less listening).
UPTIME_SAVE_S = 60.0
DEDUP_RETENTION_S = 7 * 86400
SNAPSHOT_TIMEOUT_S = 5.0
SNAPSHOT_QUEUE = 256
SNAPSHOT_SWEEP_S = 30.0  # how often snapshots still wanted (a full queue, a restart) are queued
SNAPSHOT_WORKERS = 3  # concurrent requests: one silent camera must not delay the others
# The SQLite primary result codes a snapshot's attachment may fail with and succeed with at
# the next sweep: busy, locked, disk I/O, disk full. A read-only file, a missing table or
# column fails the same way every time.
PASSING_SQLITE_CODES = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL}
)
# The oldest newest-frame used when a camera does not answer its snapshot request, and the
# oldest frame a reply may carry (one older is taken for no reply): a camera that stopped
# streaming hours ago must not put its last picture on a new alarm.
FALLBACK_MAX_AGE_S = 120.0
# A reply's time is that of the clock of the component answering. The newest frame the camera
# streamed tells how far that clock is from the bridge's (its reception minus its time); with
# no such frame (none seen, or a bare JPEG), a reply is taken for stale only once it is this
# much older than the maximum age: the clocks may differ by as much as a device's may be ahead
# (MAX_AHEAD_S) without an old frame being told from a fresh one.
REPLY_CLOCK_TOLERANCE_S = MAX_AHEAD_S
# Dead letters not handed to the client (not connected to the broker, its queue full, or it
# failed) wait in the state database, written with their batch, and are published again every
# few seconds (a refusal is logged at most once as often); beyond this many the oldest are
# dropped (logged and counted): a dead letter carries at most 64 KiB of payload.
DEAD_LETTER_BACKLOG = 1000
DEAD_LETTER_RETRY_S = 5.0
# Repeats of an active alarm are merged for this long into one PATCH per candidate: a
# chattering sensor costs the API a request per second, not one per message.
PATCH_COALESCE_S = 1.0
PATCH_CHECK_S = 0.05
# Updates handed to the outbox per check, when it is idle. The outbox sends a round's creates
# before its patches and merges each candidate's patches, so a new alarm's create waits at
# most for one round of updates, never behind a long queue of them.
PATCH_HANDOVER = 500
PATCH_IDLE_DEPTH = 1
# Messages whose acknowledgement was void, remembered until the broker sends them again on the
# resumed session: more than the inbox and the broker's in-flight window can hold.
REDELIVERY_MEMORY = 50_000
# The broker resends a session's unacknowledged messages right after the reconnection. Past this
# long after the first message of the resumed session, a remembered one is not coming any more,
# and the same topic, packet id and bytes are a new message (packet ids repeat, readings too).
RESEND_BURST_S = 30.0


@dataclass(frozen=True)
class FirstReception:
    """When a message whose acknowledgement was void was first received, and in which session."""

    received_at: datetime
    session: int


RedeliveryKey = tuple[str, int, bytes]  # topic, packet id, payload digest


def _redelivery_key(message: Message) -> RedeliveryKey:
    return (message.topic, message.mid, hashlib.sha256(message.payload).digest())


# Where a message stands in its sensor's seq order: without a seq, overtaken by later ones
# ("late"), or after all the sensor's messages before it (a new seq, boot or restart).
Order = Literal["unnumbered", "late", "numbered"]


@dataclass
class Counters:
    received: int = 0
    created: int = 0
    updated: int = 0
    cleared: int = 0
    dead_letters: int = 0
    dead_letters_waiting: int = 0  # not published yet: kept in the state database (a gauge)
    dead_letters_lost: int = 0  # dropped: over DEAD_LETTER_BACKLOG, or refused for good
    duplicates: int = 0
    out_of_order: int = 0
    seq_restarts: int = 0  # a counter that wrapped or a device that rebooted without boot_id
    # timed more than MAX_AHEAD_S after or MAX_BEHIND_S before reception (device clock)
    moved_to_reception: int = 0
    ignored: int = 0
    retained_alarms: int = 0  # the broker's stored copy of an alarm: not news
    # A device transition timed before the alarm's last one; a reading before an ended one's.
    stale: int = 0
    closed_updates: int = 0  # updates of a candidate the API refused for good: dropped
    snapshots: int = 0
    snapshot_fallbacks: int = 0
    snapshot_missing: int = 0
    snapshot_deferred: int = 0  # queue full or media cut off: left for the next sweep
    snapshot_failed: int = 0  # raised (a bug, the database): see Bridge._snapshot_failed
    snapshot_stale: int = 0  # a reply with a frame older than the maximum age: not used
    snapshot_retimed: int = 0  # a reply timed too far after its reception: timed at it
    reasons: dict[str, int] = field(default_factory=dict)

    def progress(self, rate: float, depth: int) -> str:
        """The progress line: what came in, what it became, what was not used and why."""
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.reasons.items()))
        return (
            f"bridge: {rate:.1f} alarms/s, candidates {self.created} created / {self.updated}"
            f" updated / {self.cleared} cleared, dead letters {self.dead_letters}"
            f"{f' ({reasons})' if reasons else ''}, dead letters waiting"
            f" {self.dead_letters_waiting}, lost {self.dead_letters_lost}, duplicates"
            f" {self.duplicates}, out of order"
            f" {self.out_of_order}, seq restarts {self.seq_restarts}, stale {self.stale},"
            f" updates of closed candidates dropped {self.closed_updates},"
            f" ignored {self.ignored}, retained alarms {self.retained_alarms}, timed at"
            f" reception {self.moved_to_reception}, snapshots {self.snapshots} (fallback"
            f" {self.snapshot_fallbacks}, missing {self.snapshot_missing}, deferred"
            f" {self.snapshot_deferred}, failed {self.snapshot_failed}, stale replies"
            f" {self.snapshot_stale}, replies timed at reception {self.snapshot_retimed}),"
            f" outbox depth {depth}"
        )


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    topic: str
    payload: bytes
    received_at: datetime
    # What the reason alone does not say: many causes share one (``bad_ts`` for a time without
    # an offset and for one out of range); published as ``error``, at most ERROR_CHARS long.
    detail: str = ""

    def body(self) -> bytes:
        """The JSON published, its payload cut to :data:`DEAD_LETTER_PAYLOAD_BYTES`."""
        return dead_letter(
            self.reason,
            self.topic,
            self.payload,
            self.received_at,
            keep=DEAD_LETTER_PAYLOAD_BYTES,
            error=self.detail[:ERROR_CHARS] or None,
        )


@dataclass(frozen=True)
class NewCandidate:
    candidate_id: str
    trace: bytes
    body: dict[str, object]


@dataclass
class PendingUpdate:
    """The repeats of one candidate within a batch: only the last ones shape its PATCH, and
    the newest-timed repeat its measurements."""

    since: float
    # The last update's effect, with the newest-timed repeat's input (for its measurements).
    update: tuple[AlarmInput, Effect] | None = None
    clear: tuple[AlarmInput, Effect] | None = None  # a clear after the last update

    def repeat(self, item: AlarmInput, effect: Effect) -> None:
        """A further repeat: a late one (timed before the newest so far) keeps the newest's
        measurements, and a clear before it is overtaken."""
        if self.update is not None and item.t < self.update[0].t:
            item = self.update[0]
        self.update, self.clear = (item, effect), None

    def patch(self) -> dict[str, object]:
        body = candidates.update_patch(*self.update) if self.update else {}
        if self.clear is not None:
            body = merge_patches(body, candidates.update_patch(*self.clear))
        return body


@dataclass
class BatchResult:
    dead: list[DeadLetter] = field(default_factory=list)
    snapshots: list[tuple[str, str]] = field(default_factory=list)  # (candidate id, camera id)
    creates: list[NewCandidate] = field(default_factory=list)
    view: store.StateBatch | None = None
    updates: dict[str, PendingUpdate] = field(default_factory=dict)
    # (sensor id, packet) of the statuses handled or found resent: kept in the state database
    # until their acknowledgement is known to have reached the broker.
    status_packets: list[tuple[str, store.StatusPacket]] = field(default_factory=list)

    def state(self, conn: sqlite3.Connection) -> store.StateBatch:
        if self.view is None:
            self.view = store.StateBatch(conn)
        return self.view


class BridgeCore:
    """Message handling inside a transaction; no network, time injected by the caller."""

    def __init__(self, site: Site, *, prefix: str | None = None) -> None:
        self.site = site
        self.prefix = prefix or site.mqtt.prefix
        self.registry: dict[str, Sensor] = {s.id: s for s in site.sensors}
        self.counts = Counters()
        self._clock_off: set[str] = set()  # sensors already logged for a clock ahead or behind
        self._unit_assumed: set[str] = set()  # sensors already logged for a unit not configured
        # The connection's history last written (its start and spans) and when.
        self._uptime_saved: tuple[float, list[tuple[float, float]], float] | None = None
        # The silence each sensor with an expected interval may keep (3 x that interval).
        self._silence_limits = {
            s.id: SILENCE_FACTOR * s.expected_interval_s
            for s in site.sensors
            if s.expected_interval_s is not None
        }
        self._site_order = {s.id: i for i, s in enumerate(site.sensors)}
        self._watching = False  # every sensor of _silence_limits is watched (from a check)
        # Before when no sensor can fall silent, as of the last full check (at the time and
        # with the connection history noted with it): see check_silence.
        self._silence_due: tuple[float, float, object] | None = None

    # -- messages -------------------------------------------------------------------------------

    def handle(
        self,
        txn: OutboxTxn,
        topic: str,
        payload: bytes,
        received_at: datetime,
        out: BatchResult,
        *,
        retained: bool = False,
        mid: int | None = None,
        dup: bool = False,
    ) -> None:
        """One message from a sensor's alarm or status topic; anything unusable becomes a
        dead letter.

        ``retained``: the broker's stored copy, sent on (re)subscription, not news. ``mid``:
        its packet id (None for QoS 0); ``dup``: it may be the broker's resend of one whose
        acknowledgement was void (the MQTT DUP flag, in the opening burst of a session the
        broker kept).
        """
        self.counts.received += 1
        match = parse_topic(self.prefix, topic)
        if match is None and retained:
            # A retained copy on a topic whose sensor id is not valid is replayed on every
            # subscription (each reconnection, each restart): dead-lettered when it was sent
            # live, it would be dead-lettered again each time.
            if topic.endswith("/alarm"):
                self.counts.retained_alarms += 1
                log.info("retained copy on %s ignored", topic)
            else:
                self.counts.ignored += 1
            return
        if match is not None and match.kind == "sensor_status":
            status = payload.strip().lower().decode("utf-8", "replace")
            if status not in ("online", "offline") and retained:
                self.counts.ignored += 1  # replayed as above: dead-lettered when sent live
                return
            if status not in ("online", "offline"):
                why = Rejected("bad_status", "expected online or offline")
                self.reject(out, why, topic, payload, received_at)
                return
            sensor = self.registry.get(match.id)
            if sensor is None and retained:
                # Replayed on every subscription, e.g. the last status of a sensor since
                # removed from the site file: not news.
                self.counts.ignored += 1
                return
            if sensor is None:
                # Sent live: a device not registered yet, or an id mistyped in the site file,
                # whose last will must not go unseen.
                why = Rejected("unknown_sensor", match.id)
                self.reject(out, why, topic, payload, received_at)
                return
            packet = (mid, hashlib.sha256(payload).hexdigest()) if mid is not None else None
            now = received_at.timestamp()
            self._status(txn, sensor, status, retained, now, out, packet, dup=dup)
            return
        if match is None or match.kind != "sensor_alarm":
            self.reject(out, Rejected("bad_topic", topic), topic, payload, received_at)
            return
        if retained:
            # Replayed on every subscription, also once its dedup key is long pruned: an old
            # alarm, not a sign of life.
            self.counts.retained_alarms += 1
            log.info("sensor %s: retained copy on its alarm topic ignored", match.id)
            return
        adapted = adapt(
            payload, sensor_id=match.id, registry=self.registry, received_at=received_at
        )
        now = received_at.timestamp()
        if isinstance(adapted, Rejected):
            if adapted.heard:
                self._heard(txn, self.registry[match.id], now, out)
            self.reject(out, adapted, topic, payload, received_at)
            return
        if not store.claim(txn.conn, adapted.sensor_id, adapted.event_key, now):
            self.counts.duplicates += 1
            return
        view = out.state(txn.conn)
        if _signs_life(adapted):
            self._heard(txn, self.registry[adapted.sensor_id], now, out)
        self._note_moved(adapted.inputs[0])
        self._note_unit(adapted)
        order = self._sequence(view, adapted.inputs[0])
        if order == "late":
            return
        for item in adapted.inputs:
            if order == "numbered":
                item = _after_last(view, item)
            view.append_trace(item.sensor.id, _trace_entry(item))
            self._advance(txn, item, now, out)

    def _sequence(self, view: store.StateBatch, item: AlarmInput) -> Order:
        """Check the message's ``seq`` (if any) against the sensor's last; remember it if new."""
        if item.seq is None:
            return "unnumbered"
        sensor_id = item.sensor.id
        last = view.last_seq(sensor_id)
        verdict = seq_verdict(last, item, view.old_boots(sensor_id))
        if verdict in ("late", "superseded"):
            # A superseded boot's message, timed no later than the new boot's last, was sent
            # before the device rebooted: followed now, a raise or update would reopen what
            # the new boot has since cleared.
            self.counts.out_of_order += 1
            log.info(
                "sensor %s: seq %s (boot %s) out of order, ignored",
                sensor_id,
                item.seq,
                item.boot_id,
            )
            return "late"
        view.set_seq(sensor_id, seq_mark(item, item.seq))
        if verdict == "restart":
            self.counts.seq_restarts += 1
            assert last is not None
            log.info("sensor %s: seq restarted at %s (was %s)", sensor_id, item.seq, last[1])
        return "numbered"

    def _note_moved(self, item: AlarmInput) -> None:
        if item.moved_s == 0:
            return
        self.counts.moved_to_reception += 1
        if item.sensor.id not in self._clock_off:
            self._clock_off.add(item.sensor.id)
            log.warning(
                "sensor %s: timed %.0f s %s its reception (device clock?); timed at reception",
                item.sensor.id,
                abs(item.moved_s),
                "after" if item.moved_s > 0 else "before",
            )

    def _note_unit(self, adapted: Adapted) -> None:
        unit = adapted.assumed_unit
        if unit is None or adapted.sensor_id in self._unit_assumed:
            return
        self._unit_assumed.add(adapted.sensor_id)
        log.warning(
            "sensor %s: thresholds without a unit, SenML readings in %r read as its"
            " measurement; set unit: %r in its thresholds",
            adapted.sensor_id,
            unit,
            unit,
        )

    def reject(
        self, out: BatchResult, why: Rejected, topic: str, payload: bytes, received_at: datetime
    ) -> None:
        self.counts.dead_letters += 1
        self.counts.reasons[why.reason] = self.counts.reasons.get(why.reason, 0) + 1
        log.warning("dead letter from %s: %s %s", topic, why.reason, why.detail)
        out.dead.append(DeadLetter(why.reason, topic, payload, received_at, why.detail))

    def _advance(self, txn: OutboxTxn, item: AlarmInput, now: float, out: BatchResult) -> None:
        view = out.state(txn.conn)
        state = view.state(item.sensor.id, item.alarm_type)
        new_state, effects = step(state, item.event, item.t, item.device_t)
        view.set_state(item.sensor.id, item.alarm_type, new_state)
        for effect in effects:
            self._apply(txn, item, effect, now, out)

    def _apply(
        self, txn: OutboxTxn, item: AlarmInput, effect: Effect, now: float, out: BatchResult
    ) -> None:
        if effect.kind == "raise":
            assert effect.alarm.alarm_id is not None
            trace = _trace_document(item.sensor, store.trace(txn.conn, item.sensor.id))
            sha = hashlib.sha256(trace).hexdigest()
            body = candidates.create_body(item, effect, self.site.policy, sha, now)
            out.creates.append(NewCandidate(effect.alarm.alarm_id, trace, body))
            self.counts.created += 1
            log.info(
                "sensor %s: %s raised as candidate %s",
                item.sensor.id,
                item.alarm_type,
                effect.alarm.alarm_id,
            )
            if item.sensor.camera is not None:
                out.snapshots.append((effect.alarm.alarm_id, item.sensor.camera))
                # Kept until the snapshot is attached, so a restart still fetches it.
                store.want_snapshot(txn.conn, effect.alarm.alarm_id, item.sensor.camera, now)
        elif effect.kind in ("update", "clear"):
            assert effect.alarm.alarm_id is not None
            pending = out.updates.setdefault(effect.alarm.alarm_id, PendingUpdate(now))
            if effect.kind == "update":
                pending.repeat(item, effect)
                self.counts.updated += 1
            else:
                pending.clear = (item, effect)
                self.counts.cleared += 1
                log.debug("sensor %s: %s cleared", item.sensor.id, item.alarm_type)
        elif effect.reason == "stale":
            self.counts.stale += 1
            log.info("sensor %s: %s sent before its last, ignored", item.sensor.id, item.alarm_type)
        else:
            self.counts.ignored += 1

    def finish(self, txn: OutboxTxn, out: BatchResult) -> None:
        """Queue the batch's new candidates: every trace first, then the creates together.

        Adjacent creates leave the outbox as one batch request; a trace is uploaded before
        the create that refers to it.
        """
        if out.updates:
            view = out.state(txn.conn)
            for candidate_id, pending in out.updates.items():
                view.pend_patch(candidate_id, pending.patch(), pending.since)
        if out.view is not None:
            out.view.flush()
        for new in out.creates:
            txn.add_evidence(new.trace, "application/json")
        for new in out.creates:
            txn.create_candidate(new.body, new.candidate_id)

    def flush_patches(
        self,
        txn: OutboxTxn,
        limit: int = -1,
        since_before: float = float("inf"),
        since_after: float = float("inf"),
    ) -> int:
        """Move coalesced updates into the outbox (after the creates they follow): those
        pending since before ``since_before`` or after ``since_after`` (all by default).

        An update of a candidate the API has refused for good (rejected, merged or closed:
        a patch answered 410, or its create refused) is dropped: it would only be refused again.
        """
        pending = store.take_pending(txn.conn, limit, since_before, since_after)
        for candidate_id, patch in pending:
            if candidate_closed(txn.conn, candidate_id):
                self.counts.closed_updates += 1
                log.debug("candidate %s is closed; its update dropped", candidate_id)
                continue
            txn.patch_candidate(candidate_id, patch)
        return len(pending)

    # -- device_offline -------------------------------------------------------------------------

    def _offline(
        self, txn: OutboxTxn, sensor: Sensor, key: str, raise_: bool, now: float, out: BatchResult
    ) -> None:
        """Raise or clear the sensor's device_offline: the bridge's own decision, timed now.

        Never before the alarm's last_seen: a message received just before a silence check
        that raised is handled after it, and must still clear the alarm, not be stale.
        """
        last_seen = out.state(txn.conn).state(sensor.id, DEVICE_OFFLINE).last_seen
        event = DeviceInput(
            transition="raise" if raise_ else "clear",
            severity="MAJOR",
            new_alarm_id=alarm_id_for(sensor.id, DEVICE_OFFLINE, key),
        )
        t = max(now, last_seen if last_seen is not None else now)
        self._advance(txn, AlarmInput(sensor, DEVICE_OFFLINE, key, t, event), now, out)

    def _status(
        self,
        txn: OutboxTxn,
        sensor: Sensor,
        status: str,
        retained: bool,
        now: float,
        out: BatchResult,
        packet: store.StatusPacket | None = None,
        *,
        dup: bool = False,
    ) -> None:
        view = out.state(txn.conn)
        last = view.last_status(sensor.id)
        if dup and packet is not None and last is not None and packet in last.packets:
            # The broker's resend of a status already handled, its acknowledgement void (the
            # connection dropped during the commit, or a crash after it): unlike an alarm, a
            # status has no dedup key, and handled again a last will would raise once more
            # what later readings cleared. Its packet stays kept until this ack counts.
            out.status_packets.append((sensor.id, packet))
            self.counts.duplicates += 1
            return
        if retained and last is not None and last.status == status:
            # The broker replays retained status on every (re)subscription: an offline the
            # sensor's readings have since cleared, or an online a dead sensor left behind.
            self.counts.ignored += 1
            return
        view.set_status(sensor.id, status, packet)
        if packet is not None:
            out.status_packets.append((sensor.id, packet))
        if status == "offline" and not view.state(sensor.id, DEVICE_OFFLINE).active:
            self._offline(txn, sensor, f"lwt:{now:.6f}", True, now, out)
        elif status == "online":
            self._heard(txn, sensor, now, out)

    def _heard(self, txn: OutboxTxn, sensor: Sensor, now: float, out: BatchResult) -> None:
        """The sensor is alive: silence counts from now, and a device_offline clears."""
        out.state(txn.conn).heard(sensor.id, now)
        limit = self._silence_limits.get(sensor.id)
        if self._silence_due is not None and limit is not None:
            # Listened to for no longer than the clock runs: not silent before now + limit.
            checked, due, history = self._silence_due
            self._silence_due = (checked, min(due, now + limit), history)
        self._back_online(txn, sensor, now, out)

    def _back_online(self, txn: OutboxTxn, sensor: Sensor, now: float, out: BatchResult) -> None:
        if out.state(txn.conn).state(sensor.id, DEVICE_OFFLINE).active:
            self._offline(txn, sensor, f"online:{now:.6f}", False, now, out)

    def silence_horizon(self) -> float:
        """The longest silence judged: 3 x the largest expected_interval_s."""
        intervals = [s.expected_interval_s or 0.0 for s in self.site.sensors]
        return SILENCE_FACTOR * max(intervals, default=0.0)

    def check_silence(self, txn: OutboxTxn, now: float, out: BatchResult, uptime: Uptime) -> int:
        """Raise ``device_offline`` for sensors silent longer than 3 x expected_interval_s.

        Call only while connected. Silence is the time connected since the sensor's last
        message (since the bridge first watched it, for a sensor never heard), see
        :class:`Uptime`: while the bridge was down or cut off, a sensor's messages waited in
        the persistent session, but neither a link that flaps nor a restart of the bridge
        restarts the count. The bookkeeping is saved here for the next run (see
        :meth:`save_uptime`).
        """
        raised = 0
        if not self._silence_checked(uptime, now):
            raised = self._raise_silent(txn, now, out, uptime)
        self.save_uptime(txn, uptime, now)
        return raised

    def _silence_checked(self, uptime: Uptime, now: float) -> bool:
        """Whether no sensor can have fallen silent since the last full check: before the
        earliest time one could (listening advances no faster than the clock), with the
        connection history as it was then (a clock set back or a reconnection changes it) and
        the clock not set back since. A sensor heard meanwhile brings that time forward to
        its own (see :meth:`_heard`)."""
        if self._silence_due is None:
            return False
        checked, due, history = self._silence_due
        return checked <= now < due and history == _history(uptime)

    def _raise_silent(self, txn: OutboxTxn, now: float, out: BatchResult, uptime: Uptime) -> int:
        """Raise the silent sensors' device_offline, found in one query of the sensors not
        offline yet (a sensor never watched is first watched now: a new sensor, or the
        bridge's first run), and note when the next could fall silent."""
        if not self._watching:
            store.watch_all(txn.conn, self._silence_limits, now)
            self._watching = True
        silent: list[tuple[int, str, float]] = []
        due = float("inf")
        for sensor_id, since in store.unsilenced(txn.conn):
            limit = self._silence_limits.get(sensor_id)
            if limit is None:
                continue
            left = limit - uptime.connected_for(since, now)
            if left >= 0:
                due = min(due, now + left)
            else:
                silent.append((self._site_order[sensor_id], sensor_id, since))
        raised = 0
        for _, sensor_id, since in sorted(silent):
            if not out.state(txn.conn).state(sensor_id, DEVICE_OFFLINE).active:
                self._offline(txn, self.registry[sensor_id], f"silence:{since:.6f}", True, now, out)
                raised += 1
        self._silence_due = (now, due, _history(uptime))
        return raised

    def save_uptime(
        self, txn: OutboxTxn, uptime: Uptime, now: float, *, final: bool = False
    ) -> bool:
        """Keep the connection's history for the next run, so that a restart does not restart
        the silence; True if written.

        Written when its spans changed (a reconnection), else at most every
        :data:`UPTIME_SAVE_S`, and at a stop (``final``): a write a second would cost a
        commit and its sync every second on an idle bridge. What the next run reads may be
        that much older than the last look, which only moves the start of its downtime span
        earlier: sensors are judged less silent by up to that much, never more.
        """
        state = uptime.state()
        if state is None:
            return False
        started, _, gaps = state
        saved = self._uptime_saved
        if (
            not final
            and saved is not None
            and saved[:2] == (started, gaps)
            and 0 <= now - saved[2] < UPTIME_SAVE_S
        ):
            return False
        store.save_uptime(txn.conn, state)
        self._uptime_saved = (started, gaps, now)
        return True

    def restore_uptime(self, txn: OutboxTxn, uptime: Uptime) -> None:
        """Continue the connection bookkeeping of the bridge's last run (before any look).

        The sensors no longer in the site file are forgotten: one put back later is judged
        from when it is watched again, not silent through its absence."""
        forgotten = store.forget_unwatched(txn.conn, self.registry)
        if forgotten:
            log.info("sensors no longer in the site file: %d silence rows forgotten", forgotten)
        state = store.load_uptime(txn.conn)
        if state is not None:
            uptime.restore(state)

    # -- snapshots --------------------------------------------------------------------------------

    def attach_snapshot(self, txn: OutboxTxn, candidate_id: str, frame: Frame) -> bool:
        """Queue the snapshot and its patch; False (nothing queued) for a closed candidate."""
        if candidate_closed(txn.conn, candidate_id):
            log.info("candidate %s is closed; its snapshot dropped", candidate_id)
            return False
        sha = txn.add_evidence(frame.image, frame.header.content_type)
        patch = candidates.snapshot_patch(
            sha, frame.header.ts.timestamp(), frame.header.width, frame.header.height
        )
        txn.patch_candidate(candidate_id, patch)
        return True


def _may_pass(exc: Exception) -> bool:
    """Whether a database error may be gone at the next attempt (by its SQLite result code;
    extended codes, such as SQLITE_IOERR_WRITE, carry the primary one in their low byte)."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return isinstance(code, int) and (code & 0xFF) in PASSING_SQLITE_CODES


def _history(uptime: Uptime) -> object:
    """What of the connection history a silence depends on: its start and spans."""
    state = uptime.state()
    return None if state is None else (state[0], state[2])


def _signs_life(adapted: Adapted) -> bool:
    """Whether a message tells its sensor is alive: all but a ``device_offline`` raise or
    update (a gateway's word that the device is gone). Taken for one, it cleared the alarm
    it repeats, and then opened a new one: a candidate per update."""
    return any(
        item.alarm_type != DEVICE_OFFLINE
        or not isinstance(item.event, DeviceInput)
        or item.event.transition == "clear"
        for item in adapted.inputs
    )


def _after_last(view: store.StateBatch, item: AlarmInput) -> AlarmInput:
    """A numbered device transition, timed no earlier than the alarm's last one: its seq
    (new, a new boot or a restart) says it was sent after everything before it, while the
    clock of a rebooted device may be behind the old one's: its transitions would be stale."""
    if not isinstance(item.event, DeviceInput):
        return item
    last_seen = view.state(item.sensor.id, item.alarm_type).last_seen
    if last_seen is None or item.t >= last_seen:
        return item
    return replace(item, t=last_seen, moved_s=item.moved_s - (last_seen - item.t))


def _snapshot_wanted(conn: sqlite3.Connection, candidate_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM bridge_snapshot_wanted WHERE candidate_id = ?", (candidate_id,)
    ).fetchone()
    return row is not None


def _trace_entry(item: AlarmInput) -> dict[str, object]:
    entry: dict[str, object] = {"t": candidates.iso(item.t), "alarm_type": item.alarm_type}
    event = item.event
    if isinstance(event, DeviceInput):
        entry.update(transition=event.transition, severity=event.severity)
    else:
        entry["value"] = event.value
    if item.measurements:
        entry["measurements"] = candidates.senml(item.measurements)
    return entry


def _trace_document(sensor: Sensor, entries: list[str]) -> bytes:
    """The sensor-trace evidence; the stored readings are spliced in as they are (JSON)."""
    doc: dict[str, object] = {
        "sensor_id": sensor.id,
        "kind": sensor.kind,
        "location": candidates.location(sensor),
        "thresholds": sensor.thresholds.model_dump(by_alias=True) if sensor.thresholds else None,
        "readings": [],
    }
    head = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return (head[: -len("[]}")] + "[" + ",".join(entries) + "]}").encode()


class Bridge:
    """Runs :class:`BridgeCore` against the broker and the outbox until ``stop()``."""

    def __init__(
        self,
        site: Site,
        outbox: Outbox,
        mqtt: MqttConnection,
        media: MqttConnection | None = None,
        *,
        prefix: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        progress_s: float = 5.0,
        fallback_max_age_s: float | None = None,
    ) -> None:
        if not progress_s > 0:
            raise ValueError(f"progress_s must be positive, got {progress_s}")
        self.fallback_max_age_s = fallback_max_age_s or FALLBACK_MAX_AGE_S
        self.core = BridgeCore(site, prefix=prefix)
        self.prefix = self.core.prefix
        self.outbox = outbox
        self.mqtt = mqtt
        self.media = media
        self.clock = clock
        # The housekeeping's schedule: a wall clock stepped back would stop it for as long.
        self.monotonic = monotonic
        self.progress_s = progress_s
        self._stop = threading.Event()
        self._snapshots: queue.Queue[tuple[str, str]] = queue.Queue(SNAPSHOT_QUEUE)
        self._snapshot_jobs: set[str] = set()  # candidates queued or being served
        self._jobs_lock = threading.Lock()
        # Each linked camera's newest frame and its reception, written by every media thread.
        self._newest: dict[str, tuple[bytes, datetime]] = {}
        self._newest_lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._received_at_progress = 0
        # Messages whose ack was void, oldest first, until the resumed session resends them.
        self._redelivery: OrderedDict[RedeliveryKey, FirstReception] = OrderedDict()
        # The newest session seen, the reception of its first message (its resend burst) and
        # whether the broker kept the session: a new one resends nothing.
        self._burst: tuple[int, datetime | None, bool] = (0, None, False)
        self._held: Message | None = None  # the first message of the next session's batch
        # The session whose opening burst may resend the statuses whose packets the state
        # database keeps: the one after the connection their acks were void on (a previous
        # run's: the first this run receives on). And the newest session at whose start or
        # past whose burst they were all forgotten, as no resend of theirs could come any more.
        self._status_packets_due: int | None = None
        self._status_packets_forgotten = 0
        self._uptime = Uptime(self.core.silence_horizon())
        self._dead_letters_held_logged: float | None = None  # when a refusal was last logged
        with outbox.transaction() as txn:
            store.init(txn.conn)
            self.core.restore_uptime(txn, self._uptime)
            (waiting,) = txn.conn.execute("SELECT COUNT(*) FROM bridge_dead_letter").fetchone()
        self.core.counts.dead_letters_waiting = int(waiting)  # left by an earlier run
        # Exactly the sensors' alarm and status topics: a device's other subtopics are not ours.
        wake = threading.Event()
        kinds: tuple[TopicKind, ...] = ("sensor_alarm", "sensor_status")
        self._inbox = Inbox(
            [
                mqtt.subscribe(wildcard(self.prefix, kind), qos=1, maxsize=20000, wake=wake)
                for kind in kinds
            ],
            wake,
        )
        # The newest frame of each linked camera: the snapshot fallback.
        linked = sorted({s.camera for s in site.sensors if s.camera is not None})
        self._frame_subs = {}
        if media is not None:
            self._frame_subs = {
                cam: media.subscribe(frame_topic(self.prefix, cam), qos=0, maxsize=2)
                for cam in linked
            }

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        media_threads = [
            threading.Thread(target=self._media_loop, name=f"bridge-media-{i}")
            for i in range(SNAPSHOT_WORKERS if self.media is not None else 0)
        ]
        for thread in media_threads:
            thread.start()
        try:
            while not self._stop.is_set():
                self._one_batch()
                self._housekeeping(self.clock(), self.monotonic())
        finally:
            self._stop.set()
            self._flush_patches()
            self._save_uptime()
            for thread in media_threads:
                thread.join(SNAPSHOT_TIMEOUT_S + 2)

    def _housekeeping(self, now: float, tick: float) -> None:
        """The periodic work: ``now`` is the wall clock, for what is timed (messages, silence,
        retention), ``tick`` a monotonic clock, for when each task is due, so that a host clock
        stepped back stops none of them."""
        if self._is_due("patches", tick, PATCH_CHECK_S):
            self._hand_over_patches(now)
        connected = self._uptime.look(now, self.mqtt.connected, self.mqtt.connects, tick)
        # Cut off from the broker, the bridge cannot tell a silent sensor from its own outage.
        if connected and self._is_due("silence", tick, 1.0):
            self._silence(now)
        if self.core.counts.dead_letters_waiting and self._is_due(
            "dead_letters", tick, DEAD_LETTER_RETRY_S
        ):
            self._publish_dead_letters()
        if self._is_due("snapshots", tick, SNAPSHOT_SWEEP_S):
            self._sweep_snapshots()
        if self._is_due("prune", tick, 3600):
            with self.outbox.transaction() as txn:
                store.prune_dedup(txn.conn, now - DEDUP_RETENTION_S)
        last_progress = self._due.setdefault("progress", tick)
        if tick - last_progress >= self.progress_s:
            received = self.core.counts.received
            self._progress((received - self._received_at_progress) / (tick - last_progress))
            self._received_at_progress = received
            self._due["progress"] = tick

    def _is_due(self, task: str, tick: float, every_s: float) -> bool:
        """Whether ``task`` is due at ``tick`` (at the first call, then every ``every_s``);
        if so, it is noted as done then."""
        last = self._due.get(task)
        if last is not None and tick - last < every_s:
            return False
        self._due[task] = tick
        return True

    def _hand_over_patches(self, now: float) -> None:
        """Hand coalesced updates to the outbox when it is idle.

        Updates wait in the state database while the outbox is busy, merging further, so the
        API sees at most about one PATCH per active alarm per round.
        """
        if self.outbox.depth() >= PATCH_IDLE_DEPTH:
            return
        with self.outbox.transaction() as txn:
            self.core.flush_patches(
                txn, PATCH_HANDOVER, now - PATCH_COALESCE_S, now + PATCH_COALESCE_S
            )

    def _flush_patches(self) -> None:
        with self.outbox.transaction() as txn:
            self.core.flush_patches(txn)

    def _save_uptime(self) -> None:
        """The connection's history up to the last look, for the next run."""
        with self.outbox.transaction() as txn:
            self.core.save_uptime(txn, self._uptime, self.clock(), final=True)

    def _collect(self) -> list[Message]:
        first = self._held or self._inbox.get(timeout=0.2)
        self._held = None
        if first is None:
            return []
        batch = [first]
        while len(batch) < BATCH:
            more = self._inbox.get(timeout=0)
            if more is None:
                break
            if more.session != first.session:
                # A batch of one session: the old session's messages are acknowledged (or
                # remembered, their acks void) before the new one's resends look them up.
                self._held = more
                break
            batch.append(more)
        return batch

    def _one_batch(self) -> int:
        messages = [self._as_first_received(m) for m in self._collect()]
        if not messages:
            return 0
        self._forget_unresendable_status_packets(messages)
        counts = replace(self.core.counts, reasons=dict(self.core.counts.reasons))
        try:
            results = [self._commit(messages)]
        except sqlite3.Error:
            raise  # the database, not the message: stop; the broker redelivers after restart
        except Exception:
            log.exception("batch of %d failed; handling its messages one by one", len(messages))
            self.core.counts = counts  # the batch was rolled back: so are its counts
            results = [self._commit_alone(message) for message in messages]
        # Acknowledged before the dead letters are published: they are committed with the
        # batch, so a publication that fails (the state database included) cannot leave the
        # batch unacknowledged, redelivered and failing again.
        for message in messages:
            self.mqtt.ack(message)
            self._remember_if_void(message)
        self._forget_acknowledged_status_packets(messages[0].session, results)
        if any(out.dead for out in results):
            self._publish_dead_letters()
        for out in results:
            self._queue_snapshots(out)
        return len(messages)

    def _keep_dead_letters(self, conn: sqlite3.Connection, dead: list[DeadLetter]) -> list[bytes]:
        """Write the dead letters to the state database, in the transaction of the messages
        they stand for: acknowledged, those messages are never sent again, and a dead letter
        not handed to the client (not connected, its queue full) is published later from
        there. Beyond :data:`DEAD_LETTER_BACKLOG` waiting, the oldest are deleted: returned, to
        be logged and counted once the transaction is committed
        (:meth:`_dead_letters_dropped`)."""
        if not dead:
            return []
        conn.executemany(
            "INSERT INTO bridge_dead_letter (body) VALUES (?)", [(d.body(),) for d in dead]
        )
        (waiting,) = conn.execute("SELECT COUNT(*) FROM bridge_dead_letter").fetchone()
        over = int(waiting) - DEAD_LETTER_BACKLOG
        if over <= 0:
            return []
        dropped = conn.execute(
            "SELECT id, body FROM bridge_dead_letter ORDER BY id LIMIT ?", (over,)
        ).fetchall()
        conn.execute("DELETE FROM bridge_dead_letter WHERE id <= ?", (dropped[-1][0],))
        return [body for _, body in dropped]

    def _dead_letters_dropped(self, dropped: list[bytes]) -> None:
        for body in dropped:
            self._dead_letter_lost(body, f"more than {DEAD_LETTER_BACKLOG} waiting")

    def _publish_dead_letters(self) -> None:
        """Publish the dead letters waiting, oldest first, and delete those the client took.

        Nothing is handed over while the connection is down: the client would take a QoS 1
        publication into its memory only, lost with the process. A letter over what the
        broker's packet limit leaves it has its payload cut further to fit
        (:func:`fit_dead_letter`): the client refuses a larger one, and would at every attempt,
        holding up every later letter for ever; one that does not fit even without its payload
        is dropped, logged and counted. Not connected, a client refusing one (False: its queue
        full, or no client) or raising anything but ValueError keeps it and every later one for
        the next attempt, logged at most once per :data:`DEAD_LETTER_RETRY_S`; one it raises
        ValueError on (a publication MQTT cannot carry) is refused for good: dropped, logged
        and counted. Never raises for a publication, only for the state database.
        """
        topic = deadletter_topic(self.prefix, COMPONENT)
        held = ""  # why the rest waits
        failure: Exception | None = None
        lost: list[tuple[bytes, str]] = []
        with self.outbox.transaction() as txn:
            done: list[tuple[int]] = []
            for row_id, body in txn.conn.execute(
                "SELECT id, body FROM bridge_dead_letter ORDER BY id"
            ):
                if not self.mqtt.connected:
                    held = "not connected to the broker"
                    break
                most = self.mqtt.max_payload(topic, 1)
                letter = fit_dead_letter(body, most)
                if letter is None:
                    why = f"over the {most} bytes the broker's packet limit leaves it"
                    lost.append((body, f"{why}, even with no payload"))
                    done.append((row_id,))
                    continue
                if letter is not body:
                    log.info(
                        "a dead letter of %d bytes is cut to fit the %d the broker's packet "
                        "limit leaves it",
                        len(body),
                        most,
                    )
                try:
                    published = self.mqtt.publish(topic, letter, qos=1)
                except ValueError as exc:
                    lost.append((body, f"refused by the client: {exc}"))
                    published = True  # never publishable: not kept
                except Exception as exc:
                    held, failure = "the client failed", exc
                    break
                if not published:
                    held = "the client's queue full, or no client"
                    break
                done.append((row_id,))
            txn.conn.executemany("DELETE FROM bridge_dead_letter WHERE id = ?", done)
            (waiting,) = txn.conn.execute("SELECT COUNT(*) FROM bridge_dead_letter").fetchone()
        self.core.counts.dead_letters_waiting = int(waiting)
        for body, why in lost:
            self._dead_letter_lost(body, why)
        if not held:
            return
        now = self.clock()
        last = self._dead_letters_held_logged
        if last is not None and 0 <= now - last < DEAD_LETTER_RETRY_S:
            return
        self._dead_letters_held_logged = now
        message = "dead letters not published (%s): %d waiting, published again in %.0f s"
        if failure is not None:
            log.error(message, held, waiting, DEAD_LETTER_RETRY_S, exc_info=failure)
        else:
            log.warning(message, held, waiting, DEAD_LETTER_RETRY_S)

    def _dead_letter_lost(self, body: bytes, why: str) -> None:
        self.core.counts.dead_letters_lost += 1
        log.error("dead letter dropped (%s): %s", why, body[:DEAD_LETTER_LOG_BYTES].decode())

    def _as_first_received(self, message: Message) -> Message:
        """The message timed at its first reception, when it is the resumed session's resend
        of one whose acknowledgement was void.

        The resend has the same packet id and bytes, and the DUP flag. Its dedup key finds it,
        except for a SenML pack without ``bt``/``t``: timed at reception, it would be a new
        reading. A remembered message is looked up once, by the first message with its key
        after the reconnection.
        """
        if message.qos == 0:
            return message
        newest, _, _ = self._burst
        if message.session > newest:
            self._burst = (message.session, message.received_at, message.session_present)
        self._forget_stale(message.received_at)
        first = self._redelivery.pop(_redelivery_key(message), None)
        if first is None or first.session >= message.session:
            return message  # a resend comes on a later session than its first reception
        if not message.dup or not self._resend_due(first, message.received_at):
            return message  # sent for the first time: a new message reusing the packet id
        return replace(message, received_at=first.received_at)

    def _resend_due(self, first: FirstReception, now: datetime) -> bool:
        """Whether the resend of a message remembered from ``first.session`` may still come at
        ``now``: on the next session only, if the broker kept the session, in its opening
        burst."""
        newest, start, resumed = self._burst
        if first.session >= newest:
            return True  # no later session seen yet: the reconnection is still to come
        if first.session + 1 != newest or start is None or not resumed:
            return False
        return (now - start).total_seconds() <= RESEND_BURST_S

    def _forget_stale(self, now: datetime) -> None:
        """Forget, oldest first, the remembered messages whose resend is no longer due: the
        broker lost the session (restarted without persistence: no session present), or the
        session after the drop ended before resending them."""
        while self._redelivery:
            key, first = next(iter(self._redelivery.items()))
            if self._resend_due(first, now):
                return
            del self._redelivery[key]

    def _acks_count(self, session: int) -> bool:
        """Whether the acks sent so far for messages of ``session`` reached the broker: sent
        on that connection, still up (or acknowledged by the client library on reception)."""
        if not self.mqtt.manual_ack:
            return True
        return session == self.mqtt.connects and self.mqtt.connected

    def _remember_if_void(self, message: Message) -> None:
        """After its ack: remember a message whose ack was void, as the broker will resend it.

        Decided after the commit and the ack, as the connection may drop during either. Its
        ``received_at`` is already its first reception when it is itself a resend.
        """
        if message.qos == 0 or self._acks_count(message.session):
            return
        self._redelivery[_redelivery_key(message)] = FirstReception(
            message.received_at, message.session
        )
        while len(self._redelivery) > REDELIVERY_MEMORY:
            self._redelivery.popitem(last=False)

    def _may_be_resend(self, message: Message) -> bool:
        """Whether a message may be the broker's resend of one whose ack was void: it has the
        DUP flag, on a session the broker kept, in that session's opening burst (the broker
        resends nothing later). A message of an earlier session than the newest, which waited
        in the inbox meanwhile, is taken as received in its own session's burst."""
        if message.qos == 0 or not message.dup or not message.session_present:
            return False
        return message.session != self._burst[0] or self._in_opening_burst(message)

    def _in_opening_burst(self, message: Message) -> bool:
        """Whether a message of the newest session came in its opening burst, the broker
        having kept the session: the only time it resends what an earlier connection left
        unacknowledged."""
        _, start, resumed = self._burst
        if not resumed or start is None:
            return False
        return (message.received_at - start).total_seconds() <= RESEND_BURST_S

    def _forget_unresendable_status_packets(self, messages: list[Message]) -> None:
        """Before the first batch of the newest session past its opening burst, of a session
        the broker did not keep, or of another session than the one after the void acks,
        forget every status packet kept: the broker will not resend them (as for
        :meth:`_resend_due`), and may reuse their packet ids for new statuses, of identical
        bytes too (a last will), which a DUP flag of their own must not make duplicates."""
        first = next((m for m in messages if m.qos > 0), None)
        newest = self._burst[0]
        if first is None or first.session != newest or self._status_packets_forgotten >= newest:
            return
        if self._status_packets_due is None:
            self._status_packets_due = newest
        if newest == self._status_packets_due and self._in_opening_burst(first):
            return  # resends may still come
        with self.outbox.transaction() as txn:
            store.forget_all_status_packets(txn.conn)
        self._status_packets_forgotten = newest

    def _forget_acknowledged_status_packets(self, session: int, results: list[BatchResult]) -> None:
        """After the acks of a batch of ``session``: forget the packets of its statuses if
        the acks reached the broker, which then never resends them and may reuse their packet
        ids. A batch without statuses costs no transaction."""
        packets = [packet for out in results for packet in out.status_packets]
        if not packets:
            return
        if not self._acks_count(session):
            self._status_packets_due = session + 1  # kept: resent in the next session's burst
            return
        with self.outbox.transaction() as txn:
            store.forget_status_packets(txn.conn, packets)

    def _commit(self, messages: list[Message]) -> BatchResult:
        out = BatchResult()
        with self.outbox.transaction() as txn:
            for message in messages:
                self.core.handle(
                    txn,
                    message.topic,
                    message.payload,
                    message.received_at,
                    out,
                    retained=message.retain,
                    mid=message.mid if message.qos > 0 else None,
                    dup=self._may_be_resend(message),
                )
            self.core.finish(txn, out)
            dropped = self._keep_dead_letters(txn.conn, out.dead)
        self._dead_letters_dropped(dropped)
        return out

    def _commit_alone(self, message: Message) -> BatchResult:
        """One message in its own transaction; one that still fails is dead-lettered, so a
        message that trips a bug cannot stop the session."""
        try:
            return self._commit([message])
        except sqlite3.Error:
            raise
        except Exception as exc:
            log.exception("message on %s failed; dead-lettered", message.topic)
            out = BatchResult()
            why = Rejected("internal_error", error_text(exc))
            self.core.reject(out, why, message.topic, message.payload, message.received_at)
            with self.outbox.transaction() as txn:
                dropped = self._keep_dead_letters(txn.conn, out.dead)
            self._dead_letters_dropped(dropped)
            return out

    def _silence(self, now: float) -> None:
        out = BatchResult()
        with self.outbox.transaction() as txn:
            self.core.check_silence(txn, now, out, self._uptime)
            self.core.finish(txn, out)
        self._queue_snapshots(out)

    def _queue_snapshots(self, out: BatchResult) -> None:
        if self.media is None:
            return
        for job in out.snapshots:
            self._enqueue_snapshot(job)

    def _enqueue_snapshot(self, job: tuple[str, str]) -> None:
        with self._jobs_lock:
            if job[0] in self._snapshot_jobs:
                return
            try:
                self._snapshots.put_nowait(job)
            except queue.Full:
                # Still wanted in the state database: a later sweep queues it again.
                self.core.counts.snapshot_deferred += 1
                return
            self._snapshot_jobs.add(job[0])

    def _sweep_snapshots(self) -> None:
        """Queue the snapshots still wanted: those of a full queue, or of before a restart."""
        with self.outbox.transaction() as txn:
            wanted = store.wanted_snapshots(txn.conn)
            if self.media is None:  # nobody to fetch them
                for candidate_id, _ in wanted:
                    store.snapshot_settled(txn.conn, candidate_id)
                return
        for job in wanted:
            self._enqueue_snapshot(job)

    def _progress(self, rate: float) -> None:
        log.info("%s", self.core.counts.progress(rate, self.outbox.depth()))

    # -- snapshots (side thread) ------------------------------------------------------------------

    def _media_loop(self) -> None:
        while not self._stop.is_set():
            for cam, sub in self._frame_subs.items():
                for message in sub.drain():
                    self._keep_newest(cam, message.payload, message.received_at)
            try:
                candidate_id, camera_id = self._snapshots.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._snapshot(candidate_id, camera_id)
            except Exception as exc:
                # The last resort: a snapshot that trips a bug must not end this thread, or
                # SNAPSHOT_WORKERS of them leave every later candidate without a picture.
                self._snapshot_failed(candidate_id, camera_id, exc)
            finally:
                with self._jobs_lock:
                    self._snapshot_jobs.discard(candidate_id)

    def _snapshot_failed(self, candidate_id: str, camera_id: str, exc: Exception) -> None:
        """Count and log a snapshot that raised, and settle it unless the database was busy.

        A database busy, locked, out of disk or failing I/O (:data:`PASSING_SQLITE_CODES`) may
        pass: the wanted row, rolled back with the attachment, stays for the sweep. Anything
        else, a read-only database, a missing table or a constraint included, would fail the
        same way again, each sweep asking the camera for yet another snapshot: given up, like
        a missing one.
        """
        self.core.counts.snapshot_failed += 1
        log.error(
            "camera %s: snapshot of candidate %s failed", camera_id, candidate_id, exc_info=exc
        )
        if _may_pass(exc):
            return
        try:
            with self.outbox.transaction() as txn:
                store.snapshot_settled(txn.conn, candidate_id)
        except sqlite3.Error:
            log.exception("candidate %s: snapshot not settled; the sweep tries again", candidate_id)

    def _snapshot(self, candidate_id: str, camera_id: str) -> None:
        assert self.media is not None
        if not self._still_wanted(candidate_id):
            # Settled by another media thread since a sweep read it: no request, no count.
            log.info("candidate %s: snapshot settled meanwhile; not requested", candidate_id)
            return
        requested_at = self.clock()
        frame = self._request_snapshot(self.media, camera_id)
        if frame is not None:
            frame = self._judge_reply(frame, requested_at, self.clock(), candidate_id)
        if frame is None and not self.media.connected:
            # Cut off from the cameras: no reply can come and the newest frame seen may be
            # long stale. The wanted row stays; the sweep queues it again.
            self.core.counts.snapshot_deferred += 1
            log.info(
                "camera %s: media connection down; snapshot of %s later", camera_id, candidate_id
            )
            return
        fallback = False
        if frame is None:
            frame = self._fallback_frame(camera_id)
            fallback = frame is not None
        with self.outbox.transaction() as txn:
            # A sweep reads the wanted rows, then queues them: one a media thread settled
            # while this one waited for the camera must not bring a second snapshot.
            if not _snapshot_wanted(txn.conn, candidate_id):
                log.info("candidate %s: snapshot settled meanwhile; not added", candidate_id)
                return
            attached = frame is not None and self.core.attach_snapshot(txn, candidate_id, frame)
            store.snapshot_settled(txn.conn, candidate_id)
        if frame is None:
            self.core.counts.snapshot_missing += 1
            log.warning("camera %s: no snapshot for candidate %s", camera_id, candidate_id)
            return
        if attached:
            self.core.counts.snapshots += 1
            self.core.counts.snapshot_fallbacks += int(fallback)
            log.info("camera %s: snapshot added to candidate %s", camera_id, candidate_id)

    def _still_wanted(self, candidate_id: str) -> bool:
        """One read, before the camera is asked and waited for, without the write lock the
        batches commit under; the attachment checks again in the transaction that settles
        the snapshot."""
        return _snapshot_wanted(self.outbox._thread_conn(), candidate_id)

    def _judge_reply(
        self, frame: Frame, requested_at: float, answered_at: float, candidate_id: str
    ) -> Frame | None:
        """The reply timed on the bridge's clock; None when its frame was taken more than
        ``fallback_max_age_s`` before the request (counted, logged): the component serving
        the camera may answer with the last frame it has when it cannot take a new one.

        Its time is that of the component's clock, corrected by the camera's offset: the
        reception of the newest frame it streamed minus that frame's time. With no such
        frame, the age is judged with :data:`REPLY_CLOCK_TOLERANCE_S` to spare. A time more
        than :data:`MAX_AHEAD_S` after the reply's reception (a clock ahead: the frame's age
        cannot be told) is replaced by the reception, as a sensor message's is; and a frame is
        never timed after its reception.
        """
        offset = self._clock_offset(frame.camera_id)
        taken = frame.header.ts.timestamp() + (offset or 0.0)
        ahead = taken - answered_at
        if ahead > MAX_AHEAD_S:
            self.core.counts.snapshot_retimed += 1
            log.warning(
                "camera %s: snapshot reply for candidate %s timed %.0f s after its reception"
                " (clock ahead?); timed at its reception",
                frame.camera_id,
                candidate_id,
                ahead,
            )
        taken = min(taken, answered_at)
        age = requested_at - taken
        limit = self.fallback_max_age_s + (0.0 if offset is not None else REPLY_CLOCK_TOLERANCE_S)
        if age > limit:
            self.core.counts.snapshot_stale += 1
            log.warning(
                "camera %s: snapshot reply for candidate %s taken %.0f s before the request%s;"
                " not used",
                frame.camera_id,
                candidate_id,
                age,
                "" if offset is not None else " (its clock's offset unknown)",
            )
            return None
        ts = datetime.fromtimestamp(taken, UTC)
        return replace(frame, header=replace(frame.header, ts=ts))

    def _clock_offset(self, camera_id: str) -> float | None:
        """How far the bridge's clock is ahead of the clock timing the camera's frames: the
        newest frame's reception minus its envelope's time; None without one received in the
        last ``fallback_max_age_s`` (none seen, one older, a bare JPEG timed at its reception,
        or not decodable). An old frame tells nothing of the clock now: a component whose
        clock was set right since it stopped streaming would have every fresh reply stale."""
        with self._newest_lock:
            kept = self._newest.get(camera_id)
        if kept is None:
            return None
        payload, received_at = kept
        if self.clock() - received_at.timestamp() > self.fallback_max_age_s:
            return None
        try:
            newest = decode_frame(payload, topic_camera_id=camera_id, received_at=received_at)
        except MessageError:
            return None
        if newest.header.seq < 0:  # a bare JPEG: no time of its own
            return None
        return received_at.timestamp() - newest.header.ts.timestamp()

    def _request_snapshot(self, media: MqttConnection, camera_id: str) -> Frame | None:
        from gridpatrol.ingest.snapshot import request_snapshot

        if not media.connected:
            return None
        return request_snapshot(media, camera_id, timeout=SNAPSHOT_TIMEOUT_S)

    def _keep_newest(self, camera_id: str, payload: bytes, received_at: datetime) -> None:
        """Keep the frame unless a newer one is kept: media threads drain side by side, and one
        that drained earlier may store after one that drained later."""
        with self._newest_lock:
            kept = self._newest.get(camera_id)
            if kept is None or received_at >= kept[1]:
                self._newest[camera_id] = (payload, received_at)

    def _fallback_frame(self, camera_id: str) -> Frame | None:
        """The newest frame seen, timed at its reception, on the bridge's clock: a bare JPEG
        has no time of its own, and an envelope's, corrected by the camera's clock offset
        (which this frame itself gives), is its reception. None when there is none or it is
        older than ``fallback_max_age_s``."""
        with self._newest_lock:
            kept = self._newest.get(camera_id)
        if kept is None:
            return None
        payload, received_at = kept
        age = self.clock() - received_at.timestamp()
        if age > self.fallback_max_age_s:
            log.info("camera %s: newest frame %.0f s old; not used", camera_id, age)
            return None
        try:
            newest = decode_frame(payload, topic_camera_id=camera_id, received_at=received_at)
        except MessageError:
            return None
        return replace(newest, header=replace(newest.header, ts=received_at))
