"""Accountable alarm traffic: a known stream and the candidates it must produce.

Used by the reliability tests and ``bench/bridge.py`` to check a bridge end to end: every
raise or update must show up as a candidate's ``alarm.count``, every clear ends an alarm, the
next raise opens a new candidate, and every invalid message must come back as a dead letter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gridpatrol.ingest.topics import sensor_alarm_topic

CYCLE = 100  # default messages per alarm per sensor: raise, CYCLE - 2 updates, clear
# Between a sensor's successive envelopes on its clock: its n-th is timed n ms after the first,
# so even a stream of 300,000 per sensor stays within the bridge's 5 minutes ahead of reception
# and is read at the time it gives, not re-timed at its reception.
STEP_S = 0.001


@dataclass(frozen=True)
class Expected:
    candidates: int  # one per raise
    counted: int  # raises + updates: the sum of alarm.count over the candidates
    dead_letters: int


def site_yaml(prefix: str, sensors: int) -> str:
    """A site with ``sensors`` manhole sensors (no cameras, no silence checks)."""
    lines = [
        "site: {name: 负载测试, timezone: Asia/Shanghai}",
        f"mqtt: {{prefix: {prefix}}}",
        "sensors:",
    ]
    for i in range(sensors):
        lines += [
            f"  - id: {sensor_id(i)}",
            "    kind: manhole_cover",
            f"    location: {{lat: 31.28, lon: 121.45, address: 负载路 {i}号}}",
        ]
    return "\n".join(lines) + "\n"


def sensor_id(index: int) -> str:
    return f"lg-{index:04d}"


def _envelope(sensor: str, j: int, run: str, cycle: int, t_base: float, shift: int = 0) -> bytes:
    phase = (j - shift) % cycle
    transition = "raise" if phase == 0 else "clear" if phase == cycle - 1 else "update"
    if j < shift:
        transition = "clear"  # all-clear heartbeats until this sensor's first alarm
    body: dict[str, Any] = {
        "schema": "gridalarm/1",
        "event_id": f"{run}-{j}",
        "sensor_id": sensor,
        "alarm_type": "manhole_tilt",
        "transition": transition,
        "severity": "CRITICAL" if phase % 7 == 3 else "MAJOR",
        "ts": round(t_base + j * STEP_S, 3),
        "seq": j,
        "boot_id": run,
        "measurements": [{"n": "tilt", "u": "deg", "v": 10 + phase % 40}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def traffic(
    prefix: str,
    sensors: int,
    alarms: int,
    *,
    run: str = "r1",
    invalid_every: int = 0,
    cycle: int = CYCLE,
    stagger: bool = False,
    t_base: float | None = None,
) -> Iterator[tuple[str, bytes]]:
    """``alarms`` valid envelopes round-robin over the sensors, plus an invalid message (a
    unique bad-JSON payload) after every ``invalid_every`` of them. Each sensor cycles
    through raise, ``cycle - 2`` updates and a clear; with ``stagger`` the sensors start
    their cycles spread over one cycle, so raises are spread evenly in time. Each sensor's
    first envelope is timed at ``t_base`` (epoch seconds; default: the time the first is
    generated), the next ones :data:`STEP_S` apart."""
    base = time.time() if t_base is None else t_base
    for i in range(alarms):
        index = i % sensors
        shift = index * cycle // sensors if stagger else 0
        sensor = sensor_id(index)
        payload = _envelope(sensor, i // sensors, run, cycle, base, shift)
        yield sensor_alarm_topic(prefix, sensor), payload
        if invalid_every and (i + 1) % invalid_every == 0:
            yield sensor_alarm_topic(prefix, sensor), f"{{broken {run} {i}".encode()


def expected(sensors: int, alarms: int, invalid_every: int = 0, cycle: int = CYCLE) -> Expected:
    candidates = counted = 0
    for s in range(min(sensors, alarms)):
        n = len(range(s, alarms, sensors))  # messages for this sensor
        full, rest = divmod(n, cycle)
        candidates += full + (1 if rest else 0)
        counted += full * (cycle - 1) + rest
    dead = alarms // invalid_every if invalid_every else 0
    return Expected(candidates, counted, dead)


@dataclass(frozen=True)
class Tally:
    candidates: int
    counted: int
    distinct_events: int
    max_events_per_source: int


def tally(items: list[dict[str, Any]]) -> Tally:
    """What the API holds, to compare with :func:`expected`."""
    events: dict[str, int] = {}
    counted = 0
    for item in items:
        key = str(item.get("source", {}).get("source_event_id"))
        events[key] = events.get(key, 0) + 1
        counted += int((item.get("alarm") or {}).get("count") or 0)
    return Tally(len(items), counted, len(events), max(events.values(), default=0))
