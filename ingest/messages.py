"""MQTT payload envelopes: frames, alarm envelopes, SenML packs and threshold readings.

Decoding is the trust boundary: every payload from the broker goes through a decoder here,
which either returns a frozen dataclass or raises :class:`MessageError` with a short
machine-readable ``reason`` that goes into the dead letter. The id in the topic is
authoritative: a payload naming another camera or sensor is rejected, never re-routed.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeGuard

from gridpatrol.ingest.topics import valid_id

MAGIC = b"GPF1"
MAX_HEADER_BYTES = 16 * 1024
MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_SENSOR_BYTES = 64 * 1024
MAX_DIMENSION = 16384
JPEG_SOI = b"\xff\xd8"
ALARM_SCHEMA = "gridalarm/1"

Transition = Literal["raise", "update", "clear"]
Severity = Literal["CRITICAL", "MAJOR", "MINOR", "WARNING"]
TRANSITIONS: tuple[Transition, ...] = ("raise", "update", "clear")
SEVERITIES: tuple[Severity, ...] = ("CRITICAL", "MAJOR", "MINOR", "WARNING")

# Alarm types a device may send, and the candidate type each becomes.
ALARM_TYPES: dict[str, str] = {
    "manhole_tilt": "manhole_cover",
    "manhole_open": "manhole_cover",
    "water_level": "waterlogging",
    "smoke": "smoke",
    "bin_fill": "bin_full",
    "noise": "noise",
    "device_offline": "device_offline",
}

# SenML (RFC 8428 §4.5.3): a resolved time below 2**28 is relative to "now".
_SENML_RELATIVE_LIMIT = 2**28
_MAX_EPOCH = 1e11  # year 5138: anything larger is a unit mistake (ms, µs)

# A lone surrogate: JSON's "\ud800" escape reads into a str that no UTF-8 encoder takes (the
# bridge's SQLite state, the API's JSON body), so no decoded string may hold one.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Control characters (C0, DEL, C1): the API refuses NUL in the source event id the bridge
# builds from an event id, and no device has a reason to send any of them there.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_text(value: str) -> bool:
    """True when ``value`` encodes as UTF-8: no lone surrogate (``"\\ud800"`` in JSON)."""
    return _SURROGATE.search(value) is None


def has_control(value: str) -> bool:
    """True when ``value`` holds a control character (C0, DEL, C1)."""
    return _CONTROL.search(value) is not None


def _not_finite(value: object) -> str | None:
    """Why a float is no number to take, or None: JSON's ``NaN`` and ``Infinity``, which
    Python's json reads, and a literal past the float range (``1e999``, read as infinity)."""
    if not isinstance(value, float) or math.isfinite(value):
        return None
    return "not a number (NaN)" if math.isnan(value) else "not finite"


def _shown(value: object, name: str) -> str:
    """A refused value as its error says it: NaN and infinity in words, others as written."""
    why = _not_finite(value)
    return f"{name} is {why}" if why else repr(value)[:40]


def is_request_id(value: object) -> TypeGuard[str]:
    """What a frame header takes as its ``request_id``: text of at most 128 characters."""
    return isinstance(value, str) and len(value) <= 128 and _is_text(value)


class MessageError(ValueError):
    """A payload that does not validate; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# ---------------------------------------------------------------------------------------------
# JSON


class _RepeatedKey(Exception):
    """An object of the payload names ``key`` twice (not a ValueError: json.loads lets it out)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key repeats: json.loads keeps its last value, other
    readers the first, so the payload would mean what its reader picks."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def load_json(payload: bytes, reason: str = "bad_json") -> Any:
    """The JSON value of ``payload``; :class:`MessageError` for anything ``json.loads`` refuses.

    ``reason`` for bytes that are not UTF-8 JSON, for nesting deeper than the parser recurses
    (``[`` * 5000 raises RecursionError) and for an object with a repeated key;
    ``bad_value`` for an integer of more digits than Python converts (4300), which raises a
    plain ValueError. All fit in any size cap.
    """
    try:
        return json.loads(payload.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:
        raise MessageError(reason, f"repeated key {exc.key[:60]!r}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(reason, str(exc)[:80]) from exc
    except RecursionError as exc:
        raise MessageError(reason, "nested too deeply") from exc
    except ValueError as exc:
        raise MessageError("bad_value", "a number of too many digits") from exc


# ---------------------------------------------------------------------------------------------
# Time


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC)


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def parse_ts(value: object, field_name: str = "ts") -> datetime:
    """RFC 3339 text or epoch seconds → aware UTC datetime."""
    if isinstance(value, bool):
        raise MessageError(f"bad_{field_name}", "boolean is not a time")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError as exc:  # an integer of hundreds of digits
            raise MessageError(f"bad_{field_name}", "epoch seconds out of range") from exc
        if (why := _not_finite(seconds)) is not None:
            raise MessageError(f"bad_{field_name}", f"{field_name} is {why}")
        if not 0 <= seconds < _MAX_EPOCH:
            raise MessageError(f"bad_{field_name}", f"epoch seconds out of range: {seconds}")
        return from_epoch(seconds)
    if isinstance(value, str):
        # fromisoformat takes far more than RFC 3339 (2026-12-01T12Z, 20261201T120000Z, week
        # dates, any separator, +0800, +08, a comma before the fraction): the grammar first.
        form = _RFC3339.fullmatch(value)
        if form is None:
            raise MessageError(f"bad_{field_name}", f"not RFC 3339: {value[:40]!r}")
        if form["offset"] is None:
            raise MessageError(f"bad_{field_name}", "RFC 3339 time needs an offset or Z")
        try:
            parsed = datetime.fromisoformat(_isoformat_text(value))
        except ValueError as exc:  # out of range: month 13, 08:00:61
            raise MessageError(f"bad_{field_name}", f"not RFC 3339: {value[:40]!r}") from exc
        try:
            return parsed.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise MessageError(f"bad_{field_name}", f"out of range: {value[:40]!r}") from exc
    raise MessageError(f"bad_{field_name}", f"expected RFC 3339 or epoch seconds, got {value!r}")


# RFC 3339's date-time (section 5.6): full-date, T (or t, or a space as its note allows),
# full-time with the seconds and an offset (matched as optional here only to say that it is
# missing). Its fraction may have any number of digits (a nanosecond one is cut to
# microseconds). ASCII digits only: \d takes any script's.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)
# A leap second, e.g. 23:59:60.5: after the time's HH:MM:.
_LEAP_SECOND = re.compile(r"(?<=[Tt ]\d\d:\d\d:)60(\.\d+)?")
# Z or z after the seconds (or their fraction), ending the text.
_ZULU = re.compile(r"(?<=\d)[Zz]\Z")


def _isoformat_text(value: str) -> str:
    """RFC 3339 text as ``datetime.fromisoformat`` takes it. RFC 3339 allows a lower-case
    ``z`` and a leap second, which it refuses; a leap second is taken as the moment before."""
    return _LEAP_SECOND.sub("59.999999", _ZULU.sub("+00:00", value, count=1), count=1)


def rfc3339(value: datetime) -> str:
    return to_utc(value).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class FrameHeader:
    """The JSON header of a frame envelope; ``ts`` is an aware datetime (epoch on the wire).

    A bare JPEG from a third-party camera gets ``seq = -1`` and the receive time.
    """

    ts: datetime
    seq: int
    camera_id: str
    width: int
    height: int
    content_type: str = "image/jpeg"
    request_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ts, int | float):  # tolerate epoch seconds from producers
            object.__setattr__(self, "ts", from_epoch(float(self.ts)))
        object.__setattr__(self, "ts", to_utc(self.ts))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": self.ts.timestamp(),
            "seq": self.seq,
            "camera_id": self.camera_id,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
        }
        if self.request_id is not None:
            out["request_id"] = self.request_id
        return out


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    image: bytes = field(repr=False)

    @property
    def camera_id(self) -> str:
        return self.header.camera_id


def encode_frame(header: FrameHeader, image: bytes) -> bytes:
    raw = json.dumps(header.to_json(), separators=(",", ":")).encode()
    return MAGIC + len(raw).to_bytes(4, "big") + raw + image


def decode_frame(
    payload: bytes,
    *,
    topic_camera_id: str,
    received_at: datetime,
    max_bytes: int = MAX_FRAME_BYTES,
) -> Frame:
    """Validate a frame envelope (or a bare JPEG) received on the camera's topic."""
    if len(payload) > max_bytes:
        raise MessageError("too_large", f"{len(payload)} bytes > {max_bytes}")
    if payload.startswith(MAGIC):
        return _decode_envelope(payload, topic_camera_id)
    if payload.startswith(JPEG_SOI):
        width, height = jpeg_size(payload)
        header = FrameHeader(to_utc(received_at), -1, topic_camera_id, width, height)
        return Frame(header, payload)
    raise MessageError("bad_magic", f"starts with {payload[:4]!r}")


def _decode_envelope(payload: bytes, topic_camera_id: str) -> Frame:
    if len(payload) < 8:
        raise MessageError("truncated", "no header length")
    size = int.from_bytes(payload[4:8], "big")
    if not 0 < size <= MAX_HEADER_BYTES:
        raise MessageError("bad_header_length", str(size))
    if 8 + size > len(payload):
        raise MessageError("truncated", f"header length {size} beyond payload")
    raw = load_json(payload[8 : 8 + size], "bad_header_json")
    if not isinstance(raw, dict):
        raise MessageError("bad_header_json", "header is not an object")
    header = _frame_header(raw, topic_camera_id)
    image = payload[8 + size :]
    if not image:
        raise MessageError("empty_image")
    if header.content_type == "image/jpeg" and not image.startswith(JPEG_SOI):
        raise MessageError("bad_image", "JPEG does not start with FFD8")
    return Frame(header, image)


def _frame_header(raw: Mapping[str, Any], topic_camera_id: str) -> FrameHeader:
    camera_id = _id(raw.get("camera_id"), "camera_id")
    if camera_id != topic_camera_id:
        raise MessageError("camera_id_mismatch", f"{camera_id!r} on {topic_camera_id!r}")
    ts = raw.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise MessageError("bad_ts", "frame ts must be epoch seconds")
    seq = raw.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise MessageError("bad_seq", _shown(seq, "seq"))
    content_type = raw.get("content_type", "image/jpeg")
    if content_type != "image/jpeg":
        raise MessageError("bad_content_type", repr(content_type)[:40])
    request_id = raw.get("request_id")
    if request_id is not None and not is_request_id(request_id):
        raise MessageError("bad_request_id")
    return FrameHeader(
        ts=parse_ts(ts),
        seq=seq,
        camera_id=camera_id,
        width=_dimension(raw.get("width"), "width"),
        height=_dimension(raw.get("height"), "height"),
        content_type=content_type,
        request_id=request_id,
    )


def _dimension(value: object, name: str, most: int = MAX_DIMENSION) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        raise MessageError(f"bad_{name}", _shown(value, name))
    return value


def _id(value: object, name: str) -> str:
    if not isinstance(value, str) or not valid_id(value):
        raise MessageError(f"bad_{name}", repr(value)[:80])
    return value


_SOF_MARKERS = frozenset(
    {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF}
)
# Restart (RSTn) and TEM markers only belong inside entropy-coded data, after the frame header.
_SCAN_ONLY = frozenset({0x01, *range(0xD0, 0xD8)})
# A real JPEG has a few dozen segments before its frame header (even a chunked ICC profile stays
# far below this); the cap bounds the Python-level loop for a frame of nothing but markers.
MAX_JPEG_MARKERS = 4096
_FILL = re.compile(rb"\xff*")


def jpeg_size(data: bytes, most: int = MAX_DIMENSION) -> tuple[int, int]:
    """(width, height) from the JPEG start-of-frame segment, without decoding the image; a
    side over ``most`` is refused (``bad_width`` / ``bad_height``), as one of 0 always is.

    The Python-level work is bounded whatever the payload: the detector reads every camera's
    frames on one thread, so one camera sending junk must not cost the others their frames.
    """
    i, n, markers = 2, len(data), 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise MessageError("bad_jpeg", f"no marker at {i}")
        marker = data[i + 1]
        if marker == 0xFF:
            # Fill bytes (legal before any marker): skip the whole run in one C-level search, to
            # the last 0xFF before the marker byte, rather than one Python step per byte.
            run = _FILL.match(data, i + 1)
            assert run is not None  # an empty run matches too
            i = run.end() - 1
            continue
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise MessageError(
                "bad_jpeg",
                f"more than {MAX_JPEG_MARKERS} markers before the start-of-frame segment",
            )
        if marker in _SCAN_ONLY:
            raise MessageError(
                "bad_jpeg", f"marker FF{marker:02X} before the start-of-frame segment"
            )
        if marker == 0xD8:  # a repeated start-of-image has no length either
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return _dimension(width, "width", most), _dimension(height, "height", most)
        if marker == 0xDA:
            break
        i += 2 + length
    raise MessageError("bad_jpeg", "no start-of-frame segment")


# ---------------------------------------------------------------------------------------------
# Sensor payloads


@dataclass(frozen=True)
class SenMLRecord:
    """A resolved SenML record (RFC 8428): full name, unit, one value, absolute time."""

    n: str
    u: str | None = None
    v: float | None = None
    vs: str | None = None
    vb: bool | None = None
    s: float | None = None
    t: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        for key in ("u", "v", "vs", "vb", "s"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        if self.t is not None:
            out["t"] = self.t.timestamp()
        return out


@dataclass(frozen=True)
class AlarmEnvelope:
    """A ``gridalarm/1`` device alarm; ``(sensor_id, event_id)`` identifies it."""

    event_id: str
    sensor_id: str
    alarm_type: str
    transition: Transition
    severity: Severity
    ts: datetime
    measurements: tuple[SenMLRecord, ...] = ()
    seq: int | None = None
    boot_id: str | None = None
    location: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": ALARM_SCHEMA,
            "event_id": self.event_id,
            "sensor_id": self.sensor_id,
            "alarm_type": self.alarm_type,
            "transition": self.transition,
            "severity": self.severity,
            "ts": rfc3339(self.ts),
            "measurements": [m.to_json() for m in self.measurements],
        }
        for key in ("seq", "boot_id", "location"):
            if (value := getattr(self, key)) is not None:
                out[key] = dict(value) if key == "location" else value
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SenMLPack:
    """A SenML pack from a sensor, resolved; ``sensor_id`` is the topic's."""

    sensor_id: str
    records: tuple[SenMLRecord, ...]


@dataclass(frozen=True)
class ThresholdReading:
    """A plain reading judged against the sensor's thresholds."""

    sensor_id: str
    value: float
    ts: datetime

    def encode(self) -> bytes:
        body = {"sensor_id": self.sensor_id, "value": self.value, "ts": rfc3339(self.ts)}
        return json.dumps(body, separators=(",", ":")).encode()


SensorPayload = AlarmEnvelope | SenMLPack | ThresholdReading


def decode_sensor_payload(
    payload: bytes,
    *,
    topic_sensor_id: str,
    received_at: datetime,
    max_bytes: int = MAX_SENSOR_BYTES,
) -> SensorPayload:
    """Validate a payload from ``{prefix}/sensors/{id}/alarm``."""
    if len(payload) > max_bytes:
        raise MessageError("too_large", f"{len(payload)} bytes > {max_bytes}")
    data = load_json(payload)
    try:
        return _sensor_payload(data, topic_sensor_id, received_at)
    except (OverflowError, RecursionError) as exc:
        # Huge integers and deep nesting are valid JSON but no sensor sends them.
        raise MessageError("bad_value", type(exc).__name__) from exc


def _sensor_payload(data: Any, topic_sensor_id: str, received_at: datetime) -> SensorPayload:
    if isinstance(data, list):
        return decode_senml(data, topic_sensor_id=topic_sensor_id, received_at=received_at)
    if not isinstance(data, dict):
        raise MessageError("bad_shape", "expected an object or a SenML array")
    if "schema" in data:
        return _alarm(data, topic_sensor_id, received_at)
    if "value" in data:  # a threshold reading, however incomplete: say what it lacks
        return _reading(data, topic_sensor_id)
    raise MessageError("unknown_payload", "neither gridalarm/1, SenML nor a threshold reading")


def _sensor_id(data: Mapping[str, Any], topic_sensor_id: str) -> str:
    sensor_id = _id(data.get("sensor_id"), "sensor_id")
    if sensor_id != topic_sensor_id:
        raise MessageError("sensor_id_mismatch", f"{sensor_id!r} on {topic_sensor_id!r}")
    return sensor_id


def _reading(data: Mapping[str, Any], topic_sensor_id: str) -> ThresholdReading:
    extra = sorted(set(data) - {"sensor_id", "value", "ts"})
    if extra:
        raise MessageError("unknown_field", ", ".join(extra)[:80])
    for key in ("sensor_id", "ts"):
        if key not in data:
            raise MessageError(f"bad_{key}", f"the reading has no {key}")
    value = data["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or _not_finite(value):
        raise MessageError("bad_value", _shown(value, "value"))
    return ThresholdReading(_sensor_id(data, topic_sensor_id), float(value), parse_ts(data["ts"]))


_ALARM_KEYS = frozenset(
    {
        "schema",
        "event_id",
        "sensor_id",
        "alarm_type",
        "transition",
        "severity",
        "ts",
        "seq",
        "boot_id",
        "measurements",
        "location",
    }
)


def _alarm(data: Mapping[str, Any], topic_sensor_id: str, received_at: datetime) -> AlarmEnvelope:
    if data.get("schema") != ALARM_SCHEMA:
        raise MessageError("unknown_schema", repr(data.get("schema"))[:40])
    extra = sorted(set(data) - _ALARM_KEYS)
    if extra:
        raise MessageError("unknown_field", ", ".join(extra)[:80])
    event_id = data.get("event_id")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    if (
        not isinstance(event_id, str)
        or not 0 < len(event_id) <= 128
        or _CONTROL.search(event_id)
        or not _is_text(event_id)
    ):
        raise MessageError("bad_event_id", _shown(event_id, "event_id"))
    alarm_type = data.get("alarm_type")
    if not isinstance(alarm_type, str) or alarm_type not in ALARM_TYPES:
        raise MessageError("unknown_alarm_type", repr(alarm_type)[:40])
    transition = data.get("transition")
    if transition not in TRANSITIONS:
        raise MessageError("bad_transition", repr(transition)[:40])
    severity = data.get("severity")
    if severity not in SEVERITIES:
        raise MessageError("bad_severity", repr(severity)[:40])
    ts = parse_ts(data.get("ts"))
    measurements = data.get("measurements", [])
    if not isinstance(measurements, list):
        raise MessageError("bad_measurements", "expected a list of SenML records")
    return AlarmEnvelope(
        event_id=event_id,
        sensor_id=_sensor_id(data, topic_sensor_id),
        alarm_type=str(alarm_type),
        transition=transition,
        severity=severity,
        ts=ts,
        measurements=_resolve_senml(measurements, ts),
        seq=_optional_int(data.get("seq"), "seq"),
        boot_id=_optional_str(data.get("boot_id"), "boot_id"),
        location=_optional_location(data.get("location")),
    )


def _optional_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"bad_{name}", _shown(value, name))
    return value


def _optional_str(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 128 or not _is_text(value):
        raise MessageError(f"bad_{name}", repr(value)[:40])
    return value


def _optional_location(value: object) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MessageError("bad_location", "expected an object")
    if (fault := _location_fault(value)) is not None:
        raise MessageError("bad_location", fault)
    return value


def _location_fault(value: object) -> str | None:
    """What no JSON value in a location may be, or None: a string (a key too) holding a lone
    surrogate, or a NaN or infinite number, which :meth:`AlarmEnvelope.encode` would write as
    no strict JSON parser reads it."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str) and not _is_text(item):
            return "a string with a lone surrogate"
        if (why := _not_finite(item)) is not None:
            # "a value", not "a number": a NaN is "not a number (NaN)".
            return f"a value is {why}"
        if isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return None


def decode_senml(
    records: Sequence[object], *, topic_sensor_id: str, received_at: datetime
) -> SenMLPack:
    """Resolve a SenML pack (base name, time, unit, value); the topic names the sensor."""
    if not records:
        raise MessageError("bad_senml", "empty pack")
    resolved = _resolve_senml(records, to_utc(received_at))
    # Every record's bn, not the first only: a bn further on names the records after it, and
    # another sensor's there would put its readings (a tilt alarm) on the topic's sensor.
    for record in records:
        base = record.get("bn") if isinstance(record, dict) else None
        if isinstance(base, str):
            stem = base.rstrip("/:;.")
            if valid_id(stem) and not _own_stem(stem, topic_sensor_id):
                raise MessageError("sensor_id_mismatch", f"bn {base!r} on {topic_sensor_id!r}")
    return SenMLPack(topic_sensor_id, resolved)


def _own_stem(stem: str, sensor_id: str) -> bool:
    """Whether a base name's stem is the sensor's id or a part of it (``mh-0001.gps``)."""
    return stem == sensor_id or any(stem.startswith(sensor_id + sep) for sep in "/:;.")


def _resolve_senml(records: Sequence[object], now: datetime) -> tuple[SenMLRecord, ...]:
    base: dict[str, Any] = {"bn": "", "bt": 0.0, "bu": None, "bv": 0.0, "bs": 0.0}
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise MessageError("bad_senml", f"record {index} is not an object")
        for key in ("bn", "bt", "bu", "bv", "bs"):
            if key in record:
                base[key] = _senml_field(record[key], key, index)
        out.append(_senml_record(record, base, now, index))
    return tuple(out)


_SENML_TYPES: dict[str, tuple[type, ...]] = {
    "bn": (str,),
    "bu": (str,),
    "n": (str,),
    "u": (str,),
    "vs": (str,),
    "vb": (bool,),
    "bt": (int, float),
    "bv": (int, float),
    "bs": (int, float),
    "t": (int, float),
    "v": (int, float),
    "s": (int, float),
    "ut": (int, float),
    "bver": (int,),
    "vd": (str,),
}


def _senml_field(value: object, key: str, index: int) -> Any:
    types = _SENML_TYPES.get(key)
    if types is None:
        raise MessageError("bad_senml", f"record {index}: unknown field {key!r}")
    numeric = types != (bool,) and isinstance(value, bool)
    if numeric or not isinstance(value, types):
        raise MessageError("bad_senml", f"record {index}: {key} has the wrong type")
    if (why := _not_finite(value)) is not None:
        # NaN, Infinity or a literal past the float range (1e999): bad_value as in every
        # other field, the error saying which.
        raise MessageError("bad_value", f"record {index}: {key} is {why}")
    if isinstance(value, str) and not _is_text(value):
        raise MessageError("bad_senml", f"record {index}: {key} holds a lone surrogate")
    return value


def _senml_record(
    record: Mapping[str, Any], base: Mapping[str, Any], now: datetime, index: int
) -> SenMLRecord:
    fields = {k: _senml_field(v, k, index) for k, v in record.items()}
    name = base["bn"] + fields.get("n", "")
    if not name:
        raise MessageError("bad_senml", f"record {index} has no name")
    values = [k for k in ("v", "vs", "vb", "vd", "s") if k in fields]
    if not values:
        raise MessageError("bad_senml", f"record {index} ({name}) has no value")
    t = base["bt"] + fields.get("t", 0.0)
    when = now.timestamp() + t if abs(t) < _SENML_RELATIVE_LIMIT else t
    if not 0 <= when < _MAX_EPOCH:
        raise MessageError("bad_senml", f"record {index}: time out of range")
    return SenMLRecord(
        n=name,
        u=fields.get("u", base["bu"]),
        v=_senml_sum(base["bv"], fields["v"], "v", index) if "v" in fields else None,
        vs=fields.get("vs"),
        vb=fields.get("vb"),
        s=_senml_sum(base["bs"], fields["s"], "s", index) if "s" in fields else None,
        t=from_epoch(when),
    )


def _senml_sum(base: float, value: float, key: str, index: int) -> float:
    """A record's value or sum with its pack's base added: ``bad_value`` when the two, each
    finite, add up to more than a float holds (1e308 + 1e308 is inf, which no JSON carries)."""
    total = float(base + value)  # OverflowError for integers past a float: bad_value too
    if not math.isfinite(total):
        raise MessageError("bad_value", f"record {index}: b{key} + {key} is not finite")
    return total


# ---------------------------------------------------------------------------------------------
# Dead letters


# The most of its payload a dead letter of ingest and watch-frames carries: any frame header
# (at most 16 KiB) and snapshot request fit. Whole, a payload of some MB would make the dead
# letter (in base64) larger than the broker takes (max_packet_size, which Mosquitto answers by
# dropping the connection), one of 201 MB larger than MQTT allows (the publish raises).
DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024


def dead_letter(
    reason: str,
    topic: str,
    payload: bytes,
    received_at: datetime,
    keep: int | None = None,
    error: str | None = None,
) -> bytes:
    """The JSON published to ``{prefix}/deadletter/{component}``. A payload over ``keep``
    bytes is cut to its first ``keep``, and the letter adds ``payload_bytes`` (the payload's
    size) and ``payload_truncated``: true; ``error``, when given, is carried as is."""
    kept = payload if keep is None else payload[:keep]
    body: dict[str, object] = {
        "reason": reason,
        "topic": topic,
        "payload_b64": base64.b64encode(kept).decode("ascii"),
        "received_at": rfc3339(received_at),
    }
    if len(kept) < len(payload):
        body |= {"payload_bytes": len(payload), "payload_truncated": True}
    if error is not None:
        body["error"] = error
    return json.dumps(body, separators=(",", ":")).encode()
