"""The MQTT topic scheme: builders and one parser.

Every topic string in the project is built here, so a change of scheme is one edit. The id in
the topic is authoritative; builders refuse ids outside ``ID_RE`` rather than publish to
a topic no consumer can parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# \Z, not "$": in Python's re "$" also matches before a final newline ("c1\n" is no id).
ID_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")

TopicKind = Literal[
    "frame",
    "snapshot_request",
    "snapshot",
    "camera_status",
    "component_status",
    "sensor_alarm",
    "sensor_status",
    "deadletter",
    "patrol_boost",
]

# (first segment, trailing segments) -> kind; the id sits between them.
_SHAPES: dict[tuple[str, tuple[str, ...]], TopicKind] = {
    ("cameras", ("frame",)): "frame",
    ("cameras", ("snapshot", "request")): "snapshot_request",
    ("cameras", ("snapshot",)): "snapshot",
    ("cameras", ("status",)): "camera_status",
    ("cameras", ("patrol", "boost")): "patrol_boost",
    ("components", ("status",)): "component_status",
    ("sensors", ("alarm",)): "sensor_alarm",
    ("sensors", ("status",)): "sensor_status",
    ("deadletter", ()): "deadletter",
}


@dataclass(frozen=True)
class TopicMatch:
    kind: TopicKind
    id: str


def valid_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None


def _check(value: str) -> str:
    if not valid_id(value):
        raise ValueError(f"id {value!r} does not match {ID_RE.pattern}")
    return value


def _join(prefix: str, *parts: str) -> str:
    return "/".join((prefix.rstrip("/"), *parts))


def frame_topic(prefix: str, camera_id: str) -> str:
    return _join(prefix, "cameras", _check(camera_id), "frame")


def snapshot_request_topic(prefix: str, camera_id: str) -> str:
    return _join(prefix, "cameras", _check(camera_id), "snapshot", "request")


def snapshot_topic(prefix: str, camera_id: str) -> str:
    return _join(prefix, "cameras", _check(camera_id), "snapshot")


def camera_status_topic(prefix: str, camera_id: str) -> str:
    return _join(prefix, "cameras", _check(camera_id), "status")


def patrol_boost_topic(prefix: str, camera_id: str) -> str:
    """Ingest-internal: ``{"factor", "duration_s"}`` makes patrol visit the camera more often."""
    return _join(prefix, "cameras", _check(camera_id), "patrol", "boost")


def component_status_topic(prefix: str, component_id: str) -> str:
    return _join(prefix, "components", _check(component_id), "status")


def sensor_alarm_topic(prefix: str, sensor_id: str) -> str:
    return _join(prefix, "sensors", _check(sensor_id), "alarm")


def sensor_status_topic(prefix: str, sensor_id: str) -> str:
    return _join(prefix, "sensors", _check(sensor_id), "status")


def deadletter_topic(prefix: str, component: str) -> str:
    return _join(prefix, "deadletter", _check(component))


def wildcard(prefix: str, kind: TopicKind) -> str:
    """The subscription filter matching every topic of ``kind`` (any id)."""
    for (first, rest), k in _SHAPES.items():
        if k == kind:
            return _join(prefix, first, "+", *rest)
    raise ValueError(kind)


def parse_topic(prefix: str, topic: str) -> TopicMatch | None:
    """Classify ``topic`` under ``prefix``; None when it is not a well-formed gridpatrol topic."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) < 2:
        return None
    kind = _SHAPES.get((parts[0], tuple(parts[2:])))
    if kind is None or not valid_id(parts[1]):
        return None
    return TopicMatch(kind, parts[1])
