"""The brokers ``ensure_broker`` starts when none is configured, and ``gridpatrol broker``
when one cannot start or dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gridpatrol.ingest.broker import start_amqtt


def test_amqtt_starts_from_a_folder_with_a_gridpatrol_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkout's root (or an image's WORKDIR) holds a gridpatrol/ folder that is not the
    # installed package: the broker process must not import from there (`python -m` would).
    shadow = tmp_path / "gridpatrol" / "ingest"
    shadow.mkdir(parents=True)
    (tmp_path / "gridpatrol" / "__init__.py").write_text("")
    (shadow / "__init__.py").write_text("")
    (shadow / "broker.py").write_text('raise SystemExit("imported from the working directory")')
    monkeypatch.chdir(tmp_path)
    log_path = tmp_path / "broker.log"
    handle = start_amqtt(log_path=log_path)
    try:
        assert handle.kind == "amqtt" and handle.exit_code() is None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        port = int(handle.url.rsplit(":", 1)[1])
        assert client.connect("127.0.0.1", port) == mqtt.MQTT_ERR_SUCCESS
        client.disconnect()
    finally:
        handle.stop()
    assert log_path.exists()  # its output goes to the log, not to the terminal


class BrokerCommand:
    """``gridpatrol broker`` in a subprocess, its stderr in a file read as it grows."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.err = tmp_path / "broker.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gridpatrol.cli", "broker", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def child_pid(self) -> int:
        """The pid of the broker it started, as it logged it, checked to be its child."""
        pids = re.findall(r"\(pid (\d+)\)", self.err.read_text())
        assert len(pids) == 1, self.err.read_text()
        pid = int(pids[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid  # its parent
        return pid

    def result(self) -> tuple[int, str, str]:
        """Its status, stdout and stderr once it has ended of itself."""
        try:
            out, _ = self.proc.communicate(timeout=30)
        finally:
            self.end()
        return self.proc.returncode, out, self.err.read_text()

    def end(self) -> None:
        if self.proc.poll() is None:  # a failed test: SIGTERM stops the broker with it
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=30)


def no_broker_configured() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GRIDPATROL_MQTT_URL"}


@pytest.mark.parametrize("amqtt", [False, True], ids=["mosquitto", "amqtt"])
def test_the_broker_command_exits_1_in_one_line_when_its_broker_dies(
    tmp_path: Path, amqtt: bool
) -> None:
    command = BrokerCommand(tmp_path, no_broker_configured(), *(["--amqtt"] if amqtt else []))
    try:
        assert command.proc.stdout is not None
        line = command.proc.stdout.readline()
        kind = "amqtt" if amqtt else "mosquitto"
        assert re.fullmatch(rf"GRIDPATROL_MQTT_URL=mqtt://127\.0\.0\.1:\d+  \({kind}\)\n", line)
        pid = command.child_pid()
        os.kill(pid, signal.SIGKILL)
        # Before, it went on serving the dead broker's URL and exited 0 at the next SIGTERM.
        assert command.proc.wait(timeout=30) == 1
    finally:
        command.end()
    errors = [line for line in command.err.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, command.err.read_text()
    assert errors[0].endswith(
        f" ERROR gridpatrol.ingest.cli: broker: {kind} (pid {pid}) was killed by SIGKILL; stopping"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mqtt://ops:s3cret@127.0.0.1:notaport",
         "broker URL 'mqtt://ops:***@127.0.0.1:notaport': Port could not be cast to integer "
         "value as 'notaport'"),
        ("http://127.0.0.1:1883",
         "broker URL must be mqtt:// or mqtts://, got 'http://127.0.0.1:1883'"),
    ],
)  # fmt: skip
def test_the_broker_command_with_a_broker_url_that_cannot_work_exits_2_in_one_line(
    tmp_path: Path, url: str, says: str
) -> None:
    command = BrokerCommand(tmp_path, {**no_broker_configured(), "GRIDPATROL_MQTT_URL": url})
    code, out, err = command.result()
    assert (code, out) == (2, ""), err
    (line,) = err.splitlines()
    assert line.endswith(f" ERROR gridpatrol.ingest.cli: broker: cannot start: {says}")


def test_the_broker_command_whose_broker_cannot_start_exits_1_in_one_line(
    tmp_path: Path,
) -> None:
    # A mosquitto that ends at once, as one with a configuration it refuses would.
    binary = tmp_path / "mosquitto"
    binary.write_text("#!/bin/sh\nexit 3\n")
    binary.chmod(0o755)
    env = {**no_broker_configured(), "PATH": str(tmp_path)}
    code, out, err = BrokerCommand(tmp_path, env).result()
    assert (code, out) == (1, ""), err
    (line,) = err.splitlines()
    assert line.endswith(
        " ERROR gridpatrol.ingest.cli: broker: cannot start: the broker exited with code 3"
    )


def test_a_sigterm_while_the_broker_starts_stops_the_broker_too(tmp_path: Path) -> None:
    """The broker takes a while to listen (a loaded machine): a SIGTERM then ends the command
    and the broker with it, rather than the command alone."""
    from gridpatrol.ingest.broker import mosquitto_binary

    real = mosquitto_binary()
    assert real is not None
    started = tmp_path / "started"
    binary = tmp_path / "mosquitto"
    binary.write_text(f'#!/bin/sh\necho $$ > {started}\nsleep 2\nexec {real} "$@"\n')
    binary.chmod(0o755)
    env = {**no_broker_configured(), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    command = BrokerCommand(tmp_path, env)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() or not started.read_text().strip():
            assert time.monotonic() < deadline and command.proc.poll() is None
            time.sleep(0.02)
        pid = int(started.read_text())
        command.proc.send_signal(signal.SIGTERM)
        assert command.proc.wait(timeout=30) == 0
    finally:
        command.end()
    with pytest.raises(ProcessLookupError):  # reaped by the command that stopped it
        os.kill(pid, 0)
