"""An OpenVINO export made here (Ultralytics' default, FP32) has other weights than the INT8 IR
of the manifest that the shipped scene heads were trained on: the export says so, and what to do."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ultralytics.models.yolo.model import YOLO

from gridpatrol.detectors import ultralytics_backend
from gridpatrol.detectors.heads import load_default_heads
from gridpatrol.detectors.models import model_info, spec_from_path


def test_an_export_warns_that_heads_of_the_manifest_int8_model_do_not_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GRIDPATROL_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "yolo11n.pt"
    YOLO("yolo11n.yaml", task="detect").save(str(weights))  # untrained; only exported here
    cache = tmp_path / "cache" / "models"
    with caplog.at_level(logging.WARNING, logger=ultralytics_backend.__name__):
        folder = ultralytics_backend.export_openvino(str(weights), cache)
        assert ultralytics_backend.export_openvino(str(weights), cache) == folder  # reused

    assert folder.parent.parent == cache and folder.name == "yolo11n_openvino_model"
    warned = [r for r in caplog.records if r.name == ultralytics_backend.__name__]
    assert [(r.levelname, r.getMessage()) for r in warned] == [
        (
            "WARNING",
            f"{folder} is an FP32 export of yolo11n.pt: scene heads trained on another export"
            " (the shipped ones: on the INT8 IR of models/manifest.yaml) do not apply to it, so"
            " the zones that need them (e.g. garbage_overflow) raise nothing. Put that INT8 IR"
            " folder in models/, or train the heads on this export: gridpatrol train-head"
            f" DATASET_DIR --name NAME --model {folder}, then detect with --heads var/heads",
        )
    ]
    # What the warning says: the shipped garbage head is not loaded on this export.
    info = model_info(spec_from_path(folder, "export"))
    caplog.clear()
    assert load_default_heads(info, required={"garbage"}) == {}
    assert any(
        r.levelname == "ERROR" and "garbage" in r.getMessage() and info.sha256 in r.getMessage()
        for r in caplog.records
    )
