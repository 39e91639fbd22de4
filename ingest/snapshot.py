"""Snapshot request / reply.

A consumer publishes ``{"request_id"}`` to ``…/cameras/{id}/snapshot/request``; the component
serving the camera answers on ``…/cameras/{id}/snapshot`` with a frame envelope whose header
carries the same ``request_id``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from gridpatrol.ingest.messages import (
    Frame,
    MessageError,
    decode_frame,
    encode_frame,
    has_control,
    is_request_id,
    load_json,
)
from gridpatrol.ingest.mqtt import MqttConnection
from gridpatrol.ingest.topics import snapshot_request_topic, snapshot_topic

log = logging.getLogger(__name__)

# A request is a request id of at most 128 characters; the cap of a frame's JSON header leaves
# room for any escaping and white space, and keeps a flood of large payloads cheap to refuse.
MAX_REQUEST_BYTES = 16 * 1024


def encode_request(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id}).encode()


def parse_request(payload: bytes) -> str:
    """The request id of a snapshot request; :class:`MessageError` when malformed."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise MessageError("too_large", f"{len(payload)} bytes > {MAX_REQUEST_BYTES}")
    data = load_json(payload)
    request_id = data.get("request_id") if isinstance(data, dict) else None
    # The reply's header carries the id: one the frame header refuses (a lone surrogate) made
    # a reply every consumer refused as bad_request_id, so the requester waited in vain. A
    # control character, which no requester has a reason to send, would forge lines of the
    # answer's log line.
    if not is_request_id(request_id) or not request_id or has_control(request_id):
        raise MessageError("bad_request_id", repr(request_id)[:40])
    return request_id


def encode_reply(frame: Frame, request_id: str) -> bytes:
    return encode_frame(replace(frame.header, request_id=request_id), frame.image)


def request_snapshot(conn: MqttConnection, camera_id: str, timeout: float = 5.0) -> Frame | None:
    """Ask the component serving ``camera_id`` for a fresh frame; None when none came in time."""
    request_id = uuid.uuid4().hex
    reply_sub = conn.subscribe(snapshot_topic(conn.prefix, camera_id), qos=1, maxsize=16)
    try:
        # The broker handles our SUBSCRIBE before this PUBLISH, so the reply cannot slip past.
        conn.publish(snapshot_request_topic(conn.prefix, camera_id), encode_request(request_id), 1)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = reply_sub.get(left)
            if message is None:
                break
            try:
                frame = decode_frame(
                    message.payload, topic_camera_id=camera_id, received_at=datetime.now(UTC)
                )
            except MessageError as exc:
                log.warning("camera %s: malformed snapshot reply: %s", camera_id, exc)
                continue
            if frame.header.request_id == request_id:
                return frame
        log.info("camera %s: no snapshot reply within %.1f s", camera_id, timeout)
        return None
    finally:
        conn.unsubscribe(reply_sub)
