"""MQTT transport: frame envelopes and QoS 1 alarms through Mosquitto, defaults vs the sample.

    .venv/bin/python bench/mqtt.py            # full run (~1 min)
    .venv/bin/python bench/mqtt.py --quick    # shorter

Two private Mosquitto brokers on free ports: one with Debian-like defaults (persistence on,
max_queued_messages 1000, max_inflight_messages 20), one with samples/mosquitto.conf (auth
and ACL switched off, paths moved to a temporary directory). Measured through
``gridpatrol.ingest.mqtt`` in one process (publisher and subscriber share the GIL):

- frames: 720p and 1080p JPEG frame envelopes (QoS 0) published back to back for a fixed
  time; received per second and the share lost;
- alarms online: a burst of 300-byte QoS 1 alarms to a consumer acknowledging manually, as
  the alarm bridge does; alarms per second end to end and the number lost;
- alarms offline: the same burst while the persistent consumer is away; how many it gets
  when it comes back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2

from gridpatrol.ingest.broker import free_port, mosquitto_binary, reachable
from gridpatrol.ingest.messages import FrameHeader, decode_frame, encode_frame
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRIDPATROL_SHARED", REPO.parent / "shared"))
FOOTAGE = SHARED / "footage" / "pedestrian_street_1080p.mp4"
PREFIX = "gpbench"
# How long the frames bench waits, once publishing ends, with no frame arriving (the rest lost).
DRAIN_IDLE_S = 5.0

DEBIAN_LIKE = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {dir}/
log_dest stderr
log_type error
"""


def sample_conf(port: int, workdir: Path) -> str:
    """samples/mosquitto.conf on a local port, without auth, with paths in ``workdir``."""
    out = []
    for line in (REPO / "samples" / "mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in ("password_file", "acl_file", "allow_anonymous", "listener", "log_type"):
            continue
        if key == "persistence_location":
            line = f"persistence_location {workdir}/"
        out.append(line)
    out += [f"listener {port} 127.0.0.1", "allow_anonymous true", "log_type error"]
    return "\n".join(out) + "\n"


class Broker:
    def __init__(self, name: str, make_conf: Callable[[int, Path], str]) -> None:
        self.name = name
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"gpbench-{name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._start(make_conf)
        except BaseException:
            # Not started (or Ctrl-C meanwhile): the caller never gets a broker to close.
            self.close()
            raise
        self.settings = MqttSettings.from_url(f"mqtt://127.0.0.1:{self.port}")

    def _start(self, make_conf: Callable[[int, Path], str]) -> None:
        text = make_conf(self.port, self.workdir)
        if os.geteuid() == 0:
            text += "user root\n"  # else Mosquitto cannot write its persistence file here
        (self.workdir / "mosquitto.conf").write_text(text)
        binary = mosquitto_binary()
        if binary is None:
            raise SystemExit("bench/mqtt.py needs the mosquitto binary")
        conf = str(self.workdir / "mosquitto.conf")
        self.proc = subprocess.Popen([binary, "-c", conf], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port, 0.2):
            code = self.proc.poll()
            if code is not None:
                raise SystemExit(f"{self.name}: mosquitto exited with code {code}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: mosquitto did not start")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def jpeg_frames() -> dict[str, bytes]:
    cap = cv2.VideoCapture(str(FOOTAGE))
    ok, image = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read {FOOTAGE}")
    out = {}
    for label, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 85])
        out[label] = buf.tobytes()
    return out


def take_frame(message: Message) -> float:
    """Decode a received frame envelope as a consumer does; when that was done."""
    decode_frame(message.payload, topic_camera_id="bench", received_at=message.received_at)
    return time.monotonic()


def bench_frames(
    broker: Broker, jpeg: bytes, size: tuple[int, int], seconds: float
) -> dict[str, Any]:
    sub = MqttConnection("bench-frames-sub", broker.settings, prefix=PREFIX)
    queue = sub.subscribe(f"{PREFIX}/cameras/+/frame", qos=0, maxsize=100000)
    pub = MqttConnection("bench-frames-pub", broker.settings, prefix=PREFIX)
    assert sub.start() and pub.start()
    topic = f"{PREFIX}/cameras/bench/frame"
    sent = received = 0
    started = time.monotonic()
    last = started  # the last arrival: waiting for frames that were lost is not throughput
    while time.monotonic() - started < seconds:
        header = FrameHeader(datetime.now(UTC), sent, "bench", *size)
        payload = encode_frame(header, jpeg)
        # Every 4th frame waits until written: a bounded window instead of an unbounded buffer.
        if sent % 4 == 3:
            pub.publish_wait(topic, payload, qos=0)
        else:
            pub.publish(topic, payload, qos=0)
        sent += 1
        while (message := queue.get(0)) is not None:
            last = take_frame(message)
            received += 1
    # The backlog of a consumer behind at the end is worked through as the rest were, decoded,
    # for as long as frames keep coming: only DRAIN_IDLE_S without one ends the wait.
    idle_since = time.monotonic()
    while received + queue.dropped < sent and time.monotonic() - idle_since < DRAIN_IDLE_S:
        if (message := queue.get(0.2)) is not None:
            last = idle_since = take_frame(message)
            received += 1
    elapsed = last - started
    pub.stop()
    sub.stop()
    return {
        "sent": sent,
        "received": received,
        "per_s": received / elapsed if elapsed > 0 else 0.0,  # 0: nothing arrived
        "mb_per_s": received * len(jpeg) / elapsed / 1e6 if elapsed > 0 else 0.0,
        "lost_pct": 100.0 * (sent - received) / max(sent, 1),
    }


ALARM = json.dumps(
    {
        "schema": "gridalarm/1",
        "event_id": "e-000000",
        "sensor_id": "mh-0001",
        "alarm_type": "manhole_tilt",
        "transition": "update",
        "severity": "MAJOR",
        "ts": "2026-05-01T08:00:00Z",
        "measurements": [{"n": "tilt", "u": "deg", "v": 21.5}],
    }
).encode()


def alarm(i: int) -> bytes:
    body = ALARM.replace(b"e-000000", f"e-{i:06d}".encode())
    return body + b" " * max(0, 300 - len(body))


def consumer(broker: Broker, tag: str) -> tuple[MqttConnection, Subscription]:
    conn = MqttConnection(
        f"bench-bridge-{tag}", broker.settings, prefix=PREFIX, persistent=True, manual_ack=True
    )
    return conn, conn.subscribe(f"{PREFIX}/sensors/+/alarm", qos=1, maxsize=1_000_000)


def drain_acking(
    conn: MqttConnection, sub: Subscription, idle_s: float
) -> tuple[set[bytes], float]:
    """Receive and acknowledge until nothing arrived for ``idle_s``: event ids, last arrival."""
    seen: set[bytes] = set()
    last = time.monotonic()
    while (message := sub.get(idle_s)) is not None:
        seen.add(message.payload[:70])
        conn.ack(message)
        last = time.monotonic()
    return seen, last


def publish_burst(broker: Broker, count: int) -> float:
    pub = MqttConnection("bench-gw", broker.settings, prefix=PREFIX, max_queued_messages=0)
    assert pub.start()
    topic = f"{PREFIX}/sensors/mh-0001/alarm"
    started = time.monotonic()
    for i in range(count - 1):
        pub.publish(topic, alarm(i), qos=1)
    pub.publish_wait(topic, alarm(count - 1), qos=1, timeout=120)
    elapsed = time.monotonic() - started
    pub.stop()
    return elapsed


def bench_alarms_online(broker: Broker, count: int) -> dict[str, Any]:
    conn, sub = consumer(broker, "online")
    assert conn.start()
    seen: set[bytes] = set()
    started = time.monotonic()
    publisher = threading.Thread(target=publish_burst, args=(broker, count))
    publisher.start()
    last = started
    while len(seen) < count:
        got, arrived = drain_acking(conn, sub, 3.0)
        if not got:
            break
        seen |= got
        last = arrived
    elapsed = last - started
    publisher.join()
    conn.stop()
    per_s = len(seen) / elapsed if elapsed > 0 else 0.0  # 0: nothing arrived
    return {"sent": count, "received": len(seen), "per_s": per_s, "lost": count - len(seen)}


def bench_alarms_offline(broker: Broker, count: int) -> dict[str, Any]:
    conn, _ = consumer(broker, "offline")
    assert conn.start()
    conn.stop()  # the session, with its subscription, stays at the broker
    publish_burst(broker, count)
    conn, sub = consumer(broker, "offline")
    assert conn.start()
    seen, _ = drain_acking(conn, sub, 3.0)
    conn.stop()
    return {"sent": count, "received": len(seen), "lost": count - len(seen)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0
    burst = 5000 if args.quick else 20000
    frames = jpeg_frames()
    results: dict[str, dict[str, Any]] = {}
    for name, make in (
        ("defaults", lambda port, d: DEBIAN_LIKE.format(port=port, dir=d)),
        ("sample", sample_conf),
    ):
        broker = Broker(name, make)
        try:
            row: dict[str, Any] = {}
            for label, size in (("720p", (1280, 720)), ("1080p", (1920, 1080))):
                row[f"frames_{label}"] = bench_frames(broker, frames[label], size, seconds)
            row["alarms_online"] = bench_alarms_online(broker, burst)
            row["alarms_offline"] = bench_alarms_offline(broker, burst)
            results[name] = row
        finally:
            broker.close()
    print_table(results, frames, burst, seconds)
    if args.json:
        print(json.dumps(results))
    return 0


def ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old else "n/a"


def print_table(
    results: dict[str, dict[str, Any]], frames: dict[str, bytes], burst: int, seconds: float
) -> None:
    d, s = results["defaults"], results["sample"]
    sizes = f"720p {len(frames['720p']) // 1000} KB, 1080p {len(frames['1080p']) // 1000} KB"
    print(f"frames: {seconds:g} s each, JPEG q85 {sizes}; alarms: {burst} x 300 B, QoS 1")
    print("| measure | Debian-like defaults | samples/mosquitto.conf | sample / defaults |")
    print("|---|---|---|---|")
    for label in ("720p", "1080p"):
        a, b = d[f"frames_{label}"], s[f"frames_{label}"]
        print(
            f"| {label} frame envelopes received /s (lost) "
            f"| {a['per_s']:.0f} ({a['lost_pct']:.1f} %) | {b['per_s']:.0f} ({b['lost_pct']:.1f} %)"
            f" | {ratio(b['per_s'], a['per_s'])} |"
        )
    a, b = d["alarms_online"], s["alarms_online"]
    print(
        f"| QoS 1 alarms /s, consumer online, manual ack (lost) | {a['per_s']:.0f} ({a['lost']})"
        f" | {b['per_s']:.0f} ({b['lost']}) | {ratio(b['per_s'], a['per_s'])} |"
    )
    a, b = d["alarms_offline"], s["alarms_offline"]
    print(
        f"| QoS 1 alarms kept for an offline persistent consumer | {a['received']} of {a['sent']}"
        f" | {b['received']} of {b['sent']} | {b['received'] / max(a['received'], 1):.1f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
