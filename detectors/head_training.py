"""Training and grouped, nested cross-validation of scene heads (``gridpatrol train-head``).

Protocol (also in docs/scene-heads.md):

* every image goes through the detector once (plus once mirrored: horizontal flips are added
  to the TRAINING folds only, never scored), and its feature maps are pooled by the head's
  recipe;
* outer loop: ``StratifiedGroupKFold`` (``--folds``), repeated ``--repeats`` times with
  different shuffles; groups keep near-duplicates (same place, same report session) on one
  side of every split;
* inner loop, on the outer training part only: grouped CV picks the regularisation C (by
  log-loss) and then the decision threshold from the inner out-of-fold probabilities;
* the naive linear probe (mean-pooled C2PSA map, logistic regression, threshold 0.5) is
  scored on the same outer splits, so the two lines of the table are comparable;
* the shipped head is refitted on everything, with C and threshold chosen by the inner
  procedure run on all the data.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime
from datetime import time as day_time
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray

from gridpatrol import proxies
from gridpatrol.api.client import (
    DEFAULT_API_URL,
    ApiClient,
    ApiConfigError,
    ApiError,
    _checked_url,
)
from gridpatrol.api.schemas import plausible_instant
from gridpatrol.detectors.features import YOLO11_NODES, PoolingRecipe, Region, pooled_features
from gridpatrol.detectors.heads import SceneHead, _pair, head_on_disk, head_stem

# The images scan reads (.tif too): one set, so a folder trains on what scan would judge.
from gridpatrol.detectors.scan import IMAGE_SUFFIXES
from gridpatrol.detectors.types import Backend, ModelInfo

C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03)
BASELINE_RECIPE = PoolingRecipe(nodes=(YOLO11_NODES["c2psa"],), levels=(1,), stats=("mean",))
HEAD_RECIPE = PoolingRecipe()
# Statuses of a confirmed candidate (the candidate life cycle). A positive also needs a
# reviewer's confirmation in its history (:func:`_review_label`): the site policy confirms the
# types in ``policy.auto_confirm`` by itself, and those include the head's own false alarms.
CONFIRMED = frozenset(
    {"confirmed", "pulled", "registered", "dispatched", "arrived", "resolved", "verified", "closed"}
)
# The history entry of a reviewer's confirmation ("auto_confirmed", by "policy", is not one).
REVIEWER_CONFIRMED = "confirmed"
# Only these rejections say "the picture shows no garbage"; a duplicate or an out-of-area
# report may well show garbage and would poison the negatives.
NEGATIVE_REASONS = frozenset({"false_positive"})
_EPOCH_MS = re.compile(r"(?<!\d)(1[3-9]\d{11})(?!\d)")
# A camera's or phone's date and time, as in IMG_20230115_123045.jpg (read as UTC: only the
# gaps between photos count).
_DATE_TIME = re.compile(r"(?<!\d)(\d{8})[_-]?(\d{6})(?!\d)")
# Waits before the 2nd, 3rd and 4th attempt at a request the API may answer later (429, 5xx,
# no connection): a proxy's 503 or an API restart must not drop candidates from the data.
RETRY_WAITS_S = (0.5, 1.0, 2.0)
# "No such candidate / file": the one answer that skips a candidate rather than stopping.
GONE = frozenset({404, 410})
T = TypeVar("T")

Matrix = NDArray[np.float32]


def progress(message: str) -> None:
    print(f"train-head: {message}", file=sys.stderr, flush=True)


# --- samples ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One training image: a file or fetched bytes, a label, a CV group, an optional region."""

    key: str
    label: int
    group: str
    path: Path | None = None
    data: bytes | None = None
    region: Region | None = None

    def image(self) -> NDArray[np.uint8] | None:
        """The decoded image, None when it cannot be decoded (:func:`extract` skips it)."""
        import cv2

        from gridpatrol.detectors.scan import decode_image

        if self.path is not None:
            return decode_image(self.path, cv2.IMREAD_COLOR)
        # Fetched evidence as stored, as the worker decoded the frame its boxes refer to:
        # turned by an EXIF Orientation tag, the region would fall on other pixels.
        return decode_image(self.data or b"", cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)

    def content_sha256(self) -> str:
        """The sha256 of the file's or the fetched bytes (of nothing for a file gone since)."""
        if self.path is None:
            return hashlib.sha256(self.data or b"").hexdigest()
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            # Unreadable: extract() skips it; its own name keeps it apart from other files.
            return f"unreadable:{self.path}"


def name_time_ms(name: str) -> int | None:
    """The time in a file name, in ms: 13-digit epoch milliseconds (``…_1495902895486.jpg``),
    else ``YYYYMMDD[_-]HHMMSS`` (``IMG_20230115_123045.jpg``); None without either."""
    found = _EPOCH_MS.findall(name)
    if found:
        return int(found[0])
    for day, clock in _DATE_TIME.findall(name):
        try:
            at = datetime.strptime(day + clock, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            continue  # digits that are no date
        return int(at.timestamp() * 1000)
    return None


def time_groups(names: Sequence[str], gap_min: float) -> list[str]:
    """Group ids by single-linkage on the timestamps in file names (:func:`name_time_ms`).

    Photos of one report session (same place, minutes apart) share a group; names without a
    timestamp are their own group.
    """
    stamps: list[tuple[int, int]] = []
    groups = [f"file:{n}" for n in names]
    for i, name in enumerate(names):
        ms = name_time_ms(name)
        if ms is not None:
            stamps.append((ms, i))
    stamps.sort()
    current, last = -1, None
    for ms, i in stamps:
        if last is None or ms - last >= gap_min * 60_000:
            current += 1
        groups[i] = f"session:{current}"
        last = ms
    return groups


def dataset_samples(root: Path, positive: str, gap_min: float) -> list[Sample]:
    """Images of ``root``'s class sub-folders; ``positive`` is label 1, every other folder 0.

    Hidden folders and files and ``__MACOSX`` are no classes and hold no images
    (:func:`_listed`); a class folder without images is ignored. The classes, the empty
    folders, the linked folders not followed (:func:`_folder_files`) and the files that are no
    images are said in a line each."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _listed(p.name))
    if not _listed(positive) and (root / positive).is_dir():
        raise ValueError(
            f"{root / positive}: hidden folders (names starting with '.') and __MACOSX are "
            "skipped, so it is no class: rename it to name the positive class"
        )
    if positive not in {f.name for f in folders}:
        raise ValueError(
            f"{root} has no sub-folder {positive!r} (found: {', '.join(f.name for f in folders)})"
        )
    files: list[tuple[Path, int]] = []
    ignored: Counter[str] = Counter()
    counts: dict[str, int] = {}
    linked: list[str] = []
    for folder in folders:  # in name order, as the CV splits have always seen them
        images = 0
        folder_files, folder_links = _folder_files(folder)
        linked += [str(d.relative_to(root)) for d in folder_links]
        for f in folder_files:
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, int(folder.name == positive)))
                images += 1
            else:
                ignored[f.suffix.lower() or "(no extension)"] += 1
        counts[folder.name] = images
    classes = [f"{positive} (positive, {counts[positive]})"]
    classes += [f"{name} ({n})" for name, n in counts.items() if n and name != positive]
    progress(f"classes: {', '.join(classes)}")
    if empty := [name for name, n in counts.items() if not n and name != positive]:
        progress(f"class folders without images, ignored: {', '.join(empty)}")
    _say_linked_folders(linked)
    if ignored:
        kinds = ", ".join(f"{ext} {n}" for ext, n in sorted(ignored.items()))
        # Only the suffix is read: an image saved without one is left out too.
        progress(
            f"{_count(ignored.total(), 'file')} ignored, without an image suffix "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}): {kinds}"
        )
    names = [f.name for f, _ in files]
    unstamped = sum(name_time_ms(n) is None for n in names)
    if unstamped * 2 > len(names):
        progress(
            f"{unstamped} of {len(names)} file names carry no timestamp: grouping by file name "
            "only: near-duplicates may straddle folds"
        )
    groups = time_groups(names, gap_min)
    return [
        Sample(key=str(f.relative_to(root)), label=label, group=g, path=f)
        for (f, label), g in zip(files, groups, strict=True)
    ]


def _listed(name: str) -> bool:
    """Whether a folder's entry is walked for images: not a hidden name (``.ipynb_checkpoints``,
    macOS's ``._IMG_1.jpg``), as scan's folder walk, nor ``__MACOSX``, the AppleDouble folder a
    zip made on a Mac unpacks to: neither is a class, nor holds photos of one."""
    return not name.startswith(".") and name != "__MACOSX"


def _folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files under ``folder`` (recursive, sorted) but those :func:`_listed` leaves out, and
    the linked folders left unwalked (sorted).

    A linked file counts as a file. A linked folder is not followed: one linking back up to the
    dataset or to another class folder would train that class's photos under this label, and
    one folder reached both directly and by a link would be kept at whichever path the walk met
    first, moving samples between CV folds for the same seed. The caller says which were left
    out (:func:`_say_linked_folders`), so nothing is dropped silently."""
    found: list[Path] = []
    linked: list[Path] = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if _listed(d)]
        linked += [Path(top, d) for d in dirs if Path(top, d).is_symlink()]
        found += [Path(top, n) for n in names if _listed(n)]
    return sorted(found), sorted(linked)


def _say_linked_folders(linked: Sequence[str]) -> None:
    if linked:
        progress(
            f"{_count(len(linked), 'linked folder')} not followed: {', '.join(linked)} "
            "(link the images, or copy the folder)"
        )


def merge_duplicate_groups(samples: Sequence[Sample]) -> list[Sample]:
    """The samples with the groups of byte-identical images merged (union-find on sha256).

    Groups come from names (timestamps) or camera and zone, which say nothing of content: a
    photo copied under another timestamp, or one crop confirmed for two zones, would
    otherwise sit in two groups, be trained on in one fold and scored in another, and
    inflate the CV figures. One progress line counts the copies; one more warns when the
    copies of an image carry both labels (they are kept, in one group).
    """
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    first: dict[str, Sample] = {}
    # Labels are compared per image and region: one frame's candidates for two zones (one
    # confirmed, one rejected) share its bytes but show other crops, so their labels agree.
    first_view: dict[tuple[str, Region | None], Sample] = {}
    conflicts: list[tuple[Sample, Sample]] = []
    copies = 0
    for s in samples:
        sha = s.content_sha256()
        view = first_view.setdefault((sha, s.region), s)
        if view.label != s.label and all(c[0] is not view for c in conflicts):
            conflicts.append((view, s))
        seen = first.setdefault(sha, s)
        if seen is s:
            continue
        copies += 1
        a, b = root(seen.group), root(s.group)
        if a != b:
            parent[b] = a  # the group seen first names the merged one
    if not copies:
        return list(samples)
    merged = [replace(s, group=root(s.group)) for s in samples]
    before, after = len({s.group for s in samples}), len({s.group for s in merged})
    progress(
        f"{_count(copies, 'image')} byte-identical to others: each kept in one CV group with "
        f"its copies ({before} -> {after} groups)"
    )
    if conflicts:
        seen, other = conflicts[0]
        progress(
            f"{_count(len(conflicts), 'image')} with both labels (e.g. {seen.key} and "
            f"{other.key} are the same image): check their labels"
        )
    return merged


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def negative_samples(paths: Sequence[str], fps: float) -> list[Sample]:
    """Extra negatives: image folders (walked as the class folders are, :func:`_folder_files`)
    or videos sampled at ``fps``."""
    out: list[Sample] = []
    linked: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            # The class folders' walk: no hidden copies, no AppleDouble files, no linked folders.
            found, links = _folder_files(path)
            files = [f for f in found if f.suffix.lower() in IMAGE_SUFFIXES]
            linked += [str(d) for d in links]
            out += [Sample(key=str(f), label=0, group=f"extra:{path}", path=f) for f in files]
        elif path.is_file():
            out += _video_samples(path, fps)
        else:
            raise ValueError(f"--negatives {path}: no such file or folder")
    _say_linked_folders(linked)
    return out


def _video_samples(path: Path, fps: float) -> list[Sample]:
    """Frames of a video sampled at ``fps`` by their timestamps, as ``scan`` samples them."""
    import cv2

    from gridpatrol.detectors.scan import ScanError, video_frames

    out: list[Sample] = []
    try:
        for index, _, frame in video_frames(path, fps):
            data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            out.append(Sample(f"{path.name}#{index}", 0, f"extra:{path}", data=data))
    except ScanError as exc:
        raise ValueError(f"--negatives {exc}") from exc
    return out


@dataclass(frozen=True, slots=True)
class Reviews:
    """The training samples of the reviewed candidates, how many were skipped, and how many
    confirmed candidates no reviewer confirmed (the site policy did; not trained on)."""

    samples: list[Sample]
    skipped: int
    auto_confirmed: int = 0


def review_samples(client: Any, rule_type: str, since: str | None) -> Reviews:
    """Confirmed (1) vs rejected-as-false-positive (0) candidates of ``rule_type``.

    Only "not found" (404 / 410: the candidate, or every evidence file it names that could
    be trained on) skips a candidate, with a progress line. An answer the API may give
    differently later (429, 5xx) or no connection is tried again (:data:`RETRY_WAITS_S`);
    that still failing, or any other error, stops the run with :class:`CandidateError`:
    training on the candidates that happened to come through would bias the head.
    """
    samples: list[Sample] = []
    skipped = unreviewed = 0
    for item in _all_candidates(client, rule_type, since):
        cid = str(item["id"])
        try:
            sample = _review_sample(client, cid)
        except _Skipped as exc:
            progress(f"candidate {cid}: {exc}, skipped")
            skipped += 1
            continue
        except _AutoConfirmed:
            unreviewed += 1
            continue
        if sample is not None:
            samples.append(sample)
    return Reviews(samples, skipped, unreviewed)


class _Skipped(Exception):
    """A reviewed candidate that cannot be trained on; the text says why."""


class _AutoConfirmed(Exception):
    """A candidate the site policy confirmed and no reviewer did: no training data."""


class CandidateError(OSError):
    """A candidate the API did not give for a reason other than "not found": the run stops
    (a setup error, exit 2), naming the candidate."""

    def __init__(self, cid: str, what: str, exc: ApiError | httpx.TransportError) -> None:
        tries = f" (tried {len(RETRY_WAITS_S) + 1} times)" if _transient(exc) else ""
        reason = str(exc) or type(exc).__name__  # some transport errors have no text
        super().__init__(f"candidate {cid}: {what}{reason}{tries}; stopped, nothing trained")


def _review_sample(client: Any, cid: str) -> Sample | None:
    """The candidate's training sample, None when it is no training data (not reviewed so)."""
    try:
        doc = _fetch(partial(client.get_candidate, cid), f"candidate {cid}")
    except (ApiError, httpx.TransportError) as exc:
        if _gone(exc):
            raise _Skipped(str(exc)) from exc
        raise CandidateError(cid, "", exc) from exc
    label = _review_label(doc)
    if label is None:
        if doc.get("status") in CONFIRMED:
            raise _AutoConfirmed(cid)
        return None
    choices = _evidence_for_training(doc)
    if not choices:
        raise _Skipped("no clean or crop evidence")
    missing: list[str] = []
    for sha, ev in choices:
        region = None if ev is None else _region(doc, ev)
        try:
            data = _fetch(partial(client.get_evidence, sha), f"candidate {cid}: evidence {sha}")
        except (ApiError, httpx.TransportError) as exc:
            if not _gone(exc):
                raise CandidateError(cid, f"evidence {sha}: ", exc) from exc
            missing.append(sha)  # not in the store (the API takes such a reference): next
            continue
        source = doc.get("source") or {}
        detection = doc.get("detection") or {}
        group = f"{source.get('camera_id', '?')}:{detection.get('zone_id', '?')}"
        return Sample(key=f"candidate:{cid}", label=label, group=group, data=data, region=region)
    raise _Skipped(f"evidence {', '.join(missing)} not found")


def _fetch(call: Callable[[], T], what: str) -> T:
    """``call()``, tried again after each of :data:`RETRY_WAITS_S` while it fails in a way
    the API may answer differently later; the last failure is raised."""
    for wait in RETRY_WAITS_S:
        try:
            return call()
        except (ApiError, httpx.TransportError) as exc:
            if not _transient(exc):
                raise
            progress(f"{what}: {str(exc) or type(exc).__name__}; trying again in {wait:g} s")
        time.sleep(wait)
    return call()


def _transient(exc: ApiError | httpx.TransportError) -> bool:
    """No connection, or an answer that may differ later (429, 5xx); never a refused token."""
    if isinstance(exc, httpx.TransportError):
        return True
    return exc.status not in (401, 403) and (exc.retryable or exc.status >= 500)


def _gone(exc: ApiError | httpx.TransportError) -> bool:
    return isinstance(exc, ApiError) and exc.status in GONE


def _all_candidates(client: Any, rule_type: str, since: str | None) -> Iterable[dict[str, Any]]:
    params: dict[str, str | int] = {"type": rule_type, "limit": 100}
    if since:
        params["since"] = since
    while True:
        page = _fetch(partial(client.list_candidates, **params), "the list of candidates")
        yield from page.get("items", [])
        cursor = page.get("next_cursor")
        if not cursor:
            return
        params["cursor"] = cursor


def _review_label(doc: dict[str, Any]) -> int | None:
    """1 for a candidate a reviewer confirmed, 0 for one rejected as a false positive, None
    otherwise: other rejections, open cases, and cases the site policy confirmed by itself
    (``auto_confirmed`` in the history, never a reviewer's ``confirmed``)."""
    status = doc.get("status")
    if status in CONFIRMED:
        history = doc.get("history") or []
        reviewed = any(
            isinstance(entry, dict)
            and entry.get("action") == REVIEWER_CONFIRMED
            and entry.get("who") != "policy"
            for entry in history
        )
        return 1 if reviewed else None
    if status == "rejected":
        reason = (doc.get("review") or {}).get("reason_code")
        return 0 if reason in NEGATIVE_REASONS else None
    return None


def _evidence_for_training(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """The files to train on, in order of preference: a crop as it is (None), else a clean
    frame, given with its evidence item: the detection's zone box on it is the region (the
    next one when a file is not stored)."""
    evidence = doc.get("evidence") or []
    crops = [(str(ev["sha256"]), None) for ev in evidence if ev.get("kind") == "crop"]
    cleans = [(str(ev["sha256"]), ev) for ev in evidence if ev.get("kind") == "clean"]
    return crops + cleans


def _region(doc: dict[str, Any], ev: dict[str, Any]) -> Region | None:
    """The detection's boxes, normalized by the size of the frame they were found on.

    That is ``detection.frame_width`` / ``frame_height`` when the producer sends them: an
    oversized clean frame may have been re-encoded smaller, while the boxes stay in the camera's
    pixels. Otherwise the clean evidence's own width and height.

    Raises :class:`_Skipped` (naming the boxes) unless every box is four finite numbers
    ``[x1, y1, x2, y2]`` with ``x2 > x1`` and ``y2 > y1``: the API takes any list of numbers,
    and a guessed region would train the head on other pixels than the worker scores.
    """
    detection = doc.get("detection") or {}
    boxes = detection.get("boxes") or []
    width = detection.get("frame_width") or ev.get("width")
    height = detection.get("frame_height") or ev.get("height")
    if not boxes or not width or not height:
        return None
    if not all(_is_box(box) for box in boxes):
        raise _Skipped(f"detection.boxes {boxes} are not [x1, y1, x2, y2] boxes")
    arr = np.asarray(boxes, dtype=np.float64)
    x0, y0 = arr[:, 0].min() / width, arr[:, 1].min() / height
    x1, y1 = arr[:, 2].max() / width, arr[:, 3].max() / height
    return (float(x0), float(y0), float(x1), float(y1))


def _is_box(box: Any) -> bool:
    """Whether ``box`` is ``[x1, y1, x2, y2]``: four finite numbers, x2 > x1 and y2 > y1."""
    if not isinstance(box, list | tuple) or len(box) != 4:
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
        return False
    x1, y1, x2, y2 = (float(v) for v in box)
    return bool(np.isfinite([x1, y1, x2, y2]).all()) and x2 > x1 and y2 > y1


# --- features ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureSet:
    x: Matrix  # head features of the images
    x_flip: Matrix  # the same of the mirrored images (training augmentation)
    x_base: Matrix  # naive probe features
    y: NDArray[np.int64]
    groups: NDArray[np.int64]
    keys: tuple[str, ...]
    # Negatives used for training only (with their mirrors), never scored: other scenes the
    # head must not fire on (e.g. busy streets without any bin).
    extra: Matrix | None = None


def extract(
    samples: Sequence[Sample], backend: Backend, recipe: PoolingRecipe, chunk: int = 8
) -> FeatureSet:
    rows: list[tuple[Matrix, Matrix, Matrix]] = []
    kept: list[Sample] = []
    for start in range(0, len(samples), chunk):
        batch = samples[start : start + chunk]
        images = [(s, s.image()) for s in batch]
        good = [(s, im) for s, im in images if im is not None]
        for s, im in images:
            if im is None:
                progress(f"{s.key}: not a readable image, skipped")
        flat = [im for _, im in good] + [np.ascontiguousarray(im[:, ::-1]) for _, im in good]
        results = backend.infer(flat)
        n = len(good)
        for i, (s, _) in enumerate(good):
            region = s.region
            flip_region = None if region is None else _mirror(region)
            r, rf = results[i], results[n + i]
            rows.append(
                (
                    pooled_features(r.features, r.letterbox, recipe, region),
                    pooled_features(rf.features, rf.letterbox, recipe, flip_region),
                    pooled_features(r.features, r.letterbox, BASELINE_RECIPE, region),
                )
            )
            kept.append(s)
        progress(f"features {min(start + chunk, len(samples))}/{len(samples)}")
    if not kept:
        raise ValueError("no readable images")
    group_ids = {g: i for i, g in enumerate(dict.fromkeys(s.group for s in kept))}
    return FeatureSet(
        x=np.stack([r[0] for r in rows]),
        x_flip=np.stack([r[1] for r in rows]),
        x_base=np.stack([r[2] for r in rows]),
        y=np.array([s.label for s in kept], dtype=np.int64),
        groups=np.array([group_ids[s.group] for s in kept], dtype=np.int64),
        keys=tuple(s.key for s in kept),
    )


def _mirror(region: Region) -> Region:
    x0, y0, x1, y1 = region
    return (1.0 - x1, y0, 1.0 - x0, y1)


# --- model selection -------------------------------------------------------------------------


def choose_threshold(
    prob: NDArray[np.float64], y: NDArray[np.int64], min_recall: float, max_fpr: float
) -> float:
    """Decision threshold from out-of-fold probabilities.

    Thresholds lie midway between consecutive distinct scores (a margin on both sides).
    If some meet both targets, take the one with the largest recall - FPR; otherwise keep
    FPR <= max_fpr and take the highest recall (the FPR bound is the hard constraint).
    """
    levels = np.unique(np.concatenate([prob, [0.0, 1.0]]))
    cands = (levels[:-1] + levels[1:]) / 2.0
    pos, neg = prob[y == 1], prob[y == 0]
    rec = np.array([(pos >= t).mean() if pos.size else 0.0 for t in cands])
    fpr = np.array([(neg >= t).mean() if neg.size else 0.0 for t in cands])
    ok = fpr <= max_fpr + 1e-9
    both = ok & (rec >= min_recall - 1e-9)
    if both.any():
        idx = np.flatnonzero(both)
        best = idx[np.argmax(rec[idx] - fpr[idx])]
    elif ok.any():
        idx = np.flatnonzero(ok)
        best = idx[np.lexsort((fpr[idx], -rec[idx]))[0]]
    else:
        return 0.5
    return float(cands[best])


def _fit_head(fs: FeatureSet, idx: NDArray[np.intp], c: float) -> Any:
    """The head's classifier on the images ``idx``, their mirrors and the extra negatives."""
    parts, labels = [fs.x[idx], fs.x_flip[idx]], [fs.y[idx], fs.y[idx]]
    if fs.extra is not None and len(fs.extra):
        parts.append(fs.extra)
        labels.append(np.zeros(len(fs.extra), dtype=np.int64))
    return _fit(np.vstack(parts), np.concatenate(labels), c)


def _fit(x: Matrix, y: NDArray[np.int64], c: float, x_aug: Matrix | None = None) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if x_aug is not None:
        x, y = np.vstack([x, x_aug]), np.concatenate([y, y])
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    )
    return model.fit(x, y)


def _folds(
    y: NDArray[np.int64], groups: NDArray[np.int64], k: int, seed: int, level: str
) -> list[Any]:
    """Grouped, stratified splits of ``y`` in at most ``k`` folds.

    ``k`` is capped by the number of groups of the rarer class (a class with three groups
    cannot be in the test part of four folds). Raises :class:`ValueError` when even that
    leaves a training part with one class, e.g. one positive group far larger than the
    others: StratifiedGroupKFold then keeps it alone and the others together.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = [len(set(groups[y == label].tolist())) for label in (1, 0)]
    problem = (
        f"grouped {level} cross-validation cannot split {len(y)} images "
        f"({per_class[0]} positive / {per_class[1]} negative groups)"
    )
    advice = "; groups of very unequal size do this: add groups or try other --folds"
    k = min(k, *per_class)
    if k < 2:
        raise ValueError(f"{problem}: each class needs at least 2 groups{advice}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y)), y, groups))
    if any(len(te) == 0 or len(set(y[tr].tolist())) < 2 for tr, te in splits):
        raise ValueError(
            f"{problem} into {k} folds with both classes in every training part{advice}"
        )
    return splits


@dataclass(frozen=True, slots=True)
class Choice:
    c: float
    threshold: float


def select(
    fs: FeatureSet, idx: NDArray[np.intp], seed: int, min_recall: float, max_fpr: float
) -> Choice:
    """Inner grouped CV on ``idx``: C by out-of-fold log-loss, then the threshold."""
    from sklearn.metrics import log_loss

    y = fs.y[idx]
    folds = _folds(y, fs.groups[idx], 4, seed, "inner")
    best: tuple[float, float, NDArray[np.float64]] | None = None
    for c in C_GRID:
        oof = np.zeros(len(idx))
        for tr, te in folds:
            a, b = idx[tr], idx[te]
            oof[te] = _fit_head(fs, a, c).predict_proba(fs.x[b])[:, 1]
        loss = float(log_loss(y, np.clip(oof, 1e-6, 1 - 1e-6), labels=[0, 1]))
        if best is None or loss < best[0]:
            best = (loss, c, oof)
    assert best is not None
    return Choice(best[1], choose_threshold(best[2], y, min_recall, max_fpr))


@dataclass(frozen=True, slots=True)
class Scores:
    precision: float
    recall: float
    accuracy: float
    fpr: float
    auc: float

    @classmethod
    def of(cls, y: NDArray[np.int64], prob: NDArray[np.float64], pred: NDArray[np.bool_]) -> Scores:
        from sklearn.metrics import roc_auc_score

        tp = int((pred & (y == 1)).sum())
        fp = int((pred & (y == 0)).sum())
        auc = float(roc_auc_score(y, prob)) if len(set(y.tolist())) == 2 else float("nan")
        return cls(
            # Nothing predicted positive: no precision (NaN, "n/a" in the table), not 0.
            precision=tp / int(pred.sum()) if pred.any() else math.nan,
            recall=tp / max(int((y == 1).sum()), 1),
            accuracy=float((pred == (y == 1)).mean()),
            fpr=fp / max(int((y == 0).sum()), 1),
            auc=auc,
        )


@dataclass(frozen=True, slots=True)
class CvReport:
    head: list[Scores]  # one per repeat, at the inner-CV threshold
    head_half: list[Scores]  # the same probabilities at threshold 0.5
    baseline: list[Scores]
    thresholds: list[float]  # per outer fold
    cs: list[float]
    folds: list[int] = field(default_factory=list)  # outer folds used, per repeat

    def threshold_mean(self) -> float:
        """The mean of the outer folds' inner-CV thresholds, the head row's threshold."""
        return float(np.mean(self.thresholds))

    def folds_used(self, asked: int) -> int:
        """The outer folds used: ``asked`` (``--folds``) capped by the groups per class."""
        return max(self.folds, default=asked)


def nested_cv(
    fs: FeatureSet,
    folds: int,
    repeats: int,
    seed: int,
    min_recall: float,
    max_fpr: float,
    on_fold: Callable[[str], None] = progress,
) -> CvReport:
    report = CvReport([], [], [], [], [])
    for rep in range(repeats):
        n = len(fs.y)
        prob, pred = np.zeros(n), np.zeros(n, dtype=bool)
        bprob = np.zeros(n)
        splits = _folds(fs.y, fs.groups, folds, seed + rep, "outer")
        report.folds.append(len(splits))
        for k, (tr, te) in enumerate(splits, 1):
            choice = select(fs, tr, seed + 100 + rep, min_recall, max_fpr)
            model = _fit_head(fs, tr, choice.c)
            prob[te] = model.predict_proba(fs.x[te])[:, 1]
            pred[te] = prob[te] >= choice.threshold
            bprob[te] = _fit(fs.x_base[tr], fs.y[tr], 1.0).predict_proba(fs.x_base[te])[:, 1]
            report.thresholds.append(choice.threshold)
            report.cs.append(choice.c)
            on_fold(
                f"repeat {rep + 1}/{repeats} fold {k}/{len(splits)}: C={choice.c:g} "
                f"threshold={choice.threshold:.3f}"
            )
        report.head.append(Scores.of(fs.y, prob, pred))
        report.head_half.append(Scores.of(fs.y, prob, prob >= 0.5))
        report.baseline.append(Scores.of(fs.y, bprob, bprob >= 0.5))
    return report


def _score_names() -> list[str]:
    return [f.name for f in fields(Scores)]


def _mean(scores: list[Scores]) -> Scores:
    """The mean over repeats of each figure, of the repeats that have it (NaN if none)."""
    means: list[float] = []
    for name in _score_names():
        known = [v for s in scores if not math.isnan(v := getattr(s, name))]
        means.append(float(np.mean(known)) if known else math.nan)
    return Scores(*means)


def _figure(value: float, width: int) -> str:
    return f"{'n/a' if math.isnan(value) else f'{value:.3f}':>{width}}"


HEAD_ROW = "head (P3/P4/P5/C2PSA SPP mean+max, LR) at per-fold inner thresholds"
NAME_WIDTH = len(HEAD_ROW)


def format_report(fs: FeatureSet, rep: CvReport, folds: int, repeats: int) -> str:
    npos = int(fs.y.sum())
    used = rep.folds_used(folds)
    capped = f" (--folds {folds} capped by the groups of the rarer class)" if used < folds else ""
    lines = [
        f"grouped nested CV: {len(fs.y)} images ({npos} positive / {len(fs.y) - npos} negative), "
        f"{len(set(fs.groups.tolist()))} groups, {used} folds x {repeats} repeats{capped}",
        f"{'model':<{NAME_WIDTH}} {'threshold':>9} {'precision':>9} {'recall':>7} {'accuracy':>8} "
        f"{'FPR':>6} {'AUC':>6}",
    ]
    rows = [
        ("naive probe (mean-pooled C2PSA, LR, t=0.5)", "0.500", _mean(rep.baseline)),
        (HEAD_ROW, f"{rep.threshold_mean():.3f}", _mean(rep.head)),
        ("same head at threshold 0.5", "0.500", _mean(rep.head_half)),
    ]
    for name, thr, s in rows:
        lines.append(
            f"{name:<{NAME_WIDTH}} {thr:>9} {_figure(s.precision, 9)} {_figure(s.recall, 7)} "
            f"{_figure(s.accuracy, 8)} {_figure(s.fpr, 6)} {_figure(s.auc, 6)}"
        )
    # The row's figures pool each outer fold's test part scored at that fold's own threshold:
    # no single threshold gives them, the final head's included.
    lines.append(
        f"(head row: each outer fold at its own inner-CV threshold, "
        f"{min(rep.thresholds):.3f}-{max(rep.thresholds):.3f}; the column gives their mean)"
    )
    return "\n".join(lines)


def fit_head(
    fs: FeatureSet, name: str, info: ModelInfo, choice: Choice, meta: dict[str, Any]
) -> SceneHead:
    model = _fit_head(fs, np.arange(len(fs.y)), choice.c)
    scaler, lr = model.steps[0][1], model.steps[1][1]
    std = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return SceneHead(
        name=name,
        threshold=choice.threshold,
        recipe=HEAD_RECIPE,
        model_name=info.name,
        backbone_sha256=info.sha256,
        mean=scaler.mean_.astype(np.float32),
        std=std.astype(np.float32),
        weights=lr.coef_[0].astype(np.float32),
        bias=float(lr.intercept_[0]),
        meta=meta,
    )


# --- the command -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Exit 0 when trained (or cross-validated), 2 on setup errors, 1 when the head cannot be
    written or is no better than chance in cross-validation (not written without --force)."""
    from gridpatrol.detectors.models import (
        MissingExtraError,
        ModelLoadError,
        ModelNotFoundError,
    )

    if bad := _bad_option(args):
        print(f"train-head: {bad}", file=sys.stderr)
        return 2
    out = None if args.cv_only else head_stem(args.out or "var/heads/", args.name)
    try:
        if out is not None:
            check_writable(out)  # before the features, which take long
            check_replaceable(out, args.name, args.force)
        samples = _samples(args)
        check_samples(samples, args.from_reviews)  # before the features, which take long
        fs, info = _features(args, samples)
        check_enough(fs, args.from_reviews)  # unreadable images are dropped
        # Inside the try: groups too unequal to split are the data's fault (exit 2, one line).
        report = nested_cv(fs, args.folds, args.repeats, args.seed, args.min_recall, args.max_fpr)
        choice = select(fs, np.arange(len(fs.y)), args.seed, args.min_recall, args.max_fpr)
    except (
        ValueError,
        OSError,
        ApiError,
        ApiConfigError,
        ModelNotFoundError,
        MissingExtraError,
        ModelLoadError,
    ) as exc:
        print(f"train-head: {exc}", file=sys.stderr)
        return 2
    print(format_report(fs, report, args.folds, args.repeats), flush=True)
    print(
        f"final head: C={choice.c:g}, threshold={choice.threshold:.3f} "
        "(inner procedure on all data)"
    )
    useless = _no_better_than_chance(report)
    if useless and out is None:
        progress(f"{useless}: such a head is not written without --force")
    if out is None:
        return 0
    if useless and not args.force:
        print(f"train-head: {useless}: not written (--force writes it)", file=sys.stderr)
        return 1
    if useless:
        progress(f"{useless}: written all the same (--force)")
    head = fit_head(fs, args.name, info, choice, _meta(args, fs, report))
    if replaced := head_on_disk(out):
        progress(f"replacing {replaced.describe()}")
    try:
        npz, meta = head.save(out)
    except OSError as exc:  # checked at the start; the disk filled up or the folder went since
        print(f"train-head: cannot write the head {out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {npz} and {meta}")
    return 0


def _bad_option(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric options, None if nothing: checked before any work, as
    fewer than 2 folds or no repeat cannot cross-validate, and a target of NaN compares false
    with every figure (the thresholds fell back to 0.5) and made the head file invalid JSON."""
    if not (math.isfinite(args.negative_fps) and args.negative_fps > 0):
        return f"--negative-fps must be positive (got {args.negative_fps:g})"
    if args.folds < 2:
        return f"--folds must be at least 2 (got {args.folds})"
    if args.repeats < 1:
        return f"--repeats must be at least 1 (got {args.repeats})"
    for option, value in (("--min-recall", args.min_recall), ("--max-fpr", args.max_fpr)):
        if not 0.0 <= value <= 1.0:  # NaN too
            return f"{option} must be a number from 0 to 1 (got {value:g})"
    # NaN compares false with every gap between two photos (all of them one group), and a
    # negative gap means nothing.
    if not (math.isfinite(args.group_gap_min) and args.group_gap_min >= 0):
        return f"--group-gap-min must be minutes, 0 or more (got {args.group_gap_min:g})"
    return None


def _no_better_than_chance(report: CvReport) -> str | None:
    """Why the cross-validated head is of no use (recall 0 or AUC <= 0.5), None if it may be:
    shipped to a worker, such a head finds nothing, or finds at random."""
    head = _mean(report.head)
    if head.recall == 0:
        return f"the head found no positive in cross-validation (recall 0, AUC {head.auc:.3f})"
    if head.auc <= 0.5:
        return f"the head ranks no better than chance in cross-validation (AUC {head.auc:.3f})"
    return None


# An outer split in two still leaves each class two groups for the inner split.
MIN_GROUPS_PER_CLASS = 4


def check_samples(samples: Sequence[Sample], reviews: bool = False) -> None:
    """Raise :class:`ValueError` unless the samples have 2 images and
    :data:`MIN_GROUPS_PER_CLASS` groups of each class: checked before any image is read."""
    counts = np.bincount([s.label for s in samples], minlength=2)
    if min(counts) < 2:
        raise ValueError(
            f"need at least 2 images of each class, got {counts[1]} positive / {counts[0]} negative"
        )
    _check_groups([s.label for s in samples], [s.group for s in samples], reviews)


def check_enough(fs: FeatureSet, reviews: bool = False) -> None:
    """Raise :class:`ValueError` unless nested cross-validation can split both classes."""
    _check_groups(fs.y.tolist(), fs.groups.tolist(), reviews)


def _check_groups(labels: Sequence[int], groups: Sequence[Any], reviews: bool) -> None:
    counts = [len({g for g, y in zip(groups, labels, strict=True) if y == c}) for c in (1, 0)]
    if min(counts) >= MIN_GROUPS_PER_CLASS:
        return
    if reviews:
        raise ValueError(
            f"nested cross-validation needs reviewed candidates from at least "
            f"{MIN_GROUPS_PER_CLASS} camera zones for each class (the candidates of one camera's "
            f"zone count once), got {len(labels)} candidates: confirmed ones from {counts[0]} "
            f"camera zones, false positives from {counts[1]}"
        )
    raise ValueError(
        f"nested cross-validation needs at least {MIN_GROUPS_PER_CLASS} groups of each class "
        f"(photos taken minutes apart at one place count once), got {counts[0]} positive / "
        f"{counts[1]} negative"
    )


def check_writable(out: Path) -> None:
    """Raise :class:`OSError` unless the head's ``.npz`` and ``.json`` can be written at ``out``.

    The folder is created (as saving would); nothing else is left behind.
    """
    npz, meta = _pair(out)
    folder = npz.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise OSError(f"--out {out}: cannot write there, {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".train-head-"):
            pass
    except OSError as exc:
        raise OSError(f"--out {out}: cannot write to {folder}: {exc.strerror or exc}") from exc
    for path in (npz, meta):
        if path.is_dir():
            raise OSError(f"--out {out}: cannot write {path}, it is a folder")
        if path.exists() and not os.access(path, os.W_OK):
            raise OSError(f"--out {out}: cannot write {path}: permission denied")


def check_replaceable(out: Path, name: str, force: bool) -> None:
    """Raise :class:`ValueError` when ``out`` holds a file of another head, or one that is no
    head file, unless ``force``: a mistyped ``--name`` or ``--out`` must not silently replace
    a working head. A head of the same name is replaced (said when written)."""
    found = head_on_disk(out)
    if force or found is None or found.name == name:
        return
    raise ValueError(
        f"--out {out}: {found.describe()} is not head {name}: not replaced (--force replaces it)"
    )


def _features(args: argparse.Namespace, samples: Sequence[Sample]) -> tuple[FeatureSet, ModelInfo]:
    from gridpatrol.detectors.models import load_backend, resolve_model
    from gridpatrol.detectors.openvino_backend import FeatureNodeError

    spec = resolve_model(args.model)
    try:
        backend = load_backend(spec, feature_nodes=HEAD_RECIPE.nodes, mode="latency")
    except FeatureNodeError as exc:
        raise ValueError(
            f"the head recipe reads feature maps of the Ultralytics YOLO11 OpenVINO export "
            f"(yolo11n, …); model {spec.name} ({spec.path}) lacks them (no node "
            f"{exc.node!r}): give a YOLO11 --model or GRIDPATROL_MODEL, see docs/scene-heads.md"
        ) from exc
    try:
        fs = extract(samples, backend, HEAD_RECIPE)
        extras = unscored_extras(samples, negative_samples(args.negatives or [], args.negative_fps))
        if extras:
            progress(f"{_count(len(extras), 'extra negative')} (training only)")
            ex = extract(extras, backend, HEAD_RECIPE)
            fs = replace(fs, extra=np.vstack([ex.x, ex.x_flip]))
        return fs, backend.info
    finally:
        backend.close()


def unscored_extras(scored: Sequence[Sample], extras: Sequence[Sample]) -> list[Sample]:
    """The extra negatives but those byte-identical to a scored image (said in one line).

    Extras join every training part: one that is a copy of a scored image would be trained on
    (as a negative) in the very folds that score it, and inflate the CV figures.
    """
    if not extras:
        return []
    shas = {s.content_sha256() for s in scored}
    kept = [e for e in extras if e.content_sha256() not in shas]
    if dropped := len(extras) - len(kept):
        progress(
            f"{dropped} of {_count(len(extras), 'extra negative')} byte-identical to scored "
            "images: not used (they would be trained on in the folds that score them)"
        )
    return kept


def _samples(args: argparse.Namespace) -> list[Sample]:
    if args.from_reviews:
        url = _api_url(args.api_url)
        token = args.token or os.environ.get("GRIDPATROL_API_TOKEN", "")
        client = ApiClient(url, token)
        since = since_param(args.since) if args.since else None
        try:
            reviews = review_samples(client, args.type, since)
        except httpx.HTTPError as exc:
            raise OSError(f"intake API at {proxies.masked(url)}: {exc}") from exc
        finally:
            client.close()
        found, skipped = reviews.samples, reviews.skipped
        progress(
            f"{len(found)} reviewed {args.type} candidates, {skipped} skipped, "
            f"{reviews.auto_confirmed} confirmed by the site policy without review (not used)"
        )
        return merge_duplicate_groups(found)
    if not args.dataset:
        raise ValueError("give DATASET_DIR or --from-reviews")
    found = dataset_samples(Path(args.dataset), args.positive or args.name, args.group_gap_min)
    progress(f"{len(found)} images in {args.dataset}")
    return merge_duplicate_groups(found)


def since_param(text: str) -> str:
    """``--since`` as the API takes it, an ISO 8601 instant in UTC: a date alone is its
    midnight UTC; a time without a UTC offset, or outside the years the API takes, is refused
    (:class:`ValueError`) rather than read in some zone, as the API would refuse it with a
    bare 422."""
    try:
        at = datetime.combine(date.fromisoformat(text), day_time(), UTC)
    except ValueError:
        at = _since_time(text)  # not a date alone
    try:
        # The API's own check of an instant (its years); it gives the instant in UTC, whose
        # offset the API reads, where one with seconds (+05:30:15) it does not.
        return plausible_instant(at).isoformat()
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"--since {text}: {exc}{_in_utc(at)}") from None


def _in_utc(at: datetime) -> str:
    """`` (in UTC: ...)`` where the offset moves the instant, as the API checks it in UTC: the
    years' bound then applies to a day the text does not show (1900-01-01T00:30+01:00)."""
    if not at.utcoffset():
        return ""
    try:
        return f" (in UTC: {at.astimezone(UTC).isoformat()})"
    except (ValueError, OverflowError):
        return ""  # beyond the datetime range in UTC: the years' bound says enough


def _since_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text}: not an ISO 8601 date or time (e.g. 2026-12-01, or "
            "2026-12-01T08:00:00+01:00)"
        ) from None
    if at.tzinfo is None:
        raise ValueError(
            f"--since {text}: a time needs its UTC offset (e.g. {text}Z or {text}+01:00); a "
            "date alone means its midnight UTC"
        )
    return at


def _api_url(given: str | None) -> str:
    """The API's URL: ``--api-url``, else ``GRIDPATROL_API_URL`` (unset or empty: the
    default), checked as every other command checks it; :class:`ApiConfigError` (exit 2, at
    once) for one that cannot be the API's, which every request would fail on, retried."""
    if not given:
        return _checked_url(os.environ.get("GRIDPATROL_API_URL") or DEFAULT_API_URL)
    try:
        return _checked_url(given)
    except ApiConfigError as exc:
        # The check names the variable: here the option gave the URL.
        raise ApiConfigError(str(exc).replace("GRIDPATROL_API_URL", "--api-url", 1)) from exc


def _meta(args: argparse.Namespace, fs: FeatureSet, rep: CvReport) -> dict[str, Any]:
    head, half, base = _mean(rep.head), _mean(rep.head_half), _mean(rep.baseline)
    return {
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {
            "source": "reviews" if args.from_reviews else "folders",
            "images": len(fs.y),
            "positive": int(fs.y.sum()),
            "groups": len(set(fs.groups.tolist())),
            "augmentation": "horizontal flip (training only)",
            "extra_negatives": {
                "sources": [str(p) for p in args.negatives or []],
                "frames": 0 if fs.extra is None else len(fs.extra) // 2,
            },
            "targets": {"min_recall": args.min_recall, "max_fpr": args.max_fpr},
        },
        "cv": {
            "protocol": (
                f"grouped nested CV, {rep.folds_used(args.folds)} folds x {args.repeats} repeats"
            ),
            # Measured with each outer fold at its own inner-CV threshold, not at the
            # head's "threshold" (chosen on all the data): both are stored, apart.
            "head": {
                **_rounded(head),
                "threshold_mean": round(rep.threshold_mean(), 4),
                "thresholds": [round(t, 4) for t in rep.thresholds],
            },
            "head_at_0.5": {**_rounded(half), "threshold": 0.5},
            "naive_probe": {**_rounded(base), "threshold": 0.5},
        },
    }


def _rounded(scores: Scores) -> dict[str, float | None]:
    """The figures for JSON: a missing one (NaN, e.g. no precision) is null."""
    values = {k: float(getattr(scores, k)) for k in _score_names()}
    return {k: None if math.isnan(v) else round(v, 4) for k, v in values.items()}
