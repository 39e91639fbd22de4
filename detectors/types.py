"""Result types shared by every inference backend and by the code that consumes detections.

Arrays are validated once, when a value is created, so downstream code (tracking, rules,
evidence) can rely on shapes, dtypes and finite values without re-checking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Backend",
    "Detections",
    "InferenceResult",
    "Letterbox",
    "ModelInfo",
]


def _check(name: str, array: object, dtype: type[np.generic], ndim: int) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"Detections.{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype:
        raise TypeError(f"Detections.{name} must be {np.dtype(dtype)}, got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"Detections.{name} must have {ndim} dimension(s), got {array.shape}")


@dataclass(frozen=True, slots=True, eq=False)
class Detections:
    """Boxes of one image in pixels of the ORIGINAL image (not the model input).

    ``xyxy`` float32 (N, 4), ``confidence`` float32 (N,) in [0, 1], ``class_id`` int32 (N,),
    ``tracker_id`` int64 (N,) or None before tracking. Use :meth:`from_arrays` to coerce.
    """

    xyxy: NDArray[np.float32]
    confidence: NDArray[np.float32]
    class_id: NDArray[np.int32]
    tracker_id: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        _check("xyxy", self.xyxy, np.float32, 2)
        _check("confidence", self.confidence, np.float32, 1)
        _check("class_id", self.class_id, np.int32, 1)
        n = self.xyxy.shape[0]
        if self.xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy must be (N, 4), got {self.xyxy.shape}")
        if self.confidence.shape[0] != n or self.class_id.shape[0] != n:
            raise ValueError(
                f"Detections arrays disagree in length: xyxy {n}, "
                f"confidence {self.confidence.shape[0]}, class_id {self.class_id.shape[0]}"
            )
        if self.tracker_id is not None:
            _check("tracker_id", self.tracker_id, np.int64, 1)
            if self.tracker_id.shape[0] != n:
                raise ValueError(
                    f"Detections.tracker_id has length {self.tracker_id.shape[0]}, expected {n}"
                )
        if not np.isfinite(self.xyxy).all():
            raise ValueError("Detections.xyxy contains non-finite values")
        if not np.isfinite(self.confidence).all():
            raise ValueError("Detections.confidence contains non-finite values")
        if n and (self.confidence.min() < 0.0 or self.confidence.max() > 1.0):
            raise ValueError("Detections.confidence must lie in [0, 1]")
        if n and (self.xyxy[:, 2:] < self.xyxy[:, :2]).any():
            raise ValueError("Detections.xyxy must satisfy x2 >= x1 and y2 >= y1")
        if n and self.class_id.min() < 0:
            raise ValueError("Detections.class_id must be non-negative")

    @classmethod
    def from_arrays(
        cls,
        xyxy: ArrayLike,
        confidence: ArrayLike,
        class_id: ArrayLike,
        tracker_id: ArrayLike | None = None,
    ) -> Detections:
        """Build from any array-likes, converting to the canonical dtypes and shapes."""
        boxes = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
        return cls(
            xyxy=boxes,
            confidence=np.asarray(confidence, dtype=np.float32).reshape(-1),
            class_id=np.asarray(class_id, dtype=np.int32).reshape(-1),
            tracker_id=None
            if tracker_id is None
            else np.asarray(tracker_id, dtype=np.int64).reshape(-1),
        )

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), dtype=np.float32),
            confidence=np.zeros((0,), dtype=np.float32),
            class_id=np.zeros((0,), dtype=np.int32),
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: NDArray[np.bool_] | NDArray[np.integer] | slice) -> Detections:
        """Select rows by boolean mask, integer indices or slice (always returns Detections)."""
        if (
            isinstance(index, np.ndarray)
            and index.dtype == np.bool_
            and index.shape != (len(self),)
        ):
            raise IndexError(f"boolean mask of shape {index.shape} for {len(self)} detections")
        return Detections(
            xyxy=self.xyxy[index].reshape(-1, 4),
            confidence=self.confidence[index].reshape(-1),
            class_id=self.class_id[index].reshape(-1),
            tracker_id=None if self.tracker_id is None else self.tracker_id[index].reshape(-1),
        )

    def with_tracker_id(self, tracker_id: ArrayLike) -> Detections:
        return Detections(
            self.xyxy,
            self.confidence,
            self.class_id,
            np.asarray(tracker_id, dtype=np.int64).reshape(-1),
        )

    def labels(self, names: Sequence[str]) -> list[str]:
        """Class names of each detection; ids outside ``names`` are shown as ``class_<id>``."""
        return [names[c] if c < len(names) else f"class_{c}" for c in self.class_id.tolist()]

    def of_classes(self, names: Sequence[str], wanted: Sequence[str]) -> Detections:
        """Only the detections whose class name is in ``wanted``."""
        ids = [i for i, n in enumerate(names) if n in set(wanted)]
        return self[np.isin(self.class_id, np.asarray(ids, dtype=np.int32))]

    @property
    def area(self) -> NDArray[np.float32]:
        wh = self.xyxy[:, 2:] - self.xyxy[:, :2]
        return (wh[:, 0] * wh[:, 1]).astype(np.float32)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Identity of a loaded detection model; recorded with every detection result."""

    name: str
    version: str
    sha256: str
    path: Path
    names: tuple[str, ...]
    imgsz: int

    def as_record(self) -> dict[str, str]:
        """The model fields a candidate or scan output carries."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Maps original-image pixels to model-input pixels: ``model = image * scale + pad``."""

    scale: float
    pad_x: float
    pad_y: float

    def to_model(self, xyxy: NDArray[np.float32]) -> NDArray[np.float32]:
        out = xyxy.astype(np.float32, copy=True)
        out *= self.scale
        out[..., 0::2] += self.pad_x
        out[..., 1::2] += self.pad_y
        return out

    def to_image(self, xyxy: NDArray[np.float32]) -> NDArray[np.float32]:
        out = xyxy.astype(np.float32, copy=True)
        out[..., 0::2] -= self.pad_x
        out[..., 1::2] -= self.pad_y
        out /= self.scale
        return out


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """Detections of one image plus the intermediate feature maps (C, H, W) asked for."""

    detections: Detections
    features: Mapping[str, NDArray[np.float32]]
    letterbox: Letterbox


@runtime_checkable
class Backend(Protocol):
    """An inference backend: BGR uint8 images in, one result per image out, in order."""

    @property
    def info(self) -> ModelInfo: ...

    def infer(self, images: Sequence[NDArray[np.uint8]]) -> list[InferenceResult]: ...

    def close(self) -> None: ...
