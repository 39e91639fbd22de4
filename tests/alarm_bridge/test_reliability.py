"""10,000 alarms through a real broker, bridge and API while each of them fails in turn.

Exact accounting: every raise or update is in some candidate's ``alarm.count``, every raise
is exactly one candidate (one per ``source_event_id``), every invalid message is one dead
letter.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.alarm_bridge import loadgen
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.topics import deadletter_topic

SENSORS = 20
ALARMS = 10_000
INVALID_EVERY = 100


class Rig:
    def __init__(self, tmp: Path, broker: Any, api: Any) -> None:
        self.broker = broker
        self.api = api
        self.prefix = f"gprel-{uuid.uuid4().hex[:8]}"
        self.site = tmp / "site.yaml"
        self.site.write_text(loadgen.site_yaml(self.prefix, SENSORS), encoding="utf-8")
        self.state = tmp / "state"
        self.log = tmp / "bridge.log"
        self.proc: subprocess.Popen[bytes] | None = None
        settings = MqttSettings.from_url(broker.url)
        self.pub = MqttConnection("rel-pub", settings, prefix=self.prefix)
        # Persistent, so dead letters published while the broker restarts are kept for us.
        self.dead = MqttConnection(
            "rel-dead", settings, prefix=self.prefix, persistent=True, manual_ack=True
        )
        self.dead_sub = self.dead.subscribe(
            deadletter_topic(self.prefix, "alarm_bridge"), qos=1, maxsize=100_000
        )
        self.dead_payloads: set[str] = set()
        self.probes: set[str] = set()

    def start_bridge(self) -> None:
        env = {
            **os.environ,
            "GRIDPATROL_MQTT_URL": self.broker.url,
            "GRIDPATROL_API_URL": self.api.url,
            "GRIDPATROL_API_TOKEN": self.api.tokens["producer"],
            "GRIDPATROL_STATE_DIR": str(self.state),
        }
        cmd = [sys.executable, "-m", "gridpatrol.cli", "bridge", "--config", str(self.site)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--progress-s", "2"], env=env, stdout=log, stderr=log
            )
        self._wait_subscribed()

    def _wait_subscribed(self, timeout: float = 60) -> None:
        """Until the bridge's session exists, the broker keeps nothing for it: probe it."""
        probe = f"probe-{uuid.uuid4().hex}".encode()
        topic = f"{self.prefix}/sensors/probe/alarm"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pub.publish(topic, probe, qos=1)
            self._collect_dead(wait=0.5)
            if any(base64.b64decode(p) == probe for p in self.probes):
                return
        raise TimeoutError(self.log.read_text(errors="replace")[-3000:])

    def _collect_dead(self, wait: float = 0.0) -> None:
        message = self.dead_sub.get(timeout=wait)
        while message is not None:
            payload = json.loads(message.payload)["payload_b64"]
            is_probe = base64.b64decode(payload).startswith(b"probe-")
            (self.probes if is_probe else self.dead_payloads).add(payload)
            self.dead.ack(message)
            message = self.dead_sub.get(timeout=0)

    def stop_bridge(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            assert self.pub.publish(topic, payload, qos=1)
        # QoS 1 leaves in order: once this one is acknowledged, every earlier one was.
        assert self.pub.publish_wait(self.pub.status_topic, b"online", qos=1, timeout=60)

    def processed(self) -> int:
        """Messages the bridge has committed (read from its state file, only to time faults)."""
        try:
            with sqlite3.connect(self.state / "bridge.db", timeout=5) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM bridge_dedup").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def wait_processed(self, at_least: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.processed() < at_least:
            assert time.monotonic() < deadline, f"bridge stuck at {self.processed()}"
            time.sleep(0.1)

    def candidates(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        with self.api.client("reviewer") as http:
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 500, "type": "manhole_cover"}
                if cursor:
                    params["cursor"] = cursor
                page = http.get("/candidates", params=params).json()
                items += page["items"]
                cursor = page["next_cursor"]
                if not cursor:
                    return [i for i in items if i["source"]["sensor_id"].startswith("lg-")]

    def settle(self, want: loadgen.Expected, timeout: float = 150) -> loadgen.Tally:
        deadline = time.monotonic() + timeout
        while True:
            self._collect_dead()
            got = loadgen.tally(self.candidates())
            done = (got.candidates, got.counted) == (want.candidates, want.counted)
            if done and len(self.dead_payloads) >= want.dead_letters:
                return got
            if time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"not settled: {got} {len(self.dead_payloads)}\n{tail}")
            time.sleep(1.0)

    def close(self) -> None:
        if self.proc is not None:
            self.stop_bridge(signal.SIGKILL)
        self.pub.stop()
        self.dead.stop()


def _persist_as_root(broker: Any) -> None:
    """Mosquitto started as root drops to the ``mosquitto`` user, which cannot write the
    persistence file into pytest's private tmp dir: keep root so a restart keeps sessions."""
    if os.geteuid() == 0 and "user root" not in broker.conf.read_text():
        broker.stop()
        broker.conf.write_text(broker.conf.read_text() + "user root\n")
        broker.start()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Any, api_server: Any) -> Iterator[Rig]:
    _persist_as_root(mosquitto)
    r = Rig(tmp_path, mosquitto, api_server)
    r.pub.start()
    r.dead.start()
    r.start_bridge()
    try:
        yield r
    finally:
        r.close()


def _check(rig: Rig) -> None:
    want = loadgen.expected(SENSORS, ALARMS, INVALID_EVERY)
    got = rig.settle(want)
    assert (got.candidates, got.counted) == (want.candidates, want.counted)
    assert got.distinct_events == got.candidates and got.max_events_per_source == 1
    assert len(rig.dead_payloads) == want.dead_letters
    assert rig.proc is not None and rig.proc.poll() is None  # still running


def traffic_for(rig: Rig) -> list[tuple[str, bytes]]:
    return list(loadgen.traffic(rig.prefix, SENSORS, ALARMS, run="r1", invalid_every=INVALID_EVERY))


@pytest.mark.slow
def test_broker_restart_bridge_kill_and_api_outage(rig: Rig) -> None:
    """One stream of 10,000 alarms through all three faults in turn."""
    messages = traffic_for(rig)
    third = len(messages) // 3

    rig.publish(messages[:third])
    rig.wait_processed(1000)
    rig.broker.stop(kill=False)  # graceful: the persistent sessions are saved
    time.sleep(2)
    rig.broker.start()
    assert rig.pub.wait_connected(30)

    rig.publish(messages[third : 2 * third])
    rig.wait_processed(4000)
    rig.stop_bridge(signal.SIGKILL)
    time.sleep(1)
    rig.start_bridge()

    rig.api.stop()
    rig.publish(messages[2 * third :])
    time.sleep(30)
    rig.api.start()
    _check(rig)
