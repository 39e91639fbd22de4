"""Motion gate: static scenes skip inference.

The gate compares a small blurred grayscale copy of each frame with the copy of the last
frame that was inferred. Comparing against the last *inferred* frame (not the previous
frame) means a slow change, such as a bag set down over several seconds, still accumulates
and opens the gate. A keyframe is forced at least every ``keyframe_s`` so stationary objects
are re-detected and keep their dwell. A frame of another size than the last inferred one is
always inferred: the small copies of the two look alike (both are 160×90), but a skipped frame
is judged with the last inferred frame's detections, whose pixels are those of its size. The
gate is a pure function of (state, frame, t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

GrayImage = npt.NDArray[np.uint8]
Reason = Literal["disabled", "first", "resized", "motion", "keyframe", "static"]

SMALL_SIZE = (160, 90)


@dataclass(frozen=True)
class MotionSettings:
    """Gate tuning.

    pixel_threshold: a small-frame pixel counts as changed when its gray level moved by more
        than this (0-255) after blurring, which absorbs sensor noise and JPEG artefacts.
    min_fraction: the frame is "moving" when at least this fraction of pixels changed.
    keyframe_s: the longest time between two inferred frames.
    """

    enabled: bool = True
    keyframe_s: float = 10.0
    pixel_threshold: int = 18
    min_fraction: float = 0.004
    blur: int = 5


@dataclass(frozen=True)
class MotionState:
    """The reference (last inferred) small frame, when it was inferred and its full size."""

    reference: GrayImage | None = None
    inferred_at: float | None = None
    frame_size: tuple[int, int] | None = None  # (width, height) of the frame as received


@dataclass(frozen=True)
class GateDecision:
    infer: bool
    reason: Reason
    changed: float  # fraction of changed pixels, 0 when not compared


def small_gray(image: npt.NDArray[np.uint8], size: tuple[int, int] = SMALL_SIZE) -> GrayImage:
    """A small grayscale copy of a BGR (or already gray) image, for the gate and the rules."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def changed_fraction(a: GrayImage, b: GrayImage, settings: MotionSettings) -> float:
    """Fraction of pixels whose blurred gray level differs by more than the threshold."""
    k = settings.blur | 1
    diff = cv2.absdiff(cv2.GaussianBlur(a, (k, k), 0), cv2.GaussianBlur(b, (k, k), 0))
    return float(np.count_nonzero(diff > settings.pixel_threshold)) / float(diff.size)


def gate(
    state: MotionState,
    gray: GrayImage,
    t: float,
    settings: MotionSettings,
    *,
    frame_size: tuple[int, int],
) -> tuple[MotionState, GateDecision]:
    """Decide whether the frame at ``t`` (epoch seconds), ``frame_size`` (width, height) as
    received and ``gray`` its small copy, is inferred.

    The reference moves only when a frame is inferred, so a skipped frame never hides the
    difference between what the model last saw and what the camera shows now.
    """
    inferred = MotionState(reference=gray, inferred_at=t, frame_size=frame_size)
    if not settings.enabled:
        return inferred, GateDecision(True, "disabled", 0.0)
    if state.reference is None or state.inferred_at is None:
        return inferred, GateDecision(True, "first", 0.0)
    if state.frame_size != frame_size or state.reference.shape != gray.shape:
        return inferred, GateDecision(True, "resized", 0.0)
    changed = changed_fraction(state.reference, gray, settings)
    if changed >= settings.min_fraction:
        return inferred, GateDecision(True, "motion", changed)
    # A clock step backwards (camera resync) must not postpone keyframes for ever.
    if t - state.inferred_at >= settings.keyframe_s or t < state.inferred_at:
        return inferred, GateDecision(True, "keyframe", changed)
    return state, GateDecision(False, "static", changed)
