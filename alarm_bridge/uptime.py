"""The bridge's broker connection over time: a sensor is silent only while the bridge listens.

A sensor's silence is the time the bridge was connected since it last heard from it. What
does not count: the time before the bridge started (its own downtime), the time it was cut
off from the broker, and the first :data:`SETTLE_S` of every connection, while the messages
the persistent session queued meanwhile are still arriving. A link that drops and comes back
pauses the count; it does not restart it.
"""

from __future__ import annotations

SETTLE_S = 60.0


class Uptime:
    """Spans that do not count as listening, noticed by looking at the connection.

    ``horizon_s``: the longest silence judged (3 x the largest expected_interval_s). A span
    followed by more listening than that no longer matters: a sensor last heard before it
    has been judged silent since, or heard again.
    """

    def __init__(self, horizon_s: float, settle_s: float = SETTLE_S) -> None:
        self.horizon_s = horizon_s
        self.settle_s = settle_s
        self.started: float | None = None
        self._gaps: list[tuple[float, float]] = []  # oldest first, not overlapping
        self._connects: int | None = None  # connect count of the current connection
        self._last_up: float | None = None  # the last look while connected
        self._down_since: float | None = None

    def look(self, now: float, connected: bool, connects: int) -> bool:
        """Note the connection's state at ``now``; True while connected.

        The connect count tells a reconnection between two looks from the same connection:
        the time since the last look counts as cut off.
        """
        if self.started is None:
            self.started = now
        if not connected:
            if self._down_since is None:
                self._down_since = now if self._last_up is None else self._last_up
            self._connects = None
            return False
        if connects != self._connects:
            off = self._down_since if self._down_since is not None else self._last_up
            self._add_gap(now if off is None else off, now + self.settle_s)
            self._connects, self._down_since = connects, None
            self._prune(now)
        self._last_up = now
        return True

    def connected_for(self, since: float, now: float) -> float:
        """Seconds of listening between ``since`` and ``now`` (call while connected)."""
        start = since if self.started is None else max(since, self.started)
        if now <= start:
            return 0.0
        off = sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in self._gaps)
        return now - start - off

    def _add_gap(self, begin: float, end: float) -> None:
        if self._gaps and begin <= self._gaps[-1][1]:
            first, last = self._gaps[-1]
            self._gaps[-1] = (first, max(last, end))
        else:
            self._gaps.append((begin, end))

    def _prune(self, now: float) -> None:
        while self._gaps and self.connected_for(self._gaps[0][1], now) > self.horizon_s:
            self._gaps.pop(0)
