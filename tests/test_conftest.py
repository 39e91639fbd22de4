"""The shared fixtures: servers start on a port of their own, not on one another process took;
tests leave nothing retained on the shared broker."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from gridpatrol.ingest.mqtt import MqttConnection, MqttSettings

from .api.conftest import Server
from .conftest import START_ATTEMPTS, ApiServer, Mosquitto, clear_retained


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on (and never answers), as when free_port()'s port is
    taken before the server binds it."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield squatter.getsockname()[1]


def test_a_broker_whose_port_was_taken_starts_on_another(tmp_path: Path, taken_port: int) -> None:
    broker = Mosquitto(tmp_path, port=taken_port)
    broker.start()
    try:
        assert broker.port != taken_port
        assert f"listener {broker.port} 127.0.0.1\n" in broker.conf.read_text()
        conn = MqttConnection("conftest-probe", MqttSettings.from_url(broker.url))
        assert conn.start(timeout=10)
        try:
            sub = conn.subscribe("probe/#")
            assert conn.publish("probe/1", b"here", qos=1)
            got = sub.get(timeout=10)
        finally:
            conn.stop()
        assert got is not None and (got.topic, got.payload) == ("probe/1", b"here")
    finally:
        broker.stop()


def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.conf.write_text(broker.conf.read_text() + "no_such_option true\n")
    with pytest.raises(RuntimeError) as raised:
        broker.start()
    assert str(raised.value).count("no_such_option") == START_ATTEMPTS
    assert broker.proc is None


def test_an_api_whose_port_was_taken_starts_on_another(tmp_path: Path, taken_port: int) -> None:
    api = ApiServer(tmp_path, port=taken_port)
    api.start()
    try:
        assert api.port != taken_port
        response = httpx.get(f"{api.url}/api/v1/healthz", timeout=10)
        assert response.status_code == 200
    finally:
        api.stop()


class Healthy(BaseHTTPRequestHandler):
    """Another API: 200 to every GET."""

    def do_GET(self) -> None:
        body = b'{"other": "api"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthy_squatter() -> Iterator[int]:
    """A port where another process answers /api/v1/healthz with 200."""
    squatter = HTTPServer(("127.0.0.1", 0), Healthy)
    thread = threading.Thread(target=squatter.serve_forever, daemon=True)
    thread.start()
    try:
        yield squatter.server_address[1]
    finally:
        squatter.shutdown()
        squatter.server_close()


def test_an_api_server_whose_port_answers_healthz_starts_on_another(
    tmp_path: Path, healthy_squatter: int
) -> None:
    """tests/api's Server: a healthy answer on its port is not proof that it is ours."""
    srv = Server(f"sqlite:///{tmp_path}/api.db", tmp_path)
    srv.port = healthy_squatter  # as if taken between free_port() and the server binding it
    srv.start()
    try:
        assert srv.port != healthy_squatter
        assert srv.proc is not None and srv.proc.poll() is None
        response = httpx.get(f"{srv.url}/healthz", timeout=10)
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        assert response.headers["X-Worker-Pid"] == str(srv.proc.pid)
    finally:
        srv.stop()


def _connection(name: str, prefix: str) -> MqttConnection:
    """A connection to the shared broker whose own status lies under ``prefix``."""
    conn = MqttConnection(name, MqttSettings(), prefix=prefix)
    assert conn.start()
    return conn


def _retained(where: str, prefix: str) -> dict[str, bytes]:
    """What a new subscriber to ``where/#`` on the shared broker gets as retained."""
    conn = _connection("retained-reader", prefix)
    try:
        sub = conn.subscribe(f"{where}/#", qos=1, maxsize=100)
        assert conn.publish_wait(f"{where}/probe", b"", qos=1)
        seen: dict[str, bytes] = {}
        while (msg := sub.get(timeout=10)) is not None and msg.topic != f"{where}/probe":
            seen[msg.topic] = msg.payload
        assert msg is not None, "the probe never came back"
        return seen
    finally:
        conn.stop()


def test_what_a_test_left_retained_under_its_prefix_is_cleared(mqtt_prefix: str) -> None:
    where = f"{mqtt_prefix}/left"
    conn = _connection("leaver", mqtt_prefix)
    try:
        for topic in (f"{where}/components/c1/status", f"{where}/cameras/a/status"):
            assert conn.publish_wait(topic, b"offline", qos=1, retain=True)
    finally:
        conn.stop()
    left = {f"{where}/components/c1/status": b"offline", f"{where}/cameras/a/status": b"offline"}
    assert _retained(where, mqtt_prefix) == left
    assert sorted(clear_retained(where)) == sorted(left)
    assert _retained(where, mqtt_prefix) == {}
    # The connections' own last wills lie under the test's prefix: its fixture clears them.
    assert sorted(clear_retained(mqtt_prefix)) == [
        f"{mqtt_prefix}/components/leaver/status",
        f"{mqtt_prefix}/components/retained-reader/status",
    ]
