"""docker-compose.yml's gridpatrol services, run outside containers with their own environment.

No container engine runs here, so the test reads the compose file, applies compose's variable
interpolation with local values (a private broker, a fresh PostgreSQL database, free ports) and
runs each gridpatrol service's command as a subprocess. The Prometheus alert rules are checked
against the metrics those processes really export.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings

REPO = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op and op.endswith("?"):
            raise AssertionError(f"compose requires {name}: {arg}")
        return arg if op else ""

    return _VAR.sub(sub, text)


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    name = f"gp_compose_{uuid.uuid4().hex[:10]}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Service:
    def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str], log: Path) -> None:
        command = [interpolate(str(part), env) for part in spec["command"]]
        assert command[0] == "gridpatrol"
        self.name = name
        self.argv = [sys.executable, "-m", "gridpatrol.cli", *command[1:]]
        self.env = {
            **os.environ,
            **{k: interpolate(str(v), env) for k, v in (spec.get("environment") or {}).items()},
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        state = self.env.get("GRIDPATROL_STATE_DIR")
        if state:
            Path(state).mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def component_statuses(conn: MqttConnection, wanted: set[str], timeout: float) -> dict[str, str]:
    sub = conn.subscribe("gridpatrol/components/+/status", qos=1)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = sub.get(0.5)
        if message is not None:
            seen[message.topic.split("/")[2]] = message.payload.decode()
        if all(seen.get(c) == "online" for c in wanted):
            break
    return seen


def metric_families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


@pytest.mark.slow
@pytest.mark.postgres
def test_compose_services_run_outside_containers(
    tmp_path: Path, mosquitto: Any, database: str
) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = {
        name: spec
        for name, spec in compose["services"].items()
        if (spec.get("command") or [None])[0] == "gridpatrol"
    }
    assert set(services) == {"api", "ingest", "detect-0", "detect-1", "bridge"}

    api_port = free_port()
    metrics_ports = [free_port(), free_port()]
    tokens = {"tok-compose-producer": "producer", "tok-compose-admin": "admin"}
    env = {
        "GRIDPATROL_SITE_FILE": str(REPO / "samples" / "site.yaml"),
        "GRIDPATROL_MQTT_URL": mosquitto.url,
        "GRIDPATROL_DATABASE_URL": database,
        "GRIDPATROL_EVIDENCE_DIR": str(tmp_path / "evidence"),
        "GRIDPATROL_API_TOKENS": json.dumps(
            {tok: {"role": role, "name": f"compose-{role}"} for tok, role in tokens.items()}
        ),
        "GRIDPATROL_SESSION_SECRET": uuid.uuid4().hex * 2,
        "GRIDPATROL_PRODUCER_TOKEN": "tok-compose-producer",
        "GRIDPATROL_API_HOST": "127.0.0.1",
        "GRIDPATROL_API_PORT": str(api_port),
        "GRIDPATROL_API_URL": f"http://127.0.0.1:{api_port}",
        "GRIDPATROL_STATE_DIR": str(tmp_path / "state"),
        "GRIDPATROL_DETECT0_METRICS_PORT": str(metrics_ports[0]),
        "GRIDPATROL_DETECT1_METRICS_PORT": str(metrics_ports[1]),
        # The private test broker allows anonymous clients and accepts any credentials.
        **{f"GRIDPATROL_MQTT_PASSWORD_{c}": "pw" for c in ("API", "INGEST", "DETECT", "BRIDGE")},
    }
    running = {
        name: Service(name, spec, env, tmp_path / f"{name}.log") for name, spec in services.items()
    }
    order = ["api", "bridge", "detect-0", "detect-1", "ingest"]
    api = running["api"]
    api.start()
    base = f"http://127.0.0.1:{api_port}/api/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert api.proc is not None and api.proc.poll() is None, api.log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    for name in order[1:]:
        running[name].start()

    watcher = MqttConnection("test-compose-watcher", MqttSettings.from_url(mosquitto.url))
    try:
        assert watcher.start(timeout=10)
        wanted = {"ingest-1", "detect-0-of-2", "detect-1-of-2", "alarm_bridge"}
        seen = component_statuses(watcher, wanted, timeout=120)
        logs = {n: s.log.read_text()[-1500:] for n, s in running.items()}
        assert all(seen.get(c) == "online" for c in wanted), (seen, logs)

        # Every metric the alert rules use is exported by the API or a detector worker.
        admin = {"Authorization": "Bearer tok-compose-admin"}
        assert httpx.get(f"{base}/candidates", headers=admin, timeout=10).status_code == 200
        exported = metric_families(httpx.get(f"{base}/metrics", timeout=10).text)
        for port in metrics_ports:
            exported |= metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        rules = yaml.safe_load((REPO / "samples" / "prometheus" / "alerts.yml").read_text())
        exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
        used = {m for e in exprs for m in re.findall(r"gridpatrol_[a-z_]+", e)}
        assert used, exprs
        missing = {
            m for m in used if m not in exported and m.removesuffix("_total") not in exported
        }
        assert not missing, (missing, sorted(exported))
    finally:
        watcher.stop()
        codes = {name: running[name].stop() for name in reversed(order) if running[name].proc}
    # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is complete.
    assert codes.pop("api") in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in api.log.read_text()
    assert codes == dict.fromkeys(reversed(order[1:]), 0), codes


def _image() -> tuple[dict[str, str], str, list[str]]:
    """The Dockerfile's ENV values, its USER, and the folders it gives that user."""
    lines = (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    env = dict(line.removeprefix("ENV ").split("=", 1) for line in lines if line.startswith("ENV "))
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    owned = [
        m.group(1) for line in lines for m in re.finditer(rf"chown -R {user}:{user} (\S+)", line)
    ]
    return env, user, owned


def _mounts(service: dict[str, Any]) -> list[list[str]]:
    return [interpolate(volume, {}).split(":") for volume in service["volumes"]]


def test_the_image_looks_for_weights_where_compose_mounts_them() -> None:
    """Installed (not editable) in the image, the package cannot find models/ beside itself:
    the Dockerfile names the manifest's folder, and compose mounts the weights in the shared
    models folder, so the manifest the image carries is not hidden."""
    env, _, _ = _image()
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = _mounts(compose["x-gridpatrol"])
    weights = f"{env['GRIDPATROL_SHARED']}/models"
    assert [source for source, target, *_ in mounts if target == weights] == ["./models"]
    assert not [target for _, target, *_ in mounts if target == env["GRIDPATROL_MODELS_DIR"]]


def test_what_the_services_write_is_on_volumes_their_user_owns() -> None:
    """The image runs as its own user: a volume it writes must start as a copy of a folder that
    user owns, and the API's evidence must outlive the container."""
    _, user, owned = _image()
    assert user not in ("root", "0")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    checked = []
    for name, spec in compose["services"].items():
        if (spec.get("command") or [None])[0] != "gridpatrol":
            continue
        env = spec.get("environment") or {}
        keys = ("GRIDPATROL_STATE_DIR", "GRIDPATROL_EVIDENCE_DIR")
        written = [interpolate(env[k], {}) for k in keys if k in env]
        volumes = [t for s, t, *rest in _mounts(spec) if not s.startswith(".") and rest != ["ro"]]
        for path in written:
            (volume,) = [t for t in volumes if path == t or path.startswith(t + "/")]
            assert any(volume == o or volume.startswith(o + "/") for o in owned), (name, volume)
            checked.append(name)
    assert sorted(checked) == ["api", "bridge", "detect-0", "detect-1"]
