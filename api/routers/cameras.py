"""Cameras and sensors of the site file, for the console's filters and zone editor.

``GET /cameras`` and ``GET /sensors`` list the site's devices (camera sources are left out:
they may carry stream credentials); ``GET /cameras/rule-schema`` gives the JSON schema of
every rule's parameters; ``POST /cameras/{id}/snapshot`` asks the camera's ingest component
for a fresh frame over MQTT; ``POST /cameras/{id}/zones/validate`` turns the editor's
polygons into the YAML of that camera's ``zones``, validated by the site schema.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from fastapi import APIRouter, Request, Response
from pydantic import AfterValidator, BaseModel, Field

from gridpatrol.api.deps import Reviewer, services_of
from gridpatrol.api.problems import Problem
from gridpatrol.api.schemas import shallow
from gridpatrol.site import (
    LEARN_PER_DWELL,
    MAX_POLYGON_POINTS,
    RULE_PARAMS,
    Camera,
    Site,
    SiteConfigError,
    StaticForegroundParams,
    default_learn_s,
    few_enough_points,
    parse_site,
)

if TYPE_CHECKING:
    from gridpatrol.ingest.mqtt import MqttConnection

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["cameras"])
SNAPSHOT_TIMEOUT_S = 5.0
ZONES_FILE = "zones.yaml"
_ZONE_KEY_ORDER = ("id", "polygon", "schedule", "rules")
_HHMM = re.compile(r"\d{1,2}:\d{2}")
# What one request to the zone editor may hold. A camera has a few zones of tens of points
# (samples/site.yaml: at most 4 zones of 4 points); the time to write, read back and check
# them grows with the points in all, whatever zones they are shared among.
MAX_ZONES = 100
MAX_REQUEST_POINTS = 10 * MAX_POLYGON_POINTS


def _few_enough_points(zone: dict[str, Any]) -> dict[str, Any]:
    few_enough_points(zone.get("polygon"))
    return zone


def _points_in_all(zones: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Each polygon may have MAX_POLYGON_POINTS, but 100 of them (100,000 points) took 16.5 s
    # to write, read back and check: the request as a whole is held to MAX_REQUEST_POINTS.
    total = sum(len(z["polygon"]) for z in zones if isinstance(z.get("polygon"), list | tuple))
    if total > MAX_REQUEST_POINTS:
        raise ValueError(
            f"the zones have {total} points in all, more than the {MAX_REQUEST_POINTS} one "
            "camera's zones may have: trace them with fewer points"
        )
    return zones


class ZonesIn(BaseModel):
    # Each zone nests at most MAX_DEPTH levels: its YAML is written and read again recursively.
    # A polygon's points are counted here too, before any YAML of them is written and read.
    zones: Annotated[
        list[Annotated[dict[str, Any], shallow("a zone"), AfterValidator(_few_enough_points)]],
        AfterValidator(_points_in_all),
    ] = Field(max_length=MAX_ZONES)


class ZonesOut(BaseModel):
    camera_id: str
    yaml: str


def _loaded_site(request: Request) -> Site | None:
    """The site file named by GRIDPATROL_CONFIG, loaded once per app."""
    state = request.app.state
    if not hasattr(state, "cameras_site"):
        state.cameras_site = services_of(request).settings.load_site()
    site: Site | None = state.cameras_site
    return site


def _site(request: Request) -> Site:
    site = _loaded_site(request)
    if site is None:
        raise Problem(404, "the API runs without a site file (set GRIDPATROL_CONFIG)")
    return site


def _camera(site: Site, camera_id: str) -> Camera:
    try:
        return site.camera(camera_id)
    except KeyError:
        raise Problem(404, f"unknown camera {camera_id!r}") from None


@router.get("/cameras")
def list_cameras(request: Request, _who: Reviewer) -> list[dict[str, Any]]:
    """The site's cameras with their zones; sources are omitted (they may hold credentials)."""
    site = _loaded_site(request)
    if site is None:
        return []
    return [_camera_view(cam) for cam in site.cameras]


def _camera_view(camera: Camera) -> dict[str, Any]:
    # Zones as written in the site file (unset defaults left out), so the YAML stays short.
    view = camera.model_dump(
        mode="json", by_alias=True, exclude={"source", "zones"}, exclude_none=True
    )
    view["zones"] = [
        zone.model_dump(mode="json", by_alias=True, exclude_unset=True) for zone in camera.zones
    ]
    return view


@router.get("/sensors")
def list_sensors(request: Request, _who: Reviewer) -> list[dict[str, Any]]:
    site = _loaded_site(request)
    if site is None:
        return []
    return [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in site.sensors]


@router.get("/cameras/rule-schema")
def rule_schema(_who: Reviewer) -> dict[str, Any]:
    """JSON schema of every rule's parameters, keyed by rule (candidate type).

    A ``learn_s`` left out is derived from the zone's ``dwell_s``; its property's
    ``x-derived`` says how (``max(at_least, per × from)``), so the zone editor shows the value
    in use rather than the one derived from the default dwell.
    """
    schemas: dict[str, Any] = {}
    for name, model in RULE_PARAMS.items():
        schema = model.model_json_schema(by_alias=True)
        if issubclass(model, StaticForegroundParams):
            schema["properties"]["learn_s"]["x-derived"] = {
                "from": "dwell_s",
                "per": LEARN_PER_DWELL,
                "at_least": default_learn_s(0.0),
            }
        schemas[name] = schema
    return schemas


@router.post(
    "/cameras/{camera_id}/snapshot",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def snapshot(camera_id: str, request: Request, _who: Reviewer) -> Response:
    """A fresh frame from the camera, requested over MQTT (``gridpatrol.ingest.snapshot``)."""
    site = _site(request)
    _camera(site, camera_id)
    from gridpatrol.ingest.snapshot import request_snapshot

    conn = _snapshot_connection(site.mqtt.prefix)
    frame = request_snapshot(conn, camera_id, timeout=SNAPSHOT_TIMEOUT_S)
    if frame is None:
        log.warning("camera %s: no snapshot reply within %.0f s", camera_id, SNAPSHOT_TIMEOUT_S)
        raise Problem(
            504, f"camera {camera_id!r} did not answer within {SNAPSHOT_TIMEOUT_S:g} s", "Timeout"
        )
    return Response(
        frame.image,
        media_type=frame.header.content_type or "image/jpeg",
        headers={"Cache-Control": "no-store"},
    )


@router.post("/cameras/{camera_id}/zones/validate")
def validate_zones(camera_id: str, body: ZonesIn, request: Request, _who: Reviewer) -> ZonesOut:
    """The YAML of the camera's ``zones``; 422 with every schema error (line and field)."""
    site = _site(request)
    camera = _camera(site, camera_id)
    try:
        text = zones_yaml(body.zones)
        problems = check_zones(site, camera, text, _class_names(request))
    except RecursionError:  # kept out by the depth limit of ZonesIn; never a server error
        raise Problem(422, "the zones are nested too deeply") from None
    if problems:
        raise Problem(422, f"{len(problems)} problem(s) in the zones", errors=problems)
    log.info("camera %s: %d zone(s) validated", camera_id, len(body.zones))
    return ZonesOut(camera_id=camera_id, yaml=text)


# ---------------------------------------------------------------------------------------------
# The MQTT connection for snapshots: opened on first use, shared by every request.

_conn_lock = threading.Lock()
BROKER_UNUSABLE = "the broker cannot be used with the API's settings (its log says why)"
_conn: MqttConnection | None = None


def _snapshot_connection(prefix: str) -> MqttConnection:
    global _conn
    if not os.environ.get("GRIDPATROL_MQTT_URL"):
        raise Problem(503, "snapshots need a broker: set GRIDPATROL_MQTT_URL", "No broker")
    with _conn_lock:
        if _conn is None:
            _conn = _connect(prefix)
        return _conn


def _connect(prefix: str) -> MqttConnection:
    """The API's broker connection, started; 503 when there is none to be had."""
    from gridpatrol.ingest.mqtt import (
        MqttAuthError,
        MqttConfigError,
        MqttConnection,
        MqttSettings,
    )

    # Component "api" matches the broker user of samples/mosquitto.acl; the client id is
    # unique so several API processes do not take over each other's connection.
    client_id = f"api-{socket.gethostname()}-{os.getpid()}"[:64]
    try:
        conn = MqttConnection("api", MqttSettings.from_env(), prefix=prefix, client_id=client_id)
    except MqttConfigError as exc:  # a setting to mend: the operator's log says which
        log.error("snapshots: the broker settings cannot be used: %s", exc)
        raise Problem(503, BROKER_UNUSABLE, "No broker") from None
    try:
        started = conn.start(timeout=SNAPSHOT_TIMEOUT_S)
    except (MqttAuthError, MqttConfigError) as exc:  # refused credentials, a certificate
        conn.stop()
        log.error("snapshots: the broker cannot be used: %s", exc)
        raise Problem(503, BROKER_UNUSABLE, "No broker") from None
    if not started:
        conn.stop()
        raise Problem(503, "the broker is not reachable", "No broker")
    return conn


def close_snapshot_connection() -> None:
    """Stop the snapshot connection, if one was opened (the app's lifespan calls this when it
    shuts down). The connection belongs to the process: a later snapshot opens a new one."""
    global _conn
    with _conn_lock:
        if _conn is not None:
            _conn.stop()
            _conn = None


# ---------------------------------------------------------------------------------------------
# Zones YAML: flow style for polygons and parameters, as people write the site file by hand;
# only a polygon's points are rounded, every other number is written as sent.


def _scalar(value: Any, point: bool = False) -> str:
    """``value`` as a YAML flow scalar; a polygon's coordinate (``point``) to 4 decimals."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _scalar(str(value))
        if not point:  # a rule's parameter as sent: 0.00004 is a min_area, not 0
            return _plain(value)
        # A ten-thousandth of the frame is under a pixel at 4K: the editor's clicks lose nothing.
        text = repr(round(value, 4))
        return text if "e" not in text else f"{value:.6f}"
    if _HHMM.fullmatch(str(value)):
        return f'"{value}"'  # quoted, or YAML 1.1 readers may take 12:30 for a number
    return _plain(str(value))


def _plain(value: float | str) -> str:
    # YAML's own spelling: a float that reads back as itself (4.0e-05, not 4e-05, which YAML
    # 1.1 reads as a string), a string quoted where it would read as something else.
    dumped = yaml.safe_dump(value, allow_unicode=True, default_flow_style=True, width=10**6)
    return dumped.removesuffix("\n").removesuffix("\n...")


def _flow(value: Any, point: bool = False) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(v, point)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v, point) for v in value) + "]"
    return _scalar(value, point)


def _zone_lines(zone: dict[str, Any]) -> list[str]:
    keys = [k for k in _ZONE_KEY_ORDER if k in zone] + [k for k in zone if k not in _ZONE_KEY_ORDER]
    lines: list[str] = []
    for key in keys:
        value = zone[key]
        if key == "rules" and isinstance(value, dict) and value:
            lines.append("rules:")
            lines += [f"  {_scalar(rule)}: {_flow(params)}" for rule, params in value.items()]
        else:
            lines.append(f"{_scalar(key)}: {_flow(value, point=key == 'polygon')}")
    if not lines:
        return ["- {}"]
    return ["- " + lines[0], *("  " + line for line in lines[1:])]


def zones_yaml(zones: list[dict[str, Any]]) -> str:
    """The ``zones:`` block of a camera, ready to paste under the camera in the site file."""
    if not zones:
        return "zones: []\n"
    body = [line for zone in zones for line in _zone_lines(zone)]
    return "zones:\n" + "".join(f"  {line}\n" for line in body)


def _class_names(request: Request) -> tuple[str, ...]:
    """The detection model's class names, read once per app; () when its weights are not here."""
    state = request.app.state
    if not hasattr(state, "class_names"):
        from gridpatrol.detectors.models import ModelNotFoundError, local_class_names

        try:
            model, state.class_names = local_class_names(services_of(request).settings.model)
            log.info("zone editor: rule classes checked against model %s", model)
        except ModelNotFoundError as exc:
            log.warning("zone editor: rule classes not checked: %s", str(exc).splitlines()[0])
            state.class_names = ()
    names: tuple[str, ...] = state.class_names
    return names


def check_zones(
    site: Site, camera: Camera, text: str, class_names: tuple[str, ...] = ()
) -> list[str]:
    """Validate the zones text in the camera's context; problems name line (in ``text``) and field.

    The camera is re-serialised without its zones and the zones text appended as its last key,
    so the site schema sees exactly the text the editor returns.
    """
    head_data = {
        "site": site.site.model_dump(mode="json"),
        "cameras": [
            camera.model_dump(mode="json", by_alias=True, exclude={"zones"}, exclude_none=True)
        ],
    }
    head = yaml.safe_dump(head_data, allow_unicode=True, sort_keys=False)
    offset = head.count("\n")
    document = head + "".join(f"  {line}\n" for line in text.splitlines())
    try:
        parse_site(document, ZONES_FILE, class_names or None)
    except SiteConfigError as exc:
        return [_relocate(problem, offset) for problem in exc.problems]
    return []


def _relocate(problem: str, offset: int) -> str:
    """``zones.yaml:L: cameras[0].zones[1].x: msg`` → ``zones.yaml:L-offset: zones[1].x: msg``."""
    prefix = f"{ZONES_FILE}:"
    if not problem.startswith(prefix):
        return problem
    line_text, _, rest = problem.removeprefix(prefix).partition(": ")
    try:
        line = max(1, int(line_text) - offset)
    except ValueError:
        return problem
    rest = re.sub(r"\(first at line (\d+)\)", lambda m: _first_at(m, offset), rest)
    return f"{prefix}{line}: {rest.replace('cameras[0].', '', 1)}"


def _first_at(match: re.Match[str], offset: int) -> str:
    return f"(first at line {max(1, int(match.group(1)) - offset)})"
