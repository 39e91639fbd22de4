"""Alarm bridge throughput and latency, with a bare MQTT baseline measured in the same run.

    .venv/bin/python bench/bridge.py            # full run (~1 min on a quiet machine)
    .venv/bin/python bench/bridge.py --quick    # shorter streams
    .venv/bin/python bench/bridge.py --json     # one JSON object last

Everything runs locally: a private Mosquitto (persistence on), ``gridpatrol api`` on SQLite,
``gridpatrol bridge``. Three measurements:

* baseline: QoS 1 messages from a publisher to a plain manual-ack subscriber (no bridge);
* sustained: a burst of N alarm envelopes (raise, updates, clear per sensor) published as fast
  as possible; "committed" is when the bridge has written all of them to its state database,
  "stored" when the API holds every candidate with the exact ``alarm.count`` sums (zero loss);
  a second burst where every other message raises a new candidate shows the cost of creates;
* latency: alarms at a fixed rate (500/s; 50 sensors each raising, repeating and clearing,
  their cycles spread out); for every raise, the time from publish to the
  ``candidate.created`` server-sent event of the API (visible to reviewers).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from gridpatrol.alarm_bridge import loadgen
from gridpatrol.alarm_bridge.adapters import alarm_id_for
from gridpatrol.ingest.broker import free_port, mosquitto_binary
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.topics import deadletter_topic

TOKENS = {"bench-producer": "producer", "bench-reviewer": "reviewer"}
SENSORS = 50


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        time.sleep(interval)
    return time.monotonic()


class Stack:
    """Broker, API and bridge as subprocesses in a temporary directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.mqtt_port, self.api_port = free_port(), free_port()
        self.mqtt_url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.prefix = f"gpbench-{uuid.uuid4().hex[:6]}"
        self.site = work / "site.yaml"
        self.site.write_text(loadgen.site_yaml(self.prefix, SENSORS), encoding="utf-8")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.settings = MqttSettings.from_url(self.mqtt_url)

    def _spawn(self, cmd: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with (self.work / log).open("ab") as out:
            proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        # Debian installs it in /usr/sbin, which is not on a non-root user's PATH.
        mosquitto = mosquitto_binary()
        if mosquitto is None:
            raise SystemExit("bench/bridge.py needs the mosquitto binary (Debian: mosquitto)")
        conf = self.work / "mosquitto.conf"
        lines = [
            f"listener {self.mqtt_port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.work}/",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # the dropped-privilege user cannot write our temp dir
        conf.write_text("\n".join(lines) + "\n")
        self._spawn([mosquitto, "-c", str(conf)], {}, "mosquitto.log")
        cli = [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING"]
        api_env = {
            "GRIDPATROL_DATABASE_URL": f"sqlite:///{self.work}/api.db",
            "GRIDPATROL_EVIDENCE_DIR": str(self.work / "evidence"),
            "GRIDPATROL_API_TOKENS": json.dumps(
                {tok: {"role": role, "name": role} for tok, role in TOKENS.items()}
            ),
        }
        api = self._spawn(
            [*cli, "api", "--host", "127.0.0.1", "--port", str(self.api_port)], api_env, "api.log"
        )
        wait_for(lambda: self._healthy(api), 90, "the API did not start", 0.2)
        bridge_env = {
            "GRIDPATROL_MQTT_URL": self.mqtt_url,
            "GRIDPATROL_API_URL": self.api_url,
            "GRIDPATROL_API_TOKEN": "bench-producer",
            "GRIDPATROL_STATE_DIR": str(self.work / "state"),
        }
        cli[-1] = "INFO"
        self._spawn([*cli, "bridge", "--config", str(self.site)], bridge_env, "bridge.log")

    def _healthy(self, api: subprocess.Popen[bytes]) -> bool:
        # A crashed API fails the start at once instead of after the whole wait.
        code = api.poll()
        if code is not None:
            log = (self.work / "api.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the API exited with code {code}: {log}")
        try:
            return httpx.get(f"{self.api_url}/api/v1/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def committed(self) -> int:
        try:
            with sqlite3.connect(self.work / "state" / "bridge.db", timeout=5) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM bridge_dedup").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def candidates(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        headers = {"Authorization": "Bearer bench-reviewer"}
        params: dict[str, Any] = {"limit": 500}
        with httpx.Client(base_url=f"{self.api_url}/api/v1", headers=headers, timeout=30) as http:
            while True:
                page = http.get("/candidates", params=params).json()
                items += page["items"]
                if not page["next_cursor"]:
                    return items
                params["cursor"] = page["next_cursor"]


class Publisher:
    def __init__(self, stack: Stack, name: str) -> None:
        self.conn = MqttConnection(name, stack.settings, prefix=stack.prefix)
        self.conn.start()

    def burst(self, messages: list[tuple[str, bytes]], chunk: int = 2000) -> None:
        """As fast as the broker takes them, in chunks below the client's queue limit."""
        for start in range(0, len(messages), chunk):
            for topic, payload in messages[start : start + chunk]:
                assert self.conn.publish(topic, payload, qos=1)
            # QoS 1 leaves in order: once this one is acknowledged, every earlier one was.
            assert self.conn.publish_wait(self.conn.status_topic, b"online", qos=1, timeout=120)

    def paced(self, messages: list[tuple[str, bytes]], rate: float) -> list[float]:
        """Publish at ``rate``/s; the wall-clock publish time of each message."""
        times = []
        start = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            times.append(time.time())
            assert self.conn.publish(topic, payload, qos=1)
        return times


def baseline(stack: Stack, n: int) -> float:
    """Messages/s through the broker to a manual-ack subscriber that does nothing else."""
    sub = MqttConnection(
        "bench-base-sub", stack.settings, prefix=stack.prefix, persistent=True, manual_ack=True
    )
    queue = sub.subscribe(f"{stack.prefix}/base/#", qos=1, maxsize=n + 10)
    sub.start()
    pub = Publisher(stack, "bench-base-pub")
    messages = [(f"{stack.prefix}/base/s{i % SENSORS}", b"x" * 300) for i in range(n)]
    start = time.monotonic()
    threading.Thread(target=pub.burst, args=(messages,), daemon=True).start()
    got = 0
    while got < n:
        message = queue.get(timeout=30)
        if message is None:
            raise TimeoutError(f"baseline: {got} of {n}")
        sub.ack(message)
        got += 1
    rate = n / (time.monotonic() - start)
    pub.conn.stop()
    sub.stop()
    return rate


def wait_subscribed(stack: Stack) -> None:
    """Probe until the bridge dead-letters a message: its session and subscription exist."""
    watch = MqttConnection("bench-dead", stack.settings, prefix=stack.prefix)
    sub = watch.subscribe(deadletter_topic(stack.prefix, "alarm_bridge"), qos=1)
    watch.start()
    pub = Publisher(stack, "bench-probe")
    probe = uuid.uuid4().hex.encode()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            pub.conn.publish(f"{stack.prefix}/sensors/probe/alarm", probe, qos=1)
            message = sub.get(timeout=1.0)
            while message is not None:
                if base64.b64decode(json.loads(message.payload)["payload_b64"]) == probe:
                    return
                message = sub.get(timeout=0)
        raise TimeoutError("the bridge never subscribed")
    finally:
        pub.conn.stop()
        watch.stop()


def sustained(stack: Stack, n: int, cycle: int, run: str) -> dict[str, float]:
    """Burst of ``n`` alarms; rates to committed (bridge) and stored (API, exact)."""
    messages = list(loadgen.traffic(stack.prefix, SENSORS, n, run=run, cycle=cycle))
    want = loadgen.expected(SENSORS, n, cycle=cycle)
    before = stack.committed()
    had = loadgen.tally(stack.candidates())
    pub = Publisher(stack, f"bench-pub-{run}")
    start = time.monotonic()
    pub.burst(messages)
    published = time.monotonic()
    committed = wait_for(lambda: stack.committed() >= before + n, 300, "bridge commit", 0.05)

    def stored() -> bool:
        got = loadgen.tally(stack.candidates())
        return (got.candidates - had.candidates, got.counted - had.counted) == (
            want.candidates,
            want.counted,
        )

    done = wait_for(stored, 300, "API accounting", 0.25)
    pub.conn.stop()
    return {
        "alarms": n,
        "new_candidates": want.candidates,
        "publish_per_s": n / (published - start),
        "committed_per_s": n / (committed - start),
        "stored_per_s": n / (done - start),
    }


def latency(stack: Stack, rate: float, seconds: float) -> dict[str, float]:
    """Publish → ``candidate.created`` SSE for every raise, at a fixed alarm rate."""
    n = int(rate * seconds)
    # One raise per sensor in a hundred messages, the sensors' cycles spread out in time.
    messages = list(loadgen.traffic(stack.prefix, SENSORS, n, run="lat", stagger=True))
    seen: dict[str, float] = {}
    stop = threading.Event()
    ready = threading.Event()

    def listen() -> None:
        headers = {"Authorization": "Bearer bench-reviewer"}
        with httpx.stream(
            "GET", f"{stack.api_url}/api/v1/events", headers=headers, timeout=None
        ) as response:
            ready.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    seen.setdefault(json.loads(line[5:])["id"], time.time())
                if stop.is_set():
                    return

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    pub = Publisher(stack, "bench-pub-lat")
    times = pub.paced(messages, rate)
    raises = {}
    for i, (_topic, payload) in enumerate(messages):
        body = json.loads(payload)
        if body["transition"] == "raise":
            key = f"e:{body['event_id']}"
            raises[alarm_id_for(body["sensor_id"], "manhole_tilt", key)] = times[i]
    wait_for(lambda: all(r in seen for r in raises), 60, "created events", 0.1)
    stop.set()
    pub.conn.stop()
    lat = sorted((seen[r] - t) * 1000 for r, t in raises.items())
    return {
        "rate": rate,
        "alarms": n,
        "raises": len(lat),
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max_ms": lat[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs and databases")
    args = parser.parse_args()
    n = 5_000 if args.quick else 20_000
    tmp = Path(tempfile.mkdtemp(prefix="gp-bench-bridge-"))
    try:
        stack = Stack(tmp)
        try:
            # Inside the try: a failed or interrupted start stops what it had started.
            stack.start()
            wait_subscribed(stack)
            base = baseline(stack, n)
            repeat = sustained(stack, n, loadgen.CYCLE, "s1")
            creates = sustained(stack, n // 5, 2, "s2")  # every sensor ends cleared
            lat = latency(stack, 500.0, 10.0 if args.quick else 30.0)
        finally:
            stack.stop()
    finally:
        if args.keep:
            print(f"logs and databases kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"baseline_mqtt_per_s": base, "sustained": repeat, "creates": creates, "latency": lat}
    print(f"MQTT QoS 1 baseline (manual-ack subscriber): {base:,.0f} msg/s")
    for name, r in (("repeats (1 raise per 100)", repeat), ("creates (1 raise per 2)", creates)):
        print(
            f"{name}: {r['alarms']:,} alarms, {r['new_candidates']:,} candidates; "
            f"committed {r['committed_per_s']:,.0f}/s "
            f"({r['committed_per_s'] / base:.2f} x baseline), "
            f"stored in the API {r['stored_per_s']:,.0f}/s "
            f"({r['stored_per_s'] / base:.2f} x baseline)"
        )
    print(
        f"latency at {lat['rate']:.0f} alarms/s: {lat['raises']} raises, "
        f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
