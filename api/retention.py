"""Retention of answered idempotency keys.

Every answered key keeps its whole response so that a replay gets it again; kept for ever, they
would fill the database. :class:`KeyRetention` deletes answered (``done``) keys older than
``GRIDPATROL_IDEMPOTENCY_RETENTION_S``, from the API's periodic loop. A key past that is
answered as a new request: a create finds its candidate again by id or by
``(source.system, source_event_id)`` and answers 200 with it.

Keys in flight are never deleted: a claim a request left behind when its process died is taken
over by the next request with that key (``STALE_IN_FLIGHT`` in the service), whatever its age.

The purge deletes at most ``batch`` keys per transaction, so it never holds SQLite's write lock
(or PostgreSQL's row locks) long, and at most ``batches`` transactions per pass; a pass that
finds more goes on at the loop's next turn, else the next pass is due ``every`` later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, tuple_

from gridpatrol.api.db import Database, IdempotencyRow

log = logging.getLogger(__name__)

PURGE_EVERY = timedelta(hours=1)
PURGE_BATCH = 1000
PURGE_BATCHES = 20


def purge_done_keys(db: Database, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` answered keys claimed before ``before``, oldest first, in one
    transaction; how many were deleted."""
    old = IdempotencyRow.state == "done", IdempotencyRow.created_at < before
    oldest = (
        select(IdempotencyRow.key, IdempotencyRow.principal)
        .where(*old)
        .order_by(IdempotencyRow.created_at)
        .limit(limit)
    )
    with db.write() as session:
        # The conditions again on the rows themselves: only ever an answered key.
        done = session.execute(
            delete(IdempotencyRow).where(
                *old, tuple_(IdempotencyRow.key, IdempotencyRow.principal).in_(oldest)
            )
        )
        return int(done.rowcount)  # type: ignore[attr-defined]


class KeyRetention:
    """Deletes answered idempotency keys older than ``retention`` when a pass is due."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        retention: timedelta,
        *,
        every: timedelta = PURGE_EVERY,
        batch: int = PURGE_BATCH,
        batches: int = PURGE_BATCHES,
    ) -> None:
        self.db = db
        self.clock = clock
        self.retention = retention
        self.every = every
        self.batch = batch
        self.batches = batches
        # When the last pass ran; None: the first call runs one.
        self._last: datetime | None = None
        self._more = False

    def due(self, now: datetime) -> bool:
        """A pass is due: none ran yet, the last one left keys behind, ``every`` has passed
        since it, or the clock went back before it."""
        last = self._last
        return last is None or self._more or not last <= now < last + self.every

    def run_if_due(self) -> int:
        """Run a pass if one is due: how many keys it deleted."""
        now = self.clock()
        if not self.due(now):
            return 0
        before = now - self.retention
        purged = 0
        self._more = False
        for _ in range(self.batches):
            deleted = purge_done_keys(self.db, before, self.batch)
            purged += deleted
            if deleted < self.batch:
                break
        else:
            self._more = True
        self._last = now
        if purged:
            log.info(
                "purged %d answered idempotency keys claimed before %s%s",
                purged,
                before.isoformat(),
                "; more next turn" if self._more else "",
            )
        else:
            log.debug("no answered idempotency keys claimed before %s", before.isoformat())
        return purged
