"""Episodes: one candidate per (camera, zone, type) episode, rate-limited updates, persistence."""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gridpatrol.api.client import Outbox
from gridpatrol.detectors.episodes import (
    CLOCKS_SCHEMA,
    CameraClock,
    Episode,
    Key,
    Occupancy,
    Op,
    end_silent,
    end_unfollowed,
    ensure_schema,
    load_book,
    load_clocks,
    save_clock,
    save_episode,
    source_event_id,
    step,
)

T0 = datetime(2026, 5, 4, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Ev:
    kind: str
    t: datetime
    confidence: float = 0.6
    dwell_s: float = 0.0
    first_seen: datetime = T0
    rule: str = "crowd_gathering"
    zone_id: str = "plaza"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _ids() -> itertools.count[int]:
    return itertools.count(1)


def feed(events: list[Ev], update_s: float = 60.0, resume_s: float = 120.0) -> list[Op]:
    """Feed events to one book; return every operation."""
    counter = _ids()
    book: dict[Key, Episode] = {}
    out: list[Op] = []
    for ev in events:
        book, ops = step(
            book,
            "cam-1",
            ev,
            update_s=update_s,
            resume_s=resume_s,
            new_id=lambda: f"c{next(counter)}",
        )
        out.extend(ops)
    return out


def run(events: list[Ev], update_s: float = 60.0, resume_s: float = 120.0) -> list[tuple[str, str]]:
    """Feed events; return (op kind, candidate id) per operation."""
    return [(op.kind, op.episode.candidate_id) for op in feed(events, update_s, resume_s)]


CASES = {
    "raise then updates within update_s then clear": (
        [Ev("raise", at(5)), Ev("update", at(10)), Ev("update", at(30)), Ev("clear", at(90))],
        [("open", "c1"), ("end", "c1")],
    ),
    "updates at most every update_s": (
        [Ev("raise", at(5))] + [Ev("update", at(5 + 10 * k)) for k in range(1, 14)],
        [("open", "c1"), ("update", "c1"), ("update", "c1")],
    ),
    "second episode after clear is a new candidate": (
        [Ev("raise", at(5)), Ev("clear", at(50)), Ev("raise", at(200), first_seen=at(190))],
        [("open", "c1"), ("end", "c1"), ("open", "c2")],
    ),
    "repeated raise while open continues the episode": (
        [Ev("raise", at(5)), Ev("raise", at(80), first_seen=at(75))],
        [("open", "c1"), ("update", "c1")],
    ),
    "raise long after the open episode was last seen ends it and opens another": (
        [Ev("raise", at(5)), Ev("raise", at(900), first_seen=at(890))],
        [("open", "c1"), ("end", "c1"), ("open", "c2")],
    ),
    "clear without an episode does nothing": ([Ev("clear", at(5))], []),
    "update without a raise opens the episode": (
        [Ev("update", at(5)), Ev("update", at(6))],
        [("open", "c1")],
    ),
    "other zones and types are separate episodes": (
        [
            Ev("raise", at(5)),
            Ev("raise", at(6), zone_id="kerb"),
            Ev("raise", at(7), rule="street_vending"),
            Ev("clear", at(8), zone_id="kerb"),
        ],
        [("open", "c1"), ("open", "c2"), ("open", "c3"), ("end", "c2")],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_episode_operations(name: str) -> None:
    events, expected = CASES[name]
    assert run(events) == expected


def test_new_episode_references_the_previous_and_keeps_a_stable_source_event_id() -> None:
    first, update, end, second = feed(
        [
            Ev("raise", at(10), first_seen=at(4.5)),
            Ev("update", at(200), confidence=0.9, dwell_s=195),
            Ev("clear", at(300), dwell_s=245.5, first_seen=at(4.5)),  # last seen at 250
            Ev("raise", at(400), first_seen=at(390)),
        ]
    )
    assert first.episode.source_event_id == "cam-1:plaza:crowd_gathering:" + str(
        round(at(4.5).timestamp() * 1000)
    )
    assert first.episode.previous_id is None and first.better
    assert update.better and update.episode.dwell_s == 195.5  # since first seen
    assert update.episode.source_event_id == first.episode.source_event_id
    assert end.episode.ended_at == at(250) and end.episode.dwell_s == 245.5
    assert second.episode.previous_id == "c1"
    assert second.episode.source_event_id == source_event_id(
        "cam-1", "plaza", "crowd_gathering", at(390)
    )


def test_update_is_better_only_when_confidence_improves() -> None:
    ops = feed(
        [
            Ev("raise", at(0), confidence=0.7),
            Ev("update", at(70), confidence=0.6),
            Ev("update", at(140), confidence=0.8),
            Ev("update", at(210), confidence=0.75),
        ]
    )
    assert [op.better for op in ops] == [True, False, True, False]


# One occupancy from T0 to 1040 s, its clear decided at 1100 s. Restarted, the worker lost the
# rule's state around 500 s: the rule saw the occupancy again from 510 s and timed its dwell
# from there, while the episode continued.
UNINTERRUPTED = [
    Ev("raise", at(60), dwell_s=60),
    Ev("update", at(480), dwell_s=480),
    Ev("update", at(930), dwell_s=930),
    Ev("clear", at(1100), dwell_s=1040),
]
RESTARTED = [
    Ev("raise", at(60), dwell_s=60),
    Ev("update", at(480), dwell_s=480),
    Ev("raise", at(570), dwell_s=60, first_seen=at(510)),
    Ev("update", at(930), dwell_s=420, first_seen=at(510)),
    Ev("clear", at(1100), dwell_s=530, first_seen=at(510)),
]


@pytest.mark.parametrize("events", [UNINTERRUPTED, RESTARTED], ids=["uninterrupted", "restarted"])
def test_an_ended_episode_lasted_from_its_start_to_its_last_sighting(events: list[Ev]) -> None:
    *_, update, end = feed(events)
    assert (update.kind, update.episode.dwell_s) == ("update", 930.0)
    assert (end.kind, end.episode.candidate_id) == ("end", "c1")
    assert (end.episode.started_at, end.episode.ended_at, end.episode.dwell_s) == (
        T0,
        at(1040),
        1040.0,
    )


def test_book_persists_in_the_outbox_file_and_a_restart_continues_the_episode(
    tmp_path: Path,
) -> None:
    db = tmp_path / "outbox.db"
    outbox = Outbox(db, None, component="detect-test")
    counter = _ids()
    with outbox.transaction() as txn:
        ensure_schema(txn.conn)
        book = load_book(txn.conn)
    book, ops = step(
        book,
        "cam-1",
        Ev("raise", at(10)),
        update_s=60,
        resume_s=120,
        new_id=lambda: f"c{next(counter)}",
    )
    with outbox.transaction() as txn:
        for op in ops:
            save_episode(txn.conn, op.episode)
        txn.create_candidate({"type": "crowd_gathering"}, "6f1b0c52-8f0e-4a55-9d1e-1a2b3c4d5e6f")

    # A fresh process: the book comes back from the same file, the raise continues it.
    reopened = Outbox(db, None, component="detect-test")
    with reopened.transaction() as txn:
        ensure_schema(txn.conn)
        loaded = load_book(txn.conn)
        assert load_book(txn.conn, {"cam-2"}) == {}
    assert loaded == book
    _, ops2 = step(
        loaded,
        "cam-1",
        Ev("raise", at(70), first_seen=at(65)),
        update_s=60,
        resume_s=120,
        new_id=lambda: "never",
    )
    assert [(op.kind, op.episode.candidate_id) for op in ops2] == [("update", "c1")]
    assert reopened.depth() == 1


def _open_episode(last_seen_s: float, ended: bool = False) -> Episode:
    return Episode(
        camera_id="cam-1",
        zone_id="plaza",
        type="crowd_gathering",
        candidate_id="c1",
        source_event_id=source_event_id("cam-1", "plaza", "crowd_gathering", T0),
        started_at=T0,
        reported_at=at(last_seen_s),
        last_event_at=at(last_seen_s),
        best_confidence=0.7,
        dwell_s=last_seen_s,
        ended_at=at(last_seen_s) if ended else None,
    )


@pytest.mark.parametrize(
    ("configured", "now_s", "occupied_since_s", "ended", "ended_at_s", "waiting"),
    [
        (False, 100, None, False, 100, False),  # zone or rule gone from the site file: end now
        (True, 200, None, False, None, True),  # not back yet, within resume_s (120 s)
        (True, 221, None, False, 100, False),  # not back within resume_s: ends at last sighting
        (True, 400, 190, False, None, True),  # back in time, dwell running: step continues it
        (True, 400, 260, False, 100, False),  # back too late: a new episode, the old one ends
        (True, 400, None, True, None, False),  # ended already: nothing to do
    ],
)
def test_end_unfollowed(
    configured: bool,
    now_s: float,
    occupied_since_s: float | None,
    ended: bool,
    ended_at_s: float | None,
    waiting: bool,
) -> None:
    ep = _open_episode(100, ended)
    since = occupied_since_s
    occupied = (
        {} if since is None else {("plaza", "crowd_gathering"): Occupancy(at(since), at(since))}
    )
    book, ops, still = end_unfollowed(
        {ep.key: ep},
        [ep.key],
        at(now_s),
        occupied,
        lambda zone, rule: 120.0 if configured else None,
    )
    assert [(op.kind, op.episode.ended_at) for op in ops] == (
        [] if ended_at_s is None else [("end", at(ended_at_s))]
    )
    assert still == ({ep.key} if waiting else set())
    assert book[ep.key].open == waiting


def test_a_waiting_episode_follows_the_occupancy_that_continues_it() -> None:
    """A rule times the occupancy again after a restart (100 s → 200 s, resume_s 120), then
    loses it briefly: the episode is measured from the rule's last sighting, not from the
    book's, and ends there if it does not come back."""
    ep = _open_episode(100)

    def resume(zone: str, rule: str) -> float:
        return 120.0

    following = {("plaza", "crowd_gathering"): Occupancy(at(110), at(200))}
    book, ops, still = end_unfollowed({ep.key: ep}, [ep.key], at(200), following, resume)
    assert (ops, still) == ([], {ep.key})
    assert (book[ep.key].last_event_at, book[ep.key].dwell_s) == (at(200), 200)
    book, ops, still = end_unfollowed(book, still, at(230), {}, resume)  # lost for 30 s
    assert (ops, still) == ([], {ep.key})
    book, ops, still = end_unfollowed(book, still, at(321), {}, resume)  # for good
    assert [(op.kind, op.episode.ended_at) for op in ops] == [("end", at(200))]


@pytest.mark.parametrize(
    ("rule_last_seen_s", "ended_at_s", "dwell_s"),
    [
        (130, 130, 130),  # the rule saw it after the book's last event: that is its last sighting
        (None, 100, 100),  # no rule follows it (reloaded at start): the book's last event
        (90, 100, 100),  # the rule's sighting is older than the book's: the book's
    ],
)
def test_end_silent_ends_at_the_last_sighting(
    rule_last_seen_s: float | None, ended_at_s: float, dwell_s: float
) -> None:
    ep = _open_episode(100)
    seen = {} if rule_last_seen_s is None else {ep.key: at(rule_last_seen_s)}
    book, ops = end_silent({ep.key: ep}, [ep.key], at(140), seen)
    assert [(op.kind, op.episode.ended_at, op.episode.dwell_s) for op in ops] == [
        ("end", at(ended_at_s), dwell_s)
    ]
    assert book[ep.key] == ops[0].episode and not book[ep.key].open
    assert book[ep.key].reported_at == at(140)
    assert end_silent(book, [ep.key], at(150), seen) == (book, [])  # ended already


# The camera's clock went a day back while the worker was down, with no clock of it saved to
# tell (an outbox file written before cameras' clocks were kept): the episode reloaded open,
# last seen at 100 s, meets frames timed on the behind clock.
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("now", "occupied_since", "ended"),
    [
        (at(110) - DAY, None, True),  # frames keep coming a day behind: it ends at once
        (at(110) - DAY, at(90) - DAY, True),  # an occupancy on the behind clock continues nothing
        (at(95), None, False),  # 5 s behind is no step back: within resume_s, it waits
        (at(94.5), None, True),
    ],
)
def test_an_episode_never_waits_for_frames_on_a_clock_behind_it(
    now: datetime, occupied_since: datetime | None, ended: bool
) -> None:
    ep = _open_episode(100)
    occupied = (
        {}
        if occupied_since is None
        else {("plaza", "crowd_gathering"): Occupancy(occupied_since, now)}
    )
    book, ops, still = end_unfollowed({ep.key: ep}, [ep.key], now, occupied, lambda z, r: 120.0)
    assert [(op.kind, op.episode.ended_at) for op in ops] == ([("end", at(100))] if ended else [])
    assert (still, book[ep.key].reported_at) == (set() if ended else {ep.key}, at(100))


def test_a_raise_on_a_clock_behind_the_open_episode_opens_a_new_one() -> None:
    """The occupancy began 100 s before the episode's last sighting by the camera's clock,
    which is a day off: that is no continuation but a new episode referencing the old."""
    ep = _open_episode(100)
    raised = Ev("raise", at(120) - DAY, dwell_s=20, first_seen=at(100) - DAY)
    _, ops = step({ep.key: ep}, "cam-1", raised, update_s=60, resume_s=120, new_id=lambda: "c2")
    assert [(op.kind, op.episode.candidate_id) for op in ops] == [("end", "c1"), ("open", "c2")]
    end, fresh = (op.episode for op in ops)
    assert (end.ended_at, end.dwell_s) == (at(100), 100.0)
    assert (fresh.previous_id, fresh.started_at) == ("c1", at(100) - DAY)


@pytest.mark.parametrize(
    ("clear", "ended_at_s", "dwell_s"),
    [
        # Decided on a clock a day behind: the last sighting on the episode's clock stands.
        (Ev("clear", at(400) - DAY, dwell_s=300, first_seen=at(0) - DAY), 100, 100.0),
        # 5 s behind is still the episode's clock: it ended when the rule last saw it.
        (Ev("clear", at(95), dwell_s=85, first_seen=at(0)), 85, 100.0),
    ],
)
def test_an_episode_never_ends_before_it_began(
    clear: Ev, ended_at_s: float, dwell_s: float
) -> None:
    ep = _open_episode(100)
    _, ops = step({ep.key: ep}, "cam-1", clear, update_s=60, resume_s=120, new_id=lambda: "x")
    assert [(op.kind, op.episode.ended_at, op.episode.dwell_s) for op in ops] == [
        ("end", at(ended_at_s), dwell_s)
    ]
    assert (ops[0].episode.last_event_at, ops[0].episode.reported_at) == (at(100), at(100))


# The book as a version without clock_kept wrote it (its table and its INSERT OR REPLACE).
OLD_SCHEMA = """
CREATE TABLE detector_episodes (
    camera_id TEXT NOT NULL, zone_id TEXT NOT NULL, type TEXT NOT NULL,
    candidate_id TEXT NOT NULL, source_event_id TEXT NOT NULL, started_at REAL NOT NULL,
    reported_at REAL NOT NULL, last_event_at REAL NOT NULL, best_confidence REAL NOT NULL,
    dwell_s REAL NOT NULL, previous_id TEXT, ended_at REAL,
    PRIMARY KEY (camera_id, zone_id, type)
)
"""


def _old_save(conn: sqlite3.Connection, ep: Episode) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO detector_episodes (camera_id, zone_id, type, candidate_id, "
        "source_event_id, started_at, reported_at, last_event_at, best_confidence, dwell_s, "
        "previous_id, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ep.camera_id, ep.zone_id, ep.type, ep.candidate_id, ep.source_event_id,
            ep.started_at.timestamp(), ep.reported_at.timestamp(), ep.last_event_at.timestamp(),
            ep.best_confidence, ep.dwell_s, ep.previous_id, None,
        ),
    )  # fmt: skip


def test_a_clock_saved_before_an_older_version_wrote_the_cameras_episodes_is_dropped(
    tmp_path: Path,
) -> None:
    """cam-1's and cam-2's clocks were saved; then a version that keeps no clocks wrote an
    episode of cam-1 (and of cam-3, which has no clock). The next start drops cam-1's clock
    alone, once: the rows are marked, and what this version writes is marked too."""
    conn = sqlite3.connect(tmp_path / "outbox.db")
    conn.execute(OLD_SCHEMA)
    _old_save(conn, _open_episode(100))  # cam-1, written before clocks were kept
    assert ensure_schema(conn) == []  # no clock to distrust: the rows are marked
    clock = CameraClock(at(200), at(200))
    for cam in ("cam-1", "cam-2"):
        save_clock(conn, cam, clock)
    save_episode(conn, replace(_open_episode(100), camera_id="cam-2"))
    assert ensure_schema(conn) == []
    _old_save(conn, _open_episode(300))  # cam-1, by the older version
    _old_save(conn, replace(_open_episode(300), camera_id="cam-3"))
    assert ensure_schema(conn) == ["cam-1"]
    assert load_clocks(conn, {"cam-1", "cam-2", "cam-3"}) == {"cam-2": clock}
    save_clock(conn, "cam-1", clock)
    assert ensure_schema(conn) == []
    assert load_clocks(conn, {"cam-1", "cam-2"}) == {"cam-1": clock, "cam-2": clock}
    assert conn.execute(
        "SELECT count(*) FROM detector_episodes WHERE clock_kept = 1"
    ).fetchone() == (3,)


def test_episodes_and_background_models_take_the_same_clock_step_for_a_clock_gone_back() -> None:
    from gridpatrol.detectors import background, episodes

    assert episodes.CLOCK_RESET_S == background.CLOCK_STEP_S == 5.0


def test_an_upgrade_from_a_version_that_kept_clocks_but_not_the_mark_keeps_the_clocks(
    tmp_path: Path,
) -> None:
    """A version that saved clocks with its episodes but had no clock_kept column wrote cam-1's
    episode and clock. Adding the column says nothing of who wrote the rows: the clock is kept
    and the rows marked. A version without the mark writing afterwards is then told apart."""
    conn = sqlite3.connect(tmp_path / "outbox.db")
    conn.execute(OLD_SCHEMA)
    conn.execute(CLOCKS_SCHEMA)
    clock = CameraClock(at(200), at(200))
    _old_save(conn, _open_episode(100))  # cam-1
    save_clock(conn, "cam-1", clock)
    assert ensure_schema(conn) == []
    assert load_clocks(conn, {"cam-1"}) == {"cam-1": clock}
    assert conn.execute("SELECT camera_id, clock_kept FROM detector_episodes").fetchall() == [
        ("cam-1", 1)
    ]
    _old_save(conn, _open_episode(300))  # cam-1, by a version without the mark
    assert ensure_schema(conn) == ["cam-1"]
    assert load_clocks(conn, {"cam-1"}) == {}
