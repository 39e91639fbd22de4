"""Property-based fuzzing of the adapters: no exception escapes, the invalid is dead-lettered."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.adapters import Adapted, Rejected, adapt
from gridpatrol.alarm_bridge.worker import BatchResult, BridgeCore
from gridpatrol.api.client import Outbox
from gridpatrol.ingest.messages import AlarmEnvelope

from .conftest import make_site

SITE = make_site()
REGISTRY = {s.id: s for s in SITE.sensors}
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SENSOR_IDS = st.sampled_from([*REGISTRY, "zz-unknown"])

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)


def _mutated_envelope(sensor_id: str, overrides: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {
        "schema": "gridalarm/1",
        "event_id": "e1",
        "sensor_id": sensor_id,
        "alarm_type": "manhole_tilt",
        "transition": "raise",
        "severity": "MAJOR",
        "ts": 1_790_000_000,
        "measurements": [{"n": "tilt", "u": "deg", "v": 20}],
    }
    body.update(overrides)
    return json.dumps(body, allow_nan=True).encode()


envelopes = st.builds(
    _mutated_envelope,
    SENSOR_IDS,
    st.dictionaries(
        st.sampled_from([f.name for f in fields(AlarmEnvelope)] + ["schema", "extra"]),
        json_value,
        max_size=3,
    ),
)
readings = st.builds(
    lambda sid, value, ts: json.dumps({"sensor_id": sid, "value": value, "ts": ts}).encode(),
    SENSOR_IDS,
    json_value,
    json_value,
)
deep = st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n)
payloads = st.one_of(
    st.binary(max_size=300),
    json_value.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    envelopes,
    readings,
    deep,
    st.just(b"{" + b" " * (1024 * 1024) + b"}"),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sensor_id=SENSOR_IDS, payload=payloads)
def test_adapt_never_raises(sensor_id: str, payload: bytes) -> None:
    result = adapt(payload, sensor_id=sensor_id, registry=REGISTRY, received_at=NOW)
    assert isinstance(result, Adapted | Rejected)
    if isinstance(result, Rejected):
        assert result.reason
    else:
        assert result.sensor_id == sensor_id and result.inputs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sensor_id=SENSOR_IDS, payload=payloads)
def test_core_dead_letters_every_invalid_payload(
    tmp_path_factory: Any, sensor_id: str, payload: bytes
) -> None:
    box = Outbox(tmp_path_factory.mktemp("fuzz") / "bridge.db", None, component="alarm_bridge")
    core = BridgeCore(SITE)
    out = BatchResult()
    with box.transaction() as txn:
        store.init(txn.conn)
        core.handle(txn, f"gridpatrol/sensors/{sensor_id}/alarm", payload, NOW, out)
    expected = adapt(payload, sensor_id=sensor_id, registry=REGISTRY, received_at=NOW)
    if isinstance(expected, Rejected):
        assert [d.reason for d in out.dead] == [expected.reason]
        assert out.dead[0].payload == payload
        assert box.depth() == 0
    else:
        assert out.dead == []
