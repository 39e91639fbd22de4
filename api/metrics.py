"""Prometheus metrics of one app: requests, latencies, candidates by status, feed lag.

With ``gridpatrol api --workers N`` the parent sets ``PROMETHEUS_MULTIPROC_DIR``: each worker's
counters and histograms live in files there and every scrape, whichever worker answers it,
sums all of them. The database gauges are read at scrape time by the answering worker only,
within a deadline of their own (``READ_DEADLINE_S``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridpatrol.api.db import CandidateRow, Database, FeedCounterRow, FeedCursorRow, FeedRow

log = logging.getLogger(__name__)
# The status a request is counted under when its client went away before it was answered.
CLIENT_CLOSED = 499
# The longest a scrape waits for the database gauges. Prometheus gives a whole scrape 10 s by
# default: a read waiting for a pooled connection (the pool's own timeout is 10 s) or for a
# hung server would lose the scrape, and the instance would be reported down with every
# counter of the outage.
READ_DEADLINE_S = 2.0


def multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class Metrics:
    def __init__(
        self, db: Database, feed_names: Iterable[str] = (), ack_names: Iterable[str] = ()
    ) -> None:
        """``feed_names``: the platform tokens' names, whose feed lag is reported from the
        start, before their first ack. ``ack_names``: the other tokens' names that may
        acknowledge (admins), whose lag is reported once they have."""
        self.registry = CollectorRegistry()
        # In multiprocess mode the collector below reports this process's values from its
        # file; registering the metrics as well would count them twice.
        own = None if multiprocess() else self.registry
        self.requests = Counter(
            "gridpatrol_api_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "gridpatrol_api_request_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30),
            registry=own,
        )
        self.bus_dropped = Counter(
            "gridpatrol_api_bus_dropped",
            "notifications the inter-process bus lost (queue full, connection lost, too large)",
            registry=own,
        )
        self.sse_dropped = Counter(
            "gridpatrol_api_sse_dropped",
            "live events a console's stream could not take (its queue was full); each such"
            " stream was sent a reset and ended",
            registry=own,
        )
        if multiprocess():
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        collector = _StorageCollector(db, frozenset(feed_names), frozenset(ack_names))
        self.registry.register(collector)

    def close(self) -> None:
        """At the worker's exit: drop its live-gauge files (its counters keep counting)."""
        if multiprocess():
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Storage:
    """What one read of the database found."""

    counts: list[tuple[str, int]]
    last: int
    # Per token name, the candidates in the feed after its acknowledged cursor.
    lags: list[tuple[str, int]]


class _StorageCollector:
    """Gauges read from the database at scrape time, so every process reports the truth.

    While the database cannot be read, a scrape still answers: ``gridpatrol_api_database_up``
    is 0 and the database gauges are left out. Failing the scrape instead would drop every
    counter with them, and Prometheus would report the instance down (the wrong fault) and
    never see the 5xx answers of the outage. The same holds for a database that does not
    answer within ``READ_DEADLINE_S`` (every pooled connection taken, a hung server): the
    read goes on in a thread of its own, and a scrape meanwhile waits for that read rather
    than starting another, so a hung server holds one thread and one connection, not one
    per scrape.
    """

    def __init__(self, db: Database, feed_names: frozenset[str], ack_names: frozenset[str]) -> None:
        self.db = db
        self.feed_names = feed_names
        # A cursor of a name no longer configured (a withdrawn token) is left out: its lag
        # would grow for ever and fire the alert on a platform that no longer pulls.
        self.known = feed_names | ack_names
        # Whether the last scrape failed to read the database: an outage is logged once when
        # it is first met and once when it ends, not at every scrape.
        self._down = False
        self._lock = threading.Lock()
        self._reading: Future[_Storage] | None = None

    def describe(self) -> list[Any]:
        return []

    def _read(self) -> _Storage:
        with self.db.read() as session:
            counts = session.execute(
                select(CandidateRow.status, func.count()).group_by(CandidateRow.status)
            ).all()
            last = session.execute(select(FeedCounterRow.last)).scalar() or 0
            cursors = session.execute(select(FeedCursorRow.name, FeedCursorRow.position))
            # A platform that never acknowledged has no cursor row: it is at position 0, and
            # without a series the alert on its lag could not fire.
            known = {name: at for name, at in cursors.all() if name in self.known}
            positions = dict.fromkeys(self.feed_names, 0) | known
            # Counted, not the last position minus the cursor: a candidate changed again
            # took a new position and left its old one, so positions run ahead of the cases.
            behind = {
                position: session.execute(
                    select(func.count()).select_from(FeedRow).where(FeedRow.position > position)
                ).scalar_one()
                for position in set(positions.values())
            }
        lags = [(name, behind[position]) for name, position in sorted(positions.items())]
        return _Storage([(s, n) for s, n in counts], last, lags)

    def _start_read(self) -> Future[_Storage]:
        """The read in flight, or a new one if none is."""
        with self._lock:
            if self._reading is None or self._reading.done():
                reading: Future[_Storage] = Future()

                def run() -> None:
                    try:
                        reading.set_result(self._read())
                    except BaseException as exc:  # handed to the scrape that waits for it
                        reading.set_exception(exc)

                # A daemon: a read hung on a dead server must not hold up the process's exit.
                threading.Thread(target=run, name="metrics-read", daemon=True).start()
                self._reading = reading
            return self._reading

    def _mark_down(self, down: bool) -> bool:
        """Record whether the database could be read; True if that changed. Under the lock:
        concurrent scrapes (several Prometheus servers) log a change once."""
        with self._lock:
            changed, self._down = self._down != down, down
            return changed

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            storage = self._start_read().result(timeout=READ_DEADLINE_S)
        except (SQLAlchemyError, TimeoutError) as exc:
            if self._mark_down(True):
                if isinstance(exc, SQLAlchemyError):
                    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                    reason = lines[0] if lines else type(exc).__name__
                else:
                    reason = f"no answer within {READ_DEADLINE_S:g} s"
                log.warning(
                    "metrics: the database cannot be read; its gauges are left out until it "
                    "can: %s",
                    reason,
                )
            yield _database_up(0)
            return
        if self._mark_down(False):
            log.info("metrics: the database can be read again")
        yield _database_up(1)
        by_status = GaugeMetricFamily(
            "gridpatrol_candidates", "candidates by status", labels=["status"]
        )
        for status, count in storage.counts:
            by_status.add_metric([status], count)
        yield by_status
        last = storage.last
        yield GaugeMetricFamily(
            "gridpatrol_feed_last_position", "the last assigned feed position", value=last
        )
        lag = GaugeMetricFamily(
            "gridpatrol_feed_lag",
            "candidates in the feed not yet acknowledged, per token",
            labels=["name"],
        )
        for name, behind in storage.lags:
            lag.add_metric([name], behind)
        yield lag


def _database_up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "gridpatrol_api_database_up",
        "1 if this scrape could read the database, else 0 (its gauges are then left out)",
        value=value,
    )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None
        disconnected = False

        async def watch_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, watch_receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            if status is None:
                # No answer was started: the client went away before it (nginx's 499, not a
                # server error that would count towards the 5xx alert), or the app failed.
                status = CLIENT_CLOSED if disconnected else 500
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
