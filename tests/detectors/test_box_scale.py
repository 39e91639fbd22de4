"""Boxes found on a reduced decode, in pixels of the original frame: each axis by its own
factor (the decoder rounds an odd side up) and clipped to the frame."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.detectors.types import Detections, InferenceResult, Letterbox
from gridpatrol.detectors.worker import _to_original
from gridpatrol.ingest.messages import FrameHeader, encode_frame
from tests.detectors.test_worker import _worker


def _whole(width: int, height: int) -> InferenceResult:
    """One box over the whole of a decoded image of ``width`` x ``height``."""
    xyxy = np.array([[0.0, 0.0, width, height]], dtype=np.float32)
    detections = Detections(xyxy, np.array([0.9], dtype=np.float32), np.array([0], dtype=np.int32))
    return InferenceResult(detections, {}, Letterbox(0.5, 0.0, 0.0))


@pytest.mark.parametrize(
    ("frame", "decoded"),
    [
        ((1280, 721), (640, 361)),  # an odd height: the decoder's 361 rows hold 722
        ((1281, 720), (641, 360)),  # an odd width: one x factor would shorten y
        ((1281, 721), (641, 361)),
        ((2561, 1441), (641, 361)),  # reduced by 4
    ],
)
def test_a_box_to_the_decoded_edge_ends_at_the_frame_edge(
    frame: tuple[int, int], decoded: tuple[int, int]
) -> None:
    (w, h), (dw, dh) = frame, decoded
    result = _to_original(_whole(dw, dh), (w / dw, h / dh), frame)
    assert result.detections.xyxy.tolist() == [[0.0, 0.0, float(w), float(h)]]


def test_a_box_is_scaled_on_each_axis_by_its_own_factor() -> None:
    xyxy = np.array([[100.0, 100.0, 200.0, 180.0]], dtype=np.float32)
    detections = Detections(xyxy, np.array([0.9], dtype=np.float32), np.array([0], dtype=np.int32))
    result = InferenceResult(detections, {}, Letterbox(0.5, 0.0, 0.0))
    out = _to_original(result, (1281 / 641, 2.0), (1281, 720))
    expected = np.array([[100 * 1281 / 641, 200.0, 200 * 1281 / 641, 360.0]], np.float32)
    assert out.detections.xyxy.tolist() == expected.tolist()


def test_a_full_size_decode_is_left_as_it_is() -> None:
    result = _whole(1280, 720)
    assert _to_original(result, (1.0, 1.0), (1280, 720)) is result


def test_boxes_of_a_reduced_decode_of_an_odd_sized_frame_stay_within_it(tmp_path: Path) -> None:
    """A 1281x721 frame goes through the worker's decode at half size (641x361 pixels); a
    box over the whole decoded image comes back as the whole frame, no more and no less."""
    worker, _ = _worker(tmp_path)
    rt = worker.cams["cam-00"]
    image = np.full((721, 1281, 3), 90, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    now = datetime.now(UTC)
    header = FrameHeader(ts=now, seq=1, camera_id="cam-00", width=1281, height=721)
    ready = worker._decode(rt, "frame", encode_frame(header, buf.tobytes()), now)
    assert ready is not None
    assert ready.image.shape[:2] == (361, 641)
    worker._done(ready, _whole(641, 361))
    assert ready.result is not None
    assert ready.result.detections.xyxy.tolist() == [[0.0, 0.0, 1281.0, 721.0]]
    assert rt.last is ready.result
