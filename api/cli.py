"""``gridpatrol api``: serve the intake API (imports FastAPI only when run)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gridpatrol.cli import LOG_FORMAT
from gridpatrol.demo import port_number
from gridpatrol.ingest.cli import positive_seconds

if TYPE_CHECKING:
    from gridpatrol.api.client import Outbox

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "api",
        help="serve the intake API, the pull feed and the review console",
        description="Serve the intake API, the pull feed and the review console.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes (default 1). More than one needs PostgreSQL: the parent "
        "migrates once and shares tokens and the session secret; events and feed wake-ups "
        "travel between workers over LISTEN/NOTIFY; /metrics sums the workers' counters",
    )
    parser.set_defaults(func=run)
    outbox = sub.add_parser(
        "outbox",
        help="show what a producer's outbox file holds, or deliver it (--drain)",
        description="Show the operations a producer's outbox file still holds and those the "
        "API refused; with --drain, deliver the pending ones to GRIDPATROL_API_URL with "
        "GRIDPATROL_API_TOKEN (e.g. the file of a detector shard that no longer runs).",
    )
    outbox.add_argument("file", help="the outbox SQLite file, e.g. var/outbox-detect-1-of-2.db")
    outbox.add_argument("--drain", action="store_true", help="deliver the pending operations")
    outbox.add_argument(
        "--end-episodes",
        action="store_true",
        help="the file's detector will not run again (a retired shard): end its open episodes "
        "at their last sighting, then drain",
    )
    outbox.add_argument(
        "--prune-refused",
        type=_positive,
        metavar="DAYS",
        help="forget the refused operations queued more than DAYS days ago, and the aliases "
        "recorded that long ago, but those of candidates the detector's episodes, the alarm "
        "bridge's state or a pending operation still names (stop the file's worker first; "
        "not with --drain or --end-episodes)",
    )
    outbox.add_argument(
        "--timeout",
        type=positive_seconds,
        default=120.0,
        metavar="S",
        help="give up draining after S seconds (default 120)",
    )
    outbox.set_defaults(func=run_outbox)


def run_outbox(args: argparse.Namespace) -> int:
    """0: shown, drained or pruned; 1: not drained in time; 2: --prune-refused with a drain,
    no such file, no outbox file, no token, in use, or (to drain) not writable."""
    from pathlib import Path

    if args.prune_refused is not None and (args.drain or args.end_episodes):
        # Pruning delivers nothing and ends no episode: taking one for the other would leave
        # an operator believing the file drained.
        print(
            "outbox: --prune-refused cannot be combined with --drain or --end-episodes: "
            "run them one after the other",
            file=sys.stderr,
        )
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"outbox: no such file {path}", file=sys.stderr)
        return 2
    drain = args.drain or args.end_episodes or args.prune_refused is not None
    # Read only until a drain: showing a file must work for an operator who may read it but
    # not write it (another user's file, a volume mounted read-only), and opening it as an
    # Outbox would create the outbox's tables (and switch to WAL) in a mistyped SQLite file.
    try:
        conn, snapshot = _open_read_only(path)
        with contextlib.closing(conn):
            if not _has_table(conn, "outbox_ops"):
                print(f"outbox: {path} is not an outbox file", file=sys.stderr)
                return 2
            if not drain:
                if snapshot:
                    print(
                        f"outbox: {path}: read without its write-ahead log, which cannot be "
                        "opened here: the latest operations may be missing",
                        file=sys.stderr,
                    )
                return _show(path, conn)
    except sqlite3.Error as exc:
        print(f"outbox: {path} cannot be read: {exc}", file=sys.stderr)
        return 2
    return _run_drain(path, args)


def _run_drain(path: Path, args: argparse.Namespace) -> int:
    from gridpatrol.api.client import ApiClient, Outbox, OutboxBusy

    client: ApiClient | None = None
    if args.prune_refused is None:  # pruning asks no API
        try:
            client = ApiClient.from_env()
        except RuntimeError as exc:
            print(f"outbox: {exc}", file=sys.stderr)
            return 2
    box: Outbox | None = None
    try:
        box = Outbox(
            path,
            client,
            component="outbox-cli",
            busy_hint="stop the worker that delivers from it first",
        )
        if args.prune_refused is not None:
            _prune(box, args.prune_refused)
            return 0
        if args.end_episodes:
            _end_episodes(box)
        return _drain(box, args.timeout)
    except OutboxBusy as exc:
        print(exc, file=sys.stderr)  # "outbox <path> is in use ...": it names the command
        return 2
    except (sqlite3.Error, OSError) as exc:
        # A drain writes to the file (and takes its lock file beside it): a file or folder
        # this user may not write, or a read-only volume, ends it here.
        print(f"outbox: {path}: {exc}", file=sys.stderr)
        return 2
    finally:
        if box is not None:
            box.stop()


def _open_read_only(path: Path) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to ``path``, and whether it is opened as immutable, a snapshot
    that may miss the latest writes of a write-ahead log beside it. :class:`sqlite3.Error`
    for a file that is no SQLite database, or cannot be read."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens it
        return conn, False
    except sqlite3.Error as exc:
        conn.close()
        # A WAL file closed cleanly has no shared-memory file, and SQLite cannot create one
        # in a folder that is read-only (to this user, or a read-only volume: SQLite says
        # READONLY_DIRECTORY or CANTOPEN): read the file as it is. Never elsewhere: a worker
        # writing the file meanwhile would go unseen.
        no_shm = (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY_DIRECTORY)
        if exc.sqlite_errorcode not in no_shm or _writable(path.parent):
            raise
    conn = sqlite3.connect(f"{uri}&immutable=1", uri=True)
    wal = path.with_name(path.name + "-wal")
    return conn, wal.is_file() and wal.stat().st_size > 0


def _writable(folder: Path) -> bool:
    read_only_volume = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    return not read_only_volume and os.access(folder, os.W_OK)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def _show(path: Path, conn: sqlite3.Connection) -> int:
    """What the file holds, read over the read-only connection ``conn``."""
    from gridpatrol.detectors.episodes import load_book

    (pending,) = conn.execute("SELECT COUNT(*) FROM outbox_ops WHERE state = 'pending'").fetchone()
    print(f"{path}: {pending} operation(s) pending")
    refused = conn.execute(
        "SELECT kind, candidate_id, last_error FROM outbox_ops WHERE state = 'failed' ORDER BY seq"
    )
    for kind, candidate_id, error in refused.fetchall():
        print(f"refused: {kind} {candidate_id or 'evidence'}: {error}")
    book = load_book(conn) if _has_table(conn, "detector_episodes") else {}
    for ep in book.values():
        if ep.open:
            print(
                f"open episode: camera {ep.camera_id} zone {ep.zone_id} {ep.type}, "
                f"candidate {ep.candidate_id}, last seen {ep.last_event_at.isoformat()}"
            )
    return 0


def _end_episodes(box: Outbox) -> None:
    """End a retired detector file's open episodes: nothing else ever would."""
    from datetime import UTC, datetime

    from gridpatrol.detectors.worker import end_unserved_episodes

    box.claim()  # not while its worker runs: that worker still follows them
    for ep, queued in end_unserved_episodes(box, set(), datetime.now(UTC)):
        what = f"camera {ep.camera_id} zone {ep.zone_id} {ep.type}"
        at = ep.last_event_at.isoformat()
        if queued:
            print(f"ended candidate {ep.candidate_id} ({what}) at its last sighting {at}")
        else:
            print(
                f"ended the episode of candidate {ep.candidate_id} ({what}) at its last "
                f"sighting {at} in the book only: the API refused it for good, no end is sent"
            )


def _prune(box: Outbox, days: int) -> None:
    """Forget the file's old refusals and aliases (see :meth:`Outbox.prune_refused`)."""
    box.claim()  # not while its worker runs: it may open episodes meanwhile
    with contextlib.closing(sqlite3.connect(box.path)) as conn:
        followed = _followed(conn)
    ops, aliases = box.prune_refused(days * 86400.0, followed)
    print(f"{box.path}: {ops} refused operation(s) and {aliases} alias(es) forgotten")


# A candidate id in the alarm bridge's stored state (a JSON list of the alarm's fields).
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _followed(conn: sqlite3.Connection) -> set[str]:
    """The candidate ids the producer of an outbox file may still update or name: a
    detector's episodes, ended ones too, and the candidates they reference, the alarm
    bridge's active or last alarm of each sensor and type, its coalesced updates not yet
    queued and the alarms whose snapshot it still awaits. An ended episode stays in the book
    until the next one of its key (camera, zone, type) opens and references it, through its
    alias as the API's id: one row per key."""
    ids: set[str] = set()
    if _has_table(conn, "detector_episodes"):
        rows = conn.execute("SELECT candidate_id, previous_id FROM detector_episodes")
        ids.update(i for row in rows.fetchall() for i in row if i)
    if _has_table(conn, "bridge_alarm_state"):
        for (state,) in conn.execute("SELECT state FROM bridge_alarm_state").fetchall():
            ids.update(_UUID.findall(state.lower()))
    if _has_table(conn, "bridge_pending_patch"):
        rows = conn.execute("SELECT candidate_id FROM bridge_pending_patch")
        ids.update(str(cid) for (cid,) in rows.fetchall())
    # An alarm pushed out of bridge_alarm_state may still await its snapshot: the patch that
    # attaches it is held back only while the alarm's refusal is remembered, otherwise it
    # would go to the candidate another producer holds under the refused id.
    if _has_table(conn, "bridge_snapshot_wanted"):
        rows = conn.execute("SELECT candidate_id FROM bridge_snapshot_wanted")
        ids.update(str(cid) for (cid,) in rows.fetchall())
    return ids


def _drain(box: Outbox, timeout: float) -> int:
    pending, refused = box.depth(), len(box.failed())
    box.start()  # holds the file: refused while its worker runs
    drained = box.flush(timeout)
    left, newly_refused = box.depth(), len(box.failed()) - refused
    delivered = pending - left - newly_refused
    print(f"{box.path}: {delivered} delivered, {left} pending, {newly_refused} refused")
    return 0 if drained else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """0: stopped; 1: the database went away while it started (the unit restarts it);
    2: setup to mend (settings, site file, a database that refused the connection);
    3: the server could not start (one worker)."""
    # Alembic logs its plugin set-up at import and its context at every look at a revision;
    # the start-up log says what it does itself (as _log_config does in each worker).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from sqlalchemy.exc import DatabaseError

    from gridpatrol.api.settings import load_settings
    from gridpatrol.site import SiteConfigError

    url: str | None = None
    try:
        settings = load_settings()
        url = settings.database_url
        settings.check()
        # A stop while it waits for the database ends with status 0, as a stop while serving.
        signal.signal(signal.SIGTERM, _stopped)
        _wait_for_database(settings.database_url)
        # With --workers N the parent checks it in prepare_workers.
        if args.workers == 1 and not settings.migrate_on_start:
            _check_at_head(settings.database_url)
        return _serve(args) if args.workers == 1 else _serve_workers(args)
    except (RuntimeError, SiteConfigError, ValueError) as exc:
        # ValueError covers invalid GRIDPATROL_* settings, each named, no value quoted.
        log.error("the intake API cannot start: %s", exc)
        return 2
    except DatabaseError as exc:
        # Not only OperationalError: a SQLite file that is no database (a backup, a config
        # file named by mistake) raises DatabaseError, whose traceback and status 1 systemd
        # restarts for ever.
        if database_unreachable(exc):
            # Reached a moment ago: gone again during the migration. Not setup to mend.
            log.error("the intake API cannot start: the database went away: %s", _reason(exc))
            return 1
        log.error("the intake API cannot start: %s", _refusal(url, exc))
        return 2


# What a failed PostgreSQL connection says when it may succeed by itself later (libpq gives no
# SQLSTATE for a failed connection, only its message). No server answered (refused, timed out,
# a host name or a route not there yet, a Unix socket not yet created), the connection was
# lost, or the server cannot take connections for a while. Anything else, from the server (a
# password, a role or a database that does not exist, pg_hba.conf) or from the client before
# it (SSL required but not offered, a certificate not verified, a parameter misspelt), is
# setup to mend: waiting on it would leave intake down without an error.
_TRANSPORT = (
    "Connection refused",
    "Connection timed out",
    "timeout expired",
    "could not translate host name",
    "No route to host",
    "Network is unreachable",
    "Connection reset by peer",
    "server closed the connection unexpectedly",
    "failed: No such file or directory",  # the server's Unix socket, before it starts
    "the connection is lost",
    "SSL SYSCALL error",
    "SSL connection has been closed unexpectedly",
)
_BUSY_SERVER = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    # A role's or a database's CONNECTION LIMIT: after a power cut connections that died
    # without a reset count against it until the server notices (keepalive, hours by default).
    "too many connections for",
    "terminating connection due to administrator command",  # a server stopping mid-session
)
WAIT_S = (1.0, 30.0)  # the first and the longest wait between tries
# libpq gives a server's own answer after "failed: " as "<severity>:  <message>", both in the
# server's lc_messages: FATAL, or 致命错误, FATAL in German, ...
_SERVER_ANSWER = re.compile(r"failed: ([^:\n]+):  ")
_ENGLISH_SEVERITIES = frozenset({"FATAL", "ERROR", "PANIC"})


def _server_severity(message: str) -> str | None:
    """The severity of a server's answer in a failed connection's message, else None."""
    answer = _SERVER_ANSWER.search(message)
    return answer.group(1) if answer else None


def database_unreachable(exc: Exception) -> bool:
    """Whether a failed PostgreSQL connection may succeed by itself later (no server
    answered, the connection was lost, or the server is starting, stopping or full), not
    one refused by the server or by the client's own setup."""
    orig = getattr(exc, "orig", None)
    if not hasattr(orig, "sqlstate"):  # not psycopg: SQLite, a local file
        return False
    message = str(orig)
    if any(known in message for known in _TRANSPORT + _BUSY_SERVER):
        return True
    # A server answering in another language cannot be read: starting, stopping and full are
    # as likely as a refusal, and exiting would leave intake down after a power cut. Its answer
    # is in each warning; lc_messages = 'C' (or an English locale) lets a refusal end the start.
    severity = _server_severity(message)
    return severity is not None and severity not in _ENGLISH_SEVERITIES


def _refusal(url: str | None, exc: Exception) -> str:
    """What a database that cannot be used said; a SQLite file is named by its path, which
    SQLite's own messages (``unable to open database file``) leave out."""
    from sqlalchemy.engine import make_url

    from gridpatrol.api.settings import sqlite_path

    path = sqlite_path(make_url(url)) if url is not None else None
    if path is not None:
        return f"the SQLite database {path.resolve()} cannot be used: {_reason(exc)}"
    return f"the database refused it: {_reason(exc)}"


def _reason(exc: Exception) -> str:
    """The driver's first line: it names host and port (never the password)."""
    orig = getattr(exc, "orig", None)
    lines = str(orig or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _wait_for_database(url: str) -> None:
    """Return once PostgreSQL at ``url`` takes a connection, trying again with backoff while
    no server answers: after a site's power cut the API may start before its database, and
    exiting would leave intake down until someone restarts it. A refusal, by the server or by
    the client's setup, raises RuntimeError at once."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from gridpatrol.api.db import make_engine

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    engine = make_engine(url)
    wait, longest = WAIT_S
    try:
        while True:
            try:
                with engine.connect():
                    return
            except OperationalError as exc:
                if not database_unreachable(exc):
                    reason = _reason(exc)
                    # The server's refusals are its answers; the client's own (SSL, a
                    # certificate, a parameter) come before any.
                    if _server_severity(str(getattr(exc, "orig", exc))) is not None:
                        raise RuntimeError(f"the database refused it: {reason}") from exc
                    raise RuntimeError(f"cannot connect to the database: {reason}") from exc
                log.warning(
                    "the database %s is not reachable yet (%s); retrying in %.0f s",
                    parsed.render_as_string(),
                    _reason(exc),
                    wait,
                )
            time.sleep(wait)
            wait = min(wait * 2, longest)
    finally:
        engine.dispose()


def _check_at_head(url: str) -> None:
    """SchemaMismatch unless the database is at this release's last revision."""
    from sqlalchemy.engine import make_url

    from gridpatrol.api.db import Database, SchemaMismatch
    from gridpatrol.api.settings import sqlite_path

    path = sqlite_path(make_url(url))
    # Connecting would create an empty database there (a mistyped path, say), which a start
    # that does not migrate can only refuse: say which file is missing instead.
    if path is not None and not path.is_file():
        missing = "is not a file" if path.exists() else "does not exist"
        raise SchemaMismatch(
            f"the SQLite database {path.resolve()} {missing}; "
            "GRIDPATROL_MIGRATE_ON_START is false, so nothing creates it"
        )
    db = Database(url)
    try:
        db.check_at_head()
    finally:
        db.dispose()


def _serve(args: argparse.Namespace) -> int:
    from gridpatrol.api.app import create_app
    from gridpatrol.api.workers import Server, config

    app = create_app()
    level = logging.getLogger().getEffectiveLevel()
    # After its graceful shutdown uvicorn raises the stop signal again; with SIGTERM's default
    # handler that would end the process as killed (status 143). This handler takes it (and a
    # SIGTERM before uvicorn listens), so SIGTERM ends with status 0, like Ctrl-C and like
    # every other gridpatrol command.
    signal.signal(signal.SIGTERM, _stopped)
    server = Server(
        config(
            app,
            host=args.host,
            port=args.port,
            log_level=logging.getLevelName(level).lower(),
            access_log=level <= logging.DEBUG,
        )
    )
    # Event streams and feed long polls end when the server is told to stop.
    app.state.stopping = server.stopping
    # uvicorn raises SIGINT again after its graceful shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    # As uvicorn.run: an app whose startup failed ends with uvicorn's STARTUP_FAILURE.
    return 0 if server.started else 3


def _stopped(signum: int, _frame: FrameType | None) -> None:
    log.info("api: stopped on signal %d", signum)
    raise SystemExit(0)


def _serve_workers(args: argparse.Namespace) -> int:
    from gridpatrol.api.app import prepare_workers
    from gridpatrol.api.settings import Settings
    from gridpatrol.api.workers import Supervisor, WorkerSpec

    shared = prepare_workers(Settings(), args.workers)
    # Fresh, so no stale counters of an earlier run are summed in.
    metrics_dir = tempfile.mkdtemp(prefix="gridpatrol-metrics-")
    # Spawned workers inherit this environment and build their app from it.
    os.environ.update(shared, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    level = logging.getLogger().getEffectiveLevel()
    spec = WorkerSpec(
        host=args.host,
        port=args.port,
        log_config=_log_config(level),
        log_level=logging.getLevelName(level).lower(),
        access_log=level <= logging.DEBUG,
    )
    log.info("starting %d workers on %s:%d", args.workers, args.host, args.port)
    try:
        return Supervisor(spec, args.workers).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _log_config(level: int) -> dict[str, Any]:
    """uvicorn's logging plus a root handler, applied again in every worker."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gridpatrol"] = {"format": LOG_FORMAT}
    config["handlers"]["gridpatrol"] = {
        "class": "logging.StreamHandler",
        "formatter": "gridpatrol",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["gridpatrol"], "level": logging.getLevelName(level)}
    # Alembic logs its plugin set-up at import; the workers import it but never migrate.
    config["loggers"]["alembic"] = {"level": "WARNING"}
    return config
