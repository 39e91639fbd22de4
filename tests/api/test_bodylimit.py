"""GRIDPATROL_MAX_BODY_BYTES on every write, before the body is read, over HTTP."""

from __future__ import annotations

import gc
import hashlib
import json
import socket
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gridpatrol.api.bodylimit import item_body_sizes

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


@pytest.mark.parametrize(
    "earlier",
    [b"5", b"[1, 2]", b"null", b'[{"body": {"x": 1}}, 3]', b'{"items": [1]}'],
)
def test_a_batch_naming_items_twice_is_answered_by_the_items_it_keeps(
    api: Any, earlier: bytes
) -> None:
    """The request keeps the last of two ``items`` (as json.loads does); an earlier one that is
    no list of objects is passed over when the items are measured, not a server error."""
    event = uuid.uuid4().hex
    item = {"idempotency_key": uuid.uuid4().hex, "body": api.body(event, api.put_jpeg())}
    batch = b'{"items": %s, "items": [%s]}' % (earlier, json.dumps(item).encode())
    headers = {"Content-Type": "application/json"}
    response = api.as_("producer").post("/api/v1/candidates/batch", content=batch, headers=headers)
    assert response.status_code == 207, response.text
    [answer] = response.json()["items"]
    assert answer["status"] == 201, answer
    assert answer["body"]["source"]["source_event_id"] == event
    assert answer["body"]["status"] == "new"


def test_items_named_twice_are_measured_by_the_last() -> None:
    assert item_body_sizes(b'{"items":[1],"items":[{"body":1}]}') == [1]
    assert item_body_sizes(b'{"items":5,"items":[{"body":12},{}]}') == [2, 0]
    assert item_body_sizes(b'{"items":[{"body":123}],"items":[{"body":1}]}') == [1]
    assert item_body_sizes(b'{"items":{"body":[]},"items":[]}') == []


def deep_batch(items: int, depth: int, width: int) -> bytes:
    """A batch whose every body nests ``depth`` arrays of ``width`` small objects each."""
    body: Any = [{"k": "v"}] * width
    for _ in range(depth):
        body = [body, {"k": '[{"}]\\'}, *([{}] * width)]
    entries = [{"idempotency_key": f"k{i}", "body": body} for i in range(items)]
    return json.dumps({"items": entries}).encode()


def test_items_are_measured_without_building_their_values() -> None:
    """The parse of the batch is alive while it is measured: the measure builds no objects of
    its own for the collector to walk again, whatever the bodies hold."""
    raw = deep_batch(items=50, depth=100, width=20)
    parsed = json.loads(raw)
    item = json.dumps(parsed["items"][0]["body"]).encode()
    collections = gc.get_stats()[0]["collections"]
    tracemalloc.start()
    try:
        sizes = item_body_sizes(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes == [len(item)] * 50
    # No generation-0 collection: no containers allocated beyond the list of sizes.
    assert gc.get_stats()[0]["collections"] - collections <= 1
    # The text of the batch, one body's bytes, and little besides.
    assert peak < len(raw) + 3 * len(item) + 64 * 1024, (peak, len(raw), len(item))


def test_the_measure_takes_a_batch_the_parse_takes_too_deep_for_its_own_stack() -> None:
    depth = sys.getrecursionlimit() * 2
    body = b"[" * depth + b"]" * depth
    raw = b'{"items": [{"body": %s}, {"body": {"a": %s}}]}' % (body, body)
    assert item_body_sizes(raw) == [len(body), len(body) + 7]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=4), inner)
    ),
    max_leaves=12,
)
# How members are named in the batch: "body" also as a client may escape it.
NAMES = st.sampled_from(["body", "bod\\u0079", "\\u0062ody", "idempotency_key", "items", "b"])


@given(
    earlier=st.lists(JSON_VALUES, max_size=2),
    items=st.lists(st.lists(st.tuples(NAMES, JSON_VALUES), max_size=4), max_size=4),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 2]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32-le"]),
)
def test_items_are_measured_as_json_loads_reads_them(
    earlier: list[Any],
    items: list[list[tuple[str, Any]]],
    ensure_ascii: bool,
    indent: int | None,
    encoding: str,
) -> None:
    """Each item's size is that of the last body json.loads keeps, written as the batch
    writes it, in the batch's own encoding."""

    def write(value: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)

    def obj(members: list[tuple[str, str]]) -> str:
        return "{" + ", ".join(f'"{name}": {value}' for name, value in members) + "}"

    written = [obj([(name, write(value)) for name, value in item]) for item in items]
    members = [("items", write(value)) for value in earlier]
    text = obj([*members, ("items", "[" + ",\n".join(written) + "]")])
    raw = text.encode(encoding)
    unit = "utf-16-le" if "16" in encoding else "utf-32-le" if "32" in encoding else "utf-8"
    kept = json.loads(raw)["items"]
    expected = [len(write(item["body"]).encode(unit)) if "body" in item else 0 for item in kept]
    assert item_body_sizes(raw) == expected


def test_a_batch_that_cannot_be_measured_is_answered_as_json_that_cannot_be_read(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the measure ever refuse what the parse took, the batch is answered 422 as JSON
    the parse cannot read is, not 500."""
    headers = {"Content-Type": "application/json"}
    producer = api.as_("producer")
    unreadable = producer.post("/api/v1/candidates/batch", content=b"{", headers=headers)

    def refuse(raw: bytes) -> list[int]:
        raise ValueError("expected , or } at 9")

    monkeypatch.setattr("gridpatrol.api.routers.candidates.item_body_sizes", refuse)
    batch = {"items": [{"idempotency_key": "k1", "body": api.body("e1", api.put_jpeg())}]}
    response = producer.post("/api/v1/candidates/batch", json=batch)
    assert (response.status_code, unreadable.status_code) == (422, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    keep = ("status", "title", "detail")
    assert {k: response.json()[k] for k in keep} == {k: unreadable.json()[k] for k in keep}
    assert [e["type"] for e in response.json()["errors"]] == ["json_invalid"]
    assert api.as_("reviewer").get("/api/v1/candidates").json()["items"] == []
