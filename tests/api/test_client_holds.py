"""What holds a producer's outbox rather than failing its operations: an answer that did not
come from the API's route (a redirect, a misrouted 404 or 405), a pause the API asked for, and
a PATCH out without a definite answer, which goes again exactly as it went."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gridpatrol.api.client import ApiClient, ApiError, Outbox, candidate_closed

from .test_client_outbox import candidate, jpeg

MOCK_URL = "http://api.test"


def producer_client(api_server: Any, base: str | None = None) -> ApiClient:
    return ApiClient(base or api_server.url, api_server.tokens["producer"], timeout=5)


def mocked(handler: Callable[[httpx.Request], httpx.Response]) -> ApiClient:
    """A producer's client whose requests ``handler`` answers (a proxy, a wrong host)."""
    client = ApiClient(MOCK_URL, "t-producer")
    client._http = httpx.Client(
        base_url=f"{MOCK_URL}/api/v1", transport=httpx.MockTransport(handler), timeout=5
    )
    return client


def wait_for_retries(outbox: Outbox, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while outbox.stats()["retried"] < count:
        assert time.monotonic() < deadline, outbox.stats()
        time.sleep(0.02)


def queue_case(outbox: Outbox, seed: int) -> tuple[str, str]:
    """Evidence, a create and a patch of it: (evidence sha, candidate id)."""
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(seed), "image/jpeg")
        cid = txn.create_candidate(candidate(f"hold-{seed}", sha))
        txn.patch_candidate(cid, {"detection": {"dwell_s": 40}})
    return sha, cid


def assert_delivered(api_server: Any, outbox: Outbox, sha: str, cid: str, seed: int) -> None:
    outbox.client = producer_client(api_server)  # the setting mended
    assert outbox.flush(60)
    assert outbox.failed() == []
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
        assert (doc["id"], doc["detection"]["dwell_s"]) == (cid, 40)
        assert [e["sha256"] for e in doc["evidence"]] == [sha]
        assert http.get(f"/evidence/{sha}").content == jpeg(seed)


def assert_held(outbox: Outbox, cid: str, seed: int) -> None:
    """After two failed rounds, the case :func:`queue_case` queued is all pending, nothing
    settled: the evidence bytes are kept and the candidate is not closed."""
    wait_for_retries(outbox, 2)
    stats = outbox.stats()
    assert (stats["sent"], stats["failed"], stats["depth"]) == (0, 0, 3)
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        rows = conn.execute(
            "SELECT kind, state, length(payload) FROM outbox_ops ORDER BY seq"
        ).fetchall()
        assert [(kind, state) for kind, state, _size in rows] == [
            ("evidence", "pending"),
            ("create", "pending"),
            ("patch", "pending"),
        ]
        assert rows[0][2] == len(jpeg(seed))  # the evidence bytes are kept
        assert not candidate_closed(conn, cid)


MISROUTED = re.compile(
    r"outbox hold: evidence [0-9a-f]{64} not delivered \((?P<error>.*); the request did not"
    r" reach the API's route: check GRIDPATROL_API_URL \(the API's base URL, without /api/v1\)"
    r" and the proxy in front of the API\); retrying in \d+\.\d s"
)


def misrouted_errors(caplog: pytest.LogCaptureFixture) -> set[str]:
    """The errors the ERROR records of the outbox held its queue for, each record checked to
    say the request did not reach the API's route and what to check."""
    errors = set()
    for record in caplog.records:
        if record.levelno == logging.ERROR:
            match = MISROUTED.fullmatch(record.getMessage())
            assert match is not None, record.getMessage()
            errors.add(match["error"])
    return errors


def test_a_doubled_api_path_holds_the_outbox_until_mended(
    api_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GRIDPATROL_API_URL with /api/v1 in it: the API answers every request 404 (no such
    route). Nothing is failed, no evidence erased, no candidate closed; an ERROR says what
    to check; once the URL is mended everything queued is delivered."""
    path = tmp_path / "outbox-hold.db"
    outbox = Outbox(path, producer_client(api_server, f"{api_server.url}/api/v1"), component="hold")
    sha, cid = queue_case(outbox, 1)
    caplog.set_level(logging.ERROR, logger="gridpatrol.api.client")
    outbox.start()
    try:
        assert_held(outbox, cid, 1)
        assert misrouted_errors(caplog) == {"HTTP 404: Not Found"}
        assert_delivered(api_server, outbox, sha, cid, 1)
    finally:
        outbox.stop()
    assert outbox.stats()["sent"] == 3


@pytest.mark.parametrize("answer", ["404", "200 {}"])
def test_a_patch_a_misrouted_answer_is_held(api_server: Any, tmp_path: Path, answer: str) -> None:
    """A PATCH answered 404 by something that is not the API's candidate route (here the API
    itself at a doubled path), or 200 ``{}`` (no candidate) by a proxy's default backend, is
    held: the candidate is not closed, and the update arrives once the URL is mended."""
    outbox = Outbox(tmp_path / "outbox-hold.db", producer_client(api_server), component="hold")
    seed = 2 if answer == "404" else 61
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(seed), "image/jpeg")
        cid = txn.create_candidate(candidate(f"hold-{seed}", sha))
    outbox.start()
    try:
        assert outbox.flush(30)
        outbox.client = (
            producer_client(api_server, f"{api_server.url}/api/v1")
            if answer == "404"
            else mocked(answer_json({}))
        )
        with outbox.transaction() as txn:
            txn.patch_candidate(cid, {"detection": {"dwell_s": 40}})
        wait_for_retries(outbox, 2)
        assert (outbox.depth(), outbox.failed()) == (1, [])
        with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
            assert not candidate_closed(conn, cid)
        assert_delivered(api_server, outbox, sha, cid, seed)
    finally:
        outbox.stop()


def test_a_patch_of_a_candidate_the_api_does_not_hold_is_refused(
    api_server: Any, tmp_path: Path
) -> None:
    """The API's own 404 for a PATCH, its problem saying it holds no such candidate (its
    database restored from a backup older than the create), is a refusal for good: retrying
    cannot bring the candidate back. The operations after it are delivered."""
    path = tmp_path / "outbox-gone.db"
    outbox = Outbox(path, producer_client(api_server), component="gone")
    gone = str(uuid.uuid4())
    with outbox.transaction() as txn:  # as if its create had been answered, then lost
        txn.patch_candidate(gone, {"detection": {"dwell_s": 40}})
    _sha, cid = queue_case(outbox, 3)
    outbox.start()
    try:
        assert outbox.flush(30)
    finally:
        outbox.stop()
    assert [(f["kind"], f["candidate_id"]) for f in outbox.failed()] == [("patch", gone)]
    error = outbox.failed()[0]["error"]
    assert error.startswith("404 ") and f'"detail": "no candidate {gone}"' in error
    assert outbox.stats() == {"sent": 3, "retried": 0, "failed": 1, "depth": 0}
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{cid}").json()["detection"]["dwell_s"] == 40


def answer_with(status: int) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "text/html"}
        if 300 <= status < 400:
            headers["Location"] = f"https://api.example{request.url.path}"
        return httpx.Response(status, headers=headers, content=b"<html>proxy</html>")

    return handler


@pytest.mark.parametrize("status", [301, 302, 307, 308, 404, 405])
def test_a_proxy_answer_holds_the_outbox(
    api_server: Any, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A redirect (httpx follows none; the API never sends one) is no success, and a 404 or
    405 from a proxy's default backend no refusal: the queue is held, the ERROR names the
    redirect's Location, and a mended URL delivers everything."""
    outbox = Outbox(tmp_path / "outbox-proxy.db", mocked(answer_with(status)), component="hold")
    sha, cid = queue_case(outbox, 10 + status)
    caplog.set_level(logging.ERROR, logger="gridpatrol.api.client")
    outbox.start()
    try:
        wait_for_retries(outbox, 2)
        stats = outbox.stats()
        assert (stats["sent"], stats["failed"], stats["depth"]) == (0, 0, 3)
        where = f" (Location: https://api.example/api/v1/evidence/{sha})" if status < 400 else ""
        assert misrouted_errors(caplog) == {f"HTTP {status}: <html>proxy</html>{where}"}
        assert_delivered(api_server, outbox, sha, cid, 10 + status)
    finally:
        outbox.stop()


@pytest.mark.parametrize("status", [501, 507, 520, 522, 524, 421])
def test_any_5xx_or_a_misdirected_request_holds_the_outbox(
    api_server: Any, tmp_path: Path, status: int
) -> None:
    """A 5xx outside 500, 502-504 (a CDN's 520-524, a proxy's 501 or 507) or a 421 from a
    server that is not the API's says nothing of the operation: the queue is held (no
    evidence erased, no candidate closed), and a mended route delivers everything."""
    outbox = Outbox(tmp_path / "outbox-5xx.db", mocked(answer_with(status)), component="hold")
    sha, cid = queue_case(outbox, 20 + status)
    outbox.start()
    try:
        assert_held(outbox, cid, 20 + status)
        assert_delivered(api_server, outbox, sha, cid, 20 + status)
    finally:
        outbox.stop()
    assert outbox.stats()["sent"] == 3


def answer_json(body: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=body)


@pytest.mark.parametrize("answer", ["html", "empty"])
def test_a_2xx_from_a_proxy_holds_the_outbox(
    api_server: Any, tmp_path: Path, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy's catch-all backend answering 200 with its page, or with a JSON ``{}``: no
    evidence counts as uploaded (and is erased), no round ends in an unexpected error; the
    queue is held with the one-line ERROR, and a mended URL delivers everything."""
    seed = 40 if answer == "html" else 41
    handler = answer_with(200) if answer == "html" else answer_json({})
    outbox = Outbox(tmp_path / "outbox-200.db", mocked(handler), component="hold")
    sha, cid = queue_case(outbox, seed)
    caplog.set_level(logging.ERROR, logger="gridpatrol.api.client")
    outbox.start()
    try:
        assert_held(outbox, cid, seed)
        why = "not JSON): <html>proxy</html>" if answer == "html" else f"no sha256 {sha})"
        assert misrouted_errors(caplog) == {f"HTTP 200: not an answer of the API ({why}"}
        assert_delivered(api_server, outbox, sha, cid, seed)
    finally:
        outbox.stop()
    assert outbox.stats()["sent"] == 3


PROXY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\n<body>\n\t<center>"
    b"<h1>502\x0bBad\x1bGateway</h1></center>\n</body>\n</html>\n"
)


@pytest.mark.parametrize("status", [200, 404])
def test_a_proxys_page_in_an_error_is_one_line(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy's multi-line HTML page, answered 200 (not JSON) or 404 (its default backend):
    the ERROR record shows its start on one line, each run of whitespace or control
    characters one space, so a journal or log shipper keeps the record whole."""
    outbox = Outbox(tmp_path / "outbox-page.db", mocked(page_with(status)), component="hold")
    queue_case(outbox, 70 + status)
    caplog.set_level(logging.ERROR, logger="gridpatrol.api.client")
    outbox.start()
    try:
        wait_for_retries(outbox, 1)
    finally:
        outbox.stop()
    assert caplog.records
    assert [
        r.getMessage() for r in caplog.records if re.search(r"[\r\n\x0b\x1b]", r.getMessage())
    ] == []
    page = (
        "<html> <head><title>502 Bad Gateway</title></head> <body> <center>"
        "<h1>502 Bad Gateway</h1></center> </body> </html>"
    )
    why = f"not an answer of the API (not JSON): {page}" if status == 200 else page
    assert misrouted_errors(caplog) == {f"HTTP {status}: {why}"}


def page_with(status: int) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(
        status, headers={"Content-Type": "text/html"}, content=PROXY_PAGE
    )


def problem_with(status: int, problem: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=problem)


# An upstream's traceback passed on in a problem's detail: line feeds, a CR LF, Unicode's
# line and paragraph separators (str.splitlines and some log shippers split at those too).
UPSTREAM = 'upstream said:\nTraceback (most recent call last):\r\n  File "x.py"\u2028Boom\u2029'
UPSTREAM_SHOWN = 'upstream said: Traceback (most recent call last): File "x.py" Boom'


@pytest.mark.parametrize("status", [422, 502])
def test_a_problems_multi_line_detail_in_an_error_is_one_line(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A JSON problem whose detail runs over several lines: the records of its refusal (422)
    or of its retry (502) show the detail on one line, each run of whitespace one space,
    while the file keeps the refusal's problem whole."""
    problem = {"type": "about:blank", "title": "Unprocessable", "detail": UPSTREAM}
    outbox = Outbox(
        tmp_path / "outbox-detail.db", mocked(problem_with(status, problem)), component="hold"
    )
    sha, cid = queue_case(outbox, 90 + status)
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.client")
    outbox.start()
    try:
        if status == 502:
            wait_for_retries(outbox, 1)
        else:
            assert outbox.flush(30)
    finally:
        outbox.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert messages
    assert [m for m in messages if m.splitlines() != [m]] == []
    if status == 502:
        assert {m.split("; retrying in ")[0] for m in messages} == {
            f"outbox hold: evidence {sha} not delivered (HTTP 502: {UPSTREAM_SHOWN})"
        }
        return
    kept = f"422 {json.dumps(problem, ensure_ascii=False)}"
    refusal = f"not sent: the API refused this candidate's create ({kept})"
    assert messages == [
        f"outbox hold: API refused evidence {sha}: HTTP 422: {UPSTREAM_SHOWN} (seq 1)",
        f"outbox hold: API refused create {cid}: HTTP 422: {UPSTREAM_SHOWN} (seq 2)",
        f"outbox hold: API refused patch {cid}: HTTP 422: {' '.join(refusal.split())} (seq 3)",
    ]
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        rows = conn.execute("SELECT kind, last_error FROM outbox_ops ORDER BY seq").fetchall()
    assert rows[:2] == [("evidence", kept), ("create", kept)]


class UploadsOnly:
    """A proxy that routes evidence uploads to the API and answers every candidate request
    ``answer`` from its default backend."""

    def __init__(self, api_server: Any, answer: object) -> None:
        self.api = producer_client(api_server)
        self.answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            sha = self.api.put_evidence(request.read(), request.headers["Content-Type"])
            return httpx.Response(201, json={"sha256": sha})
        return httpx.Response(200, json=self.answer)


@pytest.mark.parametrize(
    ("creates", "answer", "why"),
    [
        (1, {}, "no candidate id"),
        (1, ["x"], "not a JSON object"),
        (2, {"items": []}, "not 2 items"),
        (2, {"items": [{"body": {}}, {"body": {}}]}, "an item without a status"),
    ],
)
def test_a_create_a_proxy_answers_2xx_is_held(
    api_server: Any,
    tmp_path: Path,
    creates: int,
    answer: object,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Creates (one alone, or a batch) answered 2xx with no candidate, or with a batch
    result that is not one per item: nothing counts as created, the queue is held with an
    ERROR saying what to check, and the API gets them once the URL is mended."""
    outbox = Outbox(
        tmp_path / "outbox-create.db", mocked(UploadsOnly(api_server, answer)), component="hold"
    )
    cases = [queue_case(outbox, 50 + i) for i in range(creates)]
    caplog.set_level(logging.ERROR, logger="gridpatrol.api.client")
    outbox.start()
    try:
        wait_for_retries(outbox, 2)
        stats = outbox.stats()
        assert (stats["sent"], stats["failed"], stats["depth"]) == (creates, 0, 2 * creates)
        held = re.compile(
            # The round's first operation is named: the evidence it delivered before.
            r"outbox hold: \w+ \S+ not delivered \(HTTP 200: not an answer of the"
            rf" API \({re.escape(why)}\); the request did not reach the API's route: check"
            r" GRIDPATROL_API_URL .*\); retrying in \d+\.\d s"
        )
        assert caplog.records
        messages = [record.getMessage() for record in caplog.records]
        assert [m for m in messages if not held.fullmatch(m)] == []
        for i, (sha, cid) in enumerate(cases):
            assert_delivered(api_server, outbox, sha, cid, 50 + i)
    finally:
        outbox.stop()


def test_the_client_takes_no_redirect_for_a_success() -> None:
    client = mocked(answer_with(301))
    with pytest.raises(ApiError) as caught:
        client.put_evidence(b"\xff\xd8", "image/jpeg")
    sha = hashlib.sha256(b"\xff\xd8").hexdigest()
    assert caught.value.status == 301
    assert caught.value.location == f"https://api.example/api/v1/evidence/{sha}"


class Overloaded:
    """An API that answers every request 503, with ``Retry-After`` when given one, until
    ``up``."""

    def __init__(self, retry_after: str | None) -> None:
        self.retry_after = retry_after
        self.requests = 0
        self.up = False  # from then on every request is answered 2xx
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests += 1
        if self.up:  # an upload's answer, as the API gives it
            return httpx.Response(201, json={"sha256": request.url.path.rsplit("/", 1)[1]})
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return httpx.Response(503, headers=headers, json={"title": "Service Unavailable"})


@pytest.mark.parametrize(("retry_after", "most"), [("2", 4), (None, 5)])
def test_producer_commits_do_not_cut_the_wait_after_a_failed_round(
    tmp_path: Path, retry_after: str | None, most: int
) -> None:
    """A producer committing every 50 ms (the alarm bridge commits every second) against an
    API that is down: the outbox waits out its backoff, and at least the Retry-After the API
    asked for, between rounds, rather than trying again on every commit."""
    api = Overloaded(retry_after)
    outbox = Outbox(tmp_path / "outbox-busy.db", mocked(api), component="busy")
    with outbox.transaction() as txn:
        txn.add_evidence(jpeg(5), "image/jpeg")
    outbox.start()
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            with outbox.transaction() as txn:
                txn.conn.execute("SELECT 1")
            time.sleep(0.05)
    finally:
        outbox.stop()
    assert 1 <= api.requests <= most
    assert outbox.depth() == 1 and outbox.failed() == []


@pytest.mark.parametrize(
    ("header", "seconds"), [("2", 2.0), ("100000", 120.0), ("soon", None), (None, None)]
)
def test_an_api_error_carries_the_retry_after_asked_for(
    header: str | None, seconds: float | None
) -> None:
    api = Overloaded(header)
    with pytest.raises(ApiError) as caught:
        mocked(api).put_evidence(b"\xff\xd8", "image/jpeg")
    assert (caught.value.status, caught.value.retry_after) == (503, seconds)


class LosesFirstPatch(ApiClient):
    """The producer's client; with ``lose``, its first PATCH reaches the API and times out
    before the answer, and the API is unreachable from then on. Every PATCH that reaches the
    API is recorded as (idempotency key, body)."""

    def __init__(self, api_server: Any, lose: bool) -> None:
        super().__init__(api_server.url, api_server.tokens["producer"], timeout=5)
        self.lose = lose
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def patch_candidate(
        self, candidate_id: str, patch: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        if self.lose and self.patches:
            raise httpx.ConnectError("connection refused")
        self.patches.append((idempotency_key, patch))
        answer = super().patch_candidate(candidate_id, patch, idempotency_key)
        if self.lose:
            raise httpx.ReadTimeout("the answer did not come in time")
        return answer


def test_a_patch_out_without_an_answer_goes_again_as_it_went(
    api_server: Any, tmp_path: Path
) -> None:
    """Two updates merged into one PATCH time out; a third is queued, and the producer
    restarts. The retry carries the first PATCH's body under its key (the API replays it),
    and the third goes after it under its own, so the latest value wins, rather than one
    larger PATCH under a new key that the API would apply beside the first."""
    path = tmp_path / "outbox-patch.db"
    first = LosesFirstPatch(api_server, lose=True)
    outbox = Outbox(path, first, component="patch")
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(6), "image/jpeg")
        cid = txn.create_candidate(candidate("hold-6", sha))
        txn.patch_candidate(cid, {"detection": {"dwell_s": 20}})
        txn.patch_candidate(cid, {"detection": {"score": 0.9}})
    outbox.start()
    try:
        wait_for_retries(outbox, 1)
    finally:
        outbox.stop()
    assert outbox.depth() == 2
    with outbox.transaction() as txn:
        txn.patch_candidate(cid, {"detection": {"dwell_s": 30}})
    second = LosesFirstPatch(api_server, lose=False)
    again = Outbox(path, second, component="patch")
    again.start()
    try:
        assert again.flush(60)
    finally:
        again.stop()
    assert again.failed() == []
    merged = {"detection": {"dwell_s": 20, "score": 0.9}}
    assert first.patches == [(first.patches[0][0], merged)]
    assert second.patches[0] == first.patches[0]
    assert second.patches[1][1] == {"detection": {"dwell_s": 30}}
    assert second.patches[1][0] != first.patches[0][0]
    assert len(second.patches) == 2
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
    assert (doc["detection"]["dwell_s"], doc["detection"]["score"]) == (30, 0.9)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox_patch_groups").fetchone()[0] == 0


class Logged:
    """An API that is up and records every request as (method, path, monotonic time): each
    PATCH of a candidate in ``held`` is answered ``status`` (with ``Retry-After`` when given),
    anything else 2xx; ``down`` answers every request 503."""

    def __init__(self, status: int = 500, retry_after: str | None = None) -> None:
        self.held: set[str] = set()
        self.status = status
        self.retry_after = retry_after
        self.down = False
        self.log: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        with self.lock:
            self.log.append((request.method, path, time.monotonic()))
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.down:
            return httpx.Response(503, headers=headers, json={"title": "Service Unavailable"})
        if request.method == "PATCH":
            cid = path.rsplit("/", 1)[1]
            if cid in self.held:
                return httpx.Response(self.status, headers=headers, json={"title": "held"})
            return httpx.Response(200, json={"id": cid})
        if path == "/candidates/batch":
            items = json.loads(request.content)["items"]
            return httpx.Response(
                200, json={"items": [{"status": 201, "body": item["body"]} for item in items]}
            )
        if request.method == "POST":
            return httpx.Response(201, json=json.loads(request.content))
        return httpx.Response(201, json={"sha256": path.rsplit("/", 1)[1]})

    def requests(self, method: str, cid: str) -> list[float]:
        with self.lock:
            return [t for m, p, t in self.log if m == method and p.endswith(cid)]


@contextlib.contextmanager
def committing(outbox: Outbox) -> Iterator[None]:
    """A producer committing every 50 ms (the alarm bridge commits every second)."""
    done = threading.Event()

    def commit() -> None:
        while not done.wait(0.05):
            with outbox.transaction() as txn:
                txn.conn.execute("SELECT 1")

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize(("status", "retry_after"), [(500, "30"), (409, "30"), (404, "30")])
def test_a_held_patch_holds_up_no_other_candidate(
    tmp_path: Path, status: int, retry_after: str
) -> None:
    """The API is up but holds one candidate's PATCH (a 500, a 409 for its key in flight, a
    proxy that routes no PATCH), asking for 30 s: that candidate's patches wait, while a
    create queued afterwards, and another candidate's PATCH, go at once; flush() sends the
    held PATCH again without waiting out its 30 s."""
    api = Logged(status, retry_after)
    outbox = Outbox(tmp_path / "outbox-held.db", mocked(api), component="held")
    with outbox.transaction() as txn:
        held = txn.create_candidate({"type": "garbage_overflow"})
        txn.patch_candidate(held, {"detection": {"dwell_s": 20}})
    api.held.add(held)
    outbox.start()
    try:
        with committing(outbox):
            wait_until(lambda: len(api.requests("PATCH", held)) == 1, 5)
            with outbox.transaction() as txn:
                other = txn.create_candidate({"type": "garbage_overflow"})
                txn.patch_candidate(other, {"detection": {"dwell_s": 30}})
            queued = time.monotonic()
            wait_until(lambda: outbox.depth() == 1, 5)
        [created] = api.requests("POST", "/candidates")[1:]
        [patched] = api.requests("PATCH", other)
        assert created - queued < 5 and patched - queued < 5
        assert len(api.requests("PATCH", held)) == 1  # its 30 s are not over
        assert outbox.stats() == {"sent": 3, "retried": 1, "failed": 0, "depth": 1}
        api.held.clear()
        assert outbox.flush(5)
    finally:
        outbox.stop()
    assert len(api.requests("PATCH", held)) == 2
    assert outbox.failed() == []


@pytest.mark.parametrize("jitter", ["drawn", "shortest"])
def test_held_patches_against_a_down_api_wait_their_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jitter: str
) -> None:
    """Only patches queued (their creates delivered), the API down, a producer committing
    every 50 ms: each candidate's PATCH waits its own growing backoff between attempts, also
    when the jitter draws the shortest wait each time."""
    from gridpatrol.api import client as client_module

    if jitter == "shortest":
        monkeypatch.setattr(client_module.random, "uniform", lambda low, high: low)
    api = Logged()
    outbox = Outbox(tmp_path / "outbox-down.db", mocked(api), component="down")
    with outbox.transaction() as txn:
        ids = [txn.create_candidate({"type": "garbage_overflow"}) for _ in range(3)]
    outbox.start()
    try:
        assert outbox.flush(5)
        api.down = True
        with outbox.transaction() as txn:
            for cid in ids:
                txn.patch_candidate(cid, {"detection": {"dwell_s": 20}})
        with committing(outbox):
            time.sleep(2.7)
    finally:
        outbox.stop()
    # 0.5 s, 1 s, 2 s between attempts, each within 20 % of that: the fourth comes 2.8 s after
    # the first at the earliest, so at most 3 in 2.7 s.
    assert [1 <= len(api.requests("PATCH", cid)) <= 3 for cid in ids] == [True] * 3
    assert outbox.depth() == 3 and outbox.failed() == []


def test_a_down_api_is_retried_after_growing_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evidence queued, the API down, the jitter drawing the shortest wait each time: the
    whole queue's waits between rounds grow 0.5 s, 1 s, 2 s, each within 20 % of that, rather
    than shrinking as the jitter compounds."""
    from gridpatrol.api import client as client_module

    monkeypatch.setattr(client_module.random, "uniform", lambda low, high: low)
    api = Logged()
    api.down = True
    outbox = Outbox(tmp_path / "outbox-rounds.db", mocked(api), component="rounds")
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(9), "image/jpeg")
    outbox.start()
    try:
        time.sleep(2.7)
    finally:
        outbox.stop()
    # 0.4 s, 0.8 s, 1.6 s: the fourth attempt comes 2.8 s after the first, so at most 3.
    times = api.requests("PUT", sha)
    assert 2 <= len(times) <= 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert [gap >= wait for gap, wait in zip(gaps, (0.4, 0.8), strict=False)] == [True] * len(gaps)
    assert outbox.depth() == 1 and outbox.failed() == []


def test_flush_cuts_the_wait_after_a_failed_round(tmp_path: Path) -> None:
    """The API was down and asked for 30 s; it is back when the producer shuts down: flush()
    sends the queue now rather than leaving it for the next start."""
    api = Overloaded("30")
    outbox = Outbox(tmp_path / "outbox-flush.db", mocked(api), component="flush")
    with outbox.transaction() as txn:
        txn.add_evidence(jpeg(7), "image/jpeg")
    outbox.start()
    try:
        wait_for_retries(outbox, 1)
        with outbox.transaction() as txn:  # a commit does not end the wait
            txn.conn.execute("SELECT 1")
        time.sleep(0.5)
        assert api.requests == 1
        api.up = True
        assert outbox.flush(5)
    finally:
        outbox.stop()
    assert api.requests == 2
    assert outbox.stats() == {"sent": 1, "retried": 1, "failed": 0, "depth": 0}


class LateKick(threading.Event):
    """The outbox's kick event, with a flush() landing just after the loop read it unset: the
    first ``is_set`` answers False, then the event is set."""

    def __init__(self) -> None:
        super().__init__()
        self.landed = False

    def is_set(self) -> bool:
        was = super().is_set()
        if not self.landed:
            self.landed = True
            self.set()
        return was


def test_a_flush_landing_as_a_round_starts_cuts_that_rounds_wait(tmp_path: Path) -> None:
    """The API is down and asks for 30 s; a flush() sets the kick just after the loop found it
    unset, before the round: the round fails, and the next goes at once, not 30 s later."""
    api = Overloaded("30")
    outbox = Outbox(tmp_path / "outbox-late.db", mocked(api), component="late")
    with outbox.transaction() as txn:
        txn.add_evidence(jpeg(8), "image/jpeg")
    kick = LateKick()
    outbox._kick = kick
    outbox.start()
    try:
        wait_until(lambda: api.requests == 2, 5)
    finally:
        outbox.stop()
    assert kick.landed
    assert outbox.depth() == 1 and outbox.failed() == []


class CreatesOverloaded:
    """A proxy in front of the real API that answers every create 503 with ``Retry-After:
    30`` until ``up``, and passes the rest (evidence uploads) on."""

    def __init__(self, api_server: Any) -> None:
        self.api = httpx.Client(base_url=api_server.url, timeout=5)
        self.creates = 0
        self.up = False
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.startswith("/api/v1/candidates"):
            with self.lock:
                self.creates += 1
            if not self.up:
                headers = {"Retry-After": "30"}
                return httpx.Response(503, headers=headers, json={"title": "Service Unavailable"})
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        passed = self.api.request(
            request.method, request.url.path, headers=headers, content=request.read()
        )
        return httpx.Response(passed.status_code, headers=passed.headers, content=passed.content)


def test_commits_do_not_cut_a_pause_the_api_asked_for_when_uploads_went_through(
    api_server: Any, tmp_path: Path
) -> None:
    """The API takes evidence but answers creates 503 with Retry-After: 30, a producer queues
    a frame and a create every second: the round that delivered its upload waits out the 30 s
    all the same, rather than going again (a create request) at each of the commits."""
    proxy = CreatesOverloaded(api_server)
    client = producer_client(api_server)
    client._http = httpx.Client(
        base_url=f"{MOCK_URL}/api/v1",
        headers={"Authorization": f"Bearer {api_server.tokens['producer']}"},
        transport=httpx.MockTransport(proxy),
        timeout=5,
    )
    outbox = Outbox(tmp_path / "outbox-paused.db", client, component="paused")
    outbox.start()
    try:
        cases = [queue_case(outbox, 60)]  # the first commit the running outbox sees
        wait_for_retries(outbox, 1)
        for seed in range(61, 66):  # a commit a second for 5 s
            time.sleep(1)
            cases.append(queue_case(outbox, seed))
        time.sleep(1)
        assert 1 <= proxy.creates <= 2
        assert outbox.stats()["sent"] == 1  # the first round's upload went through
        proxy.up = True
        assert outbox.flush(30)
    finally:
        outbox.stop()
    assert outbox.failed() == []
    for seed, (sha, cid) in enumerate(cases, start=60):
        assert_delivered(api_server, outbox, sha, cid, seed)
