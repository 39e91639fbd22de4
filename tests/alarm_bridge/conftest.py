"""Fixtures of the bridge tests: a site with one sensor of each kind, a storing outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.api.client import Outbox
from gridpatrol.site import Site, parse_site

SITE_YAML = """
site: {name: 测试街道, timezone: Asia/Shanghai}
mqtt: {prefix: PREFIX}
cameras:
  - id: cam-1
    source: mqtt
    location: {lat: 31.28, lon: 121.45}
sensors:
  - id: mh-1
    kind: manhole_cover
    name: 井盖一
    location: {lat: 31.2803, lon: 121.4517, address: 大宁路 102号, grid_code: JA-DN-0101}
    camera: cam-1
    expected_interval_s: 600
    thresholds: {raise: 15, clear: 5, unit: deg, debounce_s: 0, clear_hold_s: 0}
  - id: wl-1
    kind: waterlogging
    location: {address: 广延路 下立交}
    expected_interval_s: 300
    thresholds: {raise: 15, clear: 5, unit: cm, debounce_s: 0, clear_hold_s: 0}
  - id: sm-1
    kind: smoke
    location: {grid_code: JA-DN-0203}
  - id: bf-1
    kind: bin_fill
    location: {lat: 31.2821, lon: 121.4491}
    thresholds: {raise: 90, clear: 60, unit: "%", debounce_s: 0, clear_hold_s: 0}
"""


def make_site(prefix: str = "gridpatrol") -> Site:
    return parse_site(SITE_YAML.replace("PREFIX", prefix), "test-site.yaml")


@pytest.fixture
def site() -> Site:
    return make_site()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    """An outbox that only stores: the tests read what it would send."""
    return Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")


def outbox_ops(box: Outbox) -> list[tuple[str, str | None, Any]]:
    """(kind, candidate id, JSON body or content type) of every queued operation, in order."""
    with box.transaction() as txn:
        rows = txn.conn.execute(
            "SELECT kind, candidate_id, payload, content_type FROM outbox_ops ORDER BY seq"
        ).fetchall()
    return [
        (kind, cid, ctype if kind == "evidence" else json.loads(payload))
        for kind, cid, payload, ctype in rows
    ]
