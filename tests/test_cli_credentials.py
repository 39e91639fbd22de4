"""Refused broker credentials stop ingest, detect and bridge at once with status 2.

Retrying a refused password would lock the account out on brokers that count failures, and a
supervisor restarting a component that exits 2 should not (samples/systemd:
RestartPreventExitStatus=2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "samples" / "site.yaml"


@pytest.fixture
def locked_broker(mosquitto: Any, tmp_path: Path) -> Any:
    """The test's private broker, restarted to know one user, gp / s3cret, and no anonymous
    clients."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gp", "s3cret"], check=True)
    mosquitto.stop()
    conf = mosquitto.conf.read_text()
    mosquitto.conf.write_text(
        conf.replace("allow_anonymous true", f"allow_anonymous false\npassword_file {passwords}")
    )
    mosquitto.start()
    return mosquitto


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["ingest", "--config", str(SITE)], "ingest: cannot start: "),
        (["detect", "--config", str(SITE), "--shard", "0/1"], "detect-0-of-1: cannot start: "),
        (["bridge", "--config", str(SITE)], "bridge: cannot start: "),
    ],
)
def test_refused_credentials_exit_2_at_once(
    locked_broker: Any, tmp_path: Path, command: list[str], says: str
) -> None:
    env = {
        **os.environ,
        "GRIDPATROL_MQTT_URL": f"mqtt://gp:wrong@127.0.0.1:{locked_broker.port}",
        "GRIDPATROL_API_URL": "http://127.0.0.1:9",
        "GRIDPATROL_API_TOKEN": "tok-producer",
        "GRIDPATROL_OUTBOX": str(tmp_path / "outbox.db"),
        "GRIDPATROL_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    refusal = [line for line in done.stderr.splitlines() if says in line]
    assert len(refusal) == 1, done.stderr[-2000:]
    assert "refused the credentials" in refusal[0] and refusal[0].endswith("(Not authorized)")
    # That line is the only one: the connection's own report of the refusal is a debug line.
    assert done.stderr.count("refused the credentials") == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
