"""The bridge's broker connection over time: a sensor is silent only while the bridge listens.

A sensor's silence is the time the bridge was connected since it last heard from it. What
does not count: the bridge's own downtime (between its runs, and before its first run on its
state database), the time it was cut off from the broker, and the first :data:`SETTLE_S` of
every connection, while the messages the persistent session queued meanwhile are still
arriving. A link that drops and comes back pauses the count; it does not restart it, nor does
a restart of the bridge: the bookkeeping is kept in the state database (:meth:`Uptime.state`,
:meth:`Uptime.restore`), and the time from the last look of the bridge's previous run to its
first connection's settling is not listening. (The bridge writes that bookkeeping at most
once a minute while nothing changes: after a crash, its last look read may be up to that
much earlier than the real one, which counts less listening, never more.)

The spans are kept on the wall clock, as the bookkeeping outlives the process; between two
looks on one connection, only the time a monotonic clock advanced counts as listening, so a
wall clock stepped forward (or a host suspended) is not taken for time listened.
"""

from __future__ import annotations

SETTLE_S = 60.0
# The most spans kept (a bridge restarting or a link dropping every few seconds, within one
# horizon): beyond it the two oldest merge, the listening between them no longer counted, so
# a sensor is judged less silent, never more.
MAX_GAPS = 1000
# How far the wall clock may advance beyond the monotonic one between two looks before the
# rest is a step (or a suspend) and not listening: the two clocks are read a moment apart.
STEP_S = 1.0
# A wall clock behind the monotonic one by more than this between two looks was set back:
# the rest of a settling then lies after it (the two clocks are read a moment apart).
STEP_MATCH_S = 0.001

UptimeState = tuple[float, float, list[tuple[float, float]]]


class Uptime:
    """Spans that do not count as listening, noticed by looking at the connection.

    ``horizon_s``: the longest silence judged (3 x the largest expected_interval_s). A span
    followed by more listening than that no longer matters under this horizon: a sensor last
    heard before it has been judged silent since, or heard again. Such spans are merged into
    the first, not dropped, so that all before the end of the newest of them stays not
    listened: a later run with a longer horizon (an expected_interval_s added or raised)
    would otherwise count the listening kept from before them, and the bridge's downtime
    among them, as listened, and judge a sensor last heard before them silent at once. It
    counts a sensor heard before them as listened to since then only: less silent, never more.
    """

    def __init__(self, horizon_s: float, settle_s: float = SETTLE_S) -> None:
        self.horizon_s = horizon_s
        self.settle_s = settle_s
        self.started: float | None = None
        self._gaps: list[tuple[float, float]] = []  # oldest first, not overlapping
        self._connects: int | None = None  # connect count of the current connection
        self._last_up: float | None = None  # the last look while connected
        self._last_tick: float | None = None  # its monotonic clock, in this run
        # How long the current connection has lasted on the monotonic clock (each look's
        # advance, none back: without one, the wall clock stands in for it): its settling is
        # SETTLE_S of that, wherever the wall clock is stepped meanwhile.
        self._connected_s = 0.0
        self._down_since: float | None = None

    def restore(self, state: UptimeState) -> None:
        """Continue the bookkeeping of an earlier run (call before the first look): its start,
        its last look while connected and its spans. The time from that look to this run's
        first connection and its settling is one more span not listened."""
        self.started, self._last_up, gaps = state
        self._gaps = []
        for begin, end in sorted(gaps):
            self._add_gap(begin, end)

    def state(self) -> UptimeState | None:
        """What :meth:`restore` takes in the next run; None before a look while connected."""
        if self.started is None or self._last_up is None:
            return None
        return (self.started, self._last_up, list(self._gaps))

    def look(self, now: float, connected: bool, connects: int, tick: float | None = None) -> bool:
        """Note the connection's state at ``now``; True while connected.

        The connect count tells a reconnection between two looks from the same connection:
        the time since the last look counts as cut off. ``tick``, a monotonic clock read with
        ``now`` (None: ``now`` itself): between two looks on one connection, the bridge
        listened for as long as it advanced; the wall clock advancing more than
        :data:`STEP_S` beyond that (stepped forward, or the host suspended) is not listening.
        """
        tick = now if tick is None else tick
        if self.started is None:
            self.started = now
        if not connected:
            if self._down_since is None:
                self._down_since = now if self._last_up is None else self._last_up
            self._connects = None
            return False
        if self._last_up is not None and now < self._last_up - STEP_S:
            self._set_back(now)
        if connects != self._connects:
            off = self._down_since if self._down_since is not None else self._last_up
            # Not after now: a clock set back since an earlier run's last look.
            self._add_gap(now if off is None else min(off, now), now + self.settle_s)
            self._connects, self._down_since = connects, None
            self._connected_s = 0.0
            self._prune(now)
        elif self._last_up is not None and self._last_tick is not None:
            self._connected_s += max(0.0, tick - self._last_tick)
            self._skip_step(self._last_up + max(0.0, tick - self._last_tick), now)
        self._last_up, self._last_tick = now, tick
        return True

    def connected_for(self, since: float, now: float) -> float:
        """Seconds of listening between ``since`` and ``now`` (call while connected)."""
        start = since if self.started is None else max(since, self.started)
        if now <= start:
            return 0.0
        off = sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in self._gaps)
        return now - start - off

    def _skip_step(self, listened_to: float, now: float) -> None:
        """The wall clock from ``listened_to`` (the last look plus the monotonic time since)
        to ``now`` is a step, not listening. The rest of the connection's settling, timed on
        the monotonic clock, lies after ``now`` on the wall clock whichever way it stepped
        (the span of the settling, on the wall clock, may be far ahead of a clock set back)."""
        settling = self.settle_s - self._connected_s
        step = now - listened_to
        if step > STEP_S:
            self._add_gap(listened_to, now)
        if settling > 0 and (step > STEP_S or step < -STEP_MATCH_S):
            self._add_gap(now, now + settling)
        if step > STEP_S:
            self._prune(now)

    def _set_back(self, now: float) -> None:
        """The wall clock went back before the last look (in this run or since the one before).
        The first span holds the spans merged into it (see the class), up to the end of the
        newest of them, which may lie ahead of a clock set back: it would take all listening
        from ``now`` to that end for not listened, and a sensor heard after the step would be
        judged silent only once the clock passed that end again, hours late. So it ends at
        ``now`` at the latest, what lies before staying not listened; the other spans are
        kept, as they were. All the clock passes again from ``now`` on is listened to, or not,
        anew, and noted so: the rest of a settling is added after ``now`` (by the look that
        noticed the step, or the connection that came with it).

        Set back to before the bridge's start, the start moves back with it: the time from
        ``now`` to the old start is listened to now, and a sensor heard in it would otherwise
        be judged silent only on the listening after the old start."""
        if self.started is not None and now < self.started:
            self.started = now
        if self._gaps:
            begin, end = self._gaps[0]
            if now <= begin:
                del self._gaps[0]
            else:
                self._gaps[0] = (begin, min(end, now))

    def _add_gap(self, begin: float, end: float) -> None:
        """The span from ``begin`` to ``end`` is not listened to, with those it meets. After
        a clock set back, a span may begin before others that lie ahead of the clock: it
        takes them in, from its own beginning (not theirs: the listening between would count
        as listened)."""
        if not self._gaps or begin >= self._gaps[-1][0]:
            if self._gaps and begin <= self._gaps[-1][1]:
                first, last = self._gaps[-1]
                self._gaps[-1] = (first, max(last, end))
            else:
                self._gaps.append((begin, end))
        else:
            met = [(b, e) for b, e in self._gaps if b < end and e > begin]
            kept = [gap for gap in self._gaps if gap not in met]
            merged = (min([begin, *(b for b, _ in met)]), max([end, *(e for _, e in met)]))
            self._gaps = sorted([*kept, merged])
        if len(self._gaps) > MAX_GAPS:
            (first, _), (_, last) = self._gaps[:2]
            self._gaps[:2] = [(first, last)]

    def _prune(self, now: float) -> None:
        # Into the first span, not dropped (see the class): the state stays one row, and one
        # written before this (spans dropped) still restores, as it did.
        while len(self._gaps) > 1 and self.connected_for(self._gaps[1][1], now) > self.horizon_s:
            (first, _), (_, last) = self._gaps[:2]
            self._gaps[:2] = [(first, last)]
