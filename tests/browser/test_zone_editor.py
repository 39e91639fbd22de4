"""The zone editor: a fresh snapshot over MQTT, a polygon drawn with the mouse, valid YAML."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from playwright.sync_api import FloatRect

from gridpatrol.ingest.messages import Frame, FrameHeader
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings
from gridpatrol.ingest.snapshot import encode_reply, parse_request
from gridpatrol.ingest.topics import snapshot_request_topic
from gridpatrol.site import StreetVendingParams, Zone

pytestmark = [pytest.mark.browser]


@pytest.fixture
def mqtt_url(mosquitto: Any) -> str:
    url: str = mosquitto.url
    return url


@pytest.fixture
def camera_responder(mqtt_url: str, frames: list[bytes]) -> Iterator[list[str]]:
    """Answers snapshot requests for cam-dn-001 like the ingest component serving it."""
    conn = MqttConnection("test-camera-responder", MqttSettings.from_url(mqtt_url))
    assert conn.start(timeout=10)
    requests = conn.subscribe(snapshot_request_topic(conn.prefix, "cam-dn-001"), qos=1)
    answered: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            message = requests.get(0.2)
            if message is None:
                continue
            request_id = parse_request(message.payload)
            header = FrameHeader(
                ts=datetime.now(UTC),
                seq=len(answered),
                camera_id="cam-dn-001",
                width=1280,
                height=720,
            )
            conn.publish(
                message.topic.removesuffix("/request"),
                encode_reply(Frame(header, frames[3]), request_id),
                qos=1,
            )
            answered.append(request_id)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(5)
        conn.stop()


def zone_editor(ui: Any) -> Any:
    """The zone editor on cam-dn-001, a reviewer logged in: its tab."""
    page = ui.page
    ui.login("reviewer")
    page.click("nav a[data-view=zones]")
    page.wait_for_selector("#z-camera option[value='cam-dn-001']", state="attached")
    page.select_option("#z-camera", "cam-dn-001")
    return page


def test_draw_a_zone_and_get_valid_yaml(ui: Any, camera_responder: list[str]) -> None:
    page = zone_editor(ui)
    ui.shot("zones-existing")

    page.click("#z-snapshot")
    page.wait_for_function("() => document.querySelector('#z-canvas').dataset.snapshot === 'ok'")
    assert len(camera_responder) == 1
    # The canvas shows the camera's picture, not the empty grey background.
    grey = page.evaluate(
        """() => { const c = document.querySelector('#z-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 0; i < d.length; i += 4000)
                     if (d[i] === 0x3a && d[i+1] === 0x3f && d[i+2] === 0x47) n++;
                   return n / (d.length / 4000); }"""
    )
    assert grey < 0.05
    ui.shot("snapshot")

    page.click("#z-new")
    box = page.locator("#z-canvas").bounding_box()
    assert box is not None
    corners = [(0.10, 0.60), (0.45, 0.55), (0.50, 0.95), (0.08, 0.95)]
    for x, y in corners:
        page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
    # Drag the last corner a little to the right.
    page.mouse.move(box["x"] + 0.08 * box["width"], box["y"] + 0.95 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.12 * box["width"], box["y"] + 0.93 * box["height"], steps=5)
    page.mouse.up()
    page.fill("#z-form input[name=zone-id]", "kerb-west")
    page.press("#z-form input[name=zone-id]", "Tab")
    page.check("#z-form input[name=rule-street_vending]")
    page.fill("#z-form input[name='street_vending.dwell_s']", "240")
    page.press("#z-form input[name='street_vending.dwell_s']", "Tab")
    # An empty field shows the default it stands for, lists included.
    props = page.get_attribute("#z-form input[name='street_vending.props']", "placeholder")
    assert props == ", ".join(StreetVendingParams().props)
    # Parameters of every JSON type: a string, a list of strings, a number.
    page.check("#z-form input[name=rule-garbage_overflow]")
    typed = {"head": "garbage", "occluders": "person, bicycle", "max_occluded": "0.2"}
    for name, value in typed.items():
        page.fill(f"#z-form input[name='garbage_overflow.{name}']", value)
        page.press(f"#z-form input[name='garbage_overflow.{name}']", "Tab")
    ui.shot("zone-drawn")

    page.click("#z-validate")
    page.wait_for_function("() => document.querySelector('#z-yaml').dataset.valid === 'true'")
    text = page.input_value("#z-yaml")
    ui.shot("zone-yaml")
    zones = yaml.safe_load(text)["zones"]
    drawn = [Zone.model_validate(z) for z in zones if z["id"] == "kerb-west"]
    assert len(drawn) == 1
    zone = drawn[0]
    assert len(zone.polygon) == 4
    assert zone.rules.street_vending is not None
    assert zone.rules.street_vending.dwell_s == 240
    garbage = zone.rules.garbage_overflow
    assert garbage is not None
    assert (garbage.head, garbage.occluders, garbage.max_occluded) == (
        "garbage",
        ["person", "bicycle"],
        0.2,
    )
    xs = sorted(round(p[0], 2) for p in zone.polygon)
    assert xs[0] == pytest.approx(0.10, abs=0.01) and xs[1] == pytest.approx(0.12, abs=0.01)
    # The camera's existing zones come back too, so the block replaces the camera's zones.
    assert {z["id"] for z in zones} >= {"plaza", "sidewalk-north", "kerb-west"}

    # A zone with too few points is refused with the field named.
    page.click("#z-new")
    page.mouse.click(box["x"] + 0.8 * box["width"], box["y"] + 0.2 * box["height"])
    page.click("#z-validate")
    page.wait_for_function("() => document.querySelector('#z-yaml').dataset.valid === 'false'")
    errors = page.inner_text("#z-errors")
    assert "zones[5].polygon" in errors and "at least 3" in errors
    assert page.input_value("#z-yaml") == ""
    ui.shot("zone-invalid")


@pytest.fixture
def held_camera(mqtt_url: str, frames: list[bytes]) -> Iterator[tuple[list[str], threading.Event]]:
    """Answers snapshot requests for cam-dn-001 only once the test sets the event."""
    conn = MqttConnection("test-camera-held", MqttSettings.from_url(mqtt_url))
    assert conn.start(timeout=10)
    requests = conn.subscribe(snapshot_request_topic(conn.prefix, "cam-dn-001"), qos=1)
    received: list[str] = []
    release = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            message = requests.get(0.2)
            if message is None:
                continue
            request_id = parse_request(message.payload)
            received.append(request_id)
            while not (release.is_set() or stop.is_set()):
                release.wait(0.2)
            header = FrameHeader(
                ts=datetime.now(UTC), seq=0, camera_id="cam-dn-001", width=1280, height=720
            )
            conn.publish(
                message.topic.removesuffix("/request"),
                encode_reply(Frame(header, frames[3]), request_id),
                qos=1,
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received, release
    finally:
        stop.set()
        thread.join(5)
        conn.stop()


# How many colours a sample of the canvas has: a handful for zones on the empty background,
# hundreds for a camera picture.
CANVAS_COLOURS = """() => { const c = document.querySelector('#z-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 97) seen.add(`${d[i]},${d[i+1]},${d[i+2]}`);
  return seen.size; }"""


def test_a_snapshot_arriving_after_a_camera_switch_is_dropped(
    ui: Any, held_camera: tuple[list[str], threading.Event]
) -> None:
    received, release = held_camera
    page = ui.page
    ui.login("reviewer")
    page.click("nav a[data-view=zones]")
    page.wait_for_selector("#z-camera option[value='cam-dn-002']", state="attached")
    page.select_option("#z-camera", "cam-dn-001")
    page.evaluate(
        """() => { window.snapshots = [];
          document.querySelector('#z-canvas').addEventListener(
            'snapshot', (ev) => window.snapshots.push(ev.detail)); }"""
    )
    page.click("#z-snapshot")
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert len(received) == 1  # cam-dn-001's frame is on its way, held back

    page.select_option("#z-camera", "cam-dn-002")
    release.set()
    # Done with the request: dropped (the editor says so), or drawn (the canvas says so).
    page.wait_for_function(
        "() => window.snapshots.length === 1"
        " || document.querySelector('#z-canvas').dataset.snapshot === 'ok'"
    )
    # cam-dn-002's zones are drawn on the empty background, not on cam-dn-001's picture.
    assert page.get_attribute("#z-canvas", "data-snapshot") is None
    assert page.evaluate(CANVAS_COLOURS) < 20
    assert page.evaluate("() => window.snapshots") == [{"camera": "cam-dn-001", "shown": False}]
    assert page.input_value("#z-camera") == "cam-dn-002"
    assert page.inner_text("#toast") == "" or not page.is_visible("#toast")
    ui.shot("stale-snapshot-dropped")

    # Asked for on the camera it is for, the picture is drawn.
    page.select_option("#z-camera", "cam-dn-001")
    page.click("#z-snapshot")
    page.wait_for_function("() => document.querySelector('#z-canvas').dataset.snapshot === 'ok'")
    assert page.evaluate(CANVAS_COLOURS) > 100
    assert page.evaluate("() => window.snapshots")[-1] == {"camera": "cam-dn-001", "shown": True}


def new_zone(ui: Any) -> FloatRect:
    """The zone editor on cam-dn-001, a new zone begun: where its canvas is."""
    page = zone_editor(ui)
    page.click("#z-new")
    box = page.locator("#z-canvas").bounding_box()
    assert box is not None
    return box


def test_an_edit_after_validation_withdraws_the_yaml(ui: Any) -> None:
    page = ui.page
    box = new_zone(ui)

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    for x, y in [(0.10, 0.60), (0.45, 0.55), (0.50, 0.95), (0.08, 0.95)]:
        page.mouse.click(*at(x, y))
    page.check("#z-form input[name=rule-street_vending]")

    def validated() -> str:
        page.click("#z-validate")
        page.wait_for_function("() => document.querySelector('#z-yaml').dataset.valid === 'true'")
        assert page.is_enabled("#z-download") and page.is_enabled("#z-copy")
        return page.input_value("#z-yaml")

    def withdrawn(change: str) -> None:
        assert page.input_value("#z-yaml") == "", change
        assert page.get_attribute("#z-yaml", "data-valid") is None, change
        assert not page.is_enabled("#z-download"), change
        assert not page.is_enabled("#z-copy"), change

    def drag() -> None:
        page.mouse.move(*at(0.50, 0.95))
        page.mouse.down()
        page.mouse.move(*at(0.55, 0.90), steps=5)
        page.mouse.up()

    def delete_vertex() -> None:
        page.mouse.click(*at(0.08, 0.95))  # grabs the vertex (selects it), adds none
        page.keyboard.press("Delete")

    def edit(selector: str, value: str) -> Any:
        return lambda: (page.fill(selector, value), page.press(selector, "Tab"))

    changes = {
        "vertex moved": drag,
        "vertex added": lambda: page.mouse.click(*at(0.30, 0.98)),
        "vertex deleted": delete_vertex,
        "zone id": edit("#z-form input[name=zone-id]", "kerb-east"),
        "rule parameter": edit("#z-form input[name='street_vending.dwell_s']", "200"),
        "rule added": lambda: page.check("#z-form input[name=rule-garbage_overflow]"),
        "schedule": lambda: page.check("#z-form input[name=schedule]"),
        "zone deleted": lambda: page.click("#z-delete"),
    }
    before = validated()
    for change, act in changes.items():
        act()
        withdrawn(change)
        after = validated()
        assert after != before, change
        before = after
    ui.shot("yaml-after-edits")
    zones = {z["id"]: z for z in yaml.safe_load(before)["zones"]}
    assert "kerb-east" not in zones  # the last change deleted the drawn zone


def test_an_integer_parameter_is_taken_as_typed_never_cut_to_an_integer(ui: Any) -> None:
    page = ui.page
    box = new_zone(ui)
    for x, y in [(0.10, 0.10), (0.40, 0.10), (0.40, 0.40), (0.10, 0.40)]:
        page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
    page.check("#z-form input[name=rule-crowd_gathering]")
    field = "#z-form input[name='crowd_gathering.min_persons']"

    def validated(typed: str, valid: str) -> str:
        page.fill(field, typed)
        page.press(field, "Tab")
        page.click("#z-validate")
        page.wait_for_function(
            "v => document.querySelector('#z-yaml').dataset.valid === v", arg=valid
        )
        return page.input_value("#z-yaml")

    # A fraction: the field is invalid and the API refuses it, rather than 2 being saved.
    assert validated("2.5", "false") == ""
    assert page.eval_on_selector(field, "input => input.matches(':invalid')")
    drawn = page.locator("#z-list li").count() - 1
    (error,) = page.inner_text("#z-errors").splitlines()
    assert re.fullmatch(  # the line of the YAML the API checked, then the field
        rf"zones\.yaml:\d+: zones\[{drawn}\]\.rules\.crowd_gathering\.min_persons: "
        r"Input should be a valid integer, got a number with a fractional part",
        error,
    ), error
    ui.shot("fraction-refused")

    # An exponent is the number it writes: 100, not the 1 before the "e".
    zones = yaml.safe_load(validated("1e2", "true"))["zones"]
    assert not page.eval_on_selector(field, "input => input.matches(':invalid')")
    assert zones[drawn]["rules"] == {"crowd_gathering": {"min_persons": 100}}


def test_an_empty_learn_s_shows_the_value_derived_from_the_dwell(ui: Any) -> None:
    # A learn_s left out is max(3600, 4 x dwell_s): the schema's default (3600, 7200) is only
    # what the default dwell derives, and showed 3600 at a dwell of 2400 where 9600 is in use.
    page = ui.page
    new_zone(ui)
    page.check("#z-form input[name=rule-shop_front_occupation]")
    page.check("#z-form input[name=rule-piled_materials]")

    def learn(rule: str) -> str | None:
        return page.get_attribute(f"#z-form input[name='{rule}.learn_s']", "placeholder")

    assert (learn("shop_front_occupation"), learn("piled_materials")) == ("3600", "7200")
    page.fill("#z-form input[name='shop_front_occupation.dwell_s']", "2400")
    assert learn("shop_front_occupation") == "9600"  # as it is typed, before it is left
    page.fill("#z-form input[name='piled_materials.dwell_s']", "600")
    assert learn("piled_materials") == "3600"  # the floor, not the default dwell's 7200
    page.press("#z-form input[name='piled_materials.dwell_s']", "Tab")
    page.fill("#z-form input[name='shop_front_occupation.dwell_s']", "")
    assert learn("shop_front_occupation") == "3600"  # back to the default dwell's
    page.fill("#z-form input[name='shop_front_occupation.dwell_s']", "2400")
    page.press("#z-form input[name='shop_front_occupation.dwell_s']", "Tab")
    page.check("#z-form input[name=schedule]")  # the form drawn again from the zone
    assert (learn("shop_front_occupation"), learn("piled_materials")) == ("9600", "3600")
    ui.shot("learn-s-derived")

    # A zone of the site file: shop-fronts-east waits 900 s, so it learns over 3600 s.
    page.click("#z-list li:has-text('shop-fronts-east')")
    assert page.input_value("#z-form input[name='shop_front_occupation.dwell_s']") == "900"
    assert learn("shop_front_occupation") == "3600"
    page.fill("#z-form input[name='shop_front_occupation.dwell_s']", "2400")
    assert learn("shop_front_occupation") == "9600"
