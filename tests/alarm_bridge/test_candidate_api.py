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

from ..conftest import Mosquitto
from .conftest import BridgeRig

# A broker of the test's own: the persistent sessions of the bridge and of the dead-letter
# watcher (kept a day) and the retained statuses go with it, none is left on a shared broker.
# No other test's traffic reaches it, so one prefix serves every test.
PREFIX = "gptest-candidates"

SITE = """
site: {{name: 候选测试}}
mqtt: {{prefix: {prefix}}}
sensors:
  - {{id: sm-api, kind: smoke, location: {{address: 大宁路 9号}}}}
  - {{id: bf-api, kind: bin_fill, location: {{address: 大宁路 11号}}}}
"""


@pytest.fixture
def rig(tmp_path: Path, api_server: Any, mosquitto: Mosquitto) -> Iterator[BridgeRig]:
    with BridgeRig(tmp_path, mosquitto.url, api_server, PREFIX, SITE.format(prefix=PREFIX)) as r:
        yield r


def smoke(
    event_id: str,
    transition: str,
    ts: float | str,
    sensor: str = "sm-api",
    alarm: str = "smoke",
    **extra: object,
) -> bytes:
    body = {
        **extra,
        "schema": "gridalarm/1",
        "event_id": event_id,
        "sensor_id": sensor,
        "alarm_type": alarm,
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


def bin_full(event_id: str, ts: float) -> bytes:
    return smoke(event_id, "raise", ts, sensor="bf-api", alarm="bin_fill")


def test_a_rejected_candidate_takes_one_refused_update_then_none(rig: BridgeRig) -> None:
    """A sensor that keeps repeating after a reviewer rejected its alarm: the first update
    is refused for good (410), the bridge drops the later ones instead of queueing them."""
    start = round(time.time()) - 60.0
    topic = sensor_alarm_topic(rig.prefix, "bf-api")  # a bin: reviewed, not routed at once
    rig.publish([(topic, bin_full("raise", start))])
    assert rig.settled(1) == 0
    (candidate,) = rig.candidates()
    with rig.api.client("reviewer") as http:
        decision = {"decision": "reject", "reason_code": "false_positive"}
        answer = http.post(f"/candidates/{candidate['id']}/review", json=decision)
        assert answer.status_code == 200, (candidate["status"], answer.text)
    refused = []
    for n in range(1, 21):
        # One at a time, each handed over on its own: repeats would coalesce into one PATCH.
        rig.publish([(topic, bin_full(f"repeat-{n}", start + n))])
        refused.append(rig.settled(1 + n))
    assert refused == [1] * 20
    (after,) = rig.candidates()
    assert (after["status"], after["alarm"]["count"]) == ("rejected", 1)


def test_a_detector_rebooted_with_its_clock_in_2000_raises_a_new_candidate(
    rig: BridgeRig,
) -> None:
    now = time.time()
    topic = sensor_alarm_topic(rig.prefix, "sm-api")
    rig.publish(
        [
            (topic, smoke("a1", "raise", now, seq=1, boot_id="A")),
            (topic, smoke("a2", "clear", now + 1, seq=2, boot_id="A")),
            (topic, smoke("b1", "raise", "2000-01-01T00:00:00Z", seq=1, boot_id="B")),
        ]
    )
    rig.settled(3)
    found = rig.candidates()
    assert len(found) == 2
    (second,) = [c for c in found if c["alarm"].get("previous_alarm_id") is not None]
    # Timed at its reception (or the clear, if later), not in 2000.
    assert datetime.fromisoformat(second["occurred_at"]).timestamp() >= int(now)


def boot_a_b_then(rig: BridgeRig, raised: float, third: bytes) -> None:
    """Boot A raises at ``raised``; the device reboots (B) and clears 10 s later; then ``third``
    (a message of boot A) arrives. All three handled."""
    topic = sensor_alarm_topic(rig.prefix, "sm-api")
    rig.publish(
        [
            (topic, smoke("a1", "raise", raised, seq=1, boot_id="A")),
            (topic, smoke("b1", "clear", raised + 10, seq=1, boot_id="B")),
            (topic, third),
        ]
    )
    rig.settled(3)


def test_a_late_message_of_an_earlier_boot_does_not_reopen_a_cleared_alarm(
    rig: BridgeRig,
) -> None:
    """A's update, sent before the reboot, arrives last. It was overtaken by the new boot's
    clear: ignored, no second candidate."""
    raised = round(time.time()) - 60.0
    boot_a_b_then(rig, raised, smoke("a2", "update", raised + 5, seq=2, boot_id="A"))
    (only,) = rig.candidates()
    alarm = only["alarm"]
    assert (alarm["count"], alarm["cleared_at"]) == (1, iso(raised + 10))
    assert datetime.fromisoformat(alarm["last_seen"]).timestamp() == raised + 10


def test_a_device_booting_an_earlier_boot_id_again_raises_a_new_candidate(
    rig: BridgeRig,
) -> None:
    """A/B firmware slots: A boots again and raises, timed after B's clear. Not a late message
    of the first boot A: a second candidate."""
    raised = round(time.time()) - 200.0
    boot_a_b_then(rig, raised, smoke("a1-again", "raise", raised + 100, seq=1, boot_id="A"))
    first, second = sorted(rig.candidates(), key=lambda c: c["occurred_at"])
    occurred = [datetime.fromisoformat(c["occurred_at"]).timestamp() for c in (first, second)]
    assert occurred == [raised, raised + 100]
    assert first["alarm"]["cleared_at"] == iso(raised + 10)
    assert second["alarm"]["previous_alarm_id"] == first["id"]
    assert second["source"]["source_event_id"] == "sm-api/e:a1-again"


def test_a_late_message_of_an_earlier_boot_with_its_clock_ahead_reopens_nothing(
    rig: BridgeRig,
) -> None:
    """Boot A had got to seq 899 when the device rebooted (B) and cleared. A's update, sent
    before the reboot by a clock 90 s ahead, arrives after the clear and is timed after it: its
    seq says it is boot A's, not A booting again. Ignored; B's next raise is followed."""
    raised = round(time.time()) - 200.0
    topic = sensor_alarm_topic(rig.prefix, "sm-api")
    rig.publish(
        [
            (topic, smoke("a899", "raise", raised, seq=899, boot_id="A")),
            (topic, smoke("b5", "clear", raised + 10, seq=5, boot_id="B")),
            (topic, smoke("a900", "update", raised + 100, seq=900, boot_id="A")),
            (topic, smoke("b6", "raise", raised + 20, seq=6, boot_id="B")),
        ]
    )
    rig.settled(4)
    first, second = sorted(rig.candidates(), key=lambda c: c["occurred_at"])
    assert (first["alarm"]["count"], first["alarm"]["cleared_at"]) == (1, iso(raised + 10))
    assert datetime.fromisoformat(second["occurred_at"]).timestamp() == raised + 20
    assert second["source"]["source_event_id"] == "sm-api/e:b6"
    assert second["alarm"]["previous_alarm_id"] == first["id"]


def test_a_seq_beyond_64_bits_is_a_bad_seq(rig: BridgeRig) -> None:
    now = time.time()
    topic = sensor_alarm_topic(rig.prefix, "sm-api")
    too_big = smoke("big", "raise", now, seq=2**63)
    too_small = smoke("small", "raise", now, seq=-(2**63) - 1)
    largest = smoke("largest", "raise", now, seq=2**63 - 1)
    rig.publish([(topic, too_big), (topic, too_small), (topic, largest)])
    assert rig.dead_letters(2) == {too_big: "bad_seq", too_small: "bad_seq"}
    rig.settled(1)
    (only,) = rig.candidates()
    assert only["source"]["source_event_id"] == "sm-api/e:largest"
