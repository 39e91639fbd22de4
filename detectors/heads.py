"""Scene heads: small linear classifiers on the detector's own pooled feature maps.

A head file is a pair ``<name>.npz`` (feature mean / std, weights, bias) + ``<name>.json``
(name, decision threshold, the backbone's identity and the pooling recipe, the cross-validated
figures it was shipped with, the sha256 of the ``.npz`` it belongs to). ``score`` needs
nothing but the ``InferenceResult`` of the frame's detection pass, loaded with the head's
``feature_nodes`` as extra outputs.

``gridpatrol train-head`` builds one from a folder of class sub-folders or from reviewed
``garbage_overflow`` candidates; the training and cross-validation live in
``gridpatrol.detectors.head_training`` and are imported only by the command.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

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
        """Write ``<stem>.npz`` and ``<stem>.json`` next to each other; returns both paths.

        Both are written to temporary files in the same folder first and then renamed into
        place, the JSON last: a failed save leaves the previous pair as it was. The JSON names
        the sha256 of its ``.npz``, so the one window left (between the two renames) leaves a
        pair :meth:`load` refuses rather than new weights under the old threshold; a previous
        JSON without that hash is given it first (see :func:`_seal`). Temporary files a killed
        save left behind are removed; two saves of one head must not run at the same time.
        """
        npz, meta = _pair(Path(path))
        npz.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(npz, meta)
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            mean=self.mean.astype(np.float32),
            std=self.std.astype(np.float32),
            weights=self.weights.astype(np.float32),
            bias=np.float32(self.bias),
        )
        arrays = buf.getvalue()
        doc = {
            "format": FORMAT,
            "name": self.name,
            "threshold": self.threshold,
            "backbone": {"model": self.model_name, "sha256": self.backbone_sha256},
            "feature_nodes": list(self.feature_nodes),
            "pooling": self.recipe.as_dict(),
            "classifier": "standardised logistic regression",
            "npz_sha256": hashlib.sha256(arrays).hexdigest(),
            **{k: v for k, v in self.meta.items() if k not in _RESERVED},
        }
        with _staged(npz, arrays) as npz_tmp, _staged(meta, _json_bytes(doc)) as meta_tmp:
            _seal(npz, meta)
            npz_tmp.replace(npz)
            meta_tmp.replace(meta)
        return npz, meta

    @classmethod
    def load(cls, path: str | Path) -> SceneHead:
        """Load from either file of the pair (or the common stem)."""
        npz, meta = _pair(Path(path))
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
            data = npz.read_bytes()
            with np.load(io.BytesIO(data)) as arrays:
                mean, std, weights = arrays["mean"], arrays["std"], arrays["weights"]
                bias = float(arrays["bias"])
        except (OSError, ValueError, KeyError, TypeError, EOFError, BadZipFile, zlib.error) as exc:
            # A truncated or empty .npz (a copy cut short) raises EOFError, BadZipFile or
            # zlib.error, none of them an OSError: skipped like any unusable head.
            raise HeadFormatError(f"cannot read scene head {npz} / {meta}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else None
            raise HeadFormatError(f"{meta}: format {found!r}, expected {FORMAT!r}")
        _check_pair(npz, meta, doc, data)
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
    {
        "format",
        "name",
        "threshold",
        "backbone",
        "feature_nodes",
        "pooling",
        "classifier",
        "npz_sha256",
    }
)


def head_stem(out: str | Path, name: str) -> Path:
    """The path stem of the pair a head named ``name`` is written to for ``--out OUT``.

    ``OUT`` is the stem itself, unless it names a folder (one that exists, or a path ending
    in ``/``): then the pair goes into it as ``<name>.npz`` / ``<name>.json``, where
    ``--heads OUT`` finds it, not beside the folder as ``OUT.npz``.
    """
    text = os.fspath(out)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return path / name
    return path


@dataclass(frozen=True, slots=True)
class HeadOnDisk:
    """What a save at a stem would replace: the file, and the head's name and ``trained_at``
    as its JSON gives them (``name`` None: no scene head file, e.g. some other JSON)."""

    path: Path
    name: str | None
    trained_at: str

    def describe(self) -> str:
        if self.name is None:
            return f"{self.path} (not a scene head file)"
        return f"{self.path} (head {self.name}, trained {self.trained_at})"


def head_on_disk(stem: Path) -> HeadOnDisk | None:
    """The head file a save at ``stem`` would replace, None when neither file exists.

    Only the JSON is read (not the weights): a pair a killed save left mismatched is still
    named by what its JSON says."""
    npz, meta = _pair(stem)
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return HeadOnDisk(npz, None, "unknown") if npz.exists() else None
    except (OSError, ValueError):
        return HeadOnDisk(meta, None, "unknown")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "name" not in doc:
        return HeadOnDisk(meta, None, "unknown")
    return HeadOnDisk(meta, str(doc["name"]), str(doc.get("trained_at", "unknown")))


def _pair(path: Path) -> tuple[Path, Path]:
    stem = path.with_suffix("") if path.suffix in {".npz", ".json"} else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


@contextlib.contextmanager
def _staged(target: Path, data: bytes) -> Iterator[Path]:
    """``data`` in a temporary file beside ``target`` (removed unless renamed into place).

    The name ends in ``.tmp``, so a loader listing ``*.json`` never takes it for a head. It
    gets the mode of the file it replaces (0644 for a new one), not mkstemp's owner-only 0600,
    so a worker running as another user can still read the head.
    """
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    # NaN or Infinity would make a file no strict JSON reader accepts: raise instead.
    return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _remove_leftovers(npz: Path, meta: Path) -> None:
    """Remove the temporary files of an earlier save of this pair that was killed."""
    for target in (npz, meta):
        for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _seal(npz: Path, meta: Path) -> None:
    """Give a JSON saved before ``npz_sha256`` existed the hash of its current ``.npz``.

    Without it, a save cut after its ``.npz`` rename would leave the new weights beside an
    old JSON that :func:`_check_pair` takes as it is: scored under the old threshold. Sealed,
    the old pair still loads, and the mix is refused. A lone JSON (no ``.npz``) loads no head
    before the save, so it is removed rather than left to pair with the new weights. A JSON
    of another format is left alone: the loader refuses it anyway.
    """
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no JSON, or none the loader would take
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "npz_sha256" in doc:
        return
    try:
        arrays = npz.read_bytes()
    except FileNotFoundError:
        meta.unlink(missing_ok=True)
        return
    sealed = {**doc, "npz_sha256": hashlib.sha256(arrays).hexdigest()}
    with _staged(meta, _json_bytes(sealed)) as tmp:
        tmp.replace(meta)


def _check_pair(npz: Path, meta: Path, doc: Mapping[str, Any], data: bytes) -> None:
    """Refuse an ``.npz`` that is not the one its JSON was written with.

    Heads saved before the JSON named the hash have none: they are taken as they are.
    """
    expected = doc.get("npz_sha256")
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise HeadFormatError(
            f"{npz.name} (sha256 {actual}) is not the weights file {meta.name} was saved with "
            f"(npz_sha256 {expected}); a save was interrupted, train or copy the pair again"
        )


def load_default_heads(
    info: ModelInfo, directory: Path | None = None, required: Collection[str] = ()
) -> dict[str, SceneHead]:
    """The heads of ``directory`` (default: the shipped ones) trained on this backbone.

    Unusable heads are skipped with a warning; a head of another backbone that ``required``
    names (one a configured zone needs) and no other file provides is an ERROR, since that
    zone stays silent. Of two usable files with the same head name, the one with the newest
    ``trained_at`` wins (a file without it counts as oldest; a tie goes to the file name that
    sorts last), with a warning naming both.
    """
    if directory is not None and not directory.is_dir():
        # Globbing a misspelt folder finds nothing: the zones would stay silent for good.
        raise FileNotFoundError(f"scene heads folder {directory}: no such folder")
    folder = directory or HEADS_DIR
    heads: dict[str, tuple[Path, SceneHead]] = {}
    other_backbone: list[tuple[Path, SceneHead]] = []
    for meta in sorted(folder.glob("*.json")):
        try:
            head = SceneHead.load(meta)
        except HeadFormatError as exc:
            log.warning("scene head %s skipped: %s", meta.name, exc)
            continue
        if not head.matches(info):
            other_backbone.append((meta, head))
            continue
        earlier = heads.get(head.name)
        heads[head.name] = (meta, head) if earlier is None else _newer(earlier, (meta, head))
    for meta, head in other_backbone:
        _skip_other_backbone(meta, head, info, head.name in required and head.name not in heads)
    return {name: head for name, (_, head) in heads.items()}


def _newer(first: tuple[Path, SceneHead], second: tuple[Path, SceneHead]) -> tuple[Path, SceneHead]:
    """Of two files with one head name, the one trained last (ties: the later file name)."""
    ranked = sorted((first, second), key=lambda item: (_trained_at(item[1]), item[0].name))
    loser, winner = ranked
    log.warning(
        "scene heads %s and %s are both named %r: using %s (trained at %s), not %s (trained "
        "at %s); remove or rename one",
        first[0].name,
        second[0].name,
        winner[1].name,
        winner[0].name,
        winner[1].meta.get("trained_at", "unknown"),
        loser[0].name,
        loser[1].meta.get("trained_at", "unknown"),
    )
    return winner


_NEVER = datetime.min.replace(tzinfo=UTC)


def _trained_at(head: SceneHead) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(head.meta["trained_at"]))
    except (KeyError, ValueError):
        return _NEVER
    # train-head writes UTC offsets; a stamp without one is read as UTC.
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _skip_other_backbone(meta: Path, head: SceneHead, info: ModelInfo, needed: bool) -> None:
    if needed:
        log.error(
            "scene head %s (%s) not loaded: trained on %s with sha256 %s, the loaded model %s "
            "has sha256 %s; the garbage_overflow zones that need it cannot raise candidates "
            "until it is retrained with `gridpatrol train-head`",
            head.name,
            meta,
            head.model_name,
            head.backbone_sha256,
            info.name,
            info.sha256,
        )
        return
    log.warning(
        "scene head %s skipped: trained on %s (sha256 %s…), the loaded model is %s "
        "(sha256 %s…); retrain it with `gridpatrol train-head`",
        head.name,
        head.model_name,
        head.backbone_sha256[:12],
        info.name,
        info.sha256[:12],
    )


# --- the train-head command ----------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train a scene head on pooled detector features and print grouped, nested "
        "cross-validated precision / recall / accuracy / FPR / AUC, each outer fold scored at "
        "the threshold its own inner CV chose (the head's threshold is chosen on all the data)."
    )
    parser.add_argument("dataset", nargs="?", help="folder of class sub-folders (images)")
    parser.add_argument("--name", required=True, help="head name, e.g. garbage")
    parser.add_argument(
        "--positive", help="positive class sub-folder (default: the folder named like --name)"
    )
    parser.add_argument(
        "--out",
        help="output path stem, or a folder (existing, or ending in /) to write <name>.npz and "
        "<name>.json in (default: var/heads/<name>)",
    )
    parser.add_argument("--model", help="detector model (path or name; see models/README.md)")
    parser.add_argument(
        "--from-reviews",
        action="store_true",
        help="train on confirmed vs rejected garbage_overflow candidates from the API",
    )
    parser.add_argument("--api-url", help="intake API (default GRIDPATROL_API_URL)")
    parser.add_argument("--token", help="reviewer token (default GRIDPATROL_API_TOKEN)")
    parser.add_argument(
        "--since",
        help="only candidates created since: an ISO 8601 date (its midnight UTC) or a time "
        "with its UTC offset, e.g. 2026-12-01 or 2026-12-01T08:00Z",
    )
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="write the head even when its CV recall is 0 or its AUC at most 0.5, or over a "
        "file of another head (or one that is no head file)",
    )
    parser.add_argument(
        "--folds", type=int, default=5, help="outer CV folds, at least 2 (default 5)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="outer CV repeats, at least 1 (default 3)"
    )
    parser.add_argument(
        "--min-recall",
        type=float,
        default=0.92,
        help="recall the threshold aims at, from 0 to 1 (default 0.92)",
    )
    parser.add_argument(
        "--max-fpr",
        type=float,
        default=0.10,
        help="false-positive rate the threshold keeps within, from 0 to 1 (default 0.10)",
    )
    parser.add_argument(
        "--group-gap-min",
        type=float,
        default=30.0,
        help="minutes (0 or more): photos whose file-name timestamps are closer share a CV group",
    )
    parser.add_argument("--seed", type=int, default=0)


def run_train(args: argparse.Namespace) -> int:
    from gridpatrol.detectors import head_training

    return head_training.run(args)
