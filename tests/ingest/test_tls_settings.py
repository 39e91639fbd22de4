"""TLS files the components cannot use are a setting to mend: one line and status 2, at once.
So is a broker certificate they cannot verify: paho would retry that handshake for ever.

For the files no broker is contacted: the TLS context is built when the settings are read,
before any connection (the URL's port 1 has no listener).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridpatrol.ingest.mqtt import MqttConfigError, MqttSettings

from .test_transport import run_tls_broker

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "samples" / "site.yaml"
MISSING = "/nonexistent/tls/ca.pem"
CLI = "gridpatrol.ingest.cli"
CA_MISSING = f"TLS CA file '{MISSING}' (GRIDPATROL_MQTT_CA): No such file or directory"


def gridpatrol(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", *args],
        env={
            **os.environ,
            "GRIDPATROL_MQTT_URL": "mqtts://127.0.0.1:1",
            "GRIDPATROL_API_URL": "http://127.0.0.1:9",
            "GRIDPATROL_API_TOKEN": "tok-producer",
            "GRIDPATROL_OUTBOX": str(tmp_path / "outbox.db"),
            "GRIDPATROL_STATE_DIR": str(tmp_path / "state"),
            **env,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["ingest"], f"gridpatrol.ingest.cli: ingest: cannot start: {CA_MISSING}"),
        (["watch-frames"], f"gridpatrol.ingest.cli: watch-frames: cannot start: {CA_MISSING}"),
        (
            ["simulate-sensors", "--rate", "1"],
            f"gridpatrol.alarm_bridge.cli: simulate-sensors: cannot start: {CA_MISSING}",
        ),
        (["bridge"], f"gridpatrol.alarm_bridge.cli: {CA_MISSING}"),
        (
            ["detect", "--shard", "0/1"],
            f"gridpatrol.detectors.worker: detect-0-of-1: cannot start: {CA_MISSING}",
        ),
    ],
)
def test_every_command_says_an_unreadable_ca_file_in_one_line_and_exits_2(
    tmp_path: Path, command: list[str], says: str
) -> None:
    done = gridpatrol([*command, "--config", str(SITE)], tmp_path, GRIDPATROL_MQTT_CA=MISSING)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line.endswith(f" ERROR {says}"), line


@pytest.fixture
def junk(tmp_path: Path) -> Path:
    path = tmp_path / "junk.pem"
    path.write_text("not a certificate\n")
    return path


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (
            {"GRIDPATROL_MQTT_CA": "{tmp}"},
            "TLS CA file '{tmp}' (GRIDPATROL_MQTT_CA): Is a directory",
        ),
        (
            {"GRIDPATROL_MQTT_CA": "{junk}"},
            "TLS CA file '{junk}' (GRIDPATROL_MQTT_CA): [X509: NO_CERTIFICATE_OR_CRL_FOUND] no "
            "certificate or crl found",
        ),
        (
            {"GRIDPATROL_MQTT_CERT": "/nonexistent/tls/worker.pem"},
            "TLS client certificate '/nonexistent/tls/worker.pem' (GRIDPATROL_MQTT_CERT): No such "
            "file or directory",
        ),
        (
            {"GRIDPATROL_MQTT_CERT": "{junk}", "GRIDPATROL_MQTT_KEY": "/nonexistent/worker.key"},
            "TLS client key '/nonexistent/worker.key' (GRIDPATROL_MQTT_KEY): No such file or "
            "directory",
        ),
        (
            {"GRIDPATROL_MQTT_KEY": "{junk}"},
            "TLS client key '{junk}' (GRIDPATROL_MQTT_KEY) without a client certificate "
            "(GRIDPATROL_MQTT_CERT)",
        ),
        (
            {"GRIDPATROL_MQTT_CERT": "{junk}", "GRIDPATROL_MQTT_KEY": "{junk}"},
            "TLS client certificate '{junk}' and key '{junk}' (GRIDPATROL_MQTT_CERT, "
            "GRIDPATROL_MQTT_KEY): [SSL] PEM lib",
        ),
    ],
    ids=["CA a directory", "CA no PEM", "no cert", "no key", "key without cert", "cert no PEM"],
)
def test_a_tls_file_that_cannot_be_used_is_said_naming_its_variable(
    tmp_path: Path, junk: Path, files: dict[str, str], says: str
) -> None:
    env = {k: v.format(tmp=tmp_path, junk=junk) for k, v in files.items()}
    done = gridpatrol(["ingest", "--config", str(SITE)], tmp_path, **env)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    expected = says.format(tmp=tmp_path, junk=junk)
    assert line.endswith(f" ERROR gridpatrol.ingest.cli: ingest: cannot start: {expected}"), line


def test_from_env_builds_the_tls_context_only_for_mqtts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDPATROL_MQTT_CA", MISSING)
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", "mqtt://127.0.0.1:1883")
    assert MqttSettings.from_env().ca_file == MISSING  # plain MQTT does not read it
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", "mqtts://127.0.0.1:8883")
    with pytest.raises(MqttConfigError) as err:
        MqttSettings.from_env()
    assert str(err.value) == CA_MISSING


UNSET = "a CA the system trusts (GRIDPATROL_MQTT_CA is unset)"
SELF_SIGNED = "self-signed certificate in certificate chain"  # the system CAs lack our CA
OTHER_HOST = "Hostname mismatch, certificate is not valid for 'localhost'."


@pytest.mark.parametrize(
    ("command", "says", "host", "why"),
    [
        (["ingest"], f"{CLI}: ingest", "127.0.0.1", SELF_SIGNED),
        (["ingest"], f"{CLI}: ingest", "localhost", OTHER_HOST),
        (["bridge"], "gridpatrol.alarm_bridge.cli: bridge", "127.0.0.1", SELF_SIGNED),
        (
            ["detect", "--shard", "0/1"],
            "gridpatrol.detectors.worker: detect-0-of-1",
            "127.0.0.1",
            SELF_SIGNED,
        ),
    ],
    ids=["private CA not given", "certificate for another host", "bridge", "detect"],
)
def test_a_broker_certificate_that_fails_verification_is_said_in_one_line(
    tmp_path: Path, command: list[str], says: str, host: str, why: str
) -> None:
    broker, port, ca = run_tls_broker(tmp_path)
    env = {"GRIDPATROL_MQTT_URL": f"mqtts://{host}:{port}"}
    trust = why == OTHER_HOST  # the CA is given, the certificate names 127.0.0.1 only
    if trust:
        env["GRIDPATROL_MQTT_CA"] = str(ca)
    try:
        done = gridpatrol([*command, "--config", str(SITE)], tmp_path, **env)
    finally:
        broker.terminate()
        broker.wait(10)
    assert done.returncode == 2, done.stderr[-2000:]
    # Said once, at the end of the start's wait, instead of "not reachable yet" and retrying.
    (line,) = [line for line in done.stderr.splitlines() if " INFO " not in line]
    trusted = f"the CA in GRIDPATROL_MQTT_CA, {ca}" if trust else UNSET
    expected = (
        f"{says}: cannot start: broker mqtts://{host}:{port}: TLS certificate verify failed: "
        f"{why}; the broker's certificate must name {host} and be signed by {trusted}"
    )
    assert line.endswith(f" ERROR {expected}"), line
