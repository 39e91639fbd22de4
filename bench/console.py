"""Review console: time per keyboard decision, as a ratio to the bare review API call.

    .venv/bin/python bench/console.py            # 40 decisions each way
    .venv/bin/python bench/console.py --quick    # 10 each way

One API server (SQLite, the demo site file), candidates seeded with real 1280x720 JPEG evidence
(annotated, clean, first-seen, latest). "Console" is what a reviewer waits for: press `c` in
headless Chromium until the next candidate is selected and its annotated frame has decoded
pixels. "API" is ``POST /candidates/{id}/review`` over HTTP with a bearer token. Also: from
submitting the login form to the first flagged frame on screen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from api import Server  # bench/api.py: its start-up checks (the scripts import siblings)
from gridpatrol.chromium import system_chromium
from gridpatrol.ingest.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKENS = {"bench-producer": "producer", "bench-reviewer": "reviewer"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]


def frames(count: int) -> list[bytes]:
    shared = Path(os.environ.get("GRIDPATROL_SHARED") or ROOT.parent / "shared")
    cap = cv2.VideoCapture(str(shared / "footage" / "pedestrian_street_1080p.mp4"))
    out: list[bytes] = []
    while len(out) < count:
        ok, image = cap.read()
        if not ok:
            break
        small = cv2.resize(image, (1280, 720), interpolation=cv2.INTER_AREA)
        out.append(bytes(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])[1]))
        for _ in range(7):
            cap.read()
    cap.release()
    return out


def annotated(jpeg: bytes, n: int) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("bench frame: not a decodable JPEG")
    cv2.rectangle(image, (300 + n, 200), (600 + n, 600), (0, 0, 255), 4)
    return bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1])


def seed(client: httpx.Client, images: list[bytes], count: int) -> list[str]:
    ids = []
    now = datetime.now(UTC)
    for n in range(count):
        clean = images[n % len(images)]
        refs = []
        for kind, data in (
            ("annotated", annotated(clean, n)),
            ("clean", clean),
            ("first_seen", images[0]),
            ("latest", clean),
        ):
            sha = hashlib.sha256(data).hexdigest()
            client.put(f"/evidence/{sha}", content=data, headers={"Content-Type": "image/jpeg"})
            refs.append({"sha256": sha, "kind": kind, "width": 1280, "height": 720})
        body = {
            "source": {
                "type": "camera",
                "system": "bench",
                "camera_id": "cam-dn-001",
                "source_event_id": uuid.uuid4().hex,
            },
            "type": "street_vending",
            "description": "bench",
            "severity": "MINOR",
            "occurred_at": (now - timedelta(minutes=n)).isoformat(),
            "urgency": "normal",
            "location": {"address": "大宁路 100号"},
            "evidence": refs,
            "detection": {
                "model": "yolo11n",
                "score": 0.7,
                "zone_id": "sidewalk-north",
                "dwell_s": 300,
            },
        }
        response = client.post(
            "/candidates", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


FRAME_READY = """id => {
  const row = document.querySelector('#queue-body tr.selected');
  const img = document.querySelector('#detail figure.main img');
  return row && row.dataset.id === id && img && img.complete && img.naturalWidth > 0
    && document.querySelector('#detail').textContent.includes(id.slice(0, 8));
}"""


def console_decisions(page: Page, count: int) -> list[float]:
    times = []
    for _ in range(count):
        rows = page.eval_on_selector_all("#queue-body tr", "r => r.map(x => x.dataset.id)")
        if len(rows) < 2:
            break
        start = time.perf_counter()
        page.keyboard.press("c")
        page.wait_for_function(FRAME_READY, arg=rows[1])
        times.append(time.perf_counter() - start)
    return times


def api_decisions(client: httpx.Client, ids: list[str]) -> list[float]:
    times = []
    for cid in ids:
        start = time.perf_counter()
        client.post(f"/candidates/{cid}/review", json={"decision": "confirm"}).raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def start_api(work: Path) -> Server:
    """``gridpatrol api`` on SQLite in ``work``, logging to ``work/api.log``: an API that exits
    while starting raises RuntimeError with its exit code and log, one never healthy
    TimeoutError."""
    port = free_port()
    env = {
        **os.environ,
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{work}/api.db",
        "GRIDPATROL_EVIDENCE_DIR": str(work / "evidence"),
        "GRIDPATROL_CONFIG": str(ROOT / "samples" / "site.yaml"),
        "GRIDPATROL_API_TOKENS": json.dumps(
            {tok: {"role": role, "name": f"bench-{role}"} for tok, role in TOKENS.items()}
        ),
    }
    env.pop("GRIDPATROL_MQTT_URL", None)
    cmd = [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING", "api"]
    return Server([*cmd, "--port", str(port)], env, port, work / "api.log")


def launch_chromium(pw: Playwright) -> Browser:
    """The Chromium the browser tests use: GRIDPATROL_CHROMIUM, a `chromium` that runs, else
    Playwright's own (`make browser` provides one)."""
    browser: Browser = pw.chromium.launch(executable_path=system_chromium(), args=CHROMIUM_ARGS)
    return browser


def run(count: int, keep: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gp-bench-console-"))
    server: Server | None = None
    try:
        server = start_api(work)
        base = server.url
        images = frames(8)
        auth = {"Authorization": "Bearer bench-producer"}
        with httpx.Client(base_url=f"{base}/api/v1", headers=auth, timeout=30) as producer:
            console_ids = seed(producer, images, count + 1)
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{base}/review")
            page.fill("#token", "bench-reviewer")
            start = time.perf_counter()
            page.click("#login-form button[type=submit]")
            page.wait_for_function(FRAME_READY, arg=console_ids[-1])  # newest first
            first_frame = time.perf_counter() - start
            console = console_decisions(page, count)
            browser.close()
        with httpx.Client(base_url=f"{base}/api/v1", headers=auth, timeout=30) as producer:
            api_ids = seed(producer, images, count)
        reviewer = {"Authorization": "Bearer bench-reviewer"}
        with httpx.Client(base_url=f"{base}/api/v1", headers=reviewer, timeout=30) as client:
            api = api_decisions(client, api_ids)
    finally:
        if server is not None:
            server.stop()
        if keep:
            print(f"database, evidence and API log kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "decisions": len(console),
        "login_to_first_frame_ms": round(first_frame * 1000),
        "console_median_ms": round(statistics.median(console) * 1000),
        "console_p90_ms": round(sorted(console)[int(0.9 * (len(console) - 1))] * 1000),
        "api_median_ms": round(statistics.median(api) * 1000, 1),
        "console_over_api": round(statistics.median(console) / statistics.median(api), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 decisions instead of 40")
    parser.add_argument("--keep", action="store_true", help="keep the database and evidence")
    args = parser.parse_args()
    result = run(10 if args.quick else 40, keep=args.keep)
    print(f"login to first flagged frame: {result['login_to_first_frame_ms']} ms")
    print(
        f"console, key press to next frame on screen: median {result['console_median_ms']} ms,"
        f" p90 {result['console_p90_ms']} ms ({result['decisions']} decisions)"
    )
    print(f"API review call: median {result['api_median_ms']} ms")
    print(f"console / API: {result['console_over_api']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
