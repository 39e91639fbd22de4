"""``gridpatrol train-head`` through its command line: class folders and reviewed candidates."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from gridpatrol.api.client import ApiClient
from gridpatrol.detectors.features import YOLO11_NODES
from gridpatrol.detectors.head_training import (
    HEAD_RECIPE,
    CvReport,
    FeatureSet,
    Sample,
    Scores,
    check_enough,
    choose_threshold,
    dataset_samples,
    format_report,
    merge_duplicate_groups,
    negative_samples,
    nested_cv,
    review_samples,
    since_param,
    time_groups,
    unscored_extras,
)
from gridpatrol.detectors.heads import SceneHead

GARBAGE = (
    "ams_mdc_photo_mdc_0e995a_cdv_photo_001_1495902895486.jpg",
    "ams_mdc_photo_mdc_896400_cdv_photo_001_1495902157887.jpg",  # 12 min later: same session
    "ams_mdc_photo_mdc_a33710_cdv_photo_001_1471973946025.jpg",
    "ams_mdc_photo_mdc_c5a100_cdv_photo_001_1466102046307.jpg",
    "ams_mdc_photo_mdc_f1fe20_cdv_photo_001_1465321177692.jpg",
    "ams_mdc_photo_mdc_8458ba_cdv_photo_001_1479245585932.jpg",
)
CLEAN = (
    "ams_mdc_photo_mdc_60fc5a_cdv_photo_001_1460486508409.jpg",
    "ams_mdc_photo_mdc_984dc0_cdv_photo_001_1462308321981.jpg",
    "ams_mdc_photo_mdc_9a02c0_cdv_photo_001_1466532924604.jpg",
    "ams_mdc_photo_mdc_b2f360_cdv_photo_001_1466877620695.jpg",
    "ams_mdc_photo_mdc_bd5c60_cdv_photo_001_1468348317902.jpg",
    "ams_mdc_photo_mdc_cb0db0_cdv_photo_001_1470157407442.jpg",
)


def dataset(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "garbage_dev"


def model_env(shared_dir: Path) -> dict[str, str]:
    model = shared_dir / "models" / "yolo11n_int8_openvino_model"
    return {**os.environ, "GRIDPATROL_MODEL": str(model)}


def weights_sha(shared_dir: Path) -> str:
    path = shared_dir / "models" / "yolo11n_int8_openvino_model" / "yolo11n.bin"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_head(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING", "train-head", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )


def train_from_reviews(
    api_server: Any, shared_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``train-head --from-reviews --name garbage`` on ``api_server`` with the reviewer's token."""
    return train_head(
        "--from-reviews", "--name", "garbage", "--api-url", api_server.url,
        "--token", api_server.tokens["reviewer"], *args,
        env=model_env(shared_dir),
    )  # fmt: skip


def count_line(reviewed: int, skipped: int, auto: int = 0) -> str:
    """The progress line that counts the candidates of ``train-head --from-reviews``."""
    return (
        f"train-head: {reviewed} reviewed garbage_overflow candidates, {skipped} skipped, "
        f"{auto} confirmed by the site policy without review (not used)"
    )


HEAD_ROW = "head (P3/P4/P5/C2PSA SPP mean+max, LR) at per-fold inner thresholds"


def check_report(stdout: str, images: int, positive: int) -> None:
    lines = stdout.splitlines()
    assert lines[0].startswith(
        f"grouped nested CV: {images} images ({positive} positive / {images - positive} negative)"
    )
    assert lines[1].split() == [
        "model",
        "threshold",
        "precision",
        "recall",
        "accuracy",
        "FPR",
        "AUC",
    ]
    rows = {line.split("  ")[0]: line.split()[-6:] for line in lines[2:5]}
    assert set(rows) == {
        "naive probe (mean-pooled C2PSA, LR, t=0.5)",
        HEAD_ROW,
        "same head at threshold 0.5",
    }
    for figures in rows.values():
        assert all(0.0 <= float(v) <= 1.0 for v in figures if v != "n/a")
    assert lines[5].startswith("(head row: each outer fold at its own inner-CV threshold, ")
    assert lines[6].startswith("final head: C=")


def printed_head_threshold(stdout: str) -> str:
    """The threshold column of the table's head row."""
    row = next(line for line in stdout.splitlines() if line.startswith(HEAD_ROW))
    return row[len(HEAD_ROW) :].split()[0]


def test_time_groups_link_photos_minutes_apart() -> None:
    names = [
        "a_1495902895486.jpg",  # 12 min after the next one
        "b_1495902157887.jpg",
        "c_1495990000000.jpg",  # a day later
        "no_stamp.jpg",
    ]
    groups = time_groups(names, gap_min=30)
    assert groups[0] == groups[1]
    assert len({groups[0], groups[2], groups[3]}) == 3
    assert time_groups(names, gap_min=5)[0] != time_groups(names, gap_min=5)[1]


def test_time_groups_read_a_date_and_time_in_the_name() -> None:
    names = [
        "IMG_20230115_123045.jpg",
        "IMG_20230115_124500.jpg",  # 14 min later: same session
        "cam-20230116-090000.jpg",  # the next day
        "20230115123100.jpg",  # no separators, a minute after the first
        "IMG_20231399_999999.jpg",  # digits that are no date
    ]
    assert time_groups(names, gap_min=30) == [
        "session:0",
        "session:0",
        "session:1",
        "session:0",
        "file:IMG_20231399_999999.jpg",
    ]


def test_a_dataset_of_names_without_timestamps_is_said_to_group_by_name(
    shared_dir: Path, tmp_path: Path
) -> None:
    for folder, names in (("garbage", GARBAGE[2:4]), ("clean", CLEAN[:2])):
        (tmp_path / folder).mkdir()
        for i, name in enumerate(names):
            shutil.copy(dataset(shared_dir) / folder / name, tmp_path / folder / f"{i}.jpg")
    shutil.copy(
        dataset(shared_dir) / "clean" / CLEAN[2], tmp_path / "clean" / f"c_{CLEAN[2][-17:]}"
    )
    proc = train_head(str(tmp_path), "--name", "garbage", "--cv-only", env=model_env(shared_dir))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[:3] == [
        "train-head: classes: garbage (positive, 2), clean (3)",
        "train-head: 4 of 5 file names carry no timestamp: grouping by file name only: "
        "near-duplicates may straddle folds",
        f"train-head: 5 images in {tmp_path}",
    ]


@pytest.mark.parametrize(
    ("prob", "y", "expected"),
    [
        # separable: the middle of the widest gap that meets both targets
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 0.5),
        # no threshold reaches recall 0.92 at FPR <= 0.10: the FPR bound wins
        ([0.1, 0.6, 0.3, 0.7, 0.9], [0, 0, 1, 1, 1], 0.65),
    ],
)
def test_threshold_favours_recall_within_the_fpr_bound(
    prob: list[float], y: list[int], expected: float
) -> None:
    got = choose_threshold(np.array(prob), np.array(y), min_recall=0.92, max_fpr=0.10)
    assert got == pytest.approx(expected)


def test_train_head_from_class_folders(shared_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for folder, names in (("garbage", GARBAGE), ("clean", CLEAN)):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, root / folder / name)
    out = tmp_path / "heads" / "garbage"
    street = shared_dir / "footage" / "pedestrian_street_1080p.mp4"  # 302 frames at 30 fps
    proc = train_head(
        str(root), "--name", "garbage", "--out", str(out), "--folds", "3", "--repeats", "1",
        "--negatives", str(street), "--negative-fps", "0.2",
        "--force",  # 12 photos are too few for a head better than chance: written all the same
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check_report(proc.stdout, images=12, positive=6)
    assert "train-head: features 12/12" in proc.stderr
    assert "11 groups" in proc.stdout  # two photos of one report session share a group

    head = SceneHead.load(out.with_suffix(".npz"))
    assert head.name == "garbage"
    assert head.backbone_sha256 == weights_sha(shared_dir)
    assert head.model_name == "yolo11n"
    assert head.feature_nodes == tuple(YOLO11_NODES.values())
    assert 0.0 < head.threshold < 1.0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["images"] == 12
    assert meta["training"]["extra_negatives"]["frames"] == 3  # frames 0, 150 and 300
    assert "3 extra negatives (training only)" in proc.stderr
    figures = {"precision", "recall", "accuracy", "fpr", "auc"}
    cv = meta["cv"]["head"]
    assert cv.keys() == figures | {"threshold_mean", "thresholds"}
    # The CV figures were measured at these thresholds (one per outer fold), not at the
    # head's own threshold (chosen on all the data); the table gives their mean.
    assert len(cv["thresholds"]) == 3
    assert cv["threshold_mean"] == pytest.approx(np.mean(cv["thresholds"]), abs=1e-4)
    assert float(printed_head_threshold(proc.stdout)) == pytest.approx(
        cv["threshold_mean"], abs=5e-4
    )
    assert meta["cv"]["head_at_0.5"].keys() == figures | {"threshold"}
    assert meta["cv"]["head_at_0.5"]["threshold"] == 0.5


def test_train_head_setup_errors_exit_2(shared_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bins").mkdir()
    proc = train_head(str(tmp_path), "--name", "garbage", env=model_env(shared_dir))
    assert proc.returncode == 2
    assert "no sub-folder 'garbage'" in proc.stderr
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "a.jpg").write_bytes(b"x")
    proc = train_head(str(tmp_path), "--name", "garbage", env=model_env(shared_dir))
    assert proc.returncode == 2
    assert "need at least 2 images of each class, got 1 positive / 0 negative" in proc.stderr
    proc = train_head("--name", "garbage", env=model_env(shared_dir))
    assert proc.returncode == 2
    assert "DATASET_DIR or --from-reviews" in proc.stderr


def test_a_broken_model_is_a_setup_error(
    shared_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """An IR folder whose weights were cut short (a copy interrupted): one line, exit 2."""
    src = shared_dir / "models" / "yolo11n_int8_openvino_model"
    folder = tmp_path / "copy_openvino_model"
    folder.mkdir()
    for name in ("yolo11n.xml", "metadata.yaml"):
        shutil.copy(src / name, folder / name)
    (folder / "yolo11n.bin").write_bytes((src / "yolo11n.bin").read_bytes()[:1_000_000])
    proc = train_head(
        str(small_dataset), "--name", "garbage", "--cv-only", "--model", str(folder),
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"train-head: OpenVINO cannot load model 'yolo11n' from {folder}/yolo11n.xml: Incorrect "
        "weights in bin file!; copy the whole IR folder (yolo11n.xml, yolo11n.bin and "
        "metadata.yaml) again or give another --model"
    )
    assert proc.stdout == ""


def test_video_negatives_are_sampled_at_their_frames_own_times(
    tmp_path: Path, write_vfr: Callable[[Path, list[np.ndarray], list[int]], Path]
) -> None:
    """A variable-frame-rate video (2 s at 10 fps, then a frame a second for 20 s) gives the
    frames 0.5 s apart in its own time at --negative-fps 2, not every frame (the container's
    average rate, 1.8 fps, is under 2)."""
    frames = [np.full((48, 64, 3), 6 * k, dtype=np.uint8) for k in range(40)]
    clip = write_vfr(tmp_path / "street.mp4", frames, [1] * 20 + [10] * 20)
    samples = negative_samples([str(clip)], 2.0)
    assert [s.key for s in samples] == [f"street.mp4#{i}" for i in (0, 5, 10, 15, *range(20, 40))]
    assert {(s.label, s.group) for s in samples} == {(0, f"extra:{clip}")}
    # The frames themselves: the grey level each was written with (JPEG and MPEG-4 round it).
    levels = [float(image.mean()) for s in samples if (image := s.image()) is not None]
    expected = [6 * i for i in (0, 5, 10, 15, *range(20, 40))]
    assert np.allclose(levels, expected, atol=4)


def test_an_image_too_large_to_decode_is_skipped(
    tmp_path: Path, write_png: Callable[[Path, int, int], Path]
) -> None:
    """OpenCV raises for an image of more than 2^30 pixels: skipped like any unreadable one."""
    huge = write_png(tmp_path / "huge.png", 40_000, 30_000)
    assert Sample(key="huge.png", label=1, group="g", path=huge).image() is None
    data = huge.read_bytes()
    assert Sample(key="candidate:1", label=1, group="g", data=data).image() is None


def test_too_few_groups_for_nested_cv_is_a_setup_error(shared_dir: Path, tmp_path: Path) -> None:
    for folder, names in (("garbage", GARBAGE[2:4]), ("clean", CLEAN[:2])):
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, tmp_path / folder / name)
    proc = train_head(str(tmp_path), "--name", "garbage", "--cv-only", env=model_env(shared_dir))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "train-head: nested cross-validation needs at least 4 groups of each class (photos "
        "taken minutes apart at one place count once), got 2 positive / 2 negative"
    )


@pytest.fixture(scope="module")
def small_dataset(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for folder, names in (("garbage", GARBAGE), ("clean", CLEAN)):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, root / folder / name)
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/taken/head"],
         "--out {tmp}/taken/head: cannot write there, {tmp}/taken is a file, not a folder"),
        (["--out", "{tmp}/taken/deeper/head.npz"],
         "--out {tmp}/taken/deeper/head.npz: cannot write there, {tmp}/taken is a file, not a "
         "folder"),
        (["--out", "{tmp}/heads/garbage"],
         "--out {tmp}/heads/garbage: cannot write {tmp}/heads/garbage.json, it is a folder"),
        (["--negatives", "{street}", "--negative-fps", "0"],
         "--negative-fps must be positive (got 0)"),
        (["--negatives", "{street}", "--negative-fps", "-1", "--cv-only"],
         "--negative-fps must be positive (got -1)"),
        (["--negatives", "{street}", "--negative-fps", "nan"],
         "--negative-fps must be positive (got nan)"),
        (["--negatives", "{street}", "--negative-fps", "inf", "--cv-only"],
         "--negative-fps must be positive (got inf)"),
        (["--folds", "1"], "--folds must be at least 2 (got 1)"),
        (["--folds", "0", "--cv-only"], "--folds must be at least 2 (got 0)"),
        (["--repeats", "0"], "--repeats must be at least 1 (got 0)"),
        (["--repeats", "-1", "--cv-only"], "--repeats must be at least 1 (got -1)"),
        (["--max-fpr", "nan"], "--max-fpr must be a number from 0 to 1 (got nan)"),
        (["--min-recall", "nan"], "--min-recall must be a number from 0 to 1 (got nan)"),
        (["--max-fpr", "1.5", "--cv-only"], "--max-fpr must be a number from 0 to 1 (got 1.5)"),
        (["--min-recall=-inf"], "--min-recall must be a number from 0 to 1 (got -inf)"),
        (["--group-gap-min", "nan"], "--group-gap-min must be minutes, 0 or more (got nan)"),
        (["--group-gap-min=-5", "--cv-only"],
         "--group-gap-min must be minutes, 0 or more (got -5)"),
    ],
)  # fmt: skip
def test_train_head_refuses_an_unwritable_out_or_a_bad_fps_before_any_work(
    shared_dir: Path, small_dataset: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "taken").write_text("a file where a folder is expected")
    (tmp_path / "heads" / "garbage.json").mkdir(parents=True)
    street = shared_dir / "footage" / "pedestrian_street_1080p.mp4"
    values = {"tmp": tmp_path, "street": street}
    proc = train_head(
        str(small_dataset), "--name", "garbage", "--folds", "2", "--repeats", "1",
        *(a.format(**values) for a in args), env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"train-head: {message.format(**values)}"]
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["garbage.json", "heads", "taken"]


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height as stored, as the worker gives them with its evidence."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    return int(image.shape[1]), int(image.shape[0])


def post_candidate(
    producer: ApiClient,
    data: bytes,
    kind: str,
    camera: str,
    boxes: list[list[float]] | None = None,
    later: tuple[dict[str, Any], ...] = (),
    **detection: Any,
) -> str:
    """A garbage_overflow candidate whose evidence is ``data``; its box the whole image unless
    ``boxes`` are given, with any further ``detection`` fields. ``later`` evidence items are
    added by an update, after ``data``: they may name files never uploaded (a new candidate
    needs every file it names, an update one stored file)."""
    sha = producer.put_evidence(data, "image/jpeg")
    body = candidate_body(sha, jpeg_size(data), kind, camera, boxes, **detection)
    created = producer.create_candidate(body, uuid.uuid4().hex)
    assert created["status"] == "new", created
    if later:
        patch = {"evidence": list(later)}
        patched = producer.patch_candidate(created["id"], patch, uuid.uuid4().hex)
        assert patched["status"] == "new", patched
        assert patched["evidence"] == created["evidence"] + list(later), patched
    return str(created["id"])


def candidate_body(
    sha: str,
    size: tuple[int, int],
    kind: str,
    camera: str,
    boxes: list[list[float]] | None = None,
    **detection: Any,
) -> dict[str, Any]:
    """A garbage_overflow candidate with the one evidence file ``sha`` of ``size``."""
    width, height = size
    return {
        "source": {
            "type": "camera",
            "system": "test-detector",
            "camera_id": camera,
            "source_event_id": uuid.uuid4().hex,
        },
        "type": "garbage_overflow",
        "description": "暴露垃圾",
        "occurred_at": "2026-11-27T03:59:00+00:00",
        "location": {"lat": 31.28, "lon": 121.45},
        "severity": "MINOR",
        "urgency": "normal",
        "evidence": [{"sha256": sha, "kind": kind, "width": width, "height": height}],
        "detection": {
            "model": "yolo11n",
            "score": 0.8,
            "zone_id": "bins",
            "boxes": boxes or [[0, 0, width, height]],
            **detection,
        },
    }


def test_train_head_from_reviewed_candidates(
    shared_dir: Path, tmp_path: Path, api_server: Any
) -> None:
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    photos = [("garbage", n) for n in GARBAGE] + [("clean", n) for n in CLEAN]
    for i, (label, name) in enumerate(photos):
        data = (dataset(shared_dir) / label / name).read_bytes()
        kind = "clean" if i % 2 else "crop"  # both evidence paths
        cid = post_candidate(producer, data, kind, camera=f"cam-{i % 4}")
        if label == "garbage":
            reviewer.review(cid, "confirm")
        else:
            reviewer.review(cid, "reject", reason_code="false_positive")
    # neither confirmed nor rejected as a false positive: not training data
    data = (dataset(shared_dir) / "garbage" / GARBAGE[0]).read_bytes()
    duplicate = post_candidate(producer, data, "crop", camera="cam-9")
    reviewer.review(duplicate, "reject", reason_code="duplicate")
    post_candidate(producer, data, "crop", camera="cam-9")  # never reviewed
    producer.close()
    reviewer.close()

    out = tmp_path / "reviewed"
    proc = train_head(
        "--from-reviews", "--name", "garbage", "--api-url", api_server.url,
        "--token", api_server.tokens["reviewer"], "--out", str(out),
        "--folds", "2", "--repeats", "1", "--force",  # 12 are too few for a head that finds any
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "12 reviewed garbage_overflow candidates" in proc.stderr
    check_report(proc.stdout, images=12, positive=6)
    assert "4 groups" in proc.stdout  # camera + zone
    head = SceneHead.load(out)
    assert head.backbone_sha256 == weights_sha(shared_dir)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["source"] == "reviews"

    refused = train_head(
        "--from-reviews", "--name", "garbage", "--api-url", api_server.url, "--token", "wrong",
        env=model_env(shared_dir),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "train-head: HTTP 401" in refused.stderr


def test_a_reviewed_candidate_without_its_evidence_file_is_skipped(
    shared_dir: Path, api_server: Any
) -> None:
    """The API takes a candidate that refers to a file it does not hold (while another of its
    files is stored): training skips it with a line naming it, and a clean frame that is not
    stored gives way to the next clean frame of the same candidate."""
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    lost = {
        "sha256": hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        "kind": "clean",
        "width": 640,
        "height": 480,
    }
    photos = [("garbage", n) for n in GARBAGE] + [("clean", n) for n in CLEAN]
    for i, (label, name) in enumerate(photos):
        data = (dataset(shared_dir) / label / name).read_bytes()
        if i == 0:  # annotated, then a clean frame not stored, then the stored one as clean
            width, height = jpeg_size(data)
            stored = {"sha256": hashlib.sha256(data).hexdigest(), "kind": "clean"}
            later = (lost, {**stored, "width": width, "height": height})
            cid = post_candidate(producer, data, "annotated", camera="cam-0", later=later)
        else:
            cid = post_candidate(producer, data, "clean", camera=f"cam-{i % 4}")
        if label == "garbage":
            reviewer.review(cid, "confirm")
        else:
            reviewer.review(cid, "reject", reason_code="false_positive")
    data = (dataset(shared_dir) / "garbage" / GARBAGE[0]).read_bytes()
    missing = post_candidate(producer, data, "annotated", camera="cam-9", later=(lost,))
    reviewer.review(missing, "confirm")
    producer.close()
    reviewer.close()

    proc = train_from_reviews(api_server, shared_dir, "--cv-only", "--folds", "2", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"train-head: candidate {missing}: evidence {lost['sha256']} not found, skipped" in (
        proc.stderr.splitlines()
    )
    assert count_line(12, 1) in proc.stderr.splitlines()
    check_report(proc.stdout, images=12, positive=6)


def test_groups_too_unequal_to_split_are_a_setup_error(shared_dir: Path, tmp_path: Path) -> None:
    """40 garbage photos of one report session and three single ones, four clean photos:
    with two outer folds, the session is one outer training part and the only positive
    group of the inner split there. One line and exit 2, not a traceback."""
    day = 86_400_000
    source = sorted((dataset(shared_dir) / "garbage").glob("*.jpg"))
    stamps = [1_500_000_000_000 + 60_000 * i for i in range(40)]  # a minute apart
    stamps += [1_510_000_000_000 + day * i for i in range(3)]
    (tmp_path / "garbage").mkdir()
    for i, stamp in enumerate(stamps):
        shutil.copy(source[i], tmp_path / "garbage" / f"g{i}_{stamp}.jpg")
    (tmp_path / "clean").mkdir()
    for i, name in enumerate(CLEAN[:4]):
        shutil.copy(dataset(shared_dir) / "clean" / name, tmp_path / "clean" / f"c{i}.jpg")
    proc = train_head(
        str(tmp_path), "--name", "garbage", "--cv-only", "--folds", "2", "--repeats", "1",
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("train-head: grouped inner cross-validation cannot split ")
    )
    assert proc.stdout == ""


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("folds", [2, 3, 5])
def test_nested_cv_on_very_unequal_groups_works_or_says_why(seed: int, folds: int) -> None:
    """Positive groups of 40, 1, 1 and 1 images, four negative groups: every seed and fold
    count either cross-validates or raises one clear ValueError (exit 2 in the command)."""
    rng = np.random.default_rng(seed)
    sizes = {0: 40, 1: 1, 2: 1, 3: 1, 10: 2, 11: 2, 12: 2, 13: 2}
    groups = np.array([g for g, n in sizes.items() for _ in range(n)], dtype=np.int64)
    y = (groups < 10).astype(np.int64)
    x = (rng.normal(size=(len(y), 6)) + y[:, None]).astype(np.float32)
    fs = FeatureSet(
        x=x, x_flip=x.copy(), x_base=x[:, :3].copy(), y=y, groups=groups,
        keys=tuple(str(i) for i in range(len(y))),
    )  # fmt: skip
    check_enough(fs)
    try:
        report = nested_cv(fs, folds, 1, seed, 0.92, 0.10, on_fold=lambda _: None)
    except ValueError as exc:
        assert str(exc).startswith("grouped "), exc
        assert "cross-validation cannot split" in str(exc)
    else:
        assert len(report.head) == 1


def test_reviewed_regions_fall_on_the_pixels_the_worker_boxed(
    shared_dir: Path, api_server: Any, with_orientation: Callable[[bytes, int], bytes]
) -> None:
    """The detection's boxes are in the camera frame's pixels, as stored: a clean frame the
    worker re-encoded at half size, or one tagged EXIF Orientation=6, is still trained on the
    boxed part (here the lower right quarter of a 1920 x 1080 street frame)."""
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    full = cv2.imencode(".jpg", frame)[1].tobytes()
    half = cv2.imencode(".jpg", cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA))[1]
    quarter = [[960.0, 540.0, 1920.0, 1080.0]]
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    shrunk = post_candidate(
        producer, half.tobytes(), "clean", "cam-1", quarter, frame_width=1920, frame_height=1080
    )
    turned = post_candidate(producer, with_orientation(full, 6), "clean", "cam-2", quarter)
    for cid in (shrunk, turned):
        reviewer.review(cid, "confirm")
    samples = review_samples(reviewer, "garbage_overflow", None).samples
    producer.close()
    reviewer.close()
    got = {s.key: (s.region, None if (im := s.image()) is None else im.shape) for s in samples}
    assert got == {
        f"candidate:{shrunk}": ((0.5, 0.5, 1.0, 1.0), (540, 960, 3)),
        f"candidate:{turned}": ((0.5, 0.5, 1.0, 1.0), (1080, 1920, 3)),
    }


class FlakyApi:
    """A proxy in front of the intake API whose evidence downloads fail as ``fail`` says:
    given how many were asked for before, the status to answer (None: pass it on)."""

    def __init__(self, upstream: str, fail: Callable[[int], int | None]) -> None:
        self.evidence_requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = None
                if self.path.startswith("/api/v1/evidence/"):
                    status = fail(proxy.evidence_requests)
                    proxy.evidence_requests += 1
                if status is not None:
                    self._answer(status, "text/plain", b"upstream restarting")
                    return
                headers = {"Authorization": self.headers.get("Authorization", "")}
                got = httpx.get(upstream + self.path, headers=headers, timeout=30)
                self._answer(got.status_code, got.headers["content-type"], got.content)

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def flaky_api(api_server: Any) -> Iterator[Callable[[Callable[[int], int | None]], FlakyApi]]:
    made: list[FlakyApi] = []

    def make(fail: Callable[[int], int | None]) -> FlakyApi:
        made.append(FlakyApi(api_server.url, fail))
        return made[-1]

    yield make
    for proxy in made:
        proxy.httpd.shutdown()
        proxy.httpd.server_close()


def one_confirmed_candidate(shared_dir: Path, api_server: Any) -> tuple[str, str]:
    """A confirmed candidate with one stored crop: its id and the crop's sha256."""
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    data = (dataset(shared_dir) / "garbage" / GARBAGE[0]).read_bytes()
    cid = post_candidate(producer, data, "crop", camera="cam-0")
    reviewer.review(cid, "confirm")
    producer.close()
    reviewer.close()
    return cid, hashlib.sha256(data).hexdigest()


def train_through(
    proxy: FlakyApi, api_server: Any, shared_dir: Path
) -> subprocess.CompletedProcess[str]:
    return train_head(
        "--from-reviews", "--name", "garbage", "--api-url", proxy.url,
        "--token", api_server.tokens["reviewer"], "--cv-only",
        env=model_env(shared_dir),
    )  # fmt: skip


def test_evidence_the_api_cannot_serve_for_now_stops_the_run(
    shared_dir: Path, api_server: Any, flaky_api: Any
) -> None:
    """A 503 from a proxy or a restarting API is not "no such file": the candidate is not
    dropped from the data (a head trained on whatever came through would be biased). After
    the retries the run stops, naming the candidate, before any model is loaded."""
    cid, sha = one_confirmed_candidate(shared_dir, api_server)
    proxy = flaky_api(lambda _asked: 503)
    proc = train_through(proxy, api_server, shared_dir)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    retries = [f"train-head: candidate {cid}: evidence {sha}: HTTP 503: upstream restarting; "
               f"trying again in {wait} s" for wait in ("0.5", "1", "2")]  # fmt: skip
    assert lines == [
        *retries,
        f"train-head: candidate {cid}: evidence {sha}: HTTP 503: upstream restarting (tried 4 "
        "times); stopped, nothing trained",
    ]
    assert proxy.evidence_requests == 4
    assert proc.stdout == ""


def test_evidence_that_comes_through_on_a_retry_is_trained_on(
    shared_dir: Path, api_server: Any, flaky_api: Any
) -> None:
    """503, 429 and 502, then the file: the candidate is one of the samples. (One sample is
    too few to train, which stops the run at the class count, before any model loads.)"""
    cid, sha = one_confirmed_candidate(shared_dir, api_server)
    proxy = flaky_api(lambda asked: (503, 429, 502)[asked] if asked < 3 else None)
    proc = train_through(proxy, api_server, shared_dir)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-2:] == [
        count_line(1, 0),
        "train-head: need at least 2 images of each class, got 1 positive / 0 negative",
    ]
    assert [line.split(": HTTP ")[1] for line in lines[:-2]] == [
        "503: upstream restarting; trying again in 0.5 s",
        "429: upstream restarting; trying again in 1 s",
        "502: upstream restarting; trying again in 2 s",
    ]
    assert all(line.startswith(f"train-head: candidate {cid}: evidence {sha}: ")
               for line in lines[:-2])  # fmt: skip
    assert proxy.evidence_requests == 4


def test_copies_of_an_image_share_its_group(shared_dir: Path, tmp_path: Path) -> None:
    """A photo copied under another timestamp, and a clean photo copied into the garbage
    folder, are byte-identical to their originals: one group with them (else each copy is
    trained on in one fold and scored in another). Here that leaves three positive groups,
    too few, said before the model loads; the image with both labels is named."""
    copies = {
        "g_1400000000000.jpg": ("garbage", GARBAGE[2]),
        "c_1410000000000.jpg": ("clean", CLEAN[0]),
    }
    for folder, names in (("garbage", GARBAGE[2:4]), ("clean", CLEAN[:4])):
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, tmp_path / folder / name)
    for copy, (folder, name) in copies.items():
        shutil.copy(dataset(shared_dir) / folder / name, tmp_path / "garbage" / copy)
    proc = train_head(
        str(tmp_path), "--name", "garbage", "--cv-only", "--folds", "2", "--repeats", "1",
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "train-head: classes: garbage (positive, 4), clean (4)",
        f"train-head: 8 images in {tmp_path}",
        "train-head: 2 images byte-identical to others: each kept in one CV group with its "
        "copies (8 -> 6 groups)",
        f"train-head: 1 image with both labels (e.g. clean/{CLEAN[0]} and "
        "garbage/c_1410000000000.jpg are the same image): check their labels",
        "train-head: nested cross-validation needs at least 4 groups of each class (photos "
        "taken minutes apart at one place count once), got 3 positive / 4 negative",
    ]
    assert proc.stdout == ""


def test_a_head_no_better_than_chance_is_written_only_with_force(
    shared_dir: Path, tmp_path: Path
) -> None:
    """Four garbage and four clean photos, three folds: the head cross-validates to recall 0
    (AUC 0.188). It is not written (exit 1, one line) unless --force is given."""
    root = tmp_path / "data"
    for folder, names in (("garbage", GARBAGE[2:6]), ("clean", CLEAN[:4])):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, root / folder / name)
    out = tmp_path / "heads" / "garbage"
    args = (str(root), "--name", "garbage", "--out", str(out), "--folds", "3", "--repeats", "1")
    refused = train_head(*args, env=model_env(shared_dir))
    assert refused.returncode == 1, refused.stderr
    check_report(refused.stdout, images=8, positive=4)
    head_row = next(line for line in refused.stdout.splitlines() if line.startswith(HEAD_ROW))
    assert head_row.split()[-5] == "0.000"  # recall
    auc = head_row.split()[-1]
    assert refused.stderr.splitlines()[-1] == (
        f"train-head: the head found no positive in cross-validation (recall 0, AUC {auc}): "
        "not written (--force writes it)"
    )
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

    forced = train_head(*args, "--force", env=model_env(shared_dir))
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[:5] == refused.stdout.splitlines()[:5]
    assert (
        f"train-head: the head found no positive in cross-validation (recall 0, AUC {auc}): "
        "written all the same (--force)"
    ) in forced.stderr.splitlines()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["cv"]["head"]["recall"] == 0.0


def test_precision_is_not_available_when_nothing_is_predicted_positive() -> None:
    """No image over the threshold: precision is 0/0, printed n/a, not 0.000; over repeats,
    the mean of those that have one."""
    y = np.array([1, 1, 0, 0], dtype=np.int64)
    prob = np.array([0.4, 0.3, 0.2, 0.1])
    none = Scores.of(y, prob, prob >= 0.9)
    assert math.isnan(none.precision)
    assert (none.recall, none.fpr, none.auc) == (0.0, 0.0, 1.0)
    half = Scores.of(y, prob, prob >= 0.15)  # 3 predicted positive, 2 of them right
    x = np.zeros((4, 2), dtype=np.float32)
    fs = FeatureSet(x=x, x_flip=x, x_base=x, y=y, groups=np.arange(4), keys=("a", "b", "c", "d"))
    report = CvReport(
        head=[none, half], head_half=[none, none], baseline=[none, none],
        thresholds=[0.9, 0.15], cs=[1.0, 1.0],
    )  # fmt: skip
    rows = format_report(fs, report, 2, 2).splitlines()[2:5]
    # naive probe, head, head at 0.5: precision and recall
    assert [row.split()[-5:-3] for row in rows] == [
        ["n/a", "0.000"],
        ["0.667", "0.500"],
        ["n/a", "0.000"],
    ]


def test_extra_negatives_that_are_scored_images_are_not_trained_on(
    shared_dir: Path, small_dataset: Path
) -> None:
    """--negatives given the clean photos that are scored: each would be trained on as a
    negative in the folds that score it. They are not used, said in one line, and the
    figures are those of the run without them."""
    args = (str(small_dataset), "--name", "garbage", "--cv-only", "--folds", "3")
    plain = train_head(*args, "--repeats", "1", env=model_env(shared_dir))
    assert plain.returncode == 0, plain.stderr
    proc = train_head(
        *args, "--repeats", "1", "--negatives", str(small_dataset / "clean"),
        env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (
        "train-head: 6 of 6 extra negatives byte-identical to scored images: not used (they "
        "would be trained on in the folds that score them)"
    ) in proc.stderr.splitlines()
    assert "(training only)" not in proc.stderr
    check_report(proc.stdout, images=12, positive=6)
    assert proc.stdout == plain.stdout


def test_only_the_extra_negatives_equal_to_scored_images_are_dropped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    scored = [Sample(key="a", label=0, group="g", data=b"a")]
    extras = [Sample(key=k, label=0, group="extra:x", data=k.encode()) for k in ("a", "b")]
    assert [e.key for e in unscored_extras(scored, extras)] == ["b"]
    assert capsys.readouterr().err.splitlines() == [
        "train-head: 1 of 2 extra negatives byte-identical to scored images: not used (they "
        "would be trained on in the folds that score them)"
    ]
    assert [e.key for e in unscored_extras(scored, extras[1:])] == ["b"]
    assert capsys.readouterr().err == ""


def test_labels_of_one_frame_are_compared_per_region(capsys: pytest.CaptureFixture[str]) -> None:
    """One frame's candidates for two zones, one confirmed and one rejected: one group (the
    same bytes), but no label conflict (other crops); the same crop with both labels is one."""
    frame = b"the same evidence frame"
    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    samples = [
        Sample(key="candidate:1", label=1, group="cam-Z/bins-left", data=frame, region=left),
        Sample(key="candidate:2", label=0, group="cam-Z/bins-right", data=frame, region=right),
    ]
    merged = merge_duplicate_groups(samples)
    assert {s.group for s in merged} == {"cam-Z/bins-left"}
    assert capsys.readouterr().err.splitlines() == [
        "train-head: 1 image byte-identical to others: each kept in one CV group with its "
        "copies (2 -> 1 groups)"
    ]
    again = Sample(key="candidate:3", label=0, group="cam-Y/bins", data=frame, region=left)
    merge_duplicate_groups([*samples, again])
    assert capsys.readouterr().err.splitlines()[1:] == [
        "train-head: 1 image with both labels (e.g. candidate:1 and candidate:3 are the same "
        "image): check their labels"
    ]


@pytest.mark.parametrize(("given", "made"), [("new/", False), ("existing", True)])
def test_out_a_folder_writes_the_head_inside_it(
    shared_dir: Path, small_dataset: Path, tmp_path: Path, given: str, made: bool
) -> None:
    """--out naming a folder (a path ending in / or an existing folder) writes
    <folder>/garbage.npz and .json, where --heads <folder> finds them, not <folder>.npz."""
    folder = tmp_path / given.rstrip("/")
    if made:
        folder.mkdir()
    proc = train_head(
        str(small_dataset), "--name", "garbage", "--out", f"{tmp_path}/{given}",
        "--folds", "3", "--repeats", "1", "--force", env=model_env(shared_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"wrote {folder}/garbage.npz and {folder}/garbage.json"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        folder.name,
        f"{folder.name}/garbage.json",
        f"{folder.name}/garbage.npz",
    ]
    assert SceneHead.load(folder / "garbage.json").name == "garbage"


def test_a_head_file_is_replaced_with_notice_and_another_heads_only_with_force(
    shared_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """--name garbage --out heads/trash over the trash head: refused before any work (exit 2)
    unless --force; a head written over an existing one says which it replaced."""
    stem = tmp_path / "heads" / "trash"
    zeros = np.zeros(3, dtype=np.float32)
    SceneHead(
        name="trash", threshold=0.5, recipe=HEAD_RECIPE, model_name="yolo11n",
        backbone_sha256="0" * 64, mean=zeros, std=zeros + 1, weights=zeros, bias=0.0,
        meta={"trained_at": "2026-11-30T10:00:00+00:00"},
    ).save(stem)  # fmt: skip
    before = {p.name: p.read_bytes() for p in stem.parent.iterdir()}
    args = (str(small_dataset), "--name", "garbage", "--out", str(stem), "--folds", "3")
    refused = train_head(*args, "--repeats", "1", env=model_env(shared_dir))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"train-head: --out {stem}: {stem}.json (head trash, trained 2026-11-30T10:00:00+00:00)"
        " is not head garbage: not replaced (--force replaces it)"
    ]
    assert refused.stdout == ""
    assert {p.name: p.read_bytes() for p in stem.parent.iterdir()} == before

    forced = train_head(*args, "--repeats", "1", "--force", env=model_env(shared_dir))
    assert forced.returncode == 0, forced.stderr
    assert forced.stderr.splitlines()[-1] == (
        f"train-head: replacing {stem}.json (head trash, trained 2026-11-30T10:00:00+00:00)"
    )
    trained_at = json.loads(stem.with_suffix(".json").read_text())["trained_at"]
    assert SceneHead.load(stem).name == "garbage"

    again = train_head(*args, "--repeats", "1", "--force", env=model_env(shared_dir))
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[-1] == (
        f"train-head: replacing {stem}.json (head garbage, trained {trained_at})"
    )


def quick_cv(root: Path, shared_dir: Path) -> subprocess.CompletedProcess[str]:
    """``train-head ROOT --name garbage --cv-only``, 3 folds, 1 repeat."""
    return train_head(
        str(root), "--name", "garbage", "--cv-only", "--folds", "3", "--repeats", "1",
        env=model_env(shared_dir),
    )  # fmt: skip


def test_tif_images_are_trained_on_and_other_files_counted(
    shared_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """scan reads .tif / .tiff: train-head takes them too (here half of each class), and says
    how many files of a class folder it ignored, by extension."""
    root = tmp_path / "data"
    for i, image in enumerate(sorted(small_dataset.rglob("*.jpg"))):
        (root / image.parent.name).mkdir(parents=True, exist_ok=True)
        suffix = (".jpg", ".tif", ".TIFF")[i % 3]
        target = root / image.parent.name / (image.stem + suffix)
        assert cv2.imwrite(str(target.with_suffix(suffix.lower())), cv2.imread(str(image)))
        target.with_suffix(suffix.lower()).rename(target)
    (root / "garbage" / "notes.txt").write_text("where these were taken")
    (root / "clean" / "street.mp4").write_bytes(b"")
    (root / "clean" / "README").write_text("clean scenes")
    proc = quick_cv(root, shared_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[:3] == [
        "train-head: classes: garbage (positive, 6), clean (6)",
        "train-head: 3 files ignored, without an image suffix (.bmp, .jpeg, .jpg, .png, .tif, "
        ".tiff, .webp): (no extension) 1, .mp4 1, .txt 1",
        f"train-head: 12 images in {root}",
    ]
    assert "train-head: features 12/12" in proc.stderr
    check_report(proc.stdout, images=12, positive=6)


def test_hidden_and_empty_folders_are_no_classes(
    shared_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """A notebook's .ipynb_checkpoints, a Mac zip's __MACOSX (AppleDouble ._ files) and a
    hidden thumbnail folder inside a class hold no class and no photos; an empty class folder
    is ignored; the classes are listed with their image counts."""
    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    some = sorted((root / "clean").iterdir())[:2]
    for hidden in (".ipynb_checkpoints", "__MACOSX/garbage", "garbage/.thumbs", "clean/__MACOSX"):
        (root / hidden).mkdir(parents=True)
        for image in some:
            shutil.copy(image, root / hidden / image.name)
    (root / "garbage" / f"._{some[0].name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "old").mkdir()
    (root / "rubbish").mkdir()
    (root / "rubbish" / "list.csv").write_text("name,label")
    proc = quick_cv(root, shared_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[:4] == [
        "train-head: classes: garbage (positive, 6), clean (6)",
        "train-head: class folders without images, ignored: old, rubbish",
        "train-head: 1 file ignored, without an image suffix (.bmp, .jpeg, .jpg, .png, .tif, "
        ".tiff, .webp): .csv 1",
        f"train-head: 12 images in {root}",
    ]
    check_report(proc.stdout, images=12, positive=6)


def test_since_is_a_date_or_a_time_with_its_offset(shared_dir: Path, api_server: Any) -> None:
    """--since 2026-12-01 is that day's midnight UTC (the API takes only an instant: it
    answered a bare 422); a time without an offset is refused naming --since, before any
    request."""
    cid, _ = one_confirmed_candidate(shared_dir, api_server)
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    created = datetime.fromisoformat(reviewer.get_candidate(cid)["created_at"])
    reviewer.close()
    day = created.astimezone(UTC).date()
    few = "train-head: need at least 2 images of each class, got {} positive / 0 negative"
    minute_before = (created - timedelta(minutes=1)).astimezone(UTC)
    for since, found in (
        (day.isoformat(), 1),
        ((day + timedelta(days=1)).isoformat(), 0),
        (minute_before.strftime("%Y-%m-%dT%H:%M:%SZ"), 1),
    ):
        proc = train_from_reviews(api_server, shared_dir, "--since", since)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [count_line(found, 0), few.format(found)]
    proc = train_from_reviews(api_server, shared_dir, "--since", "2026-12-01T08:00")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "train-head: --since 2026-12-01T08:00: a time needs its UTC offset (e.g. "
        "2026-12-01T08:00Z or 2026-12-01T08:00+01:00); a date alone means its midnight UTC"
    ]


def test_a_model_without_the_yolo11_feature_nodes_is_named(
    shared_dir: Path, small_dataset: Path
) -> None:
    """YOLOv8n's OpenVINO export has none of the YOLO11 nodes the head recipe reads: one line
    saying so, naming the model and where to read more (exit 2), not a bare graph error."""
    folder = shared_dir / "models" / "yolov8n_int8_openvino_model"
    env = {**os.environ, "GRIDPATROL_MODEL": str(folder)}
    proc = train_head(str(small_dataset), "--name", "garbage", "--cv-only", env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "train-head: the head recipe reads feature maps of the Ultralytics YOLO11 OpenVINO "
        f"export (yolo11n, …); model yolov8n ({folder.resolve()}/yolov8n.xml) lacks them (no node "
        f"{HEAD_RECIPE.nodes[0]!r}): give a YOLO11 --model or GRIDPATROL_MODEL, see "
        "docs/scene-heads.md"
    )
    assert proc.stdout == ""


SUFFIXES = ".bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp"


def test_negative_folders_are_walked_as_class_folders(shared_dir: Path, tmp_path: Path) -> None:
    """--negatives skips a notebook's .ipynb_checkpoints copies and a Mac zip's __MACOSX and
    AppleDouble ._ files, as the class folders do: each photo is one sample."""
    neg = tmp_path / "neg"
    neg.mkdir()
    for name in CLEAN[:3]:
        shutil.copy(dataset(shared_dir) / "clean" / name, neg / name)
    for hidden in (".ipynb_checkpoints", "__MACOSX"):
        (neg / hidden).mkdir()
        for name in CLEAN[:3]:
            shutil.copy(neg / name, neg / hidden / name)
            (neg / hidden / f"._{name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (neg / f"._{CLEAN[0]}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    found = negative_samples([str(neg)], fps=1.0)
    assert [(s.key, s.label, s.group) for s in found] == [
        (str(neg / name), 0, f"extra:{neg}") for name in sorted(CLEAN[:3])
    ]


def test_since_outside_the_apis_years_is_refused_and_sent_in_utc(
    shared_dir: Path, api_server: Any
) -> None:
    """The API takes instants within its years (1900-9000) and offsets in hours and minutes:
    --since beyond them is refused naming --since, before any request (it got a bare 422),
    and a time whose offset has seconds is sent in UTC."""
    for text, utc in (
        ("1899-12-31", ""),
        ("9999-12-31", ""),
        ("0226-12-01", ""),
        ("9000-12-31T23:00-05:00", " (in UTC: 9001-01-01T04:00:00+00:00)"),
        ("1900-01-01T00:30+01:00", " (in UTC: 1899-12-31T23:30:00+00:00)"),
    ):
        with pytest.raises(ValueError, match=r"^--since \S+: ") as caught:
            since_param(text)
        assert str(caught.value) == (
            f"--since {text}: the time must lie between the years 1900 and 9000{utc}"
        )
    proc = train_from_reviews(api_server, shared_dir, "--since", "0226-12-01")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "train-head: --since 0226-12-01: the time must lie between the years 1900 and 9000"
    ]
    assert since_param("2026-12-01T08:00+05:30:15") == "2026-12-01T02:29:45+00:00"
    cid, _ = one_confirmed_candidate(shared_dir, api_server)
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    created = datetime.fromisoformat(reviewer.get_candidate(cid)["created_at"])
    zone = timezone(timedelta(hours=5, minutes=30, seconds=15))
    for shift, listed in ((timedelta(minutes=-1), [cid]), (timedelta(minutes=1), [])):
        since = since_param((created + shift).astimezone(zone).isoformat())
        page = reviewer.list_candidates(type="garbage_overflow", since=since)
        assert [item["id"] for item in page["items"]] == listed
    reviewer.close()


def test_linked_folders_in_a_class_folder_are_skipped_and_said(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder linked into a class folder (or into a --negatives folder) is not walked: where
    it leads is not known to hold that class. The folders left out are said in one line; a
    linked file still counts."""
    root, elsewhere = tmp_path / "data", tmp_path / "share"
    for folder, names in (("garbage", GARBAGE[:3]), ("clean", CLEAN[:3])):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, root / folder / name)
    elsewhere.mkdir()
    for name in GARBAGE[3:]:
        shutil.copy(dataset(shared_dir) / "garbage" / name, elsewhere / name)
    (root / "garbage" / "share").symlink_to(elsewhere, target_is_directory=True)
    (root / "garbage" / "again").symlink_to(elsewhere, target_is_directory=True)
    (root / "garbage" / GARBAGE[3]).symlink_to(elsewhere / GARBAGE[3])
    (elsewhere / "up").symlink_to(root / "garbage", target_is_directory=True)
    found = dataset_samples(root, "garbage", gap_min=30.0)
    keys = sorted(s.key for s in found if s.label == 1)
    assert keys == sorted(f"garbage/{n}" for n in GARBAGE[:4])
    assert capsys.readouterr().err.splitlines()[:2] == [
        "train-head: classes: garbage (positive, 4), clean (3)",
        "train-head: 2 linked folders not followed: garbage/again, garbage/share (link the "
        "images, or copy the folder)",
    ]
    extras = negative_samples([str(elsewhere)], fps=1.0)
    assert sorted(s.key for s in extras) == sorted(str(elsewhere / n) for n in GARBAGE[3:])
    assert capsys.readouterr().err.splitlines() == [
        f"train-head: 1 linked folder not followed: {elsewhere / 'up'} (link the images, or "
        "copy the folder)"
    ]


def test_a_link_to_the_dataset_in_a_class_folder_adds_no_other_class(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """garbage/root_link -> .. would walk clean's photos again as positives (contradictory
    labels); it is left out and said."""
    root = tmp_path / "data"
    for folder, names in (("garbage", GARBAGE[:3]), ("clean", CLEAN[:3])):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset(shared_dir) / folder / name, root / folder / name)
    (root / "garbage" / "root_link").symlink_to("..", target_is_directory=True)
    found = dataset_samples(root, "garbage", gap_min=30.0)
    assert sorted(s.key for s in found if s.label == 1) == sorted(
        f"garbage/{n}" for n in GARBAGE[:3]
    )
    assert sorted(s.key for s in found if s.label == 0) == sorted(f"clean/{n}" for n in CLEAN[:3])
    assert not [s.key for s in found if "root_link" in s.key]
    assert capsys.readouterr().err.splitlines()[:2] == [
        "train-head: classes: garbage (positive, 3), clean (3)",
        "train-head: 1 linked folder not followed: garbage/root_link (link the images, or copy "
        "the folder)",
    ]


def test_a_hidden_positive_folder_and_files_without_an_image_suffix_are_said_so(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--positive .garbage names a folder skipped as hidden: said so, not "has no sub-folder";
    a photo saved without a suffix is counted as a file without an image suffix."""
    root = tmp_path / "data"
    for folder, names in ((".garbage", GARBAGE[:2]), ("clean", CLEAN[:2])):
        (root / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset(shared_dir) / folder.lstrip(".") / name, root / folder / name)
    with pytest.raises(ValueError) as caught:
        dataset_samples(root, ".garbage", gap_min=30.0)
    assert str(caught.value) == (
        f"{root / '.garbage'}: hidden folders (names starting with '.') and __MACOSX are "
        "skipped, so it is no class: rename it to name the positive class"
    )
    (root / ".garbage").rename(root / "garbage")
    shutil.copy(root / "garbage" / GARBAGE[0], root / "garbage" / "IMG_0001")
    assert len(dataset_samples(root, "garbage", gap_min=30.0)) == 4
    assert capsys.readouterr().err.splitlines()[:2] == [
        "train-head: classes: garbage (positive, 2), clean (2)",
        f"train-head: 1 file ignored, without an image suffix ({SUFFIXES}): (no extension) 1",
    ]
