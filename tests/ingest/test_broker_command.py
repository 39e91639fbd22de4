"""``gridpatrol broker``: what it prints about the broker it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridpatrol.ingest.cli import BROKER_POLL_S
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
