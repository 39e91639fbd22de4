"""GRIDPATROL_MAX_BODY_BYTES on every write, before the body is read, over HTTP."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import TOKENS

LIMIT = 4096
DETAIL = f"a request body is limited to {LIMIT} bytes"


@pytest.fixture
def api(make_api: Any) -> Any:
    return make_api(max_body_bytes=LIMIT, max_evidence_bytes=4 * LIMIT)


def refused(response: Any, path: str) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["detail"], body["instance"]) == (413, DETAIL, path)


def chunks(data: bytes) -> Iterator[bytes]:
    """The body without a Content-Length: counted as it arrives."""
    yield from (data[i : i + 1000] for i in range(0, len(data), 1000))


def test_login_body_over_the_limit_is_refused_before_the_token_is_looked_at(api: Any) -> None:
    path = "/api/v1/session"
    big = {"token": "t-reviewer-91aa", "padding": "x" * LIMIT}
    refused(api.http.post(path, json=big), path)
    data = json.dumps(big).encode()
    headers = {"Content-Type": "application/json"}
    refused(api.http.post(path, content=chunks(data), headers=headers), path)
    assert "gp_session" not in api.http.cookies
    assert api.http.post(path, json={"token": "t-reviewer-91aa"}).status_code == 200


@pytest.mark.parametrize(
    ("role", "path"),
    [
        ("platform", "/api/v1/feed/ack"),
        ("reviewer", "/api/v1/cameras/cam-1/zones/validate"),
    ],
)
def test_other_writes_over_the_limit_are_refused(api: Any, role: str, path: str) -> None:
    refused(api.as_(role).post(path, json={"cursor": "0", "yaml": "x" * LIMIT}), path)


def test_evidence_keeps_its_own_limit(api: Any) -> None:
    data = json.dumps({"v": "x" * 2 * LIMIT}).encode()
    sha = hashlib.sha256(data).hexdigest()
    response = api.as_("producer").put(
        f"/api/v1/evidence/{sha}", content=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


def requests_counted(server: Any, route: str, method: str) -> dict[str, float]:
    """The server's request counts of ``method`` on ``route``, by status."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "gridpatrol_api_requests"
        for sample in family.samples
        if sample.name == "gridpatrol_api_requests_total"
        and (sample.labels["route"], sample.labels["method"]) == (route, method)
    }


def send_half(server: Any, request_line: str, role: str) -> None:
    """A chunked write whose client closes its connection after the first chunk."""
    head = (
        f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKENS[role]}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + b'10\r\n{"padding": "xx\r\n')


@pytest.mark.parametrize(
    ("request_line", "route", "role"),
    [
        (f"PUT /api/v1/evidence/{'ab' * 32}", "/api/v1/evidence/{sha256}", "producer"),
        # Counted before routing, by the body limit: under no route.
        ("POST /api/v1/feed/ack", "unmatched", "platform"),
    ],
)
def test_a_client_gone_mid_body_is_no_server_error(
    server: Any, request_line: str, route: str, role: str
) -> None:
    method = request_line.split()[0]
    before = requests_counted(server, route, method)
    send_half(server, request_line, role)
    counted = before
    for _ in range(300):  # the server notices the closed connection in its own time
        counted = requests_counted(server, route, method)
        if counted != before:
            break
        time.sleep(0.1)
    assert counted == before | {"499": before.get("499", 0.0) + 1}
    log = server.log.read_text()
    assert "unhandled error" not in log and "Traceback" not in log
