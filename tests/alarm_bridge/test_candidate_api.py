"""The bridge's candidates as the intake API keeps them: the real bridge, broker and API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.alarm_bridge.candidates import iso
from gridpatrol.ingest.topics import sensor_alarm_topic

from .conftest import BridgeRig

BROKER = "mqtt://127.0.0.1:1883"

SITE = """
site: {{name: 候选测试}}
mqtt: {{prefix: {prefix}}}
sensors:
  - {{id: sm-api, kind: smoke, location: {{address: 大宁路 9号}}}}
"""


@pytest.fixture
def rig(tmp_path: Path, api_server: Any, mqtt_prefix: str) -> Iterator[BridgeRig]:
    with BridgeRig(tmp_path, BROKER, api_server, mqtt_prefix, SITE.format(prefix=mqtt_prefix)) as r:
        yield r


def smoke(event_id: str, transition: str, ts: float) -> bytes:
    body = {
        "schema": "gridalarm/1",
        "event_id": event_id,
        "sensor_id": "sm-api",
        "alarm_type": "smoke",
        "transition": transition,
        "severity": "MAJOR",
        "ts": ts,
    }
    return json.dumps(body).encode()


def test_a_cleared_alarm_shows_cleared_at_in_the_api(rig: BridgeRig) -> None:
    raised = round(time.time()) - 60.0
    cleared = raised + 45
    topic = sensor_alarm_topic(rig.prefix, "sm-api")
    rig.publish([(topic, smoke("r", "raise", raised)), (topic, smoke("c", "clear", cleared))])
    deadline = time.monotonic() + 60
    while True:
        found = rig.candidates()
        alarm = found[0]["alarm"] if found else {}
        if "cleared_at" in alarm:
            break
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    assert len(found) == 1
    assert alarm["cleared_at"] == iso(cleared)
    assert datetime.fromisoformat(alarm["last_seen"]).timestamp() == cleared
    assert (alarm["alarm_type"], alarm["count"]) == ("smoke", 1)
