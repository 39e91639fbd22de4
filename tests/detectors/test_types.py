"""Detections, Letterbox and ModelInfo: validation on creation, indexing, labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gridpatrol.detectors.types import Detections, Letterbox, ModelInfo

NAMES = ("person", "bicycle", "car")


def make(n: int = 3) -> Detections:
    return Detections(
        xyxy=np.array([[i, i, i + 10, i + 20] for i in range(n)], dtype=np.float32),
        confidence=np.linspace(0.9, 0.5, n, dtype=np.float32),
        class_id=np.arange(n, dtype=np.int32) % 3,
    )


def test_valid_detections_expose_length_and_labels() -> None:
    det = make(3)
    assert len(det) == 3
    assert det.labels(NAMES) == ["person", "bicycle", "car"]
    assert det.tracker_id is None
    np.testing.assert_allclose(det.area, [200.0, 200.0, 200.0])


def test_labels_outside_names_are_named_by_id() -> None:
    det = Detections.from_arrays([[0, 0, 1, 1]], [0.5], [7])
    assert det.labels(NAMES) == ["class_7"]


def test_empty_has_canonical_shapes_and_dtypes() -> None:
    det = Detections.empty()
    assert len(det) == 0
    assert det.xyxy.shape == (0, 4) and det.xyxy.dtype == np.float32
    assert det.confidence.shape == (0,) and det.confidence.dtype == np.float32
    assert det.class_id.shape == (0,) and det.class_id.dtype == np.int32
    assert det.labels(NAMES) == []


def test_boolean_mask_selects_rows_of_every_array() -> None:
    det = make(3).with_tracker_id([11, 12, 13])
    picked = det[det.confidence > 0.6]
    assert len(picked) == 2
    assert picked.tracker_id is not None
    assert picked.tracker_id.tolist() == [11, 12]
    assert picked.class_id.tolist() == [0, 1]
    assert picked.xyxy.tolist() == [[0, 0, 10, 20], [1, 1, 11, 21]]
    none = det[np.zeros(3, dtype=bool)]
    assert len(none) == 0 and none.xyxy.shape == (0, 4)


def test_integer_index_and_slice_keep_two_dimensional_boxes() -> None:
    det = make(3)
    assert det[np.array([2])].xyxy.shape == (1, 4)
    assert det[1:].class_id.tolist() == [1, 2]


def test_mask_of_wrong_length_is_refused() -> None:
    with pytest.raises(IndexError, match="boolean mask"):
        make(3)[np.ones(2, dtype=bool)]


def test_of_classes_filters_by_name() -> None:
    det = make(3)
    assert det.of_classes(NAMES, ["car", "person"]).class_id.tolist() == [0, 2]


def good() -> dict[str, Any]:
    return {
        "xyxy": np.array([[0, 0, 10, 10]], dtype=np.float32),
        "confidence": np.array([0.5], dtype=np.float32),
        "class_id": np.array([1], dtype=np.int32),
    }


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("xyxy", np.array([[0, 0, 10, 10]], dtype=np.float64), TypeError, "float32"),
        ("xyxy", [[0, 0, 10, 10]], TypeError, "numpy array"),
        ("xyxy", np.zeros((1, 3), dtype=np.float32), ValueError, r"\(N, 4\)"),
        ("xyxy", np.zeros(4, dtype=np.float32), ValueError, "2 dimension"),
        ("xyxy", np.array([[0, 0, np.nan, 10]], dtype=np.float32), ValueError, "non-finite"),
        ("xyxy", np.array([[0, 0, np.inf, 10]], dtype=np.float32), ValueError, "non-finite"),
        ("xyxy", np.array([[10, 0, 0, 10]], dtype=np.float32), ValueError, "x2 >= x1"),
        ("confidence", np.array([0.5], dtype=np.float64), TypeError, "float32"),
        ("confidence", np.array([np.nan], dtype=np.float32), ValueError, "non-finite"),
        ("confidence", np.array([1.5], dtype=np.float32), ValueError, r"\[0, 1\]"),
        ("confidence", np.array([0.5, 0.4], dtype=np.float32), ValueError, "disagree"),
        ("class_id", np.array([1], dtype=np.int64), TypeError, "int32"),
        ("class_id", np.array([-1], dtype=np.int32), ValueError, "non-negative"),
        ("tracker_id", np.array([1], dtype=np.int32), TypeError, "int64"),
        ("tracker_id", np.array([1, 2], dtype=np.int64), ValueError, "length"),
    ],
)
def test_invalid_arrays_are_refused_on_creation(
    field: str, value: Any, error: type[Exception], match: str
) -> None:
    kwargs = good() | {field: value}
    with pytest.raises(error, match=match):
        Detections(**kwargs)


def test_from_arrays_coerces_lists_and_dtypes() -> None:
    det = Detections.from_arrays([[1, 2, 3, 4]], [0.25], [2.0], tracker_id=[5])
    assert det.xyxy.dtype == np.float32 and det.class_id.dtype == np.int32
    assert det.tracker_id is not None and det.tracker_id.dtype == np.int64


def test_detections_are_frozen() -> None:
    det = make(1)
    with pytest.raises(AttributeError):
        det.xyxy = np.zeros((0, 4), dtype=np.float32)  # type: ignore[misc]


def test_letterbox_round_trip() -> None:
    lb = Letterbox(scale=0.5, pad_x=0.0, pad_y=140.0)
    boxes = np.array([[100, 200, 300, 400]], dtype=np.float32)
    model = lb.to_model(boxes)
    assert model.tolist() == [[50, 240, 150, 340]]
    np.testing.assert_allclose(lb.to_image(model), boxes)


def test_model_info_record() -> None:
    info = ModelInfo("yolo11n", "8.3.167", "ab" * 32, Path("m.xml"), NAMES, 640)
    assert info.as_record() == {"name": "yolo11n", "version": "8.3.167", "sha256": "ab" * 32}
