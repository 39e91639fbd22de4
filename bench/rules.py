"""Cost of the rule pipeline (tracking, zones, background model, every rule) per frame,
compared with the OpenVINO inference of the same frame, measured in the same run.

    .venv/bin/python bench/rules.py [--quick] [--json]
    .venv/bin/python bench/rules.py --covered [--json]

Frames: the pedestrian street (1920×1080) from the shared footage, inferred once with the
OpenVINO backend in latency mode; the pipeline then replays those detections through a camera
with four zones using all seven rules (so the background model and every evaluator run).

--covered times alone the share of a shop-front zone its objects' boxes cover (run per zone
and frame), for 10, 20 and 100 scattered boxes in an upright rectangle and a concave zone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import timeit
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np

from gridpatrol.detectors.models import load_backend, resolve_model
from gridpatrol.detectors.pipeline import CameraPipeline
from gridpatrol.detectors.rules import ZoneObservation, _covered
from gridpatrol.detectors.types import Detections
from gridpatrol.site import Camera

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRIDPATROL_SHARED", REPO.parent / "shared"))

ZONES = [
    {"id": "street", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]],
     "rules": {"street_vending": {}, "crowd_gathering": {}, "illegal_parking": {},
               "non_motor_parking": {}}},
    {"id": "shops", "polygon": [[0, 0.2], [0.3, 0.2], [0.3, 1], [0, 1]],
     "rules": {"shop_front_occupation": {}}},
    {"id": "corner", "polygon": [[0.6, 0.5], [1, 0.5], [1, 1], [0.7, 1]],
     "rules": {"piled_materials": {}, "garbage_overflow": {}}},
    {"id": "bench-row", "polygon": [[0.3, 0.4], [0.6, 0.4], [0.6, 0.9], [0.3, 0.9]],
     "rules": {"street_vending": {}, "crowd_gathering": {}}},
]  # fmt: skip


Frames = list[tuple[float, Detections, np.ndarray]]


def load_frames(limit: int) -> tuple[tuple[str, ...], Frames, tuple[float, float]]:
    """Frames with their detections, and the median (wall, CPU) seconds of one inference."""
    backend = load_backend(
        resolve_model(str(SHARED / "models" / "yolo11n_int8_openvino_model")), mode="latency"
    )
    capture = cv2.VideoCapture(str(SHARED / "footage" / "pedestrian_street_1080p.mp4"))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames: Frames = []
    infer_s: list[tuple[float, float]] = []
    while len(frames) < limit:
        ok, image = capture.read()
        if not ok:
            break
        start = time.perf_counter(), time.process_time()
        detections = backend.infer([np.asarray(image, np.uint8)])[0].detections
        infer_s.append((time.perf_counter() - start[0], time.process_time() - start[1]))
        gray = cv2.resize(
            cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (160, 90), interpolation=cv2.INTER_AREA
        )
        frames.append((len(frames) / fps, detections, gray))
    capture.release()
    backend.close()
    wall = statistics.median(w for w, _ in infer_s)
    return backend.info.names, frames, (wall, statistics.median(c for _, c in infer_s))


def run(names: tuple[str, ...], frames: Frames) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each ``process`` call."""
    cam = Camera.model_validate(
        {"id": "bench", "source": "mqtt", "fps": 30, "location": {"address": "x"}, "zones": ZONES}
    )
    pipe = CameraPipeline(cam, ZoneInfo("Asia/Shanghai"), names)
    t0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    took = []
    for s, detections, gray in frames:
        start = time.perf_counter(), time.process_time()
        pipe.process(t0 + timedelta(seconds=s), (1920, 1080), detections,
                     lambda region: {"garbage": 0.1}, gray)  # fmt: skip
        took.append((time.perf_counter() - start[0], time.process_time() - start[1]))
    return took


def covered_us() -> dict[str, float]:
    """Median microseconds of one ``_covered`` call, by zone shape and number of boxes."""
    rng = np.random.default_rng(0)
    zones = {
        "box": [(0, 0), (500, 0), (500, 300), (0, 300)],
        "concave": [(3, 7), (997, 7), (997, 611), (700, 611), (700, 200), (300, 200),
                    (300, 611), (3, 611)],
    }  # fmt: skip
    found = {}
    for n in (10, 20, 100):
        corner, size = rng.integers(0, 1000, (n, 2)), rng.integers(5, 120, (n, 2))
        boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
        for shape, polygon in zones.items():
            xy = np.asarray(polygon, np.float32)
            obs = ZoneObservation(
                xyxy=boxes, confidence=np.ones(n, np.float32), labels=("chair",) * n,
                track_id=np.arange(n, dtype=np.int64), displacement=np.zeros(n, np.float32),
                observed_s=np.ones(n, np.float32), new_object=np.ones(n, bool),
                zone_box=(*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist()),
                zone_area_px=1.0, zone_polygon=xy,
            )  # fmt: skip
            timer = timeit.Timer(partial(_covered, obs, np.ones(n, bool)))
            calls, _ = timer.autorange()
            runs = timer.repeat(5, calls)
            found[f"covered_us_{shape}_{n}"] = round(statistics.median(runs) / calls * 1e6, 1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 frames instead of the clip")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--covered", action="store_true", help="time the covered share alone")
    args = parser.parse_args()
    if args.covered:
        costs = covered_us()
        for key, value in costs.items():
            print(f"{key:>22}: {value}", file=sys.stderr)
        if args.json:
            print(json.dumps(costs))
        return 0
    names, frames, (infer_wall, infer_cpu) = load_frames(60 if args.quick else 300)
    took = run(names, frames)
    wall = [w for w, _ in took]
    cpu = statistics.median(c for _, c in took)
    detections = float(np.mean([len(d) for _, d, _ in frames]))
    result = {
        "frames": len(frames),
        "detections_per_frame": round(detections, 1),
        "rules_ms_median": round(statistics.median(wall) * 1e3, 3),
        "rules_ms_p95": round(float(np.percentile(wall, 95)) * 1e3, 3),
        "infer_ms_median": round(infer_wall * 1e3, 2),
        "rules_to_infer_ratio": round(statistics.median(wall) / infer_wall, 4),
        # CPU time (all threads of the process) is less distorted by other load on the machine.
        "rules_cpu_ms_median": round(cpu * 1e3, 3),
        "infer_cpu_ms_median": round(infer_cpu * 1e3, 2),
        "rules_to_infer_cpu_ratio": round(cpu / infer_cpu, 4),
    }
    for key, value in result.items():
        print(f"{key:>22}: {value}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
