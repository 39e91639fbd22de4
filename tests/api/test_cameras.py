"""The cameras router: site devices for the console, rule schemas, zone YAML, snapshots."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridpatrol.api.routers.cameras import zones_yaml
from gridpatrol.ingest.messages import Frame, FrameHeader
from gridpatrol.ingest.mqtt import OFFLINE, ONLINE, MqttConnection, MqttSettings, Subscription
from gridpatrol.ingest.snapshot import encode_reply, parse_request
from gridpatrol.ingest.topics import (
    component_status_topic,
    snapshot_request_topic,
    snapshot_topic,
)

from ..test_site import circle
from .test_candidates import nested, schema_refusal, too_deep

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "samples" / "site.yaml"
TRIANGLE = [[0.1, 0.5], [0.4, 0.5], [0.25, 0.9]]
TRIANGLE_ZONE = {"id": "a", "polygon": TRIANGLE}


@pytest.fixture
def site_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The API with the demo site file and no broker configured."""
    monkeypatch.setenv("GRIDPATROL_CONFIG", str(SITE))
    monkeypatch.delenv("GRIDPATROL_MQTT_URL", raising=False)
    return request.getfixturevalue("api_server")


def test_devices_schema_roles_and_snapshot_without_broker(site_api: Any) -> None:
    with site_api.client("reviewer") as client:
        cameras = client.get("/cameras").json()
        sensors = client.get("/sensors").json()
        schema = client.get("/cameras/rule-schema").json()
        no_broker = client.post("/cameras/cam-dn-001/snapshot")
        unknown = client.post("/cameras/nope/snapshot")
    assert [c["id"] for c in cameras] == ["cam-dn-001", "cam-dn-002", "cam-dn-003", "cam-dn-101"]
    assert all("source" not in c for c in cameras)  # stream URLs may hold credentials
    plaza = cameras[0]["zones"][0]
    assert plaza["id"] == "plaza"
    # Zones come back as written in the site file, without the defaults it left out.
    assert plaza["rules"]["crowd_gathering"] == {
        "min_persons": 5,
        "dwell_s": 5.0,
        "gap_s": 4.0,
        "clear_s": 10.0,
        "update_s": 20.0,
    }
    assert {s["id"]: s.get("camera") for s in sensors}["mh-0001"] == "cam-dn-001"
    assert set(schema) == {
        "street_vending",
        "shop_front_occupation",
        "garbage_overflow",
        "illegal_parking",
        "non_motor_parking",
        "piled_materials",
        "crowd_gathering",
    }
    assert schema["crowd_gathering"]["properties"]["min_persons"]["default"] == 8
    # How a learn_s left out is derived, for the zone editor's placeholder.
    derived = {"from": "dwell_s", "per": 4.0, "at_least": 3600.0}
    for rule in ("shop_front_occupation", "piled_materials"):
        assert schema[rule]["properties"]["learn_s"]["x-derived"] == derived
    assert no_broker.status_code == 503
    assert no_broker.headers["content-type"].startswith("application/problem+json")
    assert unknown.status_code == 404
    with site_api.client("producer") as client:
        assert client.get("/cameras").status_code == 403


def test_zone_yaml_is_valid_site_file_text(site_api: Any, tmp_path: Path) -> None:
    zones = [
        {
            "id": "kerb",
            "polygon": TRIANGLE,
            "schedule": {"days": ["mon", "sat"], "from": "22:00", "to": "06:00"},
            "rules": {"illegal_parking": {"dwell_s": 90}, "crowd_gathering": {}},
        }
    ]
    with site_api.client("reviewer") as client:
        response = client.post("/cameras/cam-dn-002/zones/validate", json={"zones": zones})
    assert response.status_code == 200, response.text
    text = response.json()["yaml"]
    assert text == (
        "zones:\n"
        "  - id: kerb\n"
        "    polygon: [[0.1, 0.5], [0.4, 0.5], [0.25, 0.9]]\n"
        '    schedule: {days: [mon, sat], from: "22:00", to: "06:00"}\n'
        "    rules:\n"
        "      illegal_parking: {dwell_s: 90}\n"
        "      crowd_gathering: {}\n"
    )
    # Pasted under the camera in the site file, it passes check-config.
    site = yaml.safe_load(SITE.read_text())
    site["cameras"][1]["zones"] = yaml.safe_load(text)["zones"]
    for camera in site["cameras"]:
        camera["source"] = str(REPO / camera["source"])
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, allow_unicode=True))
    check = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "cam-dn-002" in check.stdout and "kerb[illegal_parking/crowd_gathering]" in check.stdout


def test_the_zones_shown_come_back_as_the_site_file_wrote_them(site_api: Any) -> None:
    # learn_s left out of the file is derived from dwell_s: shown as written, it would come
    # back pinned at the old dwell's value (3600 for shop-fronts-east's dwell_s 900).
    written = {c["id"]: c["zones"] for c in yaml.safe_load(SITE.read_text())["cameras"]}
    with site_api.client("reviewer") as client:
        cameras = client.get("/cameras").json()
        for camera in cameras:
            url = f"/cameras/{camera['id']}/zones/validate"
            response = client.post(url, json={"zones": camera["zones"]})
            assert response.status_code == 200, response.text
            assert yaml.safe_load(response.json()["yaml"])["zones"] == written[camera["id"]]
        # A longer dwell set in the editor derives its own learn_s (4 x 2400).
        shop_fronts = dict(cameras[0]["zones"][2])
        assert shop_fronts["rules"] == {"shop_front_occupation": {"dwell_s": 900, "min_area": 0.08}}
        shop_fronts["rules"] = {"shop_front_occupation": {"dwell_s": 2400, "min_area": 0.08}}
        longer = client.post("/cameras/cam-dn-001/zones/validate", json={"zones": [shop_fronts]})
    assert [c["id"] for c in cameras] == list(written)
    assert longer.status_code == 200, longer.text
    assert "learn_s" not in longer.json()["yaml"]


def test_rule_parameters_are_written_exactly_and_only_points_rounded(site_api: Any) -> None:
    # Rounded to 4 decimals, min_area 0.00004 was written 0.0 and refused as not above 0.
    rules = {"piled_materials": {"min_area": 0.00004, "dwell_s": 0.00001}}
    zone = {"id": "kerb", "polygon": [[0.123456, 0.5], [0.4, 0.5], [0.25, 0.9]], "rules": rules}
    with site_api.client("reviewer") as client:
        response = client.post("/cameras/cam-dn-002/zones/validate", json={"zones": [zone]})
    assert response.status_code == 200, response.text
    assert yaml.safe_load(response.json()["yaml"])["zones"] == [
        {"id": "kerb", "polygon": [[0.1235, 0.5], [0.4, 0.5], [0.25, 0.9]], "rules": rules}
    ]


INVALID = [
    (
        {"id": "a", "polygon": TRIANGLE[:2]},
        "zones.yaml:3: zones[0].polygon: List should have at least 3 items",
    ),
    (
        {"id": "bad id", "polygon": TRIANGLE},
        "zones.yaml:2: zones[0].id: 'bad id' is not an id: ids are MQTT topic levels",
    ),
    (
        {"id": "a", "polygon": [[0.1, 0.5], [1.4, 0.5], [0.2, 0.9]]},
        "zones.yaml:3: zones[0].polygon[1][0]: Input should be less than or equal to 1",
    ),
    (
        {"id": "a", "polygon": TRIANGLE, "rules": {"parking": {}}},
        "zones.yaml:5: zones[0].rules.parking: Extra inputs are not permitted",
    ),
    (
        {"id": "a", "polygon": TRIANGLE, "rules": {"crowd_gathering": {"min_persons": 0}}},
        "zones.yaml:5: zones[0].rules.crowd_gathering.min_persons: Input should be greater",
    ),
    (
        {"id": "a", "polygon": TRIANGLE, "schedule": {"from": "25:00"}},
        "zones.yaml:4: zones[0].schedule.from: '25:00' is not a time: write HH:MM",
    ),
    (
        {"id": "a", "polygon": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]},
        "zones.yaml:3: zones[0].polygon: Value error, the polygon encloses no area",
    ),
    (
        {"id": "a", "polygon": TRIANGLE, "rules": {"garbage_overflow": {"occluders": ["persons"]}}},
        "zones.yaml:5: zones[0].rules.garbage_overflow.occluders: Value error, 'persons' is not a "
        "class of the detection model (did you mean 'person'?)",
    ),
]


def test_invalid_zones_name_line_and_field(site_api: Any) -> None:
    with site_api.client("reviewer") as client:
        for zone, expected in INVALID:
            response = client.post("/cameras/cam-dn-001/zones/validate", json={"zones": [zone]})
            assert response.status_code == 422, zone
            assert response.headers["content-type"].startswith("application/problem+json")
            errors = response.json()["errors"]
            assert any(e.startswith(expected) for e in errors), (zone, errors)


def test_a_duplicate_zone_id_names_both_lines_of_the_zones_text(site_api: Any) -> None:
    zones = [{"id": "a", "polygon": TRIANGLE}, {"id": "a", "polygon": TRIANGLE}]
    with site_api.client("reviewer") as client:
        response = client.post("/cameras/cam-dn-001/zones/validate", json={"zones": zones})
    assert response.status_code == 422
    text = zones_yaml(zones)  # what the editor shows once the zones are valid
    lines = [n for n, line in enumerate(text.splitlines(), 1) if "id: a" in line]
    assert len(lines) == 2
    assert response.json()["errors"] == [
        f"zones.yaml:{lines[1]}: zones[1].id: duplicate zone id 'a' (first at line {lines[0]})"
    ]


def test_a_zone_nested_too_deeply_is_refused_not_a_server_error(site_api: Any) -> None:
    url = "/cameras/cam-dn-001/zones/validate"
    with site_api.client("reviewer") as client:
        # The zone object is one level, its polygon the other 31: within the limit, judged
        # by the site schema (and refused there as no polygon).
        deepest = client.post(url, json={"zones": [{"id": "z", "polygon": nested(31)}]})
        refused = {
            levels: client.post(url, json={"zones": [{"id": "z", "polygon": nested(levels)}]})
            for levels in (32, 400)
        }
    assert deepest.status_code == 422
    assert (deepest.json()["detail"], deepest.json()["errors"]) == (
        "2 problem(s) in the zones",
        [
            "zones.yaml:3: zones[0].polygon[0][0]: Input should be a valid number",
            "zones.yaml:3: zones[0].polygon[0][1]: Field required",
        ],
    )
    for response in refused.values():
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == schema_refusal(
            f"/api/v1{url}", too_deep(["body", "zones", 0], "a zone")
        )


def test_a_polygon_of_more_than_1000_points_is_refused_naming_the_limit(site_api: Any) -> None:
    # Every pair of edges is checked for a crossing: a 40,000-point circle held a worker (and
    # the server's stop) for more than ten minutes.
    url = "/cameras/cam-dn-001/zones/validate"
    zone = {"id": "ring", "polygon": circle(5000), "rules": {"crowd_gathering": {}}}
    with site_api.client("reviewer") as client:
        response = client.post(url, json={"zones": [TRIANGLE_ZONE, zone]})
    assert response.status_code == 422
    assert response.json() == schema_refusal(
        f"/api/v1{url}",
        {
            "loc": ["body", "zones", 1],
            "msg": "Value error, the polygon has 5000 points, more than the 1000 a zone may "
            "have: trace it with fewer points",
            "type": "value_error",
        },
    )


def test_the_zones_of_one_request_have_at_most_10000_points_in_all(site_api: Any) -> None:
    # 100 zones of 1000 points each took 16.5 s to write as YAML, read back and check.
    url = "/cameras/cam-dn-001/zones/validate"

    def rings(count: int) -> list[dict[str, Any]]:
        return [{"id": f"ring-{k}", "polygon": circle(1000)} for k in range(count)]

    with site_api.client("reviewer") as client:
        refused = client.post(url, json={"zones": rings(11)})
        accepted = client.post(url, json={"zones": rings(10)})
    assert refused.status_code == 422
    assert refused.json() == schema_refusal(
        f"/api/v1{url}",
        {
            "loc": ["body", "zones"],
            "msg": "Value error, the zones have 11000 points in all, more than the 10000 one "
            "camera's zones may have: trace them with fewer points",
            "type": "value_error",
        },
    )
    assert accepted.status_code == 200
    zones = yaml.safe_load(accepted.json()["yaml"])["zones"]
    assert [(z["id"], len(z["polygon"])) for z in zones] == [(f"ring-{k}", 1000) for k in range(10)]


SNAPSHOT_SITE = """
site: {{name: 快照}}
mqtt: {{prefix: {prefix}}}
cameras:
  - {{id: cam-live, source: mqtt, location: {{grid_code: JA-DN-0101}}}}
"""


def statuses_until(sub: Subscription, wanted: bytes) -> list[bytes]:
    """Status payloads up to ``wanted``; stops early when none comes for 20 s."""
    seen: list[bytes] = []
    while wanted not in seen and (message := sub.get(timeout=20)) is not None:
        seen.append(message.payload)
    return seen


def test_a_snapshot_with_broker_settings_that_cannot_work_is_a_503(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker URL the API cannot use: the reviewer is told the broker cannot be used (the
    API's log says why), not a server error."""
    monkeypatch.setenv("GRIDPATROL_CONFIG", str(SITE))
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", "mqtt://ops:s3cret@127.0.0.1:notaport")
    api = request.getfixturevalue("api_server")
    with api.client("reviewer") as client:
        response = client.post("/cameras/cam-dn-001/snapshot")
    assert response.status_code == 503
    assert response.json()["detail"] == (
        "the broker cannot be used with the API's settings (its log says why)"
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_snapshot_connection_closes_with_the_app(
    make_api: Any,
    mosquitto: Any,
    mqtt_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", mosquitto.url)
    for name in ("USERNAME", "PASSWORD", "CA", "CERT", "KEY"):
        monkeypatch.delenv(f"GRIDPATROL_MQTT_{name}", raising=False)
    site = tmp_path / "site.yaml"
    site.write_text(SNAPSHOT_SITE.format(prefix=mqtt_prefix))
    api = make_api(config=site)
    camera = MqttConnection("test-camera", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    requests = camera.subscribe(snapshot_request_topic(mqtt_prefix, "cam-live"), qos=1)
    api_status = camera.subscribe(component_status_topic(mqtt_prefix, "api"), qos=1)
    assert camera.start()
    image = api.jpeg(7)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(api.as_("reviewer").post, "/api/v1/cameras/cam-live/snapshot")
            request = requests.get(timeout=20)
            assert request is not None
            header = FrameHeader(datetime.now(UTC), 1, "cam-live", 64, 48)
            reply = encode_reply(Frame(header, image), parse_request(request.payload))
            camera.publish(snapshot_topic(mqtt_prefix, "cam-live"), reply, qos=1)
            response = pending.result(timeout=20)
        assert response.status_code == 200
        assert response.content == image
        assert statuses_until(api_status, ONLINE)[-1:] == [ONLINE]
        api.http.__exit__(None, None, None)  # the app shuts down: its lifespan ends
        assert statuses_until(api_status, OFFLINE) == [OFFLINE]
    finally:
        camera.stop()
