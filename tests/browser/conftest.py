"""Fixtures of the console's browser tests: headless Chromium, a seeded API, evidence frames."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import yaml
from playwright.sync_api import Browser, Page, sync_playwright

from gridpatrol.chromium import system_chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def find_chromium() -> Callable[[], str | None]:
    return system_chromium


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=system_chromium(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Shots:
    """Screenshots of each state of a test, kept under test-artifacts/browser/."""

    def __init__(self, page: Page, name: str) -> None:
        self.page = page
        self.dir = ARTIFACTS / name
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):  # from an earlier run
            old.unlink()
        self.count = 0

    def __call__(self, state: str) -> Path:
        self.count += 1
        path = self.dir / f"{self.count:02d}-{state}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser_timezone() -> str:
    """The browser's time zone: the demo site's; parametrize it to run a test elsewhere."""
    return "Asia/Shanghai"


@pytest.fixture
def page(browser: Browser, browser_timezone: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1440, "height": 900}, locale="zh-CN", timezone_id=browser_timezone
    )
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


@pytest.fixture
def shots(page: Page, request: pytest.FixtureRequest) -> Shots:
    return Shots(page, request.node.name)


@pytest.fixture
def console(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The API server with the demo site file (its cameras and sensors feed the console), less
    its night window: the server runs on the wall clock, and a case confirmed between 22:00 and
    08:00 site time would be held instead."""
    site = yaml.safe_load((REPO / "samples" / "site.yaml").read_text(encoding="utf-8"))
    site["policy"]["night"] = {"start": "00:00", "end": "00:00"}  # start == end: no night
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("GRIDPATROL_CONFIG", str(path))
    if "mqtt_url" in request.fixturenames:
        monkeypatch.setenv("GRIDPATROL_MQTT_URL", request.getfixturevalue("mqtt_url"))
    else:
        monkeypatch.delenv("GRIDPATROL_MQTT_URL", raising=False)
    return request.getfixturevalue("api_server")


# ---- evidence and candidates ----------------------------------------------------------------


@pytest.fixture(scope="session")
def frames(shared_dir: Path) -> list[bytes]:
    """Six JPEG frames (1280x720) of the pedestrian street footage, 1 s apart."""
    cap = cv2.VideoCapture(str(shared_dir / "footage" / "pedestrian_street_1080p.mp4"))
    out: list[bytes] = []
    index = 0
    while len(out) < 6:
        ok, image = cap.read()
        if not ok:
            break
        if index % 30 == 0:
            small = cv2.resize(image, (1280, 720), interpolation=cv2.INTER_AREA)
            out.append(_jpeg(small))
        index += 1
    cap.release()
    assert len(out) == 6, "could not read the pedestrian street footage"
    return out


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(buf)


def annotate(jpeg: bytes, label: str) -> bytes:
    """The annotated variant: a box and a label, as the worker draws them."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    cv2.rectangle(image, (400, 250), (700, 650), (0, 0, 255), 4)
    cv2.putText(image, label, (400, 240), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 255), 2)
    return _jpeg(image)


class Seeder:
    """Creates candidates with real evidence through the producer API."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def evidence(self, data: bytes, content_type: str = "image/jpeg") -> str:
        sha = hashlib.sha256(data).hexdigest()
        response = self.client.put(
            f"/evidence/{sha}", content=data, headers={"Content-Type": content_type}
        )
        assert response.status_code in (200, 201), response.text
        return sha

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(
            "/candidates", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    def camera_candidate(
        self,
        frames: list[bytes],
        *,
        type_: str,
        camera_id: str,
        zone_id: str,
        minutes_ago: float,
        address: str,
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        first_at = now - timedelta(minutes=minutes_ago + 5)
        at = now - timedelta(minutes=minutes_ago)
        first, latest = frames[0], frames[-1]
        evidence = [
            self._ref(annotate(latest, type_), "annotated", at),
            self._ref(latest, "clean", at),
            self._ref(first, "first_seen", first_at),
            self._ref(latest, "latest", at),
        ]
        return self.create(
            {
                "source": {
                    "type": "camera",
                    "system": "gridpatrol-detect",
                    "camera_id": camera_id,
                    "source_event_id": f"{camera_id}:{zone_id}:{uuid.uuid4().hex[:8]}",
                },
                "type": type_,
                "description": f"{type_} in zone {zone_id} of {camera_id}",
                "occurred_at": first_at.isoformat(),
                "location": {"lat": 31.2801, "lon": 121.4512, "address": address},
                "severity": "MINOR",
                "urgency": "normal",
                "evidence": evidence,
                "detection": {
                    "model": "yolo11n",
                    "model_version": "8.3",
                    "score": 0.71,
                    "boxes": [[400, 250, 700, 650]],
                    "track_ids": [7],
                    "zone_id": zone_id,
                    "dwell_s": 300.0,
                },
            }
        )

    def sensor_candidate(self, frames: list[bytes], *, sensor_id: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        trace = json.dumps({"sensor_id": sensor_id, "values": [88, 91, 95]}).encode()
        evidence = [
            self._ref(trace, "sensor_trace", now, "application/json"),
            self._ref(frames[2], "snapshot", now),
        ]
        return self.create(
            {
                "source": {
                    "type": "sensor",
                    "system": "gridpatrol-bridge",
                    "sensor_id": sensor_id,
                    "source_event_id": f"{sensor_id}:{uuid.uuid4().hex[:8]}",
                },
                "type": "bin_full",
                "description": f"bin fill above 90 % at {sensor_id}",
                "occurred_at": (now - timedelta(minutes=2)).isoformat(),
                "location": {"address": "灵石路 695号", "grid_code": "JA-DN-0105"},
                "severity": "MINOR",
                "urgency": "normal",
                "evidence": evidence,
                "measurements": [{"n": "fill", "u": "%", "v": 95}],
                "alarm": {
                    "alarm_id": str(uuid.uuid4()),
                    "alarm_type": "bin_fill",
                    "count": 3,
                    "first_seen": (now - timedelta(minutes=2)).isoformat(),
                    "last_seen": now.isoformat(),
                },
            }
        )

    def _ref(
        self, data: bytes, kind: str, at: datetime, content_type: str = "image/jpeg"
    ) -> dict[str, Any]:
        ref: dict[str, Any] = {
            "sha256": self.evidence(data, content_type),
            "kind": kind,
            "captured_at": at.isoformat(),
        }
        if content_type == "image/jpeg":
            ref |= {"width": 1280, "height": 720}
        return ref


@pytest.fixture
def seeder(console: Any) -> Iterator[Seeder]:
    with console.client("producer") as client:
        yield Seeder(client)


class Ui:
    """The console in a browser tab: log in, wait for images, keep screenshots."""

    def __init__(self, page: Page, server: Any, shots: Shots) -> None:
        self.page = page
        self.server = server
        self.shot = shots

    def login(self, role: str = "reviewer") -> None:
        self.page.goto(f"{self.server.url}/review")
        self.page.fill("#token", self.server.tokens[role])
        self.page.click("#login-form button[type=submit]")
        self.page.wait_for_selector("#app:not([hidden])")

    def image_width(self, selector: str) -> int:
        """naturalWidth of a loaded image (0 when it failed to decode)."""
        self.page.wait_for_function(
            "sel => { const i = document.querySelector(sel); return i && i.complete; }",
            arg=selector,
        )
        width: int = self.page.eval_on_selector(selector, "img => img.naturalWidth")
        return width

    def rows(self) -> list[str]:
        ids: list[str] = self.page.eval_on_selector_all(
            "#queue-body tr", "rows => rows.map(r => r.dataset.id)"
        )
        return ids

    def wait_rows(self, ids: list[str]) -> None:
        """Wait until the queue shows exactly these candidates (in any order)."""
        self.page.wait_for_function(
            """want => {
              const got = [...document.querySelectorAll('#queue-body tr')].map(r => r.dataset.id);
              return JSON.stringify(got.sort()) === JSON.stringify(want);
            }""",
            arg=sorted(ids),
        )

    def selected(self) -> str:
        value: str = self.page.eval_on_selector("#queue-body tr.selected", "r => r.dataset.id")
        return value


def intercepted(page: Page, *urls: str | Callable[[str], bool]) -> None:
    """Route requests to ``urls`` from the start through a route that lets them all by, so that
    a route a test adds later catches the one it is meant to: when the page's first route is
    added just before a request is sent, the browser can send that request past it (it starts
    intercepting requests with the page's first route), and the request goes through as is."""
    for url in urls:
        page.route(url, lambda route: route.fallback())


@pytest.fixture
def ui(console: Any, page: Page, shots: Shots) -> Ui:
    # The server first, so the tab (with its open event stream) closes before the server stops.
    return Ui(page, console, shots)
