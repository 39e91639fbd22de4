"""The bridge's own tables, kept in the outbox's SQLite file and written in its transactions.

Dedup keys, lifecycle states, per-boot sequence numbers, superseded boots, the per-sensor
reading ring, the last-heard times, each sensor's last status and the dead letters waiting to
be published all commit together with the outbox entries they cause, so a crash at any point
either keeps all of a message's effects or none of them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any

from gridpatrol.alarm_bridge.adapters import SeqMark
from gridpatrol.alarm_bridge.lifecycle import AlarmState
from gridpatrol.alarm_bridge.uptime import UptimeState
from gridpatrol.api.client import merge_patches

_STATE_FIELDS = tuple(f.name for f in fields(AlarmState))
assert _STATE_FIELDS[0] == "phase"  # read by unsilenced() in SQL
TRACE_LEN = 50  # readings kept per sensor for the sensor-trace evidence
# Superseded boot_ids remembered per sensor: a message does not wait on the way (at most the
# broker's one-day session expiry) while its device reboots this many times.
OLD_BOOTS = 16
# Statuses handled remembered per sensor by packet id and payload digest while their
# acknowledgement may have been void: a batch whose acknowledgements were void may hold several
# of one sensor, all resent in turn.
STATUS_PACKETS = 8

StatusPacket = tuple[int, str]  # packet id, sha256 hex of the payload


@dataclass
class StatusMark:
    """A sensor's last status, and the packets of its last statuses handled whose
    acknowledgement may have been void."""

    status: str
    packets: list[StatusPacket] = field(default_factory=list)


SCHEMA = """
CREATE TABLE IF NOT EXISTS bridge_dedup (
    sensor_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (sensor_id, event_key)
) WITHOUT ROWID;
-- The hourly prune deletes by age: without it, a scan of every key (30 million after a week
-- at 50 messages a second) inside a write transaction, holding up the batches' commits.
CREATE INDEX IF NOT EXISTS bridge_dedup_processed ON bridge_dedup (processed_at);
CREATE TABLE IF NOT EXISTS bridge_alarm_state (
    sensor_id TEXT NOT NULL,
    alarm_type TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (sensor_id, alarm_type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bridge_seq (
    sensor_id TEXT PRIMARY KEY,
    boot_id TEXT,
    seq INTEGER NOT NULL,
    t REAL,
    bridge_t REAL
) WITHOUT ROWID;
-- Each sensor's boot_ids before its last one, oldest first (a JSON list): their late messages
-- were overtaken by the new boot's.
CREATE TABLE IF NOT EXISTS bridge_old_boots (
    sensor_id TEXT PRIMARY KEY,
    boot_ids TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bridge_trace (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor_id TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bridge_trace_sensor ON bridge_trace (sensor_id, id);
CREATE TABLE IF NOT EXISTS bridge_pending_patch (
    candidate_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    since REAL NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS bridge_outbox_evidence; -- the outbox indexes evidence hashes itself
CREATE TABLE IF NOT EXISTS bridge_seen (
    sensor_id TEXT PRIMARY KEY,
    last_heard REAL NOT NULL
) WITHOUT ROWID;
-- A sensor never heard is silent since the bridge first watched it (its first silence check
-- with the sensor in the site file), across restarts.
CREATE TABLE IF NOT EXISTS bridge_watched (
    sensor_id TEXT PRIMARY KEY,
    since REAL NOT NULL
) WITHOUT ROWID;
-- The broker connection over time (uptime.Uptime), so that a restart does not restart the
-- sensors' silence: one row, the spans a JSON list of [begin, end] (at most uptime.MAX_GAPS).
CREATE TABLE IF NOT EXISTS bridge_uptime (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    started REAL NOT NULL,
    last_up REAL NOT NULL,
    gaps TEXT NOT NULL
);
-- packets: the packet ids and payload digests of the sensor's last statuses handled whose
-- acknowledgement may have been void (a JSON list of [packet id, sha256 hex], newest last),
-- to tell the broker's resend of one.
CREATE TABLE IF NOT EXISTS bridge_status (
    sensor_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    packets TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bridge_snapshot_wanted (
    candidate_id TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    wanted_at REAL NOT NULL
) WITHOUT ROWID;
-- Dead letters written with their batch and not yet handed to the MQTT client, oldest first
-- (a state file from before them gets the table at the next start).
CREATE TABLE IF NOT EXISTS bridge_dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL
);
"""


def init(conn: sqlite3.Connection) -> None:
    """Create the tables; statement by statement, as executescript would end the transaction."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    seq_columns = {row[1] for row in conn.execute("PRAGMA table_info(bridge_seq)")}
    # A state file from before the message's own time, or the bridge's time of it, was kept.
    for column in ("t", "bridge_t"):
        if column not in seq_columns:
            conn.execute(f"ALTER TABLE bridge_seq ADD COLUMN {column} REAL")
    status_columns = {row[1] for row in conn.execute("PRAGMA table_info(bridge_status)")}
    if "packets" not in status_columns:  # a state file from before statuses' packets were kept
        conn.execute("ALTER TABLE bridge_status ADD COLUMN packets TEXT NOT NULL DEFAULT '[]'")


def claim(conn: sqlite3.Connection, sensor_id: str, event_key: str, now: float) -> bool:
    """Record the message as processed; False when it already was (a redelivery)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO bridge_dedup (sensor_id, event_key, processed_at) VALUES (?, ?, ?)",
        (sensor_id, event_key, now),
    )
    return cur.rowcount == 1


def prune_dedup(conn: sqlite3.Connection, older_than: float) -> int:
    return conn.execute("DELETE FROM bridge_dedup WHERE processed_at < ?", (older_than,)).rowcount


def load_state(conn: sqlite3.Connection, sensor_id: str, alarm_type: str) -> AlarmState:
    row = conn.execute(
        "SELECT state FROM bridge_alarm_state WHERE sensor_id = ? AND alarm_type = ?",
        (sensor_id, alarm_type),
    ).fetchone()
    if row is None:
        return AlarmState()
    return _state(json.loads(row[0]))


# The fields of AlarmState before its kept clears: stored rows hold them first, in this order.
_BEFORE_QUIETS = _STATE_FIELDS.index("quiets")
# The fields after them, each added later: a row stored before one holds none of it.
_AFTER_QUIETS = _STATE_FIELDS[_BEFORE_QUIETS + 1 :]


def _state(row: list[Any]) -> AlarmState:
    """A stored state row, in the field order of AlarmState. Rows stored before it kept every
    recent clear hold the one clear timed last as its time and reception (11 fields), as its
    time alone (10 fields: then at most its reception, taken for it) or nothing (9 fields);
    rows stored before the device's time of the last sighting (or a reset clock's lag) was
    kept, no such time (nor lag)."""
    state, rest = AlarmState(*row[:_BEFORE_QUIETS]), row[_BEFORE_QUIETS:]
    if not rest or rest[0] is None:
        return state
    if isinstance(rest[0], list):
        quiets = tuple((float(t), float(r)) for t, r in rest[0])
        return replace(state, quiets=quiets, **dict(zip(_AFTER_QUIETS, rest[1:], strict=False)))
    received = rest[1] if len(rest) > 1 and rest[1] is not None else rest[0]
    return replace(state, quiets=((float(rest[0]), float(received)),))


def save_state(conn: sqlite3.Connection, sensor_id: str, alarm_type: str, st: AlarmState) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bridge_alarm_state (sensor_id, alarm_type, state) VALUES (?, ?, ?)",
        (sensor_id, alarm_type, json.dumps([getattr(st, f) for f in _STATE_FIELDS])),
    )


def last_seq(conn: sqlite3.Connection, sensor_id: str) -> SeqMark | None:
    row = conn.execute(
        "SELECT boot_id, seq, t, bridge_t FROM bridge_seq WHERE sensor_id = ?", (sensor_id,)
    )
    found = row.fetchone()
    return (found[0], int(found[1]), found[2], found[3]) if found is not None else None


def save_seq(conn: sqlite3.Connection, sensor_id: str, mark: SeqMark) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bridge_seq (sensor_id, boot_id, seq, t, bridge_t)"
        " VALUES (?, ?, ?, ?, ?)",
        (sensor_id, *mark),
    )


def old_boots(conn: sqlite3.Connection, sensor_id: str) -> list[str]:
    """The sensor's boot_ids before its last one, oldest first."""
    row = conn.execute("SELECT boot_ids FROM bridge_old_boots WHERE sensor_id = ?", (sensor_id,))
    found = row.fetchone()
    return [str(b) for b in json.loads(found[0])] if found is not None else []


def save_old_boots(conn: sqlite3.Connection, sensor_id: str, boot_ids: list[str]) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bridge_old_boots (sensor_id, boot_ids) VALUES (?, ?)",
        (sensor_id, json.dumps(boot_ids[-OLD_BOOTS:])),
    )


def append_trace(conn: sqlite3.Connection, sensor_id: str, entry: dict[str, Any]) -> None:
    """Add a reading to the sensor's ring; :meth:`StateBatch.flush` keeps the ring bounded."""
    conn.execute(
        "INSERT INTO bridge_trace (sensor_id, entry) VALUES (?, ?)",
        (sensor_id, json.dumps(entry, ensure_ascii=False)),
    )


def prune_trace(conn: sqlite3.Connection, sensor_id: str) -> None:
    conn.execute(
        "DELETE FROM bridge_trace WHERE sensor_id = ? AND id < (SELECT id FROM bridge_trace"
        " WHERE sensor_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (sensor_id, sensor_id, TRACE_LEN - 1),
    )


def trace(conn: sqlite3.Connection, sensor_id: str) -> list[str]:
    """The newest readings of the sensor, oldest first, as stored JSON texts."""
    rows = conn.execute(
        "SELECT entry FROM bridge_trace WHERE sensor_id = ? ORDER BY id DESC LIMIT ?",
        (sensor_id, TRACE_LEN),
    ).fetchall()
    return [r[0] for r in reversed(rows)]


def pend_patch(
    conn: sqlite3.Connection, candidate_id: str, patch: dict[str, Any], now: float
) -> None:
    """Merge ``patch`` into the candidate's pending update (repeats coalesce into one PATCH)."""
    row = conn.execute(
        "SELECT body, since FROM bridge_pending_patch WHERE candidate_id = ?", (candidate_id,)
    ).fetchone()
    body, since = (merge_patches(json.loads(row[0]), patch), row[1]) if row else (patch, now)
    conn.execute(
        "INSERT OR REPLACE INTO bridge_pending_patch (candidate_id, body, since) VALUES (?, ?, ?)",
        (candidate_id, json.dumps(body, ensure_ascii=False), since),
    )


def take_pending(
    conn: sqlite3.Connection,
    limit: int = -1,
    since_before: float = float("inf"),
    since_after: float = float("inf"),
) -> list[tuple[str, dict[str, Any]]]:
    """The oldest pending updates (all by default), removed from the table: those pending
    since before ``since_before``, and first those since after ``since_after`` (stamped before
    the clock was set back: they would otherwise wait for as long)."""
    rows = conn.execute(
        "SELECT candidate_id, body FROM bridge_pending_patch WHERE since < ? OR since > ?"
        " ORDER BY since > ? DESC, since LIMIT ?",
        (since_before, since_after, since_after, limit),
    ).fetchall()
    conn.executemany(
        "DELETE FROM bridge_pending_patch WHERE candidate_id = ?", [(r[0],) for r in rows]
    )
    return [(cid, json.loads(body)) for cid, body in rows]


def heard(conn: sqlite3.Connection, sensor_id: str, now: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bridge_seen (sensor_id, last_heard) VALUES (?, ?)",
        (sensor_id, now),
    )


def last_heard(conn: sqlite3.Connection) -> dict[str, float]:
    return {s: float(t) for s, t in conn.execute("SELECT sensor_id, last_heard FROM bridge_seen")}


def watched(conn: sqlite3.Connection) -> dict[str, float]:
    """When the bridge first watched each sensor it has watched."""
    return {s: float(t) for s, t in conn.execute("SELECT sensor_id, since FROM bridge_watched")}


def watch_all(conn: sqlite3.Connection, sensor_ids: Collection[str], since: float) -> None:
    """Watch from ``since`` each of ``sensor_ids`` not watched yet (one heard before it was
    watched is judged from its last message, which comes first, as before)."""
    conn.executemany(
        "INSERT OR IGNORE INTO bridge_watched (sensor_id, since) VALUES (?, ?)",
        [(sensor_id, since) for sensor_id in sensor_ids],
    )


def unsilenced(conn: sqlite3.Connection) -> list[tuple[str, float]]:
    """Every watched sensor whose ``device_offline`` is not active, with when it was last heard
    (else first watched), in one query: a silence check in a mass outage must not load the
    state of every sensor already offline one by one, every second."""
    rows = conn.execute(
        """
        SELECT w.sensor_id, COALESCE(s.last_heard, w.since)
        FROM bridge_watched AS w LEFT JOIN bridge_seen AS s ON s.sensor_id = w.sensor_id
        WHERE NOT EXISTS (  -- a state row's first field is its phase (see save_state)
            SELECT 1 FROM bridge_alarm_state AS a
            WHERE a.sensor_id = w.sensor_id AND a.alarm_type = 'device_offline'
                AND json_extract(a.state, '$[0]') = 'active'
        )
        """
    )
    return [(sensor_id, float(since)) for sensor_id, since in rows]


def forget_unwatched(conn: sqlite3.Connection, sensor_ids: Collection[str]) -> int:
    """Forget when the sensors not in ``sensor_ids`` (the site file's) were last heard and first
    watched: one taken out of the site file and put back is silent from its return, not since
    before its absence (its messages meanwhile were unknown_sensor dead letters). The number of
    rows removed."""
    keep = json.dumps(sorted(sensor_ids))
    removed = 0
    for table in ("bridge_seen", "bridge_watched"):
        removed += conn.execute(
            f"DELETE FROM {table} WHERE sensor_id NOT IN (SELECT value FROM json_each(?))",
            (keep,),
        ).rowcount
    return removed


def load_uptime(conn: sqlite3.Connection) -> UptimeState | None:
    """The connection bookkeeping the last run kept; None before any (a new state file, or one
    from before it was kept)."""
    row = conn.execute("SELECT started, last_up, gaps FROM bridge_uptime WHERE id = 0").fetchone()
    if row is None:
        return None
    gaps = [(float(begin), float(end)) for begin, end in json.loads(row[2])]
    return (float(row[0]), float(row[1]), gaps)


def save_uptime(conn: sqlite3.Connection, state: UptimeState) -> None:
    started, last_up, gaps = state
    conn.execute(
        "INSERT OR REPLACE INTO bridge_uptime (id, started, last_up, gaps) VALUES (0, ?, ?, ?)",
        (started, last_up, json.dumps(gaps)),
    )


def last_status(conn: sqlite3.Connection, sensor_id: str) -> StatusMark | None:
    """The sensor's last status payload (``online`` / ``offline``) and the packets of its
    last statuses handled whose acknowledgement may have been void (oldest first), None if
    never seen."""
    row = conn.execute(
        "SELECT status, packets FROM bridge_status WHERE sensor_id = ?", (sensor_id,)
    )
    found = row.fetchone()
    if found is None:
        return None
    return StatusMark(str(found[0]), [(int(m), str(d)) for m, d in json.loads(found[1])])


def save_status(conn: sqlite3.Connection, sensor_id: str, mark: StatusMark) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO bridge_status (sensor_id, status, packets) VALUES (?, ?, ?)",
        (sensor_id, mark.status, json.dumps(mark.packets[-STATUS_PACKETS:])),
    )


def forget_status_packets(
    conn: sqlite3.Connection, packets: Collection[tuple[str, StatusPacket]]
) -> None:
    """Forget these (sensor id, packet) of statuses handled: acknowledged, they are never
    resent, and the broker may reuse their packet ids for new statuses."""
    by_sensor: dict[str, set[StatusPacket]] = {}
    for sensor_id, packet in packets:
        by_sensor.setdefault(sensor_id, set()).add(packet)
    for sensor_id, done in by_sensor.items():
        mark = last_status(conn, sensor_id)
        if mark is None:
            continue
        kept = [p for p in mark.packets if p not in done]
        if kept != mark.packets:
            save_status(conn, sensor_id, StatusMark(mark.status, kept))


def forget_all_status_packets(conn: sqlite3.Connection) -> None:
    """Forget the packets of all statuses handled: none of them can be resent any more."""
    conn.execute("UPDATE bridge_status SET packets = '[]' WHERE packets != '[]'")


def want_snapshot(conn: sqlite3.Connection, candidate_id: str, camera_id: str, now: float) -> None:
    """Remember that the candidate waits for a camera snapshot, with the candidate's create."""
    conn.execute(
        "INSERT OR IGNORE INTO bridge_snapshot_wanted (candidate_id, camera_id, wanted_at) "
        "VALUES (?, ?, ?)",
        (candidate_id, camera_id, now),
    )


def snapshot_settled(conn: sqlite3.Connection, candidate_id: str) -> None:
    conn.execute("DELETE FROM bridge_snapshot_wanted WHERE candidate_id = ?", (candidate_id,))


def wanted_snapshots(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(candidate id, camera id) of every snapshot still wanted, oldest first."""
    rows = conn.execute(
        "SELECT candidate_id, camera_id FROM bridge_snapshot_wanted ORDER BY wanted_at"
    )
    return [(str(c), str(cam)) for c, cam in rows]


class StateBatch:
    """Write-behind view of the state tables for one transaction.

    A batch touches the same few sensors many times; reading and writing their state once
    per batch instead of once per message keeps the bridge ahead of a chattering field.
    ``flush`` must run before the transaction commits.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._states: dict[tuple[str, str], AlarmState] = {}
        # Written back at the flush: only the states changed, as a silence check loads that of
        # every silent sensor each second and must not rewrite (and commit) them all.
        self._states_changed: set[tuple[str, str]] = set()
        self._seqs: dict[str, SeqMark] = {}
        self._old_boots: dict[str, list[str]] = {}  # read, and written back if changed
        self._boots_changed: set[str] = set()
        self._heard: dict[str, float] = {}
        self._statuses: dict[str, StatusMark] = {}
        self._traced: set[str] = set()
        self._patches: dict[str, tuple[dict[str, Any], float]] = {}

    def state(self, sensor_id: str, alarm_type: str) -> AlarmState:
        key = (sensor_id, alarm_type)
        found = self._states.get(key)
        if found is None:
            found = self._states[key] = load_state(self.conn, sensor_id, alarm_type)
        return found

    def set_state(self, sensor_id: str, alarm_type: str, st: AlarmState) -> None:
        key = (sensor_id, alarm_type)
        if key in self._states and self._states[key] == st:
            return  # a step that changed nothing (an ignored input) writes nothing
        self._states[key] = st
        self._states_changed.add(key)

    def last_seq(self, sensor_id: str) -> SeqMark | None:
        if sensor_id in self._seqs:
            return self._seqs[sensor_id]
        return last_seq(self.conn, sensor_id)

    def set_seq(self, sensor_id: str, mark: SeqMark) -> None:
        """Remember the sensor's last accepted message.

        Its boot_id is current again, so no longer superseded; another boot_id supersedes the
        last one. A message without boot_id supersedes nothing: the device did not say it
        rebooted, and a later message of the last boot is no less its own.
        """
        last = self.last_seq(sensor_id)
        old = self.old_boots(sensor_id)
        boots = [b for b in old if b != mark[0]]
        last_boot = last[0] if last is not None else None
        if last_boot is not None and mark[0] is not None and last_boot != mark[0]:
            boots = [b for b in boots if b != last_boot] + [last_boot]
        if boots != old:
            self._old_boots[sensor_id] = boots[-OLD_BOOTS:]
            self._boots_changed.add(sensor_id)
        self._seqs[sensor_id] = mark

    def old_boots(self, sensor_id: str) -> list[str]:
        found = self._old_boots.get(sensor_id)
        if found is None:
            found = self._old_boots[sensor_id] = old_boots(self.conn, sensor_id)
        return found

    def heard(self, sensor_id: str, now: float) -> None:
        self._heard[sensor_id] = max(now, self._heard.get(sensor_id, now))

    def last_status(self, sensor_id: str) -> StatusMark | None:
        if sensor_id in self._statuses:
            return self._statuses[sensor_id]
        return last_status(self.conn, sensor_id)

    def set_status(self, sensor_id: str, status: str, packet: StatusPacket | None) -> None:
        """The sensor's status is now ``status``; ``packet``: that of the status (None for
        QoS 0, which is never resent)."""
        last = self.last_status(sensor_id)
        packets = list(last.packets) if last is not None else []
        if packet is not None:
            packets = [*packets, packet][-STATUS_PACKETS:]
        self._statuses[sensor_id] = StatusMark(status, packets)

    def append_trace(self, sensor_id: str, entry: dict[str, Any]) -> None:
        # Written at once: a raise later in the batch puts the trace into its evidence.
        append_trace(self.conn, sensor_id, entry)
        self._traced.add(sensor_id)

    def pend_patch(self, candidate_id: str, patch: dict[str, Any], now: float) -> None:
        old = self._patches.get(candidate_id)
        merged = (merge_patches(old[0], patch), old[1]) if old else (patch, now)
        self._patches[candidate_id] = merged

    def flush(self) -> None:
        for sensor_id, alarm_type in self._states_changed:
            save_state(self.conn, sensor_id, alarm_type, self._states[(sensor_id, alarm_type)])
        for sensor_id, mark in self._seqs.items():
            save_seq(self.conn, sensor_id, mark)
        for sensor_id in self._boots_changed:
            save_old_boots(self.conn, sensor_id, self._old_boots[sensor_id])
        for sensor_id, now in self._heard.items():
            heard(self.conn, sensor_id, now)
        for sensor_id, status in self._statuses.items():
            save_status(self.conn, sensor_id, status)
        for candidate_id, (patch, since) in self._patches.items():
            pend_patch(self.conn, candidate_id, patch, since)
        for sensor_id in self._traced:
            prune_trace(self.conn, sensor_id)  # each ring back to its newest TRACE_LEN rows
        self._states.clear()
        self._states_changed.clear()
        self._seqs.clear()
        self._old_boots.clear()
        self._boots_changed.clear()
        self._heard.clear()
        self._statuses.clear()
        self._traced.clear()
        self._patches.clear()
