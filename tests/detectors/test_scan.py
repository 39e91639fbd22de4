"""``gridpatrol scan`` through its command line: stills, folders, videos, site rules, errors."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pytest
import ultralytics
import yaml

from gridpatrol.detectors.heads import HEADS_DIR
from gridpatrol.detectors.models import load_backend, model_info, resolve_model
from gridpatrol.detectors.scan import load_heads

ASSETS = Path(ultralytics.__file__).parent / "assets"
REPO = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((REPO / "models" / "manifest.yaml").read_text())
YOLO11N_SHA = MANIFEST["models"]["yolo11n"]["sha256"]["yolo11n.bin"]


def scan(*args: str, cwd: Path | None = None) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING", "scan", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, records, proc.stderr


def street_frame(shared_dir: Path, index: int = 0) -> np.ndarray:
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return np.asarray(frame, dtype=np.uint8)


@pytest.fixture(scope="module")
def stills(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder tree: bus.jpg at the top, zidane as PNG two levels down, and a text file."""
    root = tmp_path_factory.mktemp("stills")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "bus.jpg").write_bytes((ASSETS / "bus.jpg").read_bytes())
    zidane = cv2.imread(str(ASSETS / "zidane.jpg"))
    cv2.imwrite(str(root / "nested" / "deeper" / "zidane.png"), zidane)
    (root / "nested" / "notes.txt").write_text("not an image")
    return root


def test_folder_is_scanned_recursively_one_record_per_image(stills: Path) -> None:
    code, records, stderr = scan(str(stills))
    assert code == 0, stderr
    assert [Path(r["source"]).name for r in records] == ["bus.jpg", "zidane.png"]
    bus, zidane = records
    assert set(bus) >= {"source", "frame", "ts", "width", "height", "detections", "scene"}
    assert (bus["frame"], bus["ts"], bus["width"], bus["height"]) == (0, None, 810, 1080)
    assert (zidane["width"], zidane["height"]) == (1280, 720)
    assert bus["model"] == {"name": "yolo11n", "version": "8.3.167", "sha256": YOLO11N_SHA}
    labels = [d["label"] for d in bus["detections"]]
    assert labels.count("bus") == 1 and labels.count("person") >= 3
    for det in bus["detections"]:
        assert set(det) == {"label", "class_id", "confidence", "bbox"}
        x1, y1, x2, y2 = det["bbox"]
        assert 0 <= x1 <= x2 <= 810 and 0 <= y1 <= y2 <= 1080
        assert 0.25 < det["confidence"] <= 1
    assert [d["label"] for d in zidane["detections"]][:2] == ["person", "person"]
    assert "[1/2]" in stderr and "[2/2]" in stderr


def test_detections_are_the_fast_backend_in_original_pixels(stills: Path) -> None:
    _, records, _ = scan(str(stills / "bus.jpg"))
    # Opened as scan opens it: OpenVINO's int8 kernels differ by a pixel or so between the
    # throughput and latency configurations and with the heads' feature outputs added.
    spec = resolve_model(None)
    heads = load_heads(model_info(spec))
    nodes = tuple(dict.fromkeys(n for h in heads.values() for n in h.feature_nodes))
    backend = load_backend(spec, "openvino", nodes)
    (result,) = backend.infer([np.asarray(cv2.imread(str(stills / "bus.jpg")), dtype=np.uint8)])
    expected = [[round(float(v), 1) for v in box] for box in result.detections.xyxy]
    assert [d["bbox"] for d in records[0]["detections"]] == expected
    assert [d["class_id"] for d in records[0]["detections"]] == result.detections.class_id.tolist()


def test_video_is_sampled_at_fps(shared_dir: Path) -> None:
    clip = shared_dir / "footage" / "car_park_people_bikes.mp4"
    cap = cv2.VideoCapture(str(clip))
    native, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    code, records, stderr = scan("--fps", "2", str(clip))
    assert code == 0, stderr
    duration = (count - 1) / native
    assert len(records) == int(duration / 0.5) + 1
    for k, rec in enumerate(records):
        assert rec["ts"] == pytest.approx(0.5 * k, abs=1 / native)
        assert rec["frame"] == round(rec["ts"] * native)
        assert (rec["width"], rec["height"]) == (480, 270)
    assert any(d["label"] == "car" for r in records for d in r["detections"])


def scan_after(prelude: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """:func:`scan` with ``prelude`` run first in the command's own process (to replace what
    the scan calls by one that fails as the OS or a container would)."""
    program = (
        f"import sys\n{prelude}from gridpatrol.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program, "--log-level", "WARNING", "scan", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, records, proc.stderr


def scan_patched(patch: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """:func:`scan` with ``cv2.VideoCapture`` replaced, in the command's own process, by a
    wrapper of the real one whose methods ``patch`` overrides (a container or decoder that
    misbehaves). A Python subclass of ``cv2.VideoCapture`` crashes the interpreter now and
    then; the wrapper does not."""
    prelude = (
        "import cv2, math\n"
        "class Capture:\n"
        "    def __init__(self, *args):\n"
        "        self.cap = Real(*args)\n"
        "    def __getattr__(self, name):\n"
        "        return getattr(self.cap, name)\n"
        f"{patch}\n"
        "Real = cv2.VideoCapture\n"
        "cv2.VideoCapture = Capture\n"
    )
    return scan_after(prelude, *args)


def write_mkv(path: Path, fps: float, count: int) -> Path:
    """A Matroska video as OpenCV's FFmpeg writer makes it (MJPG): its frames' times rounded
    to the millisecond, as Matroska stores them."""
    writer = cv2.VideoWriter(
        str(path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48)
    )
    for k in range(count):
        writer.write(np.full((48, 64, 3), 2 * k % 256, dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize(
    ("native", "count", "eighth"),
    [(30.0, 90, 0.233), (30000 / 1001, 120, 0.234)],
    ids=["30", "29.97"],
)
def test_a_video_whose_times_are_rounded_is_sampled_at_its_own_rate_whole(
    tmp_path: Path, native: float, count: int, eighth: float
) -> None:
    """Frames at 33, 67, 100 ms (Matroska's milliseconds) are those due at 33.3, 66.7, 100 ms:
    sampled at the video's own rate every frame is taken, not two of three, and at half its
    rate every other one."""
    from gridpatrol.detectors.scan import video_frames

    clip = write_mkv(tmp_path / "clip.mkv", native, count)
    times = [round(t, 3) for _, t, _ in video_frames(clip, 1000.0)]
    assert times[:8] == [0.0, 0.033, 0.067, 0.1, 0.133, 0.167, 0.2, eighth]
    assert len(times) == count
    assert [index for index, _, _ in video_frames(clip, native)] == list(range(count))
    assert [index for index, _, _ in video_frames(clip, native / 2)] == list(range(0, count, 2))
    code, records, stderr = scan("--fps", str(native), str(clip))
    assert code == 0, stderr
    assert [r["frame"] for r in records] == list(range(count))


@pytest.mark.parametrize("rate", ["math.nan", "-12.0", "math.inf"], ids=["nan", "negative", "inf"])
def test_a_video_without_a_usable_frame_rate_is_sampled_at_its_frames_times(
    shared_dir: Path, rate: str
) -> None:
    """41 frames at 12 fps whose container gives no usable rate: sampled at 2 fps by the
    frames' own timestamps, not left unread with exit 0."""
    clip = shared_dir / "footage" / "car_park_people_bikes.mp4"
    patch = (
        "    def get(self, prop):\n"
        f"        return {rate} if prop == cv2.CAP_PROP_FPS else self.cap.get(prop)\n"
    )
    code, records, stderr = scan_patched(patch, "--fps", "2", str(clip))
    assert code == 0, stderr
    assert [(r["frame"], r["ts"]) for r in records] == [(6 * k, 0.5 * k) for k in range(7)]
    assert f"scan: {clip}: 7 frame(s)\n" in stderr


@pytest.mark.parametrize("position", ["0.0", "math.nan"], ids=["zero", "nan"])
@pytest.mark.parametrize("rate", ["math.nan", "-12.0", "math.inf"], ids=["nan", "negative", "inf"])
def test_a_video_without_a_usable_frame_rate_or_timestamps_is_sampled_at_25_fps(
    shared_dir: Path, rate: str, position: str
) -> None:
    """41 frames at 12 fps whose container gives neither a usable rate nor timestamps: read as
    25 fps (1.6 s) and sampled at 2 fps by that timing, not left unread with exit 0."""
    clip = shared_dir / "footage" / "car_park_people_bikes.mp4"
    patch = (
        "    def get(self, prop):\n"
        f"        if prop == cv2.CAP_PROP_POS_MSEC:\n"
        f"            return {position}\n"
        f"        return {rate} if prop == cv2.CAP_PROP_FPS else self.cap.get(prop)\n"
    )
    code, records, stderr = scan_patched(patch, "--fps", "2", str(clip))
    assert code == 0, stderr
    assert [(r["frame"], r["ts"]) for r in records] == [(0, 0.0), (13, 0.52), (25, 1.0), (38, 1.52)]
    assert f"scan: {clip}: 4 frame(s)\n" in stderr


def test_a_video_none_of_whose_frames_decode_is_unreadable(shared_dir: Path) -> None:
    clip = shared_dir / "footage" / "car_park_people_bikes.mp4"
    patch = "    def retrieve(self, *args):\n        return False, None\n"
    code, records, stderr = scan_patched(patch, "--fps", "2", str(clip), str(ASSETS / "bus.jpg"))
    assert code == 1
    assert [Path(r["source"]).name for r in records] == ["bus.jpg"]
    assert f"scan: {clip}: no frames could be decoded\n" in stderr
    assert "0 frame(s)" not in stderr


def test_a_variable_frame_rate_video_is_judged_at_its_frames_own_times(
    shared_dir: Path,
    tmp_path: Path,
    write_vfr: Callable[[Path, list[np.ndarray], list[int]], Path],
) -> None:
    """A crowd seen for 2 s at 10 fps, then an empty street one frame a second for 20 s: the
    container's average rate (40 frames in 22 s, 1.8 fps) would put frame 10 at 5.5 s, the
    crowd's 2 s past the 3 s dwell, and raise a dwell-verified crowd that never stood 3 s.
    Each frame is placed at its own timestamp."""
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    crowd = []
    for _ in range(20):
        ok, frame = cap.read()
        assert ok
        crowd.append(cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA))
    cap.release()
    empty = np.full_like(crowd[0], 128)
    clip = write_vfr(tmp_path / "vfr.mp4", crowd + [empty] * 20, [1] * 20 + [10] * 20)
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    code, records, stderr = scan(
        "--config", str(site), "--camera", "street", "--fps", "2",
        "--start", "2026-05-04T10:00:00+08:00", str(clip),
    )  # fmt: skip
    assert code == 0, stderr
    expected = [(5 * k, 0.5 * k) for k in range(4)] + [(20 + k, 2.0 + k) for k in range(20)]
    assert [(r["frame"], r["ts"]) for r in records] == expected
    persons = [sum(d["label"] == "person" for d in r["detections"]) for r in records]
    assert min(persons[:4]) >= 5 and max(persons[4:]) == 0  # a crowd, then nobody
    assert [v for r in records for v in r["violations"]] == []


def test_still_rules_judge_the_whole_frame(shared_dir: Path, tmp_path: Path) -> None:
    crowd = tmp_path / "street.jpg"
    cv2.imwrite(str(crowd), street_frame(shared_dir))
    code, records, stderr = scan(str(crowd), str(ASSETS / "bus.jpg"))
    assert code == 0, stderr
    street, bus = records
    persons = [d for d in street["detections"] if d["label"] == "person"]
    assert len(persons) >= 8  # a busy shopping street: more than the default crowd size
    by_type = {v["type"]: v for v in street["violations"]}
    assert "crowd_gathering" in by_type
    assert "street_vending" not in by_type  # people walking past benches are not a stall
    violation = by_type["crowd_gathering"]
    assert violation["dwell_verified"] is False and violation["zone"] is None
    x1, y1, x2, y2 = violation["bbox"]
    assert 0 <= x1 < x2 <= 1920 and 0 <= y1 < y2 <= 1080
    assert all(v["dwell_verified"] is False for v in street["violations"])
    # Four people and a bus are neither a crowd nor a stall.
    assert {v["type"] for v in bus["violations"]} & {"crowd_gathering", "street_vending"} == set()
    for record in (street, bus):
        assert all(0.0 <= score <= 1.0 for score in record["scene"].values())


# The street camera of a site file, its zones to follow.
CAMERA = """
site: {name: scan test, timezone: Asia/Shanghai}
cameras:
  - id: street
    source: footage.mp4
    location: {address: test street}
    zones:
"""
SITE = (
    CAMERA
    + """\
      - id: plaza
        polygon: [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
        rules:
          crowd_gathering: {min_persons: 5, dwell_s: 3, gap_s: 2, clear_s: 5, update_s: 2}
          street_vending: {dwell_s: 3}
"""
)


@pytest.mark.slow
def test_site_camera_runs_the_pipeline_with_dwell(shared_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    clip = shared_dir / "footage" / "pedestrian_street_1080p.mp4"
    code, records, stderr = scan(
        "--config", str(site), "--camera", "street", "--fps", "2",
        "--start", "2026-05-04T10:00:00+08:00", str(clip),
    )  # fmt: skip
    assert code == 0, stderr
    assert len(records) == 21
    found = [(r["ts"], v) for r in records for v in r["violations"]]
    assert found, "the crowd on the street must raise crowd_gathering"
    first_ts, first = found[0]
    assert first["type"] == "crowd_gathering" and first["event"] == "raise"
    assert first["zone"] == "plaza" and first["dwell_verified"] is True
    assert first_ts >= 3.0 and first["dwell_s"] >= 3.0  # nothing before the dwell is verified
    assert all(v["type"] == "crowd_gathering" for _, v in found)  # no vending on this street
    assert sum(v["event"] == "raise" for _, v in found) == 1  # one episode, then updates


CROWD = (
    CAMERA
    + """\
      - id: plaza
        polygon: [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
        rules:
          crowd_gathering: {min_persons: 5, dwell_s: 5, gap_s: 2, clear_s: 3, update_s: 4}
"""
)


def street_and_gaps(shared_dir: Path, path: Path) -> list[float]:
    """A 2 fps video of the street (10 s: the crowd raises at 5 s), its first frame blurred
    beyond recognition (nobody: a gap) for 0.5 s, the street for 2 s, blurred for 4 s (longer
    than clear_s: the episode clears) and the street again for 3 s (a new occupancy whose
    dwell has not completed). Returns each frame's time: where it shows the crowd, or None."""
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    native = cap.get(cv2.CAP_PROP_FPS)
    street: list[np.ndarray] = []
    for index in range(round(10 * native)):
        ok, frame = cap.read()
        assert ok
        if index % round(native / 2) == 0:  # 2 fps
            street.append(frame)
    cap.release()
    assert len(street) == 20
    blur = cv2.GaussianBlur(street[0], (151, 151), 0)
    frames = [*street, blur, *street[16:20], *[blur] * 8, *street[:6]]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 2.0, (1920, 1080))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return [0.5 * k for k in range(len(frames))]


@pytest.mark.slow
def test_each_video_frame_lists_the_raised_episodes_it_shows(
    shared_dir: Path, tmp_path: Path
) -> None:
    """A frame's violations are what is in violation on it: the crowd's episode on every frame
    that shows it from its raise on, with that frame's boxes and confidence (not only on the
    frames where the worker would send a raise or an update); none before the dwell is
    verified, none on a frame of a gap while the episode stays open, none once it cleared
    (the crowd back afterwards is a new occupancy whose dwell runs)."""
    site = tmp_path / "site.yaml"
    site.write_text(CROWD)
    clip = tmp_path / "street.mp4"
    times = street_and_gaps(shared_dir, clip)
    code, records, stderr = scan(
        "--config", str(site), "--camera", "street", "--fps", "2", "--conf", "0.35",
        "--start", "2026-05-04T10:00:00+08:00", str(clip),
    )  # fmt: skip
    assert code == 0, stderr
    assert [r["ts"] for r in records] == times
    listed = {r["ts"]: r["violations"] for r in records if r["violations"]}
    # 5.0-9.5: raised at 5 s, seen every frame; 10.0: the gap; 10.5-12.0: seen again;
    # 12.5-16.0: gone, cleared at 15.0; 16.5-19.0: back, a dwell of 2.5 s at most.
    assert sorted(listed) == [5.0 + 0.5 * k for k in range(10)] + [10.5, 11.0, 11.5, 12.0]
    events = {ts: v["event"] for ts, (v,) in listed.items() if v["event"]}
    assert events == {5.0: "raise", 9.0: "update"}  # update_s 4 after the raise
    for record in records:
        if record["ts"] not in listed:
            continue
        (violation,) = listed[record["ts"]]
        persons = [d for d in record["detections"] if d["label"] == "person"]
        boxes = np.asarray([d["bbox"] for d in persons])
        top = sorted((d["confidence"] for d in persons), reverse=True)[:5]
        assert violation == {
            "type": "crowd_gathering",
            "confidence": pytest.approx(np.mean(top), abs=1e-3),
            "zone": "plaza",
            "bbox": [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()],
            "dwell_verified": True,
            "event": violation["event"],
            "dwell_s": record["ts"],  # one episode since the first frame
        }


YARD = (
    CAMERA
    + """\
      - id: corner
        polygon: [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
        rules:
          piled_materials: {dwell_s: 5, learn_s: 600, clear_s: 3, gap_s: 2, update_s: 10}
        schedule: {from: "06:00", to: "23:00"}
"""
)


def yard(path: Path, dumped_s: float, removed_s: float) -> None:
    """A 61 s, 1 fps video of a bare yard (640x360, a grey ramp with noise), a dark pile on
    its lower left (columns 160-320, rows 200-320) from ``dumped_s`` to ``removed_s``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 1.0, (640, 360))
    ground = np.tile(np.linspace(60, 140, 640, dtype=np.float32), (360, 1))
    for k in range(61):
        image = ground.copy()
        if dumped_s <= k < removed_s:
            image[200:320, 160:320] = 20
        noise = np.random.default_rng(k).normal(0, 2, image.shape)
        gray = np.clip(image + noise, 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    writer.release()


@pytest.mark.slow
@pytest.mark.parametrize(
    "removed_s",
    [
        52.0,  # over at 55 s, while the schedule is off: raised and cleared when it opens
        59.0,  # gone a second before the schedule opens: its completed dwell raises then
    ],
    ids=["over-while-off", "gone-as-it-opens"],
)
def test_a_pile_raised_when_the_schedule_opens_is_listed_on_that_frame(
    tmp_path: Path, removed_s: float
) -> None:
    """The video starts at 05:59 and the yard's schedule opens at 06:00 (60 s). A pile dumped
    at 32 s (learned as foreground some seconds later) completes its dwell while the schedule
    is off and is gone by 06:00: the rule raises it on the frame of 06:00, which does not show
    it, and the worker sends a candidate then. That frame lists the raise, with the pile's
    boxes; no other frame lists anything."""
    site = tmp_path / "site.yaml"
    site.write_text(YARD)
    clip = tmp_path / "pile.avi"
    yard(clip, 32.0, removed_s)
    code, records, stderr = scan(
        "--config", str(site), "--camera", "street", "--fps", "1",
        "--start", "2026-05-04T05:59:00+08:00", str(clip),
    )  # fmt: skip
    assert code == 0, stderr
    assert [r["ts"] for r in records] == [float(k) for k in range(61)]
    listed = {r["ts"]: r["violations"] for r in records if r["violations"]}
    assert sorted(listed) == [60.0]
    (violation,) = listed[60.0]
    dwell_s = violation.pop("dwell_s")
    assert violation == {
        "type": "piled_materials",
        "confidence": pytest.approx(2 / 3, abs=1e-4),
        "zone": "corner",
        "bbox": [160.0, 200.0, 320.0, 320.0],
        "dwell_verified": True,
        "event": "raise",
    }
    # From its first sighting to its last: a completed dwell, within the pile's time.
    assert 5.0 <= dwell_s <= removed_s - 32.0


ZONES = (
    CAMERA
    + """\
      - id: kerb
        polygon: [[0.0, 0.0], [0.1, 0.0], [0.1, 1.0], [0.0, 1.0]]
        rules:
          crowd_gathering: {min_persons: 1}
          street_vending: {}
      - id: plaza
        polygon: [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]
        rules:
          crowd_gathering: {min_persons: 6}
        schedule: {days: [sat], from: "03:00", to: "03:02"}
"""
)


def test_a_still_is_judged_within_the_cameras_zones(shared_dir: Path, tmp_path: Path) -> None:
    """With --config --camera a still is judged in each zone with the zone's parameters, not on
    the whole frame: nobody stands in the kerb strip, and the plaza (the right half) holds the
    six persons whose feet are there. A still has no time, so the plaza's schedule is not
    applied, and no duration, so nothing is dwell-verified."""
    site = tmp_path / "site.yaml"
    site.write_text(ZONES)
    street = tmp_path / "street.jpg"
    cv2.imwrite(str(street), street_frame(shared_dir))
    code, records, stderr = scan("--config", str(site), "--camera", "street", str(street))
    assert code == 0, stderr
    (record,) = records
    plaza = [
        d
        for d in record["detections"]
        if d["label"] == "person"
        and d["confidence"] >= 0.35
        and (d["bbox"][0] + d["bbox"][2]) / 2 >= 960
    ]
    assert len(plaza) == 6
    boxes = np.asarray([d["bbox"] for d in plaza])
    assert record["violations"] == [
        {
            "type": "crowd_gathering",
            "confidence": pytest.approx(np.mean([d["confidence"] for d in plaza]), abs=1e-3),
            "zone": "plaza",
            "bbox": [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()],
            "dwell_verified": False,
        }
    ]


def test_a_photo_is_scanned_upright_and_a_cameras_still_as_stored(
    tmp_path: Path, with_orientation: Callable[[bytes, int], bytes]
) -> None:
    """A photo tagged Orientation=6 (stored on its side, as phones do) is judged upright, as a
    viewer shows it: the same boxes as the same pixels turned by hand. With ``--config
    --camera`` a still is one of the camera's frames and is judged on its stored pixels, as
    the worker judges them: the same size and boxes as without the tag."""
    bus = cv2.imread(str(ASSETS / "bus.jpg"))
    ok, sideways = cv2.imencode(".jpg", np.ascontiguousarray(np.rot90(bus)))  # turned left
    assert ok
    stored, tagged, upright = (tmp_path / n for n in ("stored.jpg", "tagged.jpg", "up.png"))
    stored.write_bytes(sideways.tobytes())
    tagged.write_bytes(with_orientation(sideways.tobytes(), 6))
    cv2.imwrite(str(upright), cv2.rotate(cv2.imread(str(stored)), cv2.ROTATE_90_CLOCKWISE))

    code, (by_tag, by_hand), stderr = scan(str(tagged), str(upright))
    assert code == 0, stderr
    assert (by_tag["width"], by_tag["height"]) == (810, 1080)
    assert by_tag["detections"] == by_hand["detections"]
    assert by_tag["violations"] == by_hand["violations"]

    site = tmp_path / "site.yaml"
    site.write_text(ZONES)
    config = ("--config", str(site), "--camera", "street")
    code, (as_camera, untagged), stderr = scan(*config, str(tagged), str(stored))
    assert code == 0, stderr
    assert (as_camera["width"], as_camera["height"]) == (1080, 810)
    assert as_camera["detections"] == untagged["detections"]
    assert by_tag["detections"] != as_camera["detections"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/file.jpg"], "no such file or folder"),
        (["--camera", "street", "{image}"], "--camera needs --config"),
        (["--config", "{site}", "{image}"], "--config needs --camera"),
        (["--config", "{site}", "--camera", "nope", "{image}"], "camera 'nope' is not in"),
        (["--model", "/no/such/model_openvino_model", "{image}"], "does not exist"),
    ],
)
def test_setup_errors_exit_2_without_output(tmp_path: Path, args: list[str], message: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    image = str(ASSETS / "bus.jpg")
    code, records, stderr = scan(*(a.format(site=site, image=image) for a in args))
    assert code == 2
    assert records == []
    assert message in stderr


FPS = "scan: --fps must be a positive number of frames per second, not {}\n"
CONF = "scan: --conf must be a confidence between 0 and 1 (both excluded), not {}\n"


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["--fps", "0"], FPS.format("0")),
        (["--fps", "-2"], FPS.format("-2")),
        (["--fps", "nan"], FPS.format("nan")),
        (["--fps", "inf"], FPS.format("inf")),
        (["--conf", "0"], CONF.format("0")),
        (["--conf", "1"], CONF.format("1")),
        (["--conf=-inf"], CONF.format("-inf")),
        (["--conf", "nan"], CONF.format("nan")),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_sampling_rate_or_confidence_out_of_range_is_a_setup_error(
    shared_dir: Path, args: list[str], stderr: str
) -> None:
    """nan and inf parse as numbers: --fps nan and inf crashed on the first video."""
    clip = shared_dir / "footage" / "pedestrian_street_1080p.mp4"
    assert scan(*args, str(clip)) == (2, [], stderr)


@pytest.mark.parametrize(
    ("files", "arg", "message"),
    [
        ({"yolo11n.xml": None, "metadata.yaml": None}, "",
         "scan: {folder} is an incomplete OpenVINO IR: yolo11n.xml is there but its weights "
         "yolo11n.bin are missing; copy the whole folder (yolo11n.xml, yolo11n.bin and "
         "metadata.yaml)"),
        ({"yolo11n.xml": None, "metadata.yaml": None}, "yolo11n.xml",
         "scan: {folder} is an incomplete OpenVINO IR: yolo11n.xml is there but its weights "
         "yolo11n.bin are missing; copy the whole folder (yolo11n.xml, yolo11n.bin and "
         "metadata.yaml)"),
        ({"yolo11n.xml": None, "yolo11n.bin": 1000, "metadata.yaml": None}, "",
         "scan: OpenVINO cannot load model 'yolo11n' from {folder}/yolo11n.xml: Incorrect "
         "weights in bin file!; copy the whole IR folder (yolo11n.xml, yolo11n.bin and "
         "metadata.yaml) again or give another --model"),
        # Without metadata.yaml every box would be class_<id>: no rule by label could fire.
        ({"yolo11n.xml": None, "yolo11n.bin": None}, "",
         "scan: {folder}/metadata.yaml is missing: the OpenVINO IR {folder}/yolo11n.xml holds "
         "no class names nor version (its yolo11n.bin is that of model 'yolo11n', whose "
         "complete folder is yolo11n_int8_openvino_model); copy metadata.yaml from the folder "
         "the model was exported into beside yolo11n.xml"),
        ({"yolo11n.xml": None, "yolo11n.bin": None}, "yolo11n.xml",
         "scan: {folder}/metadata.yaml is missing: the OpenVINO IR {folder}/yolo11n.xml holds "
         "no class names nor version (its yolo11n.bin is that of model 'yolo11n', whose "
         "complete folder is yolo11n_int8_openvino_model); copy metadata.yaml from the folder "
         "the model was exported into beside yolo11n.xml"),
        # A metadata.yaml cut short, empty or before its names, is no better than none.
        *[
            ({"yolo11n.xml": None, "yolo11n.bin": None, "metadata.yaml": cut}, "",
             "scan: {folder}/metadata.yaml holds no class names: the OpenVINO IR "
             "{folder}/yolo11n.xml holds no class names nor version (its yolo11n.bin is that "
             "of model 'yolo11n', whose complete folder is yolo11n_int8_openvino_model); copy "
             "metadata.yaml from the folder the model was exported into beside yolo11n.xml")
            for cut in (0, "names")
        ],
    ],
)  # fmt: skip
def test_an_incomplete_or_broken_model_is_a_setup_error(
    tmp_path: Path, shared_dir: Path, files: dict[str, int | str | None], arg: str, message: str
) -> None:
    src = shared_dir / "models" / "yolo11n_int8_openvino_model"
    folder = tmp_path / "copy_openvino_model"
    folder.mkdir()
    for name, size in files.items():
        data = (src / name).read_bytes()
        end = data.index(b"\nnames:") + 1 if size == "names" else size  # up to its names
        (folder / name).write_bytes(data[: cast(int | None, end)])
    code, records, stderr = scan("--model", str(folder / arg), str(ASSETS / "bus.jpg"))
    assert (code, records) == (2, [])
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == message.format(folder=folder), stderr


def test_a_misspelt_class_in_the_site_file_is_a_setup_error(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    text = SITE.replace("street_vending: {dwell_s: 3}", "street_vending: {props: [umbrela]}")
    site.write_text(text)
    line = text.splitlines().index("          street_vending: {props: [umbrela]}") + 1
    code, records, stderr = scan(
        "--config", str(site), "--camera", "street", str(ASSETS / "bus.jpg")
    )
    assert (code, records) == (2, [])
    assert stderr.endswith(
        f"{site}:{line}: cameras[0].zones[0].rules.street_vending.props: Value error, "
        "'umbrela' is not a class of the detection model (did you mean 'umbrella'?)\n"
    )


def test_a_zone_whose_scene_head_is_not_loaded_is_named(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.replace("street_vending: {dwell_s: 3}", "garbage_overflow: {head: bins}"))
    code, records, stderr = scan(
        "--config", str(site), "--camera", "street", str(ASSETS / "bus.jpg")
    )
    assert code == 0, stderr
    assert [r["source"] for r in records] == [str(ASSETS / "bus.jpg")]
    assert (
        "camera street zone plaza: garbage_overflow needs the scene head 'bins', which is not "
        "loaded (loaded: garbage); this zone cannot raise candidates"
    ) in stderr


def test_unreadable_file_is_reported_and_the_rest_scanned(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    code, records, stderr = scan(str(broken), str(ASSETS / "zidane.jpg"))
    assert code == 1
    assert [Path(r["source"]).name for r in records] == ["zidane.jpg"]
    assert f"{broken}: not a readable image" in stderr


def test_a_truncated_jpeg_is_reported_and_the_rest_scanned(tmp_path: Path) -> None:
    """libjpeg decodes a JPEG cut short (its missing part grey) with only a warning: such a file
    is no whole image, whether cut in its image data, just before its end marker or in its
    headers. What follows a whole JPEG's end marker is no truncation: zero bytes padding it, a
    phone's trailer, a motion photo's video."""
    whole = (ASSETS / "bus.jpg").read_bytes()
    cuts = {"cut.jpg": whole[:20_000], "no_end.jpg": whole[:-2], "headers.jpg": whole[:300]}
    kept = {
        "padded.jpg": whole + bytes(70_000),
        "trailer.jpg": whole + b"SEFH" * 10 + bytes(range(256)) * 20,
        "motion.jpg": whole + b"\x00\x00\x00\x1cftypmp42" + b"\xff\xd8\x00\x01" * 1000,
    }
    for name, data in {**cuts, **kept}.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in [*cuts, *kept]]
    code, records, stderr = scan(*paths, str(ASSETS / "zidane.jpg"))
    assert code == 1, stderr
    assert [Path(r["source"]).name for r in records] == [*kept, "zidane.jpg"]
    assert [line for line in stderr.splitlines() if line.endswith("truncated image")] == [
        f"scan: {tmp_path / name}: truncated image" for name in cuts
    ]
    assert {(r["width"], r["height"]) for r in records[:3]} == {(810, 1080)}


def test_an_image_too_large_to_decode_is_reported_and_the_rest_scanned(
    tmp_path: Path, write_png: Callable[[Path, int, int], Path]
) -> None:
    """OpenCV raises, rather than returning nothing, for an image of more than 2^30 pixels:
    that one file is not a readable image, and the files after it are still scanned."""
    write_png(tmp_path / "a_huge.png", 40_000, 30_000)
    shutil.copy(ASSETS / "bus.jpg", tmp_path / "b_bus.jpg")
    code, records, stderr = scan(str(tmp_path))
    assert code == 1, stderr
    assert [r["source"] for r in records] == [str(tmp_path / "b_bus.jpg")]
    assert f"scan: {tmp_path / 'a_huge.png'}: not a readable image\n" in stderr
    assert "Traceback" not in stderr


def test_linked_folders_and_videos_are_scanned_and_a_broken_link_is_named(
    shared_dir: Path, tmp_path: Path
) -> None:
    """A folder reached by a symbolic link (a camera share linked in) is scanned, a linked
    video too, a link back up is entered once, and a link to an image that is gone is a
    failure named on stderr, not skipped without a word."""
    photos = tmp_path / "share"
    photos.mkdir()
    small = cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (270, 360))
    for k in range(9):
        cv2.imwrite(str(photos / f"p{k}.jpg"), small)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ASSETS / "zidane.jpg", root / "own.jpg")
    (root / "linked").symlink_to(photos)
    (root / "clip.mp4").symlink_to(shared_dir / "footage" / "car_park_people_bikes.mp4")
    (root / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (root / "linked_back").symlink_to(root)  # a loop
    code, records, stderr = scan("--fps", "1", str(root))
    assert code == 1, stderr
    sources = [r["source"] for r in records]
    assert sources == [str(root / "clip.mp4")] * 4 + [
        *(str(root / "linked" / f"p{k}.jpg") for k in range(9)),
        str(root / "own.jpg"),
    ]
    assert stderr.splitlines()[0] == (
        f"scan: {root / 'gone.jpg'}: a link to {tmp_path / 'deleted.jpg'} that cannot be "
        "followed (No such file or directory)"
    )
    assert "[11/11]" in stderr


def test_a_folder_that_cannot_be_listed_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subfolder the scan may not list is a failure, named, not taken for an empty one. (The
    tests may run as root, who lists any folder: the refusal is the one the OS gives.)"""
    from gridpatrol.detectors import scan as scan_module

    shutil.copy(ASSETS / "bus.jpg", tmp_path / "bus.jpg")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert scan_module.expand([str(tmp_path)]) == (
        [tmp_path / "bus.jpg"],
        [f"{locked}: cannot list the folder (Permission denied)"],
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scan_module.expand([str(locked), str(empty)]) == (
        [],
        [
            f"{locked}: cannot list the folder (Permission denied)",
            f"{empty}: no images or videos found",
        ],
    )


DENY_STAT = (
    "import errno, os\n"
    "real_stat = os.stat\n"
    "def stat(path, *args, **kwargs):\n"
    "    if os.fspath(path) in DENIED:\n"
    "        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))\n"
    "    return real_stat(path, *args, **kwargs)\n"
    "os.stat = stat\n"
)


def test_a_file_in_a_folder_that_cannot_be_entered_is_named_and_the_rest_scanned(
    tmp_path: Path,
) -> None:
    """A folder that can be listed but not entered (mode r--, after a chmod -R 644): its files
    are named but cannot be looked at. Each is a failure named on stderr and the rest are
    scanned, in a folder or given by name, not a model that "cannot load" and no scan at all.
    (The tests may run as root, who enters any folder: the refusal is the one the OS gives,
    for the file and its link alike.)"""
    (tmp_path / "locked").mkdir()
    shutil.copy(ASSETS / "bus.jpg", tmp_path / "a.jpg")
    locked = tmp_path / "locked" / "c.jpg"
    shutil.copy(ASSETS / "zidane.jpg", locked)
    prelude = f"DENIED = {{{str(locked)!r}}}\n{DENY_STAT}"
    code, records, stderr = scan_after(prelude, str(tmp_path))
    assert code == 1, stderr
    assert [r["source"] for r in records] == [str(tmp_path / "a.jpg")]
    assert stderr.splitlines()[0] == f"scan: {locked}: cannot be read (Permission denied)"
    assert "[1/1]" in stderr and "model" not in stderr
    code, records, stderr = scan_after(prelude, str(locked), str(tmp_path / "a.jpg"))
    assert code == 1, stderr
    assert [r["source"] for r in records] == [str(tmp_path / "a.jpg")]
    assert stderr.splitlines()[0] == f"scan: {locked}: cannot be read (Permission denied)"
    assert "[1/1]" in stderr and "model" not in stderr


def test_a_folder_reached_by_a_link_too_is_scanned_under_its_own_path(tmp_path: Path) -> None:
    """A link to a folder of the scan, named before it or nearer the top, does not hide it:
    the records name the folder's own path. A folder outside is scanned by its link."""
    from gridpatrol.detectors import scan as scan_module

    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    shutil.copy(ASSETS / "bus.jpg", root / "real" / "a.jpg")
    (root / "alias").symlink_to(root / "real")
    assert scan_module.expand([str(root)]) == ([root / "real" / "a.jpg"], [])
    deep = root / "z" / "deeper" / "real"
    deep.mkdir(parents=True)
    shutil.copy(ASSETS / "bus.jpg", deep / "b.jpg")
    (root / "a_link").symlink_to(deep)
    outside = tmp_path / "share"
    outside.mkdir()
    shutil.copy(ASSETS / "bus.jpg", outside / "c.jpg")
    (root / "z" / "share").symlink_to(outside)
    (outside / "back").symlink_to(deep)  # reached through a link, and directly
    assert scan_module.expand([str(root)]) == (
        [root / "real" / "a.jpg", deep / "b.jpg", root / "z" / "share" / "c.jpg"],
        [],
    )


def test_a_folders_hidden_files_and_folders_are_left_out(tmp_path: Path) -> None:
    """macOS leaves an AppleDouble ``._a.jpg`` (no image) beside each file it copies, and tools
    keep caches in hidden folders: a folder's walk skips them; a hidden file named is scanned."""
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (tmp_path / ".cache").mkdir()
    shutil.copy(ASSETS / "zidane.jpg", tmp_path / ".cache" / "b.jpg")
    shutil.copy(ASSETS / "bus.jpg", tmp_path / "c.jpg")
    code, records, stderr = scan(str(tmp_path))
    assert code == 0, stderr
    assert [r["source"] for r in records] == [str(tmp_path / "c.jpg")]
    code, records, stderr = scan(str(tmp_path / ".cache" / "b.jpg"))
    assert code == 0, stderr
    assert [r["source"] for r in records] == [str(tmp_path / ".cache" / "b.jpg")]


def test_a_folder_takes_tiff_stills_whatever_the_suffix_case(tmp_path: Path) -> None:
    zidane = cv2.imread(str(ASSETS / "zidane.jpg"))
    cv2.imwrite(str(tmp_path / "a.png"), zidane)
    cv2.imwrite(str(tmp_path / "c.TIF"), zidane)
    cv2.imwrite(str(tmp_path / "d.tiff"), zidane)
    code, records, stderr = scan(str(tmp_path))
    assert code == 0, stderr
    assert [Path(r["source"]).name for r in records] == ["a.png", "c.TIF", "d.tiff"]
    # Lossless copies of one image: the same detections from each.
    assert records[0]["detections"] != []
    assert records[1]["detections"] == records[0]["detections"] == records[2]["detections"]


def test_a_folder_without_images_or_videos_is_a_failure(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, records, stderr = scan(str(empty))
    assert (code, records, stderr) == (1, [], f"scan: {empty}: no images or videos found\n")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not an image")
    code, records, stderr = scan(str(notes), str(ASSETS / "zidane.jpg"))
    assert code == 1
    assert [Path(r["source"]).name for r in records] == ["zidane.jpg"]
    assert stderr.splitlines()[0] == f"scan: {notes}: no images or videos found"


def test_a_reader_that_stops_early_ends_the_scan_quietly(shared_dir: Path) -> None:
    argv = [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING", "scan"]
    proc = subprocess.Popen(
        [*argv, str(shared_dir / "datasets" / "garbage_dev")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())  # as `gridpatrol scan … | head -1` reads
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141  # 128 + SIGPIPE
    assert first["frame"] == 0
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_scene_heads_score_the_whole_frame_and_drive_garbage_overflow(shared_dir: Path) -> None:
    heads = {
        doc["name"]: doc for doc in (json.loads(p.read_text()) for p in HEADS_DIR.glob("*.json"))
    }
    assert "garbage" in heads
    threshold = float(heads["garbage"]["threshold"])
    data = shared_dir / "datasets" / "garbage_dev"
    # Photos the shipped head scores well clear of its threshold (0.77-0.97 with garbage,
    # 0.05-0.18 without), so the outcome is the same on every CPU's int8 kernels.
    images = (
        sorted((data / "garbage").glob("*.jpg"))[4:8] + sorted((data / "clean").glob("*.jpg"))[:4]
    )
    code, records, stderr = scan(*map(str, images))
    assert code == 0, stderr
    assert len(records) == len(images)
    flagged = []
    for record in records:
        assert set(record["scene"]) == set(heads)
        score = record["scene"]["garbage"]
        garbage = [v for v in record["violations"] if v["type"] == "garbage_overflow"]
        assert bool(garbage) == (score >= threshold), (record["source"], score, threshold)
        if garbage:
            (violation,) = garbage
            assert violation["bbox"] == [0.0, 0.0, record["width"], record["height"]]
            assert violation["confidence"] == pytest.approx(score, abs=1e-3)
            assert violation["dwell_verified"] is False
        flagged.append(bool(garbage))
    assert flagged == [True, True, True, True, False, False, False, False]


@pytest.mark.parametrize(
    ("heads", "code", "scene", "message"),
    [
        (["bins"], 0, {"bins"}, None),
        (["bins", "garbage"], 0, {"bins", "garbage"}, None),
        ([], 0, set(), "--heads {folder}: no scene head for model yolo11n there"),
        (None, 2, None, "scan: --heads {folder}: no such folder"),
    ],
)
def test_heads_come_from_the_folder_given(
    tmp_path: Path, heads: list[str] | None, code: int, scene: set[str] | None, message: str | None
) -> None:
    folder = tmp_path / "heads"
    for name in heads if heads is not None else ():
        folder.mkdir(exist_ok=True)
        doc = json.loads((HEADS_DIR / "garbage.json").read_text())
        (folder / f"{name}.json").write_text(json.dumps({**doc, "name": name}))
        shutil.copy(HEADS_DIR / "garbage.npz", folder / f"{name}.npz")
    if heads == []:
        folder.mkdir()
    got, records, stderr = scan("--heads", str(folder), str(ASSETS / "bus.jpg"))
    assert got == code, stderr
    assert [set(r["scene"]) for r in records] == ([] if scene is None else [scene])
    if message is not None:
        assert message.format(folder=folder) in stderr


def test_a_truncated_head_in_the_heads_folder_is_skipped(tmp_path: Path) -> None:
    """A head whose .npz was cut short loads no head: the scan goes on without scene scores."""
    folder = tmp_path / "heads"
    folder.mkdir()
    shutil.copy(HEADS_DIR / "garbage.json", folder / "garbage.json")
    (folder / "garbage.npz").write_bytes((HEADS_DIR / "garbage.npz").read_bytes()[:1000])
    code, records, stderr = scan("--heads", str(folder), str(ASSETS / "bus.jpg"))
    assert code == 0, stderr
    assert [r["scene"] for r in records] == [{}]
    assert "scene head garbage.json skipped: cannot read scene head" in stderr
    assert "Traceback" not in stderr


def test_reference_backend_scans_without_scene_heads() -> None:
    code, records, stderr = scan("--backend", "ultralytics", str(ASSETS / "bus.jpg"))
    assert code == 0, stderr
    assert [r["scene"] for r in records] == [{}]
    assert "bus" in {d["label"] for d in records[0]["detections"]}
    assert "scene heads need the openvino backend" in stderr
    assert "garbage_overflow" not in {v["type"] for v in records[0]["violations"]}


@pytest.mark.parametrize("backend", ["openvino", "ultralytics"])
def test_a_missing_heads_folder_is_refused_on_every_backend(tmp_path: Path, backend: str) -> None:
    """A misspelt --heads is a setup error before any model loads, also on the backend that
    reads no scene heads (it would otherwise scan as if the folder were fine)."""
    missing = tmp_path / "haeds"
    code, records, stderr = scan(
        "--backend", backend, "--heads", str(missing), str(ASSETS / "bus.jpg")
    )
    assert code == 2, stderr
    assert records == []
    assert stderr.splitlines() == [f"scan: --heads {missing}: no such folder"]


def test_a_cameras_rules_see_the_weak_boxes_the_worker_keeps(
    shared_dir: Path, tmp_path: Path
) -> None:
    """With --config --camera the detector keeps the boxes the worker keeps for the camera
    (from the tracker's 0.1, under --conf's 0.25), so a rule's lower min_confidence counts
    persons the plain scan does not list: a crowd one person larger than the plain scan's
    persons is found from the 0.15 ones. The record lists only the boxes at or above --conf,
    as in every mode: --conf 0.5 lists fewer boxes, and the crowd is the same."""
    street = tmp_path / "street.jpg"
    cv2.imwrite(str(street), street_frame(shared_dir))
    code, (plain,), stderr = scan(str(street))
    assert code == 0, stderr
    strong = [d for d in plain["detections"] if d["label"] == "person"]
    site = tmp_path / "site.yaml"
    rule = f"crowd_gathering: {{min_persons: {len(strong) + 1}, min_confidence: 0.15}}"
    site.write_text(
        CAMERA + "      - id: plaza\n        polygon: [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], "
        f"[0.0, 1.0]]\n        rules:\n          {rule}\n"
    )
    camera = ("--config", str(site), "--camera", "street", str(street))
    code, (record,), stderr = scan("--conf", "0.1", *camera)
    assert code == 0, stderr
    confidences = [d["confidence"] for d in record["detections"]]
    assert min(confidences) >= 0.1 and any(c < 0.15 for c in confidences)
    persons = [
        d for d in record["detections"] if d["label"] == "person" and d["confidence"] >= 0.15
    ]
    assert len(persons) > len(strong)
    boxes = np.asarray([d["bbox"] for d in persons])
    # The crowd's confidence: the mean of its min_persons most confident persons.
    top = sorted((d["confidence"] for d in persons), reverse=True)[: len(strong) + 1]
    crowd = [
        {
            "type": "crowd_gathering",
            "confidence": pytest.approx(np.mean(top), abs=1e-3),
            "zone": "plaza",
            "bbox": [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()],
            "dwell_verified": False,
        }
    ]
    assert record["violations"] == crowd
    code, (listed,), stderr = scan("--conf", "0.5", *camera)
    assert code == 0, stderr
    assert listed["detections"] == [d for d in record["detections"] if d["confidence"] >= 0.5]
    assert listed["detections"] and min(d["confidence"] for d in listed["detections"]) >= 0.5
    assert listed["violations"] == crowd


def test_a_videos_rule_state_is_dropped_when_it_ends(shared_dir: Path, tmp_path: Path) -> None:
    """Each video of a folder is its own timeline: its pipeline goes when the video ends, so a
    folder of many videos does not keep one per video."""
    from datetime import UTC, datetime

    from gridpatrol.detectors.scan import Judge, SiteContext, scan_file
    from gridpatrol.site import load_site

    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    clips = []
    for k in range(3):  # three 1 s clips of 640×360 at 10 fps
        clip = tmp_path / f"clip{k}.mp4"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (640, 360))
        for _ in range(10):
            ok, frame = cap.read()
            assert ok
            writer.write(cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA))
        writer.release()
        clips.append(clip)
    cap.release()
    site_file = tmp_path / "site.yaml"
    site_file.write_text(SITE)
    site = load_site(site_file)
    context = SiteContext(site.camera("street"), site.tz, datetime(2026, 5, 4, 2, tzinfo=UTC))
    backend = load_backend(resolve_model(None), "openvino")
    try:
        judge = Judge(backend.info, {}, context)
        for clip in clips:
            out = io.StringIO()
            assert scan_file(clip, backend, judge, 2.0, out) == 2  # at 0 and 0.5 s
            assert [json.loads(line)["source"] for line in out.getvalue().splitlines()] == [
                str(clip)
            ] * 2
            assert judge.pipelines == {}
    finally:
        backend.close()
