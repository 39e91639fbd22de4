"""``gridpatrol broker``: what it prints about the broker it runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridpatrol.ingest.cli import BROKER_POLL_S
from tests.conftest import Mosquitto

REPO = Path(__file__).resolve().parents[2]


def test_the_configured_brokers_password_is_not_printed(mosquitto: Mosquitto) -> None:
    proc = run_broker([], f"mqtt://ops:s3cr%40t@127.0.0.1:{mosquitto.port}")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        # It serves the configured broker, which it did not start, until it is stopped: its
        # watch for a broker that died has none to watch.
        time.sleep(BROKER_POLL_S * 2.5)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert line == f"GRIDPATROL_MQTT_URL=mqtt://ops:***@127.0.0.1:{mosquitto.port}  (configured)\n"
    assert proc.returncode == 0 and "s3cr" not in err
    assert [line for line in err.splitlines() if " INFO " not in line] == []


def test_an_amqtt_broker_asked_for_is_said_to_be_so(mosquitto: Mosquitto) -> None:
    """With --amqtt, a configured broker reachable and a mosquitto binary there, the warning
    said "no broker configured and no mosquitto binary"."""
    proc = run_broker(["--amqtt"], mosquitto.url)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert re.fullmatch(r"GRIDPATROL_MQTT_URL=mqtt://127\.0\.0\.1:\d+  \(amqtt\)\n", line)
    (warning,) = [
        line.partition(" WARNING ")[2] for line in err.splitlines() if " WARNING " in line
    ]
    said = re.sub(r"\d+", "N", warning.partition(" (MQTT")[0])
    assert said == (
        "gridpatrol.ingest.broker: as asked: started the embedded amqtt broker (pid N) on N.N.N.N:N"
    ), err
    assert proc.returncode == 0, err


def run_broker(args: list[str], url: str) -> subprocess.Popen[str]:
    """``gridpatrol broker <args>`` with ``url`` configured, its output piped."""
    env = {**os.environ, "GRIDPATROL_MQTT_URL": url}
    command = [sys.executable, "-m", "gridpatrol.cli", "broker", *args]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
