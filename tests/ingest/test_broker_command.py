"""``gridpatrol broker``: what it prints about the broker it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Mosquitto

REPO = Path(__file__).resolve().parents[2]


def test_the_configured_brokers_password_is_not_printed(mosquitto: Mosquitto) -> None:
    url = f"mqtt://ops:s3cr%40t@127.0.0.1:{mosquitto.port}"
    env = {**os.environ, "GRIDPATROL_MQTT_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridpatrol.cli", "broker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert line == f"GRIDPATROL_MQTT_URL=mqtt://ops:***@127.0.0.1:{mosquitto.port}  (configured)\n"
    assert "s3cr" not in err
