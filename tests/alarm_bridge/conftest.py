"""Fixtures of the bridge tests: a site with one sensor of each kind, a storing outbox."""

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
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.alarm_bridge import loadgen
from gridpatrol.api.client import Outbox
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.topics import deadletter_topic
from gridpatrol.site import Site, parse_site

SITE_YAML = """
site: {name: 测试街道, timezone: Asia/Shanghai}
mqtt: {prefix: PREFIX}
cameras:
  - id: cam-1
    source: mqtt
    location: {lat: 31.28, lon: 121.45}
sensors:
  - id: mh-1
    kind: manhole_cover
    name: 井盖一
    location: {lat: 31.2803, lon: 121.4517, address: 大宁路 102号, grid_code: JA-DN-0101}
    camera: cam-1
    expected_interval_s: 600
    thresholds: {raise: 15, clear: 5, unit: deg, debounce_s: 0, clear_hold_s: 0}
  - id: wl-1
    kind: waterlogging
    location: {address: 广延路 下立交}
    expected_interval_s: 300
    thresholds: {raise: 15, clear: 5, unit: cm, debounce_s: 0, clear_hold_s: 0}
  - id: sm-1
    kind: smoke
    location: {grid_code: JA-DN-0203}
  - id: sm-2
    kind: smoke
    location: {grid_code: JA-DN-0204}
    thresholds: {raise: 1, clear: 0}
  - id: bf-1
    kind: bin_fill
    location: {lat: 31.2821, lon: 121.4491}
    thresholds: {raise: 90, clear: 60, unit: "%", debounce_s: 0, clear_hold_s: 0}
"""


def make_site(prefix: str = "gridpatrol") -> Site:
    return parse_site(SITE_YAML.replace("PREFIX", prefix), "test-site.yaml")


@pytest.fixture
def site() -> Site:
    return make_site()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    """An outbox that only stores: the tests read what it would send."""
    return Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")


def outbox_ops(box: Outbox) -> list[tuple[str, str | None, Any]]:
    """(kind, candidate id, JSON body or content type) of every queued operation, in order."""
    with box.transaction() as txn:
        rows = txn.conn.execute(
            "SELECT kind, candidate_id, payload, content_type FROM outbox_ops ORDER BY seq"
        ).fetchall()
    return [
        (kind, cid, ctype if kind == "evidence" else json.loads(payload))
        for kind, cid, payload, ctype in rows
    ]


class BridgeRig:
    """``gridpatrol bridge`` in a subprocess, with a publisher and a dead-letter watcher."""

    def __init__(
        self,
        tmp: Path,
        broker_url: str,
        api: Any,
        prefix: str,
        site: str,
        bridge_args: tuple[str, ...] = (),
    ) -> None:
        self.broker_url = broker_url
        self.bridge_args = bridge_args
        self.api = api
        self.prefix = prefix
        self.site = tmp / "site.yaml"
        self.site.write_text(site, encoding="utf-8")
        self.state = tmp / "state"
        self.log = tmp / "bridge.log"
        self.proc: subprocess.Popen[bytes] | None = None
        settings = MqttSettings.from_url(broker_url)
        self.pub = MqttConnection("rel-pub", settings, prefix=self.prefix)
        # Persistent, so dead letters published while the broker restarts are kept for us.
        self.dead = MqttConnection(
            "rel-dead",
            settings,
            prefix=self.prefix,
            persistent=True,
            manual_ack=True,
            client_id=f"gp-rel-dead-{self.prefix}",  # runs side by side keep their sessions
        )
        self.dead_sub = self.dead.subscribe(
            deadletter_topic(self.prefix, "alarm_bridge"), qos=1, maxsize=100_000
        )
        self.dead_payloads: set[str] = set()
        self.dead_reasons: dict[bytes, str] = {}  # payload: reason of its dead letter
        self.probes: set[str] = set()

    def start_bridge(self) -> None:
        env = {
            **os.environ,
            "GRIDPATROL_MQTT_URL": self.broker_url,
            "GRIDPATROL_API_URL": self.api.url,
            "GRIDPATROL_API_TOKEN": self.api.tokens["producer"],
            "GRIDPATROL_STATE_DIR": str(self.state),
        }
        cmd = [sys.executable, "-m", "gridpatrol.cli", "bridge", "--config", str(self.site)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--progress-s", "2", *self.bridge_args], env=env, stdout=log, stderr=log
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
            letter = json.loads(message.payload)
            payload = letter["payload_b64"]
            is_probe = base64.b64decode(payload).startswith(b"probe-")
            (self.probes if is_probe else self.dead_payloads).add(payload)
            if not is_probe:
                self.dead_reasons[base64.b64decode(payload)] = letter["reason"]
            self.dead.ack(message)
            message = self.dead_sub.get(timeout=0)

    def dead_letters(self, count: int, timeout: float = 60) -> dict[bytes, str]:
        """Wait for ``count`` dead letters (probes aside); the reason of each payload."""
        deadline = time.monotonic() + timeout
        while len(self.dead_reasons) < count:
            assert time.monotonic() < deadline, self.dead_reasons
            self._collect_dead(wait=0.5)
        return self.dead_reasons

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

    def settled(self, alarms: int, timeout: float = 60) -> int:
        """Wait until the bridge has handled ``alarms`` alarm envelopes and has nothing left to
        send (no update waiting, no operation pending); the patches the API refused for good
        (410 Gone), counted. Read from its state file."""
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(self.state / "bridge.db", timeout=5) as conn:
                waiting = conn.execute(
                    "SELECT (SELECT COUNT(*) FROM bridge_dedup WHERE event_key LIKE 'e:%') < ?"
                    " OR EXISTS (SELECT 1 FROM bridge_pending_patch)"
                    " OR EXISTS (SELECT 1 FROM bridge_snapshot_wanted)"
                    " OR EXISTS (SELECT 1 FROM outbox_ops WHERE state = 'pending')",
                    (alarms,),
                ).fetchone()[0]
                gone = conn.execute(
                    "SELECT COUNT(*) FROM outbox_ops WHERE state = 'failed'"
                    " AND last_error LIKE '410 %'"
                ).fetchone()[0]
            if not waiting:
                return int(gone)
            assert time.monotonic() < deadline, self.log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)

    def candidates(self, **filters: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        with self.api.client("reviewer") as http:
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 500, **filters}
                if cursor:
                    params["cursor"] = cursor
                page = http.get("/candidates", params=params).json()
                items += page["items"]
                cursor = page["next_cursor"]
                if not cursor:
                    return items

    def settle(self, want: loadgen.Expected, timeout: float = 150) -> loadgen.Tally:
        deadline = time.monotonic() + timeout
        while True:
            self._collect_dead()
            got = loadgen.tally(self.candidates(type="manhole_cover"))
            done = (got.candidates, got.counted) == (want.candidates, want.counted)
            if done and len(self.dead_payloads) >= want.dead_letters:
                return got
            if time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"not settled: {got} {len(self.dead_payloads)}\n{tail}")
            time.sleep(1.0)

    def __enter__(self) -> BridgeRig:
        self.pub.start()
        self.dead.start()
        self.start_bridge()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.stop_bridge(signal.SIGKILL)
        self.pub.stop()
        self.dead.stop()
