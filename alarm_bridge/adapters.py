"""Sensor payloads to lifecycle inputs: decoding, registry checks and dedup keys.

The ingest decoders validate the wire format; this module adds what only the bridge knows:
whether the sensor is registered, whether its kind can raise the alarm type, whether a plain
reading has thresholds to be judged against. Every refusal is a :class:`Rejected` with a short
machine-readable reason for the dead letter; nothing here raises on bad input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from gridpatrol.alarm_bridge.lifecycle import (
    RESET_CLOCK_BEHIND_S,
    DeviceInput,
    LifecycleInput,
    ReadingInput,
)
from gridpatrol.ingest.messages import (
    ALARM_TYPES,
    MAX_SENSOR_BYTES,
    AlarmEnvelope,
    MessageError,
    SenMLPack,
    SenMLRecord,
    ThresholdReading,
    decode_sensor_payload,
)
from gridpatrol.site import Sensor

log = logging.getLogger(__name__)

# The alarm types each sensor kind may send; the first is what its readings raise.
KIND_ALARMS: dict[str, tuple[str, ...]] = {
    "manhole_cover": ("manhole_tilt", "manhole_open"),
    "waterlogging": ("water_level",),
    "smoke": ("smoke",),
    "bin_fill": ("bin_fill",),
    "noise": ("noise",),
}
DEVICE_OFFLINE = "device_offline"
# How far ahead of its reception a message's time may be (device clocks drift). A message
# timed further ahead is moved back to its reception: a future time would hold a debounce or
# a clear hold open until then, and a candidate must not occur in the future.
MAX_AHEAD_S = 300.0
# How far behind its reception a message's time may be: the broker keeps a persistent
# session's messages for a day (its session expiry), so a message timed earlier than that
# was not held up on the way; its device clock is wrong (a reboot to 2000-01-01, say). It is
# timed at its reception too: an alarm time from before the alarm's last one would be ignored
# as stale, and a candidate dated years back misleads.
MAX_BEHIND_S = 86400.0
# Alarm ids are UUIDs derived from the triggering message, so a replay proposes the same id.
ALARM_NAMESPACE = uuid.UUID("6f1c1f7e-52a8-4d0e-9a55-2b0c8c1a7b01")
# A seq this far below the last one restarts the counter (a wrap, a reboot): a message
# overtaken by later ones is never that many messages behind.
SEQ_REORDER_WINDOW = 1000
# A message of a superseded boot timed up to MAX_AHEAD_S after the last accepted one counts as
# that boot starting again (A/B firmware slots) only among the boot's first seqs: a late
# message of the old boot, sent just before the reboot, carries the seq that boot had reached,
# and its clock may run that far ahead, so its time alone does not tell it from a new boot.
BOOT_START_SEQS = 100
# A message without boot_id restarts the seq counter for a clock reset by a reboot only when
# its own time is at least RESET_CLOCK_BEHIND_S (lifecycle) behind the last message's.
# The seqs the state database can store (SQLite integers are 64-bit signed); beyond them the
# message is a bad_seq, not a failed batch.
SEQ_RANGE = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str = ""
    heard: bool = False  # a well-formed message from a registered sensor: it is alive


@dataclass(frozen=True)
class AlarmInput:
    """One lifecycle input for (sensor, alarm type), with what the candidate needs."""

    sensor: Sensor
    alarm_type: str
    event_key: str
    t: float
    event: LifecycleInput
    measurements: tuple[SenMLRecord, ...] = ()
    seq: int | None = None
    boot_id: str | None = None
    moved_s: float = 0.0  # how far ``t`` was moved back from the device's time (< 0: forward)

    @property
    def candidate_type(self) -> str:
        return ALARM_TYPES[self.alarm_type]

    @property
    def device_t(self) -> float:
        """The time the device gave: its order among the device's messages."""
        return self.t + self.moved_s


@dataclass(frozen=True)
class Adapted:
    """A valid message: its dedup key and the lifecycle inputs it produces (in order)."""

    sensor_id: str
    event_key: str
    inputs: tuple[AlarmInput, ...]
    # The unit a SenML pack's readings were taken to be in, its sensor's thresholds having none.
    assumed_unit: str | None = None


def alarm_id_for(sensor_id: str, alarm_type: str, event_key: str) -> str:
    return str(uuid.uuid5(ALARM_NAMESPACE, f"{sensor_id}/{alarm_type}/{event_key}"))


def allowed_alarm_types(kind: str) -> tuple[str, ...]:
    return (*KIND_ALARMS.get(kind, ()), DEVICE_OFFLINE)


def adapt(
    payload: bytes,
    *,
    sensor_id: str,
    registry: Mapping[str, Sensor],
    received_at: datetime,
    max_bytes: int = MAX_SENSOR_BYTES,
) -> Adapted | Rejected:
    """Validate one payload of ``{prefix}/sensors/{sensor_id}/alarm``; never raises."""
    if len(payload) > max_bytes:
        return Rejected("too_large", f"{len(payload)} bytes > {max_bytes}")
    sensor = registry.get(sensor_id)
    if sensor is None:
        return Rejected("unknown_sensor", sensor_id)
    try:
        decoded = decode_sensor_payload(
            payload, topic_sensor_id=sensor_id, received_at=received_at, max_bytes=max_bytes
        )
        if isinstance(decoded, AlarmEnvelope):
            adapted = _envelope(decoded, sensor, received_at.timestamp())
        elif isinstance(decoded, ThresholdReading):
            adapted = _reading(decoded, sensor, payload)
        elif (foreign := _foreign_name(payload, sensor_id, registry)) is not None:
            # Another sensor's pack, as a bn naming it is (the decoder's refusal): no sign
            # that the topic's sensor is alive.
            return Rejected("sensor_id_mismatch", f"n {foreign!r} on {sensor_id!r}")
        else:
            adapted = _senml(decoded, sensor, payload)
        if isinstance(adapted, Rejected):
            return replace(adapted, heard=True)
        return _plausibly_timed(adapted, received_at)
    except MessageError as exc:
        return Rejected(exc.reason, exc.detail)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # The bridge's own checks must never stop the worker on a bad message either.
        return Rejected("invalid", f"{type(exc).__name__}: {str(exc)[:80]}")


def _plausibly_timed(adapted: Adapted, received_at: datetime) -> Adapted:
    """Move a message timed too far ahead of or behind its reception to its reception,
    keeping its records' spacing (the latest at the reception). A device transition so moved
    is no longer ordered by its own time against the device's earlier clear (see
    :class:`DeviceInput`): the two were timed by different clocks."""
    ahead = max(item.t for item in adapted.inputs) - received_at.timestamp()
    if -MAX_BEHIND_S <= ahead <= MAX_AHEAD_S:
        return adapted
    moved = tuple(
        replace(item, t=item.t - ahead, moved_s=ahead, event=_untimed(item.event))
        for item in adapted.inputs
    )
    return replace(adapted, inputs=moved)


def _untimed(event: LifecycleInput) -> LifecycleInput:
    if isinstance(event, DeviceInput):
        return replace(event, received_at=None)
    return event


def _envelope(env: AlarmEnvelope, sensor: Sensor, received_at: float) -> Adapted | Rejected:
    if env.seq is not None and env.seq not in SEQ_RANGE:
        raise MessageError("bad_seq", f"{env.seq.bit_length()}-bit value beyond 64 bits")
    if env.alarm_type not in allowed_alarm_types(sensor.kind):
        return Rejected("alarm_type_mismatch", f"{sensor.kind} cannot send {env.alarm_type}")
    key = f"e:{env.event_id}"
    event = DeviceInput(
        transition=env.transition,
        severity=env.severity,
        new_alarm_id=alarm_id_for(sensor.id, env.alarm_type, key),
        # Without seq, only its own time orders it against the device's other envelopes.
        received_at=received_at if env.seq is None else None,
    )
    item = AlarmInput(
        sensor=sensor,
        alarm_type=env.alarm_type,
        event_key=key,
        t=env.ts.timestamp(),
        event=event,
        measurements=env.measurements,
        seq=env.seq,
        boot_id=env.boot_id,
    )
    return Adapted(sensor.id, key, (item,))


def _reading_item(
    sensor: Sensor, key: str, value: float, t: float, record: SenMLRecord
) -> AlarmInput | Rejected:
    if sensor.thresholds is None:
        return Rejected("no_thresholds", f"sensor {sensor.id} has no thresholds for readings")
    alarm_type = KIND_ALARMS[sensor.kind][0]
    event = ReadingInput(
        value=value,
        thresholds=sensor.thresholds,
        new_alarm_id=alarm_id_for(sensor.id, alarm_type, key),
    )
    return AlarmInput(sensor, alarm_type, key, t, event, measurements=(record,))


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _reading(reading: ThresholdReading, sensor: Sensor, payload: bytes) -> Adapted | Rejected:
    # No event id on the wire: sensor + time + value identify a reading.
    value_hash = hashlib.sha256(json.dumps(reading.value).encode()).hexdigest()[:12]
    key = f"r:{reading.ts.timestamp():.6f}:{value_hash}"
    unit = sensor.thresholds.unit if sensor.thresholds is not None else None
    record = SenMLRecord(n=sensor.id, u=unit or None, v=reading.value, t=reading.ts)
    item = _reading_item(sensor, key, reading.value, reading.ts.timestamp(), record)
    if isinstance(item, Rejected):
        return item
    return Adapted(sensor.id, key, (item,))


def _senml(pack: SenMLPack, sensor: Sensor, payload: bytes) -> Adapted | Rejected:
    if sensor.thresholds is None:
        return Rejected("no_thresholds", f"sensor {sensor.id} has no thresholds for SenML")
    readable = [r for r in pack.records if r.v is not None or r.vb is not None]
    own = _own_names(payload, pack.sensor_id)
    numeric, assumed_unit = _in_unit(readable, sensor.thresholds.unit, own)
    if not numeric:
        return Rejected(
            "no_reading",
            "no numeric or boolean SenML record in the sensor's unit"
            if sensor.thresholds.unit
            else "no numeric or boolean SenML measurement without a unit or in one unit"
            " (the sensor's thresholds have none)",
        )
    if len({r.n for r in numeric}) > 1:
        numeric, why = _of_kind(numeric, sensor.kind, own)
        if not numeric:
            return Rejected("no_reading", why)
    ordered = sorted(numeric, key=_record_time)
    key = _senml_key(payload, [_record_time(r) for r in ordered])
    items: list[AlarmInput] = []
    for index, record in enumerate(ordered):
        assert record.t is not None
        value = _record_value(record)
        item = _reading_item(sensor, f"{key}:{index}", value, record.t.timestamp(), record)
        if isinstance(item, Rejected):
            return item
        items.append(item)
    return Adapted(sensor.id, key, tuple(items), assumed_unit)


def _of_kind(
    records: list[SenMLRecord], kind: str, own: Mapping[str, str]
) -> tuple[list[SenMLRecord], str]:
    """Of the records of several names a pack would have read, those of the one name to read,
    else none and the dead letter's detail. Read together, a bin's ``fill`` of 95 and its
    ``distance`` of 12, at the pack's one time, would raise and clear the alarm at the same
    instant; so would a gauge's ``level`` and its ``level_max``, or an LwM2M object's value
    and its minimum measured, all in one unit: a unit shared tells nothing.

    The one name that says what the sensor's kind measures (:data:`KIND_QUANTITIES`, see
    :func:`_says`); of several, the one saying nothing else (``level``, not ``level_avg``).
    When no name says it, the one LwM2M Sensor Value (:data:`SENSOR_VALUE_RESOURCE`).
    """
    quantities = KIND_QUANTITIES.get(kind, frozenset())
    names = sorted({r.n for r in records})
    listed = ", ".join(names)
    said = f"what a {kind} sensor measures ({', '.join(sorted(quantities))})"
    saying = [n for n in names if _says(own.get(n, n), quantities)]
    if len(saying) > 1:
        only = [n for n in saying if _says(own.get(n, n), quantities, only=True)]
        if len(only) != 1:
            tied = ", ".join(only if len(only) > 1 else saying)
            return [], f"SenML measurements of several names ({listed}): {tied} all say {said}"
        saying = only
    if not saying:
        saying = [n for n in names if _own_name(own.get(n, n)) == SENSOR_VALUE_RESOURCE]
        if len(saying) != 1:
            lwm2m = (
                f"and several are LwM2M Sensor Values ({', '.join(saying)})"
                if saying
                else f"nor is one an LwM2M Sensor Value ({SENSOR_VALUE_RESOURCE})"
            )
            return [], f"SenML measurements of several names ({listed}): none says {said}, {lwm2m}"
    return [r for r in records if r.n == saying[0]], ""


def _record_value(record: SenMLRecord) -> float:
    """A record's reading: its number, else its boolean (``vb``) as 1.0 or 0.0."""
    if record.v is not None:
        return record.v
    return 1.0 if record.vb else 0.0


def _record_time(record: SenMLRecord) -> float:
    return record.t.timestamp() if record.t is not None else 0.0


def _senml_key(payload: bytes, times: list[float]) -> str:
    """Sensor time and pack identify a pack, as value and time identify a plain reading.

    The times are the resolved ones: a pack without ``bt``/``t`` is timed at its reception, so
    a gauge sending the same bytes every minute sends a new reading every minute, while a
    redelivery of a pack with absolute times still finds its key.
    """
    stamps = ",".join(f"{t:.6f}" for t in times)
    return f"s:{times[0]:.6f}:{_digest(payload + b'|' + stamps.encode())}"


# Housekeeping records a device sends beside its measurement (RFC 8428 names its battery
# units). A record is one by name when a word of its name (its part after the last ":", ";" or
# "/", where a base name such as "sm-2:" ends, split at anything but letters and digits and where
# camelCase changes case, as in "rssiDbm") is one of these or starts with "batt", and always
# when its unit is a battery unit. A record in one of the device units is one only beside
# other records (a tie-breaker: a pack of voltages alone is read in V). A battery record
# (:data:`BATTERY_NAMES`) is never a measurement but of a sensor judged in a battery unit:
# a bin's battery alone in "%" is not its fill.
BATTERY_NAMES = frozenset({"battery", "batt", "bat", "vbat"})
HOUSEKEEPING_NAMES = BATTERY_NAMES | {"voltage", "rssi", "snr", "signal", "temperature", "temp"}
HOUSEKEEPING_UNITS = frozenset({"%EL", "EL"})
DEVICE_UNITS = frozenset({"V", "dBm", "dBW", "Cel"})
# The housekeeping names that are what thresholds in a unit measure: a thermometer's
# ``temperature`` is its reading, an rssi never a bin's fill.
UNIT_QUANTITIES: Mapping[str, frozenset[str]] = {
    "Cel": frozenset({"temperature", "temp"}),
    "V": frozenset({"voltage"}),
    "dBm": frozenset({"rssi", "signal", "snr"}),
    "dBW": frozenset({"rssi", "signal", "snr"}),
    **dict.fromkeys(HOUSEKEEPING_UNITS, BATTERY_NAMES),
}
# What each sensor kind measures, by a word of a record's name or its whole name: it picks the
# measurement of a pack that would read records of several names (see :func:`_of_kind`).
KIND_QUANTITIES: Mapping[str, frozenset[str]] = {
    "manhole_cover": frozenset({"tilt", "angle", "inclination"}),
    "waterlogging": frozenset({"level", "depth", "water"}),
    "smoke": frozenset({"smoke"}),
    "bin_fill": frozenset({"fill", "level"}),
    "noise": frozenset({"noise", "sound", "spl", "laeq", "leq"}),
}
# The LwM2M (IPSO) resource of a sensor object's current value, "Sensor Value": a pack whose
# names say nothing (/3330/0/5700 beside /3330/0/5601) reads it, never the object's minimum
# or maximum measured (5601, 5602) or its range (5603, 5604), in the same unit beside it.
SENSOR_VALUE_RESOURCE = "5700"
_CASE_CHANGE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def housekeeping(record: SenMLRecord, own: Mapping[str, str]) -> bool:
    """Whether a record is a device's own state (battery, radio, temperature) by its name or
    a battery unit; the device units (:data:`DEVICE_UNITS`) only break ties, in :func:`_in_unit`.
    ``own``: the record names of its pack without their base name (see :func:`_own_names`).
    """
    return record.u in HOUSEKEEPING_UNITS or _housekeeping_name(record, own)


def _housekeeping_name(record: SenMLRecord, own: Mapping[str, str]) -> bool:
    return _named(record, HOUSEKEEPING_NAMES, own)


def _battery_name(record: SenMLRecord, own: Mapping[str, str]) -> bool:
    return _named(record, BATTERY_NAMES, own)


def _named(record: SenMLRecord, names: frozenset[str], own: Mapping[str, str]) -> bool:
    """Whether a word of the record's own name is one of ``names`` or starts with "batt"."""
    words = _words(own.get(record.n, record.n))
    return any(w in names or w.startswith("batt") for w in words)


def _says(name: str, quantities: frozenset[str], *, only: bool = False) -> bool:
    """Whether a record's name (without its base name) says one of ``quantities``: a word of
    its own name, or that whole name in lower case without anything but letters and digits
    (``LAeq``, whose words are ``l`` and ``aeq``, says ``laeq``). ``only``: and nothing else,
    every word one of them (``water_level``) or the whole name one (``level``, not
    ``level_avg``)."""
    words = _words(name)
    if _compact(name) in quantities:
        return True
    if only:
        return bool(words) and all(w in quantities for w in words)
    return any(w in quantities for w in words)


def _own_names(payload: bytes, sensor_id: str) -> dict[str, str]:
    """The names of a SenML pack's records, resolved, each to the record's own: its ``n``,
    without the base name ``bn`` before it (``ns-1;LAeq`` to ``LAeq``, whatever ends the base
    name: ``urn:dev:ow:10e2073a01080063;``, ``wl-1.``), or, for a record without ``n``, the
    resolved name. A record without a base name may carry it folded into its ``n`` (RFC 8428
    section 4.6, the resolved form a gateway sends): a leading sensor id (the topic's, the one
    the decoder checks ``bn`` against) and one of ``:;./`` after it are taken for it
    (``wl-1.level`` to ``level``). The decoder resolved the pack from this payload and refused
    it unless every record is an object with text, if any, in ``bn`` and ``n``."""
    base = ""
    own: dict[str, str] = {}
    for record in json.loads(payload):
        base = record.get("bn", base)
        name = record.get("n", "")
        if not base:
            name = _without_base(name, sensor_id)
        own.setdefault(base + record.get("n", ""), name or base)
    return own


def _foreign_name(payload: bytes, sensor_id: str, registry: Mapping[str, Sensor]) -> str | None:
    """The first record name, with its base name (``bn``) before it, that begins with
    another registered sensor's id and one of ``:;./`` (``bf-10:fill`` on ``bf-1``'s topic):
    the resolved form of a record whose ``bn`` the decoder refuses as another sensor's, or a
    ``bn`` of more than that id and its separator (``sm-1:det:``), which the decoder, judging
    the whole ``bn`` as an id, lets through. Names beginning with the topic's own id so are
    the sensor's, whatever ids are registered beside it."""
    base = ""
    for record in json.loads(payload):
        base = record.get("bn", base)
        name = base + record.get("n", "")
        if _without_base(name, sensor_id) != name:
            continue
        for end, char in enumerate(name):
            if char in BASE_NAME_ENDS and name[:end] != sensor_id and name[:end] in registry:
                return str(name)
    return None


def _without_base(name: str, sensor_id: str) -> str:
    """A resolved name without the sensor id and separator that begin it, if they do."""
    end = len(sensor_id)
    if name.startswith(sensor_id) and name[end : end + 1] in BASE_NAME_ENDS:
        return name[end + 1 :] or name
    return name


# What ends a base name given in a record's name itself, when the pack has no ``bn``.
BASE_NAME_ENDS = frozenset(":;./")


def _own_name(name: str) -> str:
    """The part of a record's name (without its base name) after the last ":", ";" or "/",
    where a base name given in the name itself ends (``sm-2:rssiDbm``,
    ``urn:dev:ow:10e2073a01080063;fill``), or an LwM2M path's resource."""
    return re.split(r"[:;/]", name)[-1]


def _words(name: str) -> list[str]:
    """The words of a record's own name (without its base name), lower case: "sm-2:rssiDbm"
    gives rssi, dbm."""
    spaced = _CASE_CHANGE.sub(" ", _own_name(name)).lower()
    return [w for w in re.split(r"[^a-z0-9]+", spaced) if w]


def _compact(name: str) -> str:
    """A record's own name (without its base name) in lower case, without anything but
    letters and digits."""
    return re.sub(r"[^a-z0-9]+", "", _own_name(name).lower())


def _in_unit(
    records: list[SenMLRecord], unit: str, own: Mapping[str, str]
) -> tuple[list[SenMLRecord], str | None]:
    """The records a sensor's thresholds judge, and the unit they were taken to be in when the
    thresholds have none (None: as the thresholds say).

    Thresholds with a unit take the records in it; of those, the housekeeping ones by name
    count only when no other remains (a thermometer's ``temperature`` alone is read, a bin's
    ``battery`` in ``%`` beside its ``fill`` in ``%`` is not), and a battery record never
    unless the unit is a battery unit (a bin's ``battery`` alone in ``%`` is no fill), and of
    housekeeping ones left alone only those naming what the unit measures (a heartbeat's rssi
    or temperature is no bin's fill). When
    that leaves none, they take the records without a unit if no other record has one but
    housekeeping records and those in a device unit: a simple device gives no unit for its
    measurement, while its battery in ``%EL`` or its rssi in ``dBm`` beside it may have one.
    Of those, alike, in a pack without any unit; beside records with one, never a housekeeping
    one by name (a heartbeat pack: a battery in ``%`` and an rssi). Thresholds without a unit
    never read housekeeping records: they take the others (without those in a device unit
    when any other remains) that have no unit (an empty ``u`` is none); a pack without any
    such record is read in the one unit they share (a device that gives its unit while the
    site file does not), and nothing when they have several. So a smoke detector judged
    without a unit reads its ``smoke`` record, never the battery record beside it or a
    battery alone. ``own``: the records' names without their base name (:func:`_own_names`).
    """
    if unit:
        taken = _judged([r for r in records if r.u == unit], unit, own)
        if taken or any(_measured_with_unit(r, own) for r in records):
            return taken, None
        unitless = [r for r in records if not r.u]
        if len(unitless) < len(records):
            # Beside the device's own state in a unit, a unitless rssi or temperature is more
            # of it (a heartbeat pack), not the measurement: read, it would clear the alarm.
            unitless = [r for r in unitless if not _housekeeping_name(r, own)]
        return _judged(unitless, unit, own), None
    measured = [r for r in records if not housekeeping(r, own)]
    measured = [r for r in measured if r.u not in DEVICE_UNITS] or measured
    unitless = [r for r in measured if not r.u]
    if unitless:
        return unitless, None
    units = {r.u for r in measured}
    if len(units) == 1:
        return measured, units.pop()
    return [], None


def _judged(records: list[SenMLRecord], unit: str, own: Mapping[str, str]) -> list[SenMLRecord]:
    """Of the records taken for thresholds in ``unit``: no battery record unless that is a
    battery unit, and the housekeeping ones by name only when no other remains, and then
    only those naming what the unit measures (:data:`UNIT_QUANTITIES`)."""
    kept = records
    if unit not in HOUSEKEEPING_UNITS:
        kept = [r for r in records if not _battery_name(r, own)]
    measured = [r for r in kept if not _housekeeping_name(r, own)]
    if measured:
        return measured
    # A heartbeat's rssi or temperature, read as a bin's fill, would clear it (-70 %).
    return [r for r in kept if _named(r, UNIT_QUANTITIES.get(unit, frozenset()), own)]


def _measured_with_unit(record: SenMLRecord, own: Mapping[str, str]) -> bool:
    """Whether a record gives the unit of a measurement: it has one, neither a device unit
    nor a housekeeping record's."""
    return bool(record.u) and record.u not in DEVICE_UNITS and not housekeeping(record, own)


SeqVerdict = Literal["new", "restart", "late", "superseded"]
# The last accepted message of a sensor: its boot_id, seq, the time its device gave and the
# time the bridge gave it (moved to its reception if implausible); None: stored before that
# time was kept.
SeqMark = tuple[str | None, int, float | None, float | None]


def seq_mark(item: AlarmInput, seq: int) -> SeqMark:
    """What the bridge remembers of an accepted message for the order of the next ones."""
    return (item.boot_id, seq, item.device_t, item.t)


def seq_verdict(
    last: SeqMark | None, item: AlarmInput, superseded: Collection[str] = ()
) -> SeqVerdict:
    """Whether a message's ``seq`` is new, restarts the device's counter, or came late.

    Within one ``boot_id`` (or without any) a seq not above the last one is a restart when it
    lies more than :data:`SEQ_REORDER_WINDOW` below it (a 16-bit counter wrapping from 65535
    to 0) or when the message was sent after the last one (a device without a boot_id that
    rebooted and counts from 1 again, see :func:`_sent_after`); otherwise it is a message
    overtaken by later ones.
    Another boot_id is a new boot, unless it is in ``superseded`` (the sensor's boots before
    its last one): see :func:`_boot_verdict`.
    """
    if item.seq is None or last is None:
        return "new"
    last_boot, last_seq, _, _ = last
    if item.boot_id != last_boot:
        return _boot_verdict(last, item, superseded)
    if item.seq > last_seq:
        return "new"
    if last_seq - item.seq > SEQ_REORDER_WINDOW or _sent_after(last, item):
        return "restart"
    return "late"


def _sent_after(last: SeqMark, item: AlarmInput) -> bool:
    """Whether a message of the last one's boot was sent after it: timed after it by the
    device, or, for a device without boot_id, its clock reset by a reboot (timed at its
    reception, its own time at least :data:`RESET_CLOCK_BEHIND_S` behind the last one's)
    while its seq starts over (up to :data:`BOOT_START_SEQS`, as in :func:`_boot_verdict`),
    received after the last one, when that one's clock was not reset too. The reset clock
    (2000-01-01, say) is behind the last one's time whatever the device did since, so it
    cannot tell; two messages of a reset clock are ordered by their own times again.

    Within one boot_id the device did not reboot. And a day or a few behind is no reboot: a
    device offline for days flushes its buffer newest first, and a message from before its
    clock was set right may arrive after later ones; they were sent before the last one
    (even with a young counter's low seq), so they stay late.
    """
    _, _, last_t, last_at = last
    if last_t is None:
        return False
    if item.device_t > last_t:
        return True
    known = last_at if last_at is not None else last_t
    last_reset = known > last_t  # moved forward: timed at its reception, its clock behind
    starting = item.seq is not None and item.seq <= BOOT_START_SEQS
    reset = item.moved_s < 0 and last_t - item.device_t >= RESET_CLOCK_BEHIND_S
    return item.boot_id is None and starting and reset and not last_reset and item.t > known


def _boot_verdict(last: SeqMark, item: AlarmInput, superseded: Collection[str]) -> SeqVerdict:
    """A message of an earlier boot (``superseded``) timed after the last accepted message is
    the device booting that boot_id again (A/B firmware slots, a rollback, a boot_id that
    wraps) when it counts from the start (a seq up to :data:`BOOT_START_SEQS`), when its
    clock was reset (to 2000, say) by the reboot, so it was timed at its reception, or when
    its own time is more than :data:`MAX_AHEAD_S` after the last one: a message sent before
    the reboot by a clock running ahead, but not so far that it was timed at its reception,
    is not timed that late. Otherwise it was sent before the device rebooted and overtaken by
    the new boot's messages: it must not make the old boot current again, or the new boot's
    next messages would be ignored as superseded and the old one's reopen what they cleared.

    The times compared are the bridge's (a message timed too far from its reception is timed
    at it), as the two boots' clocks need not agree; without the last one's, new.
    """
    if item.boot_id is None or item.boot_id not in superseded:
        return "new"
    _, _, last_t, last_at = last
    known = last_at if last_at is not None else last_t
    if known is None:
        return "new"
    if item.t <= known:
        return "superseded"
    starting = item.seq is not None and item.seq <= BOOT_START_SEQS
    clock_reset = item.moved_s < 0  # its own time a day or more behind its reception
    well_after = item.moved_s == 0 and item.t > known + MAX_AHEAD_S
    return "new" if starting or clock_reset or well_after else "superseded"
