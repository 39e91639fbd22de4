"""Rectangular model input: fewer pixels for frames that are not square.

A 1280×720 frame letterboxed into the exported 640×640 input spends 44 % of the pixels on grey
padding. Ultralytics' own predictor avoids that for PyTorch weights with its "auto" letterbox
(the smallest stride multiple that holds the resized frame: 640×384 here), but a fixed-size
export cannot be reshaped as it is: the YOLO11 attention block and the Detect head carry the
export's size in constants (reshape targets of ``h·w`` cells; the anchor points and strides of
8400 anchors). :func:`to_input_shape` rewrites exactly those constants for the new size, so the
same weights run on a 640×384 input at about 1.6 × the frame rate, with the head's decoding
still in the graph (output ``(1, 4 + nc, anchors)``, decoded as before).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
from numpy.typing import NDArray

STRIDES = (8, 16, 32)


def anchors_for(hw: tuple[int, int]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Anchor points (2, A) in cells (+0.5) and their strides (A,), level by level."""
    points: list[NDArray[np.float64]] = []
    strides: list[NDArray[np.float64]] = []
    for s in STRIDES:
        ys, xs = np.arange(hw[0] // s) + 0.5, np.arange(hw[1] // s) + 0.5
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        points.append(np.stack([gx.ravel(), gy.ravel()]))
        strides.append(np.full(gx.size, float(s)))
    return np.concatenate(points, 1).astype(np.float32), np.concatenate(strides).astype(np.float32)


def to_input_shape(model: ov.Model, hw: tuple[int, int], size: int) -> ov.Model:
    """Reshape a YOLOv8/11 detect export of ``size``² to the input ``hw``, in place.

    Raises ValueError when the model does not have the expected structure; the caller then
    keeps the square input.
    """
    if hw[0] % STRIDES[-1] or hw[1] % STRIDES[-1]:
        raise ValueError(f"input {hw} is not a multiple of {STRIDES[-1]}")
    old_anchors = sum((size // s) ** 2 for s in STRIDES)
    # Dynamic first: the old constants stay valid against unknown sizes while they are swapped.
    model.reshape([1, 3, -1, -1])
    anchors, strides = anchors_for(hw)
    swapped = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            new = _replacement(op, old_anchors, size, hw, anchors, strides)
            if new is not None:
                constant = ov.op.Constant(new)
                for target in list(op.output(0).get_target_inputs()):
                    target.replace_source_output(constant.output(0))
                swapped += 1
    try:
        model.reshape([1, 3, *hw])
    except RuntimeError as exc:
        raise ValueError(f"the model cannot take a {hw[1]}×{hw[0]} input: {exc}") from exc
    out = model.output(0).get_partial_shape()
    if out.is_dynamic or len(out) != 3 or out[2].get_length() != anchors.shape[1] or swapped < 2:
        raise ValueError(f"unexpected head after reshaping to {hw}: output {out}")
    return model


def _replacement(
    op: ov.Node,
    old_anchors: int,
    size: int,
    hw: tuple[int, int],
    anchors: NDArray[np.float32],
    strides: NDArray[np.float32],
) -> NDArray[np.generic] | None:
    """The new value of a size-bearing constant, or None to keep it."""
    shape = list(op.get_output_shape(0))
    data = op.get_data()
    if data.dtype == np.float32 and shape == [1, 2, old_anchors]:
        return anchors[None]
    if data.dtype == np.float32 and shape == [1, 1, old_anchors]:
        return strides[None, None]
    if data.dtype != np.int64 or len(shape) != 1 or not _feeds_reshape(op):
        return None
    top = size // STRIDES[-1]
    cells_h, cells_w = hw[0] // STRIDES[-1], hw[1] // STRIDES[-1]
    values = [int(v) for v in data]
    if old_anchors in values:  # the Detect head's distribution-focal-loss views
        new = [anchors.shape[1] if v == old_anchors else v for v in values]
    elif top * top in values:  # attention over the top level's cells, flattened
        new = [cells_h * cells_w if v == top * top else v for v in values]
    elif values[-2:] == [top, top]:  # ... and back to a map
        new = [*values[:-2], cells_h, cells_w]
    else:
        return None
    return None if new == values else np.asarray(new, dtype=np.int64)


def _feeds_reshape(op: ov.Node) -> bool:
    targets = op.output(0).get_target_inputs()
    return any(target.get_node().get_type_name() == "Reshape" for target in targets)
