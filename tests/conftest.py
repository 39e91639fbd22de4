"""Fixtures shared by every test package: a private Mosquitto, PostgreSQL, shared assets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gridpatrol.ingest.broker import free_port, reachable

REPO = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "GRIDPATROL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening TCP socket on 127.0.0.1:``port``.

    A connection to the port proves nothing: between free_port() closing its socket and the
    server binding, another process may take the port, and our server then dies with
    EADDRINUSE while the other one answers.
    """
    table = Path("/proc/net/tcp")
    if not table.exists():  # not Linux: the port answering is all we can tell
        return reachable("127.0.0.1", port, timeout=0.2)
    wanted = f"0100007F:{port:04X}"
    inodes = {
        f"socket:[{fields[9]}]"
        for fields in (line.split() for line in table.read_text().splitlines()[1:])
        if fields[1] == wanted and fields[3] == "0A"  # 0A: LISTEN
    }
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if str(fd.readlink()) in inodes:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


START_ATTEMPTS = 3


def start_listening(
    launch: Callable[[int], subprocess.Popen[bytes]],
    port: int,
    *,
    movable: bool,
    output: Callable[[subprocess.Popen[bytes]], str],
    ready: Callable[[int], bool] = lambda port: True,
    timeout: float = 10.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Launch a server on ``port`` until it is the one listening there and ``ready``.

    A server that died (the port was taken meanwhile) is launched again on a new free port
    when ``movable`` (no client knows its port yet), up to START_ATTEMPTS times; the error
    carries each attempt's ``output``.
    """
    failures: list[str] = []
    for _ in range(START_ATTEMPTS if movable else 1):
        proc = launch(port)
        why = _await_listening(proc, port, ready, timeout)
        if why is None:
            return proc, port
        failures.append(f"on port {port} it {why}:\n{output(proc)}")
        port = free_port()
    raise RuntimeError("the server did not start; " + "\n".join(failures))


def _await_listening(
    proc: subprocess.Popen[bytes], port: int, ready: Callable[[int], bool], timeout: float
) -> str | None:
    """None once ``proc`` listens on ``port`` and is ready, else why not (it is then gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        if listens(proc.pid, port) and ready(port):
            return None
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return f"did not listen within {timeout} s"


class Mosquitto:
    """A Mosquitto of the test's own on a free port; it may be stopped and restarted."""

    def __init__(self, workdir: Path, persistence: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "log_dest stderr",
            "log_type error",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto drops to its own user, which cannot write pytest's temp dirs:
            # persistence would silently be off.
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once started, clients know the port: a restart keeps it

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc, self.port = start_listening(
            self._launch, self.port, movable=not self.started, output=_stderr
        )
        self.started = True

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        # Tests rewrite the configuration between restarts: only the listener line changes.
        conf = self.conf.read_text()
        self.conf.write_text(conf.replace(f"listener {self.port} ", f"listener {port} ", 1))
        self.port = port
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return subprocess.Popen([binary, "-c", str(self.conf)], stderr=subprocess.PIPE)

    def stop(self, kill: bool = False) -> None:
        """Stop gracefully (SIGTERM: persistence is written) or kill."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private broker with persistence on, stopped at the end of the test."""
    broker = Mosquitto(_mkdir(tmp_path / "broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    """The error output of a process that has exited."""
    _, err = proc.communicate(timeout=10)
    return (err or b"").decode(errors="replace")[-3000:]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


SHARED_BROKER = ("127.0.0.1", 1883)


def clear_retained(prefix: str, broker: tuple[str, int] = SHARED_BROKER) -> list[str]:
    """Remove every retained message under ``prefix`` (last wills, statuses) and name them.

    The broker sends a subscription's retained messages before it handles the client's next
    packet, so the probe's return marks the end of them."""
    import paho.mqtt.client as mqtt

    end = f"{prefix}/clear-retained-probe"
    found: list[str] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == end:
            done.set()
        elif msg.retain and msg.payload:
            found.append(msg.topic)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"clear-{prefix}")
    client.on_message = on_message
    client.connect(*broker)
    client.loop_start()
    try:
        client.subscribe(f"{prefix}/#", qos=1)
        client.publish(end, b"", qos=1)
        if not done.wait(10):
            raise TimeoutError(f"no probe back from the broker for {prefix}")
        for topic in found:
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    return found


@pytest.fixture
def mqtt_prefix() -> Iterator[str]:
    """A topic prefix no other test uses, for tests on the shared broker; what the test left
    retained there (a component's last will, a camera's status) is removed afterwards."""
    prefix = f"gptest-{uuid.uuid4().hex[:10]}"
    yield prefix
    clear_retained(prefix)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only assets folder (models, footage, datasets) beside the repository."""
    path = Path(os.environ.get("GRIDPATROL_SHARED", REPO.parent / "shared"))
    if not path.is_dir():
        raise RuntimeError(f"shared assets not found at {path}; set GRIDPATROL_SHARED")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return POSTGRES_URL


TEST_TOKENS = {
    "producer": "tok-producer-0123456789",
    "reviewer": "tok-reviewer-0123456789",
    "platform": "tok-platform-0123456789",
    "admin": "tok-admin-0123456789",
}


class ApiServer:
    """``gridpatrol api`` in a subprocess on a free port, with a temp SQLite database.

    ``tokens`` maps each role to its bearer token. ``stop()`` / ``start()`` simulate downtime
    on the same port and database.
    """

    def __init__(
        self,
        workdir: Path,
        site_file: Path | None = None,
        db_url: str | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.workdir = workdir
        self.tokens = dict(TEST_TOKENS)
        self.env = {
            **os.environ,
            "GRIDPATROL_DATABASE_URL": db_url or f"sqlite:///{workdir}/api.db",
            "GRIDPATROL_EVIDENCE_DIR": str(workdir / "evidence"),
            "GRIDPATROL_API_TOKENS": json.dumps(
                {tok: {"role": role, "name": f"test-{role}"} for role, tok in self.tokens.items()}
            ),
        }
        if site_file is not None:
            self.env["GRIDPATROL_CONFIG"] = str(site_file)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "api.log"
        self.started = False  # once started, clients know the port: a restart keeps it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc, self.port = start_api(
            self._launch, self.port, self.log, movable=not self.started
        )
        self.started = True

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        self.port = port
        cmd = [sys.executable, "-m", "gridpatrol.cli", "api", "--host", "127.0.0.1"]
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [*cmd, "--port", str(port)], env=self.env, stdout=log, stderr=log
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            timeout=30,
        )


def start_api(
    launch: Callable[[int], subprocess.Popen[bytes]], port: int, log: Path, *, movable: bool
) -> tuple[subprocess.Popen[bytes], int]:
    """``gridpatrol api`` as ``launch`` starts it, once it listens on its port and is healthy
    (see start_listening); an error carries the end of its ``log``."""
    return start_listening(
        launch,
        port,
        movable=movable,
        output=lambda proc: log.read_text(errors="replace")[-3000:],
        ready=_healthy,
        timeout=60,
    )


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop gracefully; kill what has not ended within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _healthy(port: int) -> bool:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=1)
    except httpx.TransportError:
        return False
    return response.status_code == 200


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    """A real intake API on SQLite, stopped at the end of the test."""
    server = ApiServer(_mkdir(tmp_path / "api"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
