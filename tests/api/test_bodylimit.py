"""GRIDPATROL_MAX_BODY_BYTES on every write, before the body is read, over HTTP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

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
