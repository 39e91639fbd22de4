"""Detector benchmark (issue 4, requirement 9): one run, ratios measured in the same run.

    .venv/bin/python bench/detector.py [--quick] [--json] [--cameras 8]

Frames: 1280×720 JPEG (quality 85) frames of the shared footage.

- ``raw_fps``: the OpenVINO runtime alone on prepared (letterboxed) tensors, throughput mode,
  ``AsyncInferQueue`` with the device's optimal number of requests and with one more (the
  worker's), alternately, the faster of the two counting; with the input the worker uses:
  640×384, the smallest stride multiple that holds a 16:9 frame (``--square-input``: 640×640
  everywhere). Measured before and after
  the pipeline phase (the machine is shared, so the mean of the two is the reference and both
  are printed). ``raw_square_fps``: the same on the square 640×640 input, for the record.
- ``ultralytics_fps``: the Ultralytics predictor (``YOLO(folder, task="detect")``) on the same
  JPEG frames, decoded in the loop at full size, as a user of it would. The export has a fixed
  640×640 input, so the predictor letterboxes every frame to the square.
- ``pipeline_fps``: the full worker path: JPEG frame envelopes published over MQTT (by the
  minimal client in ``bench/rawmqtt.py``, so the publisher takes little CPU) to a private
  Mosquitto, ``gridpatrol detect`` (motion gate off) decoding, inferring, tracking, judging a
  low-threshold ``crowd_gathering`` zone per camera and posting candidates with evidence through
  its outbox to a real ``gridpatrol api`` on a temporary SQLite database. Frames are offered
  faster than the worker can take them (it keeps the newest per camera); throughput is read
  from the worker's Prometheus counters over a window after warm-up, in which the candidates
  (raised in the warm-up) are updated with fresh evidence every 5 s
  (``pipeline_candidate_ops``); a run in which a camera raised no candidate stops, as no
  end-to-end figure.
- ``inferred_fraction``: the same worker with the motion gate on over static footage (one real
  frame with fresh sensor noise and JPEG re-encoding per frame): an empty car park for the first
  half, then the crowded street; every camera must still raise its crowd candidate, which
  appears only with the second scene (stationary objects keep their dwell through keyframes).
- ``rss_mb``: the worker's resident memory while serving the cameras, read at the end of the
  pipeline window; ``rss_peak_mb`` its peak since start (``VmHWM``: start-up, model compilation
  and the warm-up's candidates with their evidence included).
- ``pipeline_cpu_ms_per_frame``: CPU milliseconds per inferred frame during the pipeline window,
  for the worker, the API, this process (the publisher), the rest (broker, system) and the
  cores' idle time, from ``/proc``; ``raw_cpu_ms_per_frame`` is the runtime alone's (all cores
  for ``1 / raw_fps``). Their difference is what the pipeline spends beside inference.
- ``decode_infer_stream_fps``: JPEG decoding and inference alone, streamed through the backend
  on the worker's frames (no MQTT, tracking or rules), and ``decode_infer_stream_over_raw`` its
  ratio to the runtime alone on the same frames measured in alternating slices: the ceiling of
  ``pipeline / raw`` for a worker that decodes on the same cores.

``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import yaml
from rawmqtt import RawPublisher

from gridpatrol.ingest.broker import free_port

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRIDPATROL_SHARED", REPO.parent / "shared"))
FOOTAGE = SHARED / "footage"
MODEL = SHARED / "models" / "yolo11n_int8_openvino_model"
SIZE = (1280, 720)
TOKENS = {"producer": "bench-producer-0123456789", "reviewer": "bench-reviewer-0123456789"}


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- frames ------------------------------------------------------------------------------------


def encode(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf.tobytes())


def street_jpegs(count: int) -> list[bytes]:
    """The busy pedestrian street (the crowd the zones look for), 1280×720."""
    cap = cv2.VideoCapture(str(FOOTAGE / "pedestrian_street_1080p.mp4"))
    out: list[bytes] = []
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(encode(cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA)))
        for _ in range(2):  # 10 fps of a 30 fps clip: real motion between frames
            cap.grab()
    cap.release()
    return out


def static_jpegs(
    count: int, seed: int = 7, clip: str = "pedestrian_street_1080p.mp4"
) -> list[bytes]:
    """One real frame (the street's first), re-encoded with fresh sensor noise each time: a
    static scene."""
    cap = cv2.VideoCapture(str(FOOTAGE / clip))
    ok, frame = cap.read()
    cap.release()
    assert ok
    base = cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA).astype(np.int16)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        noisy = np.clip(base + rng.normal(0, 2.0, base.shape), 0, 255).astype(np.uint8)
        out.append(encode(noisy))
    return out


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    assert image is not None
    return np.asarray(image)


# --- runtime alone, Ultralytics ----------------------------------------------------------------


def open_backend(jpegs: list[bytes], rect: bool) -> tuple[Any, list[np.ndarray]]:
    """The OpenVINO backend the worker uses, warmed up, and the frames as prepared tensors."""
    from gridpatrol.detectors.models import load_backend, resolve_model
    from gridpatrol.detectors.openvino_backend import OpenVinoBackend

    backend = load_backend(resolve_model(str(MODEL)), rect=rect)
    assert isinstance(backend, OpenVinoBackend)
    tensors = [backend.prepare(decode(j)).tensor for j in jpegs]
    backend.raw(tensors[: backend.requests * 2])  # warm-up
    return backend, tensors


def measure_raw(
    jpegs: list[bytes], seconds: float, rect: bool, details: bool = True
) -> dict[str, Any]:
    backend, tensors = open_backend(jpegs, rect)
    # The device's optimal number of requests and the backend's (one spare more), alternately
    # in slices of about a second so that drift affects both alike; the faster is the ceiling.
    counts = sorted({backend.device_requests, backend.requests})
    done, elapsed = dict.fromkeys(counts, 0), dict.fromkeys(counts, 0.0)
    while sum(elapsed.values()) < seconds * len(counts):
        for n in counts:
            started = time.perf_counter()
            done[n] += backend.raw(tensors, repeat=max(1, 100 // len(tensors)), requests=n)
            elapsed[n] += time.perf_counter() - started
    by_requests = {n: done[n] / elapsed[n] for n in counts}
    best = max(counts, key=lambda n: by_requests[n])
    shape = "x".join(str(d) for d in reversed(tensors[0].shape[1:3]))
    base = {
        "fps": by_requests[best],
        "requests": best,
        "fps_by_requests": by_requests,
        "input": shape,
    }
    if not details:
        backend.close()
        return base
    # The caller-side cost per frame (decode at half scale + letterbox), for the record.
    cpu0 = time.thread_time()
    for j in jpegs:
        backend.prepare(decode(j))
    prep_ms = 1000 * (time.thread_time() - cpu0) / len(jpegs)
    backend.close()
    return {**base, "prepare_cpu_ms": prep_ms}


def measure_stream(jpegs: list[bytes], seconds: float, rect: bool) -> dict[str, float]:
    """Decode + infer streamed through ``backend.stream`` (the worker's inference path without
    MQTT, tracking or rules; the queue never drains), alternating in slices of about a second
    with the runtime alone on the same frames, so that both see the same drift."""
    backend, tensors = open_backend(jpegs, rect)
    frames = max(len(jpegs), 100)
    done = {"stream": 0, "raw": 0}
    elapsed = {"stream": 0.0, "raw": 0.0}
    while sum(elapsed.values()) < seconds * 2:
        started = time.perf_counter()
        items = ((k, decode(jpegs[k % len(jpegs)])) for k in range(frames))
        done["stream"] += sum(1 for _ in backend.stream(items))
        elapsed["stream"] += time.perf_counter() - started
        started = time.perf_counter()
        done["raw"] += backend.raw(tensors, repeat=max(1, frames // len(tensors)))
        elapsed["raw"] += time.perf_counter() - started
    backend.close()
    stream, raw = done["stream"] / elapsed["stream"], done["raw"] / elapsed["raw"]
    return {"fps": stream, "raw_fps": raw, "over_raw": stream / raw}


def by(raw: dict[str, Any]) -> str:
    """The raw rates per number of infer requests, for the progress lines."""
    return ", ".join(f"{f:.1f} with {n} requests" for n, f in raw["fps_by_requests"].items())


def measure_ultralytics(jpegs: list[bytes], seconds: float) -> float:
    from ultralytics.models.yolo.model import YOLO

    model: Any = YOLO(str(MODEL), task="detect")
    first = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    model.predict(first, verbose=False)  # warm-up: builds the predictor, compiles the model
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for j in jpegs:
            image = cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
            model.predict(image, verbose=False)
            done += 1
            if time.perf_counter() - started >= seconds:
                break
    return done / (time.perf_counter() - started)


# --- the full worker path ----------------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout} s: {log.read_text()[-2000:]}")


@dataclass
class Stack:
    """Broker, API and worker of one phase.

    ``http`` is one client for the phase: a bare ``httpx.get`` builds a client and its TLS
    context on every call, about 20 ms of CPU, and the metrics are read every second on the
    cores the worker is measured on.
    """

    workdir: Path
    broker_url: str
    api_url: str
    metrics_url: str
    worker: subprocess.Popen[bytes]
    prefix: str
    api: subprocess.Popen[bytes]
    http: httpx.Client

    def metric(self, name: str) -> float:
        text = self.http.get(self.metrics_url, timeout=5).text
        pattern = re.compile(rf"^{name}_total\{{[^}}]*\}} ([0-9.e+]+)$", re.M)
        return sum(float(v) for v in pattern.findall(text))

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The worker's resident memory now (``VmRSS``) or its peak so far (``VmHWM``)."""
        status = Path(f"/proc/{self.worker.pid}/status").read_text()
        match = re.search(rf"{field}:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else float("nan")

    def candidates(self) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {TOKENS['reviewer']}"}
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self.http.get(
                f"{self.api_url}/api/v1/candidates", params=params, headers=headers, timeout=10
            ).json()
            items += page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def camera_of(candidate: dict[str, Any]) -> str | None:
    camera: str | None = (candidate.get("source") or {}).get("camera_id")
    return camera


def write_site(path: Path, prefix: str, cameras: list[str]) -> None:
    zone = {
        "id": "street",
        "polygon": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
        "rules": {
            "crowd_gathering": {
                # update_s 5: candidate updates with evidence inside the measured window
                "min_persons": 5, "dwell_s": 5, "gap_s": 10, "clear_s": 30, "update_s": 5,
            }
        },
    }  # fmt: skip
    site = {
        "site": {"name": "bench", "timezone": "Asia/Shanghai"},
        "mqtt": {"prefix": prefix},
        "cameras": [
            {"id": cam, "source": "mqtt", "location": {"address": f"bench {cam}"}, "zones": [zone]}
            for cam in cameras
        ],
    }
    path.write_text(yaml.safe_dump(site))


@contextmanager
def stack(cameras: list[str], gate: bool, square: bool = False) -> Iterator[Stack]:
    from gridpatrol.ingest.broker import mosquitto_binary, start_amqtt, start_mosquitto

    workdir = Path(tempfile.mkdtemp(prefix="gridpatrol-bench-"))
    binary = mosquitto_binary()
    broker = start_mosquitto(binary) if binary else start_amqtt()
    prefix = f"bench{os.getpid()}"
    site = workdir / "site.yaml"
    write_site(site, prefix, cameras)
    api_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{workdir}/api.db",
        "GRIDPATROL_EVIDENCE_DIR": str(workdir / "evidence"),
        "GRIDPATROL_API_TOKENS": json.dumps(
            {tok: {"role": role, "name": f"bench-{role}"} for role, tok in TOKENS.items()}
        ),
        "GRIDPATROL_MQTT_URL": broker.url,
        "GRIDPATROL_API_URL": f"http://127.0.0.1:{api_port}",
        "GRIDPATROL_API_TOKEN": TOKENS["producer"],
        "GRIDPATROL_OUTBOX": str(workdir / "outbox-detect.db"),
        "GRIDPATROL_MODEL": str(MODEL),
    }
    cli = [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING"]
    api_log, worker_log = workdir / "api.log", workdir / "detect.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with api_log.open("wb") as out:
            api = subprocess.Popen(
                [*cli, "api", "--port", str(api_port)], env=env, stdout=out, stderr=out
            )
        procs.append(api)
        wait_http(f"http://127.0.0.1:{api_port}/api/v1/healthz", api, api_log)
        detect = [*cli, "detect", "--config", str(site), "--metrics-port", str(metrics_port)]
        if not gate:
            detect.append("--no-motion-gate")
        if square:
            detect.append("--square-input")
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(detect, env=env, stdout=out, stderr=out)
        procs.append(worker)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_http(metrics_url, worker, worker_log)
        with httpx.Client() as http:
            api_url = f"http://127.0.0.1:{api_port}"
            yield Stack(workdir, broker.url, api_url, metrics_url, worker, prefix, api, http)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        broker.stop()
        if os.environ.get("GRIDPATROL_BENCH_KEEP"):
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class Publisher:
    """Publishes frame envelopes round-robin over the cameras at a fixed total rate.

    Through ``bench/rawmqtt.py``, not paho: the cameras' side must not take the CPU of the
    worker it measures.
    """

    def __init__(self, broker_url: str, prefix: str) -> None:
        self.conn = RawPublisher(broker_url, f"bench-pub-{os.getpid()}")
        self.prefix = prefix
        self.seq = 0
        self.rate = 0.0

    def run(self, cameras: list[str], jpegs: list[bytes], rate: float, seconds: float) -> int:
        """Publish at ``rate`` frames/s in total for ``seconds``; returns the number sent."""
        from gridpatrol.ingest.messages import FrameHeader, encode_frame
        from gridpatrol.ingest.topics import frame_topic

        started = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - started < seconds:
            due = started + sent / rate
            if due > now:
                time.sleep(due - now)
            cam = cameras[self.seq % len(cameras)]
            header = FrameHeader(
                ts=datetime.now(UTC), seq=self.seq, camera_id=cam, width=SIZE[0], height=SIZE[1]
            )
            image = jpegs[(self.seq // len(cameras)) % len(jpegs)]
            self.conn.publish(frame_topic(self.prefix, cam), encode_frame(header, image))
            self.seq += 1
            sent += 1
        return sent

    def saturate(
        self, cameras: list[str], jpegs: list[bytes], stack: Stack, rate: float, seconds: float
    ) -> int:
        """Offer a little more than the worker takes: each second the rate is set to 1.25× the
        frames it inferred in the previous second, so it never waits for a frame and the
        surplus (dropped, newest frame wins) stays small."""
        sent, deadline = 0, time.perf_counter() + seconds
        before = stack.metric("gridpatrol_detect_inferred_frames")
        while (left := deadline - time.perf_counter()) > 0:
            slice_s = min(1.0, left)
            t0 = time.perf_counter()
            sent += self.run(cameras, jpegs, rate, slice_s)
            after = stack.metric("gridpatrol_detect_inferred_frames")
            taken = (after - before) / (time.perf_counter() - t0)
            rate = max(1.25 * taken, 0.5 * len(cameras))
            before = after
        self.rate = rate
        return sent

    def stop(self) -> None:
        self.conn.close()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSnapshot:
    """Where the CPU goes during the pipeline window: per process and the machine."""

    worker: float
    api: float
    bench: float
    busy: float
    idle: float

    @classmethod
    def take(cls, s: Stack) -> CpuSnapshot:
        busy, idle = machine_cpu_s()
        return cls(
            process_cpu_s(s.worker.pid),
            process_cpu_s(s.api.pid),
            process_cpu_s(os.getpid()),
            busy,
            idle,
        )

    def per_frame_ms(self, later: CpuSnapshot, frames: float) -> dict[str, float]:
        """CPU milliseconds per inferred frame between two snapshots; ``other`` is the broker
        and everything else on the machine, ``idle`` the cores' idle time."""
        worker, api = later.worker - self.worker, later.api - self.api
        bench = later.bench - self.bench
        other = (later.busy - self.busy) - worker - api - bench
        per = 1000 / max(frames, 1.0)
        return {
            "worker": round(worker * per, 2),
            "api": round(api * per, 2),
            "publisher": round(bench * per, 2),
            "other": round(other * per, 2),
            "idle": round((later.idle - self.idle) * per, 2),
        }


def measure_pipeline(
    cameras: list[str],
    jpegs: list[bytes],
    rate: float,
    warm_s: float,
    seconds: float,
    square: bool,
) -> dict[str, Any]:
    with stack(cameras, gate=False, square=square) as s:
        pub = Publisher(s.broker_url, s.prefix)
        try:
            pub.saturate(cameras, jpegs, s, rate, warm_s)
            inferred0, t0 = s.metric("gridpatrol_detect_inferred_frames"), time.perf_counter()
            frames0, cpu0 = s.metric("gridpatrol_detect_frames"), CpuSnapshot.take(s)
            ops0 = s.metric("gridpatrol_detect_candidate_ops")
            sent = pub.saturate(cameras, jpegs, s, pub.rate, seconds)
            inferred1, t1 = s.metric("gridpatrol_detect_inferred_frames"), time.perf_counter()
            frames1, cpu1 = s.metric("gridpatrol_detect_frames"), CpuSnapshot.take(s)
            ops1 = s.metric("gridpatrol_detect_candidate_ops")
            rss, rss_peak = s.rss_mb(), s.rss_mb("VmHWM")
        finally:
            pub.stop()
        time.sleep(3)  # let the outbox deliver what it queued
        found = s.candidates()
        raised = {camera_of(c) for c in found}
        if len(raised) < len(cameras):
            # Frames that reached no candidate: no end-to-end figure (the API, the outbox?).
            raise SystemExit(f"pipeline: only {len(raised)} of {len(cameras)} cameras raised")
        return {
            "candidate_ops": ops1 - ops0,
            "fps": (inferred1 - inferred0) / (t1 - t0),
            "offered_fps": sent / (t1 - t0),
            "received_fps": (frames1 - frames0) / (t1 - t0),
            "rss_mb": rss,
            "rss_peak_mb": rss_peak,
            "cpu_ms_per_frame": cpu0.per_frame_ms(cpu1, inferred1 - inferred0),
            "candidates": len(found),
            "cameras_with_candidates": len(raised),
        }


def measure_gate(
    cameras: list[str], scenes: list[list[bytes]], fps: float, seconds: float, square: bool
) -> dict[str, Any]:
    """The gate over static scenes, one after the other (equal shares of ``seconds``): the
    violation appears only with the last one, so a gate that stopped inferring after a camera's
    first frame would miss it."""
    with stack(cameras, gate=True, square=square) as s:
        pub = Publisher(s.broker_url, s.prefix)
        try:
            for jpegs in scenes:
                pub.run(cameras, jpegs, fps * len(cameras), seconds / len(scenes))
        finally:
            pub.stop()
        time.sleep(3)
        frames = s.metric("gridpatrol_detect_frames")
        inferred = s.metric("gridpatrol_detect_inferred_frames")
        found = s.candidates()
        raised = {camera_of(c) for c in found if c.get("type") == "crowd_gathering"}
        return {
            "inferred_fraction": inferred / frames if frames else float("nan"),
            "frames": frames,
            "inferred": inferred,
            "missed_violations": len(set(cameras) - raised),
        }


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 3 minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument(
        "--square-input", action="store_true", help="worker and raw on the square 640×640 input"
    )
    args = parser.parse_args(argv)
    rect = not args.square_input
    raw_s, ul_s, warm_s, pipe_s, gate_s = (4, 8, 8, 15, 30) if args.quick else (10, 20, 15, 45, 60)
    cameras = [f"cam{k:02d}" for k in range(args.cameras)]
    say(f"frames: 1280×720 JPEG from {FOOTAGE}; {args.cameras} cameras")
    # The pipeline's frames for every phase, as the comparison asks: the busy street.
    street = street_jpegs(30 if args.quick else 90)

    raw_before = measure_raw(street, raw_s, rect)
    shape = raw_before["input"]
    say(f"raw (runtime alone, {shape}): {raw_before['fps']:.1f} fps; {by(raw_before)}")
    if rect:  # with --square-input the phase above measured the square input already
        raw_square = measure_raw(street, raw_s, rect=False, details=False)
        say(f"raw on the square input ({raw_square['input']}): {raw_square['fps']:.1f} fps")
    else:
        raw_square = raw_before
    ultra = measure_ultralytics(street, ul_s)
    say(f"ultralytics predictor: {ultra:.1f} fps")
    rate = 1.15 * raw_before["fps"]  # a little above capacity: the worker always has a frame
    pipe = measure_pipeline(cameras, street, rate, warm_s, pipe_s, args.square_input)
    say(
        f"pipeline (MQTT→detect→API): {pipe['fps']:.1f} fps inferred of "
        f"{pipe['offered_fps']:.1f} offered; RSS {pipe['rss_mb']:.0f} MB "
        f"(peak {pipe['rss_peak_mb']:.0f}); "
        f"{pipe['candidates']} candidates, {pipe['candidate_ops']:.0f} candidate operations in "
        "the window"
    )
    raw_after = measure_raw(street, raw_s, rect)
    raw = (raw_before["fps"] + raw_after["fps"]) / 2
    say(f"raw again: {raw_after['fps']:.1f} fps, {by(raw_after)}; reference {raw:.1f} fps")
    stream = measure_stream(street, raw_s, rect)
    say(
        f"decode + infer streamed on the worker's frames: {stream['fps']:.1f} fps, "
        f"{stream['over_raw']:.3f} × the runtime alone on them ({stream['raw_fps']:.1f} fps)"
    )
    # An empty car park (no one in it), then the crowded street: the crowd appears mid-run.
    scenes = [static_jpegs(20, clip="car_park_overhead.mp4"), static_jpegs(20)]
    gate = measure_gate(cameras, scenes, 5.0, gate_s, args.square_input)
    say(
        f"motion gate on static footage: {gate['inferred_fraction']:.3f} inferred "
        f"({gate['inferred']:.0f}/{gate['frames']:.0f}), missed violations "
        f"{gate['missed_violations']}"
    )
    result = {
        "raw_fps": round(raw, 2),
        "raw_fps_before": round(raw_before["fps"], 2),
        "raw_fps_after": round(raw_after["fps"], 2),
        "input": raw_before["input"],
        "raw_square_fps": round(raw_square["fps"], 2),
        "pipeline_fps": round(pipe["fps"], 2),
        "ultralytics_fps": round(ultra, 2),
        "inferred_fraction": round(gate["inferred_fraction"], 4),
        "pipeline_over_raw": round(pipe["fps"] / raw, 3),
        "pipeline_over_ultralytics": round(pipe["fps"] / ultra, 3),
        "missed_violations": gate["missed_violations"],
        "rss_mb_8_cameras" if args.cameras == 8 else f"rss_mb_{args.cameras}_cameras": round(
            pipe["rss_mb"], 1
        ),
        "rss_peak_mb": round(pipe["rss_peak_mb"], 1),
        "pipeline_offered_fps": round(pipe["offered_fps"], 2),
        "pipeline_received_fps": round(pipe["received_fps"], 2),
        "pipeline_candidates": pipe["candidates"],
        "pipeline_candidate_ops": pipe["candidate_ops"],
        # CPU per inferred frame in the pipeline window, against the runtime alone's
        # (all cores busy for 1 / raw_fps s per frame).
        "pipeline_cpu_ms_per_frame": pipe["cpu_ms_per_frame"],
        "raw_cpu_ms_per_frame": round(1000 * (os.cpu_count() or 1) / raw, 2),
        "prepare_cpu_ms": round(raw_before["prepare_cpu_ms"], 2),
        "decode_infer_stream_fps": round(stream["fps"], 2),
        "decode_infer_stream_over_raw": round(stream["over_raw"], 3),
        "infer_requests": raw_before["requests"],
        "raw_fps_by_requests": {
            "before": {str(n): round(f, 2) for n, f in raw_before["fps_by_requests"].items()},
            "after": {str(n): round(f, 2) for n, f in raw_after["fps_by_requests"].items()},
        },
        "cameras": args.cameras,
        "quick": args.quick,
        "load_avg": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
