"""The database: SQLAlchemy 2 models, the engine, sessions and migrations.

The candidate document is stored whole as JSON next to the columns the API filters, sorts and
locks on, so a read is one query and a write one row. SQLite runs in WAL mode, syncs the log
at every commit (``synchronous=FULL``: what the API answered survives a power cut), has a busy
timeout and takes its write lock at the start of every write transaction (``BEGIN IMMEDIATE``)
so concurrent writers queue instead of failing on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from gridpatrol.api.settings import IN_MEMORY, in_memory, sqlite_path

log = logging.getLogger(__name__)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class CandidateRow(Base):
    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("source_system", "source_event_id", name="uq_candidates_natural"),
        Index("ix_candidates_created", "created_at", "id"),
        # The event stream replays what changed since a reconnecting console's last event.
        Index("ix_candidates_updated", "updated_at", "id"),
        Index("ix_candidates_status", "status"),
        Index("ix_candidates_type", "type"),
        Index("ix_candidates_camera", "camera_id"),
        Index("ix_candidates_sensor", "sensor_id"),
        Index("ix_candidates_hold", "hold_until"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    type: Mapped[str | None] = mapped_column(String(64))
    camera_id: Mapped[str | None] = mapped_column(String(64))
    sensor_id: Mapped[str | None] = mapped_column(String(64))
    source_system: Mapped[str | None] = mapped_column(String(128))
    source_event_id: Mapped[str | None] = mapped_column(String(256))
    urgency: Mapped[str | None] = mapped_column(String(16))
    reject_reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    hold_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    arrive_by: Mapped[datetime | None] = mapped_column(UtcDateTime())
    arrived_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The candidate's latest feed position; NULL while it is not (yet) visible to the feed.
    feed_pos: Mapped[int | None] = mapped_column(BigInteger)
    doc: Mapped[str] = mapped_column(Text)


class MissingEvidenceRow(Base):
    """Evidence an incomplete or returned candidate refers to that the store did not hold:
    its upload judges the candidate again (``CandidateService.evidence_arrived``). The rows
    of a candidate go when it waits for no file any more (complete, rejected, merged)."""

    __tablename__ = "missing_evidence"
    # Those deletes name the candidate only; the key starts with the file.
    __table_args__ = (Index("ix_missing_evidence_candidate", "candidate_id"),)

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(String(36), primary_key=True)


class IdempotencyRow(Base):
    __tablename__ = "idempotency"
    # The retention purge deletes answered keys oldest first (gridpatrol.api.retention).
    __table_args__ = (Index("ix_idempotency_created", "created_at"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    principal: Mapped[str] = mapped_column(String(100), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_flight | done
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RevokedSessionRow(Base):
    """A console session ended by logging out, kept until it would have expired: every
    instance refuses its cookie (``Authenticator.open_session``) until then."""

    __tablename__ = "revoked_sessions"
    # Each logout deletes the rows past their expiry (``Authenticator.revoke``).
    __table_args__ = (Index("ix_revoked_sessions_expires", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class FeedRow(Base):
    __tablename__ = "feed"

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    candidate_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class FeedCounterRow(Base):
    """One row holding the last assigned feed position; its row lock orders the feed."""

    __tablename__ = "feed_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(BigInteger)


class FeedCursorRow(Base):
    __tablename__ = "feed_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


# A PostgreSQL server that takes the TCP connection but does not answer (hung, or a packet
# filter dropping its replies) fails a new connection after this many seconds, instead of
# holding the request (and its thread) until the client gives up.
CONNECT_TIMEOUT_S = 5
# TCP keepalive, and how long data sent may go unacknowledged (ms), on every PostgreSQL
# connection: one that died without a reset (a NAT or firewall forgetting it, a failover, a
# power cut of the server) fails after about half a minute to a minute, not after the
# system's two hours. Neither cuts a statement that merely runs long (a migration, a
# retention purge): the server's kernel acknowledges and answers the probes meanwhile.
# Values in a database URL's query win.
KEEPALIVE = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10"}
KEEPALIVE |= {"keepalives_count": "3", "tcp_user_timeout": "30000"}
# The longest a request waits for a pooled connection when all are in use (a slow or hung
# database): then it is answered 503 with Retry-After rather than waiting on.
POOL_TIMEOUT_S = 10.0
POOL_SIZE, MAX_OVERFLOW = 10, 20
# pg_advisory_lock key held while one process migrates (any constant no other lock uses).
MIGRATION_LOCK = 0x67705F6D6967  # "gp_mig"
# pg_locks shows a bigint advisory key as its high 32 bits (classid), its low 32 bits (objid)
# and objsubid 1 (a pair of int keys has objsubid 2).
_LOCK_HOLDER = text(
    "SELECT l.pid, a.application_name FROM pg_locks l"
    " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.classid::bigint = :high AND l.objid::bigint = :low"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# The first and the longest pause between tries of the migration lock; a start still waiting
# after LOCK_WARN_AFTER_S says who holds it, and again every LOCK_WARN_EVERY_S.
LOCK_POLL_S = (0.05, 1.0)
LOCK_WARN_AFTER_S, LOCK_WARN_EVERY_S = 2.0, 30.0


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and immediate write locks."""
    parsed = make_url(url)
    pool = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW, "pool_timeout": POOL_TIMEOUT_S}
    if parsed.get_backend_name() != "sqlite":
        # No pre-ping: it costs a round trip per transaction (a fifth of a post's time).
        # A connection the server dropped fails once, which invalidates the whole pool;
        # idempotent writes run again and other requests get a 503 with Retry-After.
        connect_args: dict[str, Any] = {"application_name": f"gridpatrol-api-{os.getpid()}"}
        if parsed.get_backend_name() == "postgresql":
            connect_args |= {
                k: v
                for k, v in {**KEEPALIVE, "connect_timeout": str(CONNECT_TIMEOUT_S)}.items()
                if k not in parsed.query
            }
        return create_engine(url, **pool, connect_args=connect_args)
    if in_memory(parsed):
        # Its pool would hand each thread a database of its own (and refuse the pool options).
        raise ValueError(IN_MEMORY)
    path = sqlite_path(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **pool, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are begun explicitly below, not by the driver.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        # FULL: a commit is on disk before the API answers 2xx (NORMAL, in WAL mode, may lose
        # the last commits to a power cut), and a producer deletes its copy once answered.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get("readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


MIGRATIONS = files("gridpatrol.api").joinpath("migrations")


class SchemaMismatch(RuntimeError):
    """The database's schema is not one this release can serve or migrate."""


def _quiet_alembic() -> None:
    # Alembic's own INFO lines (plugin setup, the context, each step) drown the service's
    # start-up log.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _revisions(conn: Connection) -> tuple[str | None, str, set[str]]:
    """The database's Alembic revision, this release's last one, and all it knows."""
    script = ScriptDirectory(str(MIGRATIONS))
    current = MigrationContext.configure(conn).get_current_revision()
    known = {rev.revision for rev in script.walk_revisions()}
    return current, str(script.get_current_head()), known


def _take_migration_lock(conn: Connection) -> None:
    """Take MIGRATION_LOCK on ``conn``, trying again with a short backoff: a blocking
    pg_advisory_lock would wait for ever without a word while a slow or hung migration in any
    schema of the database holds it. A start still waiting says which backend holds it."""
    started = time.monotonic()
    warn_at = started + LOCK_WARN_AFTER_S
    pause, longest = LOCK_POLL_S
    while True:
        taken = conn.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK}
        ).scalar_one()
        conn.commit()  # a session lock: it outlives this transaction
        if taken:
            return
        now = time.monotonic()
        if now >= warn_at:
            holder = conn.execute(
                _LOCK_HOLDER,
                {"high": MIGRATION_LOCK >> 32, "low": MIGRATION_LOCK & 0xFFFFFFFF},
            ).first()
            conn.commit()
            who = (
                f"PostgreSQL backend pid {holder[0]} (application_name {holder[1] or ''!r})"
                if holder is not None
                else "a session that has just let it go"
            )
            log.warning(
                "waiting %.0f s so far for the database migration lock, held by %s: another "
                "process is migrating a schema of this database (pg_advisory_lock key %d "
                "covers them all)",
                now - started,
                who,
                MIGRATION_LOCK,
            )
            warn_at = now + LOCK_WARN_EVERY_S
        time.sleep(pause)
        pause = min(pause * 2, longest)


class Database:
    """The engine and session factory of one app; the only owner of the DB connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite admits one writer; threads of this process queue on a lock that wakes the next
        # one at once, instead of SQLite's busy handler, which polls with sleeps of up to
        # 100 ms. Writers in other processes still meet the busy timeout.
        self._sqlite_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            self._sqlite_lock or contextlib.nullcontext()
        )

    def writes_inline(self) -> bool:
        """Whether a short write had better run on the calling thread (the event loop's).

        True on SQLite while no other thread of this process is writing. The sqlite3 module
        releases the GIL around every call, so a write on a worker thread hands the GIL to the
        event loop and back several times per transaction, which costs more CPU than the write
        itself. A write waiting for the lock, and every PostgreSQL statement (a network round
        trip), would stall the loop instead: those go to the thread pool. (A pool thread that
        takes the lock between this check and the write makes the loop wait for that one write.)
        """
        return self._sqlite_lock is not None and not self._sqlite_lock.locked()

    def migrate(self) -> None:
        """Apply every Alembic migration (idempotent; run at start). :class:`SchemaMismatch`
        when the database is at a revision this release does not know (a newer release's)."""
        _quiet_alembic()
        ini = files("gridpatrol.api").joinpath("alembic.ini")
        cfg = Config(str(ini))
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.connect() as conn, self._migration_lock(conn), conn.begin():
            current, head, known = _revisions(conn)
            if current is not None and current not in known:
                # Alembic's "Can't locate revision" traceback would end the process with status
                # 1, which systemd restarts for ever: no restart mends it.
                raise SchemaMismatch(
                    f"database at revision {current}, this release knows up to {head}"
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("database %s migrated to head", make_url(self.url).render_as_string())

    def check_at_head(self) -> None:
        """:class:`SchemaMismatch` unless the database is at this release's last revision: a
        start that does not migrate would otherwise say ready and answer requests with 503."""
        _quiet_alembic()
        with self.engine.connect() as conn:
            current, head, known = _revisions(conn)
        if current is not None and current not in known:
            # A newer release's: starting this one with migrations on does not mend it either.
            raise SchemaMismatch(f"database at revision {current}, this release knows up to {head}")
        if current != head:
            raise SchemaMismatch(
                f"database at revision {current or 'none (never migrated)'}, this release needs "
                f"{head}; start one instance with GRIDPATROL_MIGRATE_ON_START=true to migrate it"
            )

    @contextmanager
    def _migration_lock(self, conn: Connection) -> Iterator[None]:
        """On PostgreSQL, hold MIGRATION_LOCK on ``conn`` for the session: two API processes
        starting on a fresh database would both create Alembic's version table, and the
        second failed on pg_type's unique index. The second now waits, then finds the schema
        at head. (One key for every schema of a database: other deployments only wait.)"""
        if self.dialect != "postgresql":
            yield
            return
        try:
            _take_migration_lock(conn)
        except BaseException:
            # A stop signal may land after the server granted the lock: closing the
            # connection releases it, where the pool would keep it held.
            conn.invalidate()
            raise
        try:
            yield
        finally:
            try:
                conn.rollback()
                released = conn.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK}
                ).scalar_one()
                conn.commit()
            except Exception:
                # A connection the unlock failed on (the server went away mid-migration) is
                # closed, which releases the lock; it never goes back to the pool holding it.
                conn.invalidate()
            else:
                if not released:
                    log.warning(
                        "the database migration lock was no longer held by this process when "
                        "it released it (its session was reset?); migrations of other "
                        "processes may have run alongside"
                    )

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on exit."""
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            session.connection(execution_options={"readonly": True})
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
