"""The Ultralytics reference backend, weight download and OpenVINO export.

The only module that imports ``ultralytics`` (and with it torch); it needs the
``gridpatrol[ultralytics]`` extra. Its results have the same type as the fast path's, which is
what the parity test compares.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from ultralytics.models.yolo.model import YOLO
from ultralytics.utils import LOGGER as ULTRALYTICS_LOG

from gridpatrol.detectors.models import ModelSpec, file_sha256, model_info, parse_names
from gridpatrol.detectors.openvino_backend import letterbox_params
from gridpatrol.detectors.types import Detections, InferenceResult, Letterbox, ModelInfo

log = logging.getLogger(__name__)
# Ultralytics logs its progress to stdout, which `gridpatrol scan` keeps for JSON lines only.
ULTRALYTICS_LOG.setLevel(logging.WARNING)


class UltralyticsBackend:
    """``YOLO(path, task="detect")`` on an OpenVINO IR folder, .onnx or .pt."""

    def __init__(self, spec: ModelSpec, *, conf: float = 0.25, iou: float = 0.7) -> None:
        source = spec.path.parent if spec.format == "openvino" else spec.path
        self.model: Any = YOLO(str(source), task="detect")
        self.conf, self.iou = conf, iou
        info = model_info(spec, names=parse_names(getattr(self.model, "names", None)))
        if info.version == "unknown" and isinstance(getattr(self.model, "ckpt", None), dict):
            version = str(self.model.ckpt.get("version", "unknown"))
            info = ModelInfo(info.name, version, info.sha256, info.path, info.names, info.imgsz)
        self.info = info

    def infer(self, images: Sequence[NDArray[np.uint8]]) -> list[InferenceResult]:
        if not images:
            return []
        outputs = self.model.predict(
            list(images), conf=self.conf, iou=self.iou, imgsz=self.info.imgsz, verbose=False
        )
        return [self._result(image, out) for image, out in zip(images, outputs, strict=True)]

    def _result(self, image: NDArray[np.uint8], output: Any) -> InferenceResult:
        boxes = output.boxes
        detections = Detections.from_arrays(
            boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy()
        )
        scale, _, _, left, top = letterbox_params(image.shape[:2], self.info.imgsz)
        return InferenceResult(detections, {}, Letterbox(scale, float(left), float(top)))

    def close(self) -> None:
        self.model = None


# A scene head is tied to the sha256 of the weights it was trained on: the shipped ones to the
# manifest's INT8 IR, never to an export made here (FP32, Ultralytics' default).
HEADS_DO_NOT_APPLY = (
    "%s is an FP32 export of %s: scene heads trained on another export (the shipped ones: on the"
    " INT8 IR of models/manifest.yaml) do not apply to it, so the zones that need them (e.g."
    " garbage_overflow) raise nothing. Put that INT8 IR folder in models/, or train the heads on"
    " this export: gridpatrol train-head DATASET_DIR --name NAME --model %s, then detect with"
    " --heads var/heads"
)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One export at a time per cache directory, across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".export.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_openvino(weights: str, cache: Path) -> Path:
    """Download ``weights`` by Ultralytics name (or take a local .pt), export to OpenVINO once.

    Returns the IR folder; a later call finds it in ``cache`` and exports nothing.
    """
    path = Path(weights)
    with _locked(cache):
        if path.exists():
            work = cache / f"{path.stem}-{file_sha256(path)[:12]}"
            target = work / path.name
            if not target.exists():
                work.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        else:
            work, target = cache, cache / path.name
        folder = work / f"{path.stem}_openvino_model"
        if folder.is_dir() and any(folder.glob("*.xml")):
            return folder
        if not target.exists():
            from ultralytics.utils.downloads import attempt_download_asset

            log.info("downloading %s into %s", path.name, work)
            attempt_download_asset(target)
            if not target.exists():
                raise RuntimeError(f"{path.name} could not be downloaded (no internet access?)")
        log.info("exporting %s to OpenVINO in %s (once)", target, folder)
        exported = YOLO(str(target), task="detect").export(format="openvino", dynamic=False)
        exported_path = Path(str(exported))
        if exported_path.resolve() != folder.resolve():
            shutil.move(str(exported_path), folder)
        log.warning(HEADS_DO_NOT_APPLY, folder, target.name, folder)
        return folder
