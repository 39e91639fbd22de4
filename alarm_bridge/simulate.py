"""Simulated field sensors: realistic alarm traffic for the demo, tests and the benchmark.

Each sensor of the site file gets a pattern by kind: manhole covers tilt and are put back
(device envelopes), water levels rise and fall (SenML packs), bins fill up slowly and are
emptied, staying nearly empty for a while (threshold readings), noise wobbles around its raise
level in busy spells, with lulls below its clear level between, smoke detectors fire now and
then; every sensor sometimes goes offline through its last will. The generators are pure:
``next_message(t)`` returns what to publish at time ``t``. Patterns run from the first ``t`` a
sensor is asked about, and each starts just before its first alarm (bins nearly full, noise
and water rising), so a run of a couple of minutes, like the demo's, shows every kind of alarm.
A sensor without thresholds in the site file judges its own readings and sends envelopes, as
smoke detectors do: the bridge has nothing to judge its readings against.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass, field

from gridpatrol.alarm_bridge.adapters import KIND_ALARMS
from gridpatrol.ingest.messages import (
    AlarmEnvelope,
    SenMLRecord,
    Severity,
    ThresholdReading,
    Transition,
    from_epoch,
)
from gridpatrol.ingest.topics import sensor_alarm_topic, sensor_status_topic
from gridpatrol.site import Sensor

BIN_FILL_PER_S = 0.1  # % per second: an empty bin is full in about a quarter of an hour
BIN_START_MIN, BIN_START_MAX = 88.0, 90.0  # % at the start: at the raise level within 20 s
# An emptied bin stays nearly empty for this many times its clear_hold_s before it fills
# again: filling at once, the sample's bin was back at its clear level (60 %) in about 550 s,
# within its 600 s clear hold, and its bin_full alarm never cleared however often trucks came.
BIN_EMPTY_HOLD_FACTOR = 1.5
# Noise comes in busy spells of NOISE_BUSY_S around its raise level, each followed by a lull
# NOISE_LULL_BELOW under its clear level for NOISE_LULL_HOLD_FACTOR times its clear_hold_s (at
# least NOISE_LULL_MIN_S): wobbling around the raise level alone, it never stayed at its clear
# level for its hold, and the sample's noise alarm, raised once, never cleared.
NOISE_BUSY_S = 1200.0
NOISE_LULL_MIN_S = 300.0
NOISE_LULL_HOLD_FACTOR = 2.5
NOISE_LULL_BELOW = 10.0  # dB: 3.3 standard deviations of the wobble, so it stays below
# Raise level, clear level and unit of a sensor judging its own readings (no thresholds in the
# site file), by kind: those of the sample site, so its patterns raise and clear as there.
DEVICE_LEVELS: dict[str, tuple[float, float, str]] = {
    "waterlogging": (15.0, 5.0, "cm"),
    "bin_fill": (90.0, 60.0, "%"),
    "noise": (70.0, 60.0, "dB"),
}


@dataclass(frozen=True)
class Publication:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass
class SimulatedSensor:
    sensor: Sensor
    prefix: str
    rng: random.Random
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    seq: int = 0
    level: float = 0.0
    tilted: bool = False
    alarmed: bool = False  # a smoke detector, or a sensor judging its own readings, in alarm
    offline_until: float = 0.0
    started: float | None = None
    filled_at: float | None = None
    emptied_at: float | None = None  # when the truck last came

    def next_message(self, t: float) -> Publication | None:
        """What the sensor sends at ``t``; None while it is offline (silent)."""
        if self.started is None:
            self.started = t
        elapsed = t - self.started
        if self.offline_until:
            if t < self.offline_until:
                return None
            self.offline_until = 0.0
            return Publication(sensor_status_topic(self.prefix, self.sensor.id), b"online", True)
        if self.rng.random() < 0.002:
            self.offline_until = t + self.rng.uniform(5, 30)
            return Publication(sensor_status_topic(self.prefix, self.sensor.id), b"offline", True)
        kind = self.sensor.kind
        if kind == "manhole_cover":
            return self._manhole(t)
        if kind == "smoke":
            return self._smoke(t)
        judges_itself = self.sensor.thresholds is None
        if kind == "waterlogging":
            level = self._water_level(elapsed)
            return self._judged(t, level) if judges_itself else self._senml(t, level)
        value = self._bin_fill(t) if kind == "bin_fill" else self._noisy(elapsed)
        return self._judged(t, value) if judges_itself else self._reading(t, value)

    # -- patterns ---------------------------------------------------------------------------------

    def _water_level(self, elapsed: float) -> float:
        # A storm every ten minutes: the underpass floods to ~25 cm and drains again.
        return max(0.0, 25 * math.sin(2 * math.pi * elapsed / 600.0) + self.rng.gauss(0, 0.8))

    def _bin_fill(self, t: float) -> float:
        # By time, not by message, so the bin fills at the same pace whatever the rate.
        if self.filled_at is None:
            self.level = self.rng.uniform(BIN_START_MIN, BIN_START_MAX)
        since = 0.0 if self.filled_at is None else max(0.0, t - self.filled_at)
        if self.emptied_at is not None and self.filled_at is not None:
            # Only the time after the emptied bin's rest fills it (see BIN_EMPTY_HOLD_FACTOR).
            since = max(0.0, t - max(self.filled_at, self.emptied_at + self._bin_rest_s()))
        self.filled_at = t
        self.level = min(100.0, self.level + since * BIN_FILL_PER_S * self.rng.uniform(0.5, 1.5))
        if self.level >= 98 and self.rng.random() < 0.05:
            self.level = self.rng.uniform(2, 8)  # the truck came
            self.emptied_at = t
        return round(self.level, 1)

    def _bin_rest_s(self) -> float:
        """How long an emptied bin stays as the truck left it: longer than the bridge holds
        its clear level before it clears (none for a bin judging its own readings: it clears
        at the level at once)."""
        th = self.sensor.thresholds
        return 0.0 if th is None else BIN_EMPTY_HOLD_FACTOR * th.clear_hold_s

    def _noisy(self, elapsed: float) -> float:
        # Busy spells wobbling around the raise level with a period of about five minutes,
        # rising first, each followed by a lull well below the clear level (see NOISE_BUSY_S).
        th = self.sensor.thresholds
        raise_at, clear_at = (th.raise_, th.clear) if th is not None else DEVICE_LEVELS["noise"][:2]
        hold = 0.0 if th is None else th.clear_hold_s
        lull = max(NOISE_LULL_MIN_S, NOISE_LULL_HOLD_FACTOR * hold)
        into = elapsed % (NOISE_BUSY_S + lull)
        # One draw either way: the sensor's later draws (going offline) stay as they were.
        wobble = self.rng.gauss(0, 3)
        if into >= NOISE_BUSY_S:
            return round(clear_at - NOISE_LULL_BELOW + wobble, 1)
        return round(raise_at + 6 * math.sin(into / 45.0) + wobble, 1)

    def _manhole(self, t: float) -> Publication:
        if not self.tilted and self.rng.random() < 0.05:
            self.tilted = True
            return self._envelope(t, "manhole_tilt", "raise", "MAJOR", 20 + self.rng.random() * 30)
        if self.tilted and self.rng.random() < 0.1:
            self.tilted = False
            return self._envelope(t, "manhole_tilt", "clear", "MAJOR", self.rng.random() * 3)
        if self.tilted:
            severity: Severity = "CRITICAL" if self.rng.random() < 0.2 else "MAJOR"
            tilt = 25 + self.rng.random() * 40
            return self._envelope(t, "manhole_tilt", "update", severity, tilt)
        tilt = round(self.rng.uniform(0, 4), 2)
        if self.sensor.thresholds is None:  # no reading the bridge could judge: all clear
            return self._envelope(t, "manhole_tilt", "clear", "MAJOR", tilt)
        return self._reading(t, tilt)

    def _smoke(self, t: float) -> Publication:
        if self.rng.random() < 0.02:
            transition: Transition = "clear" if self.alarmed else "raise"
            self.alarmed = not self.alarmed
            return self._envelope(t, "smoke", transition, "CRITICAL", self.rng.uniform(0.1, 0.5))
        return self._envelope(t, "smoke", "update" if self.alarmed else "clear", "CRITICAL", 0.05)

    def _judged(self, t: float, value: float) -> Publication:
        """The kind's alarm as a device judging its own readings sends it: raised at its raise
        level, updated until its clear level, cleared there, an all-clear heartbeat between."""
        raise_at, clear_at, unit = DEVICE_LEVELS[self.sensor.kind]
        transition: Transition = "update" if self.alarmed else "clear"
        if not self.alarmed and value >= raise_at:
            transition, self.alarmed = "raise", True
        elif self.alarmed and value <= clear_at:
            transition, self.alarmed = "clear", False
        alarm_type = KIND_ALARMS[self.sensor.kind][0]
        return self._envelope(t, alarm_type, transition, "MAJOR", value, unit)

    # -- payloads ---------------------------------------------------------------------------------

    def _envelope(
        self,
        t: float,
        alarm_type: str,
        transition: Transition,
        severity: Severity,
        value: float,
        unit: str | None = None,
    ) -> Publication:
        self.seq += 1
        if unit is None:
            unit = self.sensor.thresholds.unit if self.sensor.thresholds else ""
        env = AlarmEnvelope(
            event_id=f"{self.boot_id}-{self.seq}",
            sensor_id=self.sensor.id,
            alarm_type=alarm_type,
            transition=transition,
            severity=severity,
            ts=from_epoch(t),
            measurements=(SenMLRecord(n=alarm_type, u=unit or None, v=round(value, 3)),),
            seq=self.seq,
            boot_id=self.boot_id,
        )
        return Publication(sensor_alarm_topic(self.prefix, self.sensor.id), env.encode())

    def _reading(self, t: float, value: float) -> Publication:
        reading = ThresholdReading(self.sensor.id, float(value), from_epoch(t))
        return Publication(sensor_alarm_topic(self.prefix, self.sensor.id), reading.encode())

    def _senml(self, t: float, value: float) -> Publication:
        unit = self.sensor.thresholds.unit if self.sensor.thresholds else "cm"
        pack = [
            {"bn": f"{self.sensor.id}:", "bt": round(t, 3), "n": "level", "u": unit, "v": value},
            {"n": "battery", "u": "%EL", "v": 87},
        ]
        return Publication(
            sensor_alarm_topic(self.prefix, self.sensor.id), json.dumps(pack).encode()
        )


def simulated_sensors(sensors: list[Sensor], prefix: str, seed: int = 1) -> list[SimulatedSensor]:
    rng = random.Random(seed)
    return [SimulatedSensor(s, prefix, random.Random(rng.random())) for s in sensors]
