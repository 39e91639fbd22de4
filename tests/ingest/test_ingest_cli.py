"""``gridpatrol ingest`` and ``gridpatrol watch-frames`` as subprocesses on a real broker."""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gridpatrol.ingest.cli import _component_id
from gridpatrol.ingest.messages import (
    DEAD_LETTER_PAYLOAD_BYTES,
    MAX_FRAME_BYTES,
    FrameHeader,
    decode_frame,
    encode_frame,
)
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings
from gridpatrol.ingest.snapshot import request_snapshot
from gridpatrol.ingest.topics import valid_id

SHARED = "mqtt://127.0.0.1:1883"
SAMPLE_SITE = Path(__file__).resolve().parents[2] / "samples" / "site.yaml"
CONTINUOUS = """\
  - id: c1
    source: $FOOTAGE
    fps: 2
    loop: {loop}
    location: {{address: here}}
"""
PATROL = """\
  - id: p1
    source: $FOOTAGE
    interval_s: 3600
    resize: [240, 136]
    location: {address: there}
"""


def statuses(seen: list[Message], topic: str) -> list[bytes]:
    return [m.payload for m in seen if m.topic == topic]


def header_envelope(header: bytes, image: bytes) -> bytes:
    """A frame envelope around header bytes as given, JSON or not."""
    return b"GPF1" + len(header).to_bytes(4, "big") + header + image


def test_file_source_publishes_every_sampled_frame_in_order(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    site = site_file(CONTINUOUS.format(loop="false"))
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/c1/#", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-a"])
    code, _, err = proc.wait(60)
    assert code == 0, err
    status_topic = f"{mqtt_prefix}/cameras/c1/status"
    seen = watcher.collect(lambda s: statuses(s, status_topic)[-1:] == [b"offline"])
    assert statuses(seen, status_topic) == [b"online", b"offline"]
    frames = [
        decode_frame(m.payload, topic_camera_id="c1", received_at=m.received_at)
        for m in seen
        if m.topic.endswith("/frame")
    ]
    # 41 frames at 12 fps (3.42 s) sampled at 2 fps: file times 0, 0.5, ..., 3.0.
    assert [f.header.seq for f in frames] == list(range(7))
    assert {(f.header.width, f.header.height) for f in frames} == {(480, 270)}
    steps = [(b.header.ts - a.header.ts).total_seconds() for a, b in itertools.pairwise(frames)]
    assert steps == pytest.approx([0.5] * 6, abs=1e-3)
    image = cv2.imdecode(np.frombuffer(frames[0].image, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (270, 480, 3)
    assert "camera c1: 7 frames published" in err


def test_snapshots_and_clean_shutdown_on_sigterm(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    site = site_file(CONTINUOUS.format(loop="true") + PATROL)
    component = f"{mqtt_prefix}/components/ing-b/status"
    watcher = watch(SHARED, f"{mqtt_prefix}/+/+/status", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-b"])
    watcher.collect(lambda s: b"online" in statuses(s, component), timeout=30)
    conn = MqttConnection("asker", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert conn.start(10)
    try:
        live = request_snapshot(conn, "c1", timeout=10)
        patrol = request_snapshot(conn, "p1", timeout=10)
        nobody = request_snapshot(conn, "c-unknown", timeout=1)
    finally:
        conn.stop()
    assert live is not None
    assert live.header.request_id is not None
    assert (live.header.camera_id, live.header.width, live.header.height) == ("c1", 480, 270)
    assert patrol is not None
    assert (patrol.header.camera_id, patrol.header.width, patrol.header.height) == ("p1", 240, 136)
    assert nobody is None
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(30)
    assert code == 0, err
    for topic in (
        component,
        f"{mqtt_prefix}/cameras/c1/status",
        f"{mqtt_prefix}/cameras/p1/status",
    ):
        seen = watcher.collect(lambda s, t=topic: statuses(s, t)[-1:] == [b"offline"])
        assert statuses(seen, topic)[-1] == b"offline", topic
    assert "answered snapshot request" in err


def test_a_camera_that_publishes_itself_written_mqtt_in_capitals_is_left_alone(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    # Read as a file path, ' MQTT ' would be "cannot open" and a retained offline for a camera
    # whose frames come from the camera itself.
    own = "  - {id: m1, source: ' MQTT ', fps: 2, location: {address: there}}\n"
    site = site_file(CONTINUOUS.format(loop="true") + own)
    component = f"{mqtt_prefix}/components/ing-m/status"
    watcher = watch(SHARED, f"{mqtt_prefix}/+/+/status", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-m"])
    c1 = f"{mqtt_prefix}/cameras/c1/status"
    watcher.collect(lambda s: b"online" in statuses(s, c1), timeout=30)
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(30)
    assert code == 0, err
    # The component's offline is the last thing the process publishes.
    seen = watcher.collect(lambda s: statuses(s, component)[-1:] == [b"offline"])
    assert statuses(seen, component)[-1] == b"offline"
    assert statuses(seen, c1) == [b"online", b"offline"]
    assert statuses(seen, f"{mqtt_prefix}/cameras/m1/status") == []
    assert "cannot open" not in err


def watching(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    args: list[str],
    component: str,
) -> tuple[Any, Any]:
    """``watch-frames`` on camera c1 (whose frames come over MQTT) once it is online, and a
    watcher of everything under the prefix."""
    site = site_file("  - {id: c1, source: mqtt, location: {address: here}}\n")
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    command = ["watch-frames", "--config", str(site), *args, "--component-id", component]
    proc = gridpatrol_proc(command)
    status = f"{mqtt_prefix}/components/{component}/status"
    watcher.collect(lambda s: b"online" in statuses(s, status), timeout=30)
    return proc, watcher


def small_jpeg() -> bytes:
    ok, jpeg = cv2.imencode(".jpg", np.zeros((90, 160, 3), np.uint8))
    assert ok
    return bytes(jpeg.tobytes())


def fed(
    proc: Any, watcher: Any, mqtt_prefix: str, bad: list[tuple[str, bytes]], component: str
) -> tuple[str, list[dict[str, Any]]]:
    """Publish each (topic, payload) of ``bad``, then a valid frame of c1 (seq 5) that ends
    ``watch-frames --count 1``; its stderr and its dead letters (one per bad message, up to
    10 per camera topic)."""
    good = encode_frame(FrameHeader(datetime.now(UTC), 5, "c1", 160, 90), small_jpeg())
    # The shared broker takes packets past the 16 MiB a connection sends by default.
    settings = replace(MqttSettings.from_url(SHARED), max_packet_size=64 * 2**20)
    conn = MqttConnection(f"feeder-{component}", settings, prefix=mqtt_prefix)
    assert conn.start(10)
    try:
        for topic, payload in [*bad, (f"{mqtt_prefix}/cameras/c1/frame", good)]:
            assert conn.publish_wait(topic, payload, qos=1, timeout=60)
    finally:
        conn.stop()
    code, out, err = proc.wait(120)
    assert code == 0, err
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [5]
    # Its "offline" leaves after its letters, on the same connection at QoS 1.
    status = f"{mqtt_prefix}/components/{component}/status"
    seen = watcher.collect(lambda s: b"offline" in statuses(s, status), timeout=60)
    return err, [json.loads(p) for p in statuses(seen, f"{mqtt_prefix}/deadletter/{component}")]


def test_malformed_frames_are_dead_lettered_and_the_consumer_goes_on(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    args = ["--count", "2", "--timeout", "60"]
    proc, watcher = watching(site_file, watch, gridpatrol_proc, mqtt_prefix, args, "wf")
    image = small_jpeg()
    good = encode_frame(FrameHeader(datetime.now(UTC), 5, "c1", 160, 90), image)
    other = encode_frame(FrameHeader(datetime.now(UTC), 6, "c2", 160, 90), image)
    # Headers within the 16 KiB cap that json.loads refuses with a RecursionError (nesting) and
    # a plain ValueError (an integer of more than 4300 digits).
    deep = header_envelope(b"[" * 5000, image)
    long_int = header_envelope(b'{"seq": ' + b"7" * 5000 + b"}", image)
    # A frame time in RFC 3339: the SPEC's frame header has epoch seconds.
    text_ts = {"ts": "2026-12-01T12:00:00", "seq": 1, "camera_id": "c1", "width": 160}
    text_ts_frame = header_envelope(json.dumps({**text_ts, "height": 90}).encode(), image)
    bad = [b"not a frame at all", other, deep, long_int, text_ts_frame]
    topic = f"{mqtt_prefix}/cameras/c1/frame"
    conn = MqttConnection("feeder", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert conn.start(10)
    for payload in (bad[0], good, *bad[1:], image):
        assert conn.publish_wait(topic, payload, qos=1)
    conn.stop()
    code, out, err = proc.wait(60)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["camera_id"], x["seq"], x["width"], x["height"]) for x in lines] == [
        ("c1", 5, 160, 90),
        ("c1", -1, 160, 90),
    ]
    dead_topic = f"{mqtt_prefix}/deadletter/wf"
    seen = watcher.collect(lambda s: len(statuses(s, dead_topic)) >= len(bad))
    letters = [json.loads(p) for p in statuses(seen, dead_topic)]
    # The decoder's detail tells the causes of one reason apart (bad_ts for a time in RFC 3339
    # and for one out of range).
    assert [(x["reason"], x["error"]) for x in letters] == [
        ("bad_magic", "starts with b'not '"),
        ("camera_id_mismatch", "'c2' on 'c1'"),
        ("bad_header_json", "nested too deeply"),
        ("bad_value", "a number of too many digits"),
        ("bad_ts", "frame ts must be epoch seconds"),
    ]
    assert [base64.b64decode(x["payload_b64"]) for x in letters] == bad
    assert {x["topic"] for x in letters} == {topic}


def test_a_frame_on_a_topic_whose_id_no_camera_can_have_is_dead_lettered(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    args = ["--count", "1", "--timeout", "60"]
    proc, watcher = watching(site_file, watch, gridpatrol_proc, mqtt_prefix, args, "wf-topic")
    bad_topics = [f"{mqtt_prefix}/cameras/bad id/frame", f"{mqtt_prefix}/cameras//frame"]
    bad = [(topic, b"anything") for topic in bad_topics]
    err, letters = fed(proc, watcher, mqtt_prefix, bad, "wf-topic")
    assert [(x["reason"], x["topic"], x.get("error")) for x in letters] == [
        ("bad_topic", topic, None) for topic in bad_topics
    ]
    assert [base64.b64decode(x["payload_b64"]) for x in letters] == [b"anything"] * 2
    assert "rejected {'bad_topic': 2}" in err


def test_a_camera_sending_garbage_gets_ten_letters_and_the_closing_line_counts_them_all(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    """12 bad frames of c1 within a minute: 10 letters, and the closing line counts the 12 and
    the 2 that got none."""
    args = ["--count", "1", "--timeout", "60"]
    proc, watcher = watching(site_file, watch, gridpatrol_proc, mqtt_prefix, args, "wf-flood")
    topic = f"{mqtt_prefix}/cameras/c1/frame"
    bad = [(topic, b"garbage %d" % n) for n in range(12)]
    err, letters = fed(proc, watcher, mqtt_prefix, bad, "wf-flood")
    assert [base64.b64decode(x["payload_b64"]) for x in letters] == [
        b"garbage %d" % n for n in range(10)
    ]
    assert (
        "rejected {'bad_magic': 12}, of them not dead-lettered (over the limit) {'bad_magic': 2}"
        in err
    )


def test_requests_and_boosts_for_an_id_no_camera_can_have_are_dead_lettered(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    site = site_file(CONTINUOUS.format(loop="true"))
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-t"])
    online = f"{mqtt_prefix}/cameras/c1/status"
    watcher.collect(lambda s: b"online" in statuses(s, online), timeout=30)
    boost = f"{mqtt_prefix}/cameras/bad id/patrol/boost"
    bad_request = f"{mqtt_prefix}/cameras/bad id/snapshot/request"
    conn = MqttConnection("asker-t", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert conn.start(10)
    try:
        assert conn.publish_wait(boost, b"{}", qos=1)
        assert conn.publish_wait(bad_request, b'{"request_id": "r0"}', qos=1)
        # A valid id that another ingest process serves is none of this one's business.
        other = f"{mqtt_prefix}/cameras/c9/snapshot/request"
        assert conn.publish_wait(other, b'{"request_id": "r9"}', qos=1)
        request = f"{mqtt_prefix}/cameras/c1/snapshot/request"
        assert conn.publish_wait(request, b'{"request_id": "r1"}', qos=1)
    finally:
        conn.stop()
    dead_topic = f"{mqtt_prefix}/deadletter/ing-t"
    reply_topic = f"{mqtt_prefix}/cameras/c1/snapshot"
    seen = watcher.collect(
        lambda s: len(statuses(s, dead_topic)) >= 2 and bool(statuses(s, reply_topic))
    )
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(30)
    assert code == 0, err
    letters = [json.loads(p) for p in statuses(seen, dead_topic)]
    assert sorted((x["reason"], x["topic"]) for x in letters) == [
        ("bad_topic", boost),
        ("bad_topic", bad_request),
    ]
    replies = [
        decode_frame(p, topic_camera_id="c1", received_at=datetime.now(UTC))
        for p in statuses(seen, reply_topic)
    ]
    assert [r.header.request_id for r in replies] == ["r1"]
    assert "; 2 malformed {'bad_topic': 2}, of them not dead-lettered (over the limit) {}" in err


def test_a_large_payload_is_dead_lettered_cut_with_its_size(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    """Whole in base64, a payload of some MB makes a dead letter larger than a broker takes
    (16 MiB in the sample configuration), one of 201 MB larger than MQTT allows."""
    args = ["--count", "1", "--timeout", "120"]
    proc, watcher = watching(site_file, watch, gridpatrol_proc, mqtt_prefix, args, "wf-large")
    topic = f"{mqtt_prefix}/cameras/c1/frame"
    too_large = b"GPF1" + bytes(range(256)) * (MAX_FRAME_BYTES // 256)  # 4 bytes over
    not_a_frame = b"x" * (1 << 20)
    _, letters = fed(
        proc, watcher, mqtt_prefix, [(topic, too_large), (topic, not_a_frame)], "wf-large"
    )
    assert [
        (x["reason"], x["topic"], x["payload_bytes"], x["payload_truncated"]) for x in letters
    ] == [
        ("too_large", topic, MAX_FRAME_BYTES + 4, True),
        ("bad_magic", topic, 1 << 20, True),
    ]
    assert [base64.b64decode(x["payload_b64"]) for x in letters] == [
        too_large[:DEAD_LETTER_PAYLOAD_BYTES],
        not_a_frame[:DEAD_LETTER_PAYLOAD_BYTES],
    ]


@pytest.mark.parametrize(
    ("cameras", "extra", "code", "message"),
    [
        ("  - {id: c1, source: x.mp4, fps: -1, location: {address: a}}\n", [], 2,
         "site.yaml:5: cameras[0].fps: Input should be greater than 0"),
        ("  - {id: c1, source: x.mp4, fps: 1, location: {address: a}}\n", ["--cameras", "c1,c9"], 2,
         "unknown camera id(s) ['c9']"),
    ],
)  # fmt: skip
def test_bad_configuration_stops_before_connecting(
    site_file: Callable[..., Path],
    gridpatrol_proc: Any,
    cameras: str,
    extra: list[str],
    code: int,
    message: str,
) -> None:
    site = site_file(cameras)
    proc = gridpatrol_proc(["ingest", "--config", str(site), *extra], "mqtt://127.0.0.1:1")
    returncode, _, err = proc.wait(30)
    assert returncode == code
    assert message in err


SECONDS = "must be a positive number of seconds, got"
LIMIT = "must be 0 (none) or a positive number of seconds, got"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        # An interval of 0 (or NaN) made the progress loop spin a core; a negative limit ended
        # watch-frames at once with nothing watched.
        (["ingest", "--progress-s", "0"], f"argument --progress-s: {SECONDS} '0'"),
        (["ingest", "--progress-s", "-5"], f"argument --progress-s: {SECONDS} '-5'"),
        (["ingest", "--progress-s", "nan"], f"argument --progress-s: {SECONDS} 'nan'"),
        # 1e-9 wrote thousands of lines a second.
        (["ingest", "--progress-s", "1e-9"],
         "argument --progress-s: must be at least 1 second, got '1e-9'"),
        (["ingest", "--progress-s", "0.5"],
         "argument --progress-s: must be at least 1 second, got '0.5'"),
        (["watch-frames", "--timeout", "-1"], f"argument --timeout: {LIMIT} '-1'"),
        (["watch-frames", "--timeout", "nan"], f"argument --timeout: {LIMIT} 'nan'"),
        (["watch-frames", "--count", "-1"],
         "argument --count: must be 0 (none) or a positive whole number, got '-1'"),
    ],
)  # fmt: skip
def test_an_interval_or_limit_out_of_range_exits_2_before_connecting(
    site_file: Callable[..., Path], gridpatrol_proc: Any, command: list[str], says: str
) -> None:
    site = site_file("  - {id: c1, source: x.mp4, fps: 1, location: {address: a}}\n")
    proc = gridpatrol_proc([*command, "--config", str(site)], SHARED)
    returncode, out, err = proc.wait(30)
    assert (returncode, out) == (2, "")
    assert err.splitlines()[-1] == f"gridpatrol {command[0]}: error: {says}"


@pytest.mark.parametrize(
    ("command", "url", "says"),
    [
        (["ingest"], "mqtt://gp:s3cret@127.0.0.1:abc",
         "ingest: cannot start: broker URL 'mqtt://gp:***@127.0.0.1:abc': Port could not be cast "
         "to integer value as 'abc'"),
        (["ingest"], "http://127.0.0.1:1883",
         "ingest: cannot start: broker URL must be mqtt:// or mqtts://, got "
         "'http://127.0.0.1:1883'"),
        # An empty host (a variable of the URL that came out empty) or port 0 was taken for
        # 127.0.0.1 or port 1883: ingest published to a broker nobody configured.
        (["ingest"], "mqtt://gp:s3cret@:18839",
         "ingest: cannot start: broker URL 'mqtt://gp:***@:18839' names no host: "
         "mqtt://[user:password@]host[:port]"),
        (["watch-frames"], "mqtt://:18839",
         "watch-frames: cannot start: broker URL 'mqtt://:18839' names no host: "
         "mqtt://[user:password@]host[:port]"),
        (["ingest"], "mqtts://127.0.0.1:0",
         "ingest: cannot start: broker URL 'mqtts://127.0.0.1:0': port 0 is no broker's port"),
        (["watch-frames"], "mqtts://gp:s3cret@127.0.0.1:0",
         "watch-frames: cannot start: broker URL 'mqtts://gp:***@127.0.0.1:0': port 0 is no "
         "broker's port"),
        (["ingest", "--component-id", "ingest 1"], SHARED,
         "ingest: cannot start: component id 'ingest 1' is not an MQTT topic level: 1-64 of the "
         "letters A-Z a-z, the digits 0-9 and _ . -"),
        # A final newline is no topic level either ("$" of Python's re.match lets it through).
        (["ingest", "--component-id", "ing\n"], SHARED,
         "ingest: cannot start: component id 'ing\\n' is not an MQTT topic level: 1-64 of the "
         "letters A-Z a-z, the digits 0-9 and _ . -"),
        (["watch-frames"], "http://127.0.0.1:x",
         "watch-frames: cannot start: broker URL 'http://127.0.0.1:x': Port could not be cast to "
         "integer value as 'x'"),
        (["watch-frames", "--component-id", "watch/1"], SHARED,
         "watch-frames: cannot start: component id 'watch/1' is not an MQTT topic level: 1-64 "
         "of the letters A-Z a-z, the digits 0-9 and _ . -"),
    ],
)  # fmt: skip
def test_a_broker_url_or_component_id_that_cannot_work_exits_2_with_one_line(
    site_file: Callable[..., Path], gridpatrol_proc: Any, command: list[str], url: str, says: str
) -> None:
    site = site_file("  - {id: c1, source: x.mp4, fps: 1, location: {address: a}}\n")
    proc = gridpatrol_proc([*command, "--config", str(site)], url)
    returncode, _, err = proc.wait(30)
    assert returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.rstrip().endswith(says)
    assert "s3cret" not in err


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # A URL parser ends the user info at the first / ? #: it took "gp" for the host and
        # "pa" for the port, and the message quoted the URL with its password whole.
        (f"mqtt://gp:pa{char}ss99@127.0.0.1:18839",
         "ingest: cannot start: broker URL 'mqtt://gp:***@127.0.0.1:18839': a password must "
         "percent-encode # ? / @ (%23 %3F %2F %40)")
        for char in "/#?"
    ] + [
        # Taken for host gp, port 12 (and a path), and started against it.
        ("mqtt://gp:12/ss99@127.0.0.1:18839",
         "ingest: cannot start: broker URL 'mqtt://gp:***@127.0.0.1:18839': a password must "
         "percent-encode # ? / @ (%23 %3F %2F %40)"),
        ("mqtt://127.0.0.1:18839/gp",
         "ingest: cannot start: broker URL must be mqtt://[user:password@]host[:port] or "
         "mqtts://… with no path, query or fragment, got 'mqtt://127.0.0.1:18839/gp'"),
    ] + [
        # No "//": refused for its path, and shown without anything before its last '@'.
        (url,
         "ingest: cannot start: broker URL must be mqtt://[user:password@]host[:port] or "
         f"mqtts://… with no path, query or fragment, got '{shown}'")
        for url, shown in [
            ("mqtt:/gp:ss99@127.0.0.1:18839", "mqtt:/***@127.0.0.1:18839"),
            ("mqtt:gp:ss99@127.0.0.1:18839", "mqtt:***@127.0.0.1:18839"),
        ]
    ],
)  # fmt: skip
def test_a_broker_password_with_an_unencoded_slash_hash_or_question_mark_is_refused_masked(
    site_file: Callable[..., Path], gridpatrol_proc: Any, url: str, says: str
) -> None:
    site = site_file("  - {id: c1, source: x.mp4, fps: 1, location: {address: a}}\n")
    proc = gridpatrol_proc(["ingest", "--config", str(site)], url)
    returncode, out, err = proc.wait(30)
    assert (returncode, out) == (2, ""), err
    (line,) = err.splitlines()
    assert line.endswith(f" ERROR gridpatrol.ingest.cli: {says}")
    assert "ss99" not in err


def test_a_malformed_snapshot_request_is_dead_lettered_and_the_next_one_answered(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    # Nested deeper than json.loads recurses: a RecursionError, not a JSONDecodeError.
    deep = b"[" * 5000
    site = site_file(CONTINUOUS.format(loop="true"))
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-j"])
    online = f"{mqtt_prefix}/cameras/c1/status"
    watcher.collect(lambda s: b"online" in statuses(s, online), timeout=30)
    request = f"{mqtt_prefix}/cameras/c1/snapshot/request"
    conn = MqttConnection("asker-j", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert conn.start(10)
    try:
        assert conn.publish_wait(request, deep, qos=1)
        assert conn.publish_wait(request, b'{"request_id": "r1"}', qos=1)
    finally:
        conn.stop()
    dead_topic = f"{mqtt_prefix}/deadletter/ing-j"
    reply_topic = f"{mqtt_prefix}/cameras/c1/snapshot"
    seen = watcher.collect(
        lambda s: bool(statuses(s, dead_topic)) and bool(statuses(s, reply_topic))
    )
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(30)
    assert code == 0, err
    letters = [json.loads(p) for p in statuses(seen, dead_topic)]
    assert [(x["reason"], x["topic"], x["error"]) for x in letters] == [
        ("bad_json", request, "nested too deeply")
    ]
    assert base64.b64decode(letters[0]["payload_b64"]) == deep
    replies = [
        decode_frame(p, topic_camera_id="c1", received_at=datetime.now(UTC))
        for p in statuses(seen, reply_topic)
    ]
    assert [r.header.request_id for r in replies] == ["r1"]
    assert "Traceback" not in err


@pytest.fixture
def wrong_password_url(mosquitto: Any, tmp_path: Path) -> str:
    """A URL with a wrong password for the test's broker, restarted to know only gp / s3cret."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gp", "s3cret"], check=True)
    mosquitto.stop()
    conf = mosquitto.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    mosquitto.conf.write_text(f"{conf}password_file {passwords}\n")
    mosquitto.start()
    return f"mqtt://gp:wrong@127.0.0.1:{mosquitto.port}"


@pytest.mark.parametrize(
    ("command", "logger"),
    [
        (["watch-frames", "--timeout", "60"], "gridpatrol.ingest.cli"),
        # It shares the start-up of ingest and watch-frames, and logs as its own module.
        (["simulate-sensors", "--rate", "1", "--duration", "60"], "gridpatrol.alarm_bridge.cli"),
    ],
)
def test_refused_credentials_exit_2_with_one_line(
    wrong_password_url: str, gridpatrol_proc: Any, command: list[str], logger: str
) -> None:
    proc = gridpatrol_proc([*command, "--config", str(SAMPLE_SITE)], wrong_password_url)
    returncode, _, err = proc.wait(60)
    assert returncode == 2, err
    port = wrong_password_url.rsplit(":", 1)[1]
    # One line says what stops and the broker's reason; the connection adds none.
    (line,) = [line for line in err.splitlines() if " ERROR " in line]
    assert line.endswith(
        f" ERROR {logger}: {command[0]}: cannot start: broker mqtt://gp@127.0.0.1:{port} "
        f"refused the credentials of {command[0]} (Not authorized)"
    )
    assert err.count("refused the credentials") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("command", "summary"),
    [
        (["simulate-sensors", "--rate", "1"],
         r" INFO gridpatrol\.alarm_bridge\.cli: simulate-sensors: 0 messages in [0-9.]+ s"),
        (["ingest"], r" INFO gridpatrol\.ingest\.service: ingest: snapshot requests 0 received.*"),
    ],
    ids=["simulate-sensors", "ingest"],
)  # fmt: skip
def test_a_command_stopped_while_connecting_ends_cleanly(
    gridpatrol_proc: Any, tmp_path: Path, command: list[str], summary: str
) -> None:
    returncode, err = stopped_while_connecting(gridpatrol_proc, tmp_path, command)
    assert returncode == 0, err
    # Its last line is its normal summary, written after the start gave up waiting.
    assert re.fullmatch(r"\S+ \S+" + summary, err.splitlines()[-1]), err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["ingest", "watch-frames"])
def test_a_command_stopped_while_connecting_starts_nothing_after_the_signal(
    gridpatrol_proc: Any, tmp_path: Path, command: str
) -> None:
    """The start waited its whole 10 s for the broker after a SIGTERM, then said it went on
    retrying in the background and, for ingest, started its cameras: nothing of that may
    follow the signal."""
    returncode, err = stopped_while_connecting(gridpatrol_proc, tmp_path, [command])
    assert returncode == 0, err
    said = err.splitlines()
    after = said[next(i for i, line in enumerate(said) if "signal 15" in line) + 1 :]
    # Neither "not reachable yet; retrying in the background" nor, for ingest, "ingest: 4
    # continuous and 0 patrol camera(s) sharing 4 fps" and its cameras' threads.
    assert [line for line in after if "reachable" in line or "sharing" in line] == [], err
    last = after[-1].split(" INFO ")[1]
    if command == "ingest":
        assert last.startswith("gridpatrol.ingest.service: ingest: snapshot requests 0"), err
    else:
        assert last.startswith("gridpatrol.ingest.cli: 0 frames, 0 dropped"), err


def stopped_while_connecting(
    gridpatrol_proc: Any, tmp_path: Path, command: list[str]
) -> tuple[int, str]:
    """Run ``command`` on the sample site against a port nothing listens on (the start waits
    for it), SIGTERM it once it says it is connecting; its status and its log."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"mqtt://127.0.0.1:{port}"
    proc = gridpatrol_proc([*command, "--config", str(SAMPLE_SITE)], url, tmp_path / "err")
    connecting = f"{command[0]}: connecting to {url}"
    lines = proc.wait_for(lambda lines: any(connecting in line for line in lines), 30)
    assert any(connecting in line for line in lines), lines
    proc.signal(signal.SIGTERM)
    returncode, _, err = proc.wait(60)
    return returncode, err


@pytest.mark.parametrize("command", ["ingest", "watch-frames"])
def test_a_site_file_that_cannot_be_read_exits_2_before_connecting(
    gridpatrol_proc: Any, tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "missing.yaml"
    proc = gridpatrol_proc([command, "--config", str(missing)], "mqtt://127.0.0.1:1")
    returncode, out, err = proc.wait(30)
    assert (returncode, out) == (2, "")
    assert err.splitlines() == [
        "invalid site file:",
        f"  {missing}:0: cannot read the site file: No such file or directory",
    ]


@pytest.mark.parametrize(
    ("command", "connections", "component"),
    [
        (["ingest", "--component-id", "ing-late"], 1, "ing-late"),
        (["watch-frames"], 1, "watch-frames"),
        # Two connections: whichever is refused first says it.
        (["bridge"], 2, "alarm_bridge(-media)?"),
        (["simulate-sensors", "--rate", "1"], 1, "simulate-sensors"),
    ],
    ids=["ingest", "watch-frames", "bridge", "simulate-sensors"],
)
def test_credentials_refused_by_a_broker_that_came_up_late_exit_1_with_one_line(
    mosquitto: Any,
    site_file: Callable[..., Path],
    gridpatrol_proc: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    connections: int,
    component: str,
) -> None:
    """Not reachable at the start, the broker then refuses the credentials: never accepted,
    they are not retried, and the command must not run on without a connection. Status 1,
    not 2: the units restart on it, and an authentication backend that came up after the
    broker (a power cut) accepts them then; a typo is refused at that start, status 2."""
    mosquitto.stop()  # the port is known, and closed
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gp", "s3cret"], check=True)
    conf = mosquitto.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    mosquitto.conf.write_text(f"{conf}password_file {passwords}\n")
    monkeypatch.setenv("GRIDPATROL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "t")
    url = f"mqtt://gp:wrong@127.0.0.1:{mosquitto.port}"
    # A camera ingest serves (without one it ends at once); not reachable: it logs warnings.
    # A sensor for simulate-sensors.
    site = site_file(
        "  - {id: c1, source: 'rtsp://127.0.0.1:9/x', fps: 1, location: {address: a}}\n"
        "sensors:\n"
        "  - {id: s1, kind: manhole_cover, location: {address: a}}\n"
    )
    args = [*command, "--config", str(site)]
    proc = gridpatrol_proc(args, url, tmp_path / "err")
    waiting = "not reachable yet; retrying in the background"
    lines = proc.wait_for(lambda lines: sum(waiting in x for x in lines) == connections, 60)
    assert sum(waiting in x for x in lines) == connections, lines
    mosquitto.start()
    returncode, _, err = proc.wait(90)
    assert returncode == 1, err
    (line,) = [x for x in err.splitlines() if " ERROR " in x]
    logger = "alarm_bridge" if command[0] in ("bridge", "simulate-sensors") else "ingest"
    assert re.search(
        rf" ERROR gridpatrol\.{logger}\.cli: {command[0]}: stopping: broker "
        rf"mqtt://gp@127\.0\.0\.1:{mosquitto.port} refused the credentials of {component} "
        r"\(Not authorized\)$",
        line,
    ), line
    assert "Traceback" not in err


def exits_2_saying(gridpatrol_proc: Any, args: list[str], says: str) -> None:
    """``gridpatrol <args>`` exits 2 before connecting, its only output one line on stderr
    that ends with the CLI's error ``says``."""
    proc = gridpatrol_proc(args, "mqtt://127.0.0.1:1")  # never connected to
    returncode, out, err = proc.wait(30)
    assert (returncode, out) == (2, "")
    (line,) = err.splitlines()
    assert line.endswith(f" ERROR gridpatrol.ingest.cli: {says}"), line


def test_watch_frames_with_a_camera_id_not_in_the_site_file_exits_2_in_one_line(
    site_file: Callable[..., Path], gridpatrol_proc: Any
) -> None:
    """An id that is no topic level ended in a ValueError traceback from the topic builder."""
    site = site_file("  - {id: c1, source: mqtt, location: {address: a}}\n")
    args = ["watch-frames", "--config", str(site), "--cameras", "bad id,c1"]
    exits_2_saying(
        gridpatrol_proc, args, "unknown camera id(s) ['bad id']; the site file has ['c1']"
    )


@pytest.mark.parametrize("command", ["ingest", "watch-frames"])
@pytest.mark.parametrize("cameras", ["", ","])
def test_a_camera_list_naming_no_camera_exits_2_in_one_line(
    site_file: Callable[..., Path], gridpatrol_proc: Any, command: str, cameras: str
) -> None:
    """Empty, ingest took the list for all cameras (a sharded unit whose variable came out
    empty duplicated the others) or, as ",", published nothing and exited 0; watch-frames
    watched every camera."""
    site = site_file("  - {id: c1, source: mqtt, location: {address: a}}\n")
    args = [command, "--config", str(site), "--cameras", cameras]
    says = f"--cameras {cameras!r} names no camera; leave it out for all cameras"
    exits_2_saying(gridpatrol_proc, args, says)


@pytest.mark.parametrize(("cameras", "selected"), [(None, "['c1']"), ("c1,c3", "['c1', 'c3']")])
def test_ingest_with_only_cameras_that_publish_their_own_frames_exits_2_in_one_line(
    site_file: Callable[..., Path], gridpatrol_proc: Any, cameras: str | None, selected: str
) -> None:
    """Nothing to publish, ingest exited 0 at once, and the sample unit (Restart=always)
    started it again every few seconds for ever."""
    site = site_file(
        "  - {id: c1, source: mqtt, location: {address: a}}\n"
        "  - {id: c2, source: x.mp4, fps: 1, location: {address: a}}\n"
        "  - {id: c3, source: MQTT, location: {address: a}}\n"
        if cameras
        else "  - {id: c1, source: mqtt, location: {address: a}}\n"
    )
    args = ["ingest", "--config", str(site), *(["--cameras", cameras] if cameras else [])]
    exits_2_saying(
        gridpatrol_proc,
        args,
        f"ingest: no camera to publish: the source of {selected} is mqtt (a camera that"
        " publishes its own frames)",
    )


def test_ingest_of_a_site_without_cameras_exits_2_saying_so(
    site_file: Callable[..., Path], gridpatrol_proc: Any
) -> None:
    """It said "the source of [] is mqtt" of a site that names no camera at all."""
    args = ["ingest", "--config", str(site_file("  []\n"))]
    exits_2_saying(gridpatrol_proc, args, "ingest: no camera to publish: the site has no camera")


FIVE = "cam-01,cam-02,cam-03,cam-04,cam-05"
FQDN = "substation-gw-07.grid.example"


@pytest.mark.parametrize(
    ("host", "cameras", "component_id"),
    [
        ("gw-7", None, "ingest-gw-7"),
        ("gw 7/a", "c1", "ingest-gw-7-a-c1"),
        # The same cameras in any order (or named twice) are the same component.
        ("gw-7", "c1,c2", "ingest-gw-7-c1-c2"),
        ("gw-7", "c2,c1,c2", "ingest-gw-7-c1-c2"),
        # Too long for a topic level: lists that differ only after the 64th character (cut
        # there, both were ...-cam-04) keep ids of their own, an order of its own none.
        (FQDN, FIVE, "ingest-substation-gw-07.grid.example-cam-01-cam-02-ca-4565378f53"),
        (FQDN, "cam-01,cam-02,cam-03,cam-04,cam-06",
         "ingest-substation-gw-07.grid.example-cam-01-cam-02-ca-b96543d28f"),
        (FQDN, "cam-05,cam-04,cam-03,cam-02,cam-01",
         "ingest-substation-gw-07.grid.example-cam-01-cam-02-ca-4565378f53"),
        # Cut at a dash: no "--" before the hash, and no id ending in "-" (cut at 64, it did).
        ("substation-gw-0007.grid.example", FIVE,
         "ingest-substation-gw-0007.grid.example-cam-01-cam-02-783c589ce6"),
        ("substation-gw-7.grid.example", FIVE,
         "ingest-substation-gw-7.grid.example-cam-01-cam-02-cam-368ef742bf"),
        ("x" * 70, None, "ingest-" + "x" * 46 + "-bc18e2a5f4"),
    ],
)  # fmt: skip
def test_the_default_component_id_is_a_topic_level_of_its_own_for_each_camera_set(
    monkeypatch: pytest.MonkeyPatch, host: str, cameras: str | None, component_id: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    made = _component_id(argparse.Namespace(component_id=None, cameras=cameras))
    assert made == component_id
    assert valid_id(made)


def test_watch_frames_help_says_what_its_component_id_names_and_its_default(
    gridpatrol_proc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--component-id`` was listed in ``watch-frames --help`` without a word."""
    # Wide enough for argparse not to wrap the help, which it does at hyphens too.
    monkeypatch.setenv("COLUMNS", "200")
    returncode, out, _ = gridpatrol_proc(["watch-frames", "--help"]).wait(30)
    assert returncode == 0
    # The last option; its help goes on the next line, below the others' column.
    options = " ".join(out.split("options:", 1)[1].split())
    assert options.endswith(
        "--component-id COMPONENT_ID MQTT component id, naming its status and dead-letter "
        "topics (default: watch-frames)"
    ), out
