"""Model resolution, model identity and the errors that say what to put where."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gridpatrol.detectors import models
from gridpatrol.detectors.models import (
    NEEDS_ULTRALYTICS,
    MissingExtraError,
    ModelLoadError,
    ModelNotFoundError,
    ModelSpec,
    class_names,
    extra_would_help,
    file_sha256,
    load_backend,
    load_manifest,
    model_info,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((REPO / "models" / "manifest.yaml").read_text())


@pytest.fixture
def isolated(tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty models dir and cache; the shared assets stay where they are."""
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("GRIDPATROL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("GRIDPATROL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GRIDPATROL_SHARED", str(shared_dir))
    monkeypatch.delenv("GRIDPATROL_MODEL", raising=False)
    (tmp_path / "models" / "manifest.yaml").write_text(yaml.safe_dump(MANIFEST))
    yield tmp_path


def test_manifest_names_both_models_with_hashes() -> None:
    manifest = load_manifest(REPO / "models" / "manifest.yaml")
    assert manifest.default == "yolo11n"
    assert set(manifest.models) == {"yolo11n", "yolov8n"}
    entry = manifest.models["yolo11n"]
    assert entry.ultralytics == "yolo11n.pt"
    assert entry.openvino_folder == "yolo11n_int8_openvino_model"
    assert (entry.task, entry.imgsz) == ("detect", 640)
    assert set(entry.sha256) == {"yolo11n.bin", "yolo11n.xml"}


def test_default_resolves_to_the_shared_folder(isolated: Path, shared_dir: Path) -> None:
    spec = resolve_model(None)
    assert spec.name == "yolo11n"
    assert spec.format == "openvino"
    assert spec.path == (shared_dir / "models/yolo11n_int8_openvino_model/yolo11n.xml").resolve()
    assert spec.source == f"local:{shared_dir / 'models'}"


def test_local_models_folder_wins_over_shared(isolated: Path, shared_dir: Path) -> None:
    src = shared_dir / "models" / "yolo11n_int8_openvino_model"
    (isolated / "models" / "yolo11n_int8_openvino_model").symlink_to(src)
    spec = resolve_model(None)
    assert spec.source == f"local:{isolated / 'models'}"


@pytest.mark.parametrize(
    ("arg", "name", "fmt"),
    [
        ("yolov8n", "yolov8n", "openvino"),
        ("{shared}/models/yolov8n_int8_openvino_model", "yolov8n", "openvino"),
        ("{shared}/models/yolov8n_int8_openvino_model/yolov8n.xml", "yolov8n", "openvino"),
        ("{shared}/models/yolo11n_int8_openvino_model/", "yolo11n", "openvino"),
    ],
)
def test_explicit_model_argument(
    isolated: Path, shared_dir: Path, arg: str, name: str, fmt: str
) -> None:
    spec = resolve_model(arg.format(shared=shared_dir))
    assert (spec.name, spec.format) == (name, fmt)
    assert spec.source == ("argument" if "/" in arg else f"local:{shared_dir / 'models'}")
    assert spec.path.suffix == ".xml" and spec.path.is_file()


def test_environment_variable_names_the_model(
    isolated: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shared_dir / "models" / "yolov8n_int8_openvino_model"
    monkeypatch.setenv("GRIDPATROL_MODEL", str(folder))
    spec = resolve_model(None)
    assert (spec.name, spec.source) == ("yolov8n", "environment")
    # --model wins over the environment
    assert resolve_model("yolo11n").name == "yolo11n"


@pytest.mark.parametrize(("suffix", "fmt"), [(".onnx", "onnx"), (".pt", "pt")])
def test_onnx_and_pt_files_are_recognised(isolated: Path, suffix: str, fmt: str) -> None:
    weights = isolated / f"custom{suffix}"
    weights.write_bytes(b"weights")
    spec = resolve_model(str(weights))
    assert (spec.name, spec.format, spec.path) == ("custom", fmt, weights.resolve())


def test_unknown_path_is_an_error(isolated: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(isolated / "nope_openvino_model"))


def test_folder_without_ir_is_an_error(isolated: Path) -> None:
    empty = isolated / "empty_openvino_model"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"exactly one \.xml"):
        resolve_model(str(empty))


def _partial_copy(shared_dir: Path, folder: Path, files: dict[str, int | None]) -> None:
    """yolo11n's IR files into ``folder``: whole (None) or their first n bytes."""
    src = shared_dir / "models" / "yolo11n_int8_openvino_model"
    folder.mkdir(parents=True)
    for name, size in files.items():
        (folder / name).write_bytes((src / name).read_bytes()[:size])


INCOMPLETE = (
    "{folder} is an incomplete OpenVINO IR: yolo11n.xml is there but its weights yolo11n.bin are "
    "missing; copy the whole folder (yolo11n.xml, yolo11n.bin and metadata.yaml)"
)


@pytest.mark.parametrize(
    ("arg", "folder"),
    [
        ("{models}/copy_openvino_model", "{models}/copy_openvino_model"),
        ("{models}/copy_openvino_model/yolo11n.xml", "{models}/copy_openvino_model"),
        ("yolo11n", "{models}/yolo11n_int8_openvino_model"),  # found by name in models/
    ],
)
def test_an_ir_without_its_bin_says_what_is_missing_where(
    isolated: Path, shared_dir: Path, arg: str, folder: str
) -> None:
    models_dir = isolated / "models"
    path = Path(folder.format(models=models_dir))
    _partial_copy(shared_dir, path, {"yolo11n.xml": None, "metadata.yaml": None})
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(arg.format(models=models_dir))
    assert str(info.value) == INCOMPLETE.format(folder=path.resolve())


def test_unreadable_metadata_is_a_model_error(isolated: Path, shared_dir: Path) -> None:
    folder = isolated / "models" / "copy_openvino_model"
    _partial_copy(shared_dir, folder, {"yolo11n.xml": None, "yolo11n.bin": None})
    (folder / "metadata.yaml").write_text("names: {0: person\n")
    spec = resolve_model(str(folder))
    with pytest.raises(ModelNotFoundError) as info:
        model_info(spec)
    assert str(info.value).startswith(
        f"{folder.resolve() / 'metadata.yaml'}: the model's metadata cannot be read (while "
        "parsing a flow mapping"
    )
    assert str(info.value).endswith("; copy the whole model folder again")


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"yolo11n.xml": None, "yolo11n.bin": 1000, "metadata.yaml": None},
         "Incorrect weights in bin file!"),
        ({"yolo11n.xml": 500, "yolo11n.bin": None, "metadata.yaml": None},
         "Error parsing element attribute at offset 493"),
    ],
)  # fmt: skip
def test_an_ir_openvino_cannot_read_is_a_model_load_error(
    isolated: Path, shared_dir: Path, files: dict[str, int | None], reason: str
) -> None:
    folder = isolated / "models" / "copy_openvino_model"
    _partial_copy(shared_dir, folder, files)
    spec = resolve_model(str(folder))
    with pytest.raises(ModelLoadError) as info:
        load_backend(spec)
    assert str(info.value) == (
        f"OpenVINO cannot load model 'yolo11n' from {spec.path}: {reason}; copy the whole IR "
        "folder (yolo11n.xml, yolo11n.bin and metadata.yaml) again or give another --model"
    )


def test_model_info_records_name_version_hash_and_classes(isolated: Path) -> None:
    info = model_info(resolve_model("yolo11n"))
    assert info.name == "yolo11n"
    assert info.version == "8.3.167"
    assert info.sha256 == MANIFEST["models"]["yolo11n"]["sha256"]["yolo11n.bin"]
    assert len(info.names) == 80 and info.names[0] == "person" and info.names[79] == "toothbrush"
    assert info.imgsz == 640
    v8 = model_info(resolve_model("yolov8n"))
    assert (v8.version, v8.sha256) == (
        "8.1.22",
        MANIFEST["models"]["yolov8n"]["sha256"]["yolov8n.bin"],
    )


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for bytes."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_onnx(path: Path, metadata: dict[str, str]) -> None:
    """A tiny ONNX model (Identity, 1×3×4×4 float) with ``metadata`` as its metadata_props,
    encoded by hand (the onnx package is not a dependency)."""
    dims = b"".join(_field(1, _field(1, d)) for d in (1, 3, 4, 4))
    tensor_type = _field(1, _field(1, 1) + _field(2, dims))  # elem_type FLOAT, shape
    value_in = _field(1, b"images") + _field(2, tensor_type)
    value_out = _field(1, b"output0") + _field(2, tensor_type)
    node = _field(1, b"images") + _field(2, b"output0") + _field(3, b"id") + _field(4, b"Identity")
    graph = _field(1, node) + _field(2, b"g") + _field(11, value_in) + _field(12, value_out)
    model = _field(1, 8) + _field(8, _field(1, b"") + _field(2, 13)) + _field(7, graph)
    for key, value in metadata.items():
        model += _field(14, _field(1, key.encode()) + _field(2, value.encode()))
    path.write_bytes(model)


def test_an_onnx_export_carries_its_names_version_and_size(
    isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``yolo export format=onnx`` writes no metadata.yaml: the identity is in the file."""
    weights = isolated / "custom.onnx"
    write_onnx(
        weights,
        {"names": "{0: 'person', 1: 'bicycle'}", "version": "8.3.167", "imgsz": "[320, 320]"},
    )
    spec = resolve_model(str(weights))
    info = model_info(spec)
    assert (info.name, info.version, info.names, info.imgsz) == (
        "custom",
        "8.3.167",
        ("person", "bicycle"),
        320,
    )
    assert class_names(spec) == ("person", "bicycle")
    assert "no metadata.yaml" not in caplog.text


def test_an_onnx_without_metadata_is_unknown(
    isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = isolated / "bare.onnx"
    write_onnx(weights, {})
    info = model_info(resolve_model(str(weights)))
    assert (info.version, info.names, info.imgsz) == ("unknown", (), 640)
    assert "model bare: no metadata.yaml beside" in caplog.text


def test_weights_hash_is_cached_in_a_sidecar(isolated: Path) -> None:
    weights = isolated / "w.bin"
    weights.write_bytes(b"x" * 1000)
    first = file_sha256(weights)
    sidecars = list((isolated / "cache" / "sha256").glob("*.json"))
    assert len(sidecars) == 1
    cached = json.loads(sidecars[0].read_text())
    assert cached["sha256"] == first
    # The sidecar is trusted while path, size and mtime match: no re-hash on start.
    sidecars[0].write_text(json.dumps(cached | {"sha256": "cached"}))
    assert file_sha256(weights) == "cached"
    # A changed file (new size and mtime) is hashed again.
    weights.write_bytes(b"y" * 1001)
    assert file_sha256(weights) not in ("cached", first)


def test_weights_replaced_with_the_same_size_and_mtime_are_hashed_again(isolated: Path) -> None:
    """Other weights of the same size given the old mtime (``touch -r``, ``tar -x``, ``rsync
    -t``) are hashed again, whether written over the file or renamed onto it: the records
    must name the weights that run, and a head of the old ones must not be applied."""
    weights = isolated / "w.bin"
    weights.write_bytes(b"x" * 1000)
    first = file_sha256(weights)
    before = weights.stat()
    # The change time has the kernel's clock tick: wait for the next tick, so that the
    # rewrite below cannot land in the tick of the first write.
    probe = isolated / "probe"
    probe.write_bytes(b"")
    while probe.stat().st_ctime_ns == before.st_ctime_ns:
        probe.write_bytes(b"")
    weights.write_bytes(b"y" * 1000)  # in place: the same inode
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (1000, before.st_mtime_ns)
    assert file_sha256(weights) == hashlib.sha256(b"y" * 1000).hexdigest() != first
    other = isolated / "other.bin"
    other.write_bytes(b"z" * 1000)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    other.replace(weights)  # renamed onto it: another inode
    assert file_sha256(weights) == hashlib.sha256(b"z" * 1000).hexdigest()


def _no_weights_env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "nothing"
    (empty / "models").mkdir(parents=True)
    env = dict(os.environ)
    env.pop("GRIDPATROL_MODEL", None)
    env |= {
        "GRIDPATROL_MODELS_DIR": str(empty / "models"),
        "GRIDPATROL_SHARED": str(empty),
        "GRIDPATROL_CACHE": str(empty / "cache"),
    }
    return env


def _scan(env: dict[str, str], image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "scan", str(image)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_no_weights_offline_says_what_to_put_where(tmp_path: Path) -> None:
    env = _no_weights_env(tmp_path) | {"GRIDPATROL_OFFLINE": "1"}
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    proc = _scan(env, image)
    assert proc.returncode == 2
    assert proc.stdout == ""
    models_dir = tmp_path / "nothing" / "models"
    assert f"{models_dir}/yolo11n_int8_openvino_model" in proc.stderr
    assert "put the OpenVINO IR folder yolo11n_int8_openvino_model/" in proc.stderr
    assert "yolo11n.xml, yolo11n.bin and metadata.yaml" in proc.stderr
    assert "--model PATH or set GRIDPATROL_MODEL=PATH" in proc.stderr
    assert f"put yolo11n.pt into {tmp_path / 'nothing' / 'cache' / 'models'}/" in proc.stderr


def test_no_weights_no_internet_download_fails_with_the_same_guidance(tmp_path: Path) -> None:
    # A proxy that refuses connections stands in for a machine without internet access.
    env = _no_weights_env(tmp_path) | {
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    proc = _scan(env, image)
    assert proc.returncode == 2
    assert "downloading yolo11n.pt failed" in proc.stderr
    assert "put the OpenVINO IR folder yolo11n_int8_openvino_model/" in proc.stderr
    assert not (tmp_path / "nothing" / "cache" / "models" / "yolo11n_openvino_model").exists()


def test_pt_needs_the_ultralytics_extra(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "ultralytics_available", lambda: False)
    weights = isolated / "custom.pt"
    weights.write_bytes(b"weights")
    spec = resolve_model(str(weights))
    with pytest.raises(MissingExtraError, match=r"pip install 'gridpatrol\[ultralytics\]'"):
        load_backend(spec)
    with pytest.raises(MissingExtraError, match="ultralytics extra"):
        load_backend(resolve_model("yolo11n"), kind="ultralytics")


def test_ultralytics_name_without_extra_or_weights(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "ultralytics_available", lambda: False)
    monkeypatch.setenv("GRIDPATROL_SHARED", str(isolated / "elsewhere"))
    with pytest.raises(ModelNotFoundError, match="ultralytics extra that downloads weights"):
        resolve_model("yolo11n")


@pytest.mark.parametrize(
    ("env", "weights", "expected"),
    [
        ({}, None, (0, "")),  # the shared IR
        ({"GRIDPATROL_SHARED": "{tmp}/elsewhere"}, None, (NEEDS_ULTRALYTICS, "")),
        ({"GRIDPATROL_MODEL": "{tmp}/custom.pt"}, "custom.pt", (NEEDS_ULTRALYTICS, "")),
        (
            {"GRIDPATROL_MODEL": "{tmp}/custom.pt", "GRIDPATROL_OFFLINE": "1"},
            "custom.pt",
            (NEEDS_ULTRALYTICS, ""),  # on disk: loading it downloads nothing
        ),
        (
            {"GRIDPATROL_SHARED": "{tmp}/elsewhere", "GRIDPATROL_OFFLINE": "1"},
            None,
            (1, "; downloads are off (GRIDPATROL_OFFLINE).\n"),
        ),
        ({"GRIDPATROL_MODEL": "{tmp}/missing"}, None, (1, "(environment) does not exist")),
        ({"GRIDPATROL_MODEL": "./mymodel.pt"}, None, (1, "(environment) does not exist")),
        ({"GRIDPATROL_MODEL": "mymodel.pt"}, None, (1, "(environment) does not exist")),
        ({"GRIDPATROL_MODEL": "./yolov8s.pt"}, None, (1, "(environment) does not exist")),
        ({"GRIDPATROL_MODEL": "yolov8s.pt"}, None, (NEEDS_ULTRALYTICS, "")),  # published
        (
            {"GRIDPATROL_SHARED": "{tmp}/elsewhere", "GRIDPATROL_OFFLINE": "1"},
            "cache/models/yolo11n.pt",
            (NEEDS_ULTRALYTICS, ""),  # exporting the cached weights downloads nothing
        ),
        (
            {"GRIDPATROL_MODEL": "{tmp}/copy_openvino_model/yolo11n.xml"},
            "copy_openvino_model/yolo11n.xml",
            (1, "is an incomplete OpenVINO IR"),
        ),
    ],
    ids=[
        "ir-at-hand",
        "nothing",
        "pt",
        "pt-offline",
        "nothing-offline",
        "missing",
        "unpublished-pt-in-cwd",
        "unpublished-pt-name",
        "published-pt-in-cwd",
        "published-pt-name",
        "pt-in-cache-offline",
        "no-bin",
    ],
)
def test_the_extra_would_help_only_where_it_downloads_or_loads_the_model(
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    weights: str | None,
    expected: tuple[int, str],
) -> None:
    """What ``make demo`` installs the ultralytics extra (PyTorch, several GB) on."""
    monkeypatch.setattr(models, "ultralytics_available", lambda: False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=isolated))
    if weights:
        (isolated / weights).parent.mkdir(parents=True, exist_ok=True)
        (isolated / weights).write_bytes(b"weights")
    status, why = extra_would_help()
    assert (status, expected[1] in why, bool(why)) == (expected[0], True, bool(expected[1]))

    # With the extra installed, the demo downloads, exports or says what is wrong itself.
    monkeypatch.setattr(models, "ultralytics_available", lambda: True)
    assert extra_would_help() == (0, "")


def _export_by_copying(monkeypatch: pytest.MonkeyPatch, shared_dir: Path) -> list[tuple[str, Path]]:
    """Ultralytics' download and export replaced by copying the shared IR into the cache, which
    is what they leave behind; the list gets the weights and cache of every call."""
    from gridpatrol.detectors import ultralytics_backend

    calls: list[tuple[str, Path]] = []

    def fake_export(weights: str, cache: Path) -> Path:
        calls.append((weights, cache))
        folder = cache / f"{Path(weights).stem}_openvino_model"
        shutil.copytree(shared_dir / "models" / "yolo11n_int8_openvino_model", folder)
        return folder

    monkeypatch.setattr(ultralytics_backend, "export_openvino", fake_export)
    return calls


@pytest.mark.parametrize("available", [True, False], ids=["with-extra", "without-extra"])
def test_the_weights_ultralytics_publishes_are_known_without_it(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, available: bool
) -> None:
    """A .pt that is not there is downloaded only by a name Ultralytics publishes, given without
    a folder. Without the extra its list of those names cannot be read: the names taken for
    downloadable then are all in it, and any other is refused the same both ways."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    known = [f"yolo{v}{k}.pt" for v in ("v8", "11", "12", "26") for k in "nsmlx"]
    assert set(known) <= GITHUB_ASSETS_NAMES
    monkeypatch.setattr(models, "ultralytics_available", lambda: available)
    monkeypatch.setenv("GRIDPATROL_SHARED", str(isolated / "elsewhere"))
    for name in known:  # taken for Ultralytics' name: looked for, then downloaded
        with pytest.raises(ModelNotFoundError, match=r"; this command does not download\.\n"):
            resolve_model(name, download=False)
    for name in ("mymodel.pt", "./mymodel.pt", "./yolo11s.pt", "yolov9n.pt", "yolo11s.onnx"):
        with pytest.raises(ModelNotFoundError, match=r"\(argument\) does not exist"):
            resolve_model(name, download=False)


def test_a_published_name_exported_in_the_cache_starts_without_torch(
    tmp_path: Path, shared_dir: Path
) -> None:
    """GRIDPATROL_MODEL=yolo11s.pt, not in the manifest, with its export already in the cache:
    found on disk without reading Ultralytics' list of names, whose import brings in torch."""
    env = _no_weights_env(tmp_path) | {"GRIDPATROL_MODEL": "yolo11s.pt"}
    cache = tmp_path / "nothing" / "cache" / "models"
    cache.mkdir(parents=True)
    export = cache / "yolo11s_openvino_model"
    export.symlink_to(shared_dir / "models" / "yolo11n_int8_openvino_model")
    code = (
        "import sys; from gridpatrol.detectors.models import resolve_model; "
        "spec = resolve_model(); "
        "print(spec.name, spec.format, spec.source, spec.path.parent.name, 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "yolo11s",
        "openvino",
        f"local:{cache}",
        "yolo11n_int8_openvino_model",  # spec_from_path resolves the link
        "False",
    ]


def test_cached_weights_are_exported_offline(
    isolated: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRIDPATROL_OFFLINE with yolo11n.pt in the cache, as the not-found message says to put it:
    the weights are exported there, which downloads nothing."""
    monkeypatch.setenv("GRIDPATROL_SHARED", str(isolated / "elsewhere"))
    monkeypatch.setenv("GRIDPATROL_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="downloads are off") as refused:
        resolve_model(None)
    cache = isolated / "cache" / "models"
    assert f"put yolo11n.pt into {cache}/ (or unset GRIDPATROL_OFFLINE) and" in str(refused.value)
    assert "internet" not in str(refused.value)
    cache.mkdir(parents=True)
    (cache / "yolo11n.pt").write_bytes(b"weights")
    calls = _export_by_copying(monkeypatch, shared_dir)
    spec = resolve_model(None)
    assert calls == [("yolo11n.pt", cache)]
    assert (spec.name, spec.source, spec.path) == (
        "yolo11n",
        "download",
        cache / "yolo11n_openvino_model" / "yolo11n.xml",
    )


def test_ultralytics_weights_name_maps_to_the_manifest_entry(isolated: Path) -> None:
    spec = resolve_model("yolo11n.pt")  # no file of that name here: the manifest entry's folder
    assert (spec.name, spec.format) == ("yolo11n", "openvino")


def test_spec_is_a_plain_value(isolated: Path) -> None:
    spec = resolve_model("yolo11n")
    assert isinstance(spec, ModelSpec)
    assert spec.entry is not None and spec.entry.name == "yolo11n"


def test_download_and_export_happen_once_then_the_cache_is_used(
    isolated: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No internet here: the Ultralytics download + export is replaced by copying the shared
    export into the cache, which is what a successful export leaves behind."""
    monkeypatch.setenv("GRIDPATROL_SHARED", str(isolated / "elsewhere"))
    calls = _export_by_copying(monkeypatch, shared_dir)
    first = resolve_model(None)
    assert calls == [("yolo11n.pt", isolated / "cache" / "models")]
    assert first.source == "download" and first.name == "yolo11n"
    second = resolve_model(None)
    assert len(calls) == 1  # reused, not exported again
    assert second.source == f"local:{isolated / 'cache' / 'models'}"
    assert second.path == first.path
    assert model_info(second).sha256 == MANIFEST["models"]["yolo11n"]["sha256"]["yolo11n.bin"]


def test_heads_of_an_exported_pt_are_loaded_by_scan(
    isolated: Path,
    shared_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A head trained on a .pt's export is keyed to the exported weights: scan --model x.pt
    must look it up by those, not by the hash of the .pt file."""
    from gridpatrol.cli import main
    from gridpatrol.detectors import ultralytics_backend

    def fake_export(weights: str, cache: Path) -> Path:  # what a real export leaves behind
        folder = cache / f"{Path(weights).stem}_openvino_model"
        if not folder.exists():
            shutil.copytree(shared_dir / "models" / "yolo11n_int8_openvino_model", folder)
        return folder

    monkeypatch.setattr(ultralytics_backend, "export_openvino", fake_export)
    weights = isolated / "yolo11n.pt"
    weights.write_bytes(b"trained weights")  # only exported (faked), never read here
    photo = sorted((shared_dir / "datasets" / "garbage_dev" / "garbage").glob("*.jpg"))[0]
    assert main(["--log-level", "WARNING", "scan", "--model", str(weights), str(photo)]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(record["scene"]) == {"garbage"}  # the shipped head, keyed to these weights


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([640, 640], 640),
        ([384, 640], 640),
        ([640, 384], 640),
        (512, 512),
        ("320", 320),
        (None, 640),
    ],
)
def test_imgsz_is_the_long_side_of_the_export(raw: object, expected: int) -> None:
    """A rectangular export's metadata gives [height, width]: the decode reduction and the
    feature cells go by its long side, not its height."""
    assert models.parse_imgsz(raw, 640) == expected
