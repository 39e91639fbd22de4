"""Cost of the scene heads next to the detection they ride on.

Measures, in one run on frames of the pedestrian street (1920x1080): detection inference alone
(latency mode, one frame at a time), the same with the garbage head's four feature maps as
extra outputs, and ``SceneHead.score`` on the whole frame and on a zone box. Reports wall and
process CPU time per frame and the ratios.

    .venv/bin/python bench/heads.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from gridpatrol.detectors.heads import HEADS_DIR, SceneHead
from gridpatrol.detectors.models import load_backend, resolve_model

SHARED = Path(
    os.environ.get("GRIDPATROL_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")
)
MODEL = SHARED / "models" / "yolo11n_int8_openvino_model"
FOOTAGE = SHARED / "footage" / "pedestrian_street_1080p.mp4"
ZONE = (0.55, 0.45, 0.8, 0.9)


def frames(n: int) -> list[NDArray[np.uint8]]:
    cap = cv2.VideoCapture(str(FOOTAGE))
    out: list[NDArray[np.uint8]] = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(np.asarray(frame, np.uint8))
    cap.release()
    return out


def per_call(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and mean CPU seconds of ``fn``."""
    walls = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), (time.process_time() - cpu0) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = 10 if args.quick else 40
    images = frames(n)
    head = SceneHead.load(HEADS_DIR / "garbage")
    spec = resolve_model(str(MODEL))
    plain = load_backend(spec, mode="latency")
    with_maps = load_backend(spec, feature_nodes=head.feature_nodes, mode="latency")
    for b in (plain, with_maps):  # warm-up
        b.infer(images[:2])

    it = iter(range(10**9))
    detect = per_call(lambda: plain.infer([images[next(it) % n]]), n)
    it = iter(range(10**9))
    detect_maps = per_call(lambda: with_maps.infer([images[next(it) % n]]), n)
    result = with_maps.infer([images[0]])[0]
    whole = per_call(lambda: head.score(result), n * 5)
    zone = per_call(lambda: head.score(result, ZONE), n * 5)
    out = {
        "frames": n,
        "detect_ms": detect[0] * 1e3,
        "detect_cpu_ms": detect[1] * 1e3,
        "detect_with_maps_ms": detect_maps[0] * 1e3,
        "detect_with_maps_cpu_ms": detect_maps[1] * 1e3,
        "score_frame_ms": whole[0] * 1e3,
        "score_zone_ms": zone[0] * 1e3,
        "maps_overhead_ratio": detect_maps[0] / detect[0],
        "score_frame_vs_detect": whole[0] / detect[0],
        "score_zone_vs_detect": zone[0] / detect[0],
        "load_average": os.getloadavg()[0],
    }
    for key, value in out.items():
        print(f"{key:>26}: {value:.3f}" if isinstance(value, float) else f"{key:>26}: {value}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
