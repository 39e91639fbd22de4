"""The motion gate on real footage: moving street, static scene, JPEG noise, keyframes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.detectors.motion import GateDecision, MotionSettings, MotionState, gate, small_gray


def _frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    for i in range(max(indices) + 1):
        ok, frame = cap.read()
        assert ok, f"{path} has fewer than {i + 1} frames"
        if i in indices:
            out.append(frame)
    cap.release()
    return out


def _rejpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    decoded: np.ndarray = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return decoded


@pytest.fixture(scope="module")
def street(shared_dir: Path) -> list[np.ndarray]:
    # 30 fps: frames 0, 15, 30 are half a second apart; people walk between them.
    return _frames(shared_dir / "footage" / "pedestrian_street_1080p.mp4", [0, 15, 30])


def _run(frames: list[np.ndarray], times: list[float], settings: MotionSettings) -> list[str]:
    state = MotionState()
    reasons = []
    for img, t in zip(frames, times, strict=True):
        size = (img.shape[1], img.shape[0])
        state, decision = gate(state, small_gray(img), t, settings, frame_size=size)
        assert isinstance(decision, GateDecision)
        assert decision.infer == (decision.reason != "static")
        reasons.append(decision.reason)
    return reasons


def test_moving_street_is_inferred(street: list[np.ndarray]) -> None:
    assert _run(street, [0.0, 0.5, 1.0], MotionSettings()) == ["first", "motion", "motion"]


@pytest.mark.parametrize("quality", [95, 70, 50])
def test_static_scene_with_jpeg_noise_is_skipped(street: list[np.ndarray], quality: int) -> None:
    still = street[0]
    frames = [still] + [_rejpeg(still, quality) for _ in range(4)]
    reasons = _run(frames, [0.0, 0.5, 1.0, 1.5, 2.0], MotionSettings())
    assert reasons == ["first", "static", "static", "static", "static"]


def test_keyframe_forced_every_keyframe_s(street: list[np.ndarray]) -> None:
    still = street[0]
    times = [0.0, 4.0, 9.9, 10.0, 15.0, 20.0, 20.5]
    reasons = _run([still] * len(times), times, MotionSettings(keyframe_s=10.0))
    assert reasons == ["first", "static", "static", "keyframe", "static", "keyframe", "static"]


def test_disabled_gate_infers_everything(street: list[np.ndarray]) -> None:
    still = street[0]
    reasons = _run([still] * 3, [0.0, 0.5, 1.0], MotionSettings(enabled=False))
    assert reasons == ["disabled"] * 3


def test_slow_change_accumulates_against_the_last_inferred_frame(
    street: list[np.ndarray],
) -> None:
    # An object appears in small steps, each alone below the threshold; the gate compares with
    # the last inferred frame, so the accumulated change opens it.
    base = street[0].copy()
    h, w = base.shape[:2]
    settings = MotionSettings(min_fraction=0.01)
    steps = []
    for k in range(1, 6):
        img = base.copy()
        x2 = int(w * 0.30 + w * 0.02 * k)
        cv2.rectangle(img, (int(w * 0.30), int(h * 0.40)), (x2, int(h * 0.60)), (0, 0, 0), -1)
        steps.append(img)
    reasons = _run([base, *steps], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], settings)
    assert reasons[0] == "first"
    assert reasons[1] == "static"  # the first step alone is too small
    assert "motion" in reasons[2:]


def test_clock_going_backwards_forces_a_keyframe(street: list[np.ndarray]) -> None:
    still = street[0]
    reasons = _run([still] * 3, [100.0, 101.0, 50.0], MotionSettings())
    assert reasons == ["first", "static", "keyframe"]


def test_a_frame_of_another_size_is_inferred(street: list[np.ndarray]) -> None:
    """The same view at another size has the same small copy, but the last inferred frame's
    boxes are not in its pixels: it is inferred, and the new size is the reference."""
    still = street[0]  # 1920×1080
    smaller = cv2.resize(still, (1280, 720), interpolation=cv2.INTER_AREA)
    reasons = _run([still, smaller, smaller, still], [0.0, 1.0, 2.0, 3.0], MotionSettings())
    assert reasons == ["first", "resized", "static", "resized"]
