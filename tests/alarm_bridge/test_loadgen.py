"""The load generator's stream: envelopes the bridge reads at the times they give."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gridpatrol.alarm_bridge import loadgen
from gridpatrol.alarm_bridge.adapters import Adapted, adapt
from gridpatrol.site import parse_site


def test_envelopes_are_timed_from_their_generation_and_not_retimed_at_reception() -> None:
    site = parse_site(loadgen.site_yaml("gp", 3))
    registry = {s.id: s for s in site.sensors}
    messages = list(loadgen.traffic("gp", 3, 3_000))
    now = datetime.now(UTC)
    moved: set[float] = set()
    for topic, payload in messages:
        adapted = adapt(payload, sensor_id=topic.split("/")[-2], registry=registry, received_at=now)
        assert isinstance(adapted, Adapted)
        moved.update(item.moved_s for item in adapted.inputs)
    assert moved == {0.0}


def test_a_given_base_time_gives_the_same_stream() -> None:
    first = list(loadgen.traffic("gp", 2, 10, t_base=1_800_000_000.0))
    assert first == list(loadgen.traffic("gp", 2, 10, t_base=1_800_000_000.0))
    stamps = [json.loads(payload)["ts"] for _, payload in first]
    assert stamps[:4] == [1_800_000_000.0, 1_800_000_000.0, 1_800_000_000.001, 1_800_000_000.001]
