"""``gridpatrol simulate-sensors``: a valid mix of envelopes, SenML packs and readings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.adapters import Adapted, Rejected, adapt
from gridpatrol.alarm_bridge.lifecycle import AlarmState, step
from gridpatrol.alarm_bridge.simulate import simulated_sensors
from gridpatrol.alarm_bridge.worker import BatchResult, BridgeCore
from gridpatrol.api.client import Outbox
from gridpatrol.demo import STOP_TIMEOUT_S
from gridpatrol.ingest.messages import AlarmEnvelope, decode_sensor_payload
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription
from gridpatrol.ingest.topics import parse_topic
from gridpatrol.site import Sensor, Site, load_site, parse_site

from ..conftest import Mosquitto
from .conftest import outbox_ops

SAMPLE_SITE = Path(__file__).resolve().parents[2] / "samples" / "site.yaml"


def test_simulated_patterns_are_valid_and_varied() -> None:
    site = load_site(SAMPLE_SITE)
    registry = {s.id: s for s in site.sensors}
    sims = simulated_sensors(site.sensors, "gridpatrol", seed=7)
    forms: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    statuses: Counter[bytes] = Counter()
    t0 = 1_795_000_000.0
    for i in range(6_000):
        sim = sims[i % len(sims)]
        pub = sim.next_message(t0 + i * 0.5)
        if pub is None:
            forms["silent"] += 1
            continue
        match = parse_topic("gridpatrol", pub.topic)
        assert match is not None
        if match.kind == "sensor_status":
            statuses[pub.payload] += 1
            continue
        now = datetime.fromtimestamp(t0 + i * 0.5, tz=UTC)
        assert isinstance(
            adapt(pub.payload, sensor_id=match.id, registry=registry, received_at=now), Adapted
        )
        decoded = decode_sensor_payload(pub.payload, topic_sensor_id=match.id, received_at=now)
        forms[type(decoded).__name__] += 1
        if isinstance(decoded, AlarmEnvelope):
            transitions[decoded.transition] += 1
    assert set(forms) == {"AlarmEnvelope", "SenMLPack", "ThresholdReading", "silent"}
    assert set(transitions) == {"raise", "update", "clear"}
    assert statuses[b"offline"] > 0 and statuses[b"online"] > 0


@pytest.mark.parametrize("kind", ["manhole_cover", "waterlogging", "smoke", "bin_fill", "noise"])
def test_a_sensor_without_thresholds_sends_what_the_bridge_takes(kind: str) -> None:
    # Thresholds are optional in the site file; the bridge cannot judge readings without them.
    site = parse_site(
        "site: {name: t, timezone: Asia/Shanghai}\nmqtt: {prefix: gp}\nsensors:\n"
        f"  - {{id: s-1, kind: {kind}, location: {{address: a}}}}\n"
    )
    registry = {s.id: s for s in site.sensors}
    (sim,) = simulated_sensors(site.sensors, "gp", seed=3)
    rejected: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    t0 = 1_795_000_000.0
    for i in range(3_000):
        pub = sim.next_message(t0 + i)
        match = parse_topic("gp", pub.topic) if pub is not None else None
        if pub is None or match is None or match.kind != "sensor_alarm":
            continue
        now = datetime.fromtimestamp(t0 + i, tz=UTC)
        adapted = adapt(pub.payload, sensor_id="s-1", registry=registry, received_at=now)
        if isinstance(adapted, Rejected):
            rejected[adapted.reason] += 1
            continue
        transitions.update(type(item.event).__name__ for item in adapted.inputs)
        decoded = decode_sensor_payload(pub.payload, topic_sensor_id="s-1", received_at=now)
        assert isinstance(decoded, AlarmEnvelope)
        transitions[decoded.transition] += 1
    assert rejected == Counter()
    assert set(transitions) == {"DeviceInput", "raise", "update", "clear"}


def _site_with_prefix(tmp_path: Path, prefix: str) -> Path:
    """The sample site on a topic prefix of the test's own."""
    site = tmp_path / "site.yaml"
    text = SAMPLE_SITE.read_text(encoding="utf-8")
    site.write_text(text.replace("prefix: gridpatrol", f"prefix: {prefix}"), encoding="utf-8")
    return site


def _listen(url: str, prefix: str, topic: str = "+/alarm") -> tuple[MqttConnection, Subscription]:
    listener = MqttConnection("sim-listen", MqttSettings.from_url(url), prefix=prefix)
    sub = listener.subscribe(f"{prefix}/sensors/{topic}", qos=1, maxsize=10_000)
    return listener, sub


def test_cli_publishes_at_the_given_rate(mqtt_prefix: str, tmp_path: Path) -> None:
    site = _site_with_prefix(tmp_path, mqtt_prefix)
    listener, sub = _listen("mqtt://127.0.0.1:1883", mqtt_prefix, "#")
    listener.start()
    try:
        cmd = [sys.executable, "-m", "gridpatrol.cli", "simulate-sensors", "--config", str(site)]
        done = subprocess.run(
            [*cmd, "--rate", "100", "--duration", "3"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (sent,) = [int(n) for n in re.findall(r"simulate-sensors: (\d+) messages in ", done.stderr)]
        received: list[Message] = []
        while len(received) < sent and (message := sub.get(10)) is not None:
            received.append(message)
        assert len(received) == sent  # every message it says it sent arrived, no more
        assert sub.get(0.5) is None
    finally:
        listener.stop()
    # Paced by its own schedule, it catches up after a stall: 3 s at 100/s, whatever the load.
    assert 290 <= sent <= 301
    senders = {m.topic.split("/")[-2] for m in received}
    assert senders >= {"mh-0001", "wl-0001", "bf-0001"}


def _first_raises(seed: int, rate: float, seconds: float) -> dict[str, float]:
    """Replay the sample site's simulation through the bridge's adapter and lifecycle."""
    site = load_site(SAMPLE_SITE)
    registry = {s.id: s for s in site.sensors}
    sims = simulated_sensors(site.sensors, "gridpatrol", seed=seed)
    states: dict[tuple[str, str], AlarmState] = {}
    raised: dict[str, float] = {}
    t0 = 1_795_000_000.0
    for i in range(int(seconds * rate)):
        t = t0 + i / rate
        pub = sims[i % len(sims)].next_message(t)
        match = parse_topic("gridpatrol", pub.topic) if pub is not None else None
        if pub is None or match is None or match.kind != "sensor_alarm":
            continue
        now = datetime.fromtimestamp(t, tz=UTC)
        adapted = adapt(pub.payload, sensor_id=match.id, registry=registry, received_at=now)
        assert isinstance(adapted, Adapted)
        for item in adapted.inputs:
            key = (item.sensor.id, item.alarm_type)
            states[key], effects = step(states.get(key, AlarmState()), item.event, item.t)
            if any(e.kind == "raise" for e in effects):
                raised.setdefault(item.candidate_type, item.t - t0)
    return raised


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
def test_a_two_minute_run_at_the_demos_rate_raises_every_reading_alarm(seed: int) -> None:
    # The demo publishes 1 message/s for its six sensors: each reports every 6 s.
    raised = _first_raises(seed, rate=1.0, seconds=120)
    assert {"noise", "bin_full", "waterlogging"} <= set(raised), raised
    assert raised["noise"] <= 100 and raised["bin_full"] <= 100, raised


def _through_the_bridge(
    site: Site, sensor: Sensor, alarm_type: str, seed: int, hours: int, db: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """One simulated sensor through the bridge core at the demo's pace (a reading every 6 s):
    the creates of its ``alarm_type`` alarms, and the ids of those cleared, in order (its
    device_offline alarms, a status "offline" now and then, aside)."""
    (sim,) = simulated_sensors([sensor], site.mqtt.prefix, seed=seed)
    core = BridgeCore(site)
    outbox = Outbox(db, None, component="alarm_bridge")
    t0 = 1_795_000_000.0
    for i in range(hours * 3600 // 6):
        t = t0 + 6 * i
        pub = sim.next_message(t)
        if pub is None:
            continue
        out = BatchResult()
        with outbox.transaction() as txn:
            store.init(txn.conn)
            core.handle(txn, pub.topic, pub.payload, datetime.fromtimestamp(t, tz=UTC), out)
            core.finish(txn, out)
            core.flush_patches(txn)
    alarms = [(k, b["alarm"]) for k, _, b in outbox_ops(outbox) if k != "evidence"]
    alarms = [(k, a) for k, a in alarms if a["alarm_type"] == alarm_type]
    creates = [a for k, a in alarms if k == "create"]
    cleared = [a["alarm_id"] for k, a in alarms if k == "patch" and "cleared_at" in a]
    return creates, cleared


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_sample_bin_emptied_by_a_truck_clears_its_alarm_and_raises_a_new_one(
    seed: int, tmp_path: Path
) -> None:
    """The sample site's bin (clear 60 %, held 600 s) through the bridge for two hours at the
    demo's pace (a reading every 6 s). Refilled to 60 % within about 550 s of a truck, its
    bin_full alarm never cleared; an emptied bin now rests longer than the hold: the alarm
    clears, and the bin filling up again raises a new one that references it."""
    site = load_site(SAMPLE_SITE)
    (bin_sensor,) = [s for s in site.sensors if s.kind == "bin_fill"]
    assert bin_sensor.thresholds is not None and bin_sensor.thresholds.clear_hold_s == 600
    creates, cleared = _through_the_bridge(
        site, bin_sensor, "bin_fill", seed, 2, tmp_path / "bridge.db"
    )
    assert len(creates) >= 2, creates
    assert cleared[0] == creates[0]["alarm_id"]
    assert creates[0]["previous_alarm_id"] is None
    assert creates[1]["previous_alarm_id"] == creates[0]["alarm_id"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_sample_noise_quiets_down_clears_its_alarm_and_raises_a_new_one(
    seed: int, tmp_path: Path
) -> None:
    """The sample site's noise sensor (raise 70 dB, clear 60 dB held 120 s) through the bridge
    for four hours at the demo's pace. Wobbling around 70 dB, it never stayed at 60 dB for
    the hold: its alarm, raised once, never cleared. It now quiets down for 300 s after each
    20 minutes of noise: each alarm clears 120 s into the lull, and the next busy spell raises
    a new one that references it, 10 in 4 h (one every 1500 s), the last still raised."""
    site = load_site(SAMPLE_SITE)
    (noise,) = [s for s in site.sensors if s.kind == "noise"]
    assert noise.thresholds is not None and noise.thresholds.clear_hold_s == 120
    creates, cleared = _through_the_bridge(site, noise, "noise", seed, 4, tmp_path / "bridge.db")
    assert len(creates) == 10, creates
    assert cleared == [a["alarm_id"] for a in creates[:-1]]
    assert [a["previous_alarm_id"] for a in creates] == [
        None,
        *(a["alarm_id"] for a in creates[:-1]),
    ]


def test_a_stop_after_the_broker_is_gone_warns_that_the_last_messages_may_be_lost(
    mosquitto: Mosquitto, mqtt_prefix: str, tmp_path: Path
) -> None:
    site = _site_with_prefix(tmp_path, mqtt_prefix)
    listener, sub = _listen(mosquitto.url, mqtt_prefix)
    listener.start()
    cmd = [sys.executable, "-m", "gridpatrol.cli", "simulate-sensors", "--config", str(site)]
    env = {**os.environ, "GRIDPATROL_MQTT_URL": mosquitto.url}
    proc = subprocess.Popen([*cmd, "--rate", "20"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert sub.get(timeout=30) is not None  # it is publishing
        listener.stop()
        mosquitto.stop(kill=True)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "the broker did not acknowledge the last messages" in stderr
