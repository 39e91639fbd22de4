"""The brokers ``ensure_broker`` starts when none is configured."""

from __future__ import annotations

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
