"""The shipped garbage head: its file, its backbone check, and its scores on real photos."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridpatrol.detectors.features import FeatureError
from gridpatrol.detectors.heads import HEADS_DIR, SceneHead, load_default_heads
from gridpatrol.detectors.models import load_backend, model_info, resolve_model
from gridpatrol.detectors.types import Backend, Detections, InferenceResult, Letterbox, ModelInfo

# Photos of the development set the shipped head was trained on (in-sample: this checks that
# the head file, the feature nodes and the pooling reproduce what training saw, not how well
# the head generalises; that is the cross-validation in docs/scene-heads.md).
GARBAGE = (
    "ams_mdc_photo_mdc_0e995a_cdv_photo_001_1495902895486.jpg",
    "ams_mdc_photo_mdc_f1fe20_cdv_photo_001_1465321177692.jpg",
    "ams_mdc_photo_mdc_8458ba_cdv_photo_001_1479245585932.jpg",
)
CLEAN = (
    "ams_mdc_photo_mdc_60fc5a_cdv_photo_001_1460486508409.jpg",
    "ams_mdc_photo_mdc_9a02c0_cdv_photo_001_1466532924604.jpg",
    "ams_mdc_photo_mdc_bd5c60_cdv_photo_001_1468348317902.jpg",
)


def photo(shared_dir: Path, label: str, name: str) -> Path:
    return shared_dir / "datasets" / "garbage_dev" / label / name


@pytest.fixture(scope="module")
def info(shared_dir: Path) -> ModelInfo:
    return model_info(resolve_model(str(shared_dir / "models" / "yolo11n_int8_openvino_model")))


@pytest.fixture(scope="module")
def head() -> SceneHead:
    return SceneHead.load(HEADS_DIR / "garbage")


@pytest.fixture(scope="module")
def backend(shared_dir: Path, head: SceneHead) -> Iterator[Backend]:
    spec = resolve_model(str(shared_dir / "models" / "yolo11n_int8_openvino_model"))
    b = load_backend(spec, feature_nodes=head.feature_nodes, mode="latency")
    yield b
    b.close()


def infer(backend: Backend, path: Path) -> InferenceResult:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return backend.infer([image])[0]


def test_shipped_head_is_small_and_carries_the_backbone_identity(
    shared_dir: Path, head: SceneHead
) -> None:
    weights = shared_dir / "models" / "yolo11n_int8_openvino_model" / "yolo11n.bin"
    assert head.name == "garbage"
    assert head.backbone_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert head.model_name == "yolo11n"
    assert 0.0 < head.threshold < 1.0
    assert (HEADS_DIR / "garbage.npz").stat().st_size < 150_000
    meta = json.loads((HEADS_DIR / "garbage.json").read_text())
    assert meta["training"]["images"] == 140
    assert meta["cv"]["head"]["auc"] > meta["cv"]["naive_probe"]["auc"]


def test_default_heads_load_only_for_their_backbone(
    shared_dir: Path, info: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    assert set(load_default_heads(info)) == {"garbage"}
    other = model_info(resolve_model(str(shared_dir / "models" / "yolov8n_int8_openvino_model")))
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        assert load_default_heads(other) == {}
    assert "scene head garbage skipped: trained on yolo11n" in caplog.text


def test_unreadable_head_file_is_skipped(
    tmp_path: Path, head: SceneHead, info: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    head.save(tmp_path / "garbage")
    (tmp_path / "broken.json").write_text('{"format": "something else"}')
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        heads = load_default_heads(info, tmp_path)
    assert set(heads) == {"garbage"}
    assert "scene head broken.json skipped" in caplog.text


def test_save_and_load_round_trip(tmp_path: Path, head: SceneHead) -> None:
    npz, meta = head.save(tmp_path / "copy.npz")
    assert (npz.name, meta.name) == ("copy.npz", "copy.json")
    again = SceneHead.load(meta)
    assert again.threshold == head.threshold
    assert again.recipe == head.recipe
    np.testing.assert_array_equal(again.weights, head.weights)
    x = np.random.default_rng(0).normal(size=(3, head.weights.shape[0])).astype(np.float32)
    np.testing.assert_allclose(again.score_vectors(x), head.score_vectors(x))


def test_shipped_head_scores_garbage_above_and_clean_below_threshold(
    shared_dir: Path, backend: Backend, head: SceneHead
) -> None:
    for name in GARBAGE:
        score = head.score(infer(backend, photo(shared_dir, "garbage", name)))
        assert score >= head.threshold, (name, score)
    for name in CLEAN:
        score = head.score(infer(backend, photo(shared_dir, "clean", name)))
        assert score < head.threshold, (name, score)


def test_region_scores_are_probabilities_of_that_region(
    shared_dir: Path, backend: Backend, head: SceneHead
) -> None:
    result = infer(backend, photo(shared_dir, "garbage", GARBAGE[0]))
    scores = [
        head.score(result, region)
        for region in (None, (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), (0.4, 0.4, 0.41, 0.41))
    ]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == 4


def test_score_needs_the_head_feature_maps(head: SceneHead) -> None:
    result = InferenceResult(Detections.empty(), {}, Letterbox(1.0, 0.0, 0.0))
    with pytest.raises(FeatureError, match="missing from the inference result"):
        head.score(result)


def test_scan_reports_garbage_overflow_from_the_shipped_head(
    shared_dir: Path, head: SceneHead
) -> None:
    files = [photo(shared_dir, "garbage", GARBAGE[1]), photo(shared_dir, "clean", CLEAN[1])]
    proc = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING", "scan"]
        + [str(f) for f in files]
        + ["--model", str(shared_dir / "models" / "yolo11n_int8_openvino_model")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = {Path(r["source"]).parent.name: r for r in map(json.loads, proc.stdout.splitlines())}
    garbage, clean = records["garbage"], records["clean"]
    assert garbage["scene"]["garbage"] >= head.threshold
    assert [v["type"] for v in garbage["violations"]] == ["garbage_overflow"]
    assert clean["scene"]["garbage"] < head.threshold
    assert "garbage_overflow" not in [v["type"] for v in clean["violations"]]
