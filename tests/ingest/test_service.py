"""The ingest service's shutdown, driven in-process so a grab can be held at a chosen moment."""

from __future__ import annotations

import threading
from typing import Any

from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.service import IngestService
from gridpatrol.site import parse_site

SHARED = "mqtt://127.0.0.1:1883"


def test_a_grab_that_ends_after_stop_publishes_no_online_nor_frame(
    http_camera: Any, watch: Any, mqtt_prefix: str
) -> None:
    http_camera.hold_after = 1
    site = parse_site(
        "site: {name: Test}\n"
        f"mqtt: {{prefix: {mqtt_prefix}}}\n"
        "cameras:\n"
        f"  - {{id: h1, source: '{http_camera.url}', fps: 4, location: {{address: a}}}}\n"
    )
    watcher = watch(SHARED, f"{mqtt_prefix}/#", mqtt_prefix)
    conn = MqttConnection("ing-s", MqttSettings.from_url(SHARED), prefix=mqtt_prefix)
    service = IngestService(site, conn, site.cameras)
    assert conn.start(10)
    service.start()
    # The first snapshot is published; the second is under way, held by the camera.
    assert http_camera.held.wait(20)
    service.stop(timeout=0.2)  # the camera thread is still in its grab when stop() gives up
    http_camera.release.set()
    grabbing = [t for t in threading.enumerate() if t.name == "camera-h1"]
    assert len(grabbing) == 1
    for thread in grabbing:
        thread.join(20)
    assert not any(t.is_alive() for t in grabbing)
    conn.stop()
    component = f"{mqtt_prefix}/components/ing-s/status"
    seen = watcher.collect(lambda s: watcher.payloads(component)[-1:] == [b"offline"])
    assert watcher.payloads(component)[-1:] == [b"offline"]
    # The held grab ended after the offline: it must not bring back a retained online.
    assert watcher.payloads(f"{mqtt_prefix}/cameras/h1/status") == [b"online", b"offline"]
    assert len([m for m in seen if m.topic == f"{mqtt_prefix}/cameras/h1/frame"]) == 1
