"""Scene heads: small linear classifiers on the detector's own pooled feature maps.

A head file is a pair ``<name>.npz`` (feature mean / std, weights, bias) + ``<name>.json``
(name, decision threshold, the backbone's identity and the pooling recipe, the cross-validated
figures it was shipped with). ``score`` needs nothing but the ``InferenceResult`` of the frame's
detection pass, loaded with the head's ``feature_nodes`` as extra outputs.

``gridpatrol train-head`` builds one from a folder of class sub-folders or from reviewed
``garbage_overflow`` candidates; the training and cross-validation live in
``gridpatrol.detectors.head_training`` and are imported only by the command.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gridpatrol.detectors.features import PoolingRecipe, Region, pooled_features
from gridpatrol.detectors.types import InferenceResult, ModelInfo

__all__ = [
    "HEADS_DIR",
    "HeadFormatError",
    "SceneHead",
    "add_train_arguments",
    "load_default_heads",
    "run_train",
]

log = logging.getLogger(__name__)

HEADS_DIR = Path(__file__).resolve().parent / "shipped_heads"
FORMAT = "gridpatrol-scene-head/1"


class HeadFormatError(ValueError):
    """A head file that cannot be read or does not describe a usable head."""


@dataclass(frozen=True, eq=False)
class SceneHead:
    """Logistic regression on standardised pooled features: ``sigmoid(w·(x-mean)/std + b)``."""

    name: str
    threshold: float
    recipe: PoolingRecipe
    model_name: str
    backbone_sha256: str
    mean: NDArray[np.float32]
    std: NDArray[np.float32]
    weights: NDArray[np.float32]
    bias: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.weights.shape[0]
        if self.mean.shape != (n,) or self.std.shape != (n,):
            raise HeadFormatError(
                f"head {self.name}: mean {self.mean.shape}, std {self.std.shape} and "
                f"weights {self.weights.shape} disagree"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise HeadFormatError(f"head {self.name}: threshold {self.threshold} not in [0, 1]")

    @property
    def feature_nodes(self) -> tuple[str, ...]:
        return self.recipe.nodes

    def vector(self, result: InferenceResult, region: Region | None = None) -> NDArray[np.float32]:
        return pooled_features(result.features, result.letterbox, self.recipe, region)

    def score_vectors(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        """Probabilities for a (N, D) matrix of pooled feature vectors."""
        z = ((x - self.mean) / self.std) @ self.weights.astype(np.float64) + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))), dtype=np.float64)

    def score(self, result: InferenceResult, region: Region | None = None) -> float:
        """Probability in [0, 1] that ``region`` (normalized x1, y1, x2, y2) shows the class."""
        x = self.vector(result, region)
        if x.shape != self.weights.shape:
            raise HeadFormatError(
                f"head {self.name}: pooled {x.shape[0]} features, expected {self.weights.shape[0]}"
                " (different backbone or feature maps?)"
            )
        return float(self.score_vectors(x[None, :])[0])

    def matches(self, info: ModelInfo) -> bool:
        return info.sha256 == self.backbone_sha256

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` and ``<stem>.json`` next to each other; returns both paths."""
        npz, meta = _pair(Path(path))
        npz.parent.mkdir(parents=True, exist_ok=True)
        with npz.open("wb") as fh:
            np.savez_compressed(
                fh,
                mean=self.mean.astype(np.float32),
                std=self.std.astype(np.float32),
                weights=self.weights.astype(np.float32),
                bias=np.float32(self.bias),
            )
        doc = {
            "format": FORMAT,
            "name": self.name,
            "threshold": self.threshold,
            "backbone": {"model": self.model_name, "sha256": self.backbone_sha256},
            "feature_nodes": list(self.feature_nodes),
            "pooling": self.recipe.as_dict(),
            "classifier": "standardised logistic regression",
            **{k: v for k, v in self.meta.items() if k not in _RESERVED},
        }
        meta.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return npz, meta

    @classmethod
    def load(cls, path: str | Path) -> SceneHead:
        """Load from either file of the pair (or the common stem)."""
        npz, meta = _pair(Path(path))
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
            with np.load(npz) as arrays:
                mean, std, weights = arrays["mean"], arrays["std"], arrays["weights"]
                bias = float(arrays["bias"])
        except (OSError, ValueError, KeyError) as exc:
            raise HeadFormatError(f"cannot read scene head {npz} / {meta}: {exc}") from exc
        if doc.get("format") != FORMAT:
            raise HeadFormatError(f"{meta}: format {doc.get('format')!r}, expected {FORMAT!r}")
        try:
            return cls(
                name=str(doc["name"]),
                threshold=float(doc["threshold"]),
                recipe=PoolingRecipe.from_dict(doc["pooling"]),
                model_name=str(doc["backbone"]["model"]),
                backbone_sha256=str(doc["backbone"]["sha256"]),
                mean=mean.astype(np.float32),
                std=std.astype(np.float32),
                weights=weights.astype(np.float32),
                bias=bias,
                meta={k: v for k, v in doc.items() if k not in _RESERVED},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadFormatError(f"{meta}: {exc}") from exc


_RESERVED = frozenset(
    {"format", "name", "threshold", "backbone", "feature_nodes", "pooling", "classifier"}
)


def _pair(path: Path) -> tuple[Path, Path]:
    stem = path.with_suffix("") if path.suffix in {".npz", ".json"} else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def load_default_heads(info: ModelInfo, directory: Path | None = None) -> dict[str, SceneHead]:
    """The shipped heads trained on this backbone; others are skipped with a warning."""
    heads: dict[str, SceneHead] = {}
    folder = directory or HEADS_DIR
    for meta in sorted(folder.glob("*.json")):
        try:
            head = SceneHead.load(meta)
        except HeadFormatError as exc:
            log.warning("scene head %s skipped: %s", meta.name, exc)
            continue
        if not head.matches(info):
            log.warning(
                "scene head %s skipped: trained on %s (sha256 %s…), the loaded model is %s "
                "(sha256 %s…); retrain it with `gridpatrol train-head`",
                head.name,
                head.model_name,
                head.backbone_sha256[:12],
                info.name,
                info.sha256[:12],
            )
            continue
        heads[head.name] = head
    return heads


# --- the train-head command ----------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a scene head on pooled detector features and print grouped, nested "
        "cross-validated precision / recall / accuracy / FPR with the chosen threshold."
    )
    parser.add_argument("dataset", nargs="?", help="folder of class sub-folders (images)")
    parser.add_argument("--name", required=True, help="head name, e.g. garbage")
    parser.add_argument(
        "--positive", help="positive class sub-folder (default: the folder named like --name)"
    )
    parser.add_argument("--out", help="output path stem (default: var/heads/<name>)")
    parser.add_argument("--model", help="detector model (path or name; see models/README.md)")
    parser.add_argument(
        "--from-reviews",
        action="store_true",
        help="train on confirmed vs rejected garbage_overflow candidates from the API",
    )
    parser.add_argument("--api-url", help="intake API (default GRIDPATROL_API_URL)")
    parser.add_argument("--token", help="reviewer token (default GRIDPATROL_API_TOKEN)")
    parser.add_argument("--since", help="only candidates created since (ISO 8601)")
    parser.add_argument("--type", default="garbage_overflow", help="candidate type (reviews)")
    parser.add_argument(
        "--negatives",
        nargs="+",
        metavar="PATH",
        help="extra negative scenes for training only (image folders or videos)",
    )
    parser.add_argument(
        "--negative-fps", type=float, default=1.0, help="frames per second taken from videos"
    )
    parser.add_argument("--cv-only", action="store_true", help="report CV figures, write nothing")
    parser.add_argument("--folds", type=int, default=5, help="outer CV folds (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="outer CV repeats (default 3)")
    parser.add_argument("--min-recall", type=float, default=0.92)
    parser.add_argument("--max-fpr", type=float, default=0.10)
    parser.add_argument(
        "--group-gap-min",
        type=float,
        default=30.0,
        help="photos whose file-name timestamps are closer than this share a CV group",
    )
    parser.add_argument("--seed", type=int, default=0)


def run_train(args: argparse.Namespace) -> int:
    from gridpatrol.detectors import head_training

    return head_training.run(args)
