"""Pooled scene features from the detector's own intermediate feature maps.

A scene head never runs a second network: it reads the maps that the detection forward pass
already computed (the backend adds them as extra outputs, see ``feature_nodes``) and pools
them over the region it is asked about. For YOLO11 these are the C2PSA output (end of the
backbone, stride 32) and the three neck outputs P3 / P4 / P5 that feed the Detect head.

Pooling recipe (stored in every head file so training and inference agree):

* the region (normalized x1, y1, x2, y2 of the ORIGINAL image; the whole image when None)
  is mapped through the letterbox to model-input pixels and then to feature-map cells, so
  the grey letterbox padding never contributes;
* each map is pooled over a spatial pyramid (``levels``: 1 = the whole region, 2 = a 2x2
  grid) with per-channel mean and max, and the pieces are concatenated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from gridpatrol.detectors.types import Letterbox

__all__ = [
    "YOLO11_NODES",
    "FeatureError",
    "PoolingRecipe",
    "cell_box",
    "pool_map",
    "pooled_features",
]

Region = tuple[float, float, float, float]

# Friendly names in the Ultralytics YOLO11 OpenVINO export (INT8 and FP32 alike): the
# activations that feed model.11 (upsample of the C2PSA block, model.10) and the first
# convolution of each Detect branch (model.23.cv2.{0,1,2}). The exporter names every SiLU
# after the last module that used it, hence the odd-looking prefixes.
_ACT = "__module.model.23.cv3.2.1.1.act/aten::silu_/Swish"
YOLO11_NODES: dict[str, str] = {
    "c2psa": f"{_ACT}_35",  # (256, 20, 20) at 640
    "p3": f"{_ACT}_43",  # (64, 80, 80)
    "p4": f"{_ACT}_54",  # (128, 40, 40)
    "p5": f"{_ACT}_70",  # (256, 20, 20)
}


class FeatureError(ValueError):
    """The inference result lacks a feature map the head needs, or the map is malformed."""


@dataclass(frozen=True, slots=True)
class PoolingRecipe:
    """How maps become one vector. Serialised into the head file."""

    nodes: tuple[str, ...] = tuple(YOLO11_NODES.values())
    levels: tuple[int, ...] = (1, 2)
    stats: tuple[str, ...] = ("mean", "max")
    imgsz: int = 640

    def as_dict(self) -> dict[str, object]:
        return {
            "nodes": list(self.nodes),
            "levels": list(self.levels),
            "stats": list(self.stats),
            "imgsz": self.imgsz,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> PoolingRecipe:
        def seq(key: str) -> list[object]:
            value = raw.get(key)
            if not isinstance(value, list):
                raise ValueError(f"pooling recipe: {key!r} must be a list")
            return value

        imgsz = raw.get("imgsz", 640)
        return cls(
            nodes=tuple(str(n) for n in seq("nodes")),
            levels=tuple(int(str(v)) for v in seq("levels")),
            stats=tuple(str(s) for s in seq("stats")),
            imgsz=int(str(imgsz)),
        )

    def dim(self, channels: Mapping[str, int]) -> int:
        cells = sum(level * level for level in self.levels)
        return sum(channels[n] for n in self.nodes) * cells * len(self.stats)


def cell_box(
    letterbox: Letterbox, imgsz: int, shape: tuple[int, int], region: Region | None
) -> tuple[int, int, int, int]:
    """Feature-map cells (y0, y1, x0, x1), end-exclusive, covering ``region``; never empty.

    The model input's long side is ``imgsz`` (square, or a rectangle that only shortened the
    other side), so the map's stride is ``imgsz`` over its long side; the letterbox pads both
    sides of an axis equally.
    """
    h, w = shape
    stride = imgsz / max(h, w)  # model pixels per cell
    cx0, cy0 = letterbox.pad_x, letterbox.pad_y
    cx1, cy1 = w * stride - letterbox.pad_x, h * stride - letterbox.pad_y
    rx0, ry0, rx1, ry1 = region if region is not None else (0.0, 0.0, 1.0, 1.0)
    rx0, rx1 = sorted((min(max(rx0, 0.0), 1.0), min(max(rx1, 0.0), 1.0)))
    ry0, ry1 = sorted((min(max(ry0, 0.0), 1.0), min(max(ry1, 0.0), 1.0)))
    x0 = math.floor((cx0 + rx0 * (cx1 - cx0)) / stride)
    x1 = math.ceil((cx0 + rx1 * (cx1 - cx0)) / stride)
    y0 = math.floor((cy0 + ry0 * (cy1 - cy0)) / stride)
    y1 = math.ceil((cy0 + ry1 * (cy1 - cy0)) / stride)
    x0, y0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    return y0, max(min(y1, h), y0 + 1), x0, max(min(x1, w), x0 + 1)


def _bins(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """Split [start, stop) into ``parts`` non-empty, possibly overlapping, ranges."""
    edges = np.linspace(start, stop, parts + 1)
    out = []
    for a, b in itertools.pairwise(edges):
        lo = min(math.floor(a), stop - 1)
        out.append((lo, max(math.ceil(b), lo + 1)))
    return out


def pool_map(
    fmap: NDArray[np.float32],
    cells: tuple[int, int, int, int],
    levels: Sequence[int],
    stats: Sequence[str],
) -> NDArray[np.float32]:
    """Spatial-pyramid pooling of one (C, H, W) map over ``cells``."""
    y0, y1, x0, x1 = cells
    parts: list[NDArray[np.float32]] = []
    for level in levels:
        for ya, yb in _bins(y0, y1, level):
            for xa, xb in _bins(x0, x1, level):
                block = fmap[:, ya:yb, xa:xb].reshape(fmap.shape[0], -1)
                for stat in stats:
                    parts.append(_stat(block, stat))
    return np.concatenate(parts).astype(np.float32)


def _stat(block: NDArray[np.float32], stat: str) -> NDArray[np.float32]:
    if stat == "mean":
        return np.asarray(block.mean(axis=1, dtype=np.float32), dtype=np.float32)
    if stat == "max":
        return np.asarray(block.max(axis=1), dtype=np.float32)
    raise ValueError(f"unknown pooling statistic {stat!r}")


def pooled_features(
    features: Mapping[str, NDArray[np.float32]],
    letterbox: Letterbox,
    recipe: PoolingRecipe,
    region: Region | None = None,
) -> NDArray[np.float32]:
    """The head's input vector: every node of ``recipe`` pooled over ``region``."""
    parts = []
    for node in recipe.nodes:
        fmap = features.get(node)
        if fmap is None:
            raise FeatureError(
                f"feature map {node!r} missing from the inference result: load the backend "
                "with the head's feature_nodes"
            )
        if fmap.ndim != 3:
            raise FeatureError(f"feature map {node!r} must be (C, H, W), got {fmap.shape}")
        cells = cell_box(letterbox, recipe.imgsz, (fmap.shape[1], fmap.shape[2]), region)
        parts.append(pool_map(fmap, cells, recipe.levels, recipe.stats))
    return np.concatenate(parts)
