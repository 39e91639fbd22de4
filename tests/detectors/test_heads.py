"""The shipped garbage head: its file, its backbone check, and its scores on real photos;
saving and loading head files, and detect's start with a --heads folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("kept", [0, 1000, -1], ids=["empty", "cut", "one-byte-short"])
def test_a_truncated_head_file_is_skipped(
    tmp_path: Path, head: SceneHead, info: ModelInfo, caplog: pytest.LogCaptureFixture, kept: int
) -> None:
    """A .npz cut short (a copy interrupted, a full disk) is an unusable head like any other:
    skipped with a warning, not an exception out of the loader of scan and the worker."""
    npz, _ = head.save(tmp_path / "garbage")
    npz.write_bytes(npz.read_bytes()[:kept])
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        assert load_default_heads(info, tmp_path) == {}
    assert "scene head garbage.json skipped: cannot read scene head" in caplog.text


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


def test_legacy_head_without_the_npz_hash_loads(tmp_path: Path, head: SceneHead) -> None:
    """Heads saved before the JSON named its .npz's hash (the shipped one) load as they are."""
    assert "npz_sha256" not in json.loads((HEADS_DIR / "garbage.json").read_text())
    npz, meta = head.save(tmp_path / "garbage")
    doc = json.loads(meta.read_text())
    assert doc["npz_sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    del doc["npz_sha256"]
    meta.write_text(json.dumps(doc))
    assert SceneHead.load(meta).threshold == head.threshold


def fail_json_serialisation(head: SceneHead, monkeypatch: pytest.MonkeyPatch) -> SceneHead:
    return replace(head, meta={**head.meta, "note": object()})  # json.dumps raises TypeError


def fail_json_file_write(head: SceneHead, monkeypatch: pytest.MonkeyPatch) -> SceneHead:
    """The disk fills up while the JSON is written (the .npz went through)."""
    real = os.fsync
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return head


@pytest.mark.parametrize("failure", [fail_json_serialisation, fail_json_file_write])
def test_a_failed_save_leaves_the_previous_pair(
    tmp_path: Path,
    head: SceneHead,
    info: ModelInfo,
    monkeypatch: pytest.MonkeyPatch,
    failure: Any,
) -> None:
    head.save(tmp_path / "garbage")
    retrained = replace(head, threshold=0.25, weights=head.weights * 2.0, bias=head.bias + 1.0)
    with pytest.raises((TypeError, OSError)):
        failure(retrained, monkeypatch).save(tmp_path / "garbage")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.json", "garbage.npz"]
    again = load_default_heads(info, tmp_path)["garbage"]
    assert again.threshold == head.threshold
    np.testing.assert_array_equal(again.weights, head.weights)
    assert again.bias == pytest.approx(head.bias)


def test_weights_and_threshold_of_different_saves_are_refused(
    tmp_path: Path, head: SceneHead, info: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """New weights beside the JSON of the previous save (a save cut between its two renames,
    or a hand copy of one file) are not scored under the old threshold: the head is skipped."""
    head.save(tmp_path / "garbage")
    old_json = (tmp_path / "garbage.json").read_text()
    replace(head, threshold=0.25, weights=head.weights * 2.0).save(tmp_path / "garbage")
    (tmp_path / "garbage.json").write_text(old_json)
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        assert load_default_heads(info, tmp_path) == {}
    assert "scene head garbage.json skipped" in caplog.text
    assert "garbage.npz (sha256 " in caplog.text
    assert "is not the weights file garbage.json was saved with" in caplog.text


@pytest.mark.parametrize("cut", ["before the weights", "between the renames"])
def test_a_save_cut_short_over_a_head_without_the_npz_hash_never_mixes_the_pair(
    tmp_path: Path,
    head: SceneHead,
    info: ModelInfo,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cut: str,
) -> None:
    """A retrain saved over a pair that names no .npz hash (as the shipped one): cut before
    the weights are renamed, the old pair still loads; cut between the two renames, the new
    weights beside the old JSON are refused, not scored under the old threshold."""
    for suffix in (".json", ".npz"):
        shutil.copy(HEADS_DIR / f"garbage{suffix}", tmp_path / f"garbage{suffix}")
    assert "npz_sha256" not in json.loads((tmp_path / "garbage.json").read_text())
    old_weights = (tmp_path / "garbage.npz").read_bytes()
    real_replace = Path.replace

    def rename(self: Path, target: Any) -> Path:
        weights_renamed = (tmp_path / "garbage.npz").read_bytes() != old_weights
        renaming = Path(target).name
        if (cut, renaming) == ("before the weights", "garbage.npz") or (
            (cut, renaming) == ("between the renames", "garbage.json") and weights_renamed
        ):
            raise OSError(5, "Input/output error")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", rename)
    retrained = replace(head, threshold=0.25, weights=head.weights * 2.0)
    with pytest.raises(OSError, match="Input/output error"):
        retrained.save(tmp_path / "garbage")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.json", "garbage.npz"]
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        heads = load_default_heads(info, tmp_path)
    if cut == "before the weights":
        assert heads["garbage"].threshold == head.threshold
        np.testing.assert_array_equal(heads["garbage"].weights, head.weights)
        assert caplog.text == ""
    else:
        assert heads == {}
        assert "is not the weights file garbage.json was saved with" in caplog.text


def test_a_save_removes_what_a_killed_save_of_that_head_left(
    tmp_path: Path, head: SceneHead
) -> None:
    head.save(tmp_path / "garbage")
    left = [".garbage.npz.k1ll3d.tmp", ".garbage.json.k1ll3d.tmp", ".other.npz.k1ll3d.tmp"]
    for name in left:
        (tmp_path / name).write_bytes(b"half written")
    head.save(tmp_path / "garbage")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.npz.k1ll3d.tmp",  # another head's save may be running
        "garbage.json",
        "garbage.npz",
    ]


def test_two_files_with_one_head_name_use_the_newest(
    tmp_path: Path, head: SceneHead, info: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    newer = replace(
        head, threshold=0.5, meta={**head.meta, "trained_at": "2026-11-29T10:00:00+00:00"}
    )
    older = replace(
        head, threshold=0.6, meta={**head.meta, "trained_at": "2026-11-28T10:00:00+00:00"}
    )
    newer.save(tmp_path / "a-garbage")  # sorts first: the file name is no tie-breaker here
    older.save(tmp_path / "b-garbage")
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        heads = load_default_heads(info, tmp_path)
    assert heads["garbage"].threshold == 0.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "scene heads a-garbage.json and b-garbage.json are both named 'garbage': using "
        "a-garbage.json (trained at 2026-11-29T10:00:00+00:00), not b-garbage.json (trained at "
        "2026-11-28T10:00:00+00:00); remove or rename one"
    ]


def test_two_files_with_one_head_name_and_no_training_time_use_the_last_name(
    tmp_path: Path, head: SceneHead, info: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    plain = {k: v for k, v in head.meta.items() if k != "trained_at"}
    replace(head, threshold=0.5, meta=plain).save(tmp_path / "a-garbage")
    replace(head, threshold=0.6, meta=plain).save(tmp_path / "b-garbage")
    with caplog.at_level(logging.WARNING, logger="gridpatrol.detectors.heads"):
        assert load_default_heads(info, tmp_path)["garbage"].threshold == 0.6
    assert "using b-garbage.json (trained at unknown), not a-garbage.json" in caplog.text


SITE = """
site: {name: 测试}
cameras:
  - id: bins
    source: mqtt
    location: {address: 大宁路 1号}
    zones:
      - id: bins
        polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]
        rules: {garbage_overflow: {dwell_s: 3}}
"""


def detect(tmp_path: Path, shared_dir: Path, *args: str) -> subprocess.Popen[str]:
    site = tmp_path / "site.yaml"
    site.write_text(SITE, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site), *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp_path,
        env={
            **os.environ, "GRIDPATROL_API_TOKEN": "tok-producer",
            "GRIDPATROL_MQTT_URL": "mqtt://127.0.0.1:1", "GRIDPATROL_OUTBOX": "outbox.db",
            "GRIDPATROL_MODEL": str(shared_dir / "models" / "yolo11n_int8_openvino_model"),
        },
    )  # fmt: skip


def test_detect_refuses_a_heads_folder_that_is_not_there(tmp_path: Path, shared_dir: Path) -> None:
    """A misspelt --heads would load no head and leave garbage_overflow off for good."""
    proc = detect(tmp_path, shared_dir, "--heads", "var/haeds")
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # it started after all: do not leave it running
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith("--heads var/haeds: no such folder"), err
    assert "Traceback" not in err


def test_detect_names_the_head_of_another_backbone_a_zone_needs_at_error(
    tmp_path: Path, shared_dir: Path, head: SceneHead, info: ModelInfo
) -> None:
    """Other cameras and rules still work, so detect starts, but it says at ERROR which file
    is of another backbone and both hashes."""
    other = "0" * 64
    replace(head, backbone_sha256=other).save(tmp_path / "heads" / "garbage")
    proc = detect(tmp_path, shared_dir, "--heads", str(tmp_path / "heads"))
    guard = threading.Timer(120, proc.kill)  # a safety net if the line never comes
    guard.start()
    try:
        assert proc.stderr is not None
        line = next((ln for ln in proc.stderr if "scene head garbage" in ln), "")
    finally:
        guard.cancel()
        proc.terminate()
        proc.communicate(timeout=30)
    assert " ERROR " in line, line
    assert str(tmp_path / "heads" / "garbage.json") in line
    assert f"sha256 {other}" in line
    assert f"sha256 {info.sha256}" in line
