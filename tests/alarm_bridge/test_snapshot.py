"""Camera evidence: a fresh snapshot over MQTT, else the newest frame seen, added by PATCH."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np
import pytest

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.worker import SNAPSHOT_WORKERS, BatchResult, Bridge, BridgeCore
from gridpatrol.api.client import Outbox
from gridpatrol.ingest.messages import Frame, FrameHeader, encode_frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.snapshot import encode_reply, parse_request
from gridpatrol.ingest.topics import frame_topic, sensor_alarm_topic, snapshot_request_topic
from gridpatrol.site import parse_site

from .conftest import BridgeRig, make_site, outbox_ops

BROKER = "mqtt://127.0.0.1:1883"

SITE = """
site: {{name: 快照测试}}
mqtt: {{prefix: {prefix}}}
cameras:
  - {{id: cam-live, source: mqtt, location: {{grid_code: JA-DN-0101}}}}
  - {{id: cam-mute, source: mqtt, location: {{grid_code: JA-DN-0102}}}}
sensors:
  - id: mh-live
    kind: manhole_cover
    location: {{address: 大宁路 1号}}
    camera: cam-live
  - id: sm-mute
    kind: smoke
    location: {{address: 大宁路 2号}}
    camera: cam-mute
  - id: sm-none
    kind: smoke
    location: {{address: 大宁路 3号}}
"""


def jpeg(shade: int) -> bytes:
    image = np.full((48, 64, 3), shade, np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def frame(camera_id: str, image: bytes) -> Frame:
    return Frame(FrameHeader(datetime.now(UTC), 1, camera_id, 64, 48), image)


class Background:
    """A broker connection and a thread running ``_serve`` while in the ``with`` block."""

    def __init__(self, component_id: str, prefix: str) -> None:
        self.prefix = prefix
        self.conn = MqttConnection(component_id, MqttSettings.from_url(BROKER), prefix=prefix)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.conn.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.conn.stop()


class Cameras(Background):
    """cam-live answers snapshot requests, with a frame taken ``reply_age_s`` before; cam-mute
    only streams frames. The component's clock is ``clock_s`` ahead of the true time (behind
    when negative); ``stream_live``: cam-live streams frames too, timed by that clock."""

    def __init__(
        self,
        prefix: str,
        reply_age_s: float = 0.0,
        clock_s: float = 0.0,
        stream_live: bool = False,
    ) -> None:
        super().__init__("snap-cams", prefix)
        self.reply_age_s = reply_age_s
        self.clock_s = clock_s
        self.stream_live = stream_live
        self.live_image = jpeg(200)
        self.stream_image = jpeg(90)
        self.requests = self.conn.subscribe(snapshot_request_topic(prefix, "cam-live"), qos=1)
        self.answered = 0  # requests of cam-live answered: counted before each reply

    def _serve(self) -> None:
        stream = encode_frame(frame("cam-mute", self.stream_image).header, self.stream_image)
        while not self.stop.is_set():
            self.conn.publish(frame_topic(self.prefix, "cam-mute"), stream, qos=0)
            if self.stream_live:
                now = datetime.fromtimestamp(time.time() + self.clock_s, UTC)
                header = FrameHeader(now, 1, "cam-live", 64, 48)
                live = encode_frame(header, self.stream_image)
                self.conn.publish(frame_topic(self.prefix, "cam-live"), live, qos=0)
            request = self.requests.get(timeout=0.2)
            if request is not None:
                self.answered += 1
                taken = datetime.fromtimestamp(time.time() + self.clock_s - self.reply_age_s, UTC)
                reply = encode_reply(
                    Frame(FrameHeader(taken, 1, "cam-live", 64, 48), self.live_image),
                    parse_request(request.payload),
                )
                self.conn.publish(f"{self.prefix}/cameras/cam-live/snapshot", reply, qos=1)


@pytest.fixture
def rig(tmp_path: Path, api_server: Any, mqtt_prefix: str) -> Iterator[BridgeRig]:
    site = SITE.format(prefix=mqtt_prefix)
    with BridgeRig(tmp_path, BROKER, api_server, mqtt_prefix, site) as r:
        yield r


def raise_alarm(
    sensor_id: str, alarm_type: str, event_id: str = "1", transition: str = "raise"
) -> bytes:
    body = {
        "schema": "gridalarm/1",
        "event_id": event_id,
        "sensor_id": sensor_id,
        "alarm_type": alarm_type,
        "transition": transition,
        "severity": "CRITICAL",
        "ts": time.time(),
    }
    return json.dumps(body).encode()


def test_snapshot_reply_and_newest_frame_fallback(rig: BridgeRig) -> None:
    with Cameras(rig.prefix) as cams:
        time.sleep(1.0)  # the bridge has seen a few cam-mute frames
        rig.publish(
            [
                (sensor_alarm_topic(rig.prefix, "mh-live"), raise_alarm("mh-live", "manhole_tilt")),
                (sensor_alarm_topic(rig.prefix, "sm-mute"), raise_alarm("sm-mute", "smoke")),
                (sensor_alarm_topic(rig.prefix, "sm-none"), raise_alarm("sm-none", "smoke")),
            ]
        )
        deadline = time.monotonic() + 60
        while True:
            found = {c["source"]["sensor_id"]: c for c in rig.candidates()}
            kinds = {s: [e["kind"] for e in c["evidence"]] for s, c in found.items()}
            if kinds.get("mh-live") == kinds.get("sm-mute") == ["sensor_trace", "snapshot"]:
                break
            assert time.monotonic() < deadline, kinds
            time.sleep(0.5)
    snapshots = {s: found[s]["evidence"][1] for s in ("mh-live", "sm-mute")}
    assert snapshots["mh-live"]["sha256"] == hashlib.sha256(cams.live_image).hexdigest()
    assert snapshots["sm-mute"]["sha256"] == hashlib.sha256(cams.stream_image).hexdigest()
    assert (snapshots["mh-live"]["width"], snapshots["mh-live"]["height"]) == (64, 48)
    assert kinds["sm-none"] == ["sensor_trace"]  # no linked camera: the trace alone
    with rig.api.client("reviewer") as http:
        stored = http.get(f"/evidence/{snapshots['mh-live']['sha256']}")
        assert stored.content == cams.live_image
        trace = http.get(f"/evidence/{found['mh-live']['evidence'][0]['sha256']}").json()
    assert trace["sensor_id"] == "mh-live"
    assert [r["transition"] for r in trace["readings"]] == ["raise"]


def test_a_reply_with_a_frame_older_than_the_maximum_age_is_not_the_snapshot(
    rig: BridgeRig,
) -> None:
    """cam-live answers with the request's id, but a frame taken an hour ago (the last one the
    component serving it had, when it could not take a new one): that is taken for no reply,
    and the newest frame the camera streamed is the snapshot."""
    streamed = jpeg(70)
    fresh = encode_frame(frame("cam-live", streamed).header, streamed)
    with (
        Cameras(rig.prefix, reply_age_s=3600) as cams,
        Stream(rig.prefix, "cam-live", fresh),
    ):
        time.sleep(1.0)  # the bridge has seen a few streamed frames
        rig.publish(
            [(sensor_alarm_topic(rig.prefix, "mh-live"), raise_alarm("mh-live", "manhole_tilt"))]
        )
        rig.settled(1)
    [candidate] = rig.candidates()
    assert [e["kind"] for e in candidate["evidence"]] == ["sensor_trace", "snapshot"]
    assert candidate["evidence"][1]["sha256"] == hashlib.sha256(streamed).hexdigest()
    assert cams.answered == 1
    assert snapshot_counts(rig, 1) == counted(added=1, fallback=1, stale=1)


SNAPSHOT_COUNTS = re.compile(
    r"snapshots (\d+) \(fallback (\d+), missing (\d+), deferred (\d+), failed (\d+),"
    r" stale replies (\d+), replies timed at reception (\d+)\)"
)
COUNT_NAMES = ("added", "fallback", "missing", "deferred", "failed", "stale", "retimed")


def counted(**counts: int) -> dict[str, int]:
    return dict.fromkeys(COUNT_NAMES, 0) | counts


def snapshot_counts(rig: BridgeRig, settled: int) -> dict[str, int]:
    """The snapshot counts of the bridge's progress line, once one says ``settled`` snapshots
    were added or missing."""
    deadline = time.monotonic() + 30
    while True:
        found = SNAPSHOT_COUNTS.findall(rig.log.read_text(errors="replace"))
        if found:
            counts = dict(zip(COUNT_NAMES, map(int, found[-1]), strict=True))
            if counts["added"] + counts["missing"] >= settled:
                return counts
        assert time.monotonic() < deadline, rig.log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)


def alarm_with_snapshot(rig: BridgeRig) -> tuple[dict[str, Any], float]:
    """Raise mh-live (camera cam-live) and wait until its snapshot is settled: the candidate,
    and the time just before the alarm was sent."""
    sent_at = time.time()
    rig.publish(
        [(sensor_alarm_topic(rig.prefix, "mh-live"), raise_alarm("mh-live", "manhole_tilt"))]
    )
    rig.settled(1)
    [candidate] = rig.candidates()
    return candidate, sent_at


def snapshot_of(candidate: dict[str, Any]) -> tuple[str, float] | None:
    """The snapshot's hash and captured_at, None without one."""
    evidence = candidate["evidence"]
    if [e["kind"] for e in evidence] == ["sensor_trace"]:
        return None
    assert [e["kind"] for e in evidence] == ["sensor_trace", "snapshot"]
    return evidence[1]["sha256"], datetime.fromisoformat(evidence[1]["captured_at"]).timestamp()


def sha(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def test_a_fresh_reply_from_a_component_whose_clock_is_behind_is_the_snapshot(
    rig: BridgeRig,
) -> None:
    """The component serving cam-live runs 10 minutes behind: its frames and its fresh reply
    are all timed 600 s back. Its streamed frames tell the offset; the reply is fresh, timed
    on the bridge's clock."""
    with Cameras(rig.prefix, clock_s=-600, stream_live=True) as cams:
        time.sleep(1.0)  # the bridge has seen a few streamed frames
        candidate, sent_at = alarm_with_snapshot(rig)
    snapshot = snapshot_of(candidate)
    assert snapshot is not None
    assert snapshot[0] == sha(cams.live_image)
    assert sent_at <= snapshot[1] <= time.time()
    assert snapshot_counts(rig, 1) == counted(added=1)


@pytest.mark.parametrize(
    ("reply_age_s", "used"), [pytest.param(200, True), pytest.param(3600, False)]
)
def test_a_reply_with_no_streamed_frame_to_tell_its_clock_is_judged_with_a_tolerance(
    rig: BridgeRig, reply_age_s: float, used: bool
) -> None:
    """Nothing streamed: the component's clock may be off by as much as a device's
    (REPLY_CLOCK_TOLERANCE_S, 300 s), so a reply 200 s old by the bridge's clock is used; one
    an hour old is not, and with no frame to fall back on the alarm has no snapshot."""
    with Cameras(rig.prefix, reply_age_s=reply_age_s) as cams:
        candidate, sent_at = alarm_with_snapshot(rig)
    assert cams.answered == 1
    snapshot = snapshot_of(candidate)
    if used:
        assert snapshot is not None
        assert snapshot[0] == sha(cams.live_image)
        assert sent_at - reply_age_s - 1 <= snapshot[1] <= time.time() - reply_age_s
        assert snapshot_counts(rig, 1) == counted(added=1)
    else:
        assert snapshot is None
        assert snapshot_counts(rig, 1) == counted(missing=1, stale=1)


YEAR_S = 365 * 86400.0


def test_a_reply_timed_a_year_ahead_is_timed_at_its_reception(rig: BridgeRig) -> None:
    """The component's clock runs a year ahead and nothing streamed tells it: the reply's age
    cannot be told, and it is timed at its reception, as a sensor message is, not a year
    after the alarm."""
    with Cameras(rig.prefix, clock_s=YEAR_S) as cams:
        candidate, sent_at = alarm_with_snapshot(rig)
    snapshot = snapshot_of(candidate)
    assert snapshot is not None
    assert snapshot[0] == sha(cams.live_image)
    assert sent_at <= snapshot[1] <= time.time()
    assert snapshot_counts(rig, 1) == counted(added=1, retimed=1)


def test_an_old_frame_from_a_component_a_year_ahead_is_a_stale_reply(rig: BridgeRig) -> None:
    """The component runs a year ahead and answers with the frame it took an hour ago: its
    time is still in the future, but its streamed frames tell the offset, and the reply is
    an hour old. The newest streamed frame is the snapshot."""
    with Cameras(rig.prefix, reply_age_s=3600, clock_s=YEAR_S, stream_live=True) as cams:
        time.sleep(1.0)  # the bridge has seen a few streamed frames
        candidate, sent_at = alarm_with_snapshot(rig)
    assert cams.answered == 1
    snapshot = snapshot_of(candidate)
    assert snapshot is not None
    assert snapshot[0] == sha(cams.stream_image)
    assert sent_at - 2 <= snapshot[1] <= time.time()  # its reception, not a year ahead
    assert snapshot_counts(rig, 1) == counted(added=1, fallback=1, stale=1)


@pytest.mark.parametrize(("reply_age_s", "used"), [pytest.param(8, True), pytest.param(12, False)])
def test_the_maximum_age_of_a_reply_is_snapshot_max_age_s_on_the_bridges_clock(
    tmp_path: Path, api_server: Any, mqtt_prefix: str, reply_age_s: float, used: bool
) -> None:
    """--snapshot-max-age-s 10, and a component 10 minutes behind: a reply 8 s old on its
    clock is used, one 12 s old is stale (the newest streamed frame instead)."""
    site = SITE.format(prefix=mqtt_prefix)
    args = ("--snapshot-max-age-s", str(MAX_AGE_S))
    with (
        BridgeRig(tmp_path, BROKER, api_server, mqtt_prefix, site, args) as rig,
        Cameras(rig.prefix, reply_age_s=reply_age_s, clock_s=-600, stream_live=True) as cams,
    ):
        time.sleep(1.0)  # the bridge has seen a few streamed frames
        candidate, _ = alarm_with_snapshot(rig)
        counts = snapshot_counts(rig, 1)
    snapshot = snapshot_of(candidate)
    assert snapshot is not None
    if used:
        assert snapshot[0] == sha(cams.live_image)
        assert counts == counted(added=1)
    else:
        assert snapshot[0] == sha(cams.stream_image)
        assert counts == counted(added=1, fallback=1, stale=1)


MAX_AGE_S = 10.0  # --snapshot-max-age-s: above the 5 s a snapshot request waits


def wanted(rig: BridgeRig) -> list[str]:
    """Candidates waiting for a snapshot, from the bridge's state file (to time the kill)."""
    try:
        with sqlite3.connect(rig.state / "bridge.db", timeout=5) as conn:
            rows = conn.execute("SELECT candidate_id FROM bridge_snapshot_wanted").fetchall()
    except sqlite3.OperationalError:
        return []
    return [str(r[0]) for r in rows]


def test_a_snapshot_wanted_before_a_crash_is_fetched_after_it(rig: BridgeRig) -> None:
    # No camera answers yet: the bridge waits 5 s for the snapshot and is killed meanwhile.
    rig.publish(
        [(sensor_alarm_topic(rig.prefix, "mh-live"), raise_alarm("mh-live", "manhole_tilt"))]
    )
    deadline = time.monotonic() + 30
    while not wanted(rig):
        assert time.monotonic() < deadline, "the snapshot was never wanted"
        time.sleep(0.05)
    rig.stop_bridge(signal.SIGKILL)
    with Cameras(rig.prefix) as cams:
        rig.start_bridge()
        deadline = time.monotonic() + 60
        while True:
            found = rig.candidates()
            kinds = [[e["kind"] for e in c["evidence"]] for c in found]
            if kinds == [["sensor_trace", "snapshot"]]:
                break
            assert time.monotonic() < deadline, kinds
            time.sleep(0.5)
    assert found[0]["evidence"][1]["sha256"] == hashlib.sha256(cams.live_image).hexdigest()
    assert wanted(rig) == []


def test_a_snapshot_wanted_while_the_media_connection_is_down_waits_for_it(
    tmp_path: Path, mosquitto: Any
) -> None:
    """Neither a reply nor the newest frame seen before the cut (stale by now) settles it:
    the wanted row stays, and the sweep after the reconnection queues it again."""
    site = make_site("gridpatrol")
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    settings = MqttSettings.from_url(mosquitto.url)
    media = MqttConnection("bridge-media", settings, client_id="gp-test-media")
    bridge = Bridge(site, outbox, MqttConnection("alarm_bridge", settings), media)
    body = json.loads(raise_alarm("mh-1", "manhole_tilt"))
    out = BatchResult()
    with outbox.transaction() as txn:
        topic = sensor_alarm_topic("gridpatrol", "mh-1")
        bridge.core.handle(txn, topic, json.dumps(body).encode(), datetime.now(UTC), out)
        bridge.core.finish(txn, out)
    [(candidate_id, camera_id)] = out.snapshots
    stale = jpeg(30)
    bridge._keep_newest(
        "cam-1", encode_frame(frame("cam-1", stale).header, stale), datetime.now(UTC)
    )
    try:
        assert media.start(10)
        mosquitto.stop()
        deadline = time.monotonic() + 30
        while media.connected:
            assert time.monotonic() < deadline, "still connected"
            time.sleep(0.05)
        bridge._snapshot(candidate_id, camera_id)
        assert (bridge.core.counts.snapshot_deferred, bridge.core.counts.snapshots) == (1, 0)
        mosquitto.start()
        assert media.wait_connected(30)
        bridge._sweep_snapshots()
    finally:
        media.stop()
    assert [k for k, _, _ in outbox_ops(outbox)] == ["evidence", "create"]
    with outbox.transaction() as txn:
        assert store.wanted_snapshots(txn.conn) == [(candidate_id, "cam-1")]
    assert bridge._snapshots.get_nowait() == (candidate_id, "cam-1")


def test_a_dead_cameras_last_frame_is_timed_at_its_reception_then_left_out(
    tmp_path: Path, api_server: Any, mqtt_prefix: str
) -> None:
    """A camera streaming bare JPEGs (no time of their own) sends one frame and dies: an alarm
    right after gets it as captured then; an alarm after the maximum age gets no picture."""
    site = SITE.format(prefix=mqtt_prefix)
    args = ("--snapshot-max-age-s", str(MAX_AGE_S))
    with BridgeRig(tmp_path, BROKER, api_server, mqtt_prefix, site, args) as rig:
        topic = sensor_alarm_topic(rig.prefix, "sm-mute")
        last = jpeg(120)
        sent_at = time.time()
        rig.publish([(frame_topic(rig.prefix, "cam-mute"), last)])
        rig.publish([(topic, raise_alarm("sm-mute", "smoke", "r1"))])
        rig.settled(1)
        (first,) = rig.candidates()
        snapshot = first["evidence"][1]
        assert snapshot["sha256"] == hashlib.sha256(last).hexdigest()
        # Taken only once the 5 s request timed out: "now" would be that much after the alarm.
        captured = datetime.fromisoformat(snapshot["captured_at"]).timestamp()
        assert sent_at <= captured < datetime.fromisoformat(first["occurred_at"]).timestamp() + 5
        time.sleep(max(0.0, captured + MAX_AGE_S + 1 - time.time()))  # the frame ages out
        rig.publish(
            [
                (topic, raise_alarm("sm-mute", "smoke", "c1", "clear")),
                (topic, raise_alarm("sm-mute", "smoke", "r2")),
            ]
        )
        rig.settled(3)
        found = {c["id"]: [e["kind"] for e in c["evidence"]] for c in rig.candidates()}
    del found[first["id"]]
    assert list(found.values()) == [["sensor_trace"]]


def _bridge_at(tmp_path: Path, now: float) -> Bridge:
    """A bridge with a media connection (not started) whose clock stands at ``now``."""
    settings = MqttSettings.from_url(BROKER)
    return Bridge(
        make_site("gridpatrol"),
        Outbox(tmp_path / "bridge.db", None, component="alarm_bridge"),
        MqttConnection("alarm_bridge", settings),
        MqttConnection("bridge-media", settings),
        clock=lambda: now,
    )


def test_a_frame_drained_late_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    now = float(round(time.time()))  # whole seconds: exact through datetime
    bridge = _bridge_at(tmp_path, now)
    newer, older = jpeg(60), jpeg(180)
    bridge._keep_newest("cam-1", newer, datetime.fromtimestamp(now - 2, UTC))
    bridge._keep_newest("cam-1", older, datetime.fromtimestamp(now - 3, UTC))
    fallback = bridge._fallback_frame("cam-1")
    assert fallback is not None
    assert (fallback.image, fallback.header.ts.timestamp()) == (newer, now - 2)


def test_an_old_streamed_frame_does_not_tell_the_clock_of_a_fresh_reply(tmp_path: Path) -> None:
    """cam-1's component streamed with its clock 600 s ahead, stopped streaming, and had its
    clock set right: its last streamed frame, 1000 s old, no longer tells the offset, and a
    fresh reply is the snapshot (judged with the tolerance), not taken 600 s before."""
    now = float(round(time.time()))  # whole seconds: exact through datetime
    bridge = _bridge_at(tmp_path, now)
    image = jpeg(120)
    ahead = FrameHeader(datetime.fromtimestamp(now - 1000 + 600, UTC), 1, "cam-1", 64, 48)
    bridge._keep_newest(
        "cam-1", encode_frame(ahead, image), datetime.fromtimestamp(now - 1000, UTC)
    )
    reply = Frame(FrameHeader(datetime.fromtimestamp(now - 1, UTC), 2, "cam-1", 64, 48), image)
    judged = bridge._judge_reply(reply, now - 2, now, "c-1")
    assert judged is not None
    assert judged.header.ts.timestamp() == now - 1
    assert (bridge.core.counts.snapshot_stale, bridge.core.counts.snapshot_retimed) == (0, 0)
    # Streamed within the maximum age, the same frame tells the offset: the reply is then
    # taken 600 s before its request, stale.
    recent = FrameHeader(datetime.fromtimestamp(now - 100 + 600, UTC), 3, "cam-1", 64, 48)
    bridge._keep_newest(
        "cam-1", encode_frame(recent, image), datetime.fromtimestamp(now - 100, UTC)
    )
    assert bridge._judge_reply(reply, now - 2, now, "c-2") is None
    assert bridge.core.counts.snapshot_stale == 1


# A frame envelope whose JSON header nests 8000 deep: json.loads raises RecursionError, which
# a decoder that only knew JSON syntax errors let through.
DEEP_FRAME = b"GPF1" + (16000).to_bytes(4, "big") + b"[" * 8000 + b"]" * 8000 + jpeg(10)


class Stream(Background):
    """Publishes ``payload`` on a camera's frame topic every 0.2 s; the payload may change."""

    def __init__(self, prefix: str, camera_id: str, payload: bytes) -> None:
        super().__init__("snap-stream", prefix)
        self.topic = frame_topic(prefix, camera_id)
        self.payload = payload

    def _serve(self) -> None:
        while not self.stop.wait(0.2):
            self.conn.publish(self.topic, self.payload, qos=0)


def evidence_kinds(rig: BridgeRig) -> list[list[str]]:
    """The evidence kinds of each candidate, oldest first."""
    found = sorted(rig.candidates(), key=lambda c: c["occurred_at"])
    return [[e["kind"] for e in c["evidence"]] for c in found]


def smoke(sensor_id: str, event_id: str, transition: str, ts: float) -> bytes:
    body = json.loads(raise_alarm(sensor_id, "smoke", event_id, transition)) | {"ts": ts}
    return json.dumps(body).encode()


def test_bad_newest_frames_leave_snapshots_working(rig: BridgeRig) -> None:
    """Three alarms fall back to an undecodable newest frame (cam-mute answers no request),
    one for each media thread; a later alarm still gets the valid frame that followed."""
    topic = sensor_alarm_topic(rig.prefix, "sm-mute")
    start = time.time()
    flips = ["raise", "clear", "raise", "clear", "raise"]
    with Stream(rig.prefix, "cam-mute", DEEP_FRAME) as stream:
        time.sleep(1.0)  # the bridge has seen a few of them
        rig.publish([(topic, smoke("sm-mute", f"e{n}", t, start + n)) for n, t in enumerate(flips)])
        rig.settled(5)
        assert evidence_kinds(rig) == [["sensor_trace"]] * 3
        valid = jpeg(140)
        stream.payload = encode_frame(frame("cam-mute", valid).header, valid)
        rig.publish(
            [
                (topic, smoke("sm-mute", "e5", "clear", start + 5)),
                (topic, smoke("sm-mute", "e6", "raise", start + 6)),
            ]
        )
        rig.settled(7)
    assert evidence_kinds(rig) == [["sensor_trace"]] * 3 + [["sensor_trace", "snapshot"]]
    newest = max(rig.candidates(), key=lambda c: c["occurred_at"])
    assert newest["evidence"][1]["sha256"] == hashlib.sha256(valid).hexdigest()


def tilt(event_id: str, transition: str, ts: float) -> bytes:
    body = json.loads(raise_alarm("mh-live", "manhole_tilt", event_id, transition))
    return json.dumps(body | {"ts": ts}).encode()


def snapshot_patches(outbox: Outbox) -> list[tuple[str | None, Any]]:
    return [
        (cid, body)
        for kind, cid, body in outbox_ops(outbox)
        if kind == "patch" and any(e["kind"] == "snapshot" for e in body.get("evidence", []))
    ]


def wait_for(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_snapshot_that_trips_a_bug_leaves_the_media_threads_running(
    tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in each of the three media threads, then an alarm: its snapshot still comes.

    The fault is injected (a bug in attaching the snapshot): once the frame decoders report
    every malformed frame as a MessageError, no input reaches this last resort."""
    attach = BridgeCore.attach_snapshot
    faulted: list[str] = []
    lock = threading.Lock()

    def buggy(self: BridgeCore, txn: Any, candidate_id: str, snap: Frame) -> bool:
        with lock:
            if len(faulted) < SNAPSHOT_WORKERS:
                faulted.append(candidate_id)
                raise KeyError("a bug this snapshot trips")
        return attach(self, txn, candidate_id, snap)

    monkeypatch.setattr(BridgeCore, "attach_snapshot", buggy)
    site = parse_site(SITE.format(prefix=mqtt_prefix), "site.yaml")
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    settings = MqttSettings.from_url(BROKER)
    conn = MqttConnection(
        "alarm_bridge",
        settings,
        prefix=mqtt_prefix,
        persistent=True,
        manual_ack=True,
        client_id=f"gp-test-bridge-{mqtt_prefix}",
    )
    media = MqttConnection("alarm_bridge-media", settings, prefix=mqtt_prefix)
    bridge = Bridge(site, outbox, conn, media, progress_s=3600)
    publisher = MqttConnection("snap-pub", settings, prefix=mqtt_prefix)
    topic = sensor_alarm_topic(mqtt_prefix, "mh-live")
    start = time.time()
    flips = ["raise", "clear", "raise", "clear", "raise", "clear", "raise"]
    alarms = [tilt(f"e{n}", t, start + n) for n, t in enumerate(flips)]
    thread = threading.Thread(target=bridge.run, daemon=True)
    with Cameras(mqtt_prefix) as cams:
        conn.start()
        media.start()
        publisher.start()
        thread.start()
        try:
            for alarm in alarms[:5]:  # three candidates: one fault per media thread
                assert publisher.publish_wait(topic, alarm, qos=1)
            wait_for(lambda: len(faulted) == SNAPSHOT_WORKERS, "three faults")
            for alarm in alarms[5:]:
                assert publisher.publish_wait(topic, alarm, qos=1)
            wait_for(lambda: len(snapshot_patches(outbox)) == 1, "the fourth snapshot")
        finally:
            bridge.stop()
            thread.join(30)
            for mqtt in (publisher, media, conn):
                mqtt.stop()
    creates = [cid for kind, cid, _ in outbox_ops(outbox) if kind == "create"]
    assert len(creates) == 4
    assert sorted(faulted) == sorted(creates[:3])
    [(candidate_id, patch)] = snapshot_patches(outbox)
    assert candidate_id == creates[3]
    assert patch["evidence"][0]["sha256"] == hashlib.sha256(cams.live_image).hexdigest()
    assert bridge.core.counts.snapshot_failed == SNAPSHOT_WORKERS
    with outbox.transaction() as txn:
        assert store.wanted_snapshots(txn.conn) == []  # the faulted ones were given up


def sqlite_error(tmp_path: Path, *statements: str, ro: bool = False) -> sqlite3.Error:
    """The error SQLite itself gives the last of ``statements``, with its result code: run on
    a database with one table, through a read-only connection if ``ro``, while another
    connection holds its write lock."""
    path = tmp_path / "provoked.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        uri = f"file:{path}?mode={'ro' if ro else 'rw'}"
        with closing(sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)) as conn:
            try:
                for statement in statements:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                return exc
    raise AssertionError(f"{statements} succeeded")


def raised_with_a_camera(
    tmp_path: Path, mqtt_prefix: str
) -> tuple[Bridge, Outbox, MqttConnection, BatchResult]:
    """A bridge, not running, its media connection not started, that has raised a candidate
    of mh-live: the candidate's snapshot is wanted, its job in the batch result."""
    site = parse_site(SITE.format(prefix=mqtt_prefix), "site.yaml")
    outbox = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    settings = MqttSettings.from_url(BROKER)
    media = MqttConnection("alarm_bridge-media", settings, prefix=mqtt_prefix)
    bridge = Bridge(site, outbox, MqttConnection("alarm_bridge", settings), media)
    out = BatchResult()
    with outbox.transaction() as txn:
        alarm = raise_alarm("mh-live", "manhole_tilt")
        topic = sensor_alarm_topic(mqtt_prefix, "mh-live")
        bridge.core.handle(txn, topic, alarm, datetime.now(UTC), out)
        bridge.core.finish(txn, out)
    return bridge, outbox, media, out


SNAPSHOT_DB_ERRORS = [
    # (name, what raises the error attaching raises, requests the camera answered, snapshot
    # still wanted)
    ("a constraint: given up", lambda _: sqlite3.IntegrityError("UNIQUE failed"), 1, False),
    (
        "a read-only database: given up",
        lambda tmp: sqlite_error(tmp, "INSERT INTO t VALUES (1)", ro=True),
        1,
        False,
    ),
    ("a missing table: given up", lambda tmp: sqlite_error(tmp, "SELECT * FROM gone"), 1, False),
    (
        "a locked database: each sweep again",
        lambda tmp: sqlite_error(tmp, "BEGIN IMMEDIATE"),
        4,
        True,
    ),
]


@pytest.mark.parametrize(
    ("provoke", "answered", "still_wanted"),
    [pytest.param(*case[1:], id=case[0]) for case in SNAPSHOT_DB_ERRORS],
)
def test_only_a_busy_database_keeps_a_failed_snapshot_wanted(
    tmp_path: Path,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    provoke: Callable[[Path], sqlite3.Error],
    answered: int,
    still_wanted: bool,
) -> None:
    """Any other database error would fail the same way after every sweep, each asking the
    camera for another snapshot. The first attempt, then three sweeps run by hand, each once
    the job before it is done."""
    error = provoke(tmp_path)

    def broken(self: BridgeCore, txn: Any, candidate_id: str, snap: Frame) -> bool:
        raise error

    monkeypatch.setattr(BridgeCore, "attach_snapshot", broken)
    bridge, outbox, media, out = raised_with_a_camera(tmp_path, mqtt_prefix)
    [job] = out.snapshots
    media_thread = threading.Thread(target=bridge._media_loop, daemon=True)
    with Cameras(mqtt_prefix) as cams:
        assert media.start(10)
        media_thread.start()
        try:
            bridge._queue_snapshots(out)
            for _ in range(3):
                wait_for(lambda: not bridge._snapshot_jobs, "the snapshot job done")
                bridge._sweep_snapshots()
            wait_for(lambda: not bridge._snapshot_jobs, "the last snapshot job done")
        finally:
            bridge.stop()
            media_thread.join(30)
            media.stop()
    assert cams.answered == answered
    assert (bridge.core.counts.snapshot_failed, bridge.core.counts.snapshots) == (answered, 0)
    with outbox.transaction() as txn:
        assert store.wanted_snapshots(txn.conn) == ([job] if still_wanted else [])
    assert [k for k, _, _ in outbox_ops(outbox)] == ["evidence", "create"]


def test_a_snapshot_settled_while_a_sweep_queues_it_again_is_added_once(
    tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads the wanted row; a media thread settles it, adding the snapshot; the
    sweep then queues it again, as the job is no longer queued. That second job adds nothing.
    The media thread's work is run by hand at that point, to force the race."""
    bridge, outbox, media, out = raised_with_a_camera(tmp_path, mqtt_prefix)
    [job] = out.snapshots
    bridge._queue_snapshots(out)
    taken = bridge._snapshots.get_nowait()  # a media thread takes the job
    enqueue = bridge._enqueue_snapshot

    def after_the_media_thread(again: tuple[str, str]) -> None:
        bridge._snapshot(*taken)
        bridge._snapshot_jobs.discard(taken[0])  # as the media thread does once done
        enqueue(again)

    monkeypatch.setattr(bridge, "_enqueue_snapshot", after_the_media_thread)
    with Cameras(mqtt_prefix) as cams:
        assert media.start(10)
        try:
            bridge._sweep_snapshots()
            again = bridge._snapshots.get_nowait()
            assert again == job  # queued again
            bridge._snapshot(*again)
        finally:
            media.stop()
    [(candidate_id, patch)] = snapshot_patches(outbox)
    assert candidate_id == job[0]
    assert patch["evidence"][0]["sha256"] == hashlib.sha256(cams.live_image).hexdigest()
    assert cams.answered == 1  # the second job did not ask the camera
    counts = bridge.core.counts
    assert (
        counts.snapshots,
        counts.snapshot_fallbacks,
        counts.snapshot_missing,
        counts.snapshot_deferred,
        counts.snapshot_stale,
    ) == (1, 0, 0, 0, 0)
    with outbox.transaction() as txn:
        assert store.wanted_snapshots(txn.conn) == []


def test_a_fallback_settled_by_another_thread_while_waiting_is_neither_added_nor_counted(
    tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another media thread settles the snapshot while this one waits for a camera that does
    not answer: the newest frame is not added, and no fallback is counted."""
    bridge, outbox, media, out = raised_with_a_camera(tmp_path, mqtt_prefix)
    [(candidate_id, camera_id)] = out.snapshots
    newest = jpeg(50)
    bridge._keep_newest(
        camera_id, encode_frame(frame(camera_id, newest).header, newest), datetime.now(UTC)
    )

    def no_reply(conn: MqttConnection, camera: str) -> None:
        with outbox.transaction() as txn:  # the other media thread, meanwhile
            store.snapshot_settled(txn.conn, candidate_id)

    monkeypatch.setattr(bridge, "_request_snapshot", no_reply)
    assert media.start(10)
    try:
        bridge._snapshot(candidate_id, camera_id)
    finally:
        media.stop()
    counts = bridge.core.counts
    assert (counts.snapshots, counts.snapshot_fallbacks, counts.snapshot_missing) == (0, 0, 0)
    assert snapshot_patches(outbox) == []
