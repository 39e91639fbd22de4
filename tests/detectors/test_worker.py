"""The detect command's camera selection, sharding and start-up errors (no broker needed)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gridpatrol.api.client import Outbox, OutboxBusy
from gridpatrol.detectors.episodes import Episode, Op, ensure_schema, save_episode
from gridpatrol.detectors.types import Detections, ModelInfo
from gridpatrol.detectors.worker import (
    DetectorWorker,
    EpisodeEvent,
    _cameras_kept,
    _component_id,
    _open_outbox,
    candidate_detection,
    check_selection,
    normalise_event,
    parse_shard,
    select_cameras,
    shard_of,
)
from gridpatrol.ingest.topics import valid_id
from gridpatrol.site import parse_site

REPO = Path(__file__).resolve().parents[2]

SITE = """
site: {name: 测试}
cameras:
""" + "".join(
    f"""
  - id: cam-{i:02d}
    source: mqtt
    location: {{address: 大宁路 {i}号}}
"""
    for i in range(12)
)


def test_every_camera_is_on_exactly_one_shard() -> None:
    site = parse_site(SITE)
    for n in (1, 2, 3, 5):
        served = [c.id for k in range(n) for c in select_cameras(site, None, f"{k}/{n}")]
        assert sorted(served) == sorted(c.id for c in site.cameras)
    # Stable across processes: crc32, not Python's salted hash.
    code = "from gridpatrol.detectors.worker import shard_of; print(shard_of('cam-07', 5))"
    out = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        for _ in range(2)
    ]
    assert out[0] == out[1] == f"{shard_of('cam-07', 5)}\n"


@pytest.mark.parametrize(
    ("cameras", "shard", "expected"),
    [
        ("cam-03,cam-01", None, ["cam-01", "cam-03"]),
        (None, None, [f"cam-{i:02d}" for i in range(12)]),
    ],
)
def test_select_cameras(cameras: str | None, shard: str | None, expected: list[str]) -> None:
    assert [c.id for c in select_cameras(parse_site(SITE), cameras, shard)] == expected


@pytest.mark.parametrize(("cameras", "shard"), [("", None), (" ", None), (None, "")])
def test_an_empty_selection_is_no_selection_of_every_camera(
    cameras: str | None, shard: str | None
) -> None:
    flag = "--cameras" if cameras is not None else "--shard"
    message = (
        f"{flag} is empty: name the cameras (a,b) or the shard (k/n), or leave the flag out to "
        "serve every camera"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        check_selection(cameras, shard)
    with pytest.raises(ValueError, match=re.escape(message)):
        select_cameras(parse_site(SITE), cameras, shard)


@pytest.mark.parametrize(
    ("cameras", "shard", "message"),
    [
        ("cam-99", None, "unknown camera id(s) ['cam-99']"),
        (None, "2/2", "need 0 <= k < n"),
        (None, "1-of-2", "--shard must be k/n"),
    ],
)
def test_selection_errors(cameras: str | None, shard: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        select_cameras(parse_site(SITE), cameras, shard)
    assert parse_shard("1/3") == (1, 3)


def test_detect_refuses_an_unknown_camera(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site),
         "--cameras", "cam-99"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "unknown camera id(s) ['cam-99']" in run.stderr


def test_detect_refuses_a_class_the_model_does_not_know(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    zone = (
        "    zones:\n      - id: kerb\n        polygon: [[0, 0], [1, 0], [1, 1]]\n"
        "        rules: {illegal_parking: {classes: [car, lorry]}}\n"
    )
    text = SITE.replace(
        "    location: {address: 大宁路 0号}\n", "    location: {address: 大宁路 0号}\n" + zone
    )
    site.write_text(text, encoding="utf-8")
    line = text.splitlines().index("        rules: {illegal_parking: {classes: [car, lorry]}}") + 1
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert (
        f"{site}:{line}: cameras[0].zones[0].rules.illegal_parking.classes: Value error, "
        "'lorry' is not a class of the detection model\n"
    ) in run.stderr


@pytest.mark.parametrize("value", ["0", "8MB"])
def test_detect_refuses_an_evidence_cap_that_is_no_size(tmp_path: Path, value: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "GRIDPATROL_EVIDENCE_MAX_BYTES": value},
    )  # fmt: skip
    assert run.returncode == 2
    assert (
        f"GRIDPATROL_EVIDENCE_MAX_BYTES must be a positive number of bytes, got {value!r}"
    ) in run.stderr


def _run_producer(
    tmp_path: Path, cmd: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cmd`` run in ``tmp_path`` with a producer token, a broker nobody listens on and its
    outbox file there; ``env`` on top."""
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={
            **os.environ, "GRIDPATROL_API_TOKEN": "tok-producer",
            "GRIDPATROL_MQTT_URL": "mqtt://127.0.0.1:1", "GRIDPATROL_OUTBOX": "outbox.db",
            **(env or {}),
        },
    )  # fmt: skip


def _setup_error(run: subprocess.CompletedProcess[str]) -> str:
    """The one ERROR line of a start refused for its setup (status 2, no traceback)."""
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        (
            {"GRIDPATROL_API_TOKEN": ""},
            (),
            "detect: cannot start: GRIDPATROL_API_TOKEN is not set: producers need a producer "
            "token",
        ),
        (
            {"GRIDPATROL_MQTT_URL": "mqtt://gp:s3cret@broker:18a3"},
            (),
            "detect: cannot start: broker URL 'mqtt://gp:***@broker:18a3': Port could not be "
            "cast to integer value as '18a3'",
        ),
        (
            {},
            ("--component-id", "detect/east"),
            "detect/east: cannot start: component id 'detect/east' is not an MQTT topic level",
        ),
        (
            {"GRIDPATROL_METRICS_PORT": "abc"},
            (),
            "GRIDPATROL_METRICS_PORT must be a port number (0 = off), got 'abc'",
        ),
        (
            {},
            ("--metrics-port", "70000"),
            "--metrics-port must be a port number (0 = off), got '70000'",
        ),
        (
            {"GRIDPATROL_METRICS_PORT": "9101"},
            ("--metrics-port", "-1"),
            "--metrics-port must be a port number (0 = off), got '-1'",
        ),
        (
            {"GRIDPATROL_OUTBOX": "."},
            (),
            "detect: cannot start: the outbox . (GRIDPATROL_OUTBOX): unable to open database file",
        ),
        (
            {"GRIDPATROL_OUTBOX": "site.yaml"},
            (),
            "detect: cannot start: the outbox site.yaml (GRIDPATROL_OUTBOX): file is not a "
            "database",
        ),
        (
            {"GRIDPATROL_API_TOKEN": ""},
            ("--cameras", "cam-03,cam-01"),
            "detect-cam-01-cam-03: cannot start: GRIDPATROL_API_TOKEN is not set",
        ),
    ],
    ids=[
        "no API token",
        "malformed broker URL",
        "component id no topic level",
        "malformed metrics port",
        "metrics port flag above 65535",
        "negative metrics port flag",
        "outbox a folder",
        "outbox another kind of file",
        "cameras' own component id",
    ],
)
def test_detect_setup_errors_exit_2_with_one_line(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], says: str
) -> None:
    """Setup the operator must mend: status 2, which supervisors do not restart on."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE, encoding="utf-8")
    detect = [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site), *args]
    run = _run_producer(tmp_path, detect, env)
    assert says in _setup_error(run)
    assert "s3cret" not in run.stderr


def test_a_malformed_metrics_port_is_no_concern_of_other_commands() -> None:
    """Only detect reads GRIDPATROL_METRICS_PORT, though every command builds its parser."""
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "check-config", "samples/site.yaml"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "GRIDPATROL_METRICS_PORT": "abc"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "cam-dn-001" in run.stdout


def test_pt_weights_without_the_ultralytics_extra_are_a_setup_error(tmp_path: Path) -> None:
    """.pt weights are exported to OpenVINO by the ultralytics extra: without it the model
    cannot be read, which the operator must mend (2, one line), as scan says too."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE, encoding="utf-8")
    weights = tmp_path / "custom.pt"
    weights.write_bytes(b"not used: the extra that reads it is missing")
    # The interpreter as it is without the extra: importlib finds no ultralytics.
    code = (
        "import sys; sys.modules['ultralytics'] = None; from gridpatrol.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    detect = [sys.executable, "-c", code, "detect", "--config", str(site), "--model", str(weights)]
    assert _setup_error(_run_producer(tmp_path, detect)).endswith(
        f"detect: cannot start: loading {weights} (.pt weights are exported to OpenVINO) needs "
        "the ultralytics extra: pip install 'gridpatrol[ultralytics]' (or give an OpenVINO IR "
        "folder / .onnx instead)"
    )


@pytest.mark.parametrize("flag", ["--cameras", "--shard"])
def test_detect_refuses_an_empty_camera_selection(tmp_path: Path, flag: str) -> None:
    """``--cameras ${CAMS}`` with CAMS unset in a unit file: an empty selection is a setup error,
    not every camera (each worker would serve all of them and duplicate every candidate)."""
    site = str(REPO / "samples" / "site.yaml")
    run = _run_producer(
        tmp_path, [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", site, flag, ""]
    )
    assert _setup_error(run).endswith(
        f"{flag} is empty: name the cameras (a,b) or the shard (k/n), or leave the flag out to "
        "serve every camera"
    )
    assert not (tmp_path / "outbox.db").exists()


def test_detect_refuses_a_camera_list_of_no_id(tmp_path: Path) -> None:
    """``--cameras ,`` names no camera: a setup error that quotes what was given."""
    site = str(REPO / "samples" / "site.yaml")
    detect = [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", site, "--cameras", ","]
    run = _run_producer(tmp_path, detect)
    assert _setup_error(run).endswith("--cameras ',' names no camera of the site")


def _args(
    cameras: str | None = None, shard: str | None = None, component_id: str | None = None
) -> argparse.Namespace:
    return argparse.Namespace(cameras=cameras, shard=shard, component_id=component_id)


def test_each_camera_list_has_its_own_component_id() -> None:
    """Workers of different --cameras lists have their own status and dead-letter topics (one
    killed does not mark the other offline) and their own outbox file; the id names the sorted
    cameras, so the same list in any order keeps it."""
    assert _component_id(_args("street")) == "detect-street"
    assert _component_id(_args("other")) == "detect-other"
    assert _component_id(_args("street, other,street")) == "detect-other-street"
    assert _component_id(_args("other,street")) == "detect-other-street"
    assert _component_id(_args(shard="1/3")) == "detect-1-of-3"
    assert _component_id(_args("street", component_id="east")) == "east"
    assert _component_id(_args()) == "detect"
    # Too long for a topic level: a readable head and a hash of the whole list.
    many = [f"camera-{i:03d}" for i in range(12)]
    first = _component_id(_args(",".join(many)))
    second = _component_id(_args(",".join([*many[:-1], "camera-999"])))
    assert first.startswith("detect-camera-000-camera-001-camera-002-camera-0")
    assert len(first) == len(second) == 64
    assert first != second
    assert valid_id(first)


def _legacy_outbox(tmp_path: Path, cameras: list[str]) -> None:
    """``var/outbox-detect.db`` in ``tmp_path`` as a ``--cameras`` worker left it when its id
    was ``detect``: a create waiting and an open episode of each of ``cameras``."""
    outbox = Outbox(tmp_path / "var" / "outbox-detect.db", None, component="detect")
    with outbox.transaction() as txn:
        ensure_schema(txn.conn)
        txn.create_candidate({"type": "piled_materials"}, "c0ffee00-0000-4000-8000-000000000001")
        for camera in cameras:
            save_episode(txn.conn, replace(PILE, camera_id=camera))


def test_a_cameras_worker_goes_on_with_the_outbox_it_used_as_detect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After the upgrade a --cameras worker's default file is var/outbox-detect-<cameras>.db;
    while that is not there, it goes on with var/outbox-detect.db when that keeps its cameras'
    state alone (its queued create and open episode), nothing moved. A worker of another list
    starts on its own file, both at once; a file that keeps state of other cameras is left to
    them; a second worker of the list is refused the file, told what to mend."""
    from gridpatrol.detectors.episodes import load_book

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRIDPATROL_OUTBOX", raising=False)
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "tok-producer")
    _legacy_outbox(tmp_path, ["cam-00"])
    street = _open_outbox("detect-cam-00", ["cam-00"])
    other = _open_outbox("detect-cam-01", ["cam-01"])
    try:
        assert street.path == Path("var/outbox-detect.db")
        assert other.path == Path("var/outbox-detect-cam-01.db")
        assert (street.depth(), other.depth()) == (1, 0)
        with street.transaction() as txn:
            assert [ep.camera_id for ep in load_book(txn.conn).values()] == ["cam-00"]
        with pytest.raises(OutboxBusy) as refused:
            _open_outbox("detect-cam-00", ["cam-00"])
    finally:
        street.stop()
        other.stop()
    assert str(refused.value) == (
        "outbox var/outbox-detect.db is in use by another process; this worker went on with it "
        "as it keeps the state of its cameras alone and its own file var/outbox-detect-cam-00.db "
        "is not there yet; another worker runs on it (one of every camera, or of the same "
        "--cameras): stop that one, or set GRIDPATROL_OUTBOX=var/outbox-detect-cam-00.db to "
        "start this one on its own file"
    )
    assert not (tmp_path / "var" / "outbox-detect-cam-00.db").exists()
    going_on = (
        "detect-cam-00: goes on with the outbox var/outbox-detect.db, which keeps the state of "
        "its cameras alone (its own default is var/outbox-detect-cam-00.db; "
        "GRIDPATROL_OUTBOX=var/outbox-detect.db keeps this one)"
    )
    assert caplog.messages == [
        going_on,
        "detect-cam-01: the outbox var/outbox-detect.db keeps state of other cameras (cam-00) "
        "than this worker's; it starts on its own file var/outbox-detect-cam-01.db",
        going_on,
    ]
    caplog.clear()
    (tmp_path / "var" / "outbox-detect.db").unlink()
    _legacy_outbox(tmp_path, ["cam-00", "cam-02"])
    kept = _open_outbox("detect-cam-02", ["cam-02"])
    try:
        assert kept.path == Path("var/outbox-detect-cam-02.db")
        assert kept.depth() == 0
    finally:
        kept.stop()
    assert caplog.messages == [
        "detect-cam-02: the outbox var/outbox-detect.db keeps state of other cameras (cam-00) "
        "than this worker's; it starts on its own file var/outbox-detect-cam-02.db"
    ]


def test_a_cameras_worker_whose_own_outbox_is_there_keeps_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own default file there (it ran on it before), the old file is no concern of the
    worker's; nor is an old file that keeps no camera's state."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRIDPATROL_OUTBOX", raising=False)
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "tok-producer")
    _legacy_outbox(tmp_path, [])
    assert _open_outbox("detect-cam-00", ["cam-00"]).path == Path("var/outbox-detect-cam-00.db")
    (tmp_path / "var" / "outbox-detect.db").unlink()
    _legacy_outbox(tmp_path, ["cam-00"])
    outbox = _open_outbox("detect-cam-00", ["cam-00"])
    outbox.stop()
    assert (outbox.path, outbox.depth()) == (Path("var/outbox-detect-cam-00.db"), 0)


def test_reading_which_cameras_an_absent_outbox_keeps_creates_no_file(tmp_path: Path) -> None:
    """Neither cameras nor a file: the old file is not there, and asking does not make it."""
    assert _cameras_kept(tmp_path / "outbox-detect.db") is None
    assert list(tmp_path.iterdir()) == []


def test_a_shard_without_cameras_whose_metrics_port_is_taken_cannot_start(tmp_path: Path) -> None:
    """The sample site leaves shard 3/4 without cameras; its metrics port is in use: status 2
    (the setting must be mended) and one line naming the port and the setting, as a worker
    with cameras says it (no traceback). It said '[Errno 98] Address already in use' alone,
    with status 1."""
    import socket

    site = str(REPO / "samples" / "site.yaml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        detect = [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", site,
                  "--shard", "3/4", "--metrics-port", str(port)]  # fmt: skip
        run = _run_producer(tmp_path, detect)
    assert run.returncode == 2, run.stderr
    (error,) = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert error.endswith(
        f" ERROR gridpatrol.detectors.worker: detect-3-of-4: cannot start: the metrics port {port}"
        " (--metrics-port): Address already in use"
    ), error
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--progress-s", "0"), ("--keyframe-s", "nan"), ("--keyframe-s", "inf"),
     ("--keyframe-s", "-1")],
)  # fmt: skip
def test_detect_intervals_are_positive_seconds(flag: str, value: str) -> None:
    """A keyframe interval of nan or inf never forces a keyframe (a static scene would keep
    stale detections for good); a progress interval of 0 spins."""
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "detect", "--config",
         str(REPO / "samples" / "site.yaml"), flag, value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"gridpatrol detect: error: argument {flag}: must be a positive number of seconds, "
        f"got {value!r}"
    )


def test_detect_without_a_site_file() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "detect"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"},
    )  # fmt: skip
    assert run.returncode == 2
    assert "detect needs --config" in run.stderr


def test_rule_events_are_normalised_to_aware_datetimes() -> None:
    class Raw:
        kind = "raise"
        rule = "illegal_parking"
        zone_id = "kerb"
        t = 1_777_860_000.5
        confidence = 0.8
        dwell_s = 12.0
        first_seen = 1_777_859_988.5
        boxes = ((1, 2, 3, 4),)
        track_ids = (7,)

    ev = normalise_event(Raw())
    assert ev.t == datetime.fromtimestamp(1_777_860_000.5, UTC)
    assert ev.first_seen.tzinfo is not None
    assert ev.boxes == ((1.0, 2.0, 3.0, 4.0),) and ev.track_ids == (7,) and ev.labels == ()


def test_the_cli_module_stays_light() -> None:
    """``gridpatrol --help`` imports the worker module; the heavy runtimes load only in run()."""
    code = (
        "import sys, gridpatrol.detectors.worker; "
        "print(sorted(m for m in ('cv2', 'numpy', 'openvino', 'paho') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout == "[]\n", out.stderr


def test_detect_on_weights_the_runtime_cannot_read_is_a_setup_error(
    tmp_path: Path, shared_dir: Path
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE, encoding="utf-8")
    model = tmp_path / "cut_openvino_model"  # the weights cut short, as by a broken copy
    model.mkdir()
    source = shared_dir / "models" / "yolo11n_int8_openvino_model"
    for name in ("yolo11n.xml", "metadata.yaml"):
        shutil.copy(source / name, model / name)
    (model / "yolo11n.bin").write_bytes((source / "yolo11n.bin").read_bytes()[:1000])
    env = {
        **os.environ,
        "GRIDPATROL_OUTBOX": str(tmp_path / "outbox.db"),
        "GRIDPATROL_API_TOKEN": "tok-producer",  # the rest of the setup would do
    }
    run = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "detect", "--config", str(site),
         "--model", str(model)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert f"detect: cannot start: OpenVINO cannot load model 'yolo11n' from {model}" in run.stderr


T0 = datetime(2026, 5, 4, 2, 0, tzinfo=UTC)
BEST = ((10.0, 20.0, 30.0, 40.0),)  # the boxes sent with the candidate's clean frame
NOW = ((11.0, 21.0, 31.0, 41.0),)  # this frame's boxes


def _sent(boxes: tuple[tuple[float, float, float, float], ...]) -> dict[str, object]:
    return {"boxes": [list(b) for b in boxes], "track_ids": [3], "frame_width": 3840,
            "frame_height": 2160}  # fmt: skip


def _street_update(
    best: float,
    confidence: float,
    boxes: tuple[tuple[float, float, float, float], ...],
    track_ids: tuple[int, ...],
) -> tuple[Episode, EpisodeEvent]:
    """An open crowd episode of camera street whose best snapshot so far is ``best``, and an
    update of it at 9 s seeing ``confidence`` with ``boxes``."""
    ep = Episode(
        camera_id="street", zone_id="whole-street", type="crowd_gathering", candidate_id="c1",
        source_event_id="street:whole-street:crowd_gathering:1", started_at=T0,
        reported_at=T0 + timedelta(seconds=9), last_event_at=T0 + timedelta(seconds=9),
        best_confidence=best, dwell_s=9.0,
    )  # fmt: skip
    ev = EpisodeEvent(
        kind="update", rule="crowd_gathering", zone_id="whole-street",
        t=T0 + timedelta(seconds=9), confidence=confidence, dwell_s=9.0, first_seen=T0,
        boxes=boxes, track_ids=track_ids, labels=("person",) * len(boxes),
    )  # fmt: skip
    return ep, ev


@pytest.mark.parametrize(
    ("previous", "better", "boxes"),
    [
        (_sent(BEST), True, NOW),  # a better snapshot: its frame's boxes
        (_sent(BEST), False, BEST),  # not better: the boxes of the clean frame stand
        # Restarted since: the worker does not know the clean frame's boxes; it sends none
        # (the candidate keeps them), again on the next update, until a better snapshot.
        (None, False, None),
        ({"zone_id": "whole-street"}, False, None),
        ({"zone_id": "whole-street"}, True, NOW),
        (None, True, NOW),  # a create
    ],
)
def test_an_update_sends_the_boxes_of_its_clean_frame_or_none(
    previous: dict[str, object] | None, better: bool, boxes: tuple[tuple[float, ...], ...] | None
) -> None:
    ep, ev = _street_update(0.7, 0.6, NOW, (4,))
    model = ModelInfo("yolo11n", "8.3", "ab" * 32, Path("m"), ("person",), 640)
    block = candidate_detection(ep, ev, better, previous, model, (1280, 720))
    if boxes is None:
        assert not {"boxes", "track_ids", "frame_width", "frame_height"} & block.keys()
    else:
        assert block["boxes"] == [list(b) for b in boxes]
        assert block["track_ids"] == ([4] if boxes == NOW else [3])
        # The size of the frame the boxes are in: this one's, or the clean frame's.
        size = (1280, 720) if boxes == NOW else (3840, 2160)
        assert (block["frame_width"], block["frame_height"]) == size
    assert (block["dwell_s"], block["score"], block["started_at"]) == (9.0, 0.7, T0.isoformat())


@pytest.mark.parametrize("previous", [_sent(BEST), None])
def test_a_better_snapshot_without_boxes_sends_none_of_the_previous_frames_boxes(
    previous: dict[str, object] | None,
) -> None:
    """An update with a better confidence sends a new clean frame (DetectorWorker._render):
    when its event names no boxes, the boxes of the candidate's previous clean frame (another
    frame, of another size) would be drawn on it by whoever reads them. The block says the
    new frame has none, in that frame's size."""
    ep, ev = _street_update(0.8, 0.8, (), ())
    model = ModelInfo("yolo11n", "8.3", "ab" * 32, Path("m"), ("person",), 640)
    block = candidate_detection(ep, ev, True, previous, model, (1280, 720))
    assert (block["boxes"], block["track_ids"]) == ([], [])
    assert (block["frame_width"], block["frame_height"]) == (1280, 720)


class _Conn:
    """The broker side a worker needs before it runs: subscriptions that never deliver, and a
    connection that is up (``connects``: how many times it connected so far)."""

    connected = True
    connects = 1

    def subscribe(self, *args: object, **kwargs: object) -> object:
        return _Sub()


class _Sub:
    """A subscription that never delivers, so dropped nothing."""

    dropped = 0

    def __len__(self) -> int:
        return 0


class _Backend:
    info = ModelInfo("yolo11n", "8.3", "ab" * 32, Path("m"), ("person",), 640)


def _worker(
    tmp_path: Path,
    site_text: str = SITE,
    conn: _Conn | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[DetectorWorker, Outbox]:
    """A worker on an outbox file in ``tmp_path`` that is never run (no broker, no model)."""
    from gridpatrol.detectors.motion import MotionSettings

    site = parse_site(site_text)
    outbox = Outbox(tmp_path / "outbox-detect.db", None, component="detect")
    worker = DetectorWorker(
        site, site.cameras[:1], _Backend(), {}, outbox,
        conn or _Conn(),  # type: ignore[arg-type]
        motion=MotionSettings(), component_id="detect", clock=clock,
    )  # fmt: skip
    return worker, outbox


def _ops_sent(worker: DetectorWorker, op: str) -> float | None:
    """The worker's gridpatrol_detect_candidate_ops counter of cam-00 (None: never counted)."""
    return worker.metrics.registry.get_sample_value(
        "gridpatrol_detect_candidate_ops_total", {"camera": "cam-00", "op": op}
    )


def _rejected(outbox: Outbox, cid: str) -> Episode:
    """An open crowd episode of cam-00 whose candidate a reviewer rejected: its patch was
    refused (410 Gone), as the outbox keeps it."""
    with outbox.transaction() as txn:
        txn.patch_candidate(cid, {"detection": {"dwell_s": 9.0}})
        txn.conn.execute("UPDATE outbox_ops SET state = 'failed', last_error = '410 {}'")
    return Episode(
        camera_id="cam-00", zone_id="kerb", type="crowd_gathering", candidate_id=cid,
        source_event_id=f"cam-00:kerb:crowd_gathering:{T0.timestamp()}", started_at=T0,
        reported_at=T0, last_event_at=T0, best_confidence=0.7, dwell_s=9.0,
    )  # fmt: skip


def test_a_refusal_is_forgotten_once_its_episode_ended(tmp_path: Path) -> None:
    """The worker remembers a candidate the API refused for good while its episode goes on
    (no more lookups, no more patches), not for the rest of its life."""
    from gridpatrol.detectors.episodes import Op

    worker, outbox = _worker(tmp_path)
    cid = "6f1c1d1e-4b8a-4c53-9d55-5f0d1c7a2b10"
    ep = _rejected(outbox, cid)
    update = {"detection": {"dwell_s": 20.0}}
    assert worker._commit([(Op("update", ep), ([], update))]) == {cid}
    assert worker._closed == {cid}
    ended = Op("end", replace(ep, ended_at=T0 + timedelta(seconds=30)))
    assert worker._commit([(ended, ([], {"detection": {"ended_at": "x"}}))]) == {cid}
    assert worker._closed == set()
    assert outbox.depth() == 0  # nothing of it was queued


@pytest.mark.parametrize("ending", ["silent camera", "not followed after a restart"])
def test_an_ending_the_api_refused_is_neither_counted_nor_logged_as_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    """A rejected candidate's episode ends in the book, but its end patch is not queued: the
    counter of operations queued and the log must not say it was."""
    from gridpatrol.detectors.episodes import load_book

    worker, outbox = _worker(tmp_path)
    cid = "0b6f4a52-3c1d-4e8f-9a7b-2d5c6e7f8a91"
    ep = _rejected(outbox, cid)
    with outbox.transaction() as txn:
        save_episode(txn.conn, ep)
    worker.book = {ep.key: ep}
    rt = worker.cams["cam-00"]
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    if ending == "silent camera":
        worker._end_silent_camera(rt, 3600.0)  # no zone kerb in the site: ends at once
        ended = replace(ep, ended_at=T0)
    else:
        rt.waiting = {ep.key}
        worker._end_unfollowed(rt, T0 + timedelta(seconds=60))
        ended = replace(ep, ended_at=T0, reported_at=T0 + timedelta(seconds=60))
    assert worker.book == {ep.key: ended}
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {ep.key: ended}  # followed, not reported
    assert outbox.depth() == 0
    assert _ops_sent(worker, "end") is None
    assert "ended candidate" not in caplog.text
    assert f"candidate {cid} (crowd_gathering in zone kerb) takes no more updates" in caplog.text
    assert worker._closed == set()


def _zone_site(zone_id: str, rules: str) -> str:
    """A site of cam-00 with one whole-frame zone and its rules (a YAML flow mapping)."""
    return f"""
site: {{name: 测试}}
cameras:
  - id: cam-00
    source: mqtt
    location: {{address: 大宁路 0号}}
    zones:
      - id: {zone_id}
        polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]
        rules: {rules}
"""


CROWD_SITE = _zone_site(
    "kerb", "{crowd_gathering: {min_persons: 1, dwell_s: 5, gap_s: 2, clear_s: 10, update_s: 120}}"
)


def test_a_camera_clock_stepping_back_ends_its_episode_at_the_rules_last_sighting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised at 5 s, the crowd stays until 100 s, no update meanwhile (update_s 120); then
    the camera's clock steps an hour back. The episode ends where the rule last saw the crowd,
    not at its raise, the last event the book knows."""
    from gridpatrol.detectors.types import Detections

    worker, outbox = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    rt = worker.cams["cam-00"]
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(101):  # a frame a second
        t = T0 + timedelta(seconds=k)
        for ev in rt.pipeline.process(t, (1280, 720), person):
            worker._episode(rt, normalise_event(ev), None, person)  # type: ignore[arg-type]
        rt.last_ts = t
    (raised,) = worker.book.values()
    assert (raised.started_at, raised.reported_at, raised.last_event_at) == (
        T0,
        T0 + timedelta(seconds=5),
        T0 + timedelta(seconds=5),
    )
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    back = T0 + timedelta(seconds=100) - timedelta(hours=1)
    worker._take_jump(rt, back, _at(101), back)
    assert "clock went back 3600 s; its rules start over" in caplog.text
    last_sighting = T0 + timedelta(seconds=100)
    ended = worker.book[raised.key]
    assert (ended.ended_at, ended.last_event_at, ended.dwell_s) == (
        last_sighting,
        last_sighting,
        100.0,
    )
    with outbox.transaction() as txn:
        ops = txn.conn.execute("SELECT kind, payload FROM outbox_ops ORDER BY seq").fetchall()
    assert [kind for kind, _ in ops] == ["create", "patch"]
    detection = json.loads(ops[1][1])["detection"]
    assert (detection["ended_at"], detection["dwell_s"]) == (last_sighting.isoformat(), 100.0)
    assert _ops_sent(worker, "end") == 1.0
    assert (
        f"camera cam-00: ended candidate {raised.candidate_id} (crowd_gathering in zone kerb): "
        f"not seen since {last_sighting.isoformat()}"
    ) in caplog.text


def _crowd_until_100(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[DetectorWorker, Outbox, Episode]:
    """A worker whose crowd was raised at 5 s and seen each second until 100 s (update_s 120:
    no update meanwhile), rendered without evidence; its episode."""
    from gridpatrol.detectors.types import Detections

    worker, outbox = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    rt = worker.cams["cam-00"]
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(101):  # a frame a second
        t = _at(k)
        for ev in rt.pipeline.process(t, (1280, 720), person):
            worker._episode(rt, normalise_event(ev), None, person)  # type: ignore[arg-type]
        rt.last_ts, rt.last_received_at = t, t
    (raised,) = worker.book.values()
    return worker, outbox, raised


def test_a_restart_ends_an_episode_at_the_sighting_of_the_save_at_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised at 5 s, the crowd stays until 100 s, no update meanwhile (update_s 120); the
    worker stops (its state saved) and the restarted one sees the street empty. The reloaded
    episode ends at the last sighting before the stop, 100 s, with the dwell up to there, not at
    the raise (the last operation written): the save writes the sighting that moved on."""
    from gridpatrol.detectors.episodes import load_book

    worker, outbox, raised = _crowd_until_100(tmp_path, monkeypatch)
    assert (raised.reported_at, raised.last_event_at, raised.dwell_s) == (_at(5), _at(5), 5.0)
    worker.save_state()  # at stop (and every minute)
    seen = replace(raised, last_event_at=_at(100), dwell_s=100.0)
    assert worker.book == {raised.key: seen}
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {raised.key: seen}
    assert _outbox_ops(outbox) == [("create", raised.candidate_id)]  # the save sends nothing

    second, _ = _worker(tmp_path, CROWD_SITE)
    rt = second.cams["cam-00"]
    assert (second.book, rt.waiting) == ({raised.key: seen}, {raised.key})
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    second._end_unfollowed(rt, _at(100 + 132 + 1))  # resume window: gap + clear + update_s
    assert rt.waiting == set()
    with outbox.transaction() as txn:
        rows = txn.conn.execute("SELECT kind, candidate_id, payload FROM outbox_ops ORDER BY seq")
        ops = rows.fetchall()
    assert [(kind, cid) for kind, cid, _ in ops] == [
        ("create", raised.candidate_id),
        ("patch", raised.candidate_id),
    ]
    detection = json.loads(ops[1][2])["detection"]
    assert (detection["ended_at"], detection["dwell_s"]) == (_at(100).isoformat(), 100.0)
    assert (
        f"camera cam-00: ended candidate {raised.candidate_id} (crowd_gathering in zone kerb): "
        f"not seen since {_at(100).isoformat()}"
    ) in caplog.messages


def test_the_save_leaves_an_episode_alone_while_its_operations_are_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised at 5 s, the crowd seen until 100 s; operations of its key are held after a
    transient failure (rt.unqueued: its ending and another occupancy's open, say). The book
    then keeps the episode open as its file does, while the rule may already time the next
    occupancy: the save writes no sighting of it, the held operations do when they are
    queued. Held directly here: a failure on the frame of such a raise and clear is a matter
    of schedules and timing."""
    from gridpatrol.detectors.episodes import load_book
    from gridpatrol.detectors.worker import Unqueued

    worker, outbox, raised = _crowd_until_100(tmp_path, monkeypatch)
    rt = worker.cams["cam-00"]
    assert raised.last_event_at == _at(5)
    ended = replace(raised, ended_at=_at(100), last_event_at=_at(100), dwell_s=100.0)
    rt.unqueued[raised.key] = Unqueued(ended, [], ("clear", "raise"), _at(100))
    worker.save_state()
    assert worker.book == {raised.key: raised}
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {raised.key: raised}
    del rt.unqueued[raised.key]  # queued meanwhile, say: the next save writes the sighting
    worker.save_state()
    seen = replace(raised, last_event_at=_at(100), dwell_s=100.0)
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {raised.key: seen}


PILE_SITE = _zone_site("yard", "{piled_materials: {}}")


def _at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


# A pile seen for 900 s until L = T0, when its book was last written.
PILE = Episode(
    camera_id="cam-00", zone_id="yard", type="piled_materials",
    candidate_id="3e0c8b7a-1f2d-4c5e-8a9b-0d1e2f3a4b5c",
    source_event_id=f"cam-00:yard:piled_materials:{T0.timestamp()}",
    started_at=_at(-900), reported_at=_at(0), last_event_at=_at(0), best_confidence=0.6,
    dwell_s=900.0,
)  # fmt: skip


def _saved(tmp_path: Path, ep: Episode) -> Outbox:
    """The outbox file in ``tmp_path``, its book holding ``ep`` as a stopped worker left it."""
    outbox = Outbox(tmp_path / "outbox-detect.db", None, component="detect")
    with outbox.transaction() as txn:
        ensure_schema(txn.conn)
        save_episode(txn.conn, ep)
    return outbox


def test_a_second_restart_before_the_rule_raises_again_keeps_the_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """piled_materials defaults: dwell_s 600, resume window gap_s + clear_s + update_s = 200 s.
    The episode was last written at L; the worker restarted at L + 60 with the pile still
    there, and its rule times it again. The episode's last sighting follows the pile and is
    written each time it moved update_s (120 s) on, so a second restart at L + 360, before the
    rule raises again, still continues the episode (written at L + 240) instead of ending it at
    L, and the rule's raise 600 s later opening a second candidate for the one pile."""
    from gridpatrol.detectors.episodes import Occupancy, load_book

    at, ep = _at, PILE
    outbox = _saved(tmp_path, ep)

    def written() -> Episode:
        with outbox.transaction() as txn:
            return load_book(txn.conn)[ep.key]

    first, _ = _worker(tmp_path, PILE_SITE)  # restarted at L + 60
    rt = first.cams["cam-00"]
    assert rt.waiting == {ep.key}
    pile: dict[tuple[str, str], Occupancy] = {}
    monkeypatch.setattr(rt.pipeline, "occupied", lambda: pile)
    for seen_s, written_s in [(60, 0), (119, 0), (120, 120), (239, 120), (240, 240), (359, 240)]:
        pile[("yard", "piled_materials")] = Occupancy(at(60), at(seen_s))
        first._end_unfollowed(rt, at(seen_s))
        assert (rt.waiting, first.book[ep.key].last_event_at) == ({ep.key}, at(seen_s))
        assert (written().last_event_at, written().dwell_s) == (at(written_s), 900 + written_s)
    assert outbox.depth() == 0  # sightings are kept with the book, nothing is sent

    second, _ = _worker(tmp_path, PILE_SITE)  # restarted again at L + 360
    rt = second.cams["cam-00"]
    assert second.book[ep.key].last_event_at == at(240)
    monkeypatch.setattr(rt.pipeline, "occupied", lambda: pile)
    pile[("yard", "piled_materials")] = Occupancy(at(360), at(360))
    second._end_unfollowed(rt, at(360))
    assert rt.waiting == {ep.key}
    assert second.book[ep.key] == replace(ep, last_event_at=at(360), dwell_s=1260.0)
    assert written() == second.book[ep.key]  # moved update_s on from 240 s
    assert outbox.depth() == 0  # no end


def _lock_error(outbox: Outbox) -> Callable[[], sqlite3.Error]:
    """A maker of SQLite's own "database is locked" (SQLITE_BUSY, result code 5), each time made
    anew by writing, without a busy timeout, to a scratch file beside the outbox's that another
    connection holds in a write transaction: what the outbox meets from another process holding
    its file beyond the busy timeout, without the wait."""
    return _sqlite_error(outbox.path.parent / "scratch-locked", "locked")


def _locked_once(monkeypatch: pytest.MonkeyPatch, outbox: Outbox, times: int = 1) -> list[str]:
    """The outbox's next transaction (``times`` transactions) fails as on a file another process
    holds beyond the busy timeout; the ones after it go through. Returns the failures so far."""
    real = outbox.transaction
    locked = _lock_error(outbox)
    failed: list[str] = []

    def transaction() -> Any:
        if len(failed) < times:
            exc = locked()
            failed.append(str(exc))
            raise exc
        return real()

    monkeypatch.setattr(outbox, "transaction", transaction)
    return failed


def _outbox_failures(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, object]]:
    """The worker's lines saying an operation was not queued: (level, message, exc_info). A
    failure of the outbox file (locked, full) is one line without a traceback: a traceback
    says a bug."""
    return [
        (r.levelno, r.getMessage(), r.exc_info)
        for r in caplog.records
        if r.name == "gridpatrol.detectors.worker" and "not queued (" in r.getMessage()
    ]


def _outbox_ops(outbox: Outbox) -> list[tuple[str, str | None]]:
    with outbox.transaction() as txn:
        return txn.conn.execute("SELECT kind, candidate_id FROM outbox_ops ORDER BY seq").fetchall()


def test_an_end_the_outbox_could_not_commit_is_tried_again_with_the_next_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reloaded crowd episode last seen at T0 has not come back within its resume window
    (gap_s + clear_s + update_s = 132 s). Ending it fails (the file is locked): it still
    waits, open in the book, and the next frame ends it, once."""
    from gridpatrol.detectors.episodes import load_book

    ep = Episode(
        camera_id="cam-00", zone_id="kerb", type="crowd_gathering",
        candidate_id="5d2e7f10-8c3b-4a6d-9e1f-2b3c4d5e6f70",
        source_event_id=f"cam-00:kerb:crowd_gathering:{T0.timestamp()}", started_at=T0,
        reported_at=T0, last_event_at=T0, best_confidence=0.7, dwell_s=9.0,
    )  # fmt: skip
    _saved(tmp_path, ep)
    worker, outbox = _worker(tmp_path, CROWD_SITE)
    rt = worker.cams["cam-00"]
    assert (rt.waiting, worker._written) == ({ep.key}, {ep.key: T0})
    failed = _locked_once(monkeypatch, outbox)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        worker._end_unfollowed(rt, T0 + timedelta(seconds=200))
    assert failed == ["database is locked"]
    assert (rt.waiting, worker.book, worker._written) == ({ep.key}, {ep.key: ep}, {ep.key: T0})
    assert _ops_sent(worker, "end") is None

    worker._end_unfollowed(rt, T0 + timedelta(seconds=201))  # the camera's next frame
    ended = replace(ep, ended_at=T0, reported_at=T0 + timedelta(seconds=201))
    assert (rt.waiting, worker.book, worker._written) == (set(), {ep.key: ended}, {})
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {ep.key: ended}
    assert _outbox_ops(outbox) == [("patch", ep.candidate_id)]
    assert _ops_sent(worker, "end") == 1.0


def test_a_clock_step_back_the_outbox_could_not_commit_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the test above it, the camera's clock steps an hour back with the crowd raised at
    5 s and last seen at 100 s, but ending its episode fails (the file is locked). The camera
    stays on its old clock with its rules, the next two frames take the jump again, and the
    episode ends once, still at the rules' last sighting."""
    from gridpatrol.detectors.types import Detections

    worker, outbox = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    rt = worker.cams["cam-00"]
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(101):  # a frame a second, each received at its time
        t = T0 + timedelta(seconds=k)
        assert worker._in_order(rt, t, t, "frame", b"")
        for ev in rt.pipeline.process(t, (1280, 720), person):
            worker._episode(rt, normalise_event(ev), None, person)  # type: ignore[arg-type]
    (raised,) = worker.book.values()
    rules = rt.pipeline
    back = T0 + timedelta(seconds=101) - timedelta(hours=1)

    def frame(k: int) -> bool:
        """The k-th frame after the clock stepped back, received a second after the last."""
        received = T0 + timedelta(seconds=101 + k)
        return worker._in_order(rt, back + timedelta(seconds=k), received, "frame", b"")

    failed = _locked_once(monkeypatch, outbox)
    assert not frame(0)  # held: one frame off the clock is not enough
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        frame(1)
    assert failed == ["database is locked"]
    assert (worker.book, rt.pipeline, rt.last_ts) == (
        {raised.key: raised},
        rules,
        T0 + timedelta(seconds=100),
    )
    assert not frame(2)
    assert frame(3)
    seen = T0 + timedelta(seconds=100)  # the rules' last sighting, after the raise at 5 s
    ended = replace(raised, ended_at=seen, last_event_at=seen, dwell_s=100.0)
    assert worker.book == {raised.key: ended}
    assert rt.pipeline is not rules and rt.pipeline.last_seen() == {}
    assert (rt.last_ts, rt.waiting) == (back + timedelta(seconds=3), set())
    assert _outbox_ops(outbox) == [
        ("create", raised.candidate_id),
        ("patch", raised.candidate_id),
    ]
    assert _ops_sent(worker, "end") == 1.0


def test_an_episode_its_rule_follows_again_waits_no_more(tmp_path: Path) -> None:
    """A reloaded crowd episode last seen 10 s before the crowd is back: its rule raises at
    5 s and continues it. From then on it no longer waits, and the worker forgets the
    sighting its file held for it."""
    from gridpatrol.detectors.types import Detections

    before = T0 - timedelta(seconds=10)
    ep = Episode(
        camera_id="cam-00", zone_id="kerb", type="crowd_gathering",
        candidate_id="7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
        source_event_id=f"cam-00:kerb:crowd_gathering:{before.timestamp()}",
        started_at=before - timedelta(seconds=60), reported_at=before, last_event_at=before,
        best_confidence=0.7, dwell_s=60.0,
    )  # fmt: skip
    _saved(tmp_path, ep)
    worker, outbox = _worker(tmp_path, CROWD_SITE)
    rt = worker.cams["cam-00"]
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(6):  # as _judge does with each frame
        t = T0 + timedelta(seconds=k)
        events = [normalise_event(ev) for ev in rt.pipeline.process(t, (1280, 720), person)]
        for ev in events:
            worker._episode(rt, ev, None, person)  # type: ignore[arg-type]
        if rt.waiting:
            worker._end_unfollowed(rt, t)
        if k < 5:
            assert (events, rt.waiting, worker._written) == ([], {ep.key}, {ep.key: before})
    assert [ev.kind for ev in events] == ["raise"]
    assert (rt.waiting, worker._written) == (set(), {})
    assert worker.book[ep.key].candidate_id == ep.candidate_id  # continued, not a new one
    assert outbox.depth() == 0  # within update_s of its last report: nothing to send


def test_a_waiting_sighting_is_written_at_most_once_a_second_with_update_s_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """update_s 0 (a patch with every event) would write the book, with its fsync, on every
    frame while a reloaded episode waits: the sighting is written once it moved a second on,
    which the resume window allows for."""
    from gridpatrol.detectors.episodes import Occupancy, load_book
    from gridpatrol.detectors.worker import _resume_s

    site = _zone_site("yard", "{piled_materials: {update_s: 0}}")
    at, ep = _at, PILE
    _saved(tmp_path, ep)
    worker, outbox = _worker(tmp_path, site)
    rt = worker.cams["cam-00"]
    pile: dict[tuple[str, str], Occupancy] = {}
    monkeypatch.setattr(rt.pipeline, "occupied", lambda: pile)
    steps = [(10, 10), (10.25, 10), (10.5, 10), (10.75, 10), (11, 11), (11.5, 11), (12.25, 12.25)]
    for seen_s, written_s in steps:
        pile[("yard", "piled_materials")] = Occupancy(at(10), at(seen_s))
        worker._end_unfollowed(rt, at(seen_s))
        assert (rt.waiting, worker.book[ep.key].last_event_at) == ({ep.key}, at(seen_s))
        with outbox.transaction() as txn:
            assert load_book(txn.conn)[ep.key].last_event_at == at(written_s)
        assert worker._written == {ep.key: at(written_s)}
    assert outbox.depth() == 0
    # The file is up to a second behind the sighting: the resume window has room for it.
    cam = parse_site(site).cameras[0]
    rule = cam.zone_rules(cam.zones[0])["piled_materials"]
    assert rule.update_s == 0.0
    assert _resume_s(rule) == rule.gap_s + rule.clear_s + 1.0


def test_an_unserved_cameras_refused_candidate_is_not_logged_as_ended_by_a_patch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At start the open episodes of cameras the worker no longer serves end at their last
    sighting; the end of one whose candidate a reviewer rejected is kept in the book, not
    queued, and the log says so."""
    from gridpatrol.detectors.episodes import load_book

    outbox = Outbox(tmp_path / "outbox-detect.db", None, component="detect")
    rejected = replace(
        _rejected(outbox, "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"), camera_id="cam-05"
    )
    kept = replace(
        rejected, camera_id="cam-06", candidate_id="2a3b4c5d-6e7f-4809-9a1b-2c3d4e5f6a7b"
    )
    with outbox.transaction() as txn:
        ensure_schema(txn.conn)
        save_episode(txn.conn, rejected)
        save_episode(txn.conn, kept)
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    worker, outbox = _worker(tmp_path)
    assert list(worker.cams) == ["cam-00"]
    t = T0.isoformat()
    assert sorted(caplog.messages) == [
        f"camera cam-05 is not served by this worker any more: its candidate "
        f"{rejected.candidate_id} (crowd_gathering in zone kerb) ended at its last sighting {t} "
        "in the book only (the API refused it for good: no end is sent)",
        f"camera cam-06 is not served by this worker any more: its candidate "
        f"{kept.candidate_id} (crowd_gathering in zone kerb) ended at its last sighting {t}",
    ]
    with outbox.transaction() as txn:
        book = load_book(txn.conn)
    assert (book[rejected.key].ended_at, book[kept.key].ended_at) == (T0, T0)
    assert _outbox_ops(outbox) == [
        ("patch", rejected.candidate_id),  # the refused patch, kept as failed
        ("patch", kept.candidate_id),
    ]
    assert outbox.depth() == 1


def _judge(worker: DetectorWorker, ts: datetime, received: datetime, dets: Any) -> bool:
    """One frame of cam-00 through the clock check and its rules, as _decode and _judge take
    it (without image or inference); whether it was judged."""
    rt = worker.cams["cam-00"]
    if not worker._in_order(rt, ts, received, "frame", b""):
        return False
    events = rt.pipeline.process(ts, (1280, 720), dets)
    worker._episodes(rt, ts, events, None, dets)  # type: ignore[arg-type]
    return True


def test_a_clock_jump_ahead_is_logged_by_how_far_it_outran_the_time_between_frames(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The camera's last frame was at 100 s; the next two come 60 s later by the worker's
    clock, timed 760 s and 761 s by the camera's: its clock went 600 s further ahead."""
    from gridpatrol.detectors.types import Detections

    worker, _ = _worker(tmp_path, CROWD_SITE)
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    nobody = Detections.empty()
    assert _judge(worker, _at(100), _at(100), nobody)
    assert not _judge(worker, _at(760), _at(160), nobody)  # held: one frame is not enough
    assert _judge(worker, _at(761), _at(161), nobody)
    assert caplog.messages == [
        "camera cam-00: clock went ahead 600 s more than the time between frames"
    ]


def test_frames_delivered_late_in_a_burst_are_no_clock_jump(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame a second, each received at its time, until a network stall: the frame of 10 s
    arrives at 17 s, with the one of 17 s right behind it. The camera's clock went on as the
    worker's: both are judged, and no jump is said. A step of the camera's clock 6 s ahead of
    what the quickest deliveries show is still one (held, then taken when followed)."""
    from gridpatrol.detectors.types import Detections

    worker, _ = _worker(tmp_path, CROWD_SITE)
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    nobody = Detections.empty()
    for k in range(10):
        assert _judge(worker, _at(k), _at(k), nobody)
    assert _judge(worker, _at(10), _at(17), nobody)
    assert _judge(worker, _at(17), _at(17.1), nobody)
    assert _judge(worker, _at(18), _at(18), nobody)
    assert caplog.messages == []
    assert worker.cams["cam-00"].out_of_order == 0
    assert not _judge(worker, _at(25.2), _at(19), nobody)
    assert _judge(worker, _at(26.2), _at(20), nobody)
    assert caplog.messages == [
        "camera cam-00: clock went ahead 6 s more than the time between frames"
    ]


def _crowd_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site: str, seen_s: int, until_s: int
) -> tuple[DetectorWorker, Outbox]:
    """A worker whose cam-00 sent a frame a second from 0 s until before ``until_s``, each
    received at its time, with a person in view until before ``seen_s``; evidence not
    rendered."""
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _worker(tmp_path, site)
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    for k in range(until_s):
        assert _judge(worker, _at(k), _at(k), person if k < seen_s else Detections.empty())
    return worker, outbox


def _crowd_raised_at_1005(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conn: _Conn, now: list[float]
) -> tuple[DetectorWorker, Outbox, Episode]:
    """A worker of CROWD_SITE on the clock ``now`` whose cam-00 sent a frame with a person a
    second from 0 s, each judged at 1000 s + its time: the crowd raised at 5 s (evidence not
    rendered); the open episode."""
    now[0] = 1000.0
    worker, outbox = _worker(tmp_path, CROWD_SITE, conn, lambda: now[0])
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    rt = worker.cams["cam-00"]
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(6):
        now[0] = 1000.0 + k
        assert _judge(worker, _at(k), _at(k), person)
        rt.judged_at = now[0]  # as DetectorWorker._judge does
    (raised,) = worker.book.values()
    assert raised.open
    return worker, outbox, raised


def test_a_broker_outage_ends_no_episode_and_silence_counts_from_the_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is in view when the worker's own broker connection drops for
    300 s, far beyond its rule's gap_s + clear_s (12 s): no camera's frame can arrive, so no
    camera is silent and the episode stays open. After the reconnect its silence counts from
    then: it ends only once the camera sent nothing for 12 s more."""
    now = [1000.0]
    conn = _Conn()
    worker, outbox, raised = _crowd_raised_at_1005(tmp_path, monkeypatch, conn, now)
    conn.connected = False
    now[0] += 300.0
    worker._end_silent()
    assert worker.book == {raised.key: raised}
    conn.connected, conn.connects = True, 2
    now[0] += 1.0
    worker._end_silent()  # sees the reconnect: silence counted from here
    assert worker.book == {raised.key: raised}
    now[0] += 12.0
    worker._end_silent()
    assert worker.book == {raised.key: raised}
    now[0] += 1.0
    worker._end_silent()
    ended = worker.book[raised.key]
    assert (ended.candidate_id, ended.ended_at) == (raised.candidate_id, _at(5))
    assert _outbox_ops(outbox) == [("create", raised.candidate_id), ("patch", raised.candidate_id)]


def test_a_camera_whose_frame_is_being_inferred_is_not_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The crowd raised at 5 s is in view; the camera's frame of 6 s is taken for inference
    and its result takes 20 s to come (a host far behind, or the first frame of a new input
    shape being compiled), longer than the rule's gap_s + clear_s (12 s). The camera sent that
    frame: it is not silent, and its episode stays open until the frame is judged. A result
    that has not come after IN_FLIGHT_MAX_S (60 s) is an inference stuck: said once, and the
    camera's silence counts again (its next frame, waiting behind it, says nothing), so its
    episode ends at its last sighting."""
    import cv2
    import numpy as np

    from gridpatrol.ingest.messages import FrameHeader, encode_frame
    from gridpatrol.ingest.mqtt import Message, Subscription

    now = [1000.0]
    worker, _, raised = _crowd_raised_at_1005(tmp_path, monkeypatch, _Conn(), now)
    rt = worker.cams["cam-00"]
    ok, image = cv2.imencode(".jpg", np.full((180, 320, 3), 128, np.uint8))
    assert ok
    header = FrameHeader(ts=_at(6), seq=6, camera_id="cam-00", width=320, height=180)
    sub = Subscription("gridpatrol/cameras/cam-00/frame", 0, 1)
    payload = encode_frame(header, image.tobytes())
    sub._put(Message(sub.topic_filter, payload, 0, False, _at(6), 0))
    rt.sub = sub
    now[0] = 1006.0
    source = worker._source()
    item, _ = next(source)  # taken, in the inference queue
    assert item.rt is rt and item.infer
    now[0] = 1026.0
    assert next(source) is None  # nothing else to take; the silence check has run
    assert worker.book == {raised.key: raised}
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    # The camera goes on sending: its next frame waits in its slot behind the one in inference.
    later = encode_frame(replace(header, ts=_at(7), seq=7), image.tobytes())
    sub._put(Message(sub.topic_filter, later, 0, False, _at(7), 0))
    now[0] = 1066.0
    assert next(source) is None
    assert worker.book == {raised.key: raised}
    for now[0] in (1067.0, 1068.0):
        assert next(source) is None
    assert worker.book[raised.key].ended_at == _at(5)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "camera cam-00: its frame has waited 61 s for its inference result (the model runtime "
        "stuck?); the camera's silence counts again"
    ]


def test_a_camera_whose_frame_waits_in_its_slot_is_not_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is in view; the camera's frame of 6 s came, but the processing
    thread was busy for 20 s (another camera's new input shape compiling, evidence rendered and
    written on a slow disk), longer than the rule's gap_s + clear_s (12 s), and the frame still
    waits in the camera's slot when the silence check runs. The camera is not silent: its
    episode stays open, and that frame, taken next, says whether the crowd is still there."""
    from gridpatrol.ingest.mqtt import Message, Subscription

    now = [1000.0]
    worker, _, raised = _crowd_raised_at_1005(tmp_path, monkeypatch, _Conn(), now)
    sub = Subscription("gridpatrol/cameras/cam-00/frame", 0, 1)
    sub._put(Message(sub.topic_filter, b"a frame", 0, False, _at(6), 0))
    worker.cams["cam-00"].sub = sub
    now[0] = 1026.0
    worker._end_silent()
    assert worker.book == {raised.key: raised}
    sub.get(0)  # taken, and found bad or not judged: nothing waits any more
    now[0] = 1027.0
    worker._end_silent()
    assert worker.book[raised.key].ended_at == _at(5)


def test_compiling_a_new_input_shape_is_no_part_of_a_frames_inference_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first frame of a size compiles the model for its input shape (about 0.7 s, seconds
    on a loaded host), once; its inference takes 12 ms. The latency histogram and the progress
    line's mean say 12 ms, not the compile: they would tell an operator the host is too slow.
    The compile's time is in the log, once: the next frame of that size compiles nothing."""
    import cv2
    import numpy as np

    from gridpatrol.detectors.motion import MotionSettings
    from gridpatrol.detectors.types import InferenceResult, Letterbox
    from gridpatrol.ingest.messages import FrameHeader, encode_frame
    from gridpatrol.ingest.mqtt import Message, Subscription

    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    compiled: set[tuple[int, int]] = set()

    class Compiling(_Backend):
        def input_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
            if shape not in compiled:
                compiled.add(shape)
                clock[0] += 5.0  # compiled for it
            return (192, 320)

    worker, _ = _worker(tmp_path, CROWD_SITE)
    worker.backend = Compiling()
    ok, image = cv2.imencode(".jpg", np.full((180, 320, 3), 128, np.uint8))
    assert ok
    header = FrameHeader(ts=_at(0), seq=0, camera_id="cam-00", width=320, height=180)
    sub = Subscription("gridpatrol/cameras/cam-00/frame", 0, 1)
    sub._put(Message(sub.topic_filter, encode_frame(header, image.tobytes()), 0, False, _at(0), 0))
    rt = worker.cams["cam-00"]
    rt.sub = sub
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    worker.motion_settings = MotionSettings(enabled=False)  # every frame inferred
    source = worker._source()
    for k in range(2):
        if k:
            header = replace(header, ts=_at(k), seq=k)
            sub._put(Message(sub.topic_filter, encode_frame(header, image.tobytes()), 0, False,
                             _at(k), 0))  # fmt: skip
        item, _ = next(source)
        worker.backend.input_shape(item.image.shape[:2])  # as the backend's stream prepares it
        clock[0] += 0.012
        worker._done(item, InferenceResult(Detections.empty(), {}, Letterbox(1.0, 0.0, 0.0)))
    latency = worker.metrics.registry.get_sample_value(
        "gridpatrol_detect_inference_seconds_sum", {"camera": "cam-00"}
    )
    assert latency == pytest.approx(0.024)
    assert rt.latency_s == pytest.approx(0.024)
    assert [r.getMessage() for r in caplog.records if "model" in r.getMessage()] == [
        "camera cam-00: preparing the model for a 320×180 image took 5.0 s (a new input shape "
        "compiled; not counted as inference latency)"
    ]


def test_the_metrics_say_what_a_bad_and_a_dropped_frame_are() -> None:
    """A camera whose clock runs more than 5 minutes ahead sends sound JPEGs, every one refused
    (future_ts): the help of the bad-frame counter must not send the operator after a decoder."""
    from gridpatrol.detectors.worker import Metrics

    helps = {m.name: m.documentation for m in Metrics().registry.collect()}
    assert "undecodable" in helps["gridpatrol_detect_bad_frames"]
    assert "timed ahead of their reception" in helps["gridpatrol_detect_bad_frames"]
    assert "clock jump" in helps["gridpatrol_detect_dropped_frames"]


def _sqlite_error(scratch: Path, what: str) -> Callable[[], sqlite3.Error]:
    """A maker of SQLite's own error ``what`` (with its result code), each time made anew by
    doing what fails that way on a database file in ``scratch``: "full" (a file at its largest),
    "malformed" (a page overwritten), "not a database" (a file of text), "no such table",
    "locked" (a write while another connection holds the write lock)."""
    scratch.mkdir(exist_ok=True)
    db = scratch / f"{what.replace(' ', '-')}.db"
    if what != "no such table":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE t (x BLOB)")
            conn.executemany("INSERT INTO t VALUES (?)", [(bytes(500),)] * 100)
        conn.close()
    if what == "malformed":
        data = bytearray(db.read_bytes())
        size = int.from_bytes(data[16:18], "big")  # the page size, in the file's header
        data[size : 2 * size] = b"\xff" * size  # page 2: the table's root
        db.write_bytes(bytes(data))
    elif what == "not a database":
        db.write_text("not a database\n" * 500)

    def make() -> sqlite3.Error:
        conn = sqlite3.connect(db, timeout=0)  # no busy wait: "locked" fails at once
        holder = sqlite3.connect(db, isolation_level=None)
        try:
            if what == "locked":
                holder.execute("BEGIN IMMEDIATE")  # takes the write lock, kept until closed
                conn.execute("INSERT INTO t VALUES (x'00')")
            elif what == "full":
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages}")
                conn.execute("INSERT INTO t VALUES (?)", (bytes(100_000),))
            elif what == "no such table":
                conn.execute("SELECT * FROM outbox_ops")
            else:
                conn.execute("SELECT count(*) FROM t").fetchall()
        except sqlite3.Error as exc:
            return exc
        finally:
            conn.close()
            holder.close()
        raise AssertionError(f"no {what} error")

    return make


def _failing(
    monkeypatch: pytest.MonkeyPatch, outbox: Outbox, make: Callable[[], Exception]
) -> None:
    """Every transaction of the outbox from now on fails with an error ``make`` makes."""

    def transaction() -> Any:
        raise make()

    monkeypatch.setattr(outbox, "transaction", transaction)


def _raised_crowd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: list[float]
) -> tuple[DetectorWorker, Outbox, Detections]:
    """A worker on ``now[0]`` as its clock whose cam-00, with a crowd rule updating every
    second, saw a person in a frame a second from 0 s to 5 s, when its rule raised; evidence
    not rendered. Returns the worker, its outbox and the person."""
    site = _zone_site(
        "kerb",
        "{crowd_gathering: {min_persons: 1, dwell_s: 5, gap_s: 2, clear_s: 10, update_s: 1}}",
    )
    worker, outbox = _worker(tmp_path, site, clock=lambda: now[0])
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(6):
        assert _judge(worker, _at(k), _at(k), person)
    return worker, outbox, person


def test_a_camera_clock_stepped_ahead_mid_episode_keeps_one_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The crowd raised at 5 s stays in view, a frame a second; after the frame of 20 s the
    camera's clock is stepped 129 s ahead (its next frame, received at 21 s, is timed 150 s).
    The jump is taken on the second frame on the new clock, and the rules see no gap: one
    candidate, never ended, whose dwell is the 40 s that passed, not 169 s."""
    from gridpatrol.detectors.episodes import load_book

    now = [5.0]
    worker, outbox, person = _raised_crowd(tmp_path, monkeypatch, now)
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    for k in range(6, 21):
        assert _judge(worker, _at(k), _at(k), person)
    assert not _judge(worker, _at(150), _at(21), person)  # held: one frame is not enough
    for k in range(1, 20):
        assert _judge(worker, _at(150 + k), _at(21 + k), person)
    assert caplog.messages == [
        "camera cam-00: clock went ahead 129 s more than the time between frames"
    ]
    (ep,) = worker.book.values()
    assert ep.open
    assert (ep.started_at, ep.last_event_at, ep.dwell_s) == (_at(129), _at(169), 40.0)
    ops = _outbox_ops(outbox)
    assert [kind for kind, _ in ops] == ["create"] + ["patch"] * (len(ops) - 1)
    assert {candidate for _, candidate in ops} == {ep.candidate_id}
    with outbox.transaction() as txn:
        bodies = txn.conn.execute("SELECT payload FROM outbox_ops").fetchall()
        assert not [body for (body,) in bodies if b"ended_at" in bytes(body)]
        assert load_book(txn.conn, {"cam-00"}) == {ep.key: ep}  # written on the new clock


def test_updates_a_full_disk_refuses_are_logged_once_a_minute_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s stays in view, a frame a second, its rule updating every second;
    from 6 s on the disk of the outbox file is full. Each frame's update fails: one line, no
    traceback, at 6 s and again a minute later with how many failed unlogged meanwhile."""
    now = [5.0]
    worker, outbox, person = _raised_crowd(tmp_path, monkeypatch, now)
    (raised,) = worker.book.values()
    _failing(monkeypatch, outbox, _sqlite_error(tmp_path / "scratch", "full"))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    for k in range(6, 70):
        now[0] = float(k)
        assert _judge(worker, _at(k), _at(k), person)
    assert worker.book == {raised.key: raised}
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = "camera cam-00: the update of rule crowd_gathering in zone kerb at {} was not queued "
    assert [(r.getMessage(), r.exc_info) for r in errors] == [
        (said.format(_at(6).isoformat()) + "(database or disk is full)", None),
        (
            said.format(_at(66).isoformat())
            + "(database or disk is full) (59 more such failure(s) since the last line)",
            None,
        ),
    ]


def _two_crowds(worker: DetectorWorker, now: list[float]) -> None:
    """A frame a second from 0 to 30 s, ``now[0]`` following: a crowd in view until 6 s (its
    rule raises at 5 s), nobody from 7 s to 19 s, a new crowd from 20 s (raised at 25 s)."""
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    for k in range(31):
        now[0] = float(k)
        crowd = k <= 6 or k >= 20
        assert _judge(worker, _at(k), _at(k), person if crowd else Detections.empty())


def test_each_raise_a_full_disk_refuses_is_logged_even_within_a_minute_of_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk of the outbox file is full from the start. A crowd is in view until 6 s (its
    rule raises at 5 s), nobody from 7 s to 19 s, a new crowd from 20 s to 30 s (raised at
    25 s): each raise not queued is an alarm lost, and each is logged, the second 20 s after
    the first; no failure of the one is counted with the other's."""
    now = [0.0]
    worker, outbox = _worker(tmp_path, CROWD_SITE, clock=lambda: now[0])
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    _failing(monkeypatch, outbox, _sqlite_error(tmp_path / "scratch", "full"))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    _two_crowds(worker, now)
    assert worker.book == {}
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = "camera cam-00: the raise of rule crowd_gathering in zone kerb at {} was not queued "
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in errors] == [
        (logging.ERROR, said.format(_at(5).isoformat()) + "(database or disk is full)", None),
        (logging.ERROR, said.format(_at(25).isoformat()) + "(database or disk is full)", None),
    ]


def test_each_raise_whose_rendering_fails_is_logged_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the evidence of each raise fails to render (a bug), before its open is
    tried: each lost alarm is logged with its traceback, the second within the minute of the
    first too."""
    now = [0.0]
    worker, _outbox = _worker(tmp_path, CROWD_SITE, clock=lambda: now[0])

    def render(*_args: object) -> None:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(worker, "_render", render)
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    _two_crowds(worker, now)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = "camera cam-00: the raise of rule crowd_gathering in zone kerb at {} was not queued "
    assert [(r.getMessage(), r.exc_info[0] if r.exc_info else None) for r in errors] == [
        (said.format(_at(5).isoformat()) + "(unforeseen)", RuntimeError),
        (said.format(_at(25).isoformat()) + "(unforeseen)", RuntimeError),
    ]


def test_a_bugs_traceback_is_not_kept_back_by_the_lines_of_a_full_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure of one kind at 0, 10, 60, 70 and 120 s, a full disk and a bug in turn: each
    kind is said once a minute with its own count, the bug with its traceback."""
    now = [0.0]
    worker, _outbox = _worker(tmp_path, clock=lambda: now[0])
    full = _sqlite_error(tmp_path / "scratch", "full")
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    for t, exc in ((0, full()), (10, RuntimeError("x")), (60, full()), (70, RuntimeError("y"))):
        now[0] = float(t)
        worker._failed(("judge", "cam-00"), exc, "judging failed: %s", exc)
    now[0] = 120.0
    worker._failed(("judge", "cam-00"), full(), "judging failed: %s", "again")
    said = [(r.getMessage(), r.exc_info[0] if r.exc_info else None) for r in caplog.records]
    assert said == [
        ("judging failed: database or disk is full", None),
        ("judging failed: x", RuntimeError),
        ("judging failed: database or disk is full", None),
        ("judging failed: y", RuntimeError),
        ("judging failed: again", None),
    ]


def test_an_episode_that_ended_leaves_no_trace_of_its_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates of the crowd raised at 5 s fail on a full disk from 6 s to 9 s; the disk is
    freed, and the crowd leaves: once its episode ended, when its failures were logged is
    forgotten (one entry per episode ever failed would grow without end)."""
    now = [5.0]
    worker, outbox, person = _raised_crowd(tmp_path, monkeypatch, now)
    real = outbox.transaction
    full = _sqlite_error(tmp_path / "scratch", "full")
    for k in range(6, 40):
        now[0] = float(k)
        if k == 6:
            _failing(monkeypatch, outbox, full)
        elif k == 10:
            monkeypatch.setattr(outbox, "transaction", real)
        assert _judge(worker, _at(k), _at(k), person if k < 20 else Detections.empty())
        if k == 9:  # logged at 6 s, 3 more since
            (raised,) = worker.book.values()
            assert list(worker._failures.values()) == [(6.0, 3)]
    ended = worker.book[raised.key]
    assert (ended.candidate_id, ended.ended_at) == (raised.candidate_id, _at(19))
    assert worker._failures == {}


@pytest.mark.parametrize(
    ("error", "outbox_failure"),
    [("malformed", True), ("not a database", True), ("no such table", False)],
)
def test_a_failure_of_the_outbox_file_is_told_from_a_bug_by_sqlites_result_code(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    error: str,
    outbox_failure: bool,
) -> None:
    """The crowd raised at 5 s stays in view, its rule updating every second; from 6 s on, for
    10 frames, each transaction fails. A corrupt file (DatabaseError, not OperationalError) is
    no bug: one line without a traceback, however many frames fail. A missing table is a bug,
    though its error is an OperationalError: the line carries its traceback (and, as the
    other, is not said again within the minute: a traceback per frame buried the log)."""
    now = [5.0]
    worker, outbox, person = _raised_crowd(tmp_path, monkeypatch, now)
    make = _sqlite_error(tmp_path / "scratch", error)
    message = str(make())
    _failing(monkeypatch, outbox, make)
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    for k in range(6, 16):
        now[0] = float(k)
        assert _judge(worker, _at(k), _at(k), person)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = "camera cam-00: the update of rule crowd_gathering in zone kerb at {} was not queued "
    assert [r.getMessage() for r in errors] == [said.format(_at(6).isoformat()) + f"({message})"]
    if outbox_failure:
        assert errors[0].exc_info is None
        assert "Traceback" not in caplog.text
    else:
        assert errors[0].exc_info is not None and errors[0].exc_info[1] is not None
        assert caplog.text.count("Traceback") == 1


@pytest.mark.parametrize(
    ("error", "code", "outbox_failure", "transient"),
    [
        ("locked", sqlite3.SQLITE_BUSY, True, True),
        ("full", sqlite3.SQLITE_FULL, True, True),
        ("malformed", sqlite3.SQLITE_CORRUPT, True, False),
        ("not a database", sqlite3.SQLITE_NOTADB, True, False),
        ("no such table", sqlite3.SQLITE_ERROR, False, False),
    ],
)
def test_sqlites_own_errors_are_told_by_their_result_code(
    tmp_path: Path, error: str, code: int, outbox_failure: bool, transient: bool
) -> None:
    """Each of SQLite's own errors carries its result code: a failure of the outbox file (any
    of these but a missing table, a bug) is told by it, and so is one that may pass (a file
    another process holds, a full disk), for which the operations are kept and tried again."""
    from gridpatrol.detectors.worker import _outbox_refusal, _transient

    exc = _sqlite_error(tmp_path, error)()
    assert (exc.sqlite_errorcode & 0xFF, _outbox_refusal(exc), _transient(exc)) == (
        code,
        outbox_failure,
        transient,
    )


def test_the_progress_report_sets_the_outbox_depth_and_its_size_on_disk(tmp_path: Path) -> None:
    """While the API is down the outbox file grows by the evidence of each open episode's
    updates: its size on disk (file and write-ahead log) is exported with its depth."""
    worker, outbox = _worker(tmp_path)
    with outbox.transaction() as txn:
        txn.add_evidence(b"\xff\xd8" + bytes(300_000), "image/jpeg")
    worker.report()
    db = tmp_path / "outbox-detect.db"
    size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    registry = worker.metrics.registry
    assert registry.get_sample_value("gridpatrol_detect_outbox_depth") == 1.0
    assert registry.get_sample_value("gridpatrol_detect_outbox_bytes") == float(size)
    assert size > 300_000


def test_a_camera_clock_that_went_back_while_the_worker_was_down_is_a_jump(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is still there at 100 s when the worker stops. The camera
    reboots without its clock battery meanwhile and comes back a day behind, a minute later.
    The restarted worker takes the step back as it would within a run: the reloaded episode
    ends at the last sighting its book knows (100 s, saved at stop), and the crowd still there
    is a new candidate that references it."""
    from gridpatrol.detectors.episodes import CameraClock, load_book, load_clocks
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    for k in range(101):  # a frame a second, each received at its time
        assert _judge(worker, _at(k), _at(k), person)
    worker.save_state()  # at stop
    (raised,) = worker.book.values()
    assert (raised.started_at, raised.reported_at, raised.last_event_at) == (T0, _at(5), _at(100))

    restarted, _ = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(restarted, "_render", lambda *args: ([], {"detection": {}}))
    rt = restarted.cams["cam-00"]
    assert (rt.last_ts, rt.last_received_at, rt.waiting) == (_at(100), _at(100), {raised.key})
    back = _at(160) - timedelta(days=1)
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    assert not _judge(restarted, back, _at(160), person)  # held: one frame is not enough
    assert restarted.book == {raised.key: raised}
    for k in range(1, 7):
        assert _judge(restarted, back + timedelta(seconds=k), _at(160 + k), person)
    assert "camera cam-00: clock went back 86339 s; its rules start over" in caplog.messages
    fresh = restarted.book[raised.key]
    assert (fresh.previous_id, fresh.started_at, fresh.last_event_at) == (
        raised.candidate_id,
        back + timedelta(seconds=1),
        back + timedelta(seconds=6),
    )
    assert _outbox_ops(outbox) == [
        ("create", raised.candidate_id),
        ("patch", raised.candidate_id),
        ("create", fresh.candidate_id),
    ]
    with outbox.transaction() as txn:
        book = load_book(txn.conn)
        clocks = load_clocks(txn.conn, {"cam-00"})
        (end,) = txn.conn.execute("SELECT payload FROM outbox_ops WHERE kind = 'patch'").fetchone()
    assert book == {raised.key: fresh}
    assert json.loads(end)["detection"]["ended_at"] == _at(100).isoformat()
    assert clocks == {"cam-00": CameraClock(back + timedelta(seconds=6), _at(166))}
    assert (
        f"camera cam-00: ended candidate {raised.candidate_id} (crowd_gathering in zone kerb): "
        f"not seen since {_at(100).isoformat()}"
    ) in caplog.messages


def test_a_clock_saved_before_an_older_version_ran_does_not_end_the_episode_it_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is still there at 100 s when the worker stops (its clock saved).
    An older version that keeps no clocks runs next: the camera came back a day behind, and it
    ended the episode and opened another at 166 s on that clock. Back on this version, the frames
    on the day-behind clock are no jump from the stale saved clock: the older version's episode
    goes on, no second candidate."""
    from gridpatrol.detectors.episodes import CameraClock, load_clocks
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=101, until_s=101)
    worker.save_state()  # at stop
    (first,) = worker.book.values()
    day = timedelta(days=1)
    second = replace(
        first, candidate_id="0b7c9e4a-2d1f-4e3b-8a6c-5f4e3d2c1b0a", previous_id=first.candidate_id,
        source_event_id=f"cam-00:kerb:crowd_gathering:{(_at(161) - day).timestamp()}",
        started_at=_at(161) - day, reported_at=_at(166) - day, last_event_at=_at(166) - day,
        dwell_s=5.0,
    )  # fmt: skip
    with outbox.transaction() as txn:  # as the older version wrote them: no clock_kept
        for ep in (replace(first, ended_at=first.last_event_at), second):
            txn.conn.execute(
                "INSERT OR REPLACE INTO detector_episodes (camera_id, zone_id, type, "
                "candidate_id, source_event_id, started_at, reported_at, last_event_at, "
                "best_confidence, dwell_s, previous_id, ended_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ep.camera_id, ep.zone_id, ep.type, ep.candidate_id, ep.source_event_id,
                    ep.started_at.timestamp(), ep.reported_at.timestamp(),
                    ep.last_event_at.timestamp(), ep.best_confidence, ep.dwell_s, ep.previous_id,
                    None if ep.ended_at is None else ep.ended_at.timestamp(),
                ),
            )  # fmt: skip

    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    restarted, _ = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(restarted, "_render", lambda *args: ([], {"detection": {}}))
    rt = restarted.cams["cam-00"]
    assert (rt.last_ts, rt.waiting) == (None, {second.key})
    assert (
        "camera cam-00: an older version wrote its episodes after its last frame time was saved; "
        "that time is not used (a clock step back meanwhile is not seen)"
    ) in caplog.messages
    for k in range(200, 211):
        assert _judge(restarted, _at(k) - day, _at(k), person)
    assert restarted.book == {
        second.key: replace(second, last_event_at=_at(205) - day, dwell_s=44.0)  # the raise
    }
    assert _outbox_ops(outbox) == [("create", first.candidate_id)]
    restarted.save_state()
    with outbox.transaction() as txn:
        assert load_clocks(txn.conn, {"cam-00"}) == {
            "cam-00": CameraClock(_at(210) - day, _at(210))
        }


def test_an_upgrade_from_a_version_that_kept_clocks_but_not_the_mark_keeps_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is still there at 100 s when a version that saved clocks but had
    no clock_kept column stops. The upgraded worker takes its saved clock, without a warning,
    and continues the episode."""
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=101, until_s=101)
    worker.save_state()  # at stop
    (raised,) = worker.book.values()
    with outbox.transaction() as txn:  # the file as that version left it
        txn.conn.execute("ALTER TABLE detector_episodes DROP COLUMN clock_kept")

    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    restarted, _ = _worker(tmp_path, CROWD_SITE)
    monkeypatch.setattr(restarted, "_render", lambda *args: ([], {"detection": {}}))
    rt = restarted.cams["cam-00"]
    assert (rt.last_ts, rt.last_received_at, rt.waiting) == (_at(100), _at(100), {raised.key})
    assert [m for m in caplog.messages if "older version" in m] == []
    for k in range(101, 112):
        assert _judge(restarted, _at(k), _at(k), person)
    assert restarted.book == {raised.key: replace(raised, last_event_at=_at(106), dwell_s=106.0)}
    assert _outbox_ops(outbox) == [("create", raised.candidate_id)]


def test_a_clear_the_outbox_could_not_commit_ends_the_episode_with_the_next_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is last seen at 29 s; its rule clears it at 39 s (clear_s 10),
    but the file is locked, still when the frame's waiting episodes are looked at. No event of
    the rule follows, and the camera keeps sending: the next frame ends the episode, at its last
    sighting, once."""
    from gridpatrol.detectors.episodes import load_book
    from gridpatrol.detectors.types import Detections

    nobody = Detections.empty()
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=30, until_s=39)
    rt = worker.cams["cam-00"]
    (raised,) = worker.book.values()
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox, times=2)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        _judge(worker, _at(39), _at(39), nobody)  # the clear, then the waiting ending
    assert failed == ["database is locked"] * 2
    assert _outbox_failures(caplog) == [
        (
            logging.ERROR,
            "camera cam-00: the clear of rule crowd_gathering in zone kerb at "
            f"{_at(39).isoformat()} was not queued (database is locked)",
            None,
        )
    ]
    assert (worker.book, rt.waiting, rt.ending) == (
        {raised.key: raised},
        {raised.key},
        {raised.key: _at(29)},
    )
    assert (
        f"camera cam-00: ending candidate {raised.candidate_id} (crowd_gathering in zone kerb) "
        "was not queued; it is tried again with the waiting episodes"
    ) in caplog.messages
    for k in range(40, 400):
        assert _judge(worker, _at(k), _at(k), nobody)
    seen = _at(29)
    ended = replace(raised, ended_at=seen, last_event_at=seen, reported_at=_at(40), dwell_s=29.0)
    assert (worker.book, rt.waiting, rt.ending) == ({raised.key: ended}, set(), {})
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {raised.key: ended}
        (end,) = txn.conn.execute("SELECT payload FROM outbox_ops WHERE kind = 'patch'").fetchone()
    assert _outbox_ops(outbox) == [("create", raised.candidate_id), ("patch", raised.candidate_id)]
    detection = json.loads(end)["detection"]
    assert (detection["ended_at"], detection["dwell_s"]) == (_at(29).isoformat(), 29.0)
    assert _ops_sent(worker, "end") == 1.0
    assert (
        f"camera cam-00: ended candidate {raised.candidate_id} (crowd_gathering in zone kerb): "
        f"not seen since {_at(29).isoformat()}"
    ) in caplog.messages


TWO_ZONE_SITE = (
    _zone_site(
        "kerb",
        "{crowd_gathering: {min_persons: 1, dwell_s: 5, gap_s: 2, clear_s: 10, update_s: 120}}",
    )
    + """      - id: kerb2
        polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]
        rules: {crowd_gathering: {min_persons: 1, dwell_s: 5, gap_s: 2, clear_s: 10, update_s: 120}}
"""
)


def test_a_camera_silent_after_a_clear_not_queued_ends_the_episode_at_the_clears_sighting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is last seen at 29 s; its clear at 39 s and the ending tried
    after it meet a locked file, and the camera sends nothing more: the silent-camera check
    ends the episode at 29 s, the clear's last sighting, not at the raise the book knows."""
    from gridpatrol.detectors.types import Detections

    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=30, until_s=39)
    rt = worker.cams["cam-00"]
    (raised,) = worker.book.values()
    assert raised.last_event_at == _at(5)
    _locked_once(monkeypatch, outbox, times=2)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        _judge(worker, _at(39), _at(39), Detections.empty())
    assert rt.ending == {raised.key: _at(29)}
    worker._end_silent_camera(rt, 1e6)
    seen = _at(29)
    ended = replace(raised, ended_at=seen, last_event_at=seen, reported_at=_at(39), dwell_s=29.0)
    assert (worker.book, rt.waiting, rt.ending) == ({raised.key: ended}, set(), {})
    with outbox.transaction() as txn:
        (end,) = txn.conn.execute("SELECT payload FROM outbox_ops WHERE kind = 'patch'").fetchone()
    detection = json.loads(end)["detection"]
    assert (detection["ended_at"], detection["dwell_s"]) == (_at(29).isoformat(), 29.0)


def test_two_clears_in_one_frame_each_end_their_episode_when_the_first_is_not_queued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two zones see the same crowd from 0 s to 29 s; both rules clear it at 39 s. The first
    clear meets a locked file: the second clear is still queued in that frame, and the first
    ending waits and is queued with the frame's waiting episodes. Each ends once, at 29 s."""
    from gridpatrol.detectors.types import Detections

    nobody = Detections.empty()
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, TWO_ZONE_SITE, seen_s=30, until_s=39)
    rt = worker.cams["cam-00"]
    kerb, kerb2 = (worker.book[("cam-00", z, "crowd_gathering")] for z in ("kerb", "kerb2"))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox)
    assert _judge(worker, _at(39), _at(39), nobody)  # both clears
    assert failed == ["database is locked"]
    for k in range(40, 60):
        assert _judge(worker, _at(k), _at(k), nobody)
    seen = _at(29)
    assert worker.book == {
        kerb.key: replace(
            kerb, ended_at=seen, last_event_at=seen, reported_at=_at(39), dwell_s=29.0
        ),
        kerb2.key: replace(
            kerb2, ended_at=seen, last_event_at=_at(39), reported_at=_at(39), dwell_s=29.0
        ),
    }
    assert (rt.waiting, rt.ending) == (set(), {})
    assert _outbox_ops(outbox) == [
        ("create", kerb.candidate_id),
        ("create", kerb2.candidate_id),
        ("patch", kerb2.candidate_id),
        ("patch", kerb.candidate_id),
    ]
    assert _ops_sent(worker, "end") == 2.0
    assert _outbox_failures(caplog) == [
        (
            logging.ERROR,
            "camera cam-00: the clear of rule crowd_gathering in zone kerb at "
            f"{_at(39).isoformat()} was not queued (database is locked)",
            None,
        )
    ]


def test_a_raise_the_outbox_could_not_take_is_opened_by_the_rules_next_update(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd's raise at 5 s meets a locked file: nothing is queued, nor kept to be tried
    again with the next frames. The rule's next update, at 125 s (update_s 120), opens the
    candidate, once, from the crowd's first sighting; the clear ends it."""
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=5, until_s=5)
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox)
    assert _judge(worker, _at(5), _at(5), person)  # the raise
    assert failed == ["database is locked"]
    assert _outbox_failures(caplog) == [
        (
            logging.ERROR,
            "camera cam-00: the raise of rule crowd_gathering in zone kerb at "
            f"{_at(5).isoformat()} was not queued (database is locked)",
            None,
        )
    ]
    for k in range(6, 125):
        assert _judge(worker, _at(k), _at(k), person)
    assert (worker.book, _outbox_ops(outbox)) == ({}, [])
    assert _judge(worker, _at(125), _at(125), person)  # the rule's next update
    (opened,) = worker.book.values()
    assert (opened.started_at, opened.reported_at, opened.last_event_at, opened.ended_at) == (
        T0,
        _at(125),
        _at(125),
        None,
    )
    for k in range(126, 200):
        assert _judge(worker, _at(k), _at(k), person if k < 150 else Detections.empty())
    assert worker.book[opened.key].ended_at == _at(149)
    assert _outbox_ops(outbox) == [
        ("create", opened.candidate_id),
        ("patch", opened.candidate_id),
    ]
    assert (_ops_sent(worker, "open"), _ops_sent(worker, "end")) == (1.0, 1.0)


def _locked_until_released(monkeypatch: pytest.MonkeyPatch, outbox: Outbox) -> list[bool]:
    """The outbox file is locked until the test sets the returned flag's item to False."""
    real = outbox.transaction
    error = _lock_error(outbox)
    locked = [True]

    def transaction() -> Any:
        if locked[0]:
            raise error()
        return real()

    monkeypatch.setattr(outbox, "transaction", transaction)
    return locked


@pytest.mark.parametrize("raise_queued", [True, False])
def test_a_raise_after_a_clear_not_queued_ends_that_episode_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raise_queued: bool
) -> None:
    """A crowd seen from 0 s to 29 s is cleared at 39 s, when the file is locked, and stays
    locked until a second crowd, from 50 s, raises at 55 s. The first episode ends at 29 s and
    the second crowd is a candidate of its own that references it, in one transaction: the
    raise does not continue the episode its rule had cleared. When the file is still locked
    for the raise, the ending still waits: the next frame ends the episode at 29 s, and the
    rule's next update (175 s) opens the second candidate."""
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=30, until_s=39)
    rt = worker.cams["cam-00"]
    (first,) = worker.book.values()

    def render(rt: Any, op: Op, *args: Any) -> Any:  # an end's body as the worker renders it
        return [], {"detection": worker._end_block(op.episode) if op.kind == "end" else {}}

    monkeypatch.setattr(worker, "_render", render)
    locked = _locked_until_released(monkeypatch, outbox)
    unlocked_at = 55 if raise_queued else 56
    for k in range(39, unlocked_at):  # the waiting ending fails with each frame (logged)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            _judge(worker, _at(k), _at(k), person if k >= 50 else Detections.empty())
    assert (worker.book, rt.waiting, rt.ending) == (
        {first.key: first},
        {first.key},
        {first.key: _at(29)},
    )
    locked[0] = False
    for k in range(unlocked_at, 56 if raise_queued else 176):  # to the raise, or the update
        assert _judge(worker, _at(k), _at(k), person)
    second = worker.book[first.key]
    assert (second.started_at, second.previous_id, second.ended_at) == (
        _at(50),
        first.candidate_id,
        None,
    )
    assert (rt.waiting, rt.ending) == (set(), {})
    assert _outbox_ops(outbox) == [
        ("create", first.candidate_id),
        ("patch", first.candidate_id),
        ("create", second.candidate_id),
    ]
    with outbox.transaction() as txn:
        (payload,) = txn.conn.execute(
            "SELECT payload FROM outbox_ops WHERE kind = 'patch'"
        ).fetchone()
    detection = json.loads(payload)["detection"]
    assert (detection["ended_at"], detection["dwell_s"]) == (_at(29).isoformat(), 29.0)
    assert (_ops_sent(worker, "open"), _ops_sent(worker, "end")) == (2.0, 1.0)


@pytest.mark.parametrize("how", ["camera silent", "clock stepped back"])
def test_an_episode_whose_clear_was_not_queued_ends_at_its_own_last_sighting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A crowd seen from 0 s to 29 s is cleared at 39 s and a second crowd, from 50 s, raises
    at 55 s, both while the file is locked (until 69 s). The first episode then ends, as the
    camera falls silent or its clock steps back an hour, at 29 s: the second crowd's sightings
    are not the first episode's."""
    from gridpatrol.detectors.types import Detections

    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    worker, outbox = _crowd_seen(tmp_path, monkeypatch, CROWD_SITE, seen_s=30, until_s=39)
    rt = worker.cams["cam-00"]
    (first,) = worker.book.values()
    monkeypatch.setattr(
        worker, "_render", lambda rt, op, *a: ([], {"detection": worker._end_block(op.episode)})
    )
    locked = _locked_until_released(monkeypatch, outbox)
    for k in range(39, 70):
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            _judge(worker, _at(k), _at(k), person if k >= 50 else Detections.empty())
    assert rt.ending == {first.key: _at(29)}
    locked[0] = False
    if how == "camera silent":
        worker._end_silent_camera(rt, 1e6)
    else:
        for k in (70, 71):  # the second frame of the step back takes it
            _judge(worker, _at(k - 3600), _at(k), Detections.empty())
    ended = worker.book[first.key]
    assert (ended.candidate_id, ended.ended_at, ended.dwell_s) == (
        first.candidate_id,
        _at(29),
        29.0,
    )
    assert _outbox_ops(outbox) == [("create", first.candidate_id), ("patch", first.candidate_id)]


def _state_save_fails(worker: DetectorWorker, outbox: Outbox, monkeypatch: Any) -> list[str]:
    """cam-00 has a background model of zone yard and a clock; saving them meets a locked file."""
    rt = worker.cams["cam-00"]
    monkeypatch.setattr(rt.pipeline, "backgrounds", lambda: {("yard", 600.0): object()})
    rt.last_ts = rt.last_received_at = T0
    return _locked_once(monkeypatch, outbox)


STATE_SAVE_FAILED = (
    "detect: saving the last frame times and background models of camera cam-00 (zones yard) "
    "failed; the outbox file keeps those saved before"
)


def test_a_state_save_that_fails_is_logged_and_the_frames_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minutely save runs inside the frame source: a failure must not reach the inference
    stream (which would restart, losing the frames in flight), only the log."""
    import time

    from gridpatrol.detectors.worker import BACKGROUND_SAVE_S

    worker, outbox = _worker(tmp_path, PILE_SITE)
    failed = _state_save_fails(worker, outbox, monkeypatch)
    worker._last_save = time.monotonic() - BACKGROUND_SAVE_S  # a minute since the last save
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    worker._progress()
    assert failed == ["database is locked"]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == [STATE_SAVE_FAILED]
    assert errors[0].exc_info is not None and "database is locked" in str(errors[0].exc_info[1])


class _ServeConn:
    """The broker connection as _serve drives it, its calls recorded."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        # Named in the line saying it connects.
        self.settings = SimpleNamespace(url="mqtt://127.0.0.1:1883")

    def on_refused(self, hook: object) -> None:
        pass

    def start(self, stop: threading.Event | None = None) -> bool:
        self.calls.append("connect")
        return True

    def stop(self) -> None:
        self.calls.append("disconnect")


def test_a_stop_whose_report_and_save_fail_still_drains_the_outbox_and_exits_0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After SIGTERM the final report and save fail (the file locked, unreadable): the outbox
    still gets its 5 s to drain and stops, the broker connection says offline, the model is
    closed, and the exit status is 0, each failure one logged line."""
    import argparse

    from gridpatrol.detectors import worker as worker_module

    worker, outbox = _worker(tmp_path, PILE_SITE)
    calls: list[str] = []
    monkeypatch.setattr(worker_module, "stop_on_signals", lambda *args: None)
    monkeypatch.setattr(worker, "run", lambda: calls.append("run"))
    monkeypatch.setattr(outbox, "start", lambda: calls.append("outbox start"))
    monkeypatch.setattr(outbox, "flush", lambda timeout: calls.append(f"flush {timeout}") or True)
    monkeypatch.setattr(outbox, "stop", lambda: calls.append("outbox stop"))

    def unreadable() -> int:
        # No real I/O error can be made on demand: SQLite's own, with its result code.
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorcode, exc.sqlite_errorname = sqlite3.SQLITE_IOERR, "SQLITE_IOERR"
        raise exc

    monkeypatch.setattr(outbox, "depth", unreadable)
    failed = _state_save_fails(worker, outbox, monkeypatch)

    class Backend:
        def close(self) -> None:
            calls.append("close model")

    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    conn = _ServeConn(calls)
    status = worker_module._serve(worker, Backend(), conn, argparse.Namespace())  # type: ignore[arg-type]
    assert status == 0
    assert failed == ["database is locked"]
    assert calls == [
        "connect", "outbox start", "run", "flush 5.0", "outbox stop", "disconnect", "close model",
    ]  # fmt: skip
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [
        "detect: the progress report failed",
        STATE_SAVE_FAILED,
        "detect: reading the outbox depth failed",
    ]
    assert caplog.messages[-1] == (
        "detect: stopped (outbox flushed, ? operation(s) left for the next start)"
    )


@pytest.mark.parametrize(("before_s", "late_s"), [(0, 0), (3600, 830)])
def test_first_seen_of_a_six_hour_dwell_is_within_a_ring_interval_of_the_start(
    tmp_path: Path, before_s: int, late_s: int
) -> None:
    """A pile with dwell_s 6 h opens its episode 6 h after the occupancy began: the camera's
    frame ring reaches back past that start (dwell + gap + 30 s, no cap below the dwell), so
    first_seen is the ring's first frame at or after it. Its 24 frames thin out evenly, 20 of
    them over the horizon (1082.5 s apart here): the ring's oldest frame is never thinned,
    so a camera that began at the start keeps that very frame; one that ran an hour before
    keeps one 830 s after it."""
    from gridpatrol.detectors.evidence import StoredFrame
    from gridpatrol.detectors.worker import RING_FRAMES

    worker, _ = _worker(tmp_path, _zone_site("yard", "{piled_materials: {dwell_s: 21600}}"))
    ring = worker.cams["cam-00"].ring
    for s in range(-before_s, 21600 + 1, 10):
        ring.add(StoredFrame(_at(s), b"jpeg", 1920, 1080))
    first = ring.at(_at(0))
    assert first is not None and first.t == _at(late_s)
    assert (ring.capacity, ring.keep_recent, ring.horizon_s) == (RING_FRAMES, 4, 21650.0)
    assert late_s < ring.horizon_s / (RING_FRAMES - ring.keep_recent)


def test_the_worker_clock_stepping_back_moves_no_episode_ahead_of_its_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The crowd raised at 5 s stays until before 40 s, a frame a second; from 21 s on the
    worker's own clock is 60 s back, so every frame is received 60 s before its time, as if
    the camera's clock had stepped 60 s ahead. Its frames' times went on a second at a time:
    nothing moves ahead of them. The episode keeps its start, and each of its events (its
    updates and its end) has a dwell of 0 or more, first seen at its start; the end's is 39 s."""
    now = [5.0]
    worker, _, person = _raised_crowd(tmp_path, monkeypatch, now)
    sent: list[tuple[str, datetime, datetime, float]] = []

    def render(rt: Any, op: Op, ev: Any, *args: Any) -> tuple[list[Any], dict[str, Any]]:
        sent.append((op.kind, op.episode.started_at, ev.first_seen, ev.dwell_s))
        return [], {"detection": {}}

    monkeypatch.setattr(worker, "_render", render)
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    for k in range(6, 21):
        assert _judge(worker, _at(k), _at(k), person)
    assert not _judge(worker, _at(21), _at(21 - 60), person)  # held: one frame is not enough
    for k in range(22, 60):
        assert _judge(worker, _at(k), _at(k - 60), person if k < 40 else Detections.empty())
        (ep,) = worker.book.values()
        assert ep.started_at == _at(0)
    assert (ep.open, ep.ended_at, ep.dwell_s) == (False, _at(39), 39.0)
    assert [kind for kind, *_ in sent] == ["update"] * (len(sent) - 1) + ["end"]
    assert [(started, first) for _, started, first, _ in sent] == [(_at(0), _at(0))] * len(sent)
    assert [dwell for *_, dwell in sent if dwell < 0] == []
    assert sent[-1][3] == 39.0
    assert caplog.messages == [
        "camera cam-00: clock went ahead 60 s more than the time between frames",
        "camera cam-00: its stored times move only 0 s, as far as its frames went (2 s ahead)",
    ]


def test_frames_lost_after_a_camera_clock_step_do_not_cut_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crowd seen from 0 s, a frame a second (its rule clears after 30 s); after the frame
    of 20 s the camera's clock steps 8 s ahead (its next frame, received at 21 s, is timed
    29 s), and the frames received from 22 s to 30 s are lost. The step counts in full: the
    episode moves 8 s ahead, its start 8 s, its end's dwell the 39 s the person stayed."""
    site = _zone_site(
        "kerb",
        "{crowd_gathering: {min_persons: 1, dwell_s: 5, gap_s: 2, clear_s: 30, update_s: 1}}",
    )
    worker, _ = _worker(tmp_path, site, clock=lambda: 0.0)
    monkeypatch.setattr(worker, "_render", lambda *args: ([], {"detection": {}}))
    person = Detections.from_arrays([[100, 100, 200, 400]], [0.9], [0])
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    for k in range(21):
        assert _judge(worker, _at(k), _at(k), person)
    assert not _judge(worker, _at(29), _at(21), person)  # held: one frame is not enough
    for k in range(31, 80):
        assert _judge(worker, _at(k + 8), _at(k), person if k < 40 else Detections.empty())
    (ep,) = worker.book.values()
    assert (ep.open, ep.started_at, ep.ended_at, ep.dwell_s) == (False, _at(8), _at(47), 39.0)
    assert caplog.messages == [
        "camera cam-00: clock went ahead 8 s more than the time between frames"
    ]


def test_a_sparse_cameras_frames_move_nothing_when_the_workers_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame every 10 s until 200 s; the worker's own clock steps 8 s back, so the next two
    frames (210 s and 220 s) are received at 202 s and 212 s: their times went no further than
    the frames' interval, so nothing moves (a leeway of a frame interval took the 8 s whole)."""
    worker, _ = _worker(tmp_path, CROWD_SITE)
    shifts: list[float] = []
    monkeypatch.setattr(worker, "_shift", lambda rt, ahead_s: shifts.append(ahead_s))
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    nobody = Detections.empty()
    for k in range(0, 201, 10):
        assert _judge(worker, _at(k), _at(k), nobody)
    assert not _judge(worker, _at(210), _at(202), nobody)  # held: one frame is not enough
    assert _judge(worker, _at(220), _at(212), nobody)
    assert [s for s in shifts if s > 0] == []
    assert caplog.messages[-1] == (
        "camera cam-00: its stored times move only 0 s, as far as its frames went (20 s ahead)"
    )


def test_a_camera_clock_step_received_with_jitter_is_taken_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame a second until 20 s; the camera's clock steps 30 s ahead, its next two frames
    (51 s and 52 s) received 50 ms off their second (21.05 s and 21.95 s): the step is taken
    as the receptions show it, in one line."""
    worker, _ = _worker(tmp_path, CROWD_SITE)
    shifts: list[float] = []
    monkeypatch.setattr(worker, "_shift", lambda rt, ahead_s: shifts.append(ahead_s))
    caplog.set_level(logging.WARNING, logger="gridpatrol.detectors.worker")
    nobody = Detections.empty()
    for k in range(21):
        assert _judge(worker, _at(k), _at(k), nobody)
    assert not _judge(worker, _at(51), _at(21.05), nobody)  # held: one frame is not enough
    assert _judge(worker, _at(52), _at(21.95), nobody)
    assert shifts == [pytest.approx(30.05)]
    assert caplog.messages == [
        "camera cam-00: clock went ahead 30 s more than the time between frames"
    ]


class _Lettering(_Conn):
    """An up connection that takes every dead letter."""

    def max_payload(self, topic: str, qos: int) -> int:
        return 1 << 20

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        return True


def test_a_camera_whose_every_frame_is_refused_is_silent_however_fast_they_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crowd raised at 5 s is in view; then every frame the camera sends is refused (here
    undecodable), and it sends them faster than the worker's passes over its cameras: each
    time one is taken, the next is already there, so one always waits in the slot when the
    silence check runs. No frame of the camera is judged: its episode ends at its last
    sighting once none was for the rule's gap_s + clear_s (12 s), as a camera sending none."""
    from gridpatrol.ingest.mqtt import Message, Subscription

    now = [1000.0]
    worker, _, raised = _crowd_raised_at_1005(tmp_path, monkeypatch, _Lettering(), now)

    class Flooding(Subscription):
        def get(self, timeout: float | None = None) -> Message | None:
            message = super().get(timeout)
            self._put(Message(self.topic_filter, b"a frame", 0, False, _at(now[0] - 1000), 0))
            return message

    sub = Flooding("gridpatrol/cameras/cam-00/frame", 0, 1, wake=worker._wake)
    sub._put(Message(sub.topic_filter, b"a frame", 0, False, _at(6), 0))
    worker.cams["cam-00"].sub = sub
    source = worker._source()
    for k in range(6, 30):
        now[0] = 1000.0 + k
        assert next(source) is None  # a bad frame taken, and the silence checked
    ended = worker.book[raised.key]
    assert (ended.candidate_id, ended.ended_at) == (raised.candidate_id, _at(5))
