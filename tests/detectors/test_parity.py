"""Parity of the fast OpenVINO path with the Ultralytics reference on real frames.

Frames: 7 evenly spaced frames from each of the three shared clips plus Ultralytics' bundled
``bus.jpg`` and ``zidane.jpg`` (23 images). Every box above 0.35 confidence from either backend
must have a partner from the other with the same class, IoU ≥ 0.9 and |Δconfidence| ≤ 0.02.
The OpenVINO backend is compared as the worker and scan run it: plain, and with the scene
heads' feature maps as extra outputs (read from copies of their branches, so the detection
graph compiles as without them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import ultralytics
from numpy.typing import NDArray

from gridpatrol.detectors.models import load_backend, model_info, resolve_model
from gridpatrol.detectors.scan import load_heads
from gridpatrol.detectors.types import Detections

ASSETS = Path(ultralytics.__file__).parent / "assets"
CLIPS = ("pedestrian_street_1080p.mp4", "car_park_overhead.mp4", "car_park_people_bikes.mp4")
PER_CLIP = 7
MIN_CONF, MIN_IOU, MAX_DCONF = 0.35, 0.9, 0.02


def read_frames(footage: Path) -> list[tuple[str, NDArray[np.uint8]]]:
    frames: list[tuple[str, NDArray[np.uint8]]] = []
    for clip in CLIPS:
        cap = cv2.VideoCapture(str(footage / clip))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for index in np.linspace(0, count - 1, PER_CLIP).astype(int).tolist():
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            assert ok, f"{clip} frame {index}"
            frames.append((f"{clip}#{index}", np.asarray(frame, dtype=np.uint8)))
        cap.release()
    for name in ("bus.jpg", "zidane.jpg"):
        frames.append((name, np.asarray(cv2.imread(str(ASSETS / name)), dtype=np.uint8)))
    return frames


def box_iou(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter), dtype=np.float32)


def unmatched(source: Detections, other: Detections) -> list[str]:
    """Boxes of ``source`` above MIN_CONF without a same-class partner in ``other``."""
    problems: list[str] = []
    for k in np.flatnonzero(source.confidence > MIN_CONF).tolist():
        if len(other) == 0:
            problems.append(f"box {k} has no partner at all")
            continue
        iou = box_iou(source.xyxy[k : k + 1], other.xyxy)[0]
        iou[other.class_id != source.class_id[k]] = 0.0
        j = int(iou.argmax())
        dconf = abs(float(other.confidence[j]) - float(source.confidence[k]))
        if iou[j] < MIN_IOU or dconf > MAX_DCONF:
            problems.append(f"box {k}: best IoU {iou[j]:.3f}, Δconf {dconf:.3f}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "features"),
    [
        ("yolo11n_int8_openvino_model", False),
        ("yolo11n_int8_openvino_model", True),
        ("yolov8n_int8_openvino_model", False),
    ],
    ids=["yolo11n", "yolo11n-feature-outputs", "yolov8n"],
)
def test_openvino_matches_ultralytics_on_real_frames(
    shared_dir: Path, model: str, features: bool
) -> None:
    frames = read_frames(shared_dir / "footage")
    assert len(frames) >= 20
    spec = resolve_model(str(shared_dir / "models" / model))
    # The feature maps the shipped scene heads read: what the worker adds for a camera with a
    # garbage_overflow zone, and scan always.
    heads = load_heads(model_info(spec)) if features else {}
    nodes = tuple(dict.fromkeys(n for h in heads.values() for n in h.feature_nodes))
    assert bool(nodes) == features
    fast = load_backend(spec, "openvino", nodes, conf=0.25, iou=0.7)
    reference = load_backend(spec, "ultralytics", conf=0.25, iou=0.7)
    images = [image for _, image in frames]
    ours, theirs = fast.infer(images), reference.infer(images)
    assert all(set(r.features) == set(nodes) for r in ours)
    assert "torch" in sys.modules  # the reference really ran through Ultralytics
    compared = 0
    failures: list[str] = []
    for (name, _), a, b in zip(frames, ours, theirs, strict=True):
        for direction, src, dst in (("fast→ref", a, b), ("ref→fast", b, a)):
            compared += int((src.detections.confidence > MIN_CONF).sum())
            failures += [
                f"{name} {direction} {p}" for p in unmatched(src.detections, dst.detections)
            ]
    assert failures == []
    assert compared >= 100  # the frames are busy enough for the comparison to mean something
    fast.close()
    reference.close()
