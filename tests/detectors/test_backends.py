"""The OpenVINO fast path: Ultralytics-identical letterbox and NMS, async batches, features,
no torch; and the Ultralytics reference backend's shared result type."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from ultralytics.data.augment import LetterBox
from ultralytics.utils.nms import non_max_suppression

from gridpatrol.detectors.models import ModelSpec, load_backend, resolve_model
from gridpatrol.detectors.openvino_backend import (
    NMS_MATRIX,
    OpenVinoBackend,
    decode,
    decode_best,
    prepare,
    shared,
    with_best_class,
    with_preprocessing,
)
from gridpatrol.detectors.types import Backend, InferenceResult

ASSETS = Path(sys.modules["ultralytics"].__file__ or "").parent / "assets"
FEATURE_NODE = "__module.model.10/aten::cat/Concat"  # yolo11n C2PSA block input, 256×20×20


@pytest.fixture(scope="module")
def spec(shared_dir: Path) -> ModelSpec:
    return resolve_model(str(shared_dir / "models" / "yolo11n_int8_openvino_model"))


@pytest.fixture(scope="module")
def backend(spec: ModelSpec) -> Iterator[Backend]:
    b = load_backend(spec, "openvino", feature_nodes=[FEATURE_NODE])
    yield b
    b.close()


@pytest.fixture(scope="module")
def bus() -> NDArray[np.uint8]:
    return np.asarray(cv2.imread(str(ASSETS / "bus.jpg")), dtype=np.uint8)


@pytest.mark.parametrize(
    ("height", "width"),
    [(1080, 810), (720, 1280), (1080, 1920), (270, 480), (640, 640), (333, 517), (100, 50)],
)
def test_letterbox_is_pixel_identical_to_ultralytics(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = prepare(image, 640)
    theirs = LetterBox(new_shape=(640, 640), auto=False, stride=32)(image=image)
    assert ours.tensor.shape == (1, 640, 640, 3) and ours.tensor.dtype == np.uint8
    np.testing.assert_array_equal(ours.tensor[0], theirs)
    assert ours.shape == (height, width)
    scale = min(640 / height, 640 / width)
    assert ours.letterbox.scale == pytest.approx(scale)


def _random_head(seed: int, anchors: int = 8400, hot: int = 600) -> NDArray[np.float32]:
    """A raw (84, anchors) head output with clustered, overlapping boxes of a few classes."""
    rng = np.random.default_rng(seed)
    out = np.zeros((84, anchors), dtype=np.float32)
    centres = rng.uniform(50, 590, (12, 2))
    pick = rng.integers(0, 12, anchors)
    out[0:2] = (centres[pick] + rng.normal(0, 8, (anchors, 2))).T
    out[2:4] = rng.uniform(20, 120, (2, anchors))
    out[4:] = rng.uniform(0, 0.2, (80, anchors))
    idx = rng.choice(anchors, hot, replace=False)
    out[4 + rng.integers(0, 4, hot), idx] = rng.uniform(0.2, 0.99, hot)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize(("conf", "iou"), [(0.25, 0.7), (0.5, 0.45)])
@pytest.mark.parametrize("hot", [600, 2 * NMS_MATRIX])  # all pairs at once / box by box
def test_numpy_decode_and_nms_match_ultralytics(
    seed: int, conf: float, iou: float, hot: int
) -> None:
    head = _random_head(seed, hot=hot)
    assert (head[4:].max(axis=0) > 0.25).sum() > (NMS_MATRIX if hot > NMS_MATRIX else 100)
    xyxy, score, cls = decode(head, 80, conf=conf, iou=iou, max_det=300)
    (ref,) = non_max_suppression(torch.from_numpy(head[None]), conf, iou, max_det=300)
    ref_np = ref.numpy()
    assert len(xyxy) == len(ref_np) > 0
    np.testing.assert_allclose(xyxy, ref_np[:, :4], atol=1e-3)
    np.testing.assert_allclose(score, ref_np[:, 4], atol=1e-6)
    assert cls.tolist() == ref_np[:, 5].astype(int).tolist()


def _best_rows(head: NDArray[np.float32]) -> NDArray[np.float32]:
    """What :func:`with_best_class` computes in-graph, in numpy: (6, anchors)."""
    scores = head[4:]
    return np.concatenate([head[:4], scores.max(0)[None], scores.argmax(0)[None]]).astype(
        np.float32
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_best_class_rows_decode_like_the_full_head(seed: int) -> None:
    head = _random_head(seed)
    full = decode(head, 80, conf=0.25, iou=0.7, max_det=300)
    best = decode_best(_best_rows(head), conf=0.25, iou=0.7, max_det=300)
    for a, b in zip(full, best, strict=True):
        np.testing.assert_array_equal(a, b)


def test_in_graph_best_class_equals_max_and_argmax_of_the_head(
    spec: ModelSpec, bus: NDArray[np.uint8]
) -> None:
    import openvino as ov

    core = ov.Core()
    tensor = prepare(bus, 640).tensor
    heads = [
        core.compile_model(with_preprocessing(build(core.read_model(str(spec.path)))), "CPU")(
            tensor
        )[0][0]
        for build in (lambda m: m, with_best_class)
    ]
    full, rows = heads
    assert full.shape == (84, 8400) and rows.shape == (6, 8400)
    np.testing.assert_array_equal(rows, _best_rows(full))


def test_decode_respects_max_det_and_empty_output() -> None:
    head = _random_head(5)
    xyxy, _, _ = decode(head, 80, conf=0.25, iou=0.7, max_det=7)
    assert len(xyxy) == 7
    quiet = np.zeros((84, 8400), dtype=np.float32)
    xyxy, score, cls = decode(quiet, 80, conf=0.25, iou=0.7, max_det=300)
    assert xyxy.shape == (0, 4) and score.shape == (0,) and cls.shape == (0,)


def test_bus_detections_in_original_pixels(backend: Backend, bus: NDArray[np.uint8]) -> None:
    (result,) = backend.infer([bus])
    det = result.detections
    labels = det.labels(backend.info.names)
    assert labels.count("bus") == 1 and labels.count("person") >= 3
    h, w = bus.shape[:2]
    assert (det.xyxy[:, [0, 2]] >= 0).all() and (det.xyxy[:, [0, 2]] <= w).all()
    assert (det.xyxy[:, [1, 3]] >= 0).all() and (det.xyxy[:, [1, 3]] <= h).all()
    bus_box = det.xyxy[labels.index("bus")]
    assert bus_box[2] - bus_box[0] > 0.9 * w  # the bus spans the width of the photo
    assert (np.diff(det.confidence) <= 0).all()  # sorted by confidence, as Ultralytics


def test_batches_keep_order_and_match_single_calls(
    backend: Backend, bus: NDArray[np.uint8]
) -> None:
    zidane = np.asarray(cv2.imread(str(ASSETS / "zidane.jpg")), dtype=np.uint8)
    images = [bus, zidane, bus[:, ::-1].copy(), zidane[::2, ::2].copy(), bus]
    batch = backend.infer(images)
    assert len(batch) == len(images)
    for image, result in zip(images, batch, strict=True):
        (single,) = backend.infer([image])
        np.testing.assert_array_equal(result.detections.xyxy, single.detections.xyxy)
        assert result.detections.class_id.tolist() == single.detections.class_id.tolist()
    assert backend.infer([]) == []


def test_read_only_and_strided_canvases_infer_like_owned_ones(
    backend: Backend, bus: NDArray[np.uint8]
) -> None:
    """The runtime shares only C-contiguous, writeable memory; other canvases are copied."""
    assert isinstance(backend, OpenVinoBackend)
    owned = backend.prepare(bus)
    frozen = owned.tensor.copy()
    frozen.flags.writeable = False
    wide = np.zeros((*owned.tensor.shape[:3], 6), dtype=np.uint8)
    wide[..., ::2] = owned.tensor
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    expected = backend.infer_prepared([owned])[0].detections
    assert len(expected) > 0
    for tensor in (frozen, strided):
        assert not np.shares_memory(shared(tensor).data, tensor)
        got = backend.infer_prepared([replace(owned, tensor=tensor)])[0].detections
        np.testing.assert_array_equal(got.xyxy, expected.xyxy)
        np.testing.assert_array_equal(got.class_id, expected.class_id)
        np.testing.assert_array_equal(got.confidence, expected.confidence)
    assert np.shares_memory(shared(owned.tensor).data, owned.tensor)


def test_stream_keeps_order_over_a_lazy_source(backend: Backend, bus: NDArray[np.uint8]) -> None:
    assert isinstance(backend, OpenVinoBackend)
    zidane = np.asarray(cv2.imread(str(ASSETS / "zidane.jpg")), dtype=np.uint8)
    pulled: list[int] = []

    def source() -> Iterator[tuple[int, NDArray[np.uint8]] | None]:
        for k in range(7):
            pulled.append(k)
            yield None if k == 3 else (k, bus if k % 2 else zidane)

    out = list(backend.stream(source()))
    assert [k for k, _ in out] == [0, 1, 2, 4, 5, 6]
    singles = {k: backend.infer([bus if k % 2 else zidane])[0] for k in (0, 1)}
    for k, result in out:
        expected = singles[k % 2]
        np.testing.assert_array_equal(result.detections.xyxy, expected.detections.xyxy)
    assert pulled == list(range(7))


def test_stream_sets_the_wake_event_when_a_result_is_ready(
    backend: Backend, bus: NDArray[np.uint8]
) -> None:
    # The worker sleeps on this event when it has nothing to queue; a result must end that.
    assert isinstance(backend, OpenVinoBackend)
    wake = threading.Event()
    woken: list[bool] = []

    def source() -> Iterator[tuple[int, NDArray[np.uint8]] | None]:
        yield 0, bus
        woken.append(wake.wait(30))
        yield None

    out = list(backend.stream(source(), wake))
    assert woken == [True]
    assert [k for k, _ in out] == [0]
    assert len(out[0][1].detections) == len(backend.infer([bus])[0].detections)


def test_feature_nodes_come_from_the_same_forward_pass(
    backend: Backend, bus: NDArray[np.uint8]
) -> None:
    (result,) = backend.infer([bus])
    assert isinstance(result, InferenceResult)
    feature = result.features[FEATURE_NODE]
    assert feature.shape == (256, 20, 20) and feature.dtype == np.float32
    assert np.isfinite(feature).all() and float(np.abs(feature).sum()) > 0
    (other,) = backend.infer([np.full_like(bus, 30)])
    assert not np.allclose(other.features[FEATURE_NODE], feature)


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_feature_outputs_leave_the_detections_unchanged(
    spec: ModelSpec, shared_dir: Path, bus: NDArray[np.uint8], rect: bool
) -> None:
    """The scene heads' feature maps are read without recompiling the detection graph: a
    Result on a map inside the INT8 model's fused convolutions used to move confidences by up
    to 0.03 (and boxes by pixels). With them the detections, weak ones included, are those
    of the backend without feature outputs."""
    from gridpatrol.detectors.features import YOLO11_NODES

    nodes = tuple(YOLO11_NODES.values())
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    frames = [bus, np.asarray(cv2.imread(str(ASSETS / "zidane.jpg")), dtype=np.uint8)]
    for index in (150, 200):
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        assert ok
        frames.append(np.asarray(frame, dtype=np.uint8))
    cap.release()
    with_maps = load_backend(spec, feature_nodes=nodes, mode="latency", conf=0.01, rect=rect)
    plain = load_backend(spec, mode="latency", conf=0.01, rect=rect)
    ours, theirs = with_maps.infer(frames), plain.infer(frames)
    with_maps.close()
    plain.close()
    boxes = 0
    for a, b in zip(ours, theirs, strict=True):
        assert set(a.features) == set(nodes) and b.features == {}
        assert a.detections.class_id.tolist() == b.detections.class_id.tolist()
        np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            a.detections.confidence, b.detections.confidence, rtol=0, atol=1e-6
        )
        boxes += len(a.detections)
    assert boxes >= 200  # down to 0.01 confidence: hundreds of boxes, weak ones included
    p3 = ours[0].features[YOLO11_NODES["p3"]]
    assert p3.shape[0] == 64 and float(p3.max()) > 4.0  # SiLU values, not the 3.77-clipped INT8


def test_unknown_feature_node_is_an_error(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match="feature node 'no/such/node'"):
        load_backend(spec, feature_nodes=["no/such/node"])


def test_latency_mode_and_info(spec: ModelSpec, bus: NDArray[np.uint8]) -> None:
    b = load_backend(spec, mode="latency", conf=0.5)
    assert isinstance(b, OpenVinoBackend)
    assert b.info.name == "yolo11n" and len(b.info.sha256) == 64
    (result,) = b.infer([bus])
    assert len(result.detections) > 0 and float(result.detections.confidence.min()) > 0.5
    assert b.raw([b.prepare(bus).tensor], repeat=3) == 3
    assert b.requests == b.device_requests  # one stream: a second request would only queue
    b.close()


def test_throughput_mode_keeps_one_spare_request(backend: Backend, bus: NDArray[np.uint8]) -> None:
    assert isinstance(backend, OpenVinoBackend)
    assert backend.requests == backend.device_requests + 1 >= 2
    tensor = backend.prepare(bus).tensor
    for n in (1, backend.device_requests, backend.requests):
        assert backend.raw([tensor], repeat=5, requests=n) == 5


def test_fast_path_never_imports_torch(shared_dir: Path) -> None:
    model = str(shared_dir / "models/yolo11n_int8_openvino_model")
    code = (
        "import sys, json, cv2\n"
        "from gridpatrol.detectors.models import resolve_model, load_backend\n"
        f"b = load_backend(resolve_model({model!r}))\n"
        f"r = b.infer([cv2.imread({str(ASSETS / 'bus.jpg')!r})])\n"
        "print(json.dumps({'n': len(r[0].detections), 'mods': sorted(sys.modules)}))\n"
    )
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] >= 4
    heavy = [m for m in out["mods"] if m.split(".")[0] in ("torch", "ultralytics", "torchvision")]
    assert heavy == []


def test_ultralytics_backend_returns_the_same_type(spec: ModelSpec, bus: NDArray[np.uint8]) -> None:
    ref = load_backend(spec, "ultralytics")
    (result,) = ref.infer([bus])
    assert isinstance(result, InferenceResult)
    assert result.features == {}
    assert result.detections.xyxy.dtype == np.float32
    assert ref.info.sha256 == load_backend(spec, mode="latency").info.sha256
    assert ref.info.names[5] == "bus"
    assert result.letterbox == prepare(bus, 640).letterbox
    ref.close()


def test_dynamic_input_export_is_fixed_at_the_model_size(
    shared_dir: Path, tmp_path: Path, bus: NDArray[np.uint8]
) -> None:
    import openvino as ov

    source = shared_dir / "models" / "yolo11n_int8_openvino_model"
    model = ov.Core().read_model(str(source / "yolo11n.xml"))
    model.reshape([1, 3, -1, -1])  # as an export with dynamic axes would be
    folder = tmp_path / "dynamic_openvino_model"
    folder.mkdir()
    ov.save_model(model, str(folder / "yolo11n.xml"), compress_to_fp16=False)
    shutil.copy(source / "metadata.yaml", folder / "metadata.yaml")
    dynamic = load_backend(resolve_model(str(folder)), mode="latency")
    static = load_backend(resolve_model(str(source)), mode="latency")
    (a,), (b,) = dynamic.infer([bus]), static.infer([bus])
    np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, atol=0.5)
    assert a.detections.class_id.tolist() == b.detections.class_id.tolist()


def test_a_rectangular_export_infers_on_its_own_input(
    shared_dir: Path, tmp_path: Path, bus: NDArray[np.uint8]
) -> None:
    """An export of a 640×384 input (Ultralytics imgsz=(384, 640)) letterboxes each image into
    that rectangle: its results are those of the square export reshaped to it, and a portrait
    image fits its height."""
    import openvino as ov
    import yaml

    from gridpatrol.detectors.rect import to_input_shape

    source = shared_dir / "models" / "yolo11n_int8_openvino_model"
    model = to_input_shape(ov.Core().read_model(str(source / "yolo11n.xml")), (384, 640), 640)
    folder = tmp_path / "rect_openvino_model"
    folder.mkdir()
    ov.save_model(model, str(folder / "yolo11n.xml"), compress_to_fp16=False)
    meta = yaml.safe_load((source / "metadata.yaml").read_text())
    meta["imgsz"] = [384, 640]
    (folder / "metadata.yaml").write_text(yaml.safe_dump(meta))
    zidane = np.asarray(cv2.imread(str(ASSETS / "zidane.jpg")), dtype=np.uint8)
    assert zidane.shape[:2] == (720, 1280)
    reshaped = load_backend(resolve_model(str(source)), mode="latency", rect=True)
    (b,) = reshaped.infer([zidane])
    reshaped.close()
    for rect in (False, True):
        exported = load_backend(resolve_model(str(folder)), mode="latency", rect=rect)
        assert isinstance(exported, OpenVinoBackend)
        assert exported.info.imgsz == 640
        (a,), (portrait,) = exported.infer([zidane]), exported.infer([bus])
        assert exported.compiled_shapes == [(384, 640)]
        exported.close()
        assert len(a.detections) >= 2 and a.letterbox == b.letterbox
        assert a.detections.xyxy.tolist() == b.detections.xyxy.tolist()
        assert a.detections.class_id.tolist() == b.detections.class_id.tolist()
        assert portrait.letterbox.scale == 384 / 1080
        labels = portrait.detections.labels(exported.info.names)
        assert labels.count("bus") == 1
        h, w = bus.shape[:2]
        assert (portrait.detections.xyxy[:, [0, 2]] <= w).all()
        assert (portrait.detections.xyxy[:, [1, 3]] <= h).all()
