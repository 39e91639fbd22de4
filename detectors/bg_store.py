"""Background models kept in the outbox's SQLite file across restarts of the worker.

A zone's long-term background is what it normally looks like, learned over hours. Started
afresh, a worker would take whatever stands there now (a pile it was reporting) as normal,
and the ground uncovered when the pile goes as a new one. The caller owns the transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping

from gridpatrol.detectors import background as bg

log = logging.getLogger(__name__)

Key = tuple[str, float]  # zone_id, learn_s

SCHEMA = """
CREATE TABLE IF NOT EXISTS detector_backgrounds (
    camera_id TEXT NOT NULL,
    zone_id TEXT NOT NULL,
    learn_s REAL NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (camera_id, zone_id, learn_s)
)
"""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.execute(SCHEMA)


def save(
    conn: sqlite3.Connection, camera_id: str, states: Mapping[Key, bg.BackgroundState]
) -> None:
    """The camera's models are now ``states``: those of zones (or learning times) it no
    longer has are deleted."""
    conn.execute("DELETE FROM detector_backgrounds WHERE camera_id = ?", (camera_id,))
    conn.executemany(
        "INSERT INTO detector_backgrounds (camera_id, zone_id, learn_s, state) VALUES (?, ?, ?, ?)",
        [(camera_id, zone, learn_s, bg.encode(st)) for (zone, learn_s), st in states.items()],
    )


def load(conn: sqlite3.Connection, camera_id: str) -> dict[Key, bg.BackgroundState]:
    """The camera's saved models; one that cannot be read is left out (and learned anew)."""
    found: dict[Key, bg.BackgroundState] = {}
    rows = conn.execute(
        "SELECT zone_id, learn_s, state FROM detector_backgrounds WHERE camera_id = ?",
        (camera_id,),
    )
    for zone_id, learn_s, data in rows:
        try:
            found[(zone_id, float(learn_s))] = bg.decode(bytes(data))
        except ValueError as exc:
            log.warning(
                "camera %s zone %s: saved background unusable (%s)", camera_id, zone_id, exc
            )
    return found
