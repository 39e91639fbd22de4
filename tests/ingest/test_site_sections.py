"""The cameras, sensors, patrol and mqtt sections: errors name the file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SITE = """\
site: {name: Test}
mqtt: {prefix: gridpatrol}
patrol: {max_fps: 8}
cameras:
  - id: c1
    source: a.mp4
    interval_s: 30
    weight: 2
    location: {address: here}
sensors:
  - id: mh-1
    kind: manhole_cover
    camera: c1
    expected_interval_s: 600
    location: {lat: 31.2, lon: 121.4}
    thresholds: {raise: 15, clear: 5, unit: deg, debounce_s: 10}
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
    )


def test_the_base_file_is_valid(tmp_path: Path) -> None:
    result = check(tmp_path, SITE)
    assert result.returncode == 0, result.stderr
    assert "1 on patrol sharing 8 fps" in result.stdout


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        ("max_fps: 8", "max_fps: 0", 3, "patrol.max_fps", "greater than 0"),
        ("max_fps: 8", "max_fps: 8, burst: 2", 3, "patrol.burst", "Extra inputs"),
        ("prefix: gridpatrol", "prefix: grid/#", 2, "mqtt.prefix", "is not a topic prefix"),
        ("prefix: gridpatrol", "prefix: gp, url: x", 2, "mqtt.url", "Extra inputs"),
        ("interval_s: 30", "interval_s: -1", 7, "cameras[0].interval_s", "greater than 0"),
        ("weight: 2", "weight: 0", 8, "cameras[0].weight", "greater than or equal to 0.01"),
        ("weight: 2", "weight: 101", 8, "cameras[0].weight", "less than or equal to 100"),
        ("kind: manhole_cover", "kind: volcano", 12, "sensors[0].kind", "manhole_cover"),
        ("camera: c1", "camera: c9", 13, "sensors[0].camera", "unknown camera 'c9'"),
        ("id: mh-1", "id: mh 1", 11, "sensors[0].id", "is not an id"),
        (
            "expected_interval_s: 600",
            "expected_interval_s: -5",
            14,
            "sensors[0].expected_interval_s",
            "greater than 0",
        ),
        ("raise: 15, clear: 5", "raise: 5, clear: 5", 16, "sensors[0].thresholds", "differ"),
        ("unit: deg", "unit: deg, hold: 1", 16, "sensors[0].thresholds.hold", "Extra inputs"),
        ("lat: 31.2, lon: 121.4", "lat: 91, lon: 121.4", 15, "sensors[0].location.lat", "90"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, message: str
) -> None:
    assert old in SITE
    result = check(tmp_path, SITE.replace(old, new))
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'site.yaml'}:{line}: {field}: "), first
    assert message in first


def test_weights_beyond_the_range_are_named_not_a_traceback(tmp_path: Path) -> None:
    # Finite, but 1e-320 makes the patrol share of "b" round to zero, and 1 / weight infinite.
    text = (
        "site: {name: Test}\n"
        "patrol: {max_fps: 8}\n"
        "cameras:\n"
        "  - {id: a, source: a.mp4, interval_s: 0.01, weight: 1.0e+10, location: {address: x}}\n"
        "  - {id: b, source: b.mp4, interval_s: 0.01, weight: 1.0e-320, location: {address: x}}\n"
    )
    result = check(tmp_path, text)
    path = tmp_path / "site.yaml"
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:4: cameras[0].weight: Input should be less than or equal to 100",
        f"{path}:5: cameras[1].weight: Input should be greater than or equal to 0.01",
        f"{path}: INVALID (2 problem(s))",
    ]
