"""samples/mosquitto.conf and samples/mosquitto.acl on a real Mosquitto: rights per component."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings, Subscription

from ..conftest import start_listening

REPO = Path(__file__).resolve().parents[2]
USERS = ("ingest-1", "detect-1", "alarm-bridge", "api", "sensor-gw-1", "monitor")


@pytest.fixture
def sample_broker(tmp_path: Path) -> Iterator[int]:
    with running_sample(tmp_path, free_port()) as port:
        yield port


@contextmanager
def running_sample(tmp_path: Path, port: int) -> Iterator[int]:
    """Mosquitto with the sample configuration: local port, local paths, one password each.

    Its port: ``port``, or a new free one if another process listens there."""
    passwd = tmp_path / "passwd"
    for i, user in enumerate(USERS):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(passwd), user, f"pw-{user}"], check=True
        )
    conf = tmp_path / "mosquitto.conf"
    errors = tmp_path / "mosquitto.err"

    def launch(port: int) -> subprocess.Popen[bytes]:
        lines = []
        for line in (REPO / "samples" / "mosquitto.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            replaced = {
                "listener": f"listener {port} 127.0.0.1",
                "persistence_location": f"persistence_location {tmp_path}/",
                "password_file": f"password_file {passwd}",
                "acl_file": f"acl_file {REPO / 'samples' / 'mosquitto.acl'}",
            }
            lines.append(replaced.get(key, line))
        if os.geteuid() == 0:
            lines.append("user root")  # as root Mosquitto drops to a user that cannot read it
        conf.write_text("\n".join(lines) + "\n")
        with errors.open("ab") as err:  # the sample logs to stderr: a pipe could fill up
            return subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=err)

    proc, port = start_listening(
        launch,
        port,
        movable=True,
        output=lambda proc: errors.read_text(errors="replace")[-3000:],
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def connect(port: int, user: str, component: str) -> MqttConnection:
    settings = MqttSettings.from_url(f"mqtt://{user}:pw-{user}@127.0.0.1:{port}")
    return MqttConnection(component, settings)


def test_the_sample_broker_moves_off_a_port_another_process_took(tmp_path: Path) -> None:
    """Answering on the port is no proof that the broker started: another process may have
    taken the port since free_port(), and our Mosquitto died."""
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        with running_sample(tmp_path, taken) as port:
            assert port != taken
            ingest = connect(port, "ingest-1", "ingest-1")
            try:
                assert ingest.start(10)
                assert ingest.publish_wait("gridpatrol/cameras/c1/frame", b"frame", qos=1)
            finally:
                ingest.stop()


def test_each_component_has_its_rights_and_nothing_more(sample_broker: int) -> None:
    detect = connect(sample_broker, "detect-1", "detect-0-of-2")
    frames = detect.subscribe("gridpatrol/cameras/+/frame")
    statuses = detect.subscribe("gridpatrol/components/+/status", qos=1)
    ingest = connect(sample_broker, "ingest-1", "ingest-1")
    gateway = connect(sample_broker, "sensor-gw-1", "sensor-gw-1")
    bridge = connect(sample_broker, "alarm-bridge", "alarm-bridge")
    alarms = bridge.subscribe("gridpatrol/sensors/+/alarm", qos=1)
    try:
        for conn in (detect, ingest, gateway, bridge):
            assert conn.start(10), conn.component_id
        assert ingest.publish_wait("gridpatrol/cameras/c1/frame", b"from ingest", qos=1)
        assert gateway.publish_wait("gridpatrol/cameras/c1/frame", b"spoofed", qos=1)
        assert gateway.publish_wait("gridpatrol/sensors/mh-1/alarm", b"alarm", qos=1)
        assert ingest.publish_wait("gridpatrol/sensors/mh-1/alarm", b"forged alarm", qos=1)
        # Each denied message was confirmed, so handled, before an allowed writer's "end" was
        # sent; anything let through would reach the reader before that "end".
        assert ingest.publish_wait("gridpatrol/cameras/c1/frame", b"end", qos=1)
        assert gateway.publish_wait("gridpatrol/sensors/mh-1/alarm", b"end", qos=1)
        assert payloads_until_end(frames) == [b"from ingest", b"end"]
        assert payloads_until_end(alarms) == [b"alarm", b"end"]
        assert frames.drain() == [] and alarms.drain() == []
        expected = {"detect-0-of-2", "ingest-1", "sensor-gw-1", "alarm-bridge"}
        assert status_ids(statuses, expected) == expected
    finally:
        for conn in (detect, ingest, gateway, bridge):
            conn.stop()


def status_ids(sub: Subscription, expected: set[str], timeout: float = 10.0) -> set[str]:
    """The component ids of the statuses ``sub`` got once all of ``expected`` are in (or after
    ``timeout`` s), with whatever else had come by then."""
    ids: set[str] = set()
    deadline = time.monotonic() + timeout
    while not expected <= ids:
        message = sub.get(max(0.0, deadline - time.monotonic()))
        if message is None:
            break
        ids.add(message.topic.split("/")[2])
    return ids | {m.topic.split("/")[2] for m in sub.drain()}


def payloads_until_end(sub: Subscription, timeout: float = 10.0) -> list[bytes]:
    """What ``sub`` gets up to and with an ``end`` message, waiting up to ``timeout`` s each."""
    got: list[bytes] = []
    while not got or got[-1] != b"end":
        message = sub.get(timeout)
        assert message is not None, f"no end after {got}"
        got.append(message.payload)
    return got


def test_a_killed_component_is_seen_offline_whatever_its_id(
    sample_broker: int, tmp_path: Path, gridpatrol_proc: Any
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: {name: T}\ncameras: []\n")
    watcher = connect(sample_broker, "monitor", "monitor-1")
    statuses = watcher.subscribe("gridpatrol/components/watch-7/status", qos=1)
    assert watcher.start(10)
    url = f"mqtt://detect-1:pw-detect-1@127.0.0.1:{sample_broker}"
    args = ["watch-frames", "--config", str(site), "--component-id", "watch-7"]
    proc = gridpatrol_proc(args, url)
    try:
        first = statuses.get(30)
        assert first is not None and first.payload == b"online"
        proc.signal(signal.SIGKILL)
        last = statuses.get(30)
    finally:
        watcher.stop()
    assert last is not None
    assert last.payload == b"offline"


SYSTEMD = REPO / "samples" / "systemd"
# The units the samples ship, with the folders each may write (ProtectSystem=strict makes the
# rest read-only). Ingest keeps nothing on disk: it may write nowhere.
WRITES = {
    "gridpatrol-api.service": ["/srv/evidence"],
    "gridpatrol-bridge.service": ["/var/lib/gridpatrol"],
    "gridpatrol-detect@.service": ["/var/lib/gridpatrol"],
    "gridpatrol-ingest.service": [],
}
UNITS = sorted(WRITES)


def _env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in path.read_text().splitlines():
        if entry and not entry.startswith("#"):
            key, value = entry.split("=", 1)
            env[key] = value
    return env


def _unit_env(unit: Path, instance: str = "0") -> dict[str, str]:
    """The variables a systemd unit loads, read from the sample environment files it names
    (files named with a leading "-" may be missing, as systemd allows)."""
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("EnvironmentFile="):
            name = line.split("=", 1)[1]
            sample = unit.parent / Path(name.lstrip("-")).name.replace("%i", instance)
            if name.startswith("-") and not sample.exists():
                continue
            env |= _env_file(sample)
    return env


def _settings(unit: Path, key: str) -> list[str]:
    """Every value of ``key`` in a unit, space-separated lists split."""
    lines = unit.read_text().splitlines()
    return [
        v for line in lines if line.startswith(f"{key}=") for v in line.split("=", 1)[1].split()
    ]


@pytest.mark.parametrize(
    ("unit", "user"),
    [
        ("gridpatrol-ingest.service", "ingest-1"),
        ("gridpatrol-detect@.service", "detect-1"),
        ("gridpatrol-bridge.service", "alarm-bridge"),
        ("gridpatrol-api.service", "api"),
    ],
)
def test_each_systemd_unit_connects_as_its_own_user_of_the_sample_acl(unit: str, user: str) -> None:
    acl = (REPO / "samples" / "mosquitto.acl").read_text().splitlines()
    assert f"user {user}" in acl
    assert _unit_env(REPO / "samples" / "systemd" / unit)["GRIDPATROL_MQTT_USERNAME"] == user


def test_these_are_the_units_the_samples_ship() -> None:
    assert sorted(p.name for p in SYSTEMD.glob("*.service")) == UNITS


@pytest.mark.parametrize("unit", UNITS)
def test_each_systemd_unit_stays_down_on_setup_errors(unit: str) -> None:
    """Status 2 is setup to mend (refused credentials among it): a restart would repeat it."""
    lines = (REPO / "samples" / "systemd" / unit).read_text().splitlines()
    assert "RestartPreventExitStatus=2" in lines


def test_each_detector_shard_names_its_own_metrics_port() -> None:
    """A port built from the shard number ("910%i") is 9100 for shard 0 and no port from 10."""
    unit = REPO / "samples" / "systemd" / "gridpatrol-detect@.service"
    lines = unit.read_text().splitlines()
    assert not [line for line in lines if line.startswith("Environment=GRIDPATROL_METRICS_PORT")]
    assert _unit_env(unit)["GRIDPATROL_METRICS_PORT"] == "9101"


def test_every_detector_shard_the_samples_enable_has_its_own_settings() -> None:
    """``gridpatrol-detect@K`` reads /etc/gridpatrol/detect-K.env, and systemd refuses to start
    a unit whose environment file is missing: every shard the samples enable needs one, each
    with a metrics port of its own."""
    unit = SYSTEMD / "gridpatrol-detect@.service"
    shards = int(_env_file(SYSTEMD / "gridpatrol.env")["GRIDPATROL_DETECT_SHARDS"])
    enabled = re.findall(r"gridpatrol-detect@(\d+)", unit.read_text().splitlines()[0])
    assert enabled == [str(k) for k in range(shards)]
    ports = [_unit_env(unit, str(k))["GRIDPATROL_METRICS_PORT"] for k in range(shards)]
    assert len(set(ports)) == shards, ports


def _install_steps() -> str:
    """The shell block of docs/operations.md's section on installing the systemd samples."""
    doc = (REPO / "docs" / "operations.md").read_text()
    section = doc.split("### Installing the systemd samples", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("unit", UNITS)
def test_what_each_unit_may_write_exists_before_it_starts(unit: str) -> None:
    """A ReadWritePaths= folder that does not exist stops the unit with 226/NAMESPACE: each must
    be made, with its parents, by systemd (StateDirectory=, under /var/lib) or by the documented
    install steps for the unit's user."""
    path = SYSTEMD / unit
    assert _settings(path, "ReadWritePaths") == WRITES[unit]
    (user,) = _settings(path, "User")
    made = [f"/var/lib/{d}" for d in _settings(path, "StateDirectory")]
    for step in _install_steps().splitlines():
        words = step.split()
        if words[:2] == ["install", "-d"] and words[words.index("-o") + 1] == user:
            made.append(words[-1])
    for folder in _settings(path, "ReadWritePaths"):
        if folder.startswith("-"):
            continue  # may be missing
        assert any(folder == m or m.startswith(folder + "/") for m in made), (unit, folder)


def test_the_api_unit_may_write_its_evidence_folder() -> None:
    unit = SYSTEMD / "gridpatrol-api.service"
    evidence = _unit_env(unit)["GRIDPATROL_EVIDENCE_DIR"]
    assert evidence in _settings(unit, "ReadWritePaths")
    assert evidence in _settings(unit, "RequiresMountsFor")


def _listeners(conf: str) -> dict[int, bool]:
    """The ports a Mosquitto configuration listens on, and whether each has TLS."""
    listeners: dict[int, bool] = {}
    port = None
    for line in conf.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            port = int(words[1])
            listeners[port] = False
        elif words[0] == "certfile" and port is not None:
            listeners[port] = True
    return listeners


def test_the_samples_connect_to_a_listener_the_sample_broker_has() -> None:
    """The URL in the systemd environment, and the first one the broker sample's header gives
    (the one for the sample as shipped), name a port the sample enables, with TLS exactly when
    that listener has it."""
    conf = (REPO / "samples" / "mosquitto.conf").read_text()
    listeners = _listeners(conf)
    header = conf.split("\n\n", 1)[0]
    urls = [
        re.findall(r"GRIDPATROL_MQTT_URL=(\S+)", header)[0],
        _env_file(SYSTEMD / "gridpatrol.env")["GRIDPATROL_MQTT_URL"],
    ]
    for url in urls:
        settings = MqttSettings.from_url(url)
        assert listeners.get(settings.port) is settings.tls, (url, listeners)
