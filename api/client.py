"""HTTP client of the intake API and the durable outbox producers send through.

Producers (detector workers, the alarm bridge) never call the API on their hot path. They
write evidence and candidate operations into a per-process SQLite outbox inside their own
transaction, and a background thread delivers them in order with retries. Client-supplied
candidate ids and stored idempotency keys make every retry safe: minutes of API downtime lose
nothing and duplicate nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx

from gridpatrol import proxies
from gridpatrol.api.schemas import MAX_EVIDENCE_ITEMS

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
DEFAULT_API_URL = "http://127.0.0.1:8000"
# Statuses worth retrying: the request may succeed later without any change on our side.
# 401 and 403 judge the token, not the operation: a rotation half done or a mistyped token on
# one API instance must hold the outbox until it is mended, never discard it. The outbox also
# holds for an answer that did not come from the API's route (see _misrouted). Every 5xx is
# retried too (see ApiError.retryable): a proxy's or CDN's own (501, 505, 507, 511, 520-524)
# says nothing of the operation, and failing it for good would lose it. 421 Misdirected
# Request: the connection reached a server that is not the API's; another one may.
RETRYABLE = frozenset({401, 403, 408, 409, 421, 425, 429})
# The longest wait a ``Retry-After`` header gets from the outbox: a proxy's maintenance page
# asking for an hour would otherwise leave a mended API unused for that long.
MAX_RETRY_AFTER_S = 120.0
# The problem ``type`` of a 409 that is final: a create whose client-supplied id names another
# event's candidate (other 409s, a request in flight with the same key, pass).
ID_TAKEN = "urn:gridpatrol:problem:candidate-id-taken"


class OutboxBusy(RuntimeError):
    """Another process delivers from the same outbox file."""


class ApiConfigError(RuntimeError):
    """A setting of the client that cannot work: mend it and restart (status 2)."""


class UnsendableOperation(ValueError):
    """An operation no request can carry: a body JSON cannot encode (NaN or Infinity, a lone
    surrogate), or one that is not a JSON object. The outbox refuses to queue one, and refuses
    for good, unsent, one a file already holds (written by an older version)."""


def _checked_url(url: str) -> str:
    """``url`` when it can be the API's: http:// or https://, a host, a port that is a number
    (not 0), an optional path, nothing else (no spaces around it, no query or fragment: the
    requests' paths are appended to it); else :class:`ApiConfigError`. httpx would refuse
    every request, or send each to a wrong URL, and an outbox retry them for ever."""
    shown = proxies.masked(url)
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)  # a control character, which urlsplit drops
    except (ValueError, httpx.InvalidURL) as exc:  # a port that is no number, a broken [IPv6]
        info = proxies.user_info(url)
        password = info[1].partition(":")[2] if info else ""
        # A parser's words would quote the piece of the password it took for a port.
        said = (
            "a password must percent-encode # ? / @ (%23 %3F %2F %40)"
            if re.search(r"[#?/@]", password)
            else exc
        )
        raise ApiConfigError(f"GRIDPATROL_API_URL {shown!r}: {said}") from exc
    if "@" in parts.path + parts.query + parts.fragment:
        # An API's URL holds no "@" past its host: a password holding a "/ ? #" ("gp:2024/pw@
        # api" reads as host gp, port 2024), whose rest would be shown, every request sent to gp.
        scheme, _, rest = url.partition("://")
        raise ApiConfigError(
            f"GRIDPATROL_API_URL '{scheme}://***@{rest.rpartition('@')[2]}': a password must "
            "percent-encode # ? / @ (%23 %3F %2F %40)"
        )
    if url != url.strip() or "?" in url or "#" in url:
        raise ApiConfigError(
            "GRIDPATROL_API_URL must be http://host[:port][/path] or https://… with no spaces "
            f"around it and no query or fragment, got {shown!r}"
        )
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or re.search(r"\s", host) or port == 0:
        raise ApiConfigError(
            f"GRIDPATROL_API_URL must be http://host[:port] or https://…, got {shown!r}"
        )
    return url


def _transport(base_url: str) -> httpx.HTTPTransport:
    """The transport to the API, through the proxy of the environment for its URL (see
    :mod:`gridpatrol.proxies`); :class:`ApiConfigError` when that cannot work."""
    try:
        return proxies.transport(base_url)
    except proxies.ProxyUnusable as exc:
        raise ApiConfigError(f"the API at {proxies.masked(base_url)}: {exc}") from exc


class ApiError(Exception):
    """The API answered with an error, or anything else but 2xx (a redirect); ``problem`` is
    its RFC 9457 body. ``retry_after``: the seconds its ``Retry-After`` header asked for, if
    any; ``location``: the ``Location`` header of a redirect."""

    def __init__(
        self,
        status: int,
        problem: JsonDict,
        *,
        retry_after: float | None = None,
        location: str | None = None,
    ) -> None:
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        self.location = location
        # One line however the problem's text runs (an upstream's traceback passed on in its
        # detail): a journal or a log shipper splits a record at line ends. ``problem``, and
        # the refusal the outbox keeps in its file, keep it whole.
        self.detail = _one_line(str(problem.get("detail") or problem.get("title") or ""), 500)
        detail = self.detail
        if location is not None:
            detail = f"{detail} (Location: {location})" if detail else f"Location: {location}"
        super().__init__(f"HTTP {status}: {detail}")

    @property
    def retryable(self) -> bool:
        held = self.status >= 500 or self.status in RETRYABLE
        return held and self.problem.get("type") != ID_TAKEN


class NotTheApi(ApiError):
    """A 2xx answer the API never gives to the request: not a JSON object, or one without
    what the API's answer holds (an upload's sha256, a candidate's id, one result per item
    of a batch). A proxy's default backend or another service at ``GRIDPATROL_API_URL``
    answered it, and nothing reached the API: the outbox holds its queue (see _misrouted)
    instead of counting the operation delivered."""

    def __init__(self, response: httpx.Response, why: str) -> None:
        shown = _one_line(response.text) if why == "not JSON" else ""
        detail = f"not an answer of the API ({why}){': ' + shown if shown else ''}"
        super().__init__(response.status_code, {"title": "not the API", "detail": detail})


class ApiClient:
    """A typed, synchronous client of ``/api/v1``."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=_transport(self.base_url),
        )

    @classmethod
    def from_env(cls) -> ApiClient:
        """A client of ``GRIDPATROL_API_URL`` (default :data:`DEFAULT_API_URL`) with the
        producer token ``GRIDPATROL_API_TOKEN``; RuntimeError without a token, and
        :class:`ApiConfigError` (a RuntimeError) for a URL that cannot be the API's: the
        commands exit with status 2."""
        token = os.environ.get("GRIDPATROL_API_TOKEN", "")
        if not token:
            raise RuntimeError("GRIDPATROL_API_TOKEN is not set: producers need a producer token")
        return cls(_checked_url(os.environ.get("GRIDPATROL_API_URL") or DEFAULT_API_URL), token)

    def close(self) -> None:
        self._http.close()

    # -- producer ---------------------------------------------------------------------------

    # The producer's requests check that the answer is the API's (see NotTheApi): a 2xx from
    # anything else would count an operation delivered that never reached it.

    def put_evidence(self, data: bytes, content_type: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        response = self._call(
            "PUT", f"/evidence/{sha}", content=data, headers={"Content-Type": content_type}
        )
        if _object(response).get("sha256") != sha:
            raise NotTheApi(response, f"no sha256 {sha}")
        return sha

    def create_candidate(self, body: JsonDict, idempotency_key: str) -> JsonDict:
        return self._candidate("POST", "/candidates", json=body, key=idempotency_key)

    def create_batch(self, items: list[tuple[str, JsonDict]]) -> list[JsonDict]:
        payload = {"items": [{"idempotency_key": k, "body": b} for k, b in items]}
        response = self._call("POST", "/candidates/batch", json=payload)
        results = _object(response).get("items")
        if not isinstance(results, list) or len(results) != len(items):
            raise NotTheApi(response, f"not {len(items)} items")
        if not all(isinstance(r, dict) and isinstance(r.get("status"), int) for r in results):
            raise NotTheApi(response, "an item without a status")
        return results

    def patch_candidate(self, candidate_id: str, patch: JsonDict, idempotency_key: str) -> JsonDict:
        path = f"/candidates/{candidate_id}"
        return self._candidate("PATCH", path, json=patch, key=idempotency_key)

    # -- reviewer and platform ----------------------------------------------------------------

    def get_candidate(self, candidate_id: str) -> JsonDict:
        return self._json("GET", f"/candidates/{candidate_id}")

    def list_candidates(self, **params: str | int) -> JsonDict:
        return self._json("GET", "/candidates", params=params)

    def review(
        self,
        candidate_id: str,
        decision: str,
        *,
        reason_code: str | None = None,
        reason: str | None = None,
        merge_into: str | None = None,
    ) -> JsonDict:
        body = {"decision": decision, "reason_code": reason_code, "reason": reason}
        if merge_into is not None:
            body["merge_into"] = merge_into
        return self._json("POST", f"/candidates/{candidate_id}/review", json=body)

    def set_status(self, candidate_id: str, stage: str, at: datetime | None = None) -> JsonDict:
        """Report ``stage``, dated ``at`` or, without it, by the server when it records it: the
        same call again (a retry after a lost answer) is then a replay, answered as the first
        was, where a time of the caller's clock at each call would be refused as another."""
        body: JsonDict = {"stage": stage}
        if at is not None:
            body["at"] = at.isoformat()
        return self._json("POST", f"/candidates/{candidate_id}/status", json=body)

    def feed(self, cursor: str | None = None, limit: int = 100, wait: float = 0) -> JsonDict:
        params: dict[str, str | int | float] = {"limit": limit, "wait": wait}
        if cursor is not None:
            params["cursor"] = cursor
        timeout = max(self._http.timeout.read or 10.0, wait + 10.0)
        return self._json("GET", "/feed", params=params, timeout=timeout)

    def ack(self, cursor: str) -> None:
        self._call("POST", "/feed/ack", json={"cursor": cursor})

    def get_evidence(self, sha256: str) -> bytes:
        return self._call("GET", f"/evidence/{sha256}").content

    # -- plumbing ---------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, key: str | None = None, **kw: Any) -> JsonDict:
        return _object(self._keyed(method, path, key, **kw))

    def _candidate(self, method: str, path: str, *, key: str, **kw: Any) -> JsonDict:
        """The candidate the API answers a create or a PATCH with: one with an id."""
        response = self._keyed(method, path, key, **kw)
        data = _object(response)
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise NotTheApi(response, "no candidate id")
        return data

    def _keyed(self, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
        if key is not None:
            kw["headers"] = {**kw.get("headers", {}), "Idempotency-Key": key}
        return self._call(method, path, **kw)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            # Encoding happens here (httpx refuses NaN and Infinity): no retry can mend it.
            request = self._http.build_request(method, path, **kw)
        except (ValueError, TypeError) as exc:
            raise UnsendableOperation(f"{method} {path}: no request can carry it: {exc}") from exc
        response = self._http.send(request)
        # Only a 2xx is success: httpx follows no redirect, and a 3xx (a proxy sending http://
        # to https://, a path moved) did nothing at the API.
        if not response.is_success:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": _one_line(response.text)}
            raise ApiError(
                response.status_code,
                problem if isinstance(problem, dict) else {},
                retry_after=_retry_after(response.headers.get("Retry-After")),
                location=response.headers.get("Location") if response.is_redirect else None,
            )
        return response


# Whitespace and control characters (line and paragraph separators among them): an error's
# text keeps none, so its log record stays one line (a journal or a log shipper splits
# records at line ends).
_NOT_ONE_LINE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


def _one_line(text: str, limit: int = 200) -> str:
    """The start of an error's text (a problem's detail, a proxy's HTML page) as one line:
    at most ``limit`` characters, each run of whitespace or control characters one space."""
    return _NOT_ONE_LINE.sub(" ", text[: limit * 5]).strip()[:limit]


def _object(response: httpx.Response) -> JsonDict:
    """The JSON object a 2xx answer holds; :class:`NotTheApi` when it holds none: every
    answer of the API's ``/api/v1`` with a body is one."""
    try:
        data = response.json()
    except ValueError:  # not JSON (a proxy's HTML page), or not UTF-8
        raise NotTheApi(response, "not JSON") from None
    if not isinstance(data, dict):
        raise NotTheApi(response, "not a JSON object")
    return data


def _retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date), at most
    :data:`MAX_RETRY_AFTER_S`; None without one or for one that is neither."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


# ---------------------------------------------------------------------------------------------
# The outbox.
#
# Design. A delivery round (Outbox._deliver_some) sends every evidence file of its window, then
# its creates, then its patches merged per candidate. Evidence is content-addressed and
# independent of everything; a candidate's create precedes its patches in the queue;
# operations of different candidates commute. So each candidate still sees its operations in
# order, after the evidence they reference, and a failure stops the round before anything
# that may depend on it.
#
# Bodies name candidates too (``references``, the bridge's alarm ids, see _ALARM_IDS). When
# the API answers a create with a candidate of another id, the ids in bodies that name the
# producer's id are rewritten to the API's, once and in the file: bodies queued later as they
# are queued, bodies already queued right after the transaction that records the alias,
# before anything more is sent (_finish_rewrites). The rewrite never changes the body of an
# operation that may have been sent: the API keeps the first body under its idempotency key
# and refuses a retry with another one (422), which would lose the operation. ``attempts``
# cannot tell (it counts a failed round once, and a process that dies before the answer
# counts nothing), but the order of delivery can: an operation queued after the create,
# other than a create of the same batch, has not been sent before that create is answered.
# So these keep naming the producer's id: a create sent in the batch of the create it names,
# an operation queued before the create it names, and one naming an alias recorded in a file
# written by a version before this rewriting. (A PATCH cannot mend them: it adds to
# ``references``, never removes.) A body may also name a create the API refused, an id it
# never held. The send path reads no body for any of this.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('evidence', 'create', 'patch')),
    candidate_id TEXT,
    idempotency_key TEXT,
    payload BLOB NOT NULL,
    content_type TEXT,
    sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_ops_state ON outbox_ops (state, seq);
CREATE INDEX IF NOT EXISTS outbox_ops_sha256 ON outbox_ops (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_ops_refused_creates ON outbox_ops (candidate_id)
    WHERE kind = 'create' AND state = 'failed';
-- candidate_closed runs in every producer transaction that updates or ends a candidate.
CREATE INDEX IF NOT EXISTS outbox_ops_failed ON outbox_ops (candidate_id) WHERE state = 'failed';
-- A create the API answered with a candidate it already held under another id (the same
-- (source.system, source_event_id) sent under a new id, e.g. after a producer lost its state):
-- the producer's updates of its own id go to the API's.
CREATE TABLE IF NOT EXISTS outbox_aliases (
    local_id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
-- An alias whose rewrite of the bodies queued before it was recorded (_rewrite_unsent) is not
-- finished: it runs in short transactions, and delivery finishes it before it sends anything.
CREATE TABLE IF NOT EXISTS outbox_rewrites (
    local_id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    create_seq INTEGER NOT NULL,  -- the aliased create: bodies queued before it keep the id,
    sent_to INTEGER NOT NULL,     -- ... and so do the creates of its batch, up to this seq
    done_to INTEGER NOT NULL,     -- bodies up to this seq are rewritten
    end_seq INTEGER NOT NULL      -- the last operation queued before the alias was recorded
);
-- A candidate's patches merged into one PATCH, recorded before it goes out: until it is
-- settled (a timeout, a 5xx, a lost connection, a crash leave it open) it is sent again
-- exactly as it was (the same patches, so the same body under the same idempotency key), and
-- patches queued since merge into the next one. ``seqs``: a JSON list of the patches' seqs.
CREATE TABLE IF NOT EXISTS outbox_patch_groups (
    candidate_id TEXT PRIMARY KEY,
    seqs TEXT NOT NULL
);
-- A refused evidence file is kept as a record of the refusal, without its bytes (up to the
-- evidence cap each, and never sent again); files written before this held them.
UPDATE outbox_ops SET payload = x'' WHERE kind = 'evidence' AND state = 'failed'
    AND length(payload) > 0;
"""


# The columns of ``outbox_ops`` that make an :class:`_Op`, in its order.
_OP_COLUMNS = "seq, kind, candidate_id, idempotency_key, payload, content_type, sha256"


@dataclass(frozen=True)
class _Op:
    seq: int
    kind: str
    candidate_id: str | None
    key: str | None
    payload: bytes
    content_type: str | None
    sha256: str | None

    def body(self) -> JsonDict:
        try:
            data = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise UnsendableOperation(f"its body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise UnsendableOperation("its body is not a JSON object")
        return data

    def unsendable(self) -> str | None:
        """Why no request can carry this operation's body; None when one can."""
        if self.kind == "evidence":
            return None
        try:
            _encoded(self.body())
        except UnsendableOperation as exc:
            return str(exc)
        return None


class OutboxTxn:
    """Operations queued inside one producer transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add_evidence(self, data: bytes, content_type: str) -> str:
        sha = hashlib.sha256(data).hexdigest()
        queued = self.conn.execute(
            "SELECT 1 FROM outbox_ops WHERE kind = 'evidence' AND sha256 = ? AND state = 'pending'",
            (sha,),
        ).fetchone()
        if queued is None:
            self._insert("evidence", None, None, data, content_type, sha)
        return sha

    def create_candidate(self, body: Mapping[str, Any], candidate_id: str | None = None) -> str:
        cid = str(uuid.UUID(candidate_id or body.get("id") or str(uuid.uuid4())))
        payload = _queued("create", cid, _in_api_ids(self.conn, cid, {**body, "id": cid}))
        self._insert("create", cid, str(uuid.uuid4()), payload, None, None)
        return cid

    def patch_candidate(self, candidate_id: str, patch: Mapping[str, Any]) -> None:
        cid = api_id(self.conn, str(uuid.UUID(candidate_id)))
        payload = _queued("patch", cid, _in_api_ids(self.conn, cid, dict(patch)))
        self._insert("patch", cid, str(uuid.uuid4()), payload, None, None)

    def _insert(
        self,
        kind: str,
        candidate_id: str | None,
        key: str | None,
        payload: bytes,
        content_type: str | None,
        sha: str | None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO outbox_ops (kind, candidate_id, idempotency_key, payload, content_type,"
            " sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, candidate_id, key, payload, content_type, sha, time.time()),
        )


def outbox_lock_path(path: Path) -> Path:
    """The lock file of the outbox file ``path``, which the process delivering from it holds:
    beside the file itself, so a path through a symbolic link (to the file or a folder of it)
    names no lock of its own."""
    real = path.resolve()
    return real.with_name(real.name + ".lock")


def merge_patches(first: JsonDict, second: JsonDict) -> JsonDict:
    """Combine two consecutive PATCH bodies into one with the same effect.

    Objects merge recursively and the later value wins, except that evidence and references
    accumulate: a later patch adds to them, it never replaces what an earlier one added. The
    one exception is a ``latest`` frame, which supersedes the earlier one: an episode updated
    every two minutes for a week would otherwise carry thousands of them.
    """
    merged = dict(first)
    for key, value in second.items():
        old = merged.get(key)
        if key == "evidence" and isinstance(old, list) and isinstance(value, list):
            if any(_kind(v) == "latest" for v in value):
                old = [v for v in old if _kind(v) != "latest"]
            merged[key] = old + [v for v in value if v not in old]
        elif key == "references" and isinstance(old, list) and isinstance(value, list):
            merged[key] = old + [v for v in value if v not in old]
        elif isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_patches(old, value)
        else:
            merged[key] = value
    return merged


def _kind(item: object) -> object:
    return item.get("kind") if isinstance(item, dict) else None


class Outbox:
    """Durable, ordered delivery of evidence and candidate operations to the intake API."""

    # One delivery round reads this many pending operations; the larger a backlog, the more
    # updates of one candidate merge into a single PATCH.
    WINDOW = 10_000
    WINDOW_BYTES = 32 << 20  # ... and at most this many payload bytes (evidence can be large)
    MAX_BATCH = 500  # creates per POST /candidates/batch (the API's limit)
    # ... and at most this many bytes of them: half the API's default GRIDPATROL_MAX_BATCH_BYTES.
    MAX_BATCH_BYTES = 8 << 20
    # A candidate's patches merged into one PATCH: their payloads at most this many bytes, half
    # the API's default GRIDPATROL_MAX_BODY_BYTES, and their evidence at most the API's limit
    # (MAX_EVIDENCE_ITEMS); the patches past either go in the next PATCH.
    MAX_PATCH_BYTES = 512 << 10
    PARALLEL = 8  # evidence uploads and PATCHes of different candidates in flight at once
    # Candidates whose patches one round sends: bounds how long a create that arrives
    # meanwhile waits for the next round; the rest merge further in the meantime.
    MAX_PATCHED = 4 * PARALLEL
    # Candidates whose byte cap for merges (see _split) is remembered; the oldest is
    # forgotten past this, its next merge too large refused and split once more.
    MAX_CAPPED = 1000
    MAX_BACKOFF_S = 30.0
    # Pending bodies one transaction of the rewrite after an alias reads (_rewrite_unsent):
    # a producer waits about that long for the write lock, never for a whole backlog.
    REWRITE_CHUNK = 5000

    def __init__(
        self,
        path: str | Path,
        client: ApiClient | None,
        *,
        component: str,
        busy_hint: str = "give each worker its own GRIDPATROL_OUTBOX or --component-id",
    ) -> None:
        self.path = Path(path)
        self.busy_hint = busy_hint  # what to do when another process holds the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.client = client
        self.component = component
        self._local = threading.local()
        self._wake = threading.Event()  # set by producers' commits
        # Set by flush() and stop(): ends the wait after a failed round, which commits do not.
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = {"sent": 0, "retried": 0, "failed": 0}
        self._counts_lock = threading.Lock()
        self._backoff = 0.0
        self._retry_in = 0.0  # the wait a failed round asked for before the next one
        self._paused = False  # ... and whether the API asked for it (see _asks_for_a_pause)
        # Candidates whose PATCH was held (not a refusal): (monotonic time before which it
        # is not sent again, its own backoff). The rest of the queue flows meanwhile.
        self._deferred: dict[str, tuple[float, float]] = {}
        # Candidates whose merged PATCH was refused (see _unmerge): the seq of its last
        # patch, up to which their patches go one a PATCH.
        self._unmerged: dict[str, int] = {}
        # Candidates whose merged PATCH was refused as too large (see _split): the payload
        # bytes their later merges keep within, below MAX_PATCH_BYTES.
        self._capped: dict[str, int] = {}
        self._senders = self._new_senders()
        self._lock_file: BinaryIO | None = None
        with contextlib.closing(self._connect()) as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def from_env(cls, component: str) -> Outbox:
        return cls(cls.env_path(component), ApiClient.from_env(), component=component)

    @staticmethod
    def env_path(component: str) -> str:
        """The outbox file of ``component``: ``GRIDPATROL_OUTBOX``, else one under var/."""
        return os.environ.get("GRIDPATROL_OUTBOX") or f"var/outbox-{component}.db"

    # -- producer side ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[OutboxTxn]:
        """One SQLite transaction: the producer's own writes and its outbox entries together."""
        conn = self._thread_conn()
        with _write(conn):
            yield OutboxTxn(conn)
        self._wake.set()

    def depth(self) -> int:
        row = (
            self._thread_conn()
            .execute("SELECT COUNT(*) FROM outbox_ops WHERE state = 'pending'")
            .fetchone()
        )
        return int(row[0])

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            counts = dict(self._counts)
        counts["depth"] = self.depth()
        return counts

    def failed(self) -> list[JsonDict]:
        """Operations the API refused for good, with its reason, for an operator to inspect."""
        rows = self._thread_conn().execute(
            "SELECT seq, kind, candidate_id, last_error FROM outbox_ops WHERE state = 'failed'"
        )
        return [
            {"seq": s, "kind": k, "candidate_id": c, "error": e} for s, k, c, e in rows.fetchall()
        ]

    def prune_refused(self, older_than_s: float, keep: Iterable[str]) -> tuple[int, int]:
        """Forget the refused operations queued more than ``older_than_s`` ago, and the
        aliases recorded that long ago: (operations, aliases) deleted. Both are otherwise kept
        for ever, about 1 KB for each update of a rejected candidate. ``keep``: the candidate
        ids a producer still follows (an open episode, an alarm's last candidate), whose
        refusals and aliases stay with the API's ids they stand for: candidate_closed() and
        api_id() answer from them as long as updates of those candidates may come (a patch
        sent to a create the API refused could change another event's candidate). So do those
        of the candidates the pending operations name: delivery fails a pending patch unsent
        only while its candidate's refused create is in the file. Holds the file (see
        :meth:`claim`): never while its worker runs."""
        self.claim()
        before = time.time() - older_than_s
        conn = self._thread_conn()
        with _write(conn):
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS outbox_keep (id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM outbox_keep")
            conn.executemany("INSERT OR IGNORE INTO outbox_keep VALUES (?)", [(k,) for k in keep])
            conn.execute(
                "INSERT OR IGNORE INTO outbox_keep SELECT candidate_id FROM outbox_ops"
                " WHERE state = 'pending' AND candidate_id IS NOT NULL"
            )
            conn.execute(
                "INSERT OR IGNORE INTO outbox_keep SELECT server_id FROM outbox_aliases"
                " WHERE local_id IN (SELECT id FROM outbox_keep)"
            )
            ops = conn.execute(
                "DELETE FROM outbox_ops WHERE state = 'failed' AND created_at < ? AND"
                " (candidate_id IS NULL OR candidate_id NOT IN (SELECT id FROM outbox_keep))",
                (before,),
            ).rowcount
            # An unfinished rewrite (see _finish_rewrites) keeps its alias until it is done.
            aliases = conn.execute(
                "DELETE FROM outbox_aliases WHERE created_at < ? AND local_id NOT IN"
                " (SELECT id FROM outbox_keep) AND local_id NOT IN"
                " (SELECT local_id FROM outbox_rewrites)",
                (before,),
            ).rowcount
        return ops, aliases

    # -- delivery -----------------------------------------------------------------------------

    def claim(self) -> None:
        """Hold the outbox file for this process until :meth:`stop`.

        Two processes delivering from one file (two workers left on the default component
        id) would send every operation twice and reorder a candidate's patches.
        """
        if self._lock_file is not None:
            return
        handle = outbox_lock_path(self.path).open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutboxBusy(
                f"outbox {self.path} is in use by another process; {self.busy_hint}"
            ) from None
        self._lock_file = handle

    def start(self) -> None:
        if self.client is None:
            raise RuntimeError("an outbox without an API client can only store")
        if self._thread is not None:
            return
        self.claim()
        self._stop.clear()
        if self._senders_closed:
            self._senders = self._new_senders()
        self._thread = threading.Thread(
            target=self._run, name=f"outbox-{self.component}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._kick.set()
        self._wake.set()
        # Uploads not begun are dropped from the pool (they stay pending in the file), so
        # exit does not wait for a whole window of them against a hung API.
        self._senders.shutdown(wait=False, cancel_futures=True)
        self._senders_closed = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _new_senders(self) -> ThreadPoolExecutor:
        self._senders_closed = False
        return ThreadPoolExecutor(self.PARALLEL, thread_name_prefix=f"send-{self.component}")

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far has been delivered (or refused for good).

        The next round starts now, also during the wait after a failed round and for
        candidates whose PATCH waits its own backoff: at shutdown an outage that has just
        ended must not leave the queue for the next start."""
        deadline = time.monotonic() + timeout
        self._kick.set()
        self._wake.set()
        while self.depth() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _run(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.is_set():
                # Cleared only when read set: a flush() between the two would be lost.
                kicked = self._kick.is_set()
                if kicked:
                    self._kick.clear()
                settled = self._settled()
                try:
                    self._deliver_some(conn, kicked)
                except CancelledError:
                    break  # stopping: the pool dropped the round's remaining requests
                except Exception:
                    log.exception("outbox %s: unexpected error while delivering", self.component)
                    self._retry_in = max(self._retry_in, 1.0)
                progressed = self._settled() > settled
                delay, self._retry_in = self._retry_in, 0.0
                paused, self._paused = self._paused, False
                if delay <= 0:
                    if progressed:
                        self._backoff = 0.0
                        continue
                    self._wake.wait(self._idle_wait())
                    self._wake.clear()
                elif progressed and not paused:
                    # Part of the round was held, the rest delivered or refused: the API
                    # answers, so a producer's commit brings the next round forward.
                    self._wake.wait(delay)
                    self._wake.clear()
                else:
                    # A round that settled nothing (the API is down or misrouted), or held by
                    # the API asking for a pause (429, 503, Retry-After) though uploads of the
                    # round went through: only flush() or stop() end the wait, a producer's
                    # commit (the alarm bridge commits every second) does not.
                    self._kick.wait(delay)
        finally:
            conn.close()

    def _settled(self) -> int:
        """The operations delivered or refused for good so far."""
        with self._counts_lock:
            return self._counts["sent"] + self._counts["failed"]

    def _idle_wait(self) -> float:
        """How long the loop waits for a commit when nothing could be sent: at most 1 s, and
        no longer than until the first candidate whose PATCH was held may go again."""
        if not self._deferred:
            return 1.0
        first = min(when for when, _backoff in self._deferred.values())
        return min(1.0, max(0.01, first - time.monotonic()))

    def _due(self, group: list[_Op], now: float) -> bool:
        """Whether the candidate of a patch group is past the wait its held PATCH asked for."""
        cid = group[0].candidate_id or ""
        entry = self._deferred.get(cid)
        return entry is None or entry[0] <= now

    def _deliver_some(self, conn: sqlite3.Connection, kicked: bool = False) -> None:
        """One round over the oldest pending operations; a failure that holds the round is
        recorded for the wait before the next (see :meth:`_retry_later`). See the outbox's
        design above for its order and for bodies naming an aliased id. Evidence and creates
        go first and hold the round; a candidate whose PATCH was held waits its own backoff,
        skipped by the rounds in between but ``kicked`` ones (see :meth:`flush`)."""
        # One a crash or a stop cut short, before any send.
        _finish_rewrites(conn, self.REWRITE_CHUNK, self._stop)
        ops = _round(self._pending(conn), self.MAX_BATCH, self.MAX_BATCH_BYTES)
        if not ops:
            return
        try:
            self._send_in_parallel(conn, [[op] for op in ops if op.kind == "evidence"])
            creates = self._sendable(conn, [op for op in ops if op.kind == "create"])
            finished, aliased = self._send_creates(conn, creates)
            if finished:
                # Recording an alias moved and rewrote this round's patches in the file.
                window = self._patches_up_to(conn, ops[-1].seq) if aliased else ops
                now = time.monotonic()
                self._forget_deferred(now)
                patches, restored = _as_sent(conn, _patches_by_candidate(window))
                patches = [g for g in patches if kicked or self._due(g, now)]
                patches = patches[: self.MAX_PATCHED]
                patches = [g for g in (self._sendable(conn, g) for g in patches) if g]
                patches = [self._cut(g, restored) for g in patches]
                self._send_in_parallel(conn, self._without_refused_creates(conn, patches))
        except (httpx.TransportError, ApiError) as exc:
            # Senders settle refusals themselves; what reaches here is worth retrying.
            self._retry_later(conn, ops[0], exc)

    def _cut(self, group: list[_Op], restored: set[str]) -> list[_Op]:
        """The patches of ``group`` its candidate's next PATCH carries. A PATCH out without a
        definite answer (``restored``, see :func:`_as_sent`) goes again exactly as recorded,
        whatever its size (an earlier version merged without limits): the same body under the
        same key, which the API replays or applies once; refused, it is unmerged (see
        :meth:`_unmerge`). The patches of a merged PATCH refused as invalid go one a PATCH, up
        to its last. Any other within the API's limits (see :func:`_mergeable`), and within
        the candidate's cap once a merge of it was refused as too large (see :meth:`_split`)."""
        cid = group[0].candidate_id or ""
        if cid in restored:
            return group
        last = self._unmerged.get(cid)
        if last is not None:
            if group[0].seq <= last:
                return group[:1]
            del self._unmerged[cid]
        return _mergeable(group, self._capped.get(cid, self.MAX_PATCH_BYTES))

    def _patches_up_to(self, conn: sqlite3.Connection, seq: int) -> list[_Op]:
        """The pending patches up to ``seq``, as the file holds them now: the window is the
        oldest pending operations, so up to its last one these are the window's patches."""
        query = (
            f"SELECT {_OP_COLUMNS} FROM outbox_ops WHERE state = 'pending' AND kind = 'patch'"
            " AND seq <= ? ORDER BY seq"
        )
        return [_Op(*row) for row in conn.execute(query, (seq,)).fetchall()]

    def _pending(self, conn: sqlite3.Connection) -> list[_Op]:
        """The oldest pending operations, up to WINDOW of them and about WINDOW_BYTES."""
        query = f"SELECT {_OP_COLUMNS} FROM outbox_ops WHERE state = 'pending' ORDER BY seq LIMIT ?"
        ops: list[_Op] = []
        size = 0
        with contextlib.closing(conn.execute(query, (self.WINDOW,))) as rows:
            for row in rows:  # the cursor streams: rows past the byte budget are never read
                ops.append(_Op(*row))
                size += len(row[4])
                if size >= self.WINDOW_BYTES:
                    break
        return ops

    def _sendable(self, conn: sqlite3.Connection, ops: list[_Op]) -> list[_Op]:
        """``ops`` but those no request can carry (see :class:`UnsendableOperation`), which
        are failed for good, unsent, as the API would refuse them: each alone, so they hold
        up neither the round nor the operations queued after them."""
        kept = []
        for op in ops:
            why = op.unsendable()
            if why is None:
                kept.append(op)
            else:
                self._fail(conn, [op], _not_sent(why))
        return kept

    def _settle(
        self,
        conn: sqlite3.Connection,
        ops: list[_Op],
        send: Callable[[], Any],
        sent_to: int | None,
    ) -> bool:
        """Send one request for ``ops``: done on success, failed for good on a refusal or
        when no request can carry them. ``sent_to``: see :meth:`_done`, None for operations
        other than creates. True when an alias was recorded."""
        try:
            answer = send()
        except ApiError as exc:
            if _held(exc, ops[0]):
                raise
            merged = ops[0].kind == "patch" and len(ops) > 1
            if merged and exc.status == 413:
                self._split(conn, ops, exc)
            elif merged and exc.status == 422:
                self._unmerge(conn, ops, exc)
            else:
                self._fail(conn, ops, exc)
            return False
        except UnsendableOperation as exc:
            self._fail(conn, ops, _not_sent(str(exc)))
            return False
        return self._done(conn, ops, _aliased((op, answer) for op in ops), sent_to)

    def _unmerge(self, conn: sqlite3.Connection, ops: list[_Op], exc: ApiError) -> None:
        """A candidate's merged PATCH refused as invalid (422): the merge may be what the API
        refused (its evidence), or any one of ``ops``. Each goes again alone under its own
        key, in order, refused alone at most: the candidate's patches up to the last of
        ``ops`` go one a PATCH (see :meth:`_cut`), so N of them cost N requests, not a merge
        of the rest refused again after each. A 422 stored nothing under the merged PATCH's
        key (the API takes the key's claim back with a refusal), so a request under any of
        their keys is new. The first is pinned (see :func:`_as_sent`) and sent now; held, it
        goes alone again."""
        self._unmerged[ops[0].candidate_id or ""] = ops[-1].seq
        with _write(conn):
            _pin_groups(conn, [ops[:1]])
        log.warning(
            "outbox %s: the merged PATCH of %d updates of candidate %s was refused (%s);"
            " sending each of them alone",
            self.component,
            len(ops),
            ops[0].candidate_id,
            exc,
        )
        self._settle(conn, ops[:1], self._request_for(ops[:1]), None)

    def _split(self, conn: sqlite3.Connection, ops: list[_Op], exc: ApiError) -> None:
        """A candidate's merged PATCH refused as too large (413): its body is over the API's
        GRIDPATROL_MAX_BODY_BYTES, set below what MAX_PATCH_BYTES assumes; none of ``ops``
        need be. The candidate's merges keep within half the refused updates' bytes from now
        on (halved again at another 413, down to one update a PATCH, which a 413 refuses for
        good), so its updates go in a few smaller merges rather than one a PATCH. A 413
        stored nothing under the merged PATCH's key (the API takes the key's claim back with
        a refusal), so a request under any of their keys is new. The first merge within the
        cap is pinned (see :func:`_as_sent`) and sent now; held, it goes again as it is."""
        cid = ops[0].candidate_id or ""
        size = sum(len(op.payload) for op in ops)
        # A PATCH restored as it went (see _cut) may be over the cap: never raise it. Popped
        # and set again, the candidate is the last the MAX_CAPPED bound forgets.
        cap = min(max(1, size // 2), self._capped.pop(cid, size))
        self._capped[cid] = cap
        while len(self._capped) > self.MAX_CAPPED:
            del self._capped[next(iter(self._capped))]
        first = _mergeable(ops, cap)
        with _write(conn):
            _pin_groups(conn, [first])
        log.warning(
            "outbox %s: the merged PATCH of %d updates (%d bytes) of candidate %s was refused"
            " as too large (%s); sending them in smaller merges, of at most %d bytes of updates",
            self.component,
            len(ops),
            size,
            cid,
            exc,
            cap,
        )
        self._settle(conn, first, self._request_for(first), None)

    def _forget_deferred(self, now: float) -> None:
        """Forget the held PATCHes not retried for long: their patches settled otherwise or
        moved to an alias."""
        stale = [c for c, (when, _b) in self._deferred.items() if when < now - self.MAX_BACKOFF_S]
        for cid in stale:
            del self._deferred[cid]

    def _send_in_parallel(self, conn: sqlite3.Connection, groups: list[list[_Op]]) -> None:
        """One request per group (an evidence file, or one candidate's merged patches), side
        by side; every group is settled, then the first retryable failure of an evidence file
        is raised. A candidate's PATCH that is held waits its own backoff (see _defer), the
        other candidates' and the creates queued after it go on meanwhile."""
        patches = [group for group in groups if group[0].kind == "patch"]
        if patches:
            # Before they go out: a crash before the answer resends them as they were too.
            with _write(conn):
                _pin_groups(conn, patches)
        futures = [(group, self._submit(group)) for group in groups]
        retry: Exception | None = None
        for group, future in futures:
            try:
                self._settle(conn, group, future.result, None)
            except (httpx.TransportError, ApiError) as exc:
                if group[0].kind == "patch":
                    self._defer(conn, group, exc)
                else:
                    retry = retry or exc
        if retry is not None:
            raise retry

    def _submit(self, group: list[_Op]) -> Future[Any]:
        """The request for ``group`` handed to the senders; :class:`CancelledError` once
        stopping, which ends the delivery thread quietly: a stop() during a round (a create
        batch answered after it) shut the pool down. What is not sent stays pending, a
        PATCH pinned goes again as it was at the next start."""
        if self._stop.is_set():
            raise CancelledError
        try:
            return self._senders.submit(self._request_for(group))
        except RuntimeError:  # the pool shut down between the check and the submit
            if self._stop.is_set():
                raise CancelledError from None
            raise

    def _request_for(self, group: list[_Op]) -> Callable[[], Any]:
        assert self.client is not None
        client, first = self.client, group[0]
        if first.kind == "evidence":
            return lambda: client.put_evidence(first.payload, first.content_type or "")
        assert first.candidate_id is not None
        body: JsonDict = {}
        for op in group:
            body = merge_patches(body, op.body())
        # The last op's key: a retry after a partial failure re-sends the same merged body.
        key, candidate_id = group[-1].key or "", first.candidate_id
        return lambda: client.patch_candidate(candidate_id, body, key)

    def _send_creates(self, conn: sqlite3.Connection, ops: list[_Op]) -> tuple[bool, bool]:
        """Send the creates in order: (all of them settled, rather than some left for the
        next round; an alias was recorded)."""
        assert self.client is not None
        if len(ops) <= 1:
            return True, bool(ops) and self._send_one_create(conn, ops[0], ops[0].seq)
        sent_to = ops[-1].seq
        try:
            results = self.client.create_batch([(op.key or "", op.body()) for op in ops])
        except ApiError as exc:
            if _held(exc, ops[0]):
                raise
            # The batch as a whole was refused: find the culprit one request at a time.
            return False, self._send_one_create(conn, ops[0], sent_to)
        except UnsendableOperation:
            # No request could carry the batch (not one of its creates, see _sendable):
            # as for a refusal, one request at a time.
            return False, self._send_one_create(conn, ops[0], sent_to)
        done: list[tuple[_Op, Any]] = []
        failed: list[tuple[_Op, ApiError]] = []
        for op, result in zip(ops, results, strict=True):
            status = int(result.get("status", 500))
            if status < 300:
                done.append((op, result.get("body")))
                continue
            refusal = ApiError(status, result.get("body") or {})
            if refusal.retryable:
                break  # keep order: retry this one and everything after it
            failed.append((op, refusal))
        aliased = self._done(conn, [op for op, _answer in done], _aliased(done), sent_to)
        for op, refusal in failed:
            self._fail(conn, [op], refusal)
        if len(done) + len(failed) < len(ops):
            raise ApiError(409, {"title": "part of the batch must be retried"})
        return True, aliased

    def _without_refused_creates(
        self, conn: sqlite3.Connection, groups: list[list[_Op]]
    ) -> list[list[_Op]]:
        """The patch groups to send; those of a candidate whose create the API refused for
        good are refused with it, unsent: such an id may name another producer's candidate
        (409), which they must not change."""
        ids = [group[0].candidate_id for group in groups]
        if not ids:
            return groups
        marks = ",".join("?" * len(ids))
        refused: dict[str, str] = dict(
            conn.execute(
                "SELECT candidate_id, last_error FROM outbox_ops WHERE kind = 'create' AND"
                f" state = 'failed' AND candidate_id IN ({marks})",
                ids,
            ).fetchall()
        )
        for group in groups:
            error = refused.get(group[0].candidate_id or "")
            if error is not None:
                status = error.split(" ", 1)[0]
                # Status 0: the create itself was never sent (no request could carry it).
                whose = "the API refused" if status not in ("", "0") else "the outbox failed"
                detail = f"not sent: {whose} this candidate's create ({error[:500]})"
                self._fail(
                    conn,
                    group,
                    ApiError(int(status) if status.isdigit() else 0, {"detail": detail}),
                )
        return [group for group in groups if group[0].candidate_id not in refused]

    def _send_one_create(self, conn: sqlite3.Connection, op: _Op, sent_to: int) -> bool:
        """Send one create; True when it was answered with an alias (see :meth:`_done`)."""
        assert self.client is not None
        client = self.client
        return self._settle(
            conn, [op], lambda: client.create_candidate(op.body(), op.key or ""), sent_to
        )

    def _done(
        self,
        conn: sqlite3.Connection,
        ops: list[_Op],
        aliased: list[tuple[_Op, str]],
        sent_to: int | None,
    ) -> bool:
        """Remove delivered operations; True when an alias was recorded. ``aliased``: each
        create the API answered with a candidate of another id, and that id (see
        :func:`_aliased`); ``sent_to``: the seq of the last create of the batch these creates
        were sent in, whose creates may have been sent with the producer's ids (see
        :func:`_rewrite_unsent`); None for operations other than creates."""
        if not ops:
            return False
        aliases = {op.candidate_id: api for op, api in aliased if op.candidate_id}
        if aliases and sent_to is None:
            raise ValueError("creates answered with an alias need the end of their batch")
        now = time.time()
        with _write(conn):
            conn.executemany("DELETE FROM outbox_ops WHERE seq = ?", [(op.seq,) for op in ops])
            _unpin_groups(conn, ops)
            # In the same transaction as the create's removal: a crash in between would leave
            # the create to be sent again (a replay that answers the same id), never patches
            # queued for an id the API does not know.
            conn.executemany(
                "INSERT OR REPLACE INTO outbox_aliases (local_id, server_id, created_at)"
                " VALUES (?, ?, ?)",
                [(local, api, now) for local, api in aliases.items()],
            )
            if aliases and sent_to is not None:
                _move_patches(conn, aliases)
                _plan_rewrites(conn, aliased, sent_to)
        self._undefer(ops)
        if aliases:
            _finish_rewrites(conn, self.REWRITE_CHUNK, self._stop)
        with self._counts_lock:
            self._counts["sent"] += len(ops)
        for local, api in aliases.items():
            log.warning(
                "outbox %s: the API answered the create of %s with candidate %s, which it"
                " already held for that event; updates of %s go to %s",
                self.component,
                local,
                api,
                local,
                api,
            )
        return bool(aliases)

    def _fail(self, conn: sqlite3.Connection, ops: list[_Op], exc: ApiError) -> None:
        reason = json.dumps(exc.problem, ensure_ascii=False)[:2000]
        with _write(conn):
            conn.executemany(
                "UPDATE outbox_ops SET state = 'failed', last_error = ?, payload = CASE kind"
                " WHEN 'evidence' THEN x'' ELSE payload END WHERE seq = ?",
                [(f"{exc.status} {reason}", op.seq) for op in ops],
            )
            _unpin_groups(conn, ops)
        self._undefer(ops)
        with self._counts_lock:
            self._counts["failed"] += len(ops)
        for op in ops:
            log.error(
                "outbox %s: %s %s %s: %s (seq %d)",
                self.component,
                "API refused" if exc.status else "failed for good, unsent,",
                op.kind,
                op.candidate_id or op.sha256,
                exc if exc.status else exc.detail,
                op.seq,
            )

    def _undefer(self, ops: list[_Op]) -> None:
        """Forget the held PATCHes of the candidates whose patches among ``ops`` settled, and
        the refused merges whose last patch did."""
        for op in ops:
            if op.kind == "patch" and op.candidate_id:
                self._deferred.pop(op.candidate_id, None)
                if self._unmerged.get(op.candidate_id) == op.seq:
                    del self._unmerged[op.candidate_id]

    def _next_backoff(self, backoff: float) -> float:
        """The nominal backoff after ``backoff``: 0.5 s, 1 s, 2 s... up to MAX_BACKOFF_S. It
        doubles without jitter, which applies to each wait alone (see :func:`_wait`): kept
        jittered, the jitter would compound (0.8 x 0.8 x 0.8 of the third wait)."""
        return min(self.MAX_BACKOFF_S, max(0.5, backoff * 2))

    def _retry_later(self, conn: sqlite3.Connection, op: _Op, exc: Exception) -> None:
        """The round failed at ``op`` and settles nothing more: the next waits the outbox's
        backoff, or the ``Retry-After`` asked for when that is longer."""
        self._backoff = self._next_backoff(self._backoff)
        self._retry_in = _wait(self._backoff, exc)
        self._paused = _asks_for_a_pause(exc)
        self._log_retry(conn, op, exc, self._retry_in)

    def _defer(self, conn: sqlite3.Connection, group: list[_Op], exc: Exception) -> None:
        """A candidate's PATCH was held: its patches wait the candidate's own backoff (or
        the ``Retry-After`` asked for when that is longer), the rest of the queue does not."""
        cid = group[0].candidate_id or ""
        backoff = self._next_backoff(self._deferred.get(cid, (0.0, 0.0))[1])
        wait = _wait(backoff, exc)
        self._deferred[cid] = (time.monotonic() + wait, backoff)
        self._log_retry(conn, group[0], exc, wait)

    def _log_retry(self, conn: sqlite3.Connection, op: _Op, exc: Exception, wait: float) -> None:
        conn.execute("UPDATE outbox_ops SET attempts = attempts + 1 WHERE seq = ?", (op.seq,))
        with self._counts_lock:
            self._counts["retried"] += 1
        hint = ""
        if isinstance(exc, ApiError) and exc.status in (401, 403):
            hint = "; check GRIDPATROL_API_TOKEN and the API's producer tokens"
        elif isinstance(exc, ApiError) and _misrouted(exc, op):
            hint = (
                "; the request did not reach the API's route: check GRIDPATROL_API_URL (the"
                " API's base URL, without /api/v1) and the proxy in front of the API"
            )
        log.log(
            logging.ERROR if hint else logging.WARNING,
            "outbox %s: %s %s not delivered (%s%s); retrying in %.1f s",
            self.component,
            op.kind,
            op.candidate_id or op.sha256,
            exc,
            hint,
            wait,
        )

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a producer acknowledges its input once the commit returns (the bridge its MQTT
        # messages), so the commit must survive a power cut, not only a crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _thread_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn


def _wait(backoff: float, exc: Exception) -> float:
    """The wait before the next attempt: the nominal ``backoff`` within 20 % (the jitter
    spreads producers out), or the ``Retry-After`` the API asked for when that is longer."""
    asked = exc.retry_after if isinstance(exc, ApiError) else None
    return max(backoff * random.uniform(0.8, 1.2), asked or 0.0)


def _asks_for_a_pause(exc: Exception) -> bool:
    """Whether ``exc`` is the API (or a proxy before it) asking to be left alone for a while:
    429, 503 or any answer with ``Retry-After``. The wait it gets is not cut short by a
    producer's commit, whatever else its round delivered."""
    if not isinstance(exc, ApiError):
        return False
    return exc.retry_after is not None or exc.status in (429, 503)


def _misrouted(exc: ApiError, op: _Op) -> bool:
    """Whether ``exc`` says that the request for ``op`` did not reach the API's route for it:
    a wrong ``GRIDPATROL_API_URL`` (a path doubled, another service), or a proxy that
    redirects or answers with its default backend (e.g. during a rollout), a 2xx too
    (:class:`NotTheApi`). The outbox holds
    its queue then, as for a refused token, and never fails an operation for it.

    The API itself answers none of these to an outbox's request: no redirect; no 405 (its
    routes take these methods); no 404 to ``PUT /evidence/{sha256}`` (the outbox hashes the
    bytes itself, in lowercase), ``POST /candidates`` or ``/candidates/batch``. A PATCH is
    sent only after its create was answered, and the API deletes no candidate (retention
    purges idempotency keys, never candidates), but one can still be gone: a database
    restored from a backup older than the create. So a PATCH's 404 with the API's own problem
    saying it holds no such candidate is a refusal for good; any other 404 is misrouting."""
    if isinstance(exc, NotTheApi) or 300 <= exc.status < 400 or exc.status == 405:
        return True
    if exc.status != 404:
        return False
    if op.kind != "patch":
        return True
    problem = exc.problem
    return not (
        problem.get("status") == 404 and problem.get("detail") == f"no candidate {op.candidate_id}"
    )


def _held(exc: ApiError, op: _Op) -> bool:
    """Whether the outbox keeps ``op`` (and what is queued after it) for a later round after
    ``exc``, rather than failing it for good."""
    return exc.retryable or _misrouted(exc, op)


def candidate_closed(conn: sqlite3.Connection, candidate_id: str) -> bool:
    """Whether the API has refused this candidate for good: a patch answered 410 Gone (the
    candidate was rejected, merged or closed and takes no more updates) or its create refused.
    A producer stops queueing its updates then. ``conn``: a connection to the outbox file.

    An id whose create the API answered with a candidate of another id stands for that one.
    """
    query = (
        "SELECT 1 FROM outbox_ops WHERE state = 'failed' AND candidate_id = ? AND"
        " (kind = 'create' OR (kind = 'patch' AND last_error LIKE '410 %')) LIMIT 1"
    )
    if conn.execute(query, (candidate_id,)).fetchone() is not None:
        return True
    api = api_id(conn, candidate_id)
    return api != candidate_id and conn.execute(query, (api,)).fetchone() is not None


def api_id(conn: sqlite3.Connection, candidate_id: str) -> str:
    """The API's id of the candidate a producer calls ``candidate_id``: another one when the
    API answered its create with a candidate it already held for the same event."""
    row = conn.execute(
        "SELECT server_id FROM outbox_aliases WHERE local_id = ?", (candidate_id,)
    ).fetchone()
    return str(row[0]) if row is not None else candidate_id


def _rows_for(conn: sqlite3.Connection, query: str, ids: list[str]) -> list[Any]:
    """The rows of ``query``, whose ``{marks}`` takes the placeholders of ``ids``, over all of
    ``ids``: 500 at a time, well under SQLite's limit of bound parameters."""
    rows: list[Any] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows += conn.execute(query.format(marks=",".join("?" * len(chunk))), chunk).fetchall()
    return rows


def _aliases_of(conn: sqlite3.Connection, ids: list[str]) -> dict[str, str]:
    """The recorded aliases of ``ids``, local id → the API's."""
    query = "SELECT local_id, server_id FROM outbox_aliases WHERE local_id IN ({marks})"
    return {str(local): str(server) for local, server in _rows_for(conn, query, ids)}


def _refused_creates(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Those of ``ids`` whose create the file holds failed for good: refused by the API, or
    failed unsent. Not those closed later (a patch answered 410: rejected or merged by a
    reviewer), which are candidates at the API all the same."""
    return {str(cid) for (cid,) in _rows_for(conn, REFUSED_CREATES, ids)}


# SQLite's planner takes the state index for this IN list and walks every failed row (10 ms
# per queued operation with 10,000 refusals kept): the partial index names the candidate.
REFUSED_CREATES = (
    "SELECT candidate_id FROM outbox_ops INDEXED BY outbox_ops_refused_creates"
    " WHERE kind = 'create' AND state = 'failed' AND candidate_id IN ({marks})"
)


# Where a body names candidates besides its own ``id``: ``references``, and ``alarm`` under
# these keys. Alarm ids are the alarm bridge's: it gives each alarm's candidate the alarm's id
# (alarm_bridge/candidates.py), so an alarm id is a candidate id there.
_ALARM_IDS = ("alarm_id", "previous_alarm_id")

# A run of hex digits and hyphens long enough to be a UUID, in the bytes of a stored body.
# Any spelling :func:`_canonical` accepts (any case, hyphens anywhere, braces or a ``urn:uuid:``
# prefix around it) leaves its 32 digits in one such run, bounded by a quote, brace or colon.
_HEX_RUN = re.compile(rb"[0-9A-Fa-f-]{32,}")


def _named_values(body: JsonDict) -> Iterator[str]:
    """The values in ``body`` that name candidates (see :data:`_ALARM_IDS`), as spelt there."""
    refs = body.get("references")
    if isinstance(refs, list):
        yield from (v for v in refs if isinstance(v, str))
    alarm = body.get("alarm")
    if isinstance(alarm, dict):
        yield from (v for k, v in alarm.items() if k in _ALARM_IDS and isinstance(v, str))


def _named_ids(body: JsonDict) -> list[str]:
    """The candidate ids ``body`` names, in the outbox's spelling (see :func:`_canonical`)."""
    return [_canonical(value) for value in _named_values(body)]


def _with_api_ids(body: JsonDict, aliases: Mapping[str, str]) -> JsonDict:
    """``body`` with each aliased id it names, however spelt, as the API's id; ``body`` itself
    when it names none, so its stored bytes stay as they are."""
    renames = {v: aliases[c] for v in _named_values(body) if (c := _canonical(v)) in aliases}
    if not renames:
        return body
    new = dict(body)
    refs = body.get("references")
    if isinstance(refs, list):
        renamed = [renames.get(v, v) if isinstance(v, str) else v for v in refs]
        if renamed != refs and all(isinstance(v, str) for v in renamed):
            renamed = list(dict.fromkeys(renamed))  # [local, API's] would name one twice
        new["references"] = renamed
    alarm = body.get("alarm")
    if isinstance(alarm, dict):
        new["alarm"] = {
            k: renames.get(v, v) if k in _ALARM_IDS and isinstance(v, str) else v
            for k, v in alarm.items()
        }
    return new


def _canonical(value: str) -> str:
    """A UUID in the outbox's spelling (lowercase, hyphenated); anything else as it is."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def _in_api_ids(conn: sqlite3.Connection, cid: str, body: JsonDict) -> JsonDict:
    """``body`` of candidate ``cid`` as it is queued: each id it names that has an alias as
    the API's id, and no link to a candidate whose create was refused (see
    :func:`_without_refused`)."""
    named = _named_ids(body)
    refused = _refused_creates(conn, named)
    if refused:
        body = _without_refused(cid, body, refused)
    aliases = _aliases_of(conn, named)
    return _with_api_ids(body, aliases) if aliases else body


def _without_refused(cid: str, body: JsonDict, refused: set[str]) -> JsonDict:
    """``body`` without the references, and the ``alarm.previous_alarm_id`` (null instead),
    that name a candidate of ``refused``: none of ours has that id at the API. After a 409
    (another producer's candidate with that id, or for the same event) the id is another
    producer's candidate, which ours must not be linked to."""
    new, dropped = dict(body), set[str]()
    refs = body.get("references")
    if isinstance(refs, list):
        gone = {v for v in refs if isinstance(v, str) and _canonical(v) in refused}
        dropped.update(_canonical(v) for v in gone)
        kept = [v for v in refs if not (isinstance(v, str) and v in gone)]
        if kept:
            new["references"] = kept
        elif gone:
            del new["references"]
    alarm = body.get("alarm")
    previous = alarm.get("previous_alarm_id") if isinstance(alarm, dict) else None
    if isinstance(alarm, dict) and isinstance(previous, str) and _canonical(previous) in refused:
        new["alarm"] = {**alarm, "previous_alarm_id": None}
        dropped.add(_canonical(previous))
    if not dropped:
        return body
    log.info(
        "candidate %s: no link to %s, whose create failed for good (its id may be another"
        " producer's candidate)",
        cid,
        ", ".join(sorted(dropped)),
    )
    return new


def _move_patches(conn: sqlite3.Connection, aliases: Mapping[str, str]) -> None:
    """Send the pending patches of each aliased id to the API's: one pass over the queue for
    a whole batch of aliases, not one per alias."""
    marks = ",".join("?" * len(aliases))  # at most a batch of creates: MAX_BATCH
    conn.execute(
        "UPDATE outbox_ops SET candidate_id = (SELECT server_id FROM outbox_aliases"
        " WHERE local_id = outbox_ops.candidate_id) WHERE kind = 'patch' AND state = 'pending'"
        f" AND candidate_id IN ({marks})",
        list(aliases),
    )


def _plan_rewrites(conn: sqlite3.Connection, aliased: list[tuple[_Op, str]], sent_to: int) -> None:
    """Record, in the transaction that records the aliases, the rewrite of the bodies already
    queued (see :func:`_rewrite_unsent`); later ones are rewritten as they are queued."""
    end = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox_ops").fetchone()[0]
    conn.executemany(
        "INSERT OR REPLACE INTO outbox_rewrites (local_id, server_id, create_seq, sent_to,"
        " done_to, end_seq) VALUES (?, ?, ?, ?, ?, ?)",
        [(op.candidate_id, api, op.seq, sent_to, op.seq, end) for op, api in aliased],
    )


def _finish_rewrites(conn: sqlite3.Connection, chunk: int, stop: threading.Event) -> None:
    """Run the recorded rewrites to their end, ``chunk`` bodies a transaction.

    Between two transactions producers may write, but nothing is sent: the delivery thread,
    the only sender of the file, is the one rewriting, and it finishes (after a crash too,
    before its next round) before it sends anything. An operation producers queue meanwhile
    is rewritten as it is queued: the alias was committed first. A stop between two
    transactions raises :class:`CancelledError`, which ends the delivery thread before it
    sends anything more; the next start finishes the rewrite from where it was left."""
    unfinished = conn.execute("SELECT 1 FROM outbox_rewrites LIMIT 1").fetchone() is not None
    while unfinished:
        with _write(conn):
            unfinished = _rewrite_unsent(conn, chunk)
        # A producer waiting for the write lock tries again at least every 0.1 s (SQLite's
        # busy handler): without a pause it would miss each gap and wait out the whole.
        if unfinished and stop.wait(0.15):
            raise CancelledError


def _rewrite_unsent(conn: sqlite3.Connection, chunk: int) -> bool:
    """Rewrite, in the file, the next ``chunk`` pending bodies of the recorded rewrites: each
    that names an aliased create's id names the API's instead, if its operation cannot have
    been sent yet (queued after that create, and no create of its batch; see the outbox's
    design above). Each body is read once whatever the number of aliases: one regex pass
    picks the UUID-shaped runs in its bytes, looked up by their 32 digits; only a body with
    a hit is parsed. True while some of them are left."""
    plans = {
        uuid.UUID(local).hex: (str(local), str(api), create_seq, sent_to, done_to, end_seq)
        for local, api, create_seq, sent_to, done_to, end_seq in conn.execute(
            "SELECT local_id, server_id, create_seq, sent_to, done_to, end_seq FROM outbox_rewrites"
        ).fetchall()
    }
    start = min(plan[4] for plan in plans.values())
    end = max(plan[5] for plan in plans.values())
    rows = conn.execute(
        "SELECT seq, kind, payload FROM outbox_ops WHERE state = 'pending'"
        " AND kind IN ('create', 'patch') AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        (start, end, chunk),
    ).fetchall()
    rewritten: list[tuple[bytes, int]] = []
    for seq, kind, payload in rows:
        named: dict[str, str] = {}
        for run in _HEX_RUN.findall(payload):
            plan = plans.get(run.replace(b"-", b"").lower().decode())
            if plan is not None and _unsent(plan[2:], seq, kind):
                named[plan[0]] = plan[1]
        new = _payload_in_api_ids(payload, named) if named else None
        if new is not None:
            rewritten.append((new, seq))
    conn.executemany("UPDATE outbox_ops SET payload = ? WHERE seq = ?", rewritten)
    done_to = rows[-1][0] if len(rows) == chunk else end
    conn.execute("UPDATE outbox_rewrites SET done_to = MAX(done_to, ?)", (done_to,))
    conn.execute("DELETE FROM outbox_rewrites WHERE done_to >= end_seq")
    return conn.execute("SELECT 1 FROM outbox_rewrites LIMIT 1").fetchone() is not None


def _unsent(plan: tuple[int, int, int, int], seq: int, kind: str) -> bool:
    """Whether the operation ``seq`` is one a rewrite changes: (create_seq, sent_to, done_to,
    end_seq) as in ``outbox_rewrites``."""
    create_seq, sent_to, done_to, end_seq = plan
    batched = kind == "create" and seq <= sent_to
    return create_seq < seq <= end_seq and done_to < seq and not batched


def _payload_in_api_ids(payload: bytes, aliases: Mapping[str, str]) -> bytes | None:
    """``payload`` with each of the aliased ids it names as the API's id; None when it names
    none of them (a run of its bytes can match elsewhere in a body)."""
    body: JsonDict = json.loads(payload)
    new = _with_api_ids(body, aliases)
    return None if new is body else _json(new)


def _aliased(answered: Iterable[tuple[_Op, Any]]) -> list[tuple[_Op, str]]:
    """Each create the API answered with a candidate of another id, and that id: it already
    held the body's (source.system, source_event_id) under that one and returned it (200), so
    the producer's updates must go there, not to an id it never stored."""
    aliased: list[tuple[_Op, str]] = []
    for op, answer in answered:
        if op.kind != "create" or op.candidate_id is None or not isinstance(answer, dict):
            continue
        api = str(answer.get("id") or "")
        if api and api != op.candidate_id:
            aliased.append((op, api))
    return aliased


def _json(body: JsonDict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def _encoded(body: JsonDict) -> bytes:
    """``body`` as a request carries it (httpx encodes as strictly); else
    :class:`UnsendableOperation`."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise UnsendableOperation(f"no request can carry its body: {exc}") from exc


def _queued(kind: str, candidate_id: str, body: JsonDict) -> bytes:
    """The payload a producer queues: refused at once (:class:`UnsendableOperation`) when no
    request could carry it, rather than held up in the file for ever."""
    try:
        return _encoded(body)
    except UnsendableOperation as exc:
        raise UnsendableOperation(f"{kind} of candidate {candidate_id} not queued: {exc}") from exc


def _not_sent(why: str) -> ApiError:
    """The record of an operation failed for good unsent, as its ``last_error`` keeps it:
    status 0, as no API answered."""
    return ApiError(0, {"title": "not sent", "detail": why[:1000]})


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails (SQLITE_BUSY, FULL, IOERR, a deferred constraint) can leave the
        # transaction open, holding the write lock: the thread's next transaction could not
        # begin and the other connections would wait for the lock, then fail.
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is still open, if SQLite did not already: the error that brought us
    here is the one to raise, not one of the rollback."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _round(ops: list[_Op], max_creates: int, max_bytes: int) -> list[_Op]:
    """The window cut before its ``max_creates + 1``-th create, or before the create that
    would take the creates past ``max_bytes`` (never before the first): one batch takes the
    rest."""
    creates = size = 0
    for index, op in enumerate(ops):
        if op.kind != "create":
            continue
        creates += 1
        size += len(op.payload)
        if creates > max_creates or (creates > 1 and size > max_bytes):
            return ops[:index]
    return ops


def _as_sent(conn: sqlite3.Connection, groups: list[list[_Op]]) -> tuple[list[list[_Op]], set[str]]:
    """``groups`` (a candidate's patches each) with each candidate that has a PATCH out
    without a definite answer (see ``outbox_patch_groups``) cut back to the patches of that
    PATCH, and the ids of those candidates: the retry carries the same body under the same
    key, which the API replays or applies once, and never a larger or smaller merge under a
    new key (which the API would apply beside the first, the first perhaps applied later and
    older values winning). Patches queued since wait for the next round. A candidate whose
    patches of that PATCH are not all in the window (never expected: the window holds the
    oldest pending operations) is left for a later round."""
    ids = [group[0].candidate_id for group in groups]
    if not ids:
        return groups, set()
    pinned: dict[str, set[int]] = {}
    for start in range(0, len(ids), 500):  # well under SQLite's limit of bound parameters
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT candidate_id, seqs FROM outbox_patch_groups WHERE candidate_id IN ({marks})",
            chunk,
        ).fetchall()
        pinned.update((str(cid), {int(seq) for seq in json.loads(seqs)}) for cid, seqs in rows)
    if not pinned:
        return groups, set()
    kept: list[list[_Op]] = []
    restored: set[str] = set()
    for group in groups:
        seqs = pinned.get(group[0].candidate_id or "")
        if seqs is None:
            kept.append(group)
            continue
        sent = [op for op in group if op.seq in seqs]
        if len(sent) == len(seqs):
            kept.append(sent)
            restored.add(group[0].candidate_id or "")
        elif not sent:  # settled by a version that kept no groups: nothing is out
            conn.execute(
                "DELETE FROM outbox_patch_groups WHERE candidate_id = ?", (group[0].candidate_id,)
            )
            kept.append(group)
    return kept, restored


def _pin_groups(conn: sqlite3.Connection, groups: list[list[_Op]]) -> None:
    """Record ``groups``, each a candidate's patches about to go out as one PATCH, to be sent
    again as they are until settled (see :func:`_as_sent`)."""
    conn.executemany(
        "INSERT OR REPLACE INTO outbox_patch_groups (candidate_id, seqs) VALUES (?, ?)",
        [(group[0].candidate_id, json.dumps([op.seq for op in group])) for group in groups],
    )


def _unpin_groups(conn: sqlite3.Connection, ops: list[_Op]) -> None:
    """Forget the PATCHes out for the candidates of ``ops`` once their patches are settled."""
    conn.executemany(
        "DELETE FROM outbox_patch_groups WHERE candidate_id = ?",
        [(op.candidate_id,) for op in ops if op.kind == "patch"],
    )


def _mergeable(group: list[_Op], max_bytes: int) -> list[_Op]:
    """``group`` (a candidate's patches in queue order) cut before the patch that would take
    their merged PATCH past the API's limit of evidence items (see :func:`merge_patches`:
    clean and annotated frames accumulate) or their payloads past ``max_bytes``; never before
    the first. The rest go in a later PATCH."""
    merged: JsonDict = {}
    size = 0
    for index, op in enumerate(group):
        size += len(op.payload)
        merged = merge_patches(merged, op.body())
        evidence = merged.get("evidence")
        items = len(evidence) if isinstance(evidence, list) else 0
        if index > 0 and (items > MAX_EVIDENCE_ITEMS or size > max_bytes):
            return group[:index]
    return group


def _patches_by_candidate(ops: list[_Op]) -> list[list[_Op]]:
    """The window's patches grouped by candidate, each group in queue order."""
    groups: dict[str, list[_Op]] = {}
    for op in ops:
        if op.kind == "patch" and op.candidate_id is not None:
            groups.setdefault(op.candidate_id, []).append(op)
    return list(groups.values())
