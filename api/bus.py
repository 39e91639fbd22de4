"""Notifications between the API's worker processes over PostgreSQL LISTEN/NOTIFY.

The hub of each process delivers what that process commits to its own subscribers at once and
hands it to this bus (a ``Relay``). A sender thread batches those notes into NOTIFY payloads on a
connection of its own; a listener thread, on another connection, receives every process's
payloads and delivers the others' into the local hub, skipping its own (each payload names its
origin). So every process delivers each event exactly once.

Delivery is at most once: the send queue is bounded and drops new notes when full, a batch
being sent when the connection fails is lost, and nothing is heard while the listener
reconnects (a connection that died silently is found by TCP keepalive within about a
minute). Every loss is counted (``dropped`` and the ``on_drop`` callback). Consoles miss those
live events; feed long polls still look again every second.

One channel per schema, so deployments (and test runs) that share a database stay apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.engine import URL, make_url

from gridpatrol.api.db import CONNECT_TIMEOUT_S, KEEPALIVE
from gridpatrol.api.hub import Event, Hub

log = logging.getLogger(__name__)

# PostgreSQL refuses payloads of 8000 bytes or more; keep a margin.
MAX_PAYLOAD = 7900
QUEUE_SIZE = 10_000
MAX_BATCH = 500
# The sender collects notes this long before sending: one NOTIFY (which wakes every listener)
# per batch instead of one per request, for an imperceptible delay.
LINGER_S = 0.02
POLL_S = 0.5
BACKOFF_S = (0.5, 30.0)
# TCP keepalive on both connections, as on the API's own (gridpatrol.api.db): the listener
# only ever reads, so a connection that died without a reset (a NAT or firewall forgetting
# it, a failover) would leave it deaf, with no error, until the system's keepalive (two
# hours) gave up. With these it fails after about a minute of silence from the server, and
# reconnects. A database URL's own values win.
JOIN_TIMEOUT_S = 5.0
DROP_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Note:
    """What one ``Hub.publish`` or ``Hub.feed_changed`` call hands to the bus."""

    events: tuple[Event, ...]
    feed: bool


class Payload(BaseModel):
    """One NOTIFY payload as the listener reads it."""

    model_config = ConfigDict(frozen=True)

    origin: str
    feed: bool
    events: list[tuple[str, dict[str, Any]]]


def pack(origin: str, notes: Sequence[Note]) -> tuple[list[str], int]:
    """NOTIFY payloads carrying ``notes``, each under ``MAX_PAYLOAD`` bytes, and how many events
    were left out because one alone does not fit."""
    # ASCII-escaped JSON, so a payload's length in characters is its length in bytes.
    room = MAX_PAYLOAD - len(_frame(origin, False, []))
    groups: list[list[str]] = [[]]
    used = oversized = 0
    for event in (event for note in notes for event in note.events):
        text = json.dumps(event, separators=(",", ":"))
        cost = len(text) + 1
        if cost > room:
            oversized += 1
            continue
        if used + cost > room:
            groups.append([])
            used = 0
        groups[-1].append(text)
        used += cost
    feed = any(note.feed for note in notes)
    # The wake-up rides on the last payload, after every event of the batch.
    payloads = [_frame(origin, False, group) for group in groups[:-1]]
    if groups[-1] or feed:
        payloads.append(_frame(origin, feed, groups[-1]))
    return payloads, oversized


def _frame(origin: str, feed: bool, events: list[str]) -> str:
    # The origin comes first: a listener drops its own payloads by prefix, unparsed.
    head = json.dumps({"origin": origin, "feed": feed}, separators=(",", ":"))
    return f'{head[:-1]},"events":[{",".join(events)}]}}'


def channel_for(schema: str | None) -> str:
    """The channel of a schema; a hash where the name would pass PostgreSQL's 63 bytes."""
    name = f"gridpatrol_{schema or ''}"
    if len(name.encode()) <= 63:
        return name
    return f"gridpatrol_{hashlib.sha256((schema or '').encode()).hexdigest()[:32]}"


def connect(url: URL) -> psycopg.Connection[Any]:
    """A connection of the bus (autocommit, named after this process, with keepalive)."""
    keepalive = {k: v for k, v in KEEPALIVE.items() if k not in url.query}
    return psycopg.connect(
        make_conninfo(url.render_as_string(hide_password=False), **keepalive),
        autocommit=True,
        application_name=f"gridpatrol-bus-{os.getpid()}",
        connect_timeout=CONNECT_TIMEOUT_S,
    )


class Bus:
    """The LISTEN/NOTIFY relay of one process: ``start()`` in the app's lifespan, ``stop()``
    at its end."""

    def __init__(
        self, database_url: str, hub: Hub, on_drop: Callable[[int], None] | None = None
    ) -> None:
        self._conninfo = make_url(database_url).set(drivername="postgresql")
        self._hub = hub
        self._on_drop = on_drop
        # The pid names the process in logs; the random part keeps two hosts apart.
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._own_prefix = _frame(self.origin, False, [])[: -len(',"feed":false,"events":[]}')]
        self._queue: queue.Queue[Note] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._last_drop_log = -DROP_LOG_EVERY_S
        self.dropped = 0
        # Set while the listener is subscribed: what is sent before that is not heard here.
        self.listening = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._listen, name=f"bus-listen-{self.origin}", daemon=True),
            threading.Thread(target=self._send_loop, name=f"bus-send-{self.origin}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._hub.attach(self)
        log.info("bus %s started", self.origin)

    def stop(self) -> None:
        """Detach from the hub, send what is queued, close both connections."""
        self._hub.attach(None)
        self._stop.set()
        # One deadline for both threads: each may sit in a call to a database gone silent,
        # and the shutdown has to end within the orchestrator's grace period.
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            log.warning("bus %s: %s still waiting on the database; left", self.origin, stuck)
        log.info("bus %s stopped (%d notification(s) dropped)", self.origin, self.dropped)

    # -- the relay the hub calls (request threads) -------------------------------------------

    def send(self, events: list[Event], feed: bool) -> None:
        try:
            self._queue.put_nowait(Note(tuple(events), feed))
        except queue.Full:
            self._drop(1, "the send queue is full")

    def _drop(self, count: int, reason: str) -> None:
        with self._lock:
            self.dropped += count
            total = self.dropped
            now = time.monotonic()
            loud = now - self._last_drop_log >= DROP_LOG_EVERY_S
            if loud:
                self._last_drop_log = now
        if self._on_drop is not None:
            self._on_drop(count)
        if loud:
            log.warning(
                "bus %s dropped %d notification(s): %s (%d so far)",
                self.origin,
                count,
                reason,
                total,
            )

    # -- connections -------------------------------------------------------------------------

    def _connect(self, role: str) -> tuple[psycopg.Connection[Any], str]:
        conn = connect(self._conninfo)
        try:
            row = conn.execute("SELECT current_schema()").fetchone()
        except psycopg.Error:
            _close(conn)
            raise
        channel = channel_for(row[0] if row else None)
        log.info("bus %s: %s connected on channel %s", self.origin, role, channel)
        return conn, channel

    def _backoff(self, delay: float, role: str, exc: Exception) -> float:
        """Wait before reconnecting (shorter if stopping); the next, longer delay."""
        log.warning(
            "bus %s: %s connection failed (%s); reconnecting in %.1f s",
            self.origin,
            role,
            exc,
            delay,
        )
        self._stop.wait(delay)
        return min(delay * 2, BACKOFF_S[1])

    # -- the listener thread -----------------------------------------------------------------

    def _listen(self) -> None:
        delay = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                conn, channel = self._connect("listener")
                with conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.listening.set()
                    delay = BACKOFF_S[0]
                    self._receive_until_stopped(conn)
            except psycopg.Error as exc:
                self.listening.clear()
                if not self._stop.is_set():
                    delay = self._backoff(delay, "listener", exc)

    def _receive_until_stopped(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=POLL_S):
                self._receive(notify.payload)

    def _receive(self, raw: str) -> None:
        if raw.startswith(self._own_prefix):
            return  # already delivered here when it was published; not worth parsing
        try:
            payload = Payload.model_validate_json(raw)
        except ValidationError:
            log.warning("bus %s: ignored a malformed notification: %.200s", self.origin, raw)
            return
        self._hub.deliver(payload.events)
        if payload.feed:
            self._hub.wake_feed()

    # -- the sender thread -------------------------------------------------------------------

    def _send_loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        channel = ""
        delay = BACKOFF_S[0]
        while notes := self._take():
            try:
                if conn is None:
                    conn, channel = self._connect("sender")
                self._notify(conn, channel, notes)
                delay = BACKOFF_S[0]
            except psycopg.Error as exc:
                self._drop(len(notes), f"sending failed: {exc}")
                _close(conn)
                conn = None
                if self._stop.is_set():
                    # No connection to flush to: waiting for one would hold up the shutdown.
                    self._drop(self._queue.qsize(), "stopping without a connection")
                    return
                delay = self._backoff(delay, "sender", exc)
        _close(conn)

    def _take(self) -> list[Note]:
        """The next batch of notes; empty only once the bus stops and the queue is drained."""
        while True:
            try:
                notes = [self._queue.get(timeout=POLL_S)]
                break
            except queue.Empty:
                if self._stop.is_set():
                    return []
        time.sleep(LINGER_S)
        while len(notes) < MAX_BATCH:
            try:
                notes.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return notes

    def _notify(self, conn: psycopg.Connection[Any], channel: str, notes: list[Note]) -> None:
        payloads, oversized = pack(self.origin, notes)
        if oversized:
            self._drop(oversized, f"an event exceeds {MAX_PAYLOAD} bytes")
        # One statement, one round trip and one commit, however many payloads; unnest keeps
        # their order.
        conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload", (channel, payloads)
        )


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
