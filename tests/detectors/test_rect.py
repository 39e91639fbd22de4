"""Rectangular model input: Ultralytics' auto letterbox, the reshaped export, and agreement of
its detections with the square input on real footage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest
from numpy.typing import NDArray
from ultralytics.data.augment import LetterBox

from gridpatrol.detectors.features import cell_box
from gridpatrol.detectors.models import ModelSpec, load_backend, resolve_model
from gridpatrol.detectors.openvino_backend import MAX_SHAPES, OpenVinoBackend, prepare, rect_shape
from gridpatrol.detectors.rect import anchors_for, to_input_shape
from gridpatrol.detectors.types import Letterbox

MODELS = ["yolo11n_int8_openvino_model", "yolov8n_int8_openvino_model"]


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (720, 1280, (384, 640)),
        (1080, 1920, (384, 640)),
        (1280, 720, (640, 384)),
        (600, 800, (480, 640)),
        (432, 768, (384, 640)),
        (640, 640, (640, 640)),
        (1936, 2592, (480, 640)),
        (50, 100, (320, 640)),
    ],
)
def test_rect_shape_is_ultralytics_auto_letterbox(
    height: int, width: int, expected: tuple[int, int]
) -> None:
    assert rect_shape((height, width), 640) == expected
    rng = np.random.default_rng(height + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    theirs = LetterBox(new_shape=(640, 640), auto=True, stride=32)(image=image)
    ours = prepare(image, expected)
    assert ours.tensor.shape == (1, *expected, 3)
    np.testing.assert_array_equal(ours.tensor[0], theirs)


def test_anchors_cover_each_level_in_order() -> None:
    points, strides = anchors_for((384, 640))
    assert points.shape == (2, 48 * 80 + 24 * 40 + 12 * 20) == (2, 5040)
    assert points[:, 0].tolist() == [0.5, 0.5]
    assert points[:, 48 * 80 - 1].tolist() == [79.5, 47.5]
    assert points[:, -1].tolist() == [19.5, 11.5]
    assert np.unique(strides, return_counts=True)[1].tolist() == [3840, 960, 240]


@pytest.mark.parametrize("name", MODELS)
def test_exports_reshape_to_a_rectangle(shared_dir: Path, name: str) -> None:
    xml = next((shared_dir / "models" / name).glob("*.xml"))
    model = to_input_shape(ov.Core().read_model(str(xml)), (384, 640), 640)
    assert list(model.input(0).get_shape()) == [1, 3, 384, 640]
    assert list(model.output(0).get_shape()) == [1, 84, 5040]


def test_a_model_without_a_yolo_head_is_refused() -> None:
    image = ov.opset13.parameter([1, 3, 640, 640], ov.Type.f32)
    pooled = ov.opset13.reduce_mean(image, np.array([2, 3]), keep_dims=False)
    model = ov.Model([pooled], [image], "not-yolo")
    with pytest.raises(ValueError, match="unexpected head"):
        to_input_shape(model, (384, 640), 640)
    with pytest.raises(ValueError, match="multiple of 32"):
        to_input_shape(model, (360, 640), 640)


@pytest.fixture(scope="module")
def spec(shared_dir: Path) -> ModelSpec:
    return resolve_model(str(shared_dir / "models" / "yolo11n_int8_openvino_model"))


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[NDArray[np.uint8]]:
    """20 frames: 10 of the 1920×1080 street, 10 of the 768×432 car park, evenly spaced."""
    out: list[NDArray[np.uint8]] = []
    for video in ("pedestrian_street_1080p.mp4", "car_park_overhead.mp4"):
        cap = cv2.VideoCapture(str(shared_dir / "footage" / video))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for index in np.linspace(0, count - 1, 10).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = cap.read()
            assert ok
            out.append(np.asarray(frame, dtype=np.uint8))
        cap.release()
    return out


@pytest.fixture(scope="module")
def backends(spec: ModelSpec) -> Iterator[tuple[OpenVinoBackend, OpenVinoBackend]]:
    square, rect = load_backend(spec), load_backend(spec, rect=True)
    assert isinstance(square, OpenVinoBackend) and isinstance(rect, OpenVinoBackend)
    yield square, rect
    square.close()
    rect.close()


def _iou(box: NDArray[np.float32], others: NDArray[np.float32]) -> NDArray[np.float32]:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / (area + areas - inter), dtype=np.float32)


def test_rect_input_finds_the_square_inputs_objects(
    backends: tuple[OpenVinoBackend, OpenVinoBackend], frames: list[NDArray[np.uint8]]
) -> None:
    """Every box above 0.5 confidence on the square input is found on the rectangle: same
    class, IoU >= 0.9, |Δconfidence| <= 0.1 (the same weights see 40 % less padding)."""
    square, rect = backends
    assert rect.prepare(frames[0]).tensor.shape == (1, 384, 640, 3)
    checked = 0
    for a, b in zip(square.infer(frames), rect.infer(frames), strict=True):
        for i in np.flatnonzero(a.detections.confidence > 0.5):
            same = np.flatnonzero(b.detections.class_id == a.detections.class_id[i])
            assert same.size, f"class {a.detections.class_id[i]} missing on the rectangle"
            overlap = _iou(a.detections.xyxy[i], b.detections.xyxy[same])
            j = same[int(overlap.argmax())]
            assert overlap.max() >= 0.9
            assert abs(a.detections.confidence[i] - b.detections.confidence[j]) <= 0.1
            checked += 1
    assert checked >= 50


def test_rect_streams_in_order_and_keeps_shapes_bounded(
    backends: tuple[OpenVinoBackend, OpenVinoBackend], frames: list[NDArray[np.uint8]]
) -> None:
    _square, rect = backends
    mixed = [frames[0], frames[15], frames[0][:, :700], frames[15]]
    streamed = list(rect.stream(enumerate(mixed)))
    assert [key for key, _result in streamed] == [0, 1, 2, 3]
    one_by_one = [rect.infer([image])[0] for image in mixed]
    for (_key, result), alone in zip(streamed, one_by_one, strict=True):
        np.testing.assert_allclose(result.detections.xyxy, alone.detections.xyxy, atol=1e-3)
    # Every further aspect ratio compiles its own input until MAX_SHAPES; then the square.
    inputs = [rect.input_shape((480, w)) for w in range(500, 2500, 100)]
    assert len(rect.compiled_shapes) == MAX_SHAPES + 1  # and the square
    assert rect_shape((480, 2400), 640) == (128, 640) and inputs[-1] == (640, 640)


def test_feature_cells_of_a_rectangular_input() -> None:
    """1280×720 in 640×384: scale 0.5, 12 px bands; the P5 map is 12×20 cells of 32 px, the
    P3 map 48×80 cells of 8 px, whose last row is all padding."""
    letterbox = Letterbox(scale=0.5, pad_x=0.0, pad_y=12.0)
    assert cell_box(letterbox, 640, (12, 20), None) == (0, 12, 0, 20)
    assert cell_box(letterbox, 640, (12, 20), (0.0, 0.0, 0.5, 0.5)) == (0, 6, 0, 10)
    assert cell_box(letterbox, 640, (48, 80), (0.5, 0.5, 1.0, 1.0)) == (24, 47, 40, 80)


def test_the_shipped_garbage_head_judges_alike_on_the_rectangle(
    spec: ModelSpec, shared_dir: Path
) -> None:
    """The head is trained on square-input features; the worker scores rectangular ones. On the
    140 development photos (4:3 and 3:4, so 640×480 / 480×640 inputs) the scores correlate
    (>= 0.98) and the decisions at the head's threshold agree on >= 95 % (136 of 140 when
    measured)."""
    from gridpatrol.detectors.heads import load_default_heads
    from gridpatrol.detectors.models import model_info

    head = load_default_heads(model_info(spec))["garbage"]
    square = load_backend(spec, feature_nodes=head.feature_nodes)
    rect = load_backend(spec, feature_nodes=head.feature_nodes, rect=True)
    photos = sorted((shared_dir / "datasets" / "garbage_dev").glob("*/*.jpg"))
    assert len(photos) == 140
    images = [np.asarray(cv2.imread(str(p)), dtype=np.uint8) for p in photos]
    a = np.array([head.score(r) for r in square.infer(images)])
    b = np.array([head.score(r) for r in rect.infer(images)])
    square.close()
    rect.close()
    assert np.corrcoef(a, b)[0, 1] >= 0.98
    assert ((a >= head.threshold) == (b >= head.threshold)).mean() >= 0.95
