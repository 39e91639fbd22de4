"""A value no request can carry to the API: dead-lettered, and the alarms after it arrive."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.ingest.topics import sensor_alarm_topic

from .conftest import BridgeRig

BROKER = "mqtt://127.0.0.1:1883"

SITE = """
site: {{name: overflow}}
mqtt: {{prefix: {prefix}}}
sensors:
  - {{id: mh-0001, kind: manhole_cover, location: {{lat: 31.2803, lon: 121.4517}}}}
  - {{id: mh-0002, kind: manhole_cover, location: {{lat: 31.2804, lon: 121.4518}}}}
"""


@pytest.fixture
def rig(tmp_path: Path, api_server: Any, mqtt_prefix: str) -> Iterator[BridgeRig]:
    with BridgeRig(tmp_path, BROKER, api_server, mqtt_prefix, SITE.format(prefix=mqtt_prefix)) as r:
        yield r


def opened(sensor: str, measurements: list[dict[str, object]]) -> bytes:
    body = {
        "schema": "gridalarm/1",
        "event_id": "e1",
        "sensor_id": sensor,
        "alarm_type": "manhole_open",
        "transition": "raise",
        "severity": "CRITICAL",
        "ts": round(time.time()) - 60.0,
        "measurements": measurements,
    }
    return json.dumps(body).encode()


def test_a_measurement_past_a_float_is_dead_lettered_and_later_alarms_arrive(
    rig: BridgeRig,
) -> None:
    """1e308 + 1e308 is inf, which no JSON carries: before, the candidate was queued with it
    and its create, retried for ever, held up every operation behind it."""
    overflow = opened("mh-0001", [{"n": "tilt", "u": "deg", "bv": 1e308, "v": 1e308}])
    valid = opened("mh-0002", [{"n": "tilt", "u": "deg", "v": 30}])
    rig.publish(
        [
            (sensor_alarm_topic(rig.prefix, "mh-0001"), overflow),
            (sensor_alarm_topic(rig.prefix, "mh-0002"), valid),
        ]
    )
    assert rig.dead_letters(1) == {overflow: "bad_value"}
    rig.settled(1)
    (candidate,) = rig.candidates()
    assert candidate["source"]["sensor_id"] == "mh-0002"
    assert [(m["n"], m["v"]) for m in candidate["measurements"]] == [("tilt", 30.0)]
