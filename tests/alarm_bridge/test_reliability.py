"""10,000 alarms through a real broker, bridge and API while each of them fails in turn.

Exact accounting: every raise or update is in some candidate's ``alarm.count``, every raise
is exactly one candidate (one per ``source_event_id``), every invalid message is one dead
letter.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.alarm_bridge import loadgen

from .conftest import BridgeRig

SENSORS = 20
ALARMS = 10_000
INVALID_EVERY = 100


def _persist_as_root(broker: Any) -> None:
    """Mosquitto started as root drops to the ``mosquitto`` user, which cannot write the
    persistence file into pytest's private tmp dir: keep root so a restart keeps sessions."""
    if os.geteuid() == 0 and "user root" not in broker.conf.read_text():
        broker.stop()
        broker.conf.write_text(broker.conf.read_text() + "user root\n")
        broker.start()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Any, api_server: Any) -> Iterator[BridgeRig]:
    _persist_as_root(mosquitto)
    prefix = f"gprel-{uuid.uuid4().hex[:8]}"
    site = loadgen.site_yaml(prefix, SENSORS)
    with BridgeRig(tmp_path, mosquitto.url, api_server, prefix, site) as r:
        yield r


def _check(rig: BridgeRig) -> None:
    want = loadgen.expected(SENSORS, ALARMS, INVALID_EVERY)
    got = rig.settle(want)
    assert (got.candidates, got.counted) == (want.candidates, want.counted)
    assert got.distinct_events == got.candidates and got.max_events_per_source == 1
    assert len(rig.dead_payloads) == want.dead_letters
    assert rig.proc is not None and rig.proc.poll() is None  # still running


def traffic_for(rig: BridgeRig) -> list[tuple[str, bytes]]:
    return list(loadgen.traffic(rig.prefix, SENSORS, ALARMS, run="r1", invalid_every=INVALID_EVERY))


@pytest.mark.slow
def test_broker_restart_bridge_kill_and_api_outage(rig: BridgeRig, mosquitto: Any) -> None:
    """One stream of 10,000 alarms through all three faults in turn."""
    broker = mosquitto
    messages = traffic_for(rig)
    third = len(messages) // 3

    rig.publish(messages[:third])
    rig.wait_processed(1000)
    broker.stop(kill=False)  # graceful: the persistent sessions are saved
    time.sleep(2)
    broker.start()
    assert rig.pub.wait_connected(30)

    rig.publish(messages[third : 2 * third])
    rig.wait_processed(4000)
    rig.stop_bridge(signal.SIGKILL)
    time.sleep(1)
    rig.start_bridge()

    rig.api.stop()
    rig.publish(messages[2 * third :])
    time.sleep(30)
    rig.api.start()
    _check(rig)
