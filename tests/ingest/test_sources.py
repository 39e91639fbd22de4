"""HTTP snapshot cameras, unreachable RTSP cameras and patrol boosts via ``gridpatrol ingest``."""

from __future__ import annotations

import base64
import json
import re
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.messages import Frame, decode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings
from gridpatrol.ingest.sources import FOLDER, NO_FRAME, grab_frame
from gridpatrol.ingest.topics import patrol_boost_topic
from gridpatrol.site import Camera

SHARED = "mqtt://127.0.0.1:1883"


def rotated_by_exif(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment whose Orientation tag (0x0112) is ``orientation``."""
    ifd = (1).to_bytes(2, "big") + bytes.fromhex("0112 0003 00000001")
    ifd += orientation.to_bytes(2, "big") + bytes(2) + bytes(4)  # value, padding, no next IFD
    body = b"Exif\x00\x00" + b"MM\x00\x2a" + (8).to_bytes(4, "big") + ifd
    return jpeg[:2] + b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def frames_of(seen: list[Message], camera: str) -> list[Frame]:
    return [
        decode_frame(m.payload, topic_camera_id=camera, received_at=m.received_at)
        for m in seen
        if m.topic.endswith(f"/cameras/{camera}/frame")
    ]


def last_status(seen: list[Message], camera: str) -> bytes | None:
    found = [m.payload for m in seen if m.topic.endswith(f"/cameras/{camera}/status")]
    return found[-1] if found else None


# Log lines as the CLI writes them: "2025-01-31 12:00:00,123 INFO name: message".
LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [A-Z]+ [\w.]+: (.*)")
TIMESTAMP_S = 0.002  # the log's timestamps are cut to the millisecond (two of them in a gap)
SLACK_S = 0.25  # a visit's failure shows after its start by the failed open's time (< 1 ms)
VISITS = 36  # patrol visits counted after a boost


def logged(lines: list[str]) -> list[tuple[float, str]]:
    """(wall-clock time, message) of each log line; lines of other writers (FFmpeg) left out."""
    found = []
    for line in lines:
        match = LOG_LINE.fullmatch(line)
        if match:
            local = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").astimezone()
            found.append((local.timestamp(), match[2]))
    return found


def stops_cleanly(proc: Any) -> str:
    """SIGTERM ``proc``, assert it exits 0; its stderr."""
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(30)
    assert code == 0, err
    return str(err)


def test_http_snapshot_cameras(
    http_camera: Any,
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
) -> None:
    site = site_file(
        f"  - {{id: h1, source: '{http_camera.url}', fps: 4, resize: [320, 180], "
        "location: {address: a}}\n"
        f"  - {{id: h2, source: '{http_camera.url}', fps: 4, location: {{address: b}}}}\n"
    )
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/#", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-h"])
    seen = watcher.collect(lambda s: min(len(frames_of(s, "h1")), len(frames_of(s, "h2"))) >= 3)
    resized, passed = frames_of(seen, "h1")[:3], frames_of(seen, "h2")[:3]
    assert [f.header.seq for f in resized] == [0, 1, 2]
    assert {(f.header.width, f.header.height) for f in resized} == {(320, 180)}
    assert {f.image for f in passed} == {http_camera.image}  # no resize: passed through
    assert {(f.header.width, f.header.height) for f in passed} == {(640, 360)}
    http_camera.broken.set()
    seen = watcher.collect(lambda s: last_status(s, "h1") == last_status(s, "h2") == b"offline")
    assert (last_status(seen, "h1"), last_status(seen, "h2")) == (b"offline", b"offline")
    http_camera.broken.clear()
    count = len(frames_of(seen, "h1"))
    seen = watcher.collect(lambda s: len(frames_of(s, "h1")) > count, timeout=30)
    assert last_status(seen, "h1") == b"online"  # back by itself after the backoff
    assert "snapshot failed" in stops_cleanly(proc)


def test_credentials_of_an_http_camera_never_reach_the_log(
    http_camera: Any,
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
) -> None:
    """In the URL's user part or in its query: the log names the camera's host and the HTTP
    status, never the password (httpx itself logs each request's whole URL at INFO)."""
    netloc = http_camera.url.split("/")[2]
    source = f"http://admin:S3cret@{netloc}/snap.jpg?user=admin&pwd=S3cret"
    site = site_file(
        f"  - {{id: h1, source: '{source}', fps: 4, location: {{address: a}}}}\n"
        f"  - {{id: p1, source: '{source}', interval_s: 1, location: {{address: b}}}}\n"
    )
    http_camera.broken.set()  # 503 to every request
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/#", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-c"])
    seen = watcher.collect(lambda s: last_status(s, "h1") == last_status(s, "p1") == b"offline")
    assert (last_status(seen, "h1"), last_status(seen, "p1")) == (b"offline", b"offline")
    err = stops_cleanly(proc)
    shown = f"http://***@{netloc}/snap.jpg?user=***&pwd=***"
    said = [m for _, m in logged(err.splitlines())]
    assert f"camera h1: snapshot failed (HTTP 503) {shown}; retrying in 1 s" in said, err
    visit = f"camera p1: the patrol visit got no frame from {shown} (HTTP 503); offline until"
    assert any(m.startswith(visit) for m in said), err
    assert "S3cret" not in err


def test_an_exif_rotated_snapshot_is_published_as_stored(
    http_camera: Any,
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
) -> None:
    # The detector decodes frames as stored, and zone polygons are drawn on them: a camera
    # that tags its JPEGs "rotate 90°" (Orientation 6) must not be turned by ingest alone.
    image = np.zeros((480, 640, 3), np.uint8)
    image[:240, :320] = (0, 0, 255)  # red top-left quadrant
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    http_camera.image = rotated_by_exif(bytes(buf.tobytes()), 6)
    site = site_file(
        f"  - {{id: x1, source: '{http_camera.url}', fps: 4, resize: [640, 480], "
        "location: {address: a}}\n"
    )
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/#", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", "ing-x"])
    seen = watcher.collect(lambda s: len(frames_of(s, "x1")) >= 1)
    frame = frames_of(seen, "x1")[0]
    assert (frame.header.width, frame.header.height) == (640, 480)
    decoded = cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (480, 640, 3)
    blue, green, red = (int(v) for v in decoded[120, 160])
    assert red > 200 and blue < 50 and green < 50, (blue, green, red)
    assert max(int(v) for v in decoded[360, 480]) < 50  # bottom-right stays black
    stops_cleanly(proc)


def test_an_unreachable_rtsp_camera_is_offline_and_retried_with_a_growing_backoff(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    site = site_file(
        f"  - {{id: r1, source: 'rtsp://user:secret@127.0.0.1:{port}/live', fps: 2, "
        "location: {address: a}}\n"
    )
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/r1/status", mqtt_prefix)
    args = ["ingest", "--config", str(site), "--component-id", "ing-r"]
    proc = gridpatrol_proc(args, log=tmp_path / "ingest.log")
    seen = watcher.collect(lambda s: last_status(s, "r1") == b"offline", timeout=40)
    assert last_status(seen, "r1") == b"offline"

    def attempts(lines: list[str]) -> list[tuple[float, str]]:
        return [(t, m) for t, m in logged(lines) if m.startswith("camera r1: cannot open")]

    lines = proc.wait_for(lambda ls: len(attempts(ls)) >= 3, timeout=30)
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(40)
    assert code == 0, err
    tried = attempts(lines)[:3]
    assert [m for _, m in tried] == [
        f"camera r1: cannot open rtsp://***@127.0.0.1:{port}/live; retrying in {wait} s"
        for wait in (1, 2, 4)
    ], err[-2000:]
    # Each attempt waits out the backoff the one before announced: lower bounds only, less the
    # millisecond the log's timestamps are cut to.
    (first, _), (second, _), (third, _) = tried
    assert second - first >= 1 - TIMESTAMP_S, tried
    assert third - second >= 2 - TIMESTAMP_S, tried
    assert "secret" not in err  # credentials never reach the log


def ingest_until_offline(
    site: Path,
    camera: str,
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
) -> str:
    """Run ``gridpatrol ingest`` until the camera is reported offline, stop it; its stderr."""
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/{camera}/status", mqtt_prefix)
    proc = gridpatrol_proc(["ingest", "--config", str(site), "--component-id", f"ing-{camera}"])
    seen = watcher.collect(lambda s: last_status(s, camera) == b"offline", timeout=40)
    assert last_status(seen, camera) == b"offline"
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(40)
    assert code == 0, err
    return str(err)


def test_a_missing_footage_file_says_where_it_was_looked_up(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    site = site_file("  - {id: f1, source: var/footage/nothing.mp4, location: {address: a}}\n")
    err = ingest_until_offline(site, "f1", watch, gridpatrol_proc, mqtt_prefix)
    assert (
        f"camera f1: cannot open {site.parent / 'var' / 'footage' / 'nothing.mp4'}: no such file; "
        f"'var/footage/nothing.mp4' was looked up from the working directory ({Path.cwd()}), "
        "then beside the site file; retrying in 30 s"
    ) in err


def test_a_footage_folder_for_a_source_is_said_to_be_a_folder(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    shared_dir: Path,
) -> None:
    """A folder of footage named as a camera's source was only "cannot open", every 30 s."""
    folder = shared_dir / "footage"
    site = site_file(f"  - {{id: f1, source: '{folder}', fps: 1, location: {{address: a}}}}\n")
    err = ingest_until_offline(site, "f1", watch, gridpatrol_proc, mqtt_prefix)
    assert (
        f"camera f1: cannot open {folder}: a folder, not a video file (name one of its files); "
        "retrying in 30 s"
    ) in err, err


def test_a_footage_folder_for_a_patrol_camera_or_a_grab_is_said_to_be_a_folder(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    shared_dir: Path,
) -> None:
    """A patrol visit or a snapshot grab of a folder said only "it cannot be opened or
    returned none", as of a file that might appear."""
    folder = shared_dir / "footage"
    site = site_file(
        f"  - {{id: p1, source: '{folder}', interval_s: 60, location: {{address: a}}}}\n"
    )
    err = ingest_until_offline(site, "p1", watch, gridpatrol_proc, mqtt_prefix)
    assert (
        f"camera p1: the patrol visit got no frame from {folder} (a folder, not a video file "
        "(name one of its files)); offline until a visit succeeds"
    ) in err, err
    # A relative one is looked up from the site file's folder, as the publisher does.
    camera = Camera.model_validate({"id": "f1", "source": "footage", "location": {"address": "a"}})
    assert grab_frame(camera, shared_dir) == FOLDER
    assert grab_frame(camera, shared_dir / "nothing") == NO_FRAME


def test_a_failing_patrol_camera_is_named_once_per_failing_streak_and_backs_off(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    site = site_file(
        "  - {id: p1, source: 'rtsp://user:secret@127.0.0.1:9/live', interval_s: 1, "
        "location: {address: a}}\n"
    )
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/p1/status", mqtt_prefix)
    # Progress lines (with the failure count) every second, the shortest interval: they tell
    # within a second when each failed visit ended.
    args = ["ingest", "--config", str(site), "--component-id", "ing-p1", "--progress-s", "1"]
    proc = gridpatrol_proc(args, log=tmp_path / "ingest.log")
    progress = re.compile(r"camera p1: \d+ frames published, .*, (\d+) source failures, ")

    def counts(lines: list[str]) -> list[tuple[float, int]]:
        """(time, failures so far) of each progress line of p1."""
        return [(t, int(m[1])) for t, text in logged(lines) if (m := progress.match(text))]

    lines = proc.wait_for(lambda ls: any(n >= 3 for _, n in counts(ls)), timeout=40)
    seen = watcher.collect(lambda s: last_status(s, "p1") == b"offline", timeout=10)
    proc.signal(signal.SIGTERM)
    code, _, err = proc.wait(40)
    assert code == 0, err
    assert last_status(seen, "p1") == b"offline"
    warning = (
        "camera p1: the patrol visit got no frame from rtsp://***@127.0.0.1:9/live (it cannot "
        "be opened or returned none); offline until a visit succeeds, next try in 2 s"
    )
    # Three failed visits by now, and one warning for the whole streak.
    warnings = [m for _, m in logged(err.splitlines()) if "the patrol visit got no frame" in m]
    assert warnings == [warning], err[-2000:]
    assert "secret" not in err

    # Visits at 0, 2 and 6 s (after 2, then 4 intervals), not every second. The first failure
    # is logged as it happens (the warning); a later one happened after the last progress line
    # that did not count it, by the first that did. Measured from the latter back to the former
    # each gap is never shorter than the real one: a lower bound that a slow machine only makes
    # easier to meet. Visits every second miss it by 0.75 s or more (visits every 2 s, unless
    # the progress lines fall just so).
    shown = counts(lines)
    (warned_at,) = [t for t, text in logged(lines) if text == warning]
    twice = min((t for t, n in shown if n >= 2), default=None)
    thrice = min((t for t, n in shown if n >= 3), default=None)
    assert twice is not None and thrice is not None, err[-2000:]
    before_second = max([warned_at, *(t for t, n in shown if n < 2 and t < twice)])
    assert twice - warned_at >= 2 - SLACK_S, shown
    assert thrice - before_second >= 4 - SLACK_S, shown


def test_a_looped_file_without_frames_is_offline_and_retried_not_spun(
    site_file: Callable[..., Path], watch: Any, gridpatrol_proc: Any, mqtt_prefix: str
) -> None:
    site = site_file("  - {id: e1, source: empty.avi, loop: true, location: {address: a}}\n")
    # A video file that opens but holds no frame.
    writer = cv2.VideoWriter(
        str(site.parent / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 2, (64, 48)
    )
    writer.release()
    err = ingest_until_offline(site, "e1", watch, gridpatrol_proc, mqtt_prefix)
    expected = f"camera e1: no video frame could be read from {site.parent / 'empty.avi'}; "
    assert err.count(expected + "retrying in 30 s") == 1, err[-2000:]


def test_a_boosted_patrol_camera_is_visited_more_often(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    cams = "".join(
        f"  - {{id: {c}, source: $FOOTAGE, interval_s: 0.05, location: {{address: a}}}}\n"
        for c in ("p1", "p2")
    )
    site = site_file(cams, max_fps=4)
    watcher = watch(SHARED, f"{mqtt_prefix}/cameras/+/frame", mqtt_prefix)
    args = ["ingest", "--config", str(site), "--component-id", "ing-p"]
    proc = gridpatrol_proc(args, log=tmp_path / "ingest.log")
    seen = watcher.collect(lambda s: len(s) >= 4, timeout=30)
    assert len(seen) >= 4
    conn = MqttConnection("worker", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert conn.start()
    boost = json.dumps({"factor": 8, "duration_s": 120}).encode()
    assert conn.publish_wait(patrol_boost_topic(mqtt_prefix, "p1"), boost, qos=1)
    conn.stop()
    applied = "camera p1: patrol boosted x8 for 120 s"
    lines = proc.wait_for(lambda ls: any(m == applied for _, m in logged(ls)), timeout=30)
    boosted_at = [t for t, m in logged(lines) if m == applied]
    assert boosted_at, lines[-20:]
    # Weights 8 and 1: once settled, start-time fair queueing visits p2 exactly once in every 9
    # visits. Right after the boost p2 can still come twice in 3 visits (its virtual time had
    # caught up), and a visit under way then was decided before: a second later those are
    # past, or at most one of them is left in the window on a slow machine.
    settled = datetime.fromtimestamp(boosted_at[0] + 1.0, UTC)

    def window(messages: list[Message]) -> list[Message]:
        return [m for m in messages if m.received_at >= settled][:VISITS]

    seen = watcher.collect(lambda s: len(window(s)) >= VISITS, timeout=90)
    after = window(seen)
    assert len(after) == VISITS
    p2 = sum(m.topic.endswith("/p2/frame") for m in after)
    # 36 visits are 4 cycles: p2 4 times, one more from the transient, one fewer if one of its
    # frames (QoS 0) got lost. Unboosted (1:1) it is 18; with the default x4 (1:4), 7.
    assert VISITS // 9 - 1 <= p2 <= VISITS // 9 + 1, (p2, VISITS)
    stops_cleanly(proc)


BAD_BOOSTS = [
    b'{"factor": NaN}',
    b'{"factor": Infinity}',
    b'{"duration_s": -Infinity}',
    b'{"factor": "4"}',
    b'{"factor": true}',
    b'{"factor": 0.5}',
    b'{"factor": 16.5}',
    b'{"duration_s": -60}',
    b'{"duration_s": 0}',
    b'{"duration_s": 86401}',
    b'{"factor": 1' + b"0" * 400 + b"}",
    b"[4]",
    b"boost",
]
# What each letter of BAD_BOOSTS says besides its reason.
BAD_BOOST_ERRORS = [
    "factor is not finite",
    "factor is not finite",
    "duration_s is not finite",
    "factor is not a number: '4'",
    "factor is not a number: 'True'",
    "factor 0.5 is not within 1-16",
    "factor 16.5 is not within 1-16",
    "duration_s -60 is not within 0-86400",
    "duration_s 0 is not within 0-86400",
    "duration_s 86401 is not within 0-86400",
    "factor is out of range",
    "expected a JSON object",
    "not JSON",
]


def test_a_patrol_boost_out_of_range_is_dead_lettered(
    site_file: Callable[..., Path],
    watch: Any,
    gridpatrol_proc: Any,
    mqtt_prefix: str,
    tmp_path: Path,
) -> None:
    # Ten bad boosts on one camera's topic, the rest on another's: ingest letters at most ten
    # a minute per topic (the others are only counted), and each one's letter is asserted here.
    cams = "".join(
        f"  - {{id: {cam}, source: $FOOTAGE, interval_s: 3600, location: {{address: a}}}}\n"
        for cam in ("p1", "p2")
    )
    site = site_file(cams)
    component = f"{mqtt_prefix}/components/ing-q/status"
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    args = ["ingest", "--config", str(site), "--component-id", "ing-q"]
    proc = gridpatrol_proc(args, log=tmp_path / "ingest.log")
    watcher.collect(lambda s: b"online" in [m.payload for m in s if m.topic == component])
    conn = MqttConnection("worker", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    assert conn.start()
    topic, other = patrol_boost_topic(mqtt_prefix, "p1"), patrol_boost_topic(mqtt_prefix, "p2")
    for k, payload in enumerate(BAD_BOOSTS):
        assert conn.publish_wait(topic if k < 10 else other, payload, qos=1)
    assert conn.publish_wait(topic, b'{"factor": 16, "duration_s": 86400}', qos=1)
    conn.stop()
    # Boosts are applied in order: once the good one is logged, every bad one was judged.
    applied = "camera p1: patrol boosted x16 for 86400 s"
    lines = proc.wait_for(lambda ls: any(m == applied for _, m in logged(ls)), timeout=30)
    assert [m for _, m in logged(lines) if "patrol boosted" in m] == [applied]
    letters_topic = f"{mqtt_prefix}/deadletter/ing-q"
    seen = watcher.collect(
        lambda s: len([m for m in s if m.topic == letters_topic]) >= len(BAD_BOOSTS)
    )
    letters = [json.loads(m.payload) for m in seen if m.topic == letters_topic]
    assert {letter["reason"] for letter in letters} == {"bad_boost"}
    assert [letter["error"] for letter in letters] == BAD_BOOST_ERRORS
    assert [base64.b64decode(letter["payload_b64"]) for letter in letters] == BAD_BOOSTS
    stops_cleanly(proc)
