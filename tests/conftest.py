"""Fixtures shared by every test package: a private Mosquitto, PostgreSQL, shared assets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gridpatrol.ingest.broker import free_port

REPO = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "GRIDPATROL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Mosquitto:
    """A Mosquitto of the test's own on a free port; it may be stopped and restarted."""

    def __init__(self, workdir: Path, persistence: bool = True) -> None:
        self.port = free_port()
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

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stderr=subprocess.PIPE)
        wait_port(self.port)

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


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def mqtt_prefix() -> str:
    """A topic prefix no other test uses, for tests on the shared broker."""
    return f"gptest-{uuid.uuid4().hex[:10]}"


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

    def __init__(self, workdir: Path, site_file: Path | None = None, db_url: str | None = None):
        self.port = free_port()
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "gridpatrol.cli", "api", "--host", "127.0.0.1"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not become healthy: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            timeout=30,
        )


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    """A real intake API on SQLite, stopped at the end of the test."""
    server = ApiServer(_mkdir(tmp_path / "api"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
