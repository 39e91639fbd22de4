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
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import yaml
from sqlalchemy.engine import make_url

from gridpatrol.api.settings import Settings
from gridpatrol.api.workers import config
from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings

REPO = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def _closing_brace(text: str, start: int) -> int:
    """The index of the ``}`` closing the ``${`` whose body starts at ``start`` (nested ones
    skipped)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise AssertionError(f"unclosed ${{ in {text!r}")


def _expand(body: str, env: dict[str, str]) -> str:
    match = _BRACED.fullmatch(body)
    assert match, f"not a compose variable: ${{{body}}}"
    name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
    value = env.get(name)
    if op.startswith(":") and not value:
        value = None
    if op.endswith("+"):
        return interpolate(arg, env) if value is not None else ""
    if value is not None:
        return value
    if op.endswith("?"):
        raise AssertionError(f"compose requires {name}: {interpolate(arg, env)}")
    return interpolate(arg, env) if op else ""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt}
    and $$, with variables nested in the defaults (Compose 2.18+)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif text[i] == "$" and (name := _NAME.match(text, i + 1)):
            out.append(env.get(name.group(0), ""))
            i = name.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


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


def _dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continued lines joined."""
    return (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def _image() -> tuple[dict[str, str], str, list[str]]:
    """The Dockerfile's ENV values, its USER, and the folders it gives that user."""
    lines = _dockerfile_lines()
    env = dict(line.removeprefix("ENV ").split("=", 1) for line in lines if line.startswith("ENV "))
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    owned = [
        m.group(1) for line in lines for m in re.finditer(rf"chown -R {user}:{user} (\S+)", line)
    ]
    return env, user, owned


def _mounts(service: dict[str, Any], env: dict[str, str]) -> list[list[str]]:
    return [interpolate(volume, env).split(":") for volume in service["volumes"]]


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return compose


def _image_files(root: Path) -> Path:
    """The files the Dockerfile's COPY lines put into the image, copied under ``root`` as
    Docker copies them (a folder's contents into the target, several sources into a folder);
    the image's WORKDIR in that tree."""
    lines = _dockerfile_lines()
    (workdir,) = [line.split()[1] for line in lines if line.startswith("WORKDIR ")]
    base = root / workdir.lstrip("/")
    for line in lines:
        if not line.startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        assert not [s for s in sources if s.startswith("--")], line  # no stages, no --chown
        target = base / dest
        for source in map(REPO.joinpath, sources):
            to = target / source.name if dest.endswith("/") or len(sources) > 1 else target
            if source.is_dir():
                shutil.copytree(source, to, symlinks=True, dirs_exist_ok=True)
            else:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, to)
    return base


def test_the_image_builds_gridpatrol_from_what_it_copies(tmp_path: Path) -> None:
    """No container engine here: the image's ``pip install .`` is repeated on a copy of exactly
    what the Dockerfile copies. Every package folder pyproject maps must be there (setuptools
    stops at a missing one), with the files the package carries and no weights."""
    source = _image_files(tmp_path / "image")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Only what the package carries from its data folders: no weights, no other samples.
    assert [p.name for p in (source / "models").iterdir()] == ["manifest.yaml"]
    assert [p.name for p in (source / "samples").iterdir()] == ["site.yaml"]
    assert not (source / "var").exists()  # no footage
    (wheel,) = (tmp_path / "dist").glob("gridpatrol-*.whl")
    data_folders = ("gridpatrol/models/", "gridpatrol/samples/")
    with zipfile.ZipFile(wheel) as built:
        data = [name for name in built.namelist() if name.startswith(data_folders)]
        site = built.read("gridpatrol/samples/site.yaml")
    assert site == (REPO / "samples" / "site.yaml").read_bytes()
    assert sorted(data) == ["gridpatrol/models/manifest.yaml", "gridpatrol/samples/site.yaml"]


def test_the_image_looks_for_weights_where_compose_mounts_them() -> None:
    """Installed (not editable) in the image, the package cannot find models/ beside itself:
    the Dockerfile names the manifest's folder, and compose mounts the weights in the shared
    models folder, so the manifest the image carries is not hidden."""
    env, _, _ = _image()
    mounts = _mounts(_compose()["x-gridpatrol"], {"GRIDPATROL_WEIGHTS": "/srv/weights"})
    weights = f"{env['GRIDPATROL_SHARED']}/models"
    assert [source for source, target, *_ in mounts if target == weights] == ["/srv/weights"]
    assert not [target for _, target, *_ in mounts if target == env["GRIDPATROL_MODELS_DIR"]]


def test_compose_wants_the_folder_of_the_weights_themselves() -> None:
    """./models holds the links `make` made to host paths, which lead nowhere in a container,
    and the image cannot fetch weights (no Ultralytics): with it as a default the detectors
    would exit 2 and be restarted for ever. Compose stops first and says what to set."""
    with pytest.raises(AssertionError, match=r"requires GRIDPATROL_WEIGHTS: .*not \./models"):
        _mounts(_compose()["x-gridpatrol"], {})


def test_what_the_services_write_is_on_volumes_their_user_owns() -> None:
    """The image runs as its own user: a volume it writes must start as a copy of a folder that
    user owns, and the API's evidence must outlive the container."""
    _, user, owned = _image()
    assert user not in ("root", "0")
    checked = []
    for name, spec in _compose()["services"].items():
        if (spec.get("command") or [None])[0] != "gridpatrol":
            continue
        env = spec.get("environment") or {}
        keys = ("GRIDPATROL_STATE_DIR", "GRIDPATROL_EVIDENCE_DIR")
        written = [interpolate(env[k], {}) for k in keys if k in env]
        if "GRIDPATROL_OUTBOX" in env:
            written.append(str(Path(interpolate(env["GRIDPATROL_OUTBOX"], {})).parent))
        mounts = _mounts(spec, {"GRIDPATROL_WEIGHTS": "/srv/weights"})
        volumes = [t for s, t, *rest in mounts if not s.startswith(("/", ".")) and rest != ["ro"]]
        for path in written:
            (volume,) = [t for t in volumes if path == t or path.startswith(t + "/")]
            assert any(volume == o or volume.startswith(o + "/") for o in owned), (name, volume)
            checked.append(name)
    assert sorted(checked) == ["api", "bridge", "detect-0", "detect-1"]


# The code a detector worker runs: its own package, ingest and the API client with its outbox.
DETECTOR_CODE = [*(REPO / "detectors").rglob("*.py"), *(REPO / "ingest").rglob("*.py")]
DETECTOR_CODE.append(REPO / "api" / "client.py")


def test_the_detectors_get_their_outbox_on_the_state_volume_and_no_state_dir() -> None:
    """``GRIDPATROL_STATE_DIR`` is the bridge's; a detector reads only ``GRIDPATROL_OUTBOX``."""
    services = _compose()["services"]
    volumes = [v.split(":") for v in services["detect-0"]["volumes"]]
    (state,) = [target for source, target, *_ in volumes if source == "state"]
    assert not any("GRIDPATROL_STATE_DIR" in path.read_text() for path in DETECTOR_CODE)
    for name in ("detect-0", "detect-1"):
        env = services[name]["environment"]
        assert "GRIDPATROL_STATE_DIR" not in env, name
        assert Path(interpolate(env["GRIDPATROL_OUTBOX"], {})) == Path(state) / name / "outbox.db"
    bridge = services["bridge"]["environment"]
    assert interpolate(bridge["GRIDPATROL_STATE_DIR"], {}) == f"{state}/bridge"


@pytest.mark.parametrize("env", [{}, {"POSTGRES_PASSWORD": "s3cret-Pw"}])
def test_the_api_logs_in_with_the_password_the_database_was_given(env: dict[str, str]) -> None:
    """Setting POSTGRES_PASSWORD alone must not leave the API on the default password (refused
    at start, status 2, restarted for ever)."""
    services = _compose()["services"]
    database = {k: interpolate(str(v), env) for k, v in services["postgres"]["environment"].items()}
    url = make_url(interpolate(services["api"]["environment"]["GRIDPATROL_DATABASE_URL"], env))
    assert (url.username, url.password, url.host, url.port, url.database) == (
        database["POSTGRES_USER"],
        database["POSTGRES_PASSWORD"],
        "postgres",
        5432,
        database["POSTGRES_DB"],
    )
    assert url.password == env.get("POSTGRES_PASSWORD", "change-me")


@pytest.mark.parametrize("port", [None, "9000"])
def test_the_api_port_setting_moves_the_api_everywhere(port: str | None) -> None:
    """The port the API listens on is the one compose publishes and the producers post to."""
    env = {"GRIDPATROL_API_PORT": port} if port else {}
    expected = int(port or 8000)
    services = _compose()["services"]
    command = [interpolate(part, env) for part in services["api"]["command"]]
    assert int(command[command.index("--port") + 1]) == expected
    published = [interpolate(p, env).split(":") for p in services["api"]["ports"]]
    assert published == [[str(expected), str(expected)]]
    producers = {
        name: urlsplit(interpolate(spec["environment"]["GRIDPATROL_API_URL"], env))
        for name, spec in services.items()
        if "GRIDPATROL_API_URL" in (spec.get("environment") or {})
    }
    assert sorted(producers) == ["bridge", "detect-0", "detect-1"]
    assert {(u.hostname, u.port) for u in producers.values()} == {("api", expected)}


@pytest.mark.parametrize(
    ("env", "secure", "trusted"),
    [
        ({}, "auto", "127.0.0.1,::1"),
        (
            {"GRIDPATROL_SESSION_COOKIE_SECURE": "true", "FORWARDED_ALLOW_IPS": "172.18.0.0/16"},
            "true",
            "172.18.0.0/16",
        ),
    ],
)
def test_the_api_gets_the_cookie_and_proxy_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], secure: str, trusted: str
) -> None:
    """In a container the load balancer is never the API's loopback peer: the operator must be
    able to name it (FORWARDED_ALLOW_IPS) or make the console's cookie always Secure."""
    api = _compose()["services"]["api"]["environment"]
    names = ("GRIDPATROL_SESSION_COOKIE_SECURE", "FORWARDED_ALLOW_IPS")
    given = {name: interpolate(api[name], env) for name in names}
    assert given == dict(zip(names, (secure, trusted), strict=True))
    # As `gridpatrol api` in the container reads them: its settings, uvicorn's trusted proxies.
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    assert Settings().session_cookie_secure == secure
    assert config("gridpatrol.api.app:create_app").forwarded_allow_ips == trusted


# The eclipse-mosquitto image creates /mosquitto/{config,data,log} and gives /mosquitto to its
# user mosquitto (its entrypoint chowns it again at each start as root); nothing else.
MOSQUITTO_IMAGE_OWNS = "/mosquitto"


def test_the_broker_persists_on_the_volume_its_image_gives_mosquitto(tmp_path: Path) -> None:
    """A new volume mounted where the image has no folder is root's: Mosquitto, once it has
    dropped root, could not autosave there. The broker's command is run in a copy of the
    container's file tree (the bind mounts at their targets, the image's folders) with a
    ``mosquitto`` that keeps the configuration it is given."""
    broker = _compose()["services"]["mosquitto"]
    mounts = {target: source for source, target, *_ in _mounts(broker, {})}
    (data,) = [target for target, source in mounts.items() if source == "mosquitto"]
    assert data.startswith(MOSQUITTO_IMAGE_OWNS + "/")

    root = tmp_path / "root"
    for folder in ("config", "data", "log"):
        (root / "mosquitto" / folder).mkdir(parents=True)
    for target, source in mounts.items():
        if source.startswith("./"):
            (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / target.lstrip("/")).symlink_to(REPO / source)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "mosquitto"
    stub.write_text('#!/bin/sh\n[ "$1" = -c ] && cp "$2" "$GIVEN"\n')
    stub.chmod(0o755)

    shell, flag, script = broker["command"]
    assert (shell, flag) == ("sh", "-c")
    # Every absolute path of the container, into the copy.
    local = re.sub(r"(?<![\w./])/(?=etc/|mosquitto/)", f"{root}/", script)
    given = tmp_path / "given.conf"
    path = f"{bin_dir}:{os.environ['PATH']}"
    subprocess.run([shell, flag, local], env={"PATH": path, "GIVEN": str(given)}, check=True)

    def location(line: str) -> bool:
        return line.startswith("persistence_location ")

    sample = (REPO / "samples" / "mosquitto.conf").read_text().splitlines()
    lines = given.read_text().splitlines()
    assert [line for line in lines if location(line)] == [f"persistence_location {root}{data}/"]
    assert [line for line in lines if not location(line)] == [
        line for line in sample if not location(line)
    ]
    # The sample itself stays right for the Debian package (systemd, no container).
    assert [line for line in sample if location(line)] == [
        "persistence_location /var/lib/mosquitto/"
    ]
