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
    SightingFrames,
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


def test_ring_within_gives_the_frames_between_two_times_both_included() -> None:
    ring = FrameRing(capacity=10, horizon_s=600, keep_recent=2)
    for s in (0, 10, 20, 30):
        ring.add(_frame(s))
    within = ring.within(T0 + timedelta(seconds=10), T0 + timedelta(seconds=25))
    assert [f.data for f in within] == [b"frame-10", b"frame-20"]
    assert ring.within(T0 + timedelta(seconds=11), T0 + timedelta(seconds=19)) == []


def test_sighting_frames_keep_the_first_and_latest_sightings_of_the_latest_occupancies() -> None:
    """Two frames per occupancy (its first and latest sightings), at most ``per_key``
    occupancies of a key: those begun last."""
    held = SightingFrames(per_key=2)
    key, other = ("yard", "piled_materials"), ("yard", "shop_front_occupation")
    began = [T0 + timedelta(seconds=s) for s in (0, 100, 200)]
    held.seen(key, began[0], _frame(10))
    held.seen(key, began[0], _frame(20))  # a later sighting of the same occupancy
    held.seen(other, began[0], _frame(20))
    assert len(held) == 2
    tolerance = timedelta(milliseconds=1)
    found = held.get(key, began[0] + timedelta(microseconds=1), tolerance)
    assert found is not None and found.data == b"frame-20"
    first = held.first(key, began[0] + timedelta(microseconds=1), tolerance)
    assert first is not None and first.data == b"frame-10"  # later sightings leave it
    assert held.first(other, began[0], tolerance) == _frame(20)  # seen once: first and latest
    held.seen(key, began[1], _frame(110))
    held.seen(key, began[2], _frame(210))  # a third occupancy: the one begun first goes
    assert (held.get(key, began[0], tolerance), held.first(key, began[0], tolerance)) == (None,) * 2
    assert [held.get(key, b, tolerance) for b in began[1:]] == [_frame(110), _frame(210)]
    assert [held.first(key, b, tolerance) for b in began[1:]] == [_frame(110), _frame(210)]
    assert len(held) == 3
    held.forget(lambda k, b, frame: k == key and frame.t < T0 + timedelta(seconds=200))
    assert (held.get(key, began[1], tolerance), len(held)) == (None, 2)
    assert held.first(key, began[1], tolerance) is None
    held.clear()
    assert len(held) == 0
    with pytest.raises(ValueError):
        SightingFrames(per_key=0)


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


def _render(
    size: tuple[int, int],
    labels: list[Label],
    zone: list[tuple[float, float]] | None = None,
    grey: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """A plain frame of ``size`` (width, height) and its annotation, decoded; quality 100 so
    the drawn pixels come back nearly as drawn."""
    w, h = size
    img = np.full((h, w, 3), grey, np.uint8)
    out = annotate(
        img,
        labels=labels,
        zone_polygon=zone,
        camera_id="cam-1",
        t=T0,
        tz=ZoneInfo("Asia/Shanghai"),
        title="plaza: Illegal parking 0.80",
        quality=100,
    )
    drawn = decode_jpeg(out)
    assert drawn is not None and drawn.shape == img.shape
    return img, drawn


def _changed(a: np.ndarray, b: np.ndarray, by: int = 60) -> np.ndarray:
    """Where two renders differ clearly (far beyond JPEG noise at quality 100)."""
    return np.asarray(np.abs(a.astype(int) - b.astype(int)).max(axis=2) > by)


def test_the_header_moves_off_the_event_and_hides_none_of_it() -> None:
    """An event box at the top-left corner: its label (no room above the box, so just inside
    its top) and its top edge show, and the header goes to the bottom-left instead."""
    box = (200, 20, 420, 140)
    grey, drawn = _render((1920, 1080), [Label(box, "car 0.80", highlight=True)])
    _, blank = _render((1920, 1080), [Label(box, "", highlight=True)])
    assert _changed(drawn, blank)[0:160, 180:440].sum() > 500  # the label's own pixels
    b, g, r = (int(v) for v in drawn[20, 300])  # the box's top edge, red
    assert r > 230 and g < 30 and b < 30
    header = _changed(drawn, grey)
    assert header[0:45, 500:900].sum() == 0  # nothing at the top right of the box
    assert header[1030:1080, 0:400].sum() > 1000  # the header at the bottom-left


def test_the_header_stays_at_the_top_when_the_event_is_elsewhere() -> None:
    grey, drawn = _render((1920, 1080), [Label((800, 300, 1000, 700), "car 0.80", True)])
    header = _changed(drawn, grey)
    assert header[0:45, 0:400].sum() > 1000
    assert header[1030:1080, :].sum() == 0


def test_the_header_goes_to_a_right_corner_when_the_event_spans_the_left_edge() -> None:
    """An event along the whole left edge covers both left corners: the header goes to the
    top-right, not over the event's inside."""
    grey, drawn = _render((1280, 720), [Label((0, 0, 256, 720), "truck 0.70", True)])
    header = _changed(drawn, grey)
    assert header[40:716, 10:246].sum() == 0  # inside the box, below its label: untouched
    assert header[0:40, 800:1280].sum() > 1000  # the header at the top-right
    assert header[680:720, 800:1280].sum() == 0


@pytest.mark.parametrize(
    ("size", "box", "text"),
    [
        ((1280, 720), (1250, 400, 1279, 600), "motorcycle 0.88"),
        ((640, 360), (600, 0, 640, 80), "motorcycle 0.88"),  # top-right: inside, clamped left
    ],
)
def test_labels_stay_whole_at_the_right_edge(
    size: tuple[int, int], box: tuple[int, int, int, int], text: str
) -> None:
    _, drawn = _render(size, [Label(box, text, highlight=True)])
    _, blank = _render(size, [Label(box, "", highlight=True)])
    label = _changed(drawn, blank)
    cols = np.nonzero(label.any(axis=0))[0]
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]
    assert cols.min() < box[0] and cols.max() - cols.min() + 1 >= width


@pytest.mark.parametrize(
    ("labels", "zone", "rows", "cols"),
    [
        # A box the backend clipped to the frame (x2 == w, y2 == h) keeps its right and bottom
        # edges: they fall on column 639 and row 359, not one past them.
        ([Label((440, 210, 640, 360), "car 0.70", False)], None, (215, 355), (445, 635)),
        ([Label((440, 210, 640, 360), "car 0.70", True)], None, (215, 355), (445, 635)),
        ([], [(0.5, 0.05), (1.0, 0.05), (1.0, 1.0), (0.5, 1.0)], (25, 355), (325, 635)),
    ],
)
def test_edges_on_the_frame_border_are_drawn(
    labels: list[Label],
    zone: list[tuple[float, float]] | None,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> None:
    grey, drawn = _render((640, 360), labels, zone)
    changed = _changed(drawn, grey, by=40)
    assert changed[rows[0] : rows[1], 639].all()
    assert changed[359, cols[0] : cols[1]].all()


def test_labels_are_readable_on_a_small_frame() -> None:
    """At 640×360 a label's digits are 9 px high or more (they were 4 px)."""
    _, drawn = _render((640, 360), [Label((100, 200, 300, 340), "80 80", False)], grey=0)
    luma = cv2.cvtColor(drawn, cv2.COLOR_BGR2GRAY)
    rows = np.nonzero((luma[100:197, 100:300] > 40).any(axis=1))[0]  # above the box's line
    assert rows.max() - rows.min() + 1 >= 9


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4000, 16), (16, 4000), (320, 240)])
def test_tiny_and_thin_frames_annotate(size: tuple[int, int]) -> None:
    w, h = size
    labels = [
        Label((0, 0, w, h), "motorcycle 0.88", highlight=True),
        Label((0, 0, w / 2, h / 2), "person 0.40", highlight=False),
    ]
    _render(size, labels, [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)])


@pytest.mark.parametrize("size", [(320, 240), (640, 360)])
def test_the_header_fits_a_small_frame(size: tuple[int, int]) -> None:
    """The header's text has a floor too, but shrinks to fit a narrow frame's width whole."""
    grey, drawn = _render(size, [])
    header = _changed(drawn, grey)
    cols = np.nonzero(header.any(axis=0))[0]
    rows = np.nonzero(header.any(axis=1))[0]
    assert cols.min() >= 4 and cols.max() <= size[0] - 4
    assert rows.min() >= 4 and rows.max() - rows.min() + 1 >= 12


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
