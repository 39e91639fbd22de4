"""The fast inference path: OpenVINO runtime, numpy pre- and post-processing, no torch.

Pre-processing reproduces Ultralytics' ``LetterBox`` (INTER_LINEAR resize, centred 114-grey
padding to the square model input) and post-processing its ``non_max_suppression`` (best class
per anchor, confidence threshold, class-aware NMS, ``max_det``), so both backends agree box for
box. With ``rect=True`` an image is instead letterboxed into the smallest stride multiple that
holds it (Ultralytics' "auto" letterbox, e.g. 640×384 for 16:9) and inferred by a copy of the
model reshaped to that input (:mod:`gridpatrol.detectors.rect`), compiled once per shape.

The caller's thread only letterboxes into a uint8 BGR canvas; BGR→RGB, /255 and the
NHWC→NCHW float32 conversion are compiled into the model (OpenVINO pre-processing), which runs
them fused on the inference threads and moves a quarter of the bytes. The best class of each
anchor is compiled in as well, so the completion callback reads 6 rows of the head instead of
84; the canvas is handed to the request without a copy. Images go through an
``AsyncInferQueue`` sized by the device's optimal number of requests plus a spare: the caller
prepares the next image while earlier ones are inferred.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import cv2
import numpy as np
import openvino as ov
import openvino.opset13 as ops
from numpy.typing import NDArray
from openvino.preprocess import ColorFormat, PrePostProcessor
from openvino.utils.node_factory import NodeFactory

from gridpatrol.detectors.rect import to_input_shape
from gridpatrol.detectors.types import Detections, InferenceResult, Letterbox, ModelInfo

log = logging.getLogger(__name__)

PAD_VALUE = 114
# Infer requests beyond the device's optimal number (throughput mode). A finished request
# stays taken until its completion callback, which decodes the outputs in Python, gets the GIL;
# without a spare, a core idles meanwhile (measured: 1.3-1.9 ms of idle CPU per frame, 0.1-0.3
# with one spare; docs/PERFORMANCE.md).
SPARE_REQUESTS = 1
MAX_NMS = 30000  # candidates kept before NMS, as Ultralytics
NMS_MATRIX = 1024  # up to this many candidates, NMS computes all pairwise overlaps at once
MAX_WH = 7680.0  # class offset that makes one NMS pass class-aware, as Ultralytics
MAX_SHAPES = 4  # rectangular inputs compiled per backend; other shapes take the square one
MAX_IMAGE_SHAPES = 1024  # image shapes whose input is remembered
FEATURE_BRANCH_OPS = 16  # ops copied at most to read one feature map (see feature_branch)
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A model-ready tensor (1, H, W, 3) uint8 BGR and how it maps back to the original image."""

    tensor: NDArray[np.uint8]
    letterbox: Letterbox
    shape: tuple[int, int]  # original (height, width)


def letterbox_params(
    shape: tuple[int, int], size: int | tuple[int, int]
) -> tuple[float, int, int, int, int]:
    """Scale, resized width/height and left/top padding for an image of ``shape`` (h, w) in
    an input of ``size`` (a square side or (height, width))."""
    h, w = shape
    in_h, in_w = (size, size) if isinstance(size, int) else size
    r = min(in_h / h, in_w / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    return r, new_w, new_h, round(dw - 0.1), round(dh - 0.1)


def rect_shape(shape: tuple[int, int], size: int, stride: int = 32) -> tuple[int, int]:
    """The (height, width) input for an image of ``shape`` (h, w): Ultralytics' auto letterbox.

    The image is scaled as into the ``size`` square; each side is then padded only up to the
    next multiple of ``stride``.
    """
    _r, new_w, new_h, _left, _top = letterbox_params(shape, size)
    return new_h + (size - new_h) % stride, new_w + (size - new_w) % stride


def prepare(image: NDArray[np.uint8], size: int | tuple[int, int]) -> Prepared:
    """Letterbox a BGR uint8 image into a (1, H, W, 3) uint8 canvas (Ultralytics' way); ``size``
    is a square side or (height, width)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    r, new_w, new_h, left, top = letterbox_params((h, w), size)
    in_h, in_w = (size, size) if isinstance(size, int) else size
    tensor = np.empty((1, in_h, in_w, 3), dtype=np.uint8)
    canvas = tensor[0]
    # Only the borders are painted: the resized image overwrites the rest in place.
    canvas[:top] = PAD_VALUE
    canvas[top + new_h :] = PAD_VALUE
    canvas[top : top + new_h, :left] = PAD_VALUE
    canvas[top : top + new_h, left + new_w :] = PAD_VALUE
    target = canvas[top : top + new_h, left : left + new_w]
    if (new_w, new_h) == (w, h):
        target[...] = image
    else:
        cv2.resize(image, (new_w, new_h), dst=target, interpolation=cv2.INTER_LINEAR)
    return Prepared(tensor, Letterbox(scale=r, pad_x=float(left), pad_y=float(top)), (h, w))


def with_preprocessing(model: ov.Model) -> ov.Model:
    """Accept (1, S, S, 3) uint8 BGR; convert to the model's RGB float32 NCHW / 255 in-graph."""
    ppp = PrePostProcessor(model)
    tensor = ppp.input(0).tensor()
    tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    tensor.set_color_format(ColorFormat.BGR)
    ppp.input(0).model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input(0).preprocess()
    steps.convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).scale(255.0)
    built: ov.Model = ppp.build()
    return built


def with_best_class(model: ov.Model) -> ov.Model:
    """Replace the head output (1, 4 + nc, A) by (1, 6, A): x, y, w, h, best score, its class.

    The best class per anchor is what Ultralytics' NMS keeps (one label per box); computed
    in-graph, the Python side reads 6 rows instead of 4 + nc. TopK is stable, so a tie goes
    to the lower class id, as ``argmax``.
    """
    result = model.get_results()[0]
    head = result.input_value(0)
    shape = head.get_partial_shape()
    classes, anchors = shape[1].get_length() - 4, shape[2].get_length()
    boxes = ops.slice(head, [0, 0, 0], [1, 4, anchors], [1, 1, 1])
    scores = ops.slice(head, [0, 4, 0], [1, 4 + classes, anchors], [1, 1, 1])
    best = ops.topk(scores, 1, 1, "max", "value", "i32", stable=True)
    class_id = ops.convert(best.output(1), ov.Type.f32)
    packed = ops.concat([boxes, best.output(0), class_id], 1)
    result.input(0).replace_source_output(packed.output(0))
    model.validate_nodes_and_infer_types()
    return model


def feature_branch(output: ov.Output) -> ov.Output:
    """A copy of the ops computing ``output`` back to the nearest quantized tensors, to read a
    feature map from without touching the detection graph.

    In an INT8 model a feature map (e.g. a SiLU feeding the Detect head) exists only inside a
    fused convolution whose FakeQuantize writes the quantized activation; a Result on the map
    itself breaks that fusion, the plugin quantizes differently, and the detections move (up
    to 0.03 in confidence on YOLO11n). The copy reads the same quantized inputs (materialised
    anyway) with copies of the weights, so it computes the map as the unfused graph does
    while the detection graph compiles exactly as without feature outputs. Where the map is
    more than ``FEATURE_BRANCH_OPS`` ops from quantized tensors (a float model) it is read
    directly: there is no quantization to disturb.
    """
    copies: dict[int, ov.Node] = {}
    try:
        return _copy(output, copies, [FEATURE_BRANCH_OPS])
    except _TooDeep:
        return output


class _TooDeep(Exception):
    pass


def _copy(output: ov.Output, copies: dict[int, ov.Node], budget: list[int]) -> ov.Output:
    node = output.get_node()
    kind = node.get_type_name()
    if kind in ("FakeQuantize", "Parameter"):
        return output
    key = node.get_instance_id()
    if key not in copies:
        if kind == "Constant":
            copies[key] = ops.constant(node.get_data().copy(), node.get_output_element_type(0))
        else:
            budget[0] -= 1
            if budget[0] < 0:
                raise _TooDeep
            inputs = [_copy(i.get_source_output(), copies, budget) for i in node.inputs()]
            factory = NodeFactory(node.get_type_info().version_id)
            copies[key] = factory.create(kind, inputs, node.get_attributes())
    return copies[key].output(output.get_index())


def nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float) -> NDArray[np.intp]:
    """Greedy NMS; ``boxes`` xyxy sorted or not. Returns kept indices by descending score.

    A box is suppressed by a kept one when their IoU exceeds ``iou``. Up to ``NMS_MATRIX``
    boxes, every pair's overlap is computed at once and the greedy pass only reads rows of
    it: a dozen array operations per frame instead of a dozen per kept box.
    """
    order = np.argsort(-scores, kind="stable")
    if order.size > NMS_MATRIX:
        return _nms_loop(boxes, order, iou)
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    iw = np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1)
    ih = np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1)
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area = (x2 - x1) * (y2 - y1)
    over = inter > iou * (area[:, None] + area - inter)  # IoU > iou, without dividing
    removed = np.zeros(order.size, dtype=bool)
    keep: list[int] = []
    for i in range(order.size):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return order[np.asarray(keep, dtype=np.intp)]


def _nms_loop(boxes: NDArray[np.float32], order: NDArray[np.intp], iou: float) -> NDArray[np.intp]:
    """The same greedy NMS one kept box at a time, in memory linear in the number of boxes."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        order = rest[inter <= iou * union]  # IoU <= iou, without dividing by zero
    return np.asarray(keep, dtype=np.intp)


Decoded = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int32]]


def decode(
    output: NDArray[np.float32], nc: int, *, conf: float, iou: float, max_det: int
) -> Decoded:
    """YOLOv8/11 head output (4 + nc, anchors) → xyxy in model pixels, confidence, class."""
    scores = output[4 : 4 + nc]
    best = scores.max(axis=0)
    cand = np.flatnonzero(best > conf)
    class_id = scores[:, cand].argmax(axis=0).astype(np.int32)
    return _select(output[:4, cand], best[cand], class_id, iou=iou, max_det=max_det)


def decode_best(packed: NDArray[np.float32], *, conf: float, iou: float, max_det: int) -> Decoded:
    """The output of :func:`with_best_class` (6, anchors) → xyxy, confidence, class."""
    cand = np.flatnonzero(packed[4] > conf)
    class_id = packed[5, cand].astype(np.int32)
    return _select(packed[:4, cand], packed[4, cand], class_id, iou=iou, max_det=max_det)


def _select(
    xywh_t: NDArray[np.float32],
    confidence: NDArray[np.float32],
    class_id: NDArray[np.int32],
    *,
    iou: float,
    max_det: int,
) -> Decoded:
    """Candidates above the confidence threshold (xywh as rows) → class-aware NMS, as
    Ultralytics' ``non_max_suppression``."""
    if confidence.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    if confidence.size > MAX_NMS:
        top = np.argsort(-confidence, kind="stable")[:MAX_NMS]
        xywh_t, confidence, class_id = xywh_t[:, top], confidence[top], class_id[top]
    xywh = xywh_t.T
    xyxy = np.empty_like(xywh)
    half = xywh[:, 2:] / 2
    xyxy[:, :2] = xywh[:, :2] - half
    xyxy[:, 2:] = xywh[:, :2] + half
    offset = (class_id.astype(np.float32) * MAX_WH)[:, None]
    keep = nms(xyxy + offset, confidence, iou)[:max_det]
    return xyxy[keep], confidence[keep], class_id[keep]


def to_detections(
    xyxy: NDArray[np.float32],
    confidence: NDArray[np.float32],
    class_id: NDArray[np.int32],
    letterbox: Letterbox,
    shape: tuple[int, int],
) -> Detections:
    """Model-input boxes → original-image pixels, clipped to the image."""
    boxes = letterbox.to_image(xyxy)
    h, w = shape
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
    return Detections(
        np.ascontiguousarray(boxes, dtype=np.float32),
        np.ascontiguousarray(confidence, dtype=np.float32),
        np.ascontiguousarray(class_id, dtype=np.int32),
    )


class FeatureNodeError(ValueError):
    """A feature node (``feature_nodes``) the model's graph does not hold: the node names
    belong to another backbone or export."""

    def __init__(self, node: str, graph: str) -> None:
        super().__init__(f"feature node {node!r} is not in {graph}")
        self.node = node


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The model compiled for one input (height, width), with its inference queue."""

    hw: tuple[int, int]
    compiled: ov.CompiledModel
    queue: ov.AsyncInferQueue


class OpenVinoBackend:
    """OpenVINO IR (or ONNX) detector. ``infer`` is thread-safe (one batch at a time)."""

    def __init__(
        self,
        model_path: Path,
        info: ModelInfo,
        *,
        feature_nodes: Sequence[str] = (),
        mode: Literal["throughput", "latency"] = "throughput",
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        device: str = "CPU",
        rect: bool = False,
    ) -> None:
        self.info = info
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.feature_nodes = tuple(feature_nodes)
        self.device, self.mode = device, mode
        self._core = ov.Core()
        model = self._core.read_model(str(model_path))
        if model.input(0).get_partial_shape().is_dynamic:
            # A dynamic export (e.g. ONNX with dynamic axes): fix it at the model's own size.
            model.reshape([1, 3, info.imgsz, info.imgsz])
        self._add_feature_outputs(model)
        dims = model.input(0).get_partial_shape()
        # An export of a rectangle (Ultralytics imgsz=(384, 640)) takes only that input: each
        # image is letterboxed into its own (height, width), not a square of either side.
        self.input_hw = (int(dims[2].get_length()), int(dims[3].get_length()))
        self.size = max(self.input_hw)  # the long side, as ModelInfo.imgsz
        self.nc = int(model.output(0).get_partial_shape()[1].get_length()) - 4
        if not info.names:
            self.info = ModelInfo(
                info.name,
                info.version,
                info.sha256,
                info.path,
                tuple(f"class_{i}" for i in range(self.nc)),
                info.imgsz,
            )
        square = self.input_hw[0] == self.input_hw[1]
        if rect and not square:
            # Rectangular copies are made from a square export; this one has its own shape.
            log.info(
                "model %s: exported for a %d×%d input, which every image is letterboxed into",
                self.info.name,
                self.input_hw[1],
                self.input_hw[0],
            )
        self._model = model.clone() if rect and square else None  # for rectangular copies
        self._lock = threading.Lock()
        self._wake: threading.Event | None = None  # the running stream's, set on each result
        self._shapes_lock = threading.Lock()
        base = self._compile(model, self.input_hw)
        self.requests = len(base.queue)
        self.device_requests = self.requests - (SPARE_REQUESTS if mode == "throughput" else 0)
        self._by_shape: dict[tuple[int, int], _Compiled] = {base.hw: base}
        self._shape_of: dict[tuple[int, int], tuple[int, int]] = {}  # image shape -> input
        log.info(
            "model %s %s (sha256 %s…) on %s, %s mode, %d infer requests, %s input",
            self.info.name,
            self.info.version,
            self.info.sha256[:12],
            device,
            mode,
            self.requests,
            "rectangular" if self._model is not None or not square else "square",
        )

    def _compile(self, model: ov.Model, hw: tuple[int, int]) -> _Compiled:
        compiled = self._core.compile_model(
            with_preprocessing(with_best_class(model)),
            self.device,
            {"PERFORMANCE_HINT": self.mode.upper()},
        )
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        if self.mode == "throughput":
            requests += SPARE_REQUESTS
        queue = ov.AsyncInferQueue(compiled, requests)
        queue.set_callback(self._on_done)
        return _Compiled(hw, compiled, queue)

    def _add_feature_outputs(self, model: ov.Model) -> None:
        if not self.feature_nodes:
            return
        by_name = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        outputs: list[Any] = []
        for name in self.feature_nodes:
            op = by_name.get(name)
            if op is None:
                raise FeatureNodeError(name, model.get_friendly_name())
            outputs.append(feature_branch(op.output(0)))
        model.add_outputs(outputs)

    def input_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The model input (height, width) an image of ``shape`` (h, w) is letterboxed into."""
        if self._model is None:
            return self.input_hw
        hw = self._shape_of.get(shape)
        if hw is None:
            with self._shapes_lock:  # a new shape compiles once, whoever asks first
                hw = self._shape_of.get(shape) or self._rect_for(shape)
                if len(self._shape_of) >= MAX_IMAGE_SHAPES:
                    self._shape_of.clear()  # bare JPEGs of ever new sizes: stay bounded
                self._shape_of[shape] = hw
        return hw

    def _rect_for(self, shape: tuple[int, int]) -> tuple[int, int]:
        hw = rect_shape(shape, self.size)
        if hw in self._by_shape:
            return hw
        if self._model is None or len(self._by_shape) > MAX_SHAPES:
            return self.input_hw
        try:
            compiled = self._compile(to_input_shape(self._model.clone(), hw, self.size), hw)
        except (ValueError, RuntimeError) as exc:
            log.warning("model %s: square input only: %s", self.info.name, exc)
            self._model = None
            return self.input_hw
        self._by_shape[hw] = compiled
        log.info("model %s compiled for a %d×%d input", self.info.name, hw[1], hw[0])
        return hw

    @property
    def compiled_shapes(self) -> list[tuple[int, int]]:
        """The inputs (height, width) compiled so far, the export's own first."""
        return list(self._by_shape)

    # --- public API ---

    def prepare(self, image: NDArray[np.uint8]) -> Prepared:
        return prepare(image, self.input_shape((image.shape[0], image.shape[1])))

    def infer(self, images: Iterable[NDArray[np.uint8]]) -> list[InferenceResult]:
        """Infer a batch in order. ``images`` may be a lazy iterable (e.g. decoding generator):
        image k+1 is pulled and prepared while image k is being inferred."""
        return self.infer_prepared(self.prepare(image) for image in images)

    def infer_prepared(self, prepared: Iterable[Prepared]) -> list[InferenceResult]:
        results: dict[int, InferenceResult] = {}
        with self._lock:
            count = 0
            for index, item in enumerate(prepared):
                self._start(item, (results, index, item))
                count = index + 1
            self._wait_all()
        return [results[i] for i in range(count)]

    def stream(
        self,
        items: Iterable[tuple[K, NDArray[np.uint8]] | None],
        wake: threading.Event | None = None,
    ) -> Iterator[tuple[K, InferenceResult]]:
        """Keep the queue full over an open-ended source of (key, image); results in order.

        The source is pulled again as soon as an image is queued, so the next image is decoded
        and prepared while earlier ones are inferred and the queue never drains between
        batches. The source may yield None when nothing is waiting: finished results are
        handed back then. ``wake`` is set whenever an inference finishes, so a source that
        waits for work can wait on it. One consumer at a time (the generator holds the backend).
        """
        results: dict[int, InferenceResult] = {}
        pending: deque[tuple[int, K]] = deque()
        index = 0
        with self._lock, self._waking(wake):
            for item in items:
                if item is not None:
                    key, image = item
                    prepared = self.prepare(image)
                    self._start(prepared, (results, index, prepared))
                    pending.append((index, key))
                    index += 1
                while pending and pending[0][0] in results:
                    done, key = pending.popleft()
                    yield key, results.pop(done)
            self._wait_all()
            while pending:
                done, key = pending.popleft()
                yield key, results.pop(done)

    def raw(
        self, tensors: Sequence[NDArray[np.uint8]], repeat: int = 1, requests: int | None = None
    ) -> int:
        """The runtime alone on prepared tensors (no letterbox, no decode), ``repeat`` times,
        over ``requests`` infer requests (default: as many as the backend's).

        The tensors share one shape. Returns the number of inferences; used by the benchmark
        as the throughput ceiling.
        """
        done = [0]

        def count(_request: ov.InferRequest, _userdata: object) -> None:
            done[0] += 1

        compiled = self._by_shape[_hw(tensors[0])].compiled
        queue = ov.AsyncInferQueue(compiled, requests or self.requests)
        queue.set_callback(count)
        for _ in range(repeat):
            for tensor in tensors:
                queue.start_async(shared(tensor))
        queue.wait_all()
        return done[0]

    def close(self) -> None:
        with self._lock:
            self._wait_all()

    @contextlib.contextmanager
    def _waking(self, wake: threading.Event | None) -> Iterator[None]:
        self._wake = wake
        try:
            yield
        finally:
            self._wait_all()  # no callback may set the event after the stream ends
            self._wake = None

    def _start(self, item: Prepared, userdata: object) -> None:
        self._by_shape[_hw(item.tensor)].queue.start_async(shared(item.tensor), userdata)

    def _wait_all(self) -> None:
        for compiled in list(self._by_shape.values()):  # another thread may add a shape
            compiled.queue.wait_all()

    # --- completion (runs on an OpenVINO thread) ---

    def _on_done(self, request: ov.InferRequest, userdata: object) -> None:
        results, index, item = _unpack(userdata)
        try:
            output = request.get_output_tensor(0).data[0]
            xyxy, confidence, class_id = decode_best(
                output, conf=self.conf, iou=self.iou, max_det=self.max_det
            )
            features = {
                name: np.array(request.get_output_tensor(i + 1).data[0], dtype=np.float32)
                for i, name in enumerate(self.feature_nodes)
            }
            detections = to_detections(xyxy, confidence, class_id, item.letterbox, item.shape)
            results[index] = InferenceResult(detections, features, item.letterbox)
        except Exception:
            log.exception("decoding the output of model %s failed", self.info.name)
            results[index] = InferenceResult(Detections.empty(), {}, item.letterbox)
        if (wake := self._wake) is not None:
            wake.set()


def shared(tensor: NDArray[np.uint8]) -> ov.Tensor:
    """The runtime's view of a prepared canvas, without a copy where the array allows it.

    Handed a NumPy array, ``start_async`` looks up the request's input tensor and checks type,
    layout and flags before wrapping it (about 0.05 ms a call); a Tensor goes through as it is,
    whatever ``share_inputs`` says, so whether memory is shared is decided here.
    The canvas stays alive in the request's userdata until the completion callback. The
    runtime can only share a C-contiguous, writeable array: any other is copied.
    """
    if tensor.flags.c_contiguous and tensor.flags.writeable:
        return ov.Tensor(tensor, shared_memory=True)
    return ov.Tensor(np.ascontiguousarray(tensor), shared_memory=False)


def _hw(tensor: NDArray[np.uint8]) -> tuple[int, int]:
    return int(tensor.shape[1]), int(tensor.shape[2])


def _unpack(userdata: object) -> tuple[dict[int, InferenceResult], int, Prepared]:
    return cast(tuple[dict[int, InferenceResult], int, Prepared], userdata)
