"""Episodes: one candidate per occupancy episode keyed (camera, zone, type).

Rules emit ``raise`` / ``update`` / ``clear`` events; this module turns them into candidate
operations: a raise opens an episode and creates ONE candidate, updates patch it at most every
``update_s`` (with a better snapshot when the confidence improved), a clear ends it, and the
next episode of the same key references the previous candidate.

:func:`step` is pure. The SQLite helpers at the bottom keep the book, and each camera's last
frame time, in the outbox's database file, written in the same transaction as the outbox
operation, so a restart reloads exactly what was sent and never creates a second candidate for
a running episode.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

Key = tuple[str, str, str]  # camera_id, zone_id, type
OpKind = Literal["open", "update", "end"]
# A frame more than this behind the camera's last one is on a clock that went back (the worker
# holds such a frame until the next one says whether the clock stays there). The background
# model's CLOCK_STEP_S is the same step; not imported from there, which loads numpy, so that the
# CLI stays light.
CLOCK_RESET_S = 5.0


class EventLike(Protocol):
    """What episodes need from a rule event (``gridpatrol.detectors.pipeline.RuleEvent``)."""

    @property
    def kind(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def zone_id(self) -> str: ...
    @property
    def t(self) -> datetime: ...
    @property
    def confidence(self) -> float: ...
    @property
    def dwell_s(self) -> float: ...
    @property
    def first_seen(self) -> datetime: ...


@dataclass(frozen=True)
class Episode:
    camera_id: str
    zone_id: str
    type: str
    candidate_id: str
    source_event_id: str
    started_at: datetime  # when the occupancy began (the rule's first_seen)
    reported_at: datetime  # last create / patch sent
    last_event_at: datetime
    best_confidence: float
    dwell_s: float
    previous_id: str | None = None
    ended_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.camera_id, self.zone_id, self.type)

    @property
    def open(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Op:
    """A candidate operation for the worker to render and queue.

    ``better`` is true when the event's confidence beats every snapshot sent so far, so the
    worker replaces the annotated / clean evidence; otherwise only dwell and the latest frame
    are refreshed.
    """

    kind: OpKind
    episode: Episode
    better: bool = False


Book = Mapping[Key, Episode]


@dataclass(frozen=True)
class Occupancy:
    """An occupancy a rule is timing or has raised: when it began, when it was last seen."""

    began: datetime
    seen: datetime


def source_event_id(camera_id: str, zone_id: str, type_: str, started_at: datetime) -> str:
    """``<camera>:<zone>:<type>:<episode start epoch ms>``, stable for the whole episode."""
    return f"{camera_id}:{zone_id}:{type_}:{round(started_at.timestamp() * 1000)}"


def _open(camera_id: str, ev: EventLike, new_id: str, previous: Episode | None) -> Episode:
    started = min(ev.first_seen, ev.t)
    return Episode(
        camera_id=camera_id,
        zone_id=ev.zone_id,
        type=ev.rule,
        candidate_id=new_id,
        source_event_id=source_event_id(camera_id, ev.zone_id, ev.rule, started),
        started_at=started,
        reported_at=ev.t,
        last_event_at=ev.t,
        best_confidence=ev.confidence,
        dwell_s=ev.dwell_s,
        previous_id=previous.candidate_id if previous is not None else None,
    )


def _behind(ep: Episode, t: datetime) -> bool:
    """Whether a frame time ``t`` is on a camera clock that went back since the episode was last
    seen: within one clock, every frame after a sighting is timed at or after it."""
    return (ep.last_event_at - t).total_seconds() > CLOCK_RESET_S


def _cleared(current: Episode, ev: EventLike) -> Episode:
    """The open episode ``current`` ended by its rule's clear ``ev``."""
    # It ended at its last sighting, not when the clear was decided clear_s later (or, after a
    # camera outage, when the first frame came back).
    last_seen = ev.first_seen + timedelta(seconds=ev.dwell_s)
    ended_at = min(max(last_seen, current.started_at), ev.t)
    if _behind(current, ev.t):
        # Timed on a clock that went back: the last sighting on the episode's own clock stands,
        # and the episode never ends before it began.
        ended_at = current.last_event_at
    # It lasted from its start to that sighting: after a restart the rule's own dwell counts
    # from when it saw the occupancy again, not from when the episode began.
    lasted = (ended_at - current.started_at).total_seconds()
    return replace(
        current,
        ended_at=ended_at,
        last_event_at=max(current.last_event_at, ev.t),
        reported_at=max(current.reported_at, ev.t),
        dwell_s=max(current.dwell_s, lasted),
    )


def step(
    book: Book,
    camera_id: str,
    ev: EventLike,
    *,
    update_s: float,
    resume_s: float,
    new_id: Callable[[], str],
) -> tuple[dict[Key, Episode], list[Op]]:
    """Apply one rule event; return the new book and the operations to send.

    resume_s: a raise for a key whose episode is still open continues that episode (the rule
    state was lost, e.g. by a restart) when the occupancy began no later than ``resume_s``
    after the episode was last seen; otherwise the stale episode ends and a new one opens. So
    does a raise timed more than CLOCK_RESET_S before that sighting: the camera's clock went
    back (while the worker was down), and the two times are on different clocks.
    """
    out = dict(book)
    key: Key = (camera_id, ev.zone_id, ev.rule)
    current = out.get(key)
    ops: list[Op] = []
    if ev.kind == "clear":
        if current is not None and current.open:
            ended = _cleared(current, ev)
            out[key] = ended
            ops.append(Op("end", ended))
        return out, ops
    if current is not None and current.open:
        late = (ev.first_seen - current.last_event_at).total_seconds() > resume_s
        if ev.kind == "raise" and (late or _behind(current, ev.t)):
            stale = replace(current, ended_at=current.last_event_at)
            fresh = _open(camera_id, ev, new_id(), stale)
            out[key] = fresh
            return out, [Op("end", stale), Op("open", fresh, better=True)]
        return _refresh(out, key, current, ev, update_s)
    fresh = _open(camera_id, ev, new_id(), current)
    out[key] = fresh
    return out, [Op("open", fresh, better=True)]


def end_unfollowed(
    book: Book,
    waiting: Iterable[Key],
    t: datetime,
    occupied: Mapping[tuple[str, str], Occupancy],
    resume_s: Callable[[str, str], float | None],
) -> tuple[dict[Key, Episode], list[Op], set[Key]]:
    """End the open episodes in ``waiting`` that no rule follows any more.

    After a restart the rules start over and know nothing of the episodes left open. One
    whose occupancy comes back in time is continued by :func:`step`; one whose zone or rule
    is gone from the site file (``resume_s`` None) ends at once; one whose occupancy has not
    come back within ``resume_s`` of its last sighting ends then, and so does one when ``t`` is
    more than CLOCK_RESET_S before that sighting (the camera's clock went back). Either way it
    ends at its last sighting, the last moment anyone saw it. ``occupied`` maps (zone, rule) to the
    occupancy a rule is timing or has raised now.

    While the occupancy that continues an episode is in view, the episode's last sighting
    follows it: a short occlusion before the rule raises again must be measured from what was
    seen last, not from the last sighting written before the restart. The caller writes that
    sighting to the book as it moves on (the worker: every ``update_s``), so that another
    restart before the rule raises again still continues the episode.

    Returns the new book, the end operations and the keys still waiting.
    """
    out = dict(book)
    ops: list[Op] = []
    still: set[Key] = set()
    for key in waiting:
        ep = out.get(key)
        if ep is None or not ep.open:
            continue
        # A frame behind its last sighting is on another clock (the camera's went back while
        # the worker was down): nothing seen on it continues the episode, which ends now.
        resume = None if _behind(ep, t) else resume_s(ep.zone_id, ep.type)
        now = occupied.get((ep.zone_id, ep.type))
        if resume is not None and now is not None and _continues(ep, now, resume):
            out[key] = seen_until(ep, now.seen)
            still.add(key)  # the rule's raise will continue the episode
            continue
        if resume is not None and (t - ep.last_event_at).total_seconds() <= resume:
            still.add(key)
            continue
        ended = replace(ep, ended_at=ep.last_event_at, reported_at=max(ep.reported_at, t))
        out[key] = ended
        ops.append(Op("end", ended))
    return out, ops, still


def end_silent(
    book: Book, keys: Iterable[Key], t: datetime, last_seen: Mapping[Key, datetime]
) -> tuple[dict[Key, Episode], list[Op]]:
    """End the open episodes ``keys`` of a camera that stopped sending frames.

    No frame will clear them: each ends at its last sighting, which is what its rule saw last
    (``last_seen``) when that is later than the book's last event (which moves only with the
    rule's events, up to ``update_s`` apart; after a restart it is all there is).
    """
    keys = list(keys)
    out = dict(book)
    for key in keys:
        ep, seen = out.get(key), last_seen.get(key)
        if ep is not None and ep.open and seen is not None:
            out[key] = seen_until(ep, seen)
    out, ops, _ = end_unfollowed(out, keys, t, {}, lambda _zone, _rule: None)
    return out, ops


def end_unserved(book: Book, served: set[str], t: datetime) -> tuple[dict[Key, Episode], list[Op]]:
    """End, at their last sighting, the open episodes of cameras not in ``served``.

    An outbox file outlives a change of the cameras its worker serves (``--cameras``, or
    ``--shard`` with a pinned ``GRIDPATROL_OUTBOX``), and a retired shard's file outlives its
    worker: no rule will ever follow those episodes again.
    """
    gone = [k for k, ep in book.items() if ep.open and ep.camera_id not in served]
    out, ops, _ = end_unfollowed(book, gone, t, {}, lambda _zone, _rule: None)
    return out, ops


def _continues(ep: Episode, now: Occupancy, resume_s: float) -> bool:
    """Whether the occupancy a rule follows now began in time to continue the episode."""
    return (now.began - ep.last_event_at).total_seconds() <= resume_s


def seen_until(ep: Episode, seen: datetime) -> Episode:
    """The episode, its last sighting moved on to ``seen`` when that is later."""
    if seen <= ep.last_event_at:
        return ep
    dwell = max(ep.dwell_s, (seen - ep.started_at).total_seconds())
    return replace(ep, last_event_at=seen, dwell_s=dwell)


def _refresh(
    out: dict[Key, Episode], key: Key, current: Episode, ev: EventLike, update_s: float
) -> tuple[dict[Key, Episode], list[Op]]:
    # A continued episode has lasted since it began, even when the rule's own dwell restarted
    # (its state was lost in a restart).
    seen = replace(
        current,
        last_event_at=max(current.last_event_at, ev.t),
        dwell_s=max(current.dwell_s, ev.dwell_s, (ev.t - current.started_at).total_seconds()),
    )
    if (ev.t - current.reported_at).total_seconds() < update_s:
        out[key] = seen
        return out, []
    better = ev.confidence > current.best_confidence
    sent = replace(
        seen,
        reported_at=ev.t,
        best_confidence=max(current.best_confidence, ev.confidence),
    )
    out[key] = sent
    return out, [Op("update", sent, better=better)]


# ---------------------------------------------------------------------------------------------
# Persistence in the outbox's SQLite file (the caller owns the transaction).

SCHEMA = """
CREATE TABLE IF NOT EXISTS detector_episodes (
    camera_id TEXT NOT NULL,
    zone_id TEXT NOT NULL,
    type TEXT NOT NULL,
    candidate_id TEXT NOT NULL,
    source_event_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    reported_at REAL NOT NULL,
    last_event_at REAL NOT NULL,
    best_confidence REAL NOT NULL,
    dwell_s REAL NOT NULL,
    previous_id TEXT,
    ended_at REAL,
    clock_kept INTEGER,
    PRIMARY KEY (camera_id, zone_id, type)
)
"""

# Each camera's last judged frame time and when the worker received it (on its own clock),
# written with the book: a clock that went back while the worker was down is a jump like one
# within a run, and the book's times stay on the clock they were taken on.
CLOCKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS detector_clocks (
    camera_id TEXT PRIMARY KEY,
    frame_ts REAL NOT NULL,
    received_at REAL NOT NULL
)
"""

_COLUMNS = (
    "camera_id, zone_id, type, candidate_id, source_event_id, started_at, reported_at, "
    "last_event_at, best_confidence, dwell_s, previous_id, ended_at"
)


def ensure_schema(conn: sqlite3.Connection) -> list[str]:
    """Create the tables, or add what an older version's lack; returns the cameras whose saved
    clock was dropped as one an older version left behind (:func:`_drop_unkept_clocks`).

    Only a ``clock_kept`` column that was already there tells: rows without the mark were then
    written by an older version after this one. A column added now says nothing of the rows
    (versions before the column that keep clocks save them with every episode they write):
    they are marked, and the clocks kept."""
    conn.execute(SCHEMA)
    conn.execute(CLOCKS_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(detector_episodes)")}
    if "clock_kept" not in columns:
        conn.execute("ALTER TABLE detector_episodes ADD COLUMN clock_kept INTEGER")
        conn.execute("UPDATE detector_episodes SET clock_kept = 1")
        return []
    return _drop_unkept_clocks(conn)


def _drop_unkept_clocks(conn: sqlite3.Connection) -> list[str]:
    """Drop the saved clock of each camera an older version wrote episodes of since.

    A version that keeps no clocks (or knows nothing of ``clock_kept``) writes its episodes with
    ``clock_kept`` NULL and leaves the camera's clock row as it was: a camera clock that stepped
    while it ran would make that row look like a jump, ending the episodes it opened since on
    that clock and raising a second candidate for an occupancy still there. Without a clock row
    the first frame is taken as it comes (an episode still never continues on a clock behind
    it). Every row is then marked, so only rows written after this count next time."""
    rows = conn.execute(
        "SELECT DISTINCT e.camera_id FROM detector_episodes e JOIN detector_clocks c "
        "ON c.camera_id = e.camera_id WHERE e.clock_kept IS NULL ORDER BY e.camera_id"
    )
    dropped = [row[0] for row in rows]
    conn.executemany("DELETE FROM detector_clocks WHERE camera_id = ?", [(c,) for c in dropped])
    conn.execute("UPDATE detector_episodes SET clock_kept = 1 WHERE clock_kept IS NULL")
    return dropped


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def load_book(conn: sqlite3.Connection, camera_ids: set[str] | None = None) -> dict[Key, Episode]:
    """The latest episode of every key (open or ended), optionally for some cameras only."""
    book: dict[Key, Episode] = {}
    for row in conn.execute(f"SELECT {_COLUMNS} FROM detector_episodes"):
        if camera_ids is not None and row[0] not in camera_ids:
            continue
        ep = Episode(
            camera_id=row[0],
            zone_id=row[1],
            type=row[2],
            candidate_id=row[3],
            source_event_id=row[4],
            started_at=datetime.fromtimestamp(row[5], UTC),
            reported_at=datetime.fromtimestamp(row[6], UTC),
            last_event_at=datetime.fromtimestamp(row[7], UTC),
            best_confidence=row[8],
            dwell_s=row[9],
            previous_id=row[10],
            ended_at=_ts(row[11]),
        )
        book[ep.key] = ep
    return book


def open_episodes(path: str | os.PathLike[str]) -> list[Episode]:
    """The open episodes recorded in an outbox file (none when it is not a detector's)."""
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        known = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'detector_episodes'"
        ).fetchone()
        return [ep for ep in load_book(conn).values() if ep.open] if known else []
    finally:
        conn.close()


def save_episode(conn: sqlite3.Connection, ep: Episode) -> None:
    """Write the episode, marked as written with its camera's clock (``clock_kept``)."""
    conn.execute(
        f"INSERT OR REPLACE INTO detector_episodes ({_COLUMNS}, clock_kept) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
        (
            ep.camera_id,
            ep.zone_id,
            ep.type,
            ep.candidate_id,
            ep.source_event_id,
            ep.started_at.timestamp(),
            ep.reported_at.timestamp(),
            ep.last_event_at.timestamp(),
            ep.best_confidence,
            ep.dwell_s,
            ep.previous_id,
            None if ep.ended_at is None else ep.ended_at.timestamp(),
        ),
    )


@dataclass(frozen=True)
class CameraClock:
    """A camera's last judged frame: its time on the camera's clock, and its reception."""

    ts: datetime
    received_at: datetime


def save_clock(conn: sqlite3.Connection, camera_id: str, clock: CameraClock) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO detector_clocks (camera_id, frame_ts, received_at) "
        "VALUES (?, ?, ?)",
        (camera_id, clock.ts.timestamp(), clock.received_at.timestamp()),
    )


def load_clocks(conn: sqlite3.Connection, camera_ids: set[str]) -> dict[str, CameraClock]:
    """The clocks saved for ``camera_ids`` (a camera never judged has none)."""
    rows = conn.execute("SELECT camera_id, frame_ts, received_at FROM detector_clocks")
    return {
        cam: CameraClock(datetime.fromtimestamp(ts, UTC), datetime.fromtimestamp(rx, UTC))
        for cam, ts, rx in rows
        if cam in camera_ids
    }
