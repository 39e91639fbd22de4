"""Model resolution and backend loading.

Resolution order: ``--model`` / ``GRIDPATROL_MODEL`` (an OpenVINO IR folder, ``.xml``, ``.onnx``,
``.pt`` or a manifest name) → a local folder named in ``models/manifest.yaml`` (``models/``,
``$GRIDPATROL_SHARED/models``, the cache) → the Ultralytics name, downloaded and exported to
OpenVINO once into the cache. Nothing here imports torch or Ultralytics at module level.

``models/`` is the checkout's; an installed (non-editable) gridpatrol has no checkout, so there it
is ``models/`` in the working directory, and the manifest is the copy packaged with gridpatrol.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

import yaml

from gridpatrol.detectors.types import Backend, ModelInfo

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Installed from a wheel, REPO_ROOT is the package folder in site-packages: no checkout.
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()
ModelFormat = Literal["openvino", "onnx", "pt"]
BackendKind = Literal["openvino", "ultralytics"]


class ModelNotFoundError(RuntimeError):
    """No usable weights: the message says what to put where."""


class MissingExtraError(RuntimeError):
    """The optional ``ultralytics`` extra is needed but not installed."""


class ModelLoadError(RuntimeError):
    """The weights are there but the runtime cannot read them (a broken or partial copy)."""


class DownloadNeedsExtraError(ModelNotFoundError):
    """No weights on disk and downloads allowed, but the ultralytics extra that downloads and
    exports them is not installed: installing it would help, unlike other missing models."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    name: str
    ultralytics: str
    openvino_folder: str
    task: str = "detect"
    imgsz: int = 640
    sha256: Mapping[str, str] = field(default_factory=dict)

    @property
    def folder_names(self) -> tuple[str, ...]:
        """Folders that hold this model: the named export and the one Ultralytics writes."""
        export = f"{Path(self.ultralytics).stem}_openvino_model"
        return (self.openvino_folder, export)


@dataclass(frozen=True, slots=True)
class Manifest:
    default: str
    models: Mapping[str, ManifestEntry]

    def entry(self, name: str) -> ManifestEntry | None:
        return self.models.get(name)

    def entry_for_weights(self, name: str) -> ManifestEntry | None:
        """The entry whose Ultralytics weights are called ``name`` (e.g. ``yolo11n.pt``)."""
        return next((e for e in self.models.values() if e.ultralytics == name), None)

    def entry_for_folder(self, folder: str) -> ManifestEntry | None:
        return next((e for e in self.models.values() if folder in e.folder_names), None)

    def entry_for_hash(self, file: str, sha: str) -> ManifestEntry | None:
        """The entry that lists ``sha`` as the hash of a file called ``file``."""
        return next((e for e in self.models.values() if e.sha256.get(file) == sha), None)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model's weights are and in which format; ``source`` says how it was found."""

    name: str
    path: Path
    format: ModelFormat
    source: str
    entry: ManifestEntry | None = None


# --- locations ---------------------------------------------------------------------------------


def base_dir() -> Path:
    """The checkout, else the working directory: site-packages is no place for weights."""
    return REPO_ROOT if IN_CHECKOUT else Path.cwd()


def models_dir() -> Path:
    return Path(os.environ.get("GRIDPATROL_MODELS_DIR", base_dir() / "models"))


def shared_models_dir() -> Path:
    return Path(os.environ.get("GRIDPATROL_SHARED", base_dir().parent / "shared")) / "models"


def cache_root() -> Path:
    """``$GRIDPATROL_CACHE``, else ``$XDG_CACHE_HOME/gridpatrol`` or ``~/.cache/gridpatrol``."""
    if explicit := os.environ.get("GRIDPATROL_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gridpatrol"


def cache_dir() -> Path:
    return cache_root() / "models"


def search_dirs() -> tuple[Path, ...]:
    return tuple(dict.fromkeys((models_dir(), shared_models_dir(), cache_dir())))


def _manifest_candidates() -> Iterator[Traversable]:
    """``$GRIDPATROL_MODELS_DIR``'s manifest, the checkout's, then the one packaged with us."""
    if explicit := os.environ.get("GRIDPATROL_MODELS_DIR"):
        yield Path(explicit) / "manifest.yaml"
    if IN_CHECKOUT:
        yield REPO_ROOT / "models" / "manifest.yaml"
    # Missing only from an editable install made before models/ was mapped into the package.
    with contextlib.suppress(ModuleNotFoundError):
        yield resources.files("gridpatrol.models").joinpath("manifest.yaml")


def load_manifest(path: Path | None = None) -> Manifest:
    candidates: Iterable[Traversable] = [path] if path else _manifest_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return _parse_manifest(candidate.read_text(encoding="utf-8"))
    log.warning("no models/manifest.yaml found; using the built-in yolo11n entry")
    builtin = ManifestEntry("yolo11n", "yolo11n.pt", "yolo11n_int8_openvino_model")
    return Manifest(default="yolo11n", models={"yolo11n": builtin})


def _parse_manifest(text: str) -> Manifest:
    raw = yaml.safe_load(text) or {}
    entries = {
        name: ManifestEntry(
            name=name,
            ultralytics=str(body["ultralytics"]),
            openvino_folder=str(body["openvino_folder"]),
            task=str(body.get("task", "detect")),
            imgsz=int(body.get("imgsz", 640)),
            sha256={str(k): str(v) for k, v in (body.get("sha256") or {}).items()},
        )
        for name, body in (raw.get("models") or {}).items()
    }
    return Manifest(default=str(raw.get("default", "yolo11n")), models=entries)


# --- resolution --------------------------------------------------------------------------------


def resolve_model(
    arg: str | None = None, *, manifest: Manifest | None = None, download: bool = True
) -> ModelSpec:
    """Find the weights for ``arg`` (or ``GRIDPATROL_MODEL``, or the manifest default).

    ``download=False`` looks on disk only (for commands that merely read the class names).
    """
    manifest = manifest or load_manifest()
    explicit = arg or os.environ.get("GRIDPATROL_MODEL") or None
    source = "argument" if arg else "environment"
    if explicit:
        entry = manifest.entry(explicit) or manifest.entry_for_weights(explicit)
        if entry is None:
            path = Path(explicit).expanduser()
            if path.exists():
                return spec_from_path(path, source, manifest)
            if _bare_pt(explicit):
                entry = ManifestEntry(path.stem, path.name, f"{path.stem}_openvino_model")
                # On disk first: its export already in a models folder or the cache needs no
                # look at Ultralytics' published names, whose import brings in torch.
                if (local := _local_spec(entry, manifest)) is not None:
                    return local
                if _downloadable(explicit):
                    return _resolve_entry(entry, manifest, download)
            raise ModelNotFoundError(
                f"model {explicit!r} ({source}) does not exist: give an OpenVINO IR folder, "
                f"an .xml, .onnx or .pt file, or one of {sorted(manifest.models)}"
            )
        return _resolve_entry(entry, manifest, download)
    entry = manifest.entry(manifest.default)
    if entry is None:
        raise ModelNotFoundError(f"models/manifest.yaml: default {manifest.default!r} not listed")
    return _resolve_entry(entry, manifest, download)


# Ultralytics' own detection weights, for when its list of published names cannot be read (the
# extra is not installed): the current families at their five sizes, all of them in that list.
PUBLISHED_WEIGHTS = re.compile(r"yolo(v8|11|12|26)[nsmlx]\.pt")


def _bare_pt(name: str) -> bool:
    """A .pt file name without a folder: a path with one, even ``./``, is a file the user has,
    or not, never a name for Ultralytics."""
    return not ("/" in name or (os.altsep and os.altsep in name)) and name.endswith(".pt")


def _downloadable(name: str) -> bool:
    """Whether Ultralytics would download ``name``: a bare .pt name that it publishes. Any other
    .pt that is not there would only fail after the extra (several GB) was installed for it."""
    if not _bare_pt(name):
        return False
    if PUBLISHED_WEIGHTS.fullmatch(name) is not None:
        return True  # known without importing Ultralytics' list, and with it torch
    if ultralytics_available():
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

        return name in GITHUB_ASSETS_NAMES
    return False


def spec_from_path(path: Path, source: str, manifest: Manifest | None = None) -> ModelSpec:
    path = path.resolve()
    manifest = manifest or load_manifest()
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise ModelNotFoundError(
                f"{path} is not an OpenVINO IR folder: expected exactly one .xml (with its .bin "
                f"and metadata.yaml), found {len(xmls)}"
            )
        entry = manifest.entry_for_folder(path.name)
        _require_weights(xmls[0])
        return ModelSpec(entry.name if entry else xmls[0].stem, xmls[0], "openvino", source, entry)
    formats: dict[str, ModelFormat] = {".xml": "openvino", ".onnx": "onnx", ".pt": "pt"}
    fmt = formats.get(path.suffix.lower())
    if fmt is None:
        raise ModelNotFoundError(
            f"{path}: unsupported model file; use an IR folder, .xml, .onnx or .pt"
        )
    if fmt == "openvino":
        _require_weights(path)
    entry = manifest.entry_for_folder(path.parent.name) or manifest.entry(path.stem)
    return ModelSpec(entry.name if entry else path.stem, path, fmt, source, entry)


def _require_weights(xml: Path) -> None:
    """An OpenVINO IR is the .xml and the .bin beside it: a copy without the .bin is unusable."""
    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise ModelNotFoundError(
            f"{xml.parent} is an incomplete OpenVINO IR: {xml.name} is there but its weights "
            f"{weights.name} are missing; copy the whole folder ({xml.name}, {weights.name} and "
            f"metadata.yaml)"
        )


def _local_spec(entry: ManifestEntry, manifest: Manifest) -> ModelSpec | None:
    """The entry's OpenVINO folder in the first search directory that has it, else None."""
    for directory in search_dirs():
        for name in entry.folder_names:
            candidate = directory / name
            if candidate.is_dir() and any(candidate.glob("*.xml")):
                spec = spec_from_path(candidate, f"local:{directory}", manifest)
                return ModelSpec(entry.name, spec.path, spec.format, spec.source, entry)
    return None


def _resolve_entry(entry: ManifestEntry, manifest: Manifest, download: bool = True) -> ModelSpec:
    if (local := _local_spec(entry, manifest)) is not None:
        return local
    if not download:
        raise ModelNotFoundError(_not_found_message(entry, "this command does not download"))
    exported = _download_and_export(entry)
    spec = spec_from_path(exported, "download", manifest)
    return ModelSpec(entry.name, spec.path, spec.format, spec.source, entry)


def _not_found_message(entry: ManifestEntry, why: str) -> str:
    looked = ", ".join(str(d / entry.openvino_folder) for d in search_dirs())
    return (
        f"no weights for model {entry.name!r}: looked for {looked}; {why}.\n"
        f"Fix one of:\n"
        f"  1. put the OpenVINO IR folder {entry.openvino_folder}/ (with "
        f"{entry.name}.xml, {entry.name}.bin and metadata.yaml) into {models_dir()}/ "
        f"(`make links` links it from $GRIDPATROL_SHARED/models);\n"
        f"  2. pass --model PATH or set GRIDPATROL_MODEL=PATH to an OpenVINO IR folder, "
        f".xml, .onnx or .pt file;\n"
        f"  3. put {entry.ultralytics} into {cache_dir()}/ "
        f"({'or unset GRIDPATROL_OFFLINE' if _offline() else 'or allow internet access'}) and "
        f"install the extra: pip install 'gridpatrol[ultralytics]'; it is exported to "
        f"OpenVINO once into {cache_dir()}/."
    )


def _offline() -> bool:
    return os.environ.get("GRIDPATROL_OFFLINE", "") not in ("", "0")


def _download_and_export(entry: ManifestEntry) -> Path:
    # Weights already in the cache are exported where they are: that downloads nothing, so
    # GRIDPATROL_OFFLINE does not stand in its way (the not-found message tells users to do so).
    cached = (cache_dir() / entry.ultralytics).is_file()
    if _offline() and not cached:
        raise ModelNotFoundError(
            _not_found_message(entry, "downloads are off (GRIDPATROL_OFFLINE)")
        )
    if not ultralytics_available():
        does = f"exports {cache_dir() / entry.ultralytics}" if cached else "downloads weights"
        raise DownloadNeedsExtraError(
            _not_found_message(entry, f"the ultralytics extra that {does} is not installed")
        )
    from gridpatrol.detectors import ultralytics_backend

    try:
        return ultralytics_backend.export_openvino(entry.ultralytics, cache_dir())
    except Exception as exc:  # network, disk, export: all mean "no weights here"
        log.warning("fetching %s failed: %s", entry.ultralytics, exc)
        raise ModelNotFoundError(
            _not_found_message(entry, f"downloading {entry.ultralytics} failed ({exc})")
        ) from exc


# --- identity ----------------------------------------------------------------------------------


def weights_file(spec: ModelSpec) -> Path:
    """The file whose hash identifies the model (the .bin of an IR)."""
    return spec.path.with_suffix(".bin") if spec.format == "openvino" else spec.path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by path, size, mtime, inode and ctime so a start does not
    re-hash weights.

    Size and mtime alone miss weights replaced by others of the same size with the old mtime
    kept (``touch -r``, ``tar -x``, ``rsync -t``): records would name the old weights' hash
    and heads trained on them would be applied. Replacing a file by renaming another onto it
    gives a new inode; rewriting it in place, or setting its mtime, a new ctime (which no
    tool can set back)."""
    stat = path.stat()
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    sidecar = cache_root() / "sha256" / f"{key}.json"
    stamp = {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ino": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }
    try:
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if {k: cached.get(k) for k in stamp} == stamp:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "sha256": sha}), encoding="utf-8")
        tmp.replace(sidecar)
    except OSError as exc:
        log.debug("cannot cache the hash of %s: %s", path, exc)
    return sha


def read_metadata(spec: ModelSpec) -> dict[str, object]:
    """The metadata.yaml beside the weights; for an ``.onnx`` without one, the names, version
    and imgsz Ultralytics' export writes into the file's own metadata; {} when there are none."""
    meta = spec.path.parent / "metadata.yaml"
    if not meta.is_file():
        return onnx_metadata(spec.path) if spec.format == "onnx" else {}
    try:
        data = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelNotFoundError(
            f"{meta}: the model's metadata cannot be read ({' '.join(str(exc).split())}); "
            f"copy the whole model folder again"
        ) from exc
    return data if isinstance(data, dict) else {}


def onnx_metadata(path: Path) -> dict[str, object]:
    """``names``, ``version`` and ``imgsz`` from an ONNX file's metadata_props (``yolo export
    format=onnx`` writes them there, Python literals as strings); {} when the file has none or
    OpenVINO cannot read it (loading the backend then reports why)."""
    stat = path.stat()
    return dict(_onnx_metadata(str(path), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _onnx_metadata(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, object], ...]:
    import openvino as ov

    try:
        model = ov.Core().read_model(path)
    except RuntimeError as exc:
        log.debug("cannot read the metadata of %s: %s", path, exc)
        return ()
    found: list[tuple[str, object]] = []
    for key in ("names", "version", "imgsz"):
        if not model.has_rt_info(["framework", key]):
            continue
        text = model.get_rt_info(["framework", key]).astype(str)
        if key == "version":
            found.append((key, text))
            continue
        try:
            found.append((key, ast.literal_eval(text)))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            log.warning("model %s: its %s metadata is no Python literal: %.80s", path, key, text)
    return tuple(found)


def class_names(spec: ModelSpec) -> tuple[str, ...]:
    """The class names in the model's metadata (see read_metadata), without loading it; () when
    it has none."""
    return parse_names(read_metadata(spec).get("names"))


def local_class_names(arg: str | None = None) -> tuple[str, tuple[str, ...]]:
    """The name and class names of the model ``arg`` resolves to, looked up on disk only.

    Raises :class:`ModelNotFoundError` when the weights are not on this machine.
    """
    spec = resolve_model(arg, download=False)
    return spec.name, class_names(spec)


def parse_names(raw: object) -> tuple[str, ...]:
    """Class names from metadata (a {id: name} mapping or a list)."""
    if isinstance(raw, Mapping):
        return tuple(str(raw[k]) for k in sorted(raw, key=int))
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        return tuple(str(n) for n in raw)
    return ()


def parse_imgsz(raw: object, default: int) -> int:
    """The input's long side from metadata (a side, or [height, width] of a rectangular
    export): the decode reduction and the feature cells go by the long side."""
    if isinstance(raw, Sequence) and not isinstance(raw, str) and raw:
        return max(int(v) for v in raw)
    return int(raw) if isinstance(raw, int | float | str) and str(raw).isdigit() else default


def model_info(spec: ModelSpec, names: Sequence[str] = ()) -> ModelInfo:
    """The identity every detection result carries: name, version, weights hash, classes."""
    meta = read_metadata(spec)
    weights = weights_file(spec)
    sha = file_sha256(weights)
    if spec.entry and weights.name in spec.entry.sha256 and spec.entry.sha256[weights.name] != sha:
        log.warning(
            "model %s: %s differs from the manifest hash (a different export?)", spec.name, weights
        )
    default_size = spec.entry.imgsz if spec.entry else 640
    if spec.format == "openvino" and not parse_names(meta.get("names")):
        # An empty or cut-short metadata.yaml, or one without names, as much as a missing one.
        raise ModelNotFoundError(_no_metadata_message(spec, sha))
    if not meta:
        log.warning(
            "model %s: no metadata.yaml beside %s (nor metadata in an .onnx); version unknown "
            "and class names taken from the runtime (class_<id> when it has none)",
            spec.name,
            spec.path,
        )
    return ModelInfo(
        name=spec.name,
        version=str(meta.get("version", "unknown")),
        sha256=sha,
        path=spec.path,
        names=parse_names(meta.get("names")) or tuple(names),
        imgsz=parse_imgsz(meta.get("imgsz"), default_size),
    )


def _no_metadata_message(spec: ModelSpec, sha: str) -> str:
    """Why an OpenVINO IR without its metadata.yaml is refused: the IR holds no class names
    (every box would be class_<id>, so no rule that goes by a label could fire) nor the
    version; the manifest names the known weights, not their classes. Says which model the
    weights are when the manifest knows their hash, and where its complete folder is looked for."""
    meta = spec.path.parent / "metadata.yaml"
    weights = weights_file(spec)
    known = load_manifest().entry_for_hash(weights.name, sha)
    whose = (
        f" (its {weights.name} is that of model {known.name!r}, whose complete folder is "
        f"{known.openvino_folder})"
        if known
        else ""
    )
    what = "holds no class names" if meta.is_file() else "is missing"
    return (
        f"{meta} {what}: the OpenVINO IR {spec.path} holds no class names nor version"
        f"{whose}; copy metadata.yaml from the folder the model was exported into beside "
        f"{spec.path.name}"
    )


# --- loading -----------------------------------------------------------------------------------


def served_spec(spec: ModelSpec) -> ModelSpec:
    """What the OpenVINO backend runs for ``spec``: a ``.pt`` is exported to an IR once (cached).

    Scene heads are keyed to the weights the backend runs, so a caller that loads heads for a
    ``.pt`` takes the model's identity from this spec, not from the ``.pt`` file.
    """
    if spec.format != "pt":
        return spec
    _require_ultralytics(f"loading {spec.path} (.pt weights are exported to OpenVINO)")
    from gridpatrol.detectors import ultralytics_backend

    folder = ultralytics_backend.export_openvino(str(spec.path), cache_dir())
    return ModelSpec(spec.name, spec_from_path(folder, "export").path, "openvino", "export")


def load_backend(
    spec: ModelSpec,
    kind: BackendKind = "openvino",
    feature_nodes: Sequence[str] = (),
    *,
    mode: Literal["throughput", "latency"] = "throughput",
    conf: float = 0.25,
    iou: float = 0.7,
    rect: bool = False,
) -> Backend:
    """Open ``spec`` with the fast OpenVINO backend or the Ultralytics reference backend.

    ``rect``: the OpenVINO backend letterboxes into the smallest stride multiple that holds
    each image instead of the square input (see :mod:`gridpatrol.detectors.rect`).
    """
    if kind == "ultralytics":
        _require_ultralytics(f"the Ultralytics reference backend for {spec.path}")
        from gridpatrol.detectors.ultralytics_backend import UltralyticsBackend

        return UltralyticsBackend(spec, conf=conf, iou=iou)
    spec = served_spec(spec)
    from gridpatrol.detectors.openvino_backend import OpenVinoBackend

    info = model_info(spec)
    try:
        return OpenVinoBackend(
            spec.path,
            info,
            feature_nodes=feature_nodes,
            mode=mode,
            conf=conf,
            iou=iou,
            rect=rect,
        )
    except RuntimeError as exc:  # OpenVINO's read or compile: a truncated or foreign file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        fix = (
            f"copy the whole IR folder ({spec.path.name}, {spec.path.with_suffix('.bin').name} "
            f"and metadata.yaml) again"
            if spec.format == "openvino"
            else f"export {spec.path.name} again"
        )
        raise ModelLoadError(
            f"OpenVINO cannot load model {spec.name!r} from {spec.path}: "
            f"{lines[-1] if lines else type(exc).__name__}; {fix} or give another --model"
        ) from exc


def ultralytics_available() -> bool:
    return importlib.util.find_spec("ultralytics") is not None


# The status ``make demo`` installs the ultralytics extra on; see extra_would_help.
NEEDS_ULTRALYTICS = 10


def extra_would_help(arg: str | None = None) -> tuple[int, str]:
    """Whether the model ``arg`` (else GRIDPATROL_MODEL, else the manifest's default) runs as
    installed, for ``make demo``: ``(0, "")`` when it does, or when the ultralytics extra is
    there (it downloads and exports what is missing itself); ``(NEEDS_ULTRALYTICS, "")`` when
    installing the extra is what would help (a .pt, the Ultralytics weights in the cache, or no
    weights on disk and downloads allowed); ``(1, message)`` with the resolver's own message
    when it would not (a path that does not exist, a .pt name Ultralytics does not publish, an
    incomplete IR, GRIDPATROL_OFFLINE with nothing on disk), as installing several GB of
    PyTorch there would only hide the cause."""
    if ultralytics_available():
        return 0, ""
    try:
        # Without the extra nothing can be downloaded: the resolver stops where a download
        # would start, with DownloadNeedsExtraError, or earlier with the reason there is none.
        spec = resolve_model(arg)
    except DownloadNeedsExtraError:
        return NEEDS_ULTRALYTICS, ""
    except ModelNotFoundError as exc:
        return 1, str(exc)
    return (NEEDS_ULTRALYTICS, "") if spec.format == "pt" else (0, "")


def _require_ultralytics(what: str) -> None:
    if not ultralytics_available():
        raise MissingExtraError(
            f"{what} needs the ultralytics extra: pip install 'gridpatrol[ultralytics]' "
            f"(or give an OpenVINO IR folder / .onnx instead)"
        )
