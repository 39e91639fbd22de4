"""End to end: a private Mosquitto, the real intake API and the real ``gridpatrol detect``.

Frames of real footage (and scenes composed from real frames, see docs/detectors.md) are
published as frame envelopes with timestamps advancing at 2 fps; the publisher may run
faster than real time because the worker's clock is the frame timestamp. Outcomes are read back
through the API: candidates per episode, their evidence bytes and hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import yaml

from gridpatrol.api.client import Outbox
from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.messages import FrameHeader, encode_frame
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.topics import component_status_topic, frame_topic

pytestmark = pytest.mark.slow

T0 = datetime(2026, 5, 4, 2, 0, 0, tzinfo=UTC)  # 10:00 in Shanghai: inside any day schedule
FPS = 2.0
WHOLE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
Image = np.ndarray


# ---------------------------------------------------------------------------------------------
# Footage and composed scenes


def video_frames(path: Path, fps: float = FPS) -> list[Image]:
    """The video sampled at ``fps`` by its own timing."""
    cap = cv2.VideoCapture(str(path))
    native = cap.get(cv2.CAP_PROP_FPS) or 25.0
    out: list[Image] = []
    index, next_t = 0, 0.0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index / native >= next_t - 1e-9:
            out.append(frame)
            next_t += 1.0 / fps
        index += 1
    cap.release()
    assert out, f"no frames in {path}"
    return out


def frame_at(path: Path, index: int) -> Image:
    cap = cv2.VideoCapture(str(path))
    frame = None
    for _ in range(index + 1):
        ok, frame = cap.read()
        assert ok, f"{path} has fewer than {index + 1} frames"
    cap.release()
    assert frame is not None
    return frame


def jpeg(img: Image, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf.tobytes())


def crop(img: Image, box: tuple[int, int, int, int], pad: int = 10) -> Image:
    x1, y1, x2, y2 = box
    h, w = img.shape[:2]
    return img[max(0, y1 - pad) : min(h, y2 + pad), max(0, x1 - pad) : min(w, x2 + pad)].copy()


def paste(base: Image, obj: Image, x: int, y: int, scale: float = 1.0) -> Image:
    out = base.copy()
    o = cv2.resize(obj, None, fx=scale, fy=scale) if scale != 1.0 else obj
    h, w = o.shape[:2]
    out[y : y + h, x : x + w] = o
    return out


# ---------------------------------------------------------------------------------------------
# Processes


def write_site(path: Path, prefix: str, cameras: dict[str, list[dict[str, Any]]]) -> Path:
    site = {
        "site": {"name": "端到端测试", "timezone": "Asia/Shanghai"},
        "mqtt": {"prefix": prefix},
        "cameras": [
            {
                "id": cam,
                "name": f"测试 {cam}",
                "source": "mqtt",
                "fps": FPS,
                "location": {"lat": 31.28, "lon": 121.45, "address": "大宁路 100号"},
                "zones": zones,
            }
            for cam, zones in cameras.items()
        ],
    }
    path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    return path


class Worker:
    """``gridpatrol detect`` in a subprocess; killed or stopped like a real deployment."""

    def __init__(
        self,
        workdir: Path,
        site: Path,
        broker_url: str,
        api: Any,
        shared: Path,
        args: tuple[str, ...] = (),
    ):
        self.log = workdir / "detect.log"
        self.site = site
        self.args = args
        self.env = {
            **os.environ,
            "GRIDPATROL_MQTT_URL": broker_url,
            "GRIDPATROL_API_URL": api.url,
            "GRIDPATROL_API_TOKEN": api.tokens["producer"],
            "GRIDPATROL_OUTBOX": str(workdir / "outbox-detect.db"),
            "GRIDPATROL_MODEL": str(shared / "models" / "yolo11n_int8_openvino_model"),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def metric(self, name: str, camera_id: str) -> int:
        """A per-camera counter from the worker's Prometheus endpoint (0 before it serves)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.TransportError:
            return 0
        pattern = rf'^gridpatrol_detect_{name}_total{{camera="{re.escape(camera_id)}"}} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0

    def frames_taken(self, camera_id: str) -> int:
        """Frames the worker took off the camera's slot (processed, not replaced)."""
        return self.metric("frames", camera_id)

    def start(self, status: StatusWatch) -> None:
        status.reset()
        cmd = [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(self.site)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--progress-s", "5", "--metrics-port", str(self.metrics_port), *self.args],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 90
        while not status.online():
            if self.proc.poll() is not None:
                raise RuntimeError(f"detect exited: {self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"detect did not come online: {self.text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(0.5)  # the frame subscriptions follow the online status on connect

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc = None
        return code

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


class StatusWatch:
    """Follows the worker's retained component status topic."""

    def __init__(self, conn: MqttConnection, prefix: str) -> None:
        self.sub = conn.subscribe(component_status_topic(prefix, "detect"), qos=1, maxsize=100)
        self.last = b""

    def reset(self) -> None:
        self.sub.drain()
        self.last = b""

    def latest(self) -> bytes:
        while (msg := self.sub.get(0.2)) is not None:
            self.last = msg.payload
        return self.last

    def online(self) -> bool:
        return self.latest() == b"online"


class Publisher:
    def __init__(self, conn: MqttConnection, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.seq: dict[str, int] = {}

    def send(self, camera_id: str, t: datetime, data: bytes, width: int, height: int) -> None:
        seq = self.seq.get(camera_id, 0)
        self.seq[camera_id] = seq + 1
        header = FrameHeader(ts=t, seq=seq, camera_id=camera_id, width=width, height=height)
        assert self.conn.publish(frame_topic(self.prefix, camera_id), encode_frame(header, data))

    def play(
        self,
        scenes: dict[str, list[bytes]],
        sizes: dict[str, tuple[int, int]],
        start: datetime,
        worker: Worker,
        offsets: list[float] | None = None,
    ) -> datetime:
        """Publish the cameras' frames interleaved at ``offsets`` seconds of frame time
        (default 1/FPS apart); return the time after the last one.

        Each step waits until the worker has taken the previous frames, so a loaded machine
        changes how long this takes, not which frames the worker sees.
        """
        length = max(len(frames) for frames in scenes.values())
        offsets = offsets or [k / FPS for k in range(length)]
        base = {cam: worker.frames_taken(cam) for cam in scenes}
        for k in range(length):
            t = start + timedelta(seconds=offsets[k])
            for cam, frames in scenes.items():
                if k < len(frames):
                    self.send(cam, t, frames[k], *sizes[cam])
            for cam, frames in scenes.items():
                want = base[cam] + min(k + 1, len(frames))
                wait_for(
                    f"camera {cam} frame {k}",
                    lambda c=cam, n=want: worker.frames_taken(c) >= n,
                    60,
                    worker,
                    poll_s=0.02,
                )
        return start + timedelta(seconds=offsets[length - 1] + 1 / FPS)


@dataclass
class Rig:
    """Broker, API and publisher of one test; workers it starts are stopped at the end."""

    tmp: Path
    shared: Path
    prefix: str
    broker_url: str
    api: Any
    publisher: Publisher
    status: StatusWatch
    workers: list[Worker] = field(default_factory=list)

    def worker(self, cameras: dict[str, list[dict[str, Any]]], *args: str, **env: str) -> Worker:
        site = write_site(self.tmp / "site.yaml", self.prefix, cameras)
        worker = Worker(self.tmp, site, self.broker_url, self.api, self.shared, args)
        worker.env.update(env)
        self.workers.append(worker)
        worker.start(self.status)
        return worker


@pytest.fixture
def rig(
    tmp_path: Path, shared_dir: Path, mosquitto: Any, mqtt_prefix: str, api_server: Any
) -> Iterator[Rig]:
    conn = MqttConnection("e2e-publisher", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    status = StatusWatch(conn, mqtt_prefix)
    assert conn.start(timeout=10)
    rig = Rig(
        tmp_path, shared_dir, mqtt_prefix, mosquitto.url, api_server,
        Publisher(conn, mqtt_prefix), status,
    )  # fmt: skip
    try:
        yield rig
    finally:
        for worker in rig.workers:
            if worker.proc is not None:
                worker.kill()
        conn.stop()


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, worker: Worker, poll_s: float = 0.3
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}; worker log:\n{worker.text()[-4000:]}"
            )
        time.sleep(poll_s)


def candidates(client: httpx.Client, camera_id: str) -> list[dict[str, Any]]:
    response = client.get("/candidates", params={"camera_id": camera_id, "limit": 100})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    full = []
    for item in items:
        got = client.get(f"/candidates/{item['id']}")
        got.raise_for_status()
        full.append(got.json())
    return sorted(full, key=lambda c: c["occurred_at"])


def wait_judged(worker: Worker, frames: dict[str, int]) -> None:
    """Wait until the worker has judged ``frames[camera]`` frames of each camera (inferred or
    skipped by the motion gate), then check it judged no more. A frame taken may still be in
    inference; a frame counted is judged before the worker can stop."""

    def judged(cam: str) -> int:
        return worker.metric("inferred_frames", cam) + worker.metric("skipped_frames", cam)

    wait_for(
        f"the worker to judge {frames} frames",
        lambda: all(judged(cam) >= n for cam, n in frames.items()),
        60,
        worker,
    )
    assert {cam: judged(cam) for cam in frames} == frames


def stop_delivered(worker: Worker) -> None:
    """Stop the worker and check its outbox is empty: every candidate operation it made has
    reached the API, so the API's candidates are all the worker will ever send."""
    assert worker.stop() == 0
    outbox = Outbox(worker.env["GRIDPATROL_OUTBOX"], None, component="detect")
    assert outbox.depth() == 0, outbox.stats()


def ended(client: httpx.Client, camera_id: str = "street") -> list[dict[str, Any]]:
    """The camera's candidates whose episode has ended."""
    return [c for c in candidates(client, camera_id) if "ended_at" in c["detection"]]


def two_candidates(client: httpx.Client, camera_id: str, worker: Worker) -> list[dict[str, Any]]:
    """The camera's candidates once there are two (the first and a second episode)."""
    return list(
        wait_for(
            f"a second candidate of {camera_id}",
            lambda: len(c := candidates(client, camera_id)) == 2 and c,
            60,
            worker,
        )
    )


def check_evidence(client: httpx.Client, candidate: dict[str, Any]) -> set[str]:
    """Every evidence hash is served by the API and re-hashes to itself; returns the kinds."""
    kinds = set()
    for item in candidate["evidence"]:
        response = client.get(f"/evidence/{item['sha256']}")
        assert response.status_code == 200, item
        assert hashlib.sha256(response.content).hexdigest() == item["sha256"]
        assert cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR) is not None
        assert item["width"] > 0 and item["height"] > 0 and item["captured_at"]
        kinds.add(item["kind"])
    return kinds


def check_camera_candidate(candidate: dict[str, Any], camera_id: str, type_: str) -> None:
    assert candidate["type"] == type_
    assert candidate["status"] == "new", candidate.get("missing_elements")
    source = candidate["source"]
    assert source["type"] == "camera" and source["system"] == "gridpatrol-detect"
    assert source["camera_id"] == camera_id
    assert re.fullmatch(rf"{camera_id}:[\w.-]+:{type_}:\d{{13}}", source["source_event_id"])
    det = candidate["detection"]
    assert det["model"] and det["model_version"] and len(det["model_sha256"]) == 64
    assert det["zone_id"] and det["dwell_s"] > 0 and 0 < det["score"] <= 1
    assert candidate["location"]["address"] == "大宁路 100号"


# ---------------------------------------------------------------------------------------------
# The pedestrian street: crowd episodes, and no vending


@pytest.fixture(scope="module")
def street(shared_dir: Path) -> list[Image]:
    return video_frames(shared_dir / "footage" / "pedestrian_street_1080p.mp4")


def crowd_zone(clear_s: float) -> dict[str, Any]:
    """The whole street, a crowd of five for 5 s; updates every 4 s of frame time."""
    params = {"min_persons": 5, "dwell_s": 5, "gap_s": 2, "clear_s": clear_s, "update_s": 4}
    return {"id": "whole-street", "polygon": WHOLE, "rules": {"crowd_gathering": params}}


def test_street_crowd_episodes_and_no_vending(
    rig: Rig,
    street: list[Image],
) -> None:
    vending = {"dwell_s": 3, "gap_s": 2, "clear_s": 3}
    market = {"id": "market", "polygon": WHOLE, "rules": {"street_vending": vending}}
    # No periodic progress lines in this run: the tally checked below is the one at stop.
    # "quiet" never sends a frame: its series must exist at 0 for the camera-offline alert.
    worker = rig.worker(
        {"street": [crowd_zone(clear_s=3), market], "quiet": []}, "--progress-s", "3600"
    )
    h, w = street[0].shape[:2]
    crowd = [jpeg(f) for f in street]  # 10 s of the street at 2 fps
    # The same street blurred beyond recognition: nobody is detected, the crowd is gone.
    empty = jpeg(cv2.GaussianBlur(street[0], (151, 151), 0))
    timeline = crowd + [empty] * 8 + crowd[:12]
    end = rig.publisher.play({"street": timeline}, {"street": (w, h)}, T0, worker)
    # A frame older than the last one (late delivery) is dropped, not judged.
    taken = worker.frames_taken("street")
    rig.publisher.send("street", end - timedelta(seconds=3), crowd[0], w, h)
    wait_for("the late frame", lambda: worker.frames_taken("street") > taken, 30, worker)
    assert worker.metric("dropped_frames", "street") == 1

    client = rig.api.client("reviewer")
    # The camera then sends nothing: 5 s (gap_s + clear_s) later the second episode ends too.
    found = wait_for(
        "two ended crowd candidates",
        lambda: len(c := ended(client)) >= 2 and c,
        60,
        worker,
    )
    # Nothing else may follow: every frame but the late one judged, everything delivered.
    wait_judged(worker, {"street": len(timeline)})
    taken = worker.frames_taken("street")
    metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
    stop_delivered(worker)
    found = candidates(client, "street")
    assert 'gridpatrol_detect_frames_total{camera="quiet"} 0.0\n' in metrics
    assert [c["type"] for c in found] == ["crowd_gathering", "crowd_gathering"], found
    first, second = found
    for cand in found:
        check_camera_candidate(cand, "street", "crowd_gathering")
        assert cand["detection"]["zone_id"] == "whole-street"
        assert cand["urgency"] == "immediate" and cand["severity"] == "MAJOR"
        assert "人群聚集" in cand["description"]
        kinds = check_evidence(client, cand)
        assert {"clean", "annotated", "first_seen", "latest"} <= kinds
    # The first episode was updated while it lasted, then ended; the second refers to it and
    # ended at its last sighting, the street's last frame, when the camera fell silent.
    assert first["detection"]["dwell_s"] >= 8
    assert "ended_at" in first["detection"]
    assert datetime.fromisoformat(second["detection"]["ended_at"]) == end - timedelta(seconds=0.5)
    assert second["references"] == [first["id"]]
    occurred = datetime.fromisoformat(first["occurred_at"])
    assert T0 <= occurred <= T0 + timedelta(seconds=3)
    # First-seen is the frame where the crowd began; the annotated frame is full resolution.
    by_kind = {e["kind"]: e for e in first["evidence"]}
    assert datetime.fromisoformat(by_kind["first_seen"]["captured_at"]) == occurred
    assert (by_kind["annotated"]["width"], by_kind["annotated"]["height"]) == (w, h)
    annotated = client.get(f"/evidence/{by_kind['annotated']['sha256']}").content
    drawn = cv2.imdecode(np.frombuffer(annotated, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (h, w, 3)
    log = worker.text()
    assert "street_vending raise" not in log
    # The worker's final tally, logged at stop however short the run.
    tally = re.findall(r"camera street: (\d+) frames in, .*, (\d+) dropped, .* (\d+) cand", log)
    assert tally[-1] == (str(taken), "1", "2")
    # 16:9 frames were inferred on the rectangular model input, not the square one.
    assert "compiled for a 640×384 input" in log


@dataclass
class CrowdEpisode:
    """A worker that has raised one crowd candidate on 7 s of the street (clear_s 10 unless
    said otherwise); the crowd shows in every frame."""

    worker: Worker
    crowd: list[bytes]
    size: dict[str, tuple[int, int]]
    end: datetime
    client: httpx.Client
    first: dict[str, Any]


def start_crowd_episode(rig: Rig, street: list[Image], clear_s: float = 10) -> CrowdEpisode:
    worker = rig.worker({"street": [crowd_zone(clear_s=clear_s)]})
    h, w = street[0].shape[:2]
    crowd = [jpeg(f) for f in street]
    size = {"street": (w, h)}
    end = rig.publisher.play({"street": crowd[:14]}, size, T0, worker)
    client = rig.api.client("reviewer")
    (first,) = wait_for("the crowd candidate", lambda: candidates(client, "street"), 60, worker)
    return CrowdEpisode(worker, crowd, size, end, client, first)


def assert_ended_at_last_sighting(ep: CrowdEpisode) -> None:
    """The episode's candidate, the only one, ends where it was last seen before the worker
    lost it, and keeps the boxes of its evidence."""
    (ended,) = wait_for(
        "the episode to end",
        lambda: [c for c in candidates(ep.client, "street") if "ended_at" in c["detection"]],
        60,
        ep.worker,
    )
    assert ep.worker.stop() == 0
    assert [c["id"] for c in candidates(ep.client, "street")] == [ep.first["id"]]
    ended_at = datetime.fromisoformat(ended["detection"]["ended_at"])
    assert datetime.fromisoformat(ep.first["occurred_at"]) < ended_at < ep.end
    assert ended["detection"]["boxes"] == ep.first["detection"]["boxes"]


def test_restart_mid_episode_makes_no_duplicate(
    rig: Rig,
    street: list[Image],
) -> None:
    ep = start_crowd_episode(rig, street)
    worker, client, first, size, end = ep.worker, ep.client, ep.first, ep.size, ep.end
    # A second worker on the same outbox file would send everything twice: it is refused.
    (rig.tmp / "twin").mkdir()
    twin = Worker(rig.tmp / "twin", worker.site, rig.broker_url, rig.api, rig.shared)
    twin.env["GRIDPATROL_OUTBOX"] = worker.env["GRIDPATROL_OUTBOX"]
    with pytest.raises(RuntimeError, match=r"outbox-detect\.db is in use by another process"):
        twin.start(rig.status)

    worker.kill()  # mid-episode, no chance to flush or say goodbye
    worker.start(rig.status)
    assert "1 open episode(s) reloaded" in worker.text()
    # The crowd stays, seen in other frames of the street than those that raised it.
    rig.publisher.play({"street": ep.crowd[5:21]}, size, end, worker)

    updated = wait_for(
        "the episode to continue on the same candidate",
        lambda: [c for c in candidates(client, "street") if c["detection"]["dwell_s"] >= 10],
        60,
        worker,
    )
    assert worker.stop() == 0
    assert [c["id"] for c in candidates(client, "street")] == [first["id"]]
    assert updated[0]["source"]["source_event_id"] == first["source"]["source_event_id"]
    assert "ended_at" not in updated[0]["detection"]
    # The best confidence is kept with the episode: after the restart a frame sends a new
    # clean frame, with its boxes, only when it beats the first's. Which frames the worker
    # infers depends on the machine's speed, so either may happen here; otherwise the clean
    # frame and the boxes stay the first ones (the worker no longer knew the boxes: it sent
    # none, and the API kept them).
    first_clean = [e["sha256"] for e in first["evidence"] if e["kind"] == "clean"]
    clean = [e["sha256"] for e in updated[0]["evidence"] if e["kind"] == "clean"]
    beaten = updated[0]["detection"]["score"] > first["detection"]["score"]
    assert clean[: len(first_clean)] == first_clean
    assert (len(clean) > len(first_clean), beaten) in {(False, False), (True, True)}
    assert (updated[0]["detection"]["boxes"] == first["detection"]["boxes"]) is not beaten


def test_a_short_occlusion_after_a_restart_keeps_one_candidate(
    rig: Rig,
    street: list[Image],
) -> None:
    """Raised, killed, restarted while the crowd stays: the rule times its dwell afresh, and
    an occlusion 14 s after the restart, ending more than gap_s + clear_s + update_s after the
    sighting saved before the kill, neither ends the episode nor opens a second one."""
    params = {"min_persons": 5, "dwell_s": 20, "gap_s": 2, "clear_s": 10, "update_s": 3}
    zone = {"id": "whole-street", "polygon": WHOLE, "rules": {"crowd_gathering": params}}
    worker = rig.worker({"street": [zone]})
    h, w = street[0].shape[:2]
    size = {"street": (w, h)}
    crowd = [jpeg(street[k % len(street)]) for k in range(200)]
    blur = jpeg(cv2.GaussianBlur(street[0], (151, 151), 0))
    end = rig.publisher.play({"street": crowd[:48]}, size, T0, worker)  # 24 s
    client = rig.api.client("reviewer")
    (first,) = wait_for("the crowd candidate", lambda: candidates(client, "street"), 60, worker)

    worker.kill()
    worker.start(rig.status)
    assert "1 open episode(s) reloaded" in worker.text()
    # Crowd 14 s, nobody 5 s, crowd 25 s (the rule raises again after 20 s of it).
    scene = crowd[48:76] + [blur] * 10 + crowd[76:126]
    rig.publisher.play({"street": scene}, size, end, worker)

    def continued_or_second() -> list[dict[str, Any]]:
        found = candidates(client, "street")
        if any(c["id"] != first["id"] for c in found):
            return found
        return [c for c in found if c["detection"]["dwell_s"] >= 40]

    wait_for("the episode to continue past the occlusion", continued_or_second, 60, worker)
    assert worker.stop() == 0
    (only,) = candidates(client, "street")
    assert only["id"] == first["id"]
    assert "ended_at" not in only["detection"]


def test_an_episode_left_open_by_a_restart_ends_when_it_does_not_come_back(
    rig: Rig,
    street: list[Image],
) -> None:
    ep = start_crowd_episode(rig, street)
    worker, first, size, end = ep.worker, ep.first, ep.size, ep.end

    worker.kill()  # mid-episode; the crowd leaves while the worker is down
    worker.start(rig.status)
    assert "1 open episode(s) reloaded" in worker.text()
    empty = jpeg(cv2.GaussianBlur(street[0], (151, 151), 0))
    # 40 s of an empty street, a frame every 2 s: well past gap_s + clear_s + update_s (16 s).
    offsets = [2.0 * k for k in range(20)]
    rig.publisher.play({"street": [empty] * 20}, size, end, worker, offsets)

    assert_ended_at_last_sighting(ep)
    assert f"ended candidate {first['id']} (crowd_gathering in zone whole-street)" in worker.text()


def test_a_camera_that_stops_sending_frames_ends_its_episode(rig: Rig, street: list[Image]) -> None:
    """No frame clears an episode of a camera that died: it ends at its last sighting once
    the camera has been silent for gap_s + clear_s (2 + 3 s), also after a restart."""
    ep = start_crowd_episode(rig, street, clear_s=3)
    worker, client, first = ep.worker, ep.client, ep.first
    (gone,) = wait_for("the silent camera's episode to end", lambda: ended(client), 30, worker)
    assert gone["id"] == first["id"]
    # The crowd was in the last frame, half a second before the end of the footage.
    last_sighting = ep.end - timedelta(seconds=0.5)
    assert datetime.fromisoformat(gone["detection"]["ended_at"]) == last_sighting
    assert gone["detection"]["dwell_s"] == 6.5
    assert (
        "boxes" in gone["detection"] and gone["detection"]["boxes"] == first["detection"]["boxes"]
    )
    (silence,) = re.findall(
        rf"camera street has sent no frame for (\d+) s: ended candidate {first['id']} "
        rf"\(crowd_gathering in zone whole-street\) at its last sighting "
        + re.escape(last_sighting.isoformat()),
        worker.text(),
    )
    assert int(silence) >= 5  # ended only after gap_s + clear_s of silence

    # The camera comes back where it stopped (a paused source): the crowd is a new episode,
    # with a dwell of its own.
    again = rig.publisher.play({"street": ep.crowd[:14]}, ep.size, ep.end, worker)
    found = two_candidates(client, "street", worker)
    second = found[1]
    assert second["references"] == [first["id"]]
    assert datetime.fromisoformat(second["occurred_at"]) == ep.end
    assert "ended_at" not in second["detection"]

    # Killed, restarted while the camera stays dark: the reloaded episode ends too, at the
    # last sighting its book knows (its raise, 5 s into the crowd).
    worker.kill()
    worker.start(rig.status)
    assert "1 open episode(s) reloaded" in worker.text()
    wait_for("the reloaded episode to end", lambda: len(ended(client)) == 2, 30, worker)
    assert worker.stop() == 0
    by_id = {c["id"]: c for c in candidates(client, "street")}
    assert len(by_id) == 2
    ended_at = datetime.fromisoformat(by_id[second["id"]]["detection"]["ended_at"])
    assert ended_at == ep.end + timedelta(seconds=5)
    assert again == ep.end + timedelta(seconds=7)


def test_a_broker_outage_longer_than_the_silence_window_ends_no_episode(
    rig: Rig, street: list[Image], mosquitto: Any
) -> None:
    """The broker is down for 15 s while the crowd's episode is open, longer than its rule's
    gap_s + clear_s (2 + 10 s): the worker's own connection was down, so no camera was silent.
    The crowd's frames come again once it is back: the episode goes on, on its candidate."""
    ep = start_crowd_episode(rig, street)
    worker, client, first = ep.worker, ep.client, ep.first
    mosquitto.stop()
    wait_for("the worker to lose the broker", lambda: "disconnected from" in worker.text(), 30,
             worker)  # fmt: skip
    time.sleep(15)  # the outage
    mosquitto.start()
    # The retained "online" outlived the broker's restart: the log says when the worker is back.
    wait_for("the worker to reconnect", lambda: worker.text().count(": connected to ") >= 2, 90,
             worker)  # fmt: skip
    # A fresh publisher: the fixture's one may wait out its reconnection backoff.
    fresh = MqttConnection("e2e-after", MqttSettings.from_url(mosquitto.url), prefix=rig.prefix)
    assert fresh.start(timeout=10)
    try:
        rig.publisher.conn = fresh
        rig.publisher.play({"street": ep.crowd[5:21]}, ep.size, ep.end, worker)
        wait_for(
            "the episode to continue on the same candidate",
            lambda: [c for c in candidates(client, "street") if c["detection"]["dwell_s"] >= 10],
            60,
            worker,
        )
    finally:
        fresh.stop()
    assert [(c["id"], "ended_at" in c["detection"]) for c in candidates(client, "street")] == [
        (first["id"], False)
    ]
    assert "sent no frame" not in worker.text()
    assert worker.stop() == 0


def test_a_rejected_candidate_gets_no_more_updates(rig: Rig, street: list[Image]) -> None:
    """A reviewer rejects the candidate while its crowd stays: the API answers the next
    update 410 Gone, and the worker sends none after it, nor a second candidate."""
    ep = start_crowd_episode(rig, street)
    worker, client, first = ep.worker, ep.client, ep.first
    response = client.post(
        f"/candidates/{first['id']}/review",
        json={"decision": "reject", "reason_code": "false_positive"},
    )
    assert response.status_code == 200, response.text
    refused = f"outbox detect: API refused patch {first['id']}: HTTP 410"
    # Until the update at 9 s (update_s 4 after the raise at 5 s), which the API refuses.
    end = rig.publisher.play({"street": ep.crowd[14:20]}, ep.size, ep.end, worker)
    wait_for("the update's refusal", lambda: refused in worker.text(), 30, worker)
    # The crowd stays 8 s more: updates at 13 and 17 s would follow.
    rig.publisher.play({"street": ep.crowd[:16]}, ep.size, end, worker)
    closed = (
        f"camera street: candidate {first['id']} (crowd_gathering in zone whole-street) takes "
        "no more updates (the API refused it for good); its episode is followed without "
        "reporting"
    )
    wait_for("the worker to stop updating", lambda: closed in worker.text(), 30, worker)
    assert worker.stop() == 0
    text = worker.text()
    assert text.count(refused) == 1 and text.count(closed) == 1
    assert text.count(f"updated candidate {first['id']}") == 1  # the refused one at 9 s
    (rejected,) = candidates(client, "street")
    assert rejected["status"] == "rejected" and rejected["detection"]["dwell_s"] == 5.0


def test_an_episode_of_a_camera_moved_off_the_worker_ends(rig: Rig, street: list[Image]) -> None:
    ep = start_crowd_episode(rig, street)
    worker, first = ep.worker, ep.first

    # The outbox file stays, its worker now serves another camera (--cameras changed, its
    # component id kept): no rule here will ever follow the street's episode again.
    worker.kill()
    write_site(worker.site, rig.prefix, {"street": [crowd_zone(clear_s=10)], "square": []})
    worker.args = ("--cameras", "square", "--component-id", "detect")
    worker.start(rig.status)
    assert_ended_at_last_sighting(ep)
    text = worker.text()
    assert "0 open episode(s) reloaded" in text
    assert (
        f"camera street is not served by this worker any more: its candidate {first['id']} "
        f"(crowd_gathering in zone whole-street) ended at its last sighting"
    ) in text


def test_a_camera_clock_stepping_back_ends_its_episodes(rig: Rig, street: list[Image]) -> None:
    ep = start_crowd_episode(rig, street)
    worker, client, first = ep.worker, ep.client, ep.first

    # The camera is resynchronised an hour back while the crowd is still there.
    back = T0 - timedelta(hours=1)
    rig.publisher.play({"street": ep.crowd[:14]}, ep.size, back, worker)
    found = two_candidates(client, "street", worker)
    assert worker.stop() == 0
    by_id = {c["id"]: c for c in found}
    old = by_id.pop(first["id"])
    (new,) = by_id.values()
    # The old episode ended where its rule last saw the crowd on the old clock, the last frame
    # before the jump (not at its raise at 5 s, the last event its book knew: no update came
    # since, update_s 4); the new one refers to it.
    last_sighting = ep.end - timedelta(seconds=0.5)
    occurred = datetime.fromisoformat(old["occurred_at"])
    assert datetime.fromisoformat(old["detection"]["ended_at"]) == last_sighting
    assert old["detection"]["dwell_s"] == (last_sighting - occurred).total_seconds()
    assert new["references"] == [first["id"]]
    assert back <= datetime.fromisoformat(new["occurred_at"]) < back + timedelta(seconds=3)
    assert "clock went back 3606 s; its rules start over" in worker.text()


def test_one_frame_off_the_camera_clock_changes_nothing(rig: Rig, street: list[Image]) -> None:
    """A lone frame stamped 120 s ahead between frames on the camera's clock is refused (dead
    letter), not taken for a clock jump: the episode goes on, nothing ends or re-raises."""
    ep = start_crowd_episode(rig, street)
    worker, client, first = ep.worker, ep.client, ep.first
    dead = rig.publisher.conn.subscribe(f"{rig.prefix}/deadletter/detect", qos=1)
    time.sleep(0.3)
    w, h = ep.size["street"]
    outlier = ep.end + timedelta(seconds=119.5)  # 120 s after the last frame
    taken = worker.frames_taken("street")
    rig.publisher.send("street", outlier, ep.crowd[14], w, h)
    wait_for("the outlier frame", lambda: worker.frames_taken("street") > taken, 30, worker)
    rig.publisher.play({"street": ep.crowd[:16]}, ep.size, ep.end, worker)

    letter = wait_for("the outlier's dead letter", lambda: dead.get(0.1), 30, worker)
    body = json.loads(letter.payload)
    assert (body["reason"], body["error"]) == (
        "clock_outlier",
        f"frame time {outlier.isoformat()} is 120 s ahead of the camera's frames before and "
        "after it",
    )
    (updated,) = wait_for(
        "the episode's update at 13 s",
        lambda: [c for c in candidates(client, "street") if c["detection"]["dwell_s"] == 13.0],
        30,
        worker,
    )
    assert updated["id"] == first["id"] and "ended_at" not in updated["detection"]
    # Nothing else may follow: every frame but the outlier judged, everything delivered.
    wait_judged(worker, {"street": 14 + 16})
    assert worker.metric("bad_frames", "street") == 1
    stop_delivered(worker)
    assert [c["id"] for c in candidates(client, "street")] == [first["id"]]
    assert "ended_at" not in candidates(client, "street")[0]["detection"]
    text = worker.text()
    assert "clock went" not in text and "rules start over" not in text
    assert "sent to the dead-letter topic" in text


def test_a_camera_turned_on_its_side_is_judged_as_stored(
    rig: Rig, street: list[Image], with_orientation: Callable[[bytes, int], bytes]
) -> None:
    """An HTTP snapshot camera's JPEGs carry EXIF Orientation=6: the worker judges the pixels
    as stored, the size the header gives, so boxes and evidence match its upright twin's. A
    header whose size is not the JPEG's own is refused."""
    worker = rig.worker({cam: [crowd_zone(clear_s=10)] for cam in ("upright", "turned")})
    dead = rig.publisher.conn.subscribe(f"{rig.prefix}/deadletter/detect", qos=1)
    time.sleep(0.3)
    h, w = street[0].shape[:2]
    crowd = [jpeg(f) for f in street[:14]]
    turned = [with_orientation(data, 6) for data in crowd]
    rig.publisher.send("turned", T0 - timedelta(seconds=1), turned[0], 2 * w, 2 * h)
    letter = wait_for("the lying header's dead letter", lambda: dead.get(0.1), 30, worker)
    body = json.loads(letter.payload)
    assert (body["reason"], body["error"]) == (
        "size_mismatch",
        f"the header says {2 * w}x{2 * h}, the JPEG is {w}x{h}",
    )
    scenes = {"upright": crowd, "turned": turned}
    rig.publisher.play(scenes, {"upright": (w, h), "turned": (w, h)}, T0, worker)
    client = rig.api.client("reviewer")
    (upright,), (side,) = wait_for(
        "a candidate of each camera",
        lambda: all(found := [candidates(client, cam) for cam in scenes]) and found,
        60,
        worker,
    )
    assert worker.stop() == 0
    assert side["detection"]["boxes"] == upright["detection"]["boxes"]
    assert all(x2 <= w and y2 <= h for _, _, x2, y2 in side["detection"]["boxes"])
    by_kind = {e["kind"]: e for e in side["evidence"]}
    clean = client.get(f"/evidence/{by_kind['clean']['sha256']}").content
    assert clean in turned  # the camera's bytes, EXIF and all
    annotated = client.get(f"/evidence/{by_kind['annotated']['sha256']}").content
    assert (by_kind["annotated"]["width"], by_kind["annotated"]["height"]) == (w, h)
    drawn = cv2.imdecode(np.frombuffer(annotated, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (h, w, 3)


def test_evidence_over_the_cap_is_re_encoded_to_fit(rig: Rig, street: list[Image]) -> None:
    """Frames larger than GRIDPATROL_EVIDENCE_MAX_BYTES (here 150 kB, the street's JPEGs are
    larger) go as smaller re-encodings of the same size: the candidate is complete, every hash
    is that of the bytes sent."""
    cap = 150_000
    worker = rig.worker(
        {"street": [crowd_zone(clear_s=10)]}, GRIDPATROL_EVIDENCE_MAX_BYTES=str(cap)
    )
    h, w = street[0].shape[:2]
    crowd = [jpeg(f, quality=95) for f in street[:14]]
    assert min(len(data) for data in crowd) > cap
    rig.publisher.play({"street": crowd}, {"street": (w, h)}, T0, worker)
    client = rig.api.client("reviewer")
    (found,) = wait_for("the crowd candidate", lambda: candidates(client, "street"), 60, worker)
    assert worker.stop() == 0
    check_camera_candidate(found, "street", "crowd_gathering")  # complete: status new
    assert {"clean", "annotated", "first_seen", "latest"} <= check_evidence(client, found)
    sent = {hashlib.sha256(data).hexdigest() for data in crowd}
    for item in found["evidence"]:
        data = client.get(f"/evidence/{item['sha256']}").content
        assert len(data) <= cap and item["sha256"] not in sent
        assert (item["width"], item["height"]) == (w, h)


# ---------------------------------------------------------------------------------------------
# Composed scenes for the other rules (docs/detectors.md, "End-to-end scenes")


def test_a_min_confidence_below_the_detectors_default_takes_effect(rig: Rig) -> None:
    """One still of the street shows 21 people at confidence 0.1 or more but only 14 at 0.25
    (the detector's default): a crowd rule with ``min_confidence: 0.1`` that wants 19 raises."""
    still = frame_at(rig.shared / "footage" / "pedestrian_street_1080p.mp4", 15)
    params = {"min_persons": 19, "min_confidence": 0.1, "dwell_s": 3, "gap_s": 2, "clear_s": 10}
    zone = {"id": "whole-street", "polygon": WHOLE, "rules": {"crowd_gathering": params}}
    worker = rig.worker({"street": [zone]})
    size = {"street": (still.shape[1], still.shape[0])}
    rig.publisher.play({"street": [jpeg(still)] * 10}, size, T0, worker)
    client = rig.api.client("reviewer")
    (found,) = wait_for("the crowd candidate", lambda: candidates(client, "street"), 60, worker)
    assert worker.stop() == 0
    assert found["type"] == "crowd_gathering"
    # The persons the rule counted, weak ones included.
    assert len(found["detection"]["boxes"]) >= 19


def compose_scenes(shared_dir: Path) -> dict[str, tuple[Image, Image]]:
    """Static camera scenes built from real frames: (before, after) an object appears."""
    footage = shared_dir / "footage"
    road = cv2.resize(frame_at(footage / "car_park_overhead.mp4", 0), (1280, 720))
    car = crop(frame_at(footage / "car_park_people_bikes.mp4", 30), (38, 37, 142, 118))
    bike = crop(frame_at(footage / "pedestrian_street_1080p.mp4", 30), (779, 539, 938, 711))
    board = crop(frame_at(footage / "pedestrian_street_1080p.mp4", 180), (608, 234, 810, 418))
    garbage_dir = shared_dir / "datasets" / "garbage_dev" / "garbage"
    bags = cv2.resize(cv2.imread(str(sorted(garbage_dir.glob("*.jpg"))[0])), (360, 270))
    bikes = road
    for x, y in ((300, 400), (500, 420), (700, 400)):
        bikes = paste(bikes, bike, x, y)
    return {
        "parking": (road, paste(road, car, 500, 300, 1.5)),
        "bikes": (road, bikes),
        "shop": (road, paste(paste(road, board, 200, 380, 1.2), board, 900, 350, 1.2)),
        "piled": (road, paste(road, bags, 420, 380)),
    }


# Frame times: the empty scene every 5 s for a minute (the background model learns it), then
# the object held for 30 s at one frame a second.
LEARN_STEPS, HOLD_STEPS = 12, 30
TIMELINE = [5.0 * k for k in range(LEARN_STEPS)] + [60.0 + k for k in range(HOLD_STEPS)]


COMPOSED_ZONES: dict[str, tuple[str, dict[str, Any]]] = {
    "parking": ("illegal_parking", {"dwell_s": 4, "gap_s": 3, "clear_s": 10}),
    "bikes": (
        "non_motor_parking",
        {"dwell_s": 4, "gap_s": 3, "clear_s": 10, "min_count": 2},
    ),
    "shop": (
        "shop_front_occupation",
        {"dwell_s": 3, "gap_s": 3, "clear_s": 10, "learn_s": 120, "min_area": 0.01},
    ),
    "piled": (
        "piled_materials",
        {"dwell_s": 3, "gap_s": 3, "clear_s": 10, "learn_s": 120, "min_area": 0.02},
    ),
}


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "no-gate"])
def test_composed_scenes_raise_the_other_rules(rig: Rig, gate: bool) -> None:
    """Without the gate every frame is inferred; the background-model rules (shop front,
    piled materials) must still get the small grayscale copy they learn from."""
    worker = rig.worker(
        {
            cam: [{"id": f"{cam}-zone", "polygon": WHOLE, "rules": {rule: params}}]
            for cam, (rule, params) in COMPOSED_ZONES.items()
        },
        *(() if gate else ("--no-motion-gate",)),
    )
    # Bad input goes to the dead-letter topic and the worker carries on.
    dead = rig.publisher.conn.subscribe(f"{rig.prefix}/deadletter/detect", qos=1)
    time.sleep(0.3)
    assert rig.publisher.conn.publish(frame_topic(rig.prefix, "parking"), b"not a frame")
    letter = wait_for("a dead letter", lambda: dead.get(0.1), 30, worker)
    body = json.loads(letter.payload)
    assert (body["reason"], body["error"], body["topic"]) == (
        "bad_magic",
        "starts with b'not '",
        frame_topic(rig.prefix, "parking"),
    )
    assert worker.metric("bad_frames", "parking") == 1
    # A frame timed a day ahead (a camera clock gone wrong) would end every episode.
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    rig.publisher.send("parking", tomorrow, jpeg(np.zeros((72, 128, 3), np.uint8)), 128, 72)
    letter = wait_for("a second dead letter", lambda: dead.get(0.1), 30, worker)
    body = json.loads(letter.payload)
    assert body["reason"] == "future_ts"
    assert re.fullmatch(
        rf"frame time {tomorrow:%Y-%m-%dT%H:%M}:\S+ is 86[34]\d\d s after its reception",
        body["error"],
    )
    assert worker.metric("bad_frames", "parking") == 2

    composed = compose_scenes(rig.shared)
    scenes = {
        cam: [jpeg(before)] * LEARN_STEPS + [jpeg(after)] * HOLD_STEPS
        for cam, (before, after) in composed.items()
    }
    sizes = {cam: (after.shape[1], after.shape[0]) for cam, (_, after) in composed.items()}
    rig.publisher.play(scenes, sizes, T0, worker, offsets=TIMELINE)

    client = rig.api.client("reviewer")
    wait_for(
        "one candidate per composed scene",
        lambda: all(candidates(client, cam) for cam in COMPOSED_ZONES),
        60,
        worker,
    )
    # Every frame but the dead letters is judged, inferred or skipped.
    wait_judged(worker, dict.fromkeys(COMPOSED_ZONES, LEARN_STEPS + HOLD_STEPS))
    # Static scenes: the motion gate skips most frames, keyframes keep the dwell going.
    for cam in COMPOSED_ZONES:
        inferred = worker.metric("inferred_frames", cam)
        skipped = worker.metric("skipped_frames", cam)
        if gate:
            assert 0 < inferred <= 0.3 * (LEARN_STEPS + HOLD_STEPS), (cam, inferred)
        else:
            assert skipped == 0, (cam, skipped)
    assert worker.stop() == 0
    assert rig.status.latest() == b"offline"
    for cam, (rule, _) in COMPOSED_ZONES.items():
        found = candidates(client, cam)
        assert [c["type"] for c in found] == [rule], (cam, found)
        check_camera_candidate(found[0], cam, rule)
        assert found[0]["urgency"] == "normal"
        assert {"clean", "annotated", "first_seen", "latest"} <= check_evidence(client, found[0])


def test_garbage_photo_as_a_static_camera(rig: Rig) -> None:
    """The shipped garbage head on a whole-frame zone: garbage beside a container raises,
    a clean container does not; the clean evidence is the camera's JPEG byte for byte."""
    photos = rig.shared / "datasets" / "garbage_dev"
    shots = {
        "bins-dirty": (photos / "garbage" / "ams_mdc_photo_cdv_photo_158_1463528949521.jpg"),
        "bins-clean": next((photos / "clean").glob("*1513890566013.jpg")),
    }
    rule = {"dwell_s": 3, "gap_s": 3, "clear_s": 10}
    worker = rig.worker(
        {
            cam: [{"id": "bins", "polygon": WHOLE, "rules": {"garbage_overflow": rule}}]
            for cam in shots
        }
    )
    data = {cam: path.read_bytes() for cam, path in shots.items()}
    sizes = {}
    for cam, raw in data.items():
        h, w = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        sizes[cam] = (w, h)
    steps = 12
    rig.publisher.play(
        {cam: [raw] * steps for cam, raw in data.items()},
        sizes,
        T0,
        worker,
        offsets=[float(k) for k in range(steps)],
    )
    client = rig.api.client("reviewer")
    (found,) = wait_for(
        "the garbage candidate", lambda: candidates(client, "bins-dirty"), 60, worker
    )
    # The clean container raises nothing: every frame judged, everything delivered.
    wait_judged(worker, dict.fromkeys(shots, steps))
    stop_delivered(worker)
    assert candidates(client, "bins-clean") == []
    check_camera_candidate(found, "bins-dirty", "garbage_overflow")
    assert found["urgency"] == "normal" and found["severity"] == "MINOR"
    assert {"clean", "annotated", "first_seen", "latest"} <= check_evidence(client, found)
    clean = [e for e in found["evidence"] if e["kind"] == "clean"]
    assert [e["sha256"] for e in clean] == [hashlib.sha256(data["bins-dirty"]).hexdigest()]
    assert (clean[0]["width"], clean[0]["height"]) == sizes["bins-dirty"]


def test_a_restart_keeps_what_the_zone_normally_looks_like(rig: Rig) -> None:
    """A pile is raised, the worker restarts, the pile is taken away: the candidate ends, and
    the road it uncovers is not taken for a pile of its own (the background was saved)."""
    rule, params = COMPOSED_ZONES["piled"]
    worker = rig.worker({"piled": [{"id": "lane", "polygon": WHOLE, "rules": {rule: params}}]})
    before, after = compose_scenes(rig.shared)["piled"]
    size = {"piled": (after.shape[1], after.shape[0])}
    scenes = {"piled": [jpeg(before)] * LEARN_STEPS + [jpeg(after)] * HOLD_STEPS}
    end = rig.publisher.play(scenes, size, T0, worker, offsets=TIMELINE)
    client = rig.api.client("reviewer")
    (first,) = wait_for("the pile candidate", lambda: candidates(client, "piled"), 60, worker)

    assert worker.stop() == 0
    worker.start(rig.status)
    assert "camera piled: 1 saved background model(s) restored" in worker.text()
    # The pile stays a few more seconds, then the road is clear for a minute.
    scenes = {"piled": [jpeg(after)] * 5 + [jpeg(before)] * 60}
    rig.publisher.play(scenes, size, end, worker, offsets=[float(k) for k in range(65)])
    (ended,) = wait_for(
        "the pile candidate to end",
        lambda: [c for c in candidates(client, "piled") if "ended_at" in c["detection"]],
        60,
        worker,
    )
    # Nothing else may follow: every frame since the restart judged, everything delivered.
    wait_judged(worker, {"piled": 65})
    stop_delivered(worker)
    assert ended["id"] == first["id"]
    assert [c["id"] for c in candidates(client, "piled")] == [first["id"]]


def test_a_pile_dumped_while_the_camera_was_silent_is_raised(rig: Rig) -> None:
    """The road is learned, the camera sends nothing for two hours, then shows a pile: the
    first frame after the silence is not taken for what the zone normally looks like."""
    rule, params = COMPOSED_ZONES["piled"]
    worker = rig.worker({"piled": [{"id": "lane", "polygon": WHOLE, "rules": {rule: params}}]})
    before, after = compose_scenes(rig.shared)["piled"]
    size = {"piled": (after.shape[1], after.shape[0])}
    learned = [5.0 * k for k in range(LEARN_STEPS)]
    later = [7200.0 + k for k in range(HOLD_STEPS)]
    scenes = {"piled": [jpeg(before)] * LEARN_STEPS + [jpeg(after)] * HOLD_STEPS}
    rig.publisher.play(scenes, size, T0, worker, offsets=learned + later)
    client = rig.api.client("reviewer")
    (found,) = wait_for("the pile candidate", lambda: candidates(client, "piled"), 60, worker)
    assert worker.stop() == 0
    assert [c["type"] for c in candidates(client, "piled")] == [rule]
    assert datetime.fromisoformat(found["occurred_at"]) > T0 + timedelta(seconds=7200)


def test_a_camera_clock_stepping_back_keeps_what_the_zone_normally_looks_like(rig: Rig) -> None:
    """A pile is raised, the camera's clock steps back an hour while the pile is still there:
    the rules start over, but the background model still knows the road, so the pile is
    raised again on the new clock (it is not taken for the road)."""
    rule, params = COMPOSED_ZONES["piled"]
    worker = rig.worker({"piled": [{"id": "lane", "polygon": WHOLE, "rules": {rule: params}}]})
    before, after = compose_scenes(rig.shared)["piled"]
    size = {"piled": (after.shape[1], after.shape[0])}
    scenes = {"piled": [jpeg(before)] * LEARN_STEPS + [jpeg(after)] * HOLD_STEPS}
    rig.publisher.play(scenes, size, T0, worker, offsets=TIMELINE)
    client = rig.api.client("reviewer")
    (first,) = wait_for("the pile candidate", lambda: candidates(client, "piled"), 60, worker)

    back = T0 - timedelta(hours=1)
    scenes = {"piled": [jpeg(after)] * 10}
    rig.publisher.play(scenes, size, back, worker, offsets=[float(k) for k in range(10)])
    found = two_candidates(client, "piled", worker)
    assert worker.stop() == 0
    old, new = sorted(found, key=lambda c: c["id"] != first["id"])
    assert "ended_at" in old["detection"] and "ended_at" not in new["detection"]
    assert new["references"] == [first["id"]]
    # The jump is taken on its second frame, which starts the new episode.
    assert datetime.fromisoformat(new["occurred_at"]) == back + timedelta(seconds=1)
    assert "clock went back 3688 s; its rules start over" in worker.text()
