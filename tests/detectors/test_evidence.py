"""Evidence rendering: the clean frame untouched, annotation, the first-seen ring, blocks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from gridpatrol.detectors.evidence import (
    EvidenceFile,
    FrameRing,
    Label,
    StoredFrame,
    annotate,
    decode_jpeg,
    description,
    detection_block,
    evidence_item,
    fit_evidence,
    reduction_for,
    sha256_hex,
    title_for,
)

T0 = datetime(2026, 5, 4, 1, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def street_jpeg(shared_dir: Path) -> bytes:
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return bytes(buf.tobytes())


def _frame(s: float) -> StoredFrame:
    return StoredFrame(T0 + timedelta(seconds=s), f"frame-{s}".encode(), 1920, 1080)


def test_ring_keeps_recent_frames_dense_and_thins_old_ones_evenly() -> None:
    ring = FrameRing(capacity=12, horizon_s=600, keep_recent=4)
    for k in range(400):  # 200 s at 2 fps
        ring.add(_frame(k * 0.5))
    assert len(ring) == 12
    times = [(f.t - T0).total_seconds() for f in ring._frames]
    assert times[0] == 0.0  # the oldest survives thinning: first-seen evidence stays available
    assert times[-4:] == [198.0, 198.5, 199.0, 199.5]
    gaps = np.diff(times[:-4])
    assert gaps.max() <= 3 * gaps.min() + 1.0  # no big hole in the history


def test_ring_at_picks_the_first_frame_at_or_after_the_time() -> None:
    ring = FrameRing(capacity=10, horizon_s=600, keep_recent=2)
    for s in (0, 10, 20, 30):
        ring.add(_frame(s))
    found = ring.at(T0 + timedelta(seconds=12))
    assert found is not None and found.data == b"frame-20"
    late = ring.at(T0 + timedelta(seconds=99))
    assert late is not None and late.data == b"frame-30"
    latest = ring.latest()
    assert latest is not None and latest.data == b"frame-30"


def test_ring_drops_frames_beyond_the_horizon_and_on_clock_reset() -> None:
    ring = FrameRing(capacity=10, horizon_s=30, keep_recent=2)
    for s in (0, 10, 20, 30, 40, 50):
        ring.add(_frame(s))
    assert [f.data for f in ring._frames] == [b"frame-20", b"frame-30", b"frame-40", b"frame-50"]
    ring.add(_frame(5))
    assert [f.data for f in ring._frames] == [b"frame-5"]
    assert FrameRing().at(T0) is None


def test_annotated_frame_is_a_jpeg_with_the_drawing(street_jpeg: bytes) -> None:
    img = decode_jpeg(street_jpeg)
    assert img is not None
    out = annotate(
        img,
        labels=[
            Label((100, 200, 300, 600), "person 0.81", highlight=False),
            Label((800, 300, 1000, 700), "Crowd gathering 0.77", highlight=True),
        ],
        zone_polygon=[(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)],
        camera_id="cam-1",
        t=T0,
        tz=ZoneInfo("Asia/Shanghai"),
        title=title_for("crowd_gathering", 0.77),
    )
    drawn = decode_jpeg(out)
    assert drawn is not None and drawn.shape == img.shape
    # The highlighted box's left edge is red; the clean frame there is not.
    x, y = 800, 500
    b, g, r = (int(v) for v in drawn[y, x])
    assert r > 180 and g < 80 and b < 80
    assert not np.array_equal(drawn[y, x], img[y, x])
    assert sha256_hex(out) != sha256_hex(street_jpeg)


@pytest.mark.parametrize(
    ("size", "imgsz", "factor"),
    [((1920, 1080), 640, 2), ((2560, 1440), 640, 4), ((1280, 720), 640, 2), ((768, 432), 640, 1)],
)
def test_decode_reduction(size: tuple[int, int], imgsz: int, factor: int) -> None:
    assert reduction_for(*size, imgsz) == factor


def test_reduced_decode_halves_the_street_frame(street_jpeg: bytes) -> None:
    half = decode_jpeg(street_jpeg, 2)
    assert half is not None and half.shape == (540, 960, 3)


@pytest.mark.parametrize(("reduce", "shape"), [(1, (1080, 1920, 3)), (2, (540, 960, 3))])
def test_decode_ignores_the_exif_orientation(
    street_jpeg: bytes,
    with_orientation: Callable[[bytes, int], bytes],
    reduce: int,
    shape: tuple[int, int, int],
) -> None:
    """The pixels as stored, the size the header and the boxes refer to: OpenCV would turn an
    Orientation=6 frame on its side (1080 wide, 1920 high)."""
    rotated = with_orientation(street_jpeg, 6)
    turned = cv2.imdecode(np.frombuffer(rotated, np.uint8), cv2.IMREAD_COLOR)
    assert turned.shape == (1920, 1080, 3)  # the tag is read: the test JPEG is what it says
    image = decode_jpeg(rotated, reduce)
    assert image is not None and image.shape == shape
    assert np.array_equal(image, decode_jpeg(street_jpeg, reduce))


def test_detection_block_and_evidence_item() -> None:
    block = detection_block(
        model="yolo11n",
        model_version="8.3",
        model_sha256="ab" * 32,
        score=0.812345,
        boxes=[(1.04, 2.0, 3.0, 4.0)],
        track_ids=[7],
        zone_id="plaza",
        dwell_s=12.345,
        ended_at=T0,
    )
    assert block == {
        "model": "yolo11n",
        "model_version": "8.3",
        "model_sha256": "ab" * 32,
        "score": 0.8123,
        "boxes": [[1.0, 2.0, 3.0, 4.0]],
        "track_ids": [7],
        "zone_id": "plaza",
        "dwell_s": 12.3,
        "ended_at": "2026-05-04T01:00:00+00:00",
    }
    assert evidence_item("00" * 32, "clean", T0, 1920, 1080) == {
        "sha256": "00" * 32,
        "kind": "clean",
        "captured_at": "2026-05-04T01:00:00+00:00",
        "width": 1920,
        "height": 1080,
    }
    text = description("crowd_gathering", "广场", "plaza", 42)
    assert "人群聚集" in text and "Crowd gathering" in text and "42" in text


def test_evidence_file_from_a_stored_frame() -> None:
    frame = StoredFrame(T0, b"\xff\xd8jpeg", 640, 360)
    file = EvidenceFile.of("first_seen", frame)
    assert file.data == frame.data
    assert file.item(sha256_hex(file.data)) == evidence_item(
        sha256_hex(b"\xff\xd8jpeg"), "first_seen", T0, 640, 360
    )


def test_evidence_over_the_cap_is_re_encoded_to_fit(street_jpeg: bytes) -> None:
    """The API refuses evidence over its limit: the worker sends a smaller re-encoding, at the
    frame's own size while a lower quality suffices, else halved."""
    frame = StoredFrame(T0, street_jpeg, 1920, 1080)
    clean = EvidenceFile.of("clean", frame)
    assert fit_evidence(clean, len(street_jpeg)) is clean  # fits: the camera's bytes

    smaller = fit_evidence(clean, len(street_jpeg) - 1)
    assert len(smaller.data) < len(street_jpeg)
    assert (smaller.kind, smaller.captured_at, smaller.width, smaller.height) == (
        "clean",
        T0,
        1920,
        1080,
    )
    decoded = cv2.imdecode(np.frombuffer(smaller.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (1080, 1920, 3)
    assert smaller.item(sha256_hex(smaller.data))["sha256"] != sha256_hex(street_jpeg)

    tiny = fit_evidence(clean, 100_000)  # quality 50 at full size is larger than that
    assert len(tiny.data) <= 100_000
    decoded = cv2.imdecode(np.frombuffer(tiny.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (540, 960, 3) and (tiny.width, tiny.height) == (960, 540)
    # Not a JPEG at all: nothing to re-encode, it goes as it is (and the API says why).
    junk = EvidenceFile("clean", b"x" * 100, T0, 1, 1)
    assert fit_evidence(junk, 10) is junk
