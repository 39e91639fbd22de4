"""Candidate bodies and patches for sensor alarms, built from lifecycle effects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gridpatrol.alarm_bridge.adapters import AlarmInput
from gridpatrol.alarm_bridge.lifecycle import Effect
from gridpatrol.ingest.messages import SenMLRecord
from gridpatrol.site import TYPE_NAMES, Policy, Sensor

SYSTEM = "gridpatrol-bridge"
JsonDict = dict[str, Any]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


def source_event_id(sensor_id: str, event_key: str) -> str:
    """Unique across sensors: device event ids are only unique per sensor."""
    return f"{sensor_id}/{event_key}"


def alarm_block(effect: Effect, alarm_type: str) -> JsonDict:
    """The candidate's ``alarm``; a clear adds ``cleared_at`` (its time, never before the
    last repeat)."""
    alarm = effect.alarm
    block: JsonDict = {
        "alarm_id": alarm.alarm_id,
        "alarm_type": alarm_type,
        "count": alarm.count,
        "first_seen": iso(alarm.first_seen) if alarm.first_seen is not None else None,
        "last_seen": iso(alarm.last_seen) if alarm.last_seen is not None else None,
        "previous_alarm_id": alarm.previous_alarm_id,
    }
    if effect.kind == "clear":
        block["cleared_at"] = block["last_seen"]
    return block


def senml(records: tuple[SenMLRecord, ...]) -> list[JsonDict]:
    return [r.to_json() for r in records]


def location(sensor: Sensor) -> JsonDict:
    return sensor.location.model_dump(exclude_none=True)


def description(candidate_type: str, sensor: Sensor, alarm_type: str) -> str:
    zh, en = TYPE_NAMES[candidate_type]
    where = sensor.location.address or sensor.location.grid_code or sensor.id
    name = f" {sensor.name}" if sensor.name else ""
    chinese = f"{zh}：传感器 {sensor.id}{name}（{where}）报警 {alarm_type}"
    return f"{chinese} / {en}: sensor {sensor.id} alarm {alarm_type} at {where}"


def create_body(
    item: AlarmInput, effect: Effect, policy: Policy, trace_sha256: str, captured_at: float
) -> JsonDict:
    ctype = item.candidate_type
    body: JsonDict = {
        "id": effect.alarm.alarm_id,
        "source": {
            "type": "sensor",
            "system": SYSTEM,
            "sensor_id": item.sensor.id,
            "source_event_id": source_event_id(item.sensor.id, item.event_key),
        },
        "type": ctype,
        "description": description(ctype, item.sensor, item.alarm_type),
        "occurred_at": iso(item.t),
        "location": location(item.sensor),
        "severity": effect.alarm.severity,
        "urgency": "immediate" if ctype in policy.urgent_types else "normal",
        "evidence": [
            {"sha256": trace_sha256, "kind": "sensor_trace", "captured_at": iso(captured_at)}
        ],
        "measurements": senml(item.measurements),
        "alarm": alarm_block(effect, item.alarm_type),
    }
    if effect.alarm.previous_alarm_id is not None:
        body["references"] = [effect.alarm.previous_alarm_id]
    return body


def update_patch(item: AlarmInput, effect: Effect) -> JsonDict:
    """A repeat updates count, last_seen, severity and measurements; a clear last_seen and
    cleared_at.

    Only the alarm's newest sighting carries measurements: a repeat timed before its
    ``last_seen`` (a late reading) was overtaken by the one that set it, whose measurements
    the candidate already has (or gets from the same pending PATCH)."""
    patch: JsonDict = {"alarm": alarm_block(effect, item.alarm_type)}
    if effect.kind == "update":
        patch["severity"] = effect.alarm.severity
    if item.measurements and effect.kind == "update" and _newest(item, effect):
        patch["measurements"] = senml(item.measurements)
    return patch


def _newest(item: AlarmInput, effect: Effect) -> bool:
    """Whether ``item`` is the alarm's newest sighting: a repeat sets ``last_seen`` to the
    later of its time and the last one (kept in the state database across restarts)."""
    last_seen = effect.alarm.last_seen
    return last_seen is None or item.t >= last_seen


def snapshot_patch(sha256: str, captured_at: float, width: int, height: int) -> JsonDict:
    return {
        "evidence": [
            {
                "sha256": sha256,
                "kind": "snapshot",
                "captured_at": iso(captured_at),
                "width": width,
                "height": height,
            }
        ]
    }
