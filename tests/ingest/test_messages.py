"""Envelope encoding and validation: every rejection carries a machine-readable reason."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpatrol.alarm_bridge.adapters import Rejected, adapt
from gridpatrol.ingest.messages import (
    MAX_FRAME_BYTES,
    MAX_JPEG_MARKERS,
    AlarmEnvelope,
    Frame,
    FrameHeader,
    MessageError,
    SenMLPack,
    SenMLRecord,
    ThresholdReading,
    dead_letter,
    decode_frame,
    decode_sensor_payload,
    encode_frame,
    jpeg_size,
)
from gridpatrol.ingest.snapshot import encode_reply, parse_request
from gridpatrol.ingest.topics import (
    TopicMatch,
    camera_status_topic,
    component_status_topic,
    deadletter_topic,
    frame_topic,
    parse_topic,
    patrol_boost_topic,
    sensor_alarm_topic,
    sensor_status_topic,
    snapshot_request_topic,
    snapshot_topic,
    wildcard,
)
from gridpatrol.site import parse_site

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def jpeg(width: int = 64, height: int = 48) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))
    assert ok
    return bytes(buf.tobytes())


def envelope(header: dict[str, object], image: bytes | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return b"GPF1" + len(raw).to_bytes(4, "big") + raw + (jpeg() if image is None else image)


GOOD = {"ts": 1777622400.5, "seq": 3, "camera_id": "cam-1", "width": 64, "height": 48,
        "content_type": "image/jpeg"}  # fmt: skip


def test_frame_round_trip() -> None:
    header = FrameHeader(NOW, 7, "cam-1", 64, 48, request_id="r1")
    frame = decode_frame(encode_frame(header, jpeg()), topic_camera_id="cam-1", received_at=NOW)
    assert frame.header == header
    assert frame.image == jpeg()


def test_bare_jpeg_takes_size_from_the_image_and_time_from_receipt() -> None:
    frame = decode_frame(jpeg(320, 200), topic_camera_id="third-party", received_at=NOW)
    assert (frame.header.width, frame.header.height) == (320, 200)
    assert frame.header.ts == NOW
    assert frame.header.seq == -1
    assert frame.header.camera_id == "third-party"
    assert jpeg_size(jpeg(17, 9)) == (17, 9)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad_magic"),
        (b"GIF89a....", "bad_magic"),
        (b"GPF1\x00\x00", "truncated"),
        (b"GPF1\x00\x01\x00\x00{}", "bad_header_length"),
        (b"GPF1\x00\x00\x00\x00", "bad_header_length"),
        (b"GPF1\x00\x00\x00\x40{}", "truncated"),
        (b"GPF1\x00\x00\x00\x02{x" + jpeg(), "bad_header_json"),
        (b"GPF1\x00\x00\x00\x02[]" + jpeg(), "bad_header_json"),
        (envelope({**GOOD, "camera_id": "cam-2"}), "camera_id_mismatch"),
        (envelope({**GOOD, "camera_id": "bad id"}), "bad_camera_id"),
        (envelope({**GOOD, "width": 0}), "bad_width"),
        (envelope({**GOOD, "height": 16385}), "bad_height"),
        (envelope({**GOOD, "width": "64"}), "bad_width"),
        (envelope({**GOOD, "seq": -1}), "bad_seq"),
        (envelope({**GOOD, "seq": True}), "bad_seq"),
        (envelope({**GOOD, "ts": "yesterday"}), "bad_ts"),
        (envelope({**GOOD, "ts": 1e15}), "bad_ts"),
        (envelope({**GOOD, "content_type": "image/gif"}), "bad_content_type"),
        (envelope({**GOOD, "request_id": "r-\ud800"}), "bad_request_id"),
        (envelope(GOOD, b""), "empty_image"),
        (envelope(GOOD, b"\x89PNG...."), "bad_image"),
        (b"\xff\xd8\xff\xda\x00\x02", "bad_jpeg"),
        (b"\xff\xd8garbage", "bad_jpeg"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as err:
        decode_frame(payload, topic_camera_id="cam-1", received_at=NOW)
    assert err.value.reason == reason


def test_frame_size_cap() -> None:
    with pytest.raises(MessageError) as err:
        decode_frame(envelope(GOOD), topic_camera_id="cam-1", received_at=NOW, max_bytes=100)
    assert err.value.reason == "too_large"


# JPEG measuring: real encodings keep their size; junk is refused without a per-byte walk.

SOI = b"\xff\xd8"
EXIF_APP1 = (  # Exif, big-endian TIFF, one IFD entry: Orientation = 6
    b"\xff\xe1\x00\x22Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08"
    b"\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
)


def header_markers(data: bytes) -> list[int]:
    """Offsets of a clean JPEG's markers after SOI, up to and including its frame header."""
    offsets: list[int] = []
    i = 2
    while True:
        offsets.append(i)
        if data[i + 1] in (0xC0, 0xC1, 0xC2):
            return offsets
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")


def with_fill(data: bytes, count: int) -> bytes:
    """``count`` fill bytes (0xFF) before every marker up to the frame header."""
    out, last = bytearray(), 0
    for offset in header_markers(data):
        out += data[last:offset] + b"\xff" * count
        last = offset
    return bytes(out + data[last:])


def footage_frame(shared: Path, name: str) -> np.ndarray:
    cap = cv2.VideoCapture(str(shared / "footage" / name))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, 10)
        ok, image = cap.read()
    finally:
        cap.release()
    assert ok
    return image


def encode(image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, list(params))
    assert ok
    return bytes(buf.tobytes())


REAL_JPEGS: dict[str, Callable[[np.ndarray], bytes]] = {
    "baseline": lambda im: encode(im),
    "progressive": lambda im: encode(im, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "restart_intervals": lambda im: encode(im, cv2.IMWRITE_JPEG_RST_INTERVAL, 4),
    "exif_app1": lambda im: SOI + EXIF_APP1 + encode(im)[2:],
    "icc_chunks_and_comment": lambda im: (
        SOI
        + b"".join(b"\xff\xe2\x00\x10ICC_PROFILE\x00" + bytes([n, 40]) for n in range(1, 41))
        + b"\xff\xfe\x00\x07hello"
        + encode(im)[2:]
    ),
    "one_fill_byte": lambda im: with_fill(encode(im), 1),
    "fill_runs": lambda im: with_fill(encode(im, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), 5000),
    "megabyte_fill_run": lambda im: SOI + b"\xff" * 2**20 + encode(im)[2:],
}


@pytest.mark.parametrize("video", ["car_park_people_bikes.mp4", "car_park_overhead.mp4",
                                   "pedestrian_street_1080p.mp4"])  # fmt: skip
@pytest.mark.parametrize("kind", sorted(REAL_JPEGS))
def test_real_jpegs_are_measured_from_their_frame_header(
    shared_dir: Path, video: str, kind: str
) -> None:
    image = footage_frame(shared_dir, video)
    data = REAL_JPEGS[kind](image)
    # libjpeg agrees the JPEG is valid; the frame header's size is the stored one, not rotated.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert decoded is not None and decoded.shape == image.shape
    height, width = image.shape[:2]
    assert jpeg_size(data) == (width, height)
    frame = decode_frame(data, topic_camera_id="cam-1", received_at=NOW)
    assert (frame.header.width, frame.header.height) == (width, height)


def test_markers_up_to_the_cap_are_read() -> None:
    clean = jpeg(40, 30)
    padding = MAX_JPEG_MARKERS - len(header_markers(clean))
    data = SOI + b"\xff\xfe\x00\x02" * padding + clean[2:]
    assert jpeg_size(data) == (40, 30)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (30, 40, 3)


CAPPED = f"more than {MAX_JPEG_MARKERS} markers before the start-of-frame segment"


def past_the_cap() -> bytes:
    """One marker past the cap (empty comment segments), then a valid JPEG."""
    clean = jpeg(40, 30)
    return (
        SOI + b"\xff\xfe\x00\x02" * (MAX_JPEG_MARKERS - len(header_markers(clean)) + 1) + clean[2:]
    )


NO_SOF = "no start-of-frame segment"


def scan_marker(code: int) -> str:
    return f"marker FF{code:02X} before the start-of-frame segment"


def after(prefix: bytes) -> bytes:
    """``prefix`` between the start-of-image and the rest of a valid 40x30 JPEG."""
    return SOI + prefix + jpeg(40, 30)[2:]


# Payloads are built per test: the largest are the frame cap, 32 MiB each.
CAP = MAX_FRAME_BYTES
JUNK: dict[str, tuple[Callable[[], bytes], str]] = {
    # Restart / TEM markers belong in scan data only; a valid frame header after them does not
    # make the JPEG valid.
    "rst0": (lambda: after(b"\xff\xd0" * 8), scan_marker(0xD0)),
    "rst7_after_fill": (lambda: after(b"\xff\xff\xd7"), scan_marker(0xD7)),
    "tem": (lambda: after(b"\xff\x01"), scan_marker(0x01)),
    "rst_flood": (lambda: SOI + b"\xff\xd0" * (CAP // 2 - 1), scan_marker(0xD0)),
    "marker_cap": (past_the_cap, CAPPED),
    "soi_flood": (lambda: SOI * (CAP // 2), CAPPED),
    "empty_app0_flood": (lambda: SOI + b"\xff\xe0\x00\x02" * (CAP // 4 - 1), CAPPED),
    # A frame of nothing but fill bytes has no frame header.
    "fill_flood": (lambda: SOI + b"\xff" * (CAP - 2), NO_SOF),
    "fill_flood_then_sof": (lambda: SOI + b"\xff" * (CAP - 3) + b"\xc0", NO_SOF),
}


@pytest.mark.parametrize("kind", JUNK)
def test_junk_before_the_frame_header_is_bad_jpeg(kind: str) -> None:
    build, detail = JUNK[kind]
    payload = build()
    assert len(payload) <= MAX_FRAME_BYTES
    with pytest.raises(MessageError) as err:
        decode_frame(payload, topic_camera_id="cam-1", received_at=NOW)
    assert (err.value.reason, err.value.detail) == ("bad_jpeg", detail)


ALARM = {
    "schema": "gridalarm/1",
    "event_id": "e-1",
    "sensor_id": "mh-0001",
    "alarm_type": "manhole_tilt",
    "transition": "raise",
    "severity": "MAJOR",
    "ts": "2026-05-01T16:00:00+08:00",
    "seq": 12,
    "boot_id": "b7",
    "measurements": [{"n": "tilt", "u": "deg", "v": 21.5}],
}


def sensor(body: object, topic_id: str = "mh-0001") -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_sensor_payload(raw, topic_sensor_id=topic_id, received_at=NOW)


def test_alarm_envelope() -> None:
    env = sensor(ALARM)
    assert env == AlarmEnvelope(
        event_id="e-1",
        sensor_id="mh-0001",
        alarm_type="manhole_tilt",
        transition="raise",
        severity="MAJOR",
        ts=NOW,
        measurements=(SenMLRecord(n="tilt", u="deg", v=21.5, t=NOW),),
        seq=12,
        boot_id="b7",
    )
    assert isinstance(env, AlarmEnvelope)
    assert sensor(env.encode()) == env


def test_alarm_epoch_time_and_integer_event_id() -> None:
    env = sensor({**ALARM, "ts": NOW.timestamp(), "event_id": 42})
    assert isinstance(env, AlarmEnvelope)
    assert (env.ts, env.event_id) == (NOW, "42")


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-05-01T08:00:00Z", NOW),
        ("2026-05-01T08:00:00z", NOW),  # RFC 3339 5.6: T and Z may be lower case
        ("2026-05-01t08:00:00z", NOW),
        ("2026-05-01 16:00:00+08:00", NOW),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2017-01-01T07:59:60.5+08:00", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        # A fraction of any length: nanoseconds are cut to microseconds.
        ("2026-05-01T08:00:00.123456789Z", NOW.replace(microsecond=123456)),
        ("2026-05-01T09:30:00.5+01:30", NOW.replace(microsecond=500000)),
        ("2026-05-01T07:00:00-01:00", NOW),
    ],
)
def test_alarm_rfc3339_times(ts: str, expected: datetime) -> None:
    env = sensor({**ALARM, "ts": ts})
    assert isinstance(env, AlarmEnvelope)
    assert env.ts == expected


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "2026-05-01T08:00:61Z",
        "2026-05-01T08:00:00zz",
        "2026-05-01T08:00:00",
        # Forms datetime.fromisoformat takes that RFC 3339 has not.
        "2026-12-01T12Z",
        "2026-12-01T12:00Z",
        "20261201T120000Z",
        "2026-W49-2T12:00:00Z",
        "2026-12-01X12:00:00Z",
        "2026-12-01T12:00:00,5Z",
        "2026-12-01T12:00:00+0800",
        "2026-12-01T12:00:00+08",
        "2026-12-01T12:00:00+08:00:00",
        "2026-12-01T12:00:00.Z",
        # RFC 3339's offset: hour 00-23, minute 00-59 (fromisoformat reads +05:60 as +06:00).
        "2026-12-01T12:00:00+05:60",
        "2026-12-01T12:00:00+24:00",
        "２０２６-12-01T12:00:00Z",
        "2026-12-01T12:00:00Z\n",
    ],
)
def test_alarm_times_out_of_rfc3339_are_bad_ts(ts: str) -> None:
    with pytest.raises(MessageError) as err:
        sensor({**ALARM, "ts": ts})
    assert err.value.reason == "bad_ts"
    reading = {"sensor_id": "mh-0001", "value": 1.0, "ts": ts}
    with pytest.raises(MessageError) as err:
        sensor(reading)
    assert err.value.reason == "bad_ts"


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"schema": "gridalarm/2"}, "unknown_schema"),
        ({"sensor_id": "mh-0002"}, "sensor_id_mismatch"),
        ({"sensor_id": "mh 1"}, "bad_sensor_id"),
        ({"alarm_type": "alien"}, "unknown_alarm_type"),
        ({"transition": "start"}, "bad_transition"),
        ({"severity": "major"}, "bad_severity"),
        ({"ts": "2026-05-01T16:00:00"}, "bad_ts"),
        ({"ts": True}, "bad_ts"),
        ({"event_id": ""}, "bad_event_id"),
        ({"measurements": {"n": "x"}}, "bad_measurements"),
        ({"measurements": [{"u": "deg", "v": 1}]}, "bad_senml"),
        ({"measurements": [{"n": "tilt"}]}, "bad_senml"),
        ({"seq": "7"}, "bad_seq"),
        ({"extra": 1}, "unknown_field"),
        ({"location": "here"}, "bad_location"),
        # The API refuses NUL in the source event id the bridge builds from the event id; no
        # control character has a place in an id.
        ({"event_id": "a\u0000b"}, "bad_event_id"),
        ({"event_id": "a\nb"}, "bad_event_id"),
        ({"event_id": "a\u007fb"}, "bad_event_id"),
        ({"event_id": "a\u0085b"}, "bad_event_id"),
        # A lone surrogate ("\ud800" in JSON) is a str that no UTF-8 encoder takes.
        ({"event_id": "a\ud800b"}, "bad_event_id"),
        ({"boot_id": "b\udc00"}, "bad_boot_id"),
        ({"location": {"address": ["a\ud800"]}}, "bad_location"),
        ({"location": {"\ud800": 1}}, "bad_location"),
        ({"measurements": [{"n": "tilt\ud800", "u": "deg", "v": 21.5}]}, "bad_senml"),
        ({"measurements": [{"n": "tilt", "u": "deg\udfff", "v": 21.5}]}, "bad_senml"),
        ({"measurements": [{"bn": "\ud800", "n": "tilt", "v": 21.5}]}, "bad_senml"),
        ({"measurements": [{"n": "fw", "vs": "1.\ud800"}]}, "bad_senml"),
    ],
)
def test_bad_alarm_envelopes(patch: dict[str, object], reason: str) -> None:
    with pytest.raises(MessageError) as err:
        sensor({**ALARM, **patch})
    assert err.value.reason == reason


BRIDGE_SITE = """
site: {name: t, timezone: Asia/Shanghai}
sensors:
  - id: mh-0001
    kind: manhole_cover
    location: {lat: 31.2803, lon: 121.4517}
    thresholds: {raise: 15, clear: 5, unit: deg}
"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({**ALARM, "event_id": "a\u0000b"}, "bad_event_id"),
        ({**ALARM, "event_id": "a\ud800b"}, "bad_event_id"),
        ({**ALARM, "measurements": [{"n": "t\ud800", "u": "deg", "v": 21.5}]}, "bad_senml"),
        ([{"bn": "mh-0001/", "n": "t\ud800", "u": "deg", "v": 20}], "bad_senml"),
    ],
)
def test_the_bridge_dead_letters_text_the_api_or_utf_8_cannot_take(
    body: object, reason: str
) -> None:
    """Such a payload is dead-lettered at once with its reason: it never makes a candidate
    the API refuses for good, nor a batch failure (``internal_error``)."""
    registry = {s.id: s for s in parse_site(BRIDGE_SITE).sensors}
    raw = json.dumps(body).encode()
    rejected = adapt(raw, sensor_id="mh-0001", registry=registry, received_at=NOW)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason


def test_ids_and_names_in_any_script_and_astral_characters_are_text() -> None:
    body = {
        **ALARM,
        "event_id": "事件-1 😀",  # a surrogate pair in JSON ("\ud83d\ude00") is one character
        "boot_id": "启动-7",
        "location": {"address": "大宁路 1号 😀"},
        "measurements": [{"n": "倾角 😀", "u": "deg", "v": 21.5, "vs": "ok"}],
    }
    env = sensor(json.dumps(body).encode())
    assert isinstance(env, AlarmEnvelope)
    assert (env.event_id, env.boot_id, env.measurements[0].n) == ("事件-1 😀", "启动-7", "倾角 😀")
    assert env.location == {"address": "大宁路 1号 😀"}
    assert sensor(env.encode()) == env


def test_senml_pack_resolves_base_fields() -> None:
    pack = sensor(
        [
            {"bn": "wl-01/", "bt": NOW.timestamp(), "bu": "cm", "bv": 10, "n": "level", "v": 2},
            {"n": "level", "t": 60, "v": 5.5},
            {"n": "door", "vb": True, "u": "bool"},
            {"n": "fw", "vs": "1.2"},
        ],
        topic_id="wl-01",
    )
    assert isinstance(pack, SenMLPack)
    assert pack.sensor_id == "wl-01"
    first, second, door, fw = pack.records
    assert (first.n, first.u, first.v, first.t) == ("wl-01/level", "cm", 12.0, NOW)
    assert (second.v, second.t) == (15.5, datetime(2026, 5, 1, 8, 1, tzinfo=UTC))
    assert (door.n, door.vb, door.u, door.v) == ("wl-01/door", True, "bool", None)
    assert fw.vs == "1.2"


def test_senml_relative_time_counts_from_receipt() -> None:
    pack = sensor([{"n": "level", "v": 1, "t": -30}], topic_id="wl-01")
    assert isinstance(pack, SenMLPack)
    assert pack.records[0].t == datetime(2026, 5, 1, 7, 59, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "bad_senml"),
        ([1], "bad_senml"),
        ([{"n": "x", "v": "high"}], "bad_senml"),
        ([{"n": "x", "v": True}], "bad_senml"),
        ([{"n": "x", "v": 1, "zz": 1}], "bad_senml"),
        ([{"bn": "wl-02/", "n": "level", "v": 1}], "sensor_id_mismatch"),
        # Another sensor's bn after the topic's own names the records after it.
        (
            [{"bn": "wl-01/", "n": "level", "v": 1}, {"bn": "wl-02/", "n": "level", "v": 40}],
            "sensor_id_mismatch",
        ),
        (
            [{"n": "level", "v": 1}, {"bn": "wl-02:", "n": "level", "v": 40}],
            "sensor_id_mismatch",
        ),
        ([{"n": "level\ud800", "v": 1}], "bad_senml"),
        ([{"n": "level", "u": "\udbff", "v": 1}], "bad_senml"),
        ([{"bn": "wl-01/", "bu": "c\udc00m", "n": "level", "v": 1}], "bad_senml"),
        ([{"n": "fw", "vs": "\ud800"}], "bad_senml"),
        ([{"n": "blob", "vd": "\ud800"}], "bad_senml"),
        (b'[{"n": "level", "v": 1e999}]', "bad_value"),
        (b'[{"n": "level", "v": -1e999}]', "bad_value"),
        (b'[{"n": "level", "s": 1e999}]', "bad_value"),
        (b'[{"bn": "wl-01/", "bv": 1e999, "n": "level", "v": 1}]', "bad_value"),
        (b'[{"n": "level", "v": 1, "t": 1e999}]', "bad_value"),
        ("text", "bad_shape"),
        ({"hello": 1}, "unknown_payload"),
        (b"\xff\xfe", "bad_json"),
        (b"{", "bad_json"),
    ],
)
def test_bad_senml_and_others(body: object, reason: str) -> None:
    with pytest.raises(MessageError) as err:
        sensor(body, topic_id="wl-01")
    assert err.value.reason == reason


BIG = 1e308  # finite; two of them add up to more than a float holds (inf)


@pytest.mark.parametrize(
    "body",
    [
        [{"n": "level", "bv": BIG, "v": BIG}],
        [{"n": "level", "bv": -BIG, "v": -BIG}],
        [{"n": "level", "bs": BIG, "s": BIG}],
        [{"bv": BIG, "n": "level", "v": -BIG}, {"n": "level", "v": 1}, {"n": "level", "v": BIG}],
        [{"n": "level", "bv": 10**308, "v": 10**308}],
        {**ALARM, "sensor_id": "wl-01", "measurements": [{"n": "tilt", "bv": BIG, "v": BIG}]},
        {**ALARM, "sensor_id": "wl-01", "measurements": [{"n": "e", "bs": -BIG, "s": -BIG}]},
    ],
)
def test_a_senml_value_past_a_float_once_its_base_is_added_is_bad_value(body: object) -> None:
    """Each field is finite, their sum is not: a value JSON cannot carry to the API."""
    with pytest.raises(MessageError) as err:
        sensor(body, topic_id="wl-01")
    assert err.value.reason == "bad_value"


def test_a_senml_value_near_the_float_limit_is_kept() -> None:
    pack = sensor([{"n": "level", "bv": BIG, "v": -BIG}, {"n": "e", "bs": 1e307, "s": BIG}])
    assert isinstance(pack, SenMLPack)
    assert [(r.v, r.s) for r in pack.records] == [(0.0, None), (None, 1.1e308)]


def test_threshold_reading() -> None:
    reading = sensor({"sensor_id": "mh-0001", "value": 17, "ts": NOW.timestamp()})
    assert reading == ThresholdReading("mh-0001", 17.0, NOW)
    assert isinstance(reading, ThresholdReading)
    assert sensor(reading.encode()) == reading


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"sensor_id": "mh-0001", "value": "17", "ts": 1}, "bad_value"),
        ({"sensor_id": "mh-0001", "value": None, "ts": 1}, "bad_value"),
        ({"sensor_id": "other", "value": 1, "ts": 1}, "sensor_id_mismatch"),
        ({"sensor_id": "mh-0001", "value": 1, "ts": "soon"}, "bad_ts"),
        ({"sensor_id": "mh-0001", "value": 1, "ts": 1, "x": 2}, "unknown_field"),
    ],
)
def test_bad_threshold_readings(body: dict[str, object], reason: str) -> None:
    with pytest.raises(MessageError) as err:
        sensor(body)
    assert err.value.reason == reason


def test_sensor_size_cap() -> None:
    with pytest.raises(MessageError) as err:
        sensor(b"[" + b" " * 70000 + b"]")
    assert err.value.reason == "too_large"


def test_dead_letter_keeps_the_original_bytes() -> None:
    body = json.loads(dead_letter("bad_magic", "gp/cameras/c/frame", b"\x00\x01junk", NOW))
    assert body == {
        "reason": "bad_magic",
        "topic": "gp/cameras/c/frame",
        "payload_b64": base64.b64encode(b"\x00\x01junk").decode(),
        "received_at": "2026-05-01T08:00:00Z",
    }


@pytest.mark.parametrize(
    ("topic", "kind", "ident"),
    [
        (frame_topic("gp", "c1"), "frame", "c1"),
        (snapshot_request_topic("gp", "c1"), "snapshot_request", "c1"),
        (snapshot_topic("gp", "c1"), "snapshot", "c1"),
        (camera_status_topic("gp", "c1"), "camera_status", "c1"),
        (component_status_topic("gp", "ingest-1"), "component_status", "ingest-1"),
        (sensor_alarm_topic("gp", "mh.1"), "sensor_alarm", "mh.1"),
        (sensor_status_topic("gp", "mh_1"), "sensor_status", "mh_1"),
        (deadletter_topic("gp", "bridge"), "deadletter", "bridge"),
        (patrol_boost_topic("gp", "c1"), "patrol_boost", "c1"),
    ],
)
def test_topics_round_trip(topic: str, kind: str, ident: str) -> None:
    match = parse_topic("gp", topic)
    assert match is not None
    assert (match.kind, match.id) == (kind, ident)


def test_topic_scheme_details() -> None:
    assert frame_topic("gridpatrol", "cam-dn-001") == "gridpatrol/cameras/cam-dn-001/frame"
    assert wildcard("gp", "sensor_alarm") == "gp/sensors/+/alarm"
    assert parse_topic("gp", "gp/cameras/c1/unknown") is None
    assert parse_topic("gp", "other/cameras/c1/frame") is None
    assert parse_topic("gp", "gp/cameras/bad id/frame") is None
    with pytest.raises(ValueError, match="does not match"):
        frame_topic("gp", "a/b")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_either_decode_or_raise_message_error(payload: bytes) -> None:
    for data in (payload, b"GPF1" + payload, b"\xff\xd8" + payload):
        with contextlib.suppress(MessageError):
            decode_frame(data, topic_camera_id="cam-1", received_at=NOW)
        with contextlib.suppress(MessageError):
            decode_sensor_payload(data, topic_sensor_id="s-1", received_at=NOW)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=120, deadline=None)
@given(JSON, st.dictionaries(st.sampled_from(sorted(ALARM)), JSON, max_size=4))
def test_any_json_either_decodes_or_raises_message_error(
    value: object, patch: dict[str, object]
) -> None:
    for body in (value, {**ALARM, **patch}, [value], [{"n": "x", **patch}]):
        with contextlib.suppress(MessageError):
            sensor(json.dumps(body).encode())


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sensor_id": "s1", "value": 1' + b"0" * 400 + b', "ts": 1}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"schema": "gridalarm/1", "event_id": "e", "sensor_id": "s1", "alarm_type": "smoke",'
        b' "transition": "raise", "severity": "MAJOR", "ts": 1e400, "measurements": []}',
    ],
)
def test_huge_numbers_and_deep_nesting_are_message_errors(payload: bytes) -> None:
    with pytest.raises(MessageError):
        decode_sensor_payload(payload, topic_sensor_id="s1", received_at=datetime.now(UTC))


def test_an_id_with_a_final_newline_is_no_id() -> None:
    assert parse_topic("gp", "gp/sensors/mh-0001\n/alarm") is None
    assert parse_topic("gp", "gp/sensors/mh-0001/alarm") == TopicMatch("sensor_alarm", "mh-0001")
    with pytest.raises(ValueError, match="does not match"):
        frame_topic("gp", "c1\n")
    with pytest.raises(MessageError) as info:
        decode_frame(envelope({**GOOD, "camera_id": "cam-1\n"}), topic_camera_id="cam-1",
                     received_at=NOW)  # fmt: skip
    assert info.value.reason == "bad_camera_id"


# A 5000-digit integer: json.loads raises a plain ValueError (Python's 4300-digit limit on
# converting text to int), not a JSONDecodeError.
LONG_INT = b"7" * 5000


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"sensor_id": "s1", "value": ' + LONG_INT + b', "ts": 1}', "bad_value"),
        (b'[{"n": "level", "v": ' + LONG_INT + b"}]", "bad_value"),
        # Within the 64 KiB cap yet nested deeper than json.loads recurses.
        (b"[" * 5000, "bad_json"),
    ],
)
def test_a_number_of_too_many_digits_is_bad_value(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_sensor_payload(payload, topic_sensor_id="s1", received_at=NOW)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b'{"seq": ' + LONG_INT + b"}", "bad_value"),
        (b"[" * 5000, "bad_header_json"),
        # Valid JSON, but an epoch of 400 digits is too large for a float.
        (json.dumps({**GOOD, "ts": 10**400}).encode(), "bad_ts"),
    ],
)
def test_frame_headers_json_cannot_read_are_message_errors(header: bytes, reason: str) -> None:
    payload = b"GPF1" + len(header).to_bytes(4, "big") + header + jpeg()
    with pytest.raises(MessageError) as info:
        decode_frame(payload, topic_camera_id="cam-1", received_at=NOW)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "request_id",
    ["\ud800abc", "abc\udfff", "a\nb", "\u0000", "a\u007f", "\u009f", "", "r" * 129, 7],
)
def test_a_snapshot_request_id_a_reply_could_not_carry_is_bad_request_id(
    request_id: object,
) -> None:
    """A lone surrogate passed, and the reply frame carrying it was refused by every consumer
    (bad_request_id) while the requester waited in vain."""
    with pytest.raises(MessageError) as info:
        parse_request(json.dumps({"request_id": request_id}).encode())
    assert info.value.reason == "bad_request_id"


@pytest.mark.parametrize("request_id", ["r1", "r" * 128, "请求-1", "\U0001f4f7 cam", "a b"])
def test_a_snapshot_request_id_taken_comes_back_in_a_reply_the_requester_reads(
    request_id: str,
) -> None:
    taken = parse_request(json.dumps({"request_id": request_id}).encode())
    frame = Frame(FrameHeader(NOW, 1, "cam-1", 64, 48), jpeg())
    reply = decode_frame(encode_reply(frame, taken), topic_camera_id="cam-1", received_at=NOW)
    assert reply.header.request_id == request_id


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 5000, "bad_json"),
        (b'{"request_id": ' + LONG_INT + b"}", "bad_value"),
        (b'{"request_id": "r1", "pad": "' + b"x" * 20000 + b'"}', "too_large"),
        (b"\xff", "bad_json"),
    ],
)
def test_a_snapshot_request_json_cannot_read_is_a_message_error(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(MessageError) as info:
        parse_request(payload)
    assert info.value.reason == reason


def test_a_base_name_of_a_part_of_the_sensor_is_its_own() -> None:
    # A base name that is the sensor's id and a part of it (RFC 8428 names are free below it).
    body = [{"bn": "wl-01.", "n": "battery", "v": 3.1}, {"bn": "wl-01.gps.", "n": "lat", "v": 4}]
    pack = sensor(body, topic_id="wl-01")
    assert isinstance(pack, SenMLPack)
    assert [r.n for r in pack.records] == ["wl-01.battery", "wl-01.gps.lat"]
    with pytest.raises(MessageError) as err:
        sensor([*body, {"bn": "wl-01x.", "n": "lat", "v": 4}], topic_id="wl-01")
    assert err.value.reason == "sensor_id_mismatch"


def alarm_with(field: str, value: str) -> bytes:
    """ALARM, its ``field`` written as the JSON ``value`` (NaN, Infinity: no json.dumps)."""
    raw = json.dumps({**ALARM, "measurements": [], field: "@"}).encode()
    return raw.replace(b'"@"', value.encode())


def header_with(field: str, value: str) -> bytes:
    raw = json.dumps({**GOOD, field: "@"}).encode().replace(b'"@"', value.encode())
    return b"GPF1" + len(raw).to_bytes(4, "big") + raw + jpeg()


NAN_INF = [("NaN", "not a number (NaN)"), ("Infinity", "not finite"), ("-Infinity", "not finite")]


@pytest.mark.parametrize(("literal", "why"), NAN_INF)
@pytest.mark.parametrize(
    ("template", "reason", "detail"),
    [
        (b'[{"n": "level", "v": @}]', "bad_value", "record 0: v is "),
        (b'[{"n": "level", "s": @}]', "bad_value", "record 0: s is "),
        (b'[{"n": "level", "bv": @, "v": 1}]', "bad_value", "record 0: bv is "),
        (b'[{"n": "level", "bs": @, "s": 1}]', "bad_value", "record 0: bs is "),
        (b'[{"n": "level", "v": 1, "t": @}]', "bad_value", "record 0: t is "),
        (b'[{"n": "level", "v": 1, "bt": @}]', "bad_value", "record 0: bt is "),
        (b'[{"n": "level", "v": 1, "ut": @}]', "bad_value", "record 0: ut is "),
        (b'[{"n": "level", "v": 1}, {"n": "level", "v": @}]', "bad_value", "record 1: v is "),
        (b'{"sensor_id": "mh-0001", "value": @, "ts": 1}', "bad_value", "value is "),
        (b'{"sensor_id": "mh-0001", "value": 1, "ts": @}', "bad_ts", "ts is "),
        (alarm_with("ts", "@"), "bad_ts", "ts is "),
        (alarm_with("seq", "@"), "bad_seq", "seq is "),
        (alarm_with("event_id", "@"), "bad_event_id", "event_id is "),
        (alarm_with("measurements", '[{"n": "tilt", "v": @}]'), "bad_value", "record 0: v is "),
        (alarm_with("location", '{"lat": @, "lon": 121.4}'), "bad_location", "a value is "),
        (alarm_with("location", '{"at": [31.2, @]}'), "bad_location", "a value is "),
    ],
)
def test_a_nan_or_infinite_sensor_number_is_refused_saying_so(
    template: bytes, reason: str, detail: str, literal: str, why: str
) -> None:
    """Python's json reads NaN and Infinity; the error said "too large for a float" (of a NaN
    too) or showed a bare ``nan``, and a NaN in a location passed."""
    with pytest.raises(MessageError) as err:
        sensor(template.replace(b"@", literal.encode()))
    assert (err.value.reason, err.value.detail) == (reason, detail + why)


@pytest.mark.parametrize(("literal", "why"), NAN_INF)
@pytest.mark.parametrize("field", ["ts", "seq", "width", "height"])
def test_a_nan_or_infinite_frame_header_number_is_refused_saying_so(
    field: str, literal: str, why: str
) -> None:
    with pytest.raises(MessageError) as err:
        decode_frame(header_with(field, literal), topic_camera_id="cam-1", received_at=NOW)
    assert (err.value.reason, err.value.detail) == (f"bad_{field}", f"{field} is {why}")


def test_a_number_past_the_float_range_is_said_not_finite() -> None:
    with pytest.raises(MessageError) as err:
        sensor(b'[{"n": "level", "v": 1e999}]')
    assert (err.value.reason, err.value.detail) == ("bad_value", "record 0: v is not finite")


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        ({"sensor_id": "mh-0001", "value": 17}, "bad_ts", "the reading has no ts"),
        ({"value": 17, "ts": 1}, "bad_sensor_id", "the reading has no sensor_id"),
        ({"value": 17}, "bad_sensor_id", "the reading has no sensor_id"),
        ({"value": 17, "t": 1}, "unknown_field", "t"),
    ],
)
def test_a_threshold_reading_without_a_field_is_refused_naming_it(
    body: dict[str, object], reason: str, detail: str
) -> None:
    """It was unknown_payload 'neither gridalarm/1, SenML nor a threshold reading'."""
    with pytest.raises(MessageError) as err:
        sensor(body)
    assert (err.value.reason, err.value.detail) == (reason, detail)


def test_an_object_without_a_value_nor_a_schema_is_still_an_unknown_payload() -> None:
    with pytest.raises(MessageError) as err:
        sensor({"sensor_id": "mh-0001", "ts": 1})
    assert err.value.reason == "unknown_payload"


def again(body: object, member: str, repeat: str) -> bytes:
    """``body`` as JSON with ``repeat`` written after its ``member`` (json.dumps repeats none)."""
    raw = json.dumps(body).encode()
    assert member.encode() in raw
    return raw.replace(member.encode(), f"{member}, {repeat}".encode(), 1)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b'{"sensor_id": "mh-0001", "value": 1, "value": 40, "ts": 1}', "repeated key 'value'"),
        (b'{"sensor_id": "mh-0001", "value": 1, "ts": 1, "ts": 1}', "repeated key 'ts'"),
        (b'[{"bn": "mh-0001/", "n": "tilt", "v": 1, "v": 40}]', "repeated key 'v'"),
        (b'[{"n": "tilt", "v": 1}, {"n": "tilt", "n": "x", "v": 2}]', "repeated key 'n'"),
        (
            again(ALARM, '"transition": "raise"', '"transition": "clear"'),
            "repeated key 'transition'",
        ),
        (
            again({**ALARM, "location": {"lat": 31.2}}, '"lat": 31.2', '"lat": 0'),
            "repeated key 'lat'",
        ),
    ],
)
def test_a_sensor_payload_with_a_repeated_key_is_dead_lettered_naming_it(
    payload: bytes, detail: str
) -> None:
    """json.loads kept the last value of a repeated key: a reading of 1 or of 40, a raise or
    a clear, as the reader picks. The bridge now dead-letters it as bad_json."""
    registry = {s.id: s for s in parse_site(BRIDGE_SITE).sensors}
    rejected = adapt(payload, sensor_id="mh-0001", registry=registry, received_at=NOW)
    assert isinstance(rejected, Rejected)
    assert (rejected.reason, rejected.detail) == ("bad_json", detail)


def test_a_frame_header_or_snapshot_request_with_a_repeated_key_is_refused_naming_it() -> None:
    raw = again(GOOD, '"camera_id": "cam-1"', '"camera_id": "cam-2"')
    payload = b"GPF1" + len(raw).to_bytes(4, "big") + raw + jpeg()
    with pytest.raises(MessageError) as err:
        decode_frame(payload, topic_camera_id="cam-1", received_at=NOW)
    assert (err.value.reason, err.value.detail) == ("bad_header_json", "repeated key 'camera_id'")
    with pytest.raises(MessageError) as err:
        parse_request(b'{"request_id": "r1", "request_id": "r2"}')
    assert (err.value.reason, err.value.detail) == ("bad_json", "repeated key 'request_id'")
