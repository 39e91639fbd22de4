"""What docker-compose.yml gives the detector workers for their state: the one setting they
read, ``GRIDPATROL_OUTBOX``, on the state volume; ``GRIDPATROL_STATE_DIR`` is the bridge's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# The code a detector worker runs: its own package, ingest and the API client with its outbox.
DETECTOR_CODE = [*(REPO / "detectors").rglob("*.py"), *(REPO / "ingest").rglob("*.py")]
DETECTOR_CODE.append(REPO / "api" / "client.py")


def _services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    services: dict[str, Any] = compose["services"]
    return services


def _defaults(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set in the environment."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_the_detectors_get_their_outbox_on_the_state_volume_and_no_state_dir() -> None:
    services = _services()
    volumes = [v.split(":") for v in services["detect-0"]["volumes"]]
    (state,) = [target for source, target, *_ in volumes if source == "state"]
    assert not any("GRIDPATROL_STATE_DIR" in path.read_text() for path in DETECTOR_CODE)
    for name in ("detect-0", "detect-1"):
        env = services[name]["environment"]
        assert "GRIDPATROL_STATE_DIR" not in env, name
        assert Path(_defaults(env["GRIDPATROL_OUTBOX"])) == Path(state) / name / "outbox.db"
    bridge = services["bridge"]["environment"]
    assert _defaults(bridge["GRIDPATROL_STATE_DIR"]) == f"{state}/bridge"
