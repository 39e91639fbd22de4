"""Candidate operations: intake with idempotency, supplements, review, hand-over, the feed.

Every operation is one short database transaction; an idempotent write claims its key first
in the same transaction, so a known key is answered before any work. A request whose key
another request is running right now gets 409 at once (with one exception on PostgreSQL, see
``CandidateService.idempotent``); one that comes after that request committed, or meets a
concurrent replay of a done key, replays its stored response. A batch claims its keys in a
transaction of their own. Notifications go out after commit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from gridpatrol.api import status as sm
from gridpatrol.api.client import ID_TAKEN, merge_patches
from gridpatrol.api.db import (
    CandidateRow,
    Database,
    FeedCounterRow,
    FeedCursorRow,
    FeedRow,
    IdempotencyRow,
    MissingEvidenceRow,
)
from gridpatrol.api.evidence import EvidenceStore, EvidenceUnavailable
from gridpatrol.api.hub import Event, Hub
from gridpatrol.api.policy import SitePolicy
from gridpatrol.api.problems import Problem
from gridpatrol.api.schemas import (
    CANDIDATE_ID_PATTERN,
    REQUIRED,
    CandidateIn,
    CandidatePatch,
    ReviewIn,
    StatusIn,
    missing_elements,
)
from gridpatrol.api.settings import Principal

log = logging.getLogger(__name__)
CANDIDATE_ID_RE = re.compile(CANDIDATE_ID_PATTERN)
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x20-\x7e]{1,200}$")

Clock = Callable[[], datetime]
JsonDict = dict[str, Any]
# Fields the server owns; a producer cannot set them.
SERVER_FIELDS = frozenset(
    {
        "id",
        "status",
        "category",
        "suggested_unit",
        "hold_until",
        "arrive_by",
        "history",
        "missing_elements",
        "created_at",
        "updated_at",
        "stages",
        "merged_into",
        "review",
        "first_complete_at",
    }
)
# Server-owned fields an earlier release kept as a client sent them (as any field the schema
# does not name): refused only once the key is claimed, so that such a request's replay gets
# its stored answer.
LATER_OWNED = frozenset({"first_complete_at"})
# A new candidate may bring its own id, so an outbox can refer to it before the server has it.
CREATE_OWNED = SERVER_FIELDS - {"id"}
# A \ud800-style escape in free-form JSON (extra fields, measurements) decodes to a lone
# surrogate, which no UTF-8 text (nor the database) can hold: such a body is refused.
SURROGATES = "text must be valid Unicode (no lone surrogates)"
# An in-flight idempotency key older than this belongs to a request that died: take it over.
STALE_IN_FLIGHT = timedelta(seconds=60)
IN_FLIGHT = "a request with this Idempotency-Key is in flight"
OTHER_BODY = "this Idempotency-Key was used with another request body"
# Merge candidates for a case (GET /candidates?near=): those that occurred this close to it.
NEAR_WINDOW = timedelta(hours=24)
# Only candidates received within this of the window are read: a case is received at most
# NEAR_SKEW before it occurred (a producer's clock ahead) and at most NEAR_INTAKE_DELAY after
# (one held longer, e.g. in an outbox through an outage, is not offered: paste its id).
NEAR_SKEW = timedelta(hours=1)
NEAR_INTAKE_DELAY = timedelta(hours=1)
# A stage report's ``at`` is the platform's clock: it may run this far ahead of the server's
# (or, against the candidate's creation or a stage the server dated, behind it) before the
# report is refused as dated wrongly. More would let a dispatch dated ahead push arrive_by out
# and hide the breach.
STAGE_CLOCK_SKEW = timedelta(minutes=5)
# How much later than its last one a case's next write is stamped at least (_case_now): a
# millisecond, so that a value read back cut to milliseconds still tells two versions apart.
CASE_TIME_STEP = timedelta(milliseconds=1)
# How far ahead of this instance's clock a write is stamped at most to stay after the case's
# last one (_case_now). One write from an instance whose clock is ahead (or before an NTP step
# back) would otherwise date every later write of the case ahead, on every instance: stage
# reports refused as dated before it, arrive_by late, and an event stream's replay from its id
# missing other cases' changes. 2 s, as instances a second apart must stay in order; it must
# stay below the replay's margin (api/routers/events.py checks it).
CASE_CLOCK_LEAD = timedelta(seconds=2)
# Cases whose capped step was logged (_case_now): once per case, bounded.
_LEAD_WARNED: dict[str, None] = {}
_LEAD_WARNED_MAX = 4096
_LEAD_WARNED_LOCK = threading.Lock()


# Hot-path statements, built once.
# PostgreSQL: advance the counter, append to the feed and store the position in one statement.
_POSITION_LAST = text(
    "WITH c AS (UPDATE feed_counter SET last = last + 1 WHERE id = 1 RETURNING last),"
    " f AS (INSERT INTO feed (position, candidate_id, at) SELECT last, :cid, :at FROM c)"
    " UPDATE candidates SET feed_pos = c.last FROM c WHERE candidates.id = :cid"
)
_select_docs = select(
    CandidateRow.id, CandidateRow.source_system, CandidateRow.source_event_id, CandidateRow.doc
)
_INSERT_CANDIDATE = insert(CandidateRow)
_INSERT_FEED = insert(FeedRow)
# A posted candidate's lookup, by (has id, has natural key): rebuilding the statement per
# request cost more than running it.
_by_id = CandidateRow.id == bindparam("cid")
_by_natural = and_(
    CandidateRow.source_system == bindparam("system"),
    CandidateRow.source_event_id == bindparam("event"),
)
_LOOKUPS = {
    (True, False): _select_docs.where(_by_id),
    (False, True): _select_docs.where(_by_natural),
    (True, True): _select_docs.where(or_(_by_id, _by_natural)),
}
_doc_by_id = select(CandidateRow.doc).where(_by_id)
_ADVANCE_FEED = (
    update(FeedCounterRow)
    .where(FeedCounterRow.id == 1)
    .values(last=FeedCounterRow.last + bindparam("n"))
    .returning(FeedCounterRow.last)
)
# A claimed key gets its response (bind names differ from the columns', as SET requires).
_FINISH_KEY = (
    update(IdempotencyRow)
    .where(IdempotencyRow.key == bindparam("b_key"), IdempotencyRow.principal == bindparam("b_who"))
    .values(state="done", status_code=bindparam("b_status"), response=bindparam("b_response"))
)


def _key_lock(who: str, key: str) -> str:
    """SQL for the id of a key's transaction-level advisory lock (PostgreSQL): a 64-bit hash
    of principal and key, and of the schema, as API instances on other schemas of one
    database share the lock space. Another request holding it has the key in flight."""
    return f"hashtextextended(concat_ws(':', current_schema(), length({who}), {who}, {key}), 0)"


# PostgreSQL: claim a key only under its advisory lock, in one round trip. ``got`` false: the
# key is in flight in another transaction, whose claim may not be committed yet (the INSERT
# would wait for it); ``claimed`` false: the key is known.
_CLAIM_LOCKED = text(
    "WITH held AS MATERIALIZED (SELECT pg_try_advisory_xact_lock("
    + _key_lock("CAST(:principal AS TEXT)", "CAST(:key AS TEXT)")
    + ") AS got),"
    " claim AS (INSERT INTO idempotency (key, principal, request_hash, state, created_at)"
    " SELECT CAST(:key AS TEXT), CAST(:principal AS TEXT), CAST(:request_hash AS TEXT),"
    " 'in_flight', :created_at FROM held WHERE got ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT got, EXISTS (SELECT FROM claim) AS claimed FROM held"
)
# PostgreSQL: try-lock a batch's keys that are not done (a replay needs no lock, and 500
# locks per claim fill PostgreSQL's shared lock table soon enough); the keys whose lock
# another transaction holds. Try-locks never wait, so two batches with keys in opposite
# orders cannot deadlock on them. The CTE is materialized so that done keys are filtered out
# before any lock is tried.
_TRY_LOCK_KEYS = text(
    "WITH open AS MATERIALIZED (SELECT k FROM unnest(CAST(:keys AS TEXT[])) AS k"
    " WHERE NOT EXISTS (SELECT FROM idempotency AS i WHERE i.key = k"
    " AND i.principal = CAST(:principal AS TEXT) AND i.state = 'done'))"
    " SELECT k FROM open WHERE NOT pg_try_advisory_xact_lock("
    + _key_lock("CAST(:principal AS TEXT)", "k")
    + ")"
)


@dataclass
class Outcome:
    status: int
    doc: JsonDict
    events: list[Event] = field(default_factory=list)
    feed: bool = False
    # Candidates that get their feed position as the transaction's last statement.
    positions: list[str] = field(default_factory=list)
    # ``doc`` as stored, when it was serialized already: the response reuses it.
    text: str | None = None
    # Evidence files of ``doc`` the store did not hold when the candidate was judged.
    unheld: list[str] = field(default_factory=list)

    def json(self) -> str:
        return self.text if self.text is not None else json.dumps(self.doc, ensure_ascii=False)


def canonical_json(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON with sorted keys: what a request's hash is taken of."""
    try:
        canonical = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError as exc:
        raise Problem(422, "numbers must be finite (no NaN or Infinity)") from exc
    except RecursionError as exc:
        raise Problem(422, "the body is nested too deeply") from exc
    try:
        return canonical.encode()
    except UnicodeEncodeError as exc:
        raise Problem(422, SURROGATES) from exc


def request_hash(method: str, path: str, body: Any, canonical: bytes | None = None) -> str:
    """The hash an idempotency key's request is recognised by; ``canonical`` is
    :func:`canonical_json` of ``body``, if the caller has it."""
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical_json(body) if canonical is None else canonical)
    return digest.hexdigest()


def dump_body(parsed: CandidatePatch) -> JsonDict:
    """A parsed body as JSON values, the fields it set only."""
    try:
        return parsed.model_dump(mode="json", exclude_unset=True)
    except UnicodeEncodeError as exc:  # a lone surrogate in an object key
        raise Problem(422, SURROGATES) from exc
    except (ValueError, RecursionError) as exc:  # nested too deeply to serialize
        # A fixed detail: the serializer's own message names its internals, not the body.
        raise Problem(422, "the body is nested too deeply to be stored as JSON") from exc


def iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _event(kind: str, doc: JsonDict) -> Event:
    source = doc.get("source") or {}
    return (
        kind,
        {
            "id": doc["id"],
            "status": doc["status"],
            "type": doc.get("type"),
            "camera_id": source.get("camera_id"),
            "sensor_id": source.get("sensor_id"),
            "created_at": doc["created_at"],
            "updated_at": doc["updated_at"],
        },
    )


class _KeyTaken(Exception):
    """The idempotency key changed hands since it was read: roll back and look again."""


class _BatchItem(NamedTuple):
    """A batch item that can be claimed."""

    position: int  # in the request
    key: str
    digest: str  # the request hash
    parsed: CandidateIn
    # A server-owned field an earlier release kept (LATER_OWNED): refused only where a single
    # POST's would be, once the key is looked up, so that a replay gets its stored answer.
    refusal: Problem | None = None


@dataclass
class _BatchClaims:
    """What claiming a batch's keys made of its items."""

    # The items whose keys were claimed, to be created.
    claimed: list[_BatchItem] = field(default_factory=list)
    # (item, earlier item with the same key and body): answered as that one.
    repeats: list[tuple[int, int]] = field(default_factory=list)
    # Items answered without work: replays and refusals.
    answers: dict[int, JsonDict] = field(default_factory=dict)
    # The replayed answers (status, body).
    replays: list[tuple[int, JsonDict]] = field(default_factory=list)

    def refuse(self, index: int, exc: Problem) -> None:
        self.answers[index] = problem_item(exc)

    def repeat(self, index: int, digest: str, first: tuple[int, str]) -> None:
        """An item with the key of the earlier item ``first`` (index, request hash)."""
        if first[1] == digest:
            self.repeats.append((index, first[0]))
        else:
            self.refuse(index, Problem(422, OTHER_BODY))

    def add(self, item: _BatchItem, replay: tuple[int, JsonDict] | None) -> None:
        """An item whose key was claimed (no ``replay``) or answered with a stored response."""
        if replay is None:
            self.claimed.append(item)
        else:
            self.answers[item.position] = {"status": replay[0], "body": replay[1]}
            self.replays.append(replay)


class KeysInFlight:
    """The idempotency keys, per principal, of the requests this process runs right now.

    A request that finds its key here answers 409 at once, where it would otherwise wait for
    the first one's claim (its row lock on PostgreSQL, the write lock on SQLite) and replay it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[tuple[str, str]] = set()

    @contextlib.contextmanager
    def hold(self, who: str, keys: Iterable[str]) -> Iterator[set[str]]:
        """Hold those of ``keys`` that no other request holds until the block ends; yields
        the others. All are looked at under one lock, so two batches of this process with the
        same keys cannot each get a part; across processes (and for overlapping key sets) a
        batch may meet some of its keys in flight and not others."""
        wanted = {(who, key) for key in keys}
        with self._lock:
            busy = wanted & self._held
            mine = wanted - busy
            self._held |= mine
        try:
            yield {key for _who, key in busy}
        finally:
            with self._lock:
                self._held -= mine


def _stored_text(row: IdempotencyRow, digest: str, now: datetime) -> tuple[int, str] | None:
    """A key's stored response as JSON text, or None for a stale claim; 422 / 409 otherwise."""
    if row.request_hash != digest:
        raise Problem(422, OTHER_BODY)
    if row.state == "done" and row.status_code is not None:
        return row.status_code, row.response or "{}"
    if now - row.created_at < STALE_IN_FLIGHT:
        raise Problem(409, IN_FLIGHT)
    return None


def _done(row: IdempotencyRow | None) -> bool:
    return row is not None and row.state == "done" and row.status_code is not None


def _done_text(row: IdempotencyRow | None, digest: str) -> tuple[int, str]:
    """The answer to a key another request holds right now (its registry entry or advisory
    lock): the committed ``row``'s stored response if the key is done, as that request is
    then a replay too (422 for another body, as :func:`_stored_text`); 409 otherwise."""
    if row is None or not _done(row):
        raise Problem(409, IN_FLIGHT)
    stored = _stored_text(row, digest, row.created_at)
    assert stored is not None  # a done row always has its response
    return stored


def _stored_response(
    row: IdempotencyRow, digest: str, now: datetime
) -> tuple[int, JsonDict] | None:
    """:func:`_stored_text`, parsed."""
    stored = _stored_text(row, digest, now)
    return None if stored is None else (stored[0], json.loads(stored[1]))


def _columns(row: CandidateRow) -> JsonDict:
    """A row's column values, for a Core insert that skips the ORM's unit of work."""
    return {column.key: getattr(row, column.key) for column in CandidateRow.__table__.columns}


def _stored_docs(
    session: Session, natural: list[tuple[str, str] | None], items: list[CandidateIn]
) -> tuple[dict[tuple[str, str], JsonDict], dict[str, JsonDict]]:
    """Documents already stored under the bodies' natural keys and under their ids, one
    statement each, so a batch of retries costs two queries, not two per body."""
    by_key: dict[tuple[str, str], JsonDict] = {}
    by_id: dict[str, JsonDict] = {}
    wanted = [k for k in natural if k is not None]
    if wanted:
        pair = tuple_(CandidateRow.source_system, CandidateRow.source_event_id)
        found = session.execute(
            select(
                CandidateRow.source_system, CandidateRow.source_event_id, CandidateRow.doc
            ).where(pair.in_(wanted))
        )
        by_key = {(str(a), str(b)): json.loads(doc) for a, b, doc in found}
    ids = [str(p.id) for p in items if p.id is not None]
    if ids:
        found_ids = session.execute(
            select(CandidateRow.id, CandidateRow.doc).where(CandidateRow.id.in_(ids))
        )
        by_id = {cid: json.loads(doc) for cid, doc in found_ids}
    return by_key, by_id


def _natural_key(parsed: CandidateIn) -> tuple[str, str] | None:
    source = parsed.source
    if source is not None and source.system and source.source_event_id:
        return source.system, source.source_event_id
    return None


def _doc_natural_key(doc: JsonDict) -> tuple[str, str] | None:
    source = doc.get("source") or {}
    system, event = source.get("system"), source.get("source_event_id")
    return (system, event) if system and event else None


def refuse_source_rewrite(cid: str, stored: JsonDict, doc: JsonDict) -> None:
    """422 when a patch changes or removes a ``(source.system, source_event_id)`` the candidate
    has both of: a re-post of its event finds it by that pair, and would otherwise make a
    second candidate. Filling in a part it lacks, or repeating it, passes. 422, like every
    refusal of the request itself, is final for a producer's outbox (it retries a 409)."""
    key = _doc_natural_key(stored)
    if key is None:
        return
    source = doc.get("source") or {}
    fields = [
        f"source.{name}"
        for name, value in zip(("system", "source_event_id"), key, strict=True)
        if source.get(name) != value
    ]
    if fields:
        raise Problem(
            422,
            f"candidate {cid} is known by its (source.system, source_event_id):"
            f" a patch cannot change or remove {', '.join(fields)}",
        )


def id_taken(cid: str) -> Problem:
    """A client-supplied id that names another event's candidate: refused for good (the
    ``type`` tells a producer's outbox not to retry it, as it retries other 409s)."""
    return Problem(
        409,
        f"candidate {cid} exists with another (source.system, source_event_id)",
        type=ID_TAKEN,
    )


def check_item_key(key: object) -> str:
    """A batch item's ``idempotency_key``, or a 400 for that item."""
    if key is None or key == "":
        raise Problem(400, "a batch item needs its idempotency_key")
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise Problem(400, "an idempotency_key is 1-200 printable ASCII characters")
    return key


def check_key(key: str | None) -> str:
    if not key:
        raise Problem(400, "the Idempotency-Key header is required")
    if not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise Problem(400, "an Idempotency-Key is 1-200 printable ASCII characters")
    return key


def parse_candidate(body: Any) -> CandidateIn:
    if not isinstance(body, dict):
        raise Problem(422, "the candidate must be a JSON object")
    try:
        return CandidateIn.model_validate(body)
    except ValidationError as exc:
        raise validation_problem(exc) from exc


def refuse_server_fields(body: JsonDict, owned: frozenset[str], what: str) -> None:
    """422 when ``body`` sets a field in ``owned``, as PATCH and POST both refuse them."""
    found = sorted(owned & body.keys())
    if found:
        raise Problem(422, f"the server owns {', '.join(found)}; {what} cannot set them")


def _refusal(body: JsonDict, owned: frozenset[str], what: str) -> Problem | None:
    """:func:`refuse_server_fields`' refusal of ``body``, kept for later; None if none."""
    try:
        refuse_server_fields(body, owned, what)
    except Problem as exc:
        return exc
    return None


def refuse_nulls(body: JsonDict) -> None:
    """422 when a PATCH sets a top-level element to null (one left out stays as it is). Not
    judged here: a field inside an element may be null (the alarm bridge sends
    ``alarm.first_seen: null``), a list other than evidence and references (which accumulate)
    is replaced, ``[]`` emptying it, and fields the schema does not name are kept as sent, null
    or not. A PATCH taking a required element from a visible candidate is refused apart
    (:meth:`CandidateService._lost_elements`)."""
    nulls = sorted(
        name for name in CandidatePatch.model_fields if name in body and body[name] is None
    )
    if nulls:
        raise Problem(
            422,
            f"a patch cannot remove elements: {', '.join(nulls)} cannot be null"
            " (leave an element out to keep it)",
        )


def problem_item(exc: Problem) -> JsonDict:
    """A refused batch item: its status and problem body."""
    body = {
        "type": "about:blank",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        **exc.extra,
    }
    return {"status": exc.status, "body": body}


def validation_problem(exc: ValidationError) -> Problem:
    errors = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    return Problem(422, "the candidate does not match the schema", errors=errors)


class CandidateService:
    def __init__(
        self,
        db: Database,
        store: EvidenceStore,
        policy: SitePolicy,
        clock: Clock,
        hub: Hub,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        self.db = db
        # A batch item's limit, as the app's BodyLimit applies it to a single POST's body.
        self.max_body_bytes = max_body_bytes
        self.store = store
        self.policy = policy
        self.clock = clock
        self.hub = hub
        self._pg = db.dialect == "postgresql"
        dialect_insert = postgresql.insert if self._pg else sqlite.insert
        self._insert_record = (
            dialect_insert(IdempotencyRow).on_conflict_do_nothing().returning(IdempotencyRow.key)
        )
        self._insert_cursor = (
            dialect_insert(FeedCursorRow).on_conflict_do_nothing().returning(FeedCursorRow.name)
        )
        self._insert_missing = dialect_insert(MissingEvidenceRow).on_conflict_do_nothing()
        self._in_flight = KeysInFlight()

    # -- idempotency -------------------------------------------------------------------------

    def idempotent(
        self, who: Principal, key: str | None, digest: str, work: Callable[[Session], Outcome]
    ) -> tuple[int, str]:
        """Run ``work`` once per (key, principal); replay the stored response afterwards.

        Returns the status and the response body as JSON text.

        The key is claimed first, in the work's transaction, so a known key is answered before
        any work is tried: with its stored response, or 422 / 409, whatever became of the
        candidate since. The claim is one INSERT ... ON CONFLICT DO NOTHING. A concurrent
        request with the same key answers 409 at once instead of waiting for the claim: this
        process holds the key in :class:`KeysInFlight` from before the transaction to its
        end, and on PostgreSQL the claim takes the key's advisory lock first (without
        waiting), so that a request in another API process meets it too. A request that comes
        after the first committed replays its response; after it rolled back, claims the key
        itself (work that fails takes its claim back with it). SQLite API processes sharing
        one file do not see each other's keys in flight: there the second waits for the write
        lock and then replays the first.

        A request that meets the key held (registry or advisory lock) reads the key's
        committed row: if the key is done, the holder is a replay too, and so is this one.

        Not at once in one case (PostgreSQL): a batch claims its keys in a transaction of
        their own and finishes them in its work transaction, which holds no advisory lock. A
        request in another API process that comes after the batch's finishing UPDATE gets the
        key's lock, and its INSERT ... ON CONFLICT waits for that row until the batch commits;
        it then replays the batch's answer (the right answer, only not at once).

        After an internal retry (IntegrityError, deadlock, a dropped connection) the request
        itself may get 409: another request may have taken the key in between.
        """
        key = check_key(key)
        with self._in_flight.hold(who.name, [key]) as busy:
            if busy:
                outcome: tuple[int, str] | Outcome = self._replay_done(who.name, key, digest)
            else:
                outcome = self._run_once(who, key, digest, work)
        if not isinstance(outcome, Outcome):
            # A replay: a file its candidate waited for may have landed since, while the
            # first answer's own look after commit failed.
            self._heal(who, _replayed(outcome))
            return outcome
        # After the transaction: the work is committed, so nothing here may fail the answer or
        # run the work again (a retry would replay it and skip the look).
        self._notify(outcome)
        self._recheck_evidence(who, [outcome])
        return outcome.status, outcome.json()

    def _run_once(
        self, who: Principal, key: str, digest: str, work: Callable[[Session], Outcome]
    ) -> tuple[int, str] | Outcome:
        """Claim the key and run ``work`` in one transaction: the stored response (status,
        JSON text) of a known key, else the committed outcome."""
        for attempt in range(3):
            try:
                with self.db.write() as session:
                    stored = self._claim(session, who.name, key, digest)
                    if stored is not None:
                        return stored
                    outcome = work(session)
                    self._finish(session, who.name, key, outcome)
                    self._assign_last(session, outcome.positions)
                return outcome
            except _KeyTaken:
                continue  # the key changed hands meanwhile: look again
            except DBAPIError as exc:
                # Run again when a concurrent request inserted the same candidate first
                # (PostgreSQL only; the next attempt finds it), when PostgreSQL chose this
                # transaction as a deadlock's victim, or when the database had dropped the
                # pooled connection (the pool is fresh now). Nothing was committed.
                if attempt == 2 or not (
                    isinstance(exc, IntegrityError) or _deadlock(exc) or exc.connection_invalidated
                ):
                    raise
                log.info("key %s of %s: %s; running it again", key, who.name, type(exc).__name__)
        raise Problem(409, IN_FLIGHT)

    def _replay_done(self, who: str, key: str, digest: str) -> tuple[int, str]:
        """A key another request of this process holds: its committed response when the key
        is done (that request replays it too), else 409 (:func:`_done_text`)."""
        with self.db.read() as session:
            return _done_text(session.get(IdempotencyRow, (key, who)), digest)

    def _claim(self, session: Session, who: str, key: str, digest: str) -> tuple[int, str] | None:
        """Claim the key in ``session``'s transaction (None) or return its stored response;
        422 / 409 as :func:`_stored_text` judges a known key."""
        now = _locked_now(session, self.clock)
        values = {
            "key": key,
            "principal": who,
            "request_hash": digest,
            "state": "in_flight",
            "status_code": None,
            "response": None,
            "created_at": now,
        }
        got, claimed = self._insert_claim(session, values)
        if claimed:
            return None
        row = session.get(IdempotencyRow, (key, who))
        if not got:
            return _done_text(row, digest)
        if row is None:
            raise _KeyTaken  # a failed batch released it after the insert met it (PostgreSQL)
        stored = _stored_text(row, digest, now)
        if stored is None:
            self._take_over(session, who, key, row.created_at, now)
        return stored

    def _insert_claim(self, session: Session, values: JsonDict) -> tuple[bool, bool]:
        """Insert a key's claim: whether the key's advisory lock was free (PostgreSQL; else
        another transaction holds the key, which is in flight unless its row is done) and
        whether the key was new (nothing is inserted without the lock)."""
        conn = session.connection()
        if not self._pg:
            return True, conn.execute(self._insert_record, values).first() is not None
        got, claimed = conn.execute(_CLAIM_LOCKED, values).one()
        return bool(got), bool(claimed)

    @staticmethod
    def _take_over(
        session: Session, who: str, key: str, claimed_at: datetime, now: datetime
    ) -> None:
        """Take over a stale claim made at ``claimed_at``; :class:`_KeyTaken` if another
        request took it over or finished it since it was read.

        A conditional UPDATE, as the claim was read without a lock: only one taker wins. Under
        this version's key locks no two takers meet; a worker of an older version (during a
        rolling upgrade) may, and then waits for the first and finds the row changed.
        """
        taken = session.connection().execute(
            update(IdempotencyRow)
            .where(
                IdempotencyRow.key == key,
                IdempotencyRow.principal == who,
                IdempotencyRow.state == "in_flight",
                IdempotencyRow.created_at == claimed_at,
            )
            .values(created_at=now)
        )
        if taken.rowcount != 1:
            raise _KeyTaken

    @staticmethod
    def _finish(session: Session, who: str, key: str, outcome: Outcome) -> None:
        """Store the response with the key's claim."""
        values = {"b_key": key, "b_who": who, "b_status": outcome.status}
        session.connection().execute(_FINISH_KEY, {**values, "b_response": outcome.json()})

    def _claim_in(
        self,
        session: Session,
        who: str,
        item: _BatchItem,
        known: dict[str, IdempotencyRow],
    ) -> tuple[int, JsonDict] | None:
        """Claim a batch item's key (None) or return its stored response; raise 422 / 409,
        or the item's ``refusal`` where its key would be claimed (as a single POST's work
        refuses it, taking its claim back).

        ``known`` holds the rows of the batch's keys, loaded in one query.
        """
        key, digest = item.key, item.digest
        row = known.get(key)
        now = self.clock()
        if row is None:
            if item.refusal is not None:
                raise item.refusal
            session.add(
                IdempotencyRow(
                    key=key, principal=who, request_hash=digest, state="in_flight", created_at=now
                )
            )
            return None
        stored = _stored_response(row, digest, now)
        if stored is None:
            if item.refusal is not None:
                raise item.refusal
            self._take_over(session, who, key, row.created_at, now)
        return stored

    def _release(self, who: str, keys: list[str]) -> None:
        with self.db.write() as session:
            session.execute(
                delete(IdempotencyRow).where(
                    IdempotencyRow.principal == who, IdempotencyRow.key.in_(keys)
                )
            )

    def _notify(self, outcome: Outcome) -> None:
        self.hub.publish(outcome.events)
        if outcome.feed:
            self.hub.feed_changed()

    # -- intake ------------------------------------------------------------------------------

    def create(self, who: Principal, key: str | None, parsed: CandidateIn) -> tuple[int, str]:
        body = dump_body(parsed)
        refuse_server_fields(body, CREATE_OWNED - LATER_OWNED, "a new candidate")
        digest = request_hash("POST", "/candidates", body)

        def work(session: Session) -> Outcome:
            # Judged once the key is claimed: a create an earlier release accepted with this
            # field replays its answer (the 422 takes the claim back with it).
            refuse_server_fields(body, LATER_OWNED, "a new candidate")
            return self._create(session, who, parsed, body=body)

        return self.idempotent(who, key, digest, work)

    def batch(self, who: Principal, items: list[tuple[Any, Any, int]]) -> list[JsonDict]:
        """Create many candidates: one transaction claims the keys, one does the work.
        ``items``: each item's key, body and the body's bytes as the request carried it.

        Each item's key is held in :class:`KeysInFlight` and, on PostgreSQL, by its advisory
        lock while the keys are claimed (then by its committed claim): an item whose key
        another request runs right now answers 409, the others go on.
        """
        results: list[JsonDict | None] = [None] * len(items)
        valid = self._batch_items(items, results)
        with self._in_flight.hold(who.name, [item.key for item in valid]) as busy:
            claims = self._claim_batch(who, valid, busy, results)
            outcomes = self._create_claimed(who, claims.claimed)
        for (index, *_), outcome in zip(claims.claimed, outcomes, strict=True):
            results[index] = {"status": outcome.status, "body": outcome.doc}
        for index, first in claims.repeats:
            results[index] = results[first]
        self._notify(
            Outcome(207, {}, [e for o in outcomes for e in o.events], any(o.feed for o in outcomes))
        )
        self._recheck_evidence(who, outcomes)
        self._heal(who, claims.replays)
        return [r for r in results if r is not None]

    def _batch_items(
        self, items: list[tuple[Any, Any, int]], results: list[JsonDict | None]
    ) -> list[_BatchItem]:
        """The items that can be claimed; the refusals of the others go to ``results``."""
        valid: list[_BatchItem] = []
        for index, (key, body, size) in enumerate(items):
            try:
                # First, as the app's BodyLimit refuses a single POST before reading it, and
                # by the body's bytes as sent, as that limit counts them (a re-encoding may
                # write numbers, escapes and spaces otherwise): an item is refused where the
                # same bytes posted alone (as the outbox sends a lone create) would be.
                if size > self.max_body_bytes:
                    limit = self.max_body_bytes
                    raise Problem(413, f"a candidate body is limited to {limit} bytes")
                parsed = parse_candidate(body)
                body_json = dump_body(parsed)
                refuse_server_fields(body_json, CREATE_OWNED - LATER_OWNED, "a new candidate")
                digest = request_hash("POST", "/candidates", body_json)
                refusal = _refusal(body_json, LATER_OWNED, "a new candidate")
                valid.append(_BatchItem(index, check_item_key(key), digest, parsed, refusal))
            except Problem as exc:
                results[index] = problem_item(exc)
        return valid

    def _create_claimed(self, who: Principal, claimed: list[_BatchItem]) -> list[Outcome]:
        """Create the claimed items' candidates and store their answers with the keys; the
        claims are released if that fails."""
        if not claimed:
            return []
        keys = [item.key for item in claimed]
        try:
            try:
                with self.db.write() as session:
                    outcomes = self._create_many(session, who, [item.parsed for item in claimed])
                    self._finish_many(session, who.name, keys, outcomes)
            except IntegrityError:
                # A concurrent request created one of these: go one by one (PostgreSQL only).
                with self.db.write() as session:
                    outcomes = [
                        self._create(session, who, item.parsed, guarded=True) for item in claimed
                    ]
                    self._finish_many(session, who.name, keys, outcomes)
        except BaseException:
            self._release(who.name, keys)
            raise
        return outcomes

    def _claim_batch(
        self,
        who: Principal,
        valid: list[_BatchItem],
        busy: set[str],
        results: list[JsonDict | None],
    ) -> _BatchClaims:
        """Claim every key of a batch in one transaction; fill in replays and refusals.

        The keys in ``busy`` are held by another request of this process: their items replay
        the key's committed response if it is done, else get 409.
        """
        # Keys all held elsewhere need no write: their items are answered from a read.
        claim = self.db.write if any(item.key not in busy for item in valid) else self.db.read
        for _attempt in range(5):
            claims = _BatchClaims()
            try:
                if valid:
                    with claim() as session:
                        self._claim_keys(session, who.name, valid, busy, claims)
            except (IntegrityError, _KeyTaken):
                continue  # a concurrent request claimed one of the keys first: look again
            except DBAPIError as exc:
                # A deadlock PostgreSQL broke by rolling this claim back: nothing was claimed,
                # look again. The try-locks rule out deadlocks between claims of this
                # version; the retry remains for workers of an older version (which claim
                # without them) during a rolling upgrade.
                if not _deadlock(exc):
                    raise
                continue
            for index, answer in claims.answers.items():
                results[index] = answer
            claims.claimed.sort(key=lambda item: item.position)
            return claims
        raise Problem(409, IN_FLIGHT)

    def _claim_keys(
        self,
        session: Session,
        who: str,
        todo: list[_BatchItem],
        busy: set[str],
        claims: _BatchClaims,
    ) -> None:
        """:meth:`_claim_batch`'s transaction: the items' keys, claimed into ``claims``.

        On PostgreSQL the keys not in ``busy`` and not done yet are try-locked first, then
        read. Keys held elsewhere (``busy`` in this process, locked by another transaction)
        replay if done, else get 409. The keys are claimed in key order, whatever the items'
        order, as claims of an older version (during a rolling upgrade) take no try-locks and
        could deadlock otherwise.
        """
        keys = sorted({item.key for item in todo})
        held = busy | self._locked_elsewhere(session, who, [k for k in keys if k not in busy])
        found = select(IdempotencyRow).where(
            IdempotencyRow.principal == who, IdempotencyRow.key.in_(keys)
        )
        known = {row.key: row for row in session.scalars(found)}
        # The item that claimed or replayed each key. A refused item is not recorded: its
        # key is left as it was, so a later item with it is judged as its single POST would be.
        seen: dict[str, tuple[int, str]] = {}
        # By key, then item: the first item of a repeated key stays the first.
        for item in sorted(todo, key=lambda v: (v.key, v.position)):
            index, key, digest = item.position, item.key, item.digest
            if key in held:
                try:
                    stored = _done_text(known.get(key), digest)
                except Problem as exc:
                    claims.refuse(index, exc)
                    continue
                claims.add(item, (stored[0], json.loads(stored[1])))
            elif key in seen:
                claims.repeat(index, digest, seen[key])
            else:
                try:
                    replay = self._claim_in(session, who, item, known)
                except Problem as exc:
                    claims.refuse(index, exc)
                    continue
                seen[key] = (index, digest)
                claims.add(item, replay)

    def _locked_elsewhere(self, session: Session, who: str, keys: list[str]) -> set[str]:
        """Take the advisory locks (PostgreSQL) of the keys that are not done for the claim's
        transaction; the keys another transaction holds, which are in flight in another API
        process unless they are done by now."""
        if not self._pg or not keys:
            return set()
        found = session.connection().execute(_TRY_LOCK_KEYS, {"keys": keys, "principal": who})
        return set(found.scalars())

    def _create(
        self,
        session: Session,
        who: Principal,
        parsed: CandidateIn,
        guarded: bool = False,
        body: JsonDict | None = None,
    ) -> Outcome:
        """Insert one candidate, or return the one its id or natural key already names.

        A concurrent insert of the same id or natural key (PostgreSQL only; SQLite's write
        lock, held since the lookup, rules that out) fails with IntegrityError, which aborts
        the transaction: :meth:`idempotent` then runs the request again and finds the winner.
        ``guarded`` instead contains the failure in a savepoint, for the batch's one-by-one
        fallback; rolling back the savepoint also takes back the feed position. ``body`` is
        ``parsed`` dumped already, if the caller has it.
        """
        try:
            existing = self._existing(session, parsed)
        except Problem as exc:
            if not guarded:
                raise
            return Outcome(exc.status, problem_item(exc)["body"])
        if existing is not None:
            return Outcome(200, json.loads(existing), text=existing)
        cid = str(parsed.id or uuid.uuid4())
        # The lookup above ran no statement when the body has neither id nor natural key.
        now = _locked_now(session, self.clock)
        row, outcome = self._new(who, parsed, cid, now, body)
        doc = outcome.doc
        # On PostgreSQL the position is assigned by the transaction's last statement: the
        # feed counter's row lock is then held only from there to the commit.
        last: list[CandidateRow] | None = [] if self._pg and not guarded else None
        guard = session.begin_nested() if guarded else contextlib.nullcontext()
        try:
            with guard:
                if not doc["missing_elements"]:
                    self._enter_review(session, row, doc, now, outcome, last)
                outcome.text = self._save(row, doc, now)
                session.connection().execute(_INSERT_CANDIDATE, [_columns(row)])
                self._wait_for_evidence(session, [outcome])
                outcome.positions = [r.id for r in last or []]
        except IntegrityError:
            if not guarded:
                raise
            try:
                found = self._existing(session, parsed, cid)
            except Problem as exc:
                return Outcome(exc.status, problem_item(exc)["body"])
            if found is None:
                raise
            return Outcome(200, json.loads(found), text=found)
        log.info(
            "candidate %s created: %s %s",
            cid,
            doc["status"],
            doc.get("type"),
            extra={"candidate_id": cid, "status": doc["status"], "principal": who.name},
        )
        outcome.events.insert(0, _event("candidate.created", doc))
        return outcome

    @staticmethod
    def _existing(session: Session, parsed: CandidateIn, cid: str | None = None) -> str | None:
        """The stored document with the body's natural key, else the one with its id.

        409 (:func:`id_taken`) when the id names a candidate of another natural key.
        """
        cid = str(parsed.id) if parsed.id is not None else cid
        natural = _natural_key(parsed)
        lookup = _LOOKUPS.get((cid is not None, natural is not None))
        if lookup is None:
            return None
        system, event = natural or (None, None)
        params = {"cid": cid, "system": system, "event": event}
        # Core on the connection: the ORM's result processing is not needed for four columns.
        rows = session.connection().execute(lookup, params).all()
        for found, found_system, found_event, _doc in rows:
            if found == cid and (found_system, found_event) != (system, event):
                raise id_taken(cid)
        by_natural = [doc for found, *_key, doc in rows if found != cid]
        docs: list[str] = by_natural or [doc for *_found, doc in rows]
        return docs[0] if docs else None

    def _new(
        self,
        who: Principal,
        parsed: CandidateIn,
        cid: str,
        now: datetime,
        body: JsonDict | None = None,
    ) -> tuple[CandidateRow, Outcome]:
        dumped = parsed.model_dump(mode="json", exclude_unset=True) if body is None else body
        fields = {k: v for k, v in dumped.items() if k != "id"}
        doc = {"id": cid, **fields, "created_at": now.isoformat(), "status": "incomplete"}
        doc["history"] = [{"at": now.isoformat(), "who": who.name, "action": "created"}]
        row = CandidateRow(id=cid, created_at=now, updated_at=now, status="incomplete", doc="")
        unheld = self._derive(doc)
        return row, Outcome(201, doc, unheld=unheld)

    def _create_many(
        self, session: Session, who: Principal, items: list[CandidateIn]
    ) -> list[Outcome]:
        """:meth:`_create` for many bodies with a fixed number of statements."""
        now = _locked_now(session, self.clock)
        natural = [_natural_key(p) for p in items]
        by_key, by_id = _stored_docs(session, natural, items)
        outcomes: list[Outcome] = []
        rows: list[CandidateRow] = []
        visible: list[CandidateRow] = []
        with session.no_autoflush:
            for parsed, key in zip(items, natural, strict=True):
                named = by_id.get(str(parsed.id)) if parsed.id is not None else None
                if named is not None and _doc_natural_key(named) != key:
                    outcomes.append(Outcome(409, problem_item(id_taken(named["id"]))["body"]))
                    continue
                earlier = (by_key.get(key) if key else None) or named
                if earlier is not None:
                    outcomes.append(Outcome(200, earlier))
                    continue
                row, outcome = self._new(who, parsed, str(parsed.id or uuid.uuid4()), now)
                if not outcome.doc["missing_elements"]:
                    self._enter_review(session, row, outcome.doc, now, outcome, visible)
                outcome.text = self._save(row, outcome.doc, now)
                outcome.events.insert(0, _event("candidate.created", outcome.doc))
                rows.append(row)
                outcomes.append(outcome)
                by_id[row.id] = outcome.doc
                if key is not None:
                    by_key[key] = outcome.doc
            if visible:
                self._assign_positions(session, visible, now)
            session.add_all(rows)
            session.flush()
            self._wait_for_evidence(session, [o for o in outcomes if o.status == 201])
        log.info(
            "%d candidate(s) created in a batch: %s",
            len(rows),
            " ".join(r.id for r in rows),
            extra={"candidate_ids": [r.id for r in rows], "principal": who.name},
        )
        return outcomes

    def _finish_many(
        self, session: Session, who: str, keys: list[str], outcomes: list[Outcome]
    ) -> None:
        if not keys:
            return
        session.connection().execute(
            _FINISH_KEY,
            [
                {"b_key": key, "b_who": who, "b_status": o.status, "b_response": o.json()}
                for key, o in zip(keys, outcomes, strict=True)
            ],
        )

    def patch(
        self, who: Principal, cid: str, key: str | None, parsed: CandidatePatch
    ) -> tuple[int, str]:
        body = dump_body(parsed)
        refuse_server_fields(body, SERVER_FIELDS - LATER_OWNED, "a patch")
        digest = request_hash("PATCH", f"/candidates/{cid}", body)
        return self.idempotent(who, key, digest, lambda s: self._patch(s, who, cid, parsed))

    def _patch(self, session: Session, who: Principal, cid: str, parsed: CandidatePatch) -> Outcome:
        changes = parsed.model_dump(mode="json", exclude_unset=True)
        # Judged once the key is claimed, not before: a key whose request an earlier release
        # accepted replays its answer (the 422 takes the claim back with it), as does one that
        # set a field the server owns only since.
        refuse_nulls(changes)
        refuse_server_fields(changes, LATER_OWNED, "a patch")
        row = self._load(session, cid)
        if row.status not in sm.PATCHABLE:
            # 410, not 409: the refusal is final, so an outbox must not retry it.
            raise Problem(410, f"candidate {cid} is {row.status}; it takes no more updates")
        stored = json.loads(row.doc)
        now = _case_now(self.clock(), stored)
        before = row.status
        doc = merge_patches(stored, changes)
        unheld = self._derive(doc)
        if doc == stored:
            # Nothing changes (a producer sent what the candidate has): no history entry,
            # and no new feed position, which is for a visible change.
            return Outcome(200, stored, text=row.doc)
        lost = self._lost_elements(stored, doc) if before in sm.VISIBLE else []
        if lost:
            # The platform has the case already: it must not get one without these.
            raise Problem(
                422, f"candidate {cid} is {before}: a patch cannot take away its {', '.join(lost)}"
            )
        # Judged after the key, as the null check: a replay of a rewrite an earlier release
        # accepted gets its stored answer.
        refuse_source_rewrite(cid, stored, doc)
        outcome = Outcome(200, doc, unheld=unheld)
        # A routine update (a detector's dwell time or latest frame, an alarm repeat) changes
        # no required element: its history entry folds into the one before it.
        answered = sm.answers_return(stored, doc, REQUIRED) or self._completes_return(stored, doc)
        if before in ("incomplete", "returned", "new"):
            new = sm.after_supplement(before, not doc["missing_elements"], answered)
            if before == "new" and new != before and _first_complete(doc) is None:
                # Stored as new before the time was recorded: it entered review, and keeps
                # its evidence if it goes back to incomplete (_had_evidence).
                doc["first_complete_at"] = now.isoformat()
            if new != before:
                self._history(doc, now, who.name, "supplemented", fields=sorted(changes))
            else:
                self._updated(doc, now, who.name, sorted(changes), routine=not answered)
            doc["status"] = new
            # Entering review, or waiting in it and patched to a type the policy confirms by
            # itself: judged as a fresh post would be, night hold included. A case of a type
            # added to auto_confirm since it was queued stays for its reviewer: a routine
            # update must not take it from the queue when its unchanged twin stays.
            retyped = doc.get("type") != stored.get("type")
            if new == "new" and (
                before != "new" or (retyped and self.policy.auto_confirms(doc.get("type")))
            ):
                self._enter_review(session, row, doc, now, outcome)
            self._wait_for_evidence(session, [outcome])
            if _waiting(stored) and not _waiting(doc):
                self._stop_waiting(session, [cid])
        else:
            self._updated(doc, now, who.name, sorted(changes), routine=not answered)
            if row.feed_pos is not None:  # visible already: the platform sees the change
                self._assign_positions(session, [row], now)
                outcome.feed = True
            elif (
                row.hold_until is not None
                and self.policy.hold_until(doc.get("urgency"), now) is None
            ):
                # Held for the night, and urgent now (or the night is over): visible at once.
                self._history(doc, now, "policy", "released")
                self._make_visible(session, row, doc, now, outcome)
        outcome.text = self._save(row, doc, now)
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError as exc:
            # 422, not 409: the request itself is refused, and an outbox retries a 409.
            raise Problem(422, "another candidate has this source_event_id") from exc
        outcome.events.append(_event("candidate.changed", doc))
        log.info(
            "candidate %s patched: %s -> %s",
            cid,
            before,
            doc["status"],
            extra={"candidate_id": cid, "status": doc["status"], "principal": who.name},
        )
        return outcome

    # -- review and hand-over ----------------------------------------------------------------

    def review(self, who: Principal, cid: str, decision: ReviewIn) -> JsonDict:
        refusal = _incomplete_decision(decision)
        if refusal is not None:
            raise Problem(422, refusal)
        with self.db.write() as session:
            if decision.decision == "merge":
                self._lock_in_order(session, [cid, str(decision.merge_into)])
            row = self._load(session, cid)
            try:
                new = sm.review(row.status, decision.decision)
            except sm.IllegalTransition as exc:
                raise Problem(409, str(exc)) from exc
            expected = decision.expected_status
            if expected is not None and row.status != expected:
                # A decision still possible, but on a case changed since the reviewer read it
                # (a console that missed a live event): made, it would override unseen what
                # was decided meanwhile (a return, and its note to the producer).
                action = decision.decision
                raise Problem(
                    409, f"cannot {action} a candidate that is {row.status} (expected {expected})"
                )
            doc: JsonDict = json.loads(row.doc)
            read_at = decision.expected_updated_at
            if read_at is not None and _changed_since_read(doc, read_at):
                # The same in its status, but not what the reviewer judged: another type or
                # evidence a producer sent, or a return answered by then.
                raise Problem(
                    409,
                    f"cannot {decision.decision} candidate {cid}: it changed since it was read"
                    f" (it is {row.status}, updated at {doc['updated_at']})",
                    candidate_status=row.status,
                    updated_at=doc["updated_at"],
                )
            clock = self.clock()
            now = _case_now(clock, doc)
            outcome = Outcome(200, doc)
            before = row.status
            if decision.decision == "merge":
                self._merge_into(session, who, row, str(decision.merge_into), clock, outcome)
            # A return records what the case lacks, also when it lacks nothing ([]): supplying
            # that (a PATCH, or the upload of a missing file) answers it, as the note asks
            # (_completes_return). An entry without the list is a return older than that.
            asks = self._return_asks_now(doc) if new == "returned" else None
            # A return also records the status it was made from and the files the case had
            # then (_files_at_return): if its answer brings files, one of them must be held for
            # the case to leave returned or incomplete (_derive).
            came = before if new == "returned" else None
            had = self._files_at_return(doc) if new == "returned" else None
            doc["status"] = new
            self._history(
                doc,
                now,
                who.name,
                new,
                reason=decision.reason,
                reason_code=decision.reason_code,
                merge_into=str(decision.merge_into) if decision.merge_into else None,
                missing_elements=asks,
                **{"from": came, "evidence_sha256": had},
            )
            if new in sm.FINAL and before in ("incomplete", "returned"):
                # Only those may wait for a file: a confirmed or new case has no rows.
                self._stop_waiting(session, [cid])
            if new == "rejected":
                row.reject_reason = decision.reason_code
                doc["review"] = {"reason_code": decision.reason_code, "reason": decision.reason}
            if new == "confirmed":
                self._make_visible(session, row, doc, now, outcome)
            self._save(row, doc, now)
            outcome.events.append(_event("candidate.changed", doc))
        log.info(
            "candidate %s %s by %s",
            cid,
            new,
            who.name,
            extra={"candidate_id": cid, "status": new, "principal": who.name},
        )
        self._notify(outcome)
        return doc

    def _merge_into(
        self,
        session: Session,
        who: Principal,
        row: CandidateRow,
        target_id: str,
        clock: datetime,
        outcome: Outcome,
    ) -> None:
        """Record the merge of ``row`` into ``target_id``; ``clock`` is the instance's clock
        reading, not the source's stamp (which can be CASE_CLOCK_LEAD ahead of it already)."""
        if target_id == row.id:
            raise Problem(422, "a candidate cannot be merged into itself")
        target = self._load(session, target_id, status=422)
        if target.status in sm.FINAL:
            raise Problem(409, f"cannot merge into candidate {target_id}: it is {target.status}")
        tdoc = json.loads(target.doc)
        tdoc["references"] = [*tdoc.get("references", []), row.id]
        at = _case_now(clock, tdoc)
        self._history(tdoc, at, who.name, "merged_from", source=row.id)
        if target.feed_pos is not None:  # visible already: the platform sees the change
            self._assign_positions(session, [target], at)
            outcome.feed = True
        self._save(target, tdoc, at)
        json_doc = outcome.doc
        json_doc["merged_into"] = target_id
        outcome.events.append(_event("candidate.changed", tdoc))

    def set_stage(self, who: Principal, cid: str, report: StatusIn) -> JsonDict:
        # A hold that has ended is released first, as a feed read releases it: the case is the
        # platform's from then on.
        self.release_held()
        with self.db.write() as session:
            row = self._load(session, cid)
            doc: JsonDict = json.loads(row.doc)
            released = False
            if row.feed_pos is None and row.hold_until is not None:
                held_at = self.clock()
                if row.hold_until > held_at:
                    # Held for the night: the platform is not to have it before the window ends
                    # (it may know the id from GET /candidates), so it cannot register it
                    # either.
                    raise Problem(409, f"candidate {cid} is held until {doc['hold_until']}")
                if row.status in sm.VISIBLE:
                    # The window has ended, but the release above skipped the case: another
                    # writer had it then. Now that this transaction holds it, it is released
                    # here, as a release would, and the report goes on.
                    (doc,) = self._release_rows(session, [row], held_at)
                    released = True
            try:
                new = sm.advance(row.status, report.stage)
            except sm.IllegalTransition as exc:
                raise Problem(409, str(exc)) from exc
            now = self.clock()
            if new is None:
                _refuse_another_time(row, doc, report, now)
                return doc
            at = _stage_time(row, doc, new, report.at, now, _follows(row.status, doc))
            doc["status"] = new
            doc.setdefault("stages", {})[new] = at.isoformat()
            if new == "dispatched":
                row.arrive_by = self.policy.arrive_by(at)
                doc["arrive_by"] = row.arrive_by.isoformat()
            if new == "arrived":
                row.arrived_at = at
            # The case's updated_at stays in order; the entry is dated at the stage's own
            # time (its at overrides the stamp), as the console's history shows it.
            stamp = _case_now(now, doc)
            self._history(doc, stamp, who.name, new, at=at.isoformat())
            self._save(row, doc, stamp)
        if released:
            self._log_released([cid])
            self.hub.feed_changed()
        log.info(
            "candidate %s %s (reported by %s)",
            cid,
            new,
            who.name,
            extra={"candidate_id": cid, "status": new, "principal": who.name},
        )
        self.hub.publish([_event("candidate.changed", doc)])
        return doc

    def evidence_arrived(self, who: Principal, sha256: str) -> int:
        """Judge the candidates that wait for this evidence file again, now that the store
        holds it: incomplete ones it completes, and returned ones it gives every element they
        were returned without (:meth:`_completes_return`), enter review (``new``, or confirmed
        when their type is auto-confirmed). Returns how many changed.

        Run after every upload of the file, also one that found it there already: a
        candidate created while its file was being stored may have missed the first.
        """
        waiting = select(MissingEvidenceRow.candidate_id).where(MissingEvidenceRow.sha256 == sha256)
        with self.db.read() as session:
            if session.execute(waiting.limit(1)).first() is None:
                return 0
        outcome = Outcome(200, {})
        with self.db.write() as session:
            ids = sorted(session.scalars(waiting))
            # The candidates first, then their rows here, as a PATCH locks its candidate and
            # then notes the files it waits for: deleting first, this would wait for the
            # PATCH's candidate while the PATCH waited for the deleted row (a deadlock).
            self._lock_in_order(session, ids)
            # Only the rows of the candidates judged here: one committed since keeps its row
            # for its own look after commit (deleting it would leave that one incomplete).
            session.execute(
                delete(MissingEvidenceRow).where(
                    MissingEvidenceRow.sha256 == sha256, MissingEvidenceRow.candidate_id.in_(ids)
                )
            )
            now = self.clock()
            done: list[str] = []
            for cid in ids:
                row = session.scalars(select(CandidateRow).where(CandidateRow.id == cid)).first()
                stored = json.loads(row.doc) if row is not None else {}
                if row is None or not (row.status == "incomplete" or _waiting(stored)):
                    done.append(cid)
                    continue
                doc = json.loads(row.doc)
                self._derive(doc)
                if not _waiting(doc):
                    done.append(cid)
                # The evidence element stays missing while a latest frame is not held, but the
                # return may be answered all the same (_completes_return).
                answered = self._completes_return(stored, doc, arrived=sha256)
                if doc["missing_elements"] == stored.get("missing_elements") and not answered:
                    continue
                complete = not doc["missing_elements"]
                new = sm.after_supplement(row.status, complete, answered)
                action = "supplemented" if new != row.status else "updated"
                at = _case_now(now, stored)
                self._history(doc, at, who.name, action, fields=["evidence"])
                if new == "new":
                    self._enter_review(session, row, doc, at, outcome)
                else:
                    doc["status"] = new
                self._save(row, doc, at)
                outcome.events.append(_event("candidate.changed", doc))
            # A case that waits for no file now keeps no row for the others it referred to (a
            # latest frame replaced before its upload, which may never come).
            self._stop_waiting(session, done)
        if outcome.events:
            changed = [data["id"] for _kind, data in outcome.events]
            log.info(
                "evidence %s completes or supplements %s",
                sha256,
                " ".join(changed),
                extra={"candidate_ids": changed, "principal": who.name},
            )
        self._notify(outcome)
        return len(outcome.events)

    # -- reads -------------------------------------------------------------------------------

    def get(self, cid: str) -> str:
        # No row lock (unlike _load): a read must not wait for, or hold up, a writer.
        with self.db.read() as session:
            doc = session.execute(_doc_by_id, {"cid": cid}).scalar()
        if doc is None:
            raise Problem(404, f"no candidate {cid}")
        return str(doc)

    def search(
        self,
        *,
        status: str | None = None,
        ctype: str | None = None,
        camera_id: str | None = None,
        sensor_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        open_only: bool = False,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[str], str | None]:
        query = select(CandidateRow.created_at, CandidateRow.id, CandidateRow.doc)
        for column, value in (
            (CandidateRow.status, status),
            (CandidateRow.type, ctype),
            (CandidateRow.camera_id, camera_id),
            (CandidateRow.sensor_id, sensor_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(CandidateRow.created_at >= since)
        if until is not None:
            query = query.where(CandidateRow.created_at < until)
        if open_only:
            query = query.where(CandidateRow.status.not_in(sm.FINAL))
        if cursor:
            at, cid = _decode_list_cursor(cursor)
            query = query.where(
                or_(
                    CandidateRow.created_at < at,
                    and_(CandidateRow.created_at == at, CandidateRow.id < cid),
                )
            )
        query = query.order_by(CandidateRow.created_at.desc(), CandidateRow.id.desc())
        with self.db.read() as session:
            rows = session.execute(query.limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_list_cursor(rows[-1][0], rows[-1][1]) if more else None
        return [r[2] for r in rows], next_cursor

    def near(self, cid: str, *, open_only: bool = False, limit: int = 50) -> list[str]:
        """Other candidates of ``cid``'s type and source (camera or sensor) that occurred
        within a day of it, nearest in time first: what a reviewer may merge it with."""
        with self.db.read() as session:
            target = session.execute(
                select(
                    CandidateRow.type,
                    CandidateRow.camera_id,
                    CandidateRow.sensor_id,
                    CandidateRow.created_at,
                    CandidateRow.doc,
                ).where(CandidateRow.id == cid)
            ).first()
            if target is None:
                raise Problem(404, f"no candidate {cid}")
            ctype, camera_id, sensor_id, created_at, doc = target
            at = _occurred(json.loads(doc), created_at)
            # occurred_at is in the document only: bound the indexed created_at by when a
            # case in the window can have been received, so only the window's rows are read.
            query = select(CandidateRow.created_at, CandidateRow.doc).where(
                CandidateRow.id != cid,
                CandidateRow.type == ctype,
                CandidateRow.camera_id == camera_id,
                CandidateRow.sensor_id == sensor_id,
                CandidateRow.created_at >= at - NEAR_WINDOW - NEAR_SKEW,
                CandidateRow.created_at <= at + NEAR_WINDOW + NEAR_INTAKE_DELAY,
            )
            if open_only:
                query = query.where(CandidateRow.status.not_in(sm.FINAL))
            rows = session.execute(query).all()
        found = []
        for row_created, row_doc in rows:
            distance = abs(_occurred(json.loads(row_doc), row_created) - at)
            if distance <= NEAR_WINDOW:
                found.append((distance, row_doc))
        found.sort(key=lambda pair: pair[0])
        return [row_doc for _distance, row_doc in found[:limit]]

    def changed_since(self, since: datetime, limit: int) -> list[JsonDict]:
        """The event data of up to ``limit`` candidates changed at or after ``since``, oldest
        change first: the replay of a reconnecting event stream."""
        query = (
            select(
                CandidateRow.id,
                CandidateRow.status,
                CandidateRow.type,
                CandidateRow.camera_id,
                CandidateRow.sensor_id,
                CandidateRow.created_at,
                CandidateRow.updated_at,
            )
            .where(CandidateRow.updated_at >= since)
            .order_by(CandidateRow.updated_at, CandidateRow.id)
            .limit(limit)
        )
        with self.db.read() as session:
            rows = session.execute(query).all()
        keys = ("id", "status", "type", "camera_id", "sensor_id")
        return [
            {
                **dict(zip(keys, r[:5], strict=True)),
                "created_at": r[5].isoformat(),
                "updated_at": r[6].isoformat(),
            }
            for r in rows
        ]

    # -- the feed ----------------------------------------------------------------------------

    def feed(self, who: Principal, cursor: str | None, limit: int) -> tuple[list[str], int]:
        """Visible candidates after ``cursor`` (or the token's acknowledged position)."""
        self.release_held()
        with self.db.read() as session:
            if cursor is None:
                stored = session.get(FeedCursorRow, who.name)
                after = stored.position if stored is not None else 0
            else:
                after = int(cursor)
            rows = session.execute(
                select(FeedRow.position, CandidateRow.doc)
                .join(CandidateRow, CandidateRow.id == FeedRow.candidate_id)
                .where(FeedRow.position > after)
                .order_by(FeedRow.position)
                .limit(limit)
            ).all()
            # A cursor past the end (one kept from before a restore) would otherwise be
            # answered as up to date, and skip the positions given out until the feed got there.
            if not rows and cursor is not None and after > self._feed_end(session):
                raise Problem(422, f"cursor {after} is beyond the end of the feed")
        return [r[1] for r in rows], (rows[-1][0] if rows else after)

    def ack(self, who: Principal, cursor: int) -> None:
        """Store the token's cursor; candidates up to it are now pulled by the platform."""
        events: list[Event] = []
        with self.db.write() as session:
            if cursor > self._feed_end(session):
                raise Problem(422, f"cursor {cursor} is beyond the end of the feed")
            now = self.clock()
            previous = self._advance_cursor(session, who.name, cursor, now)
            if cursor > previous:
                for row in session.scalars(self._pulled(previous, cursor)):
                    doc = json.loads(row.doc)
                    doc["status"] = "pulled"
                    at = _case_now(now, doc)
                    self._history(doc, at, who.name, "pulled")
                    self._save(row, doc, at)
                    events.append(_event("candidate.changed", doc))
        self.hub.publish(events)

    @staticmethod
    def _feed_end(session: Session) -> int:
        """The last position given out."""
        last = session.execute(select(FeedCounterRow.last).where(FeedCounterRow.id == 1))
        return int(last.scalar_one())

    def _advance_cursor(self, session: Session, name: str, cursor: int, now: datetime) -> int:
        """Move the token's cursor up to ``cursor``; returns its position before.

        The cursor row stays locked to the commit, so concurrent acks of one token run one
        after the other: the cursor never moves back and each position is pulled once.
        """
        conn = session.connection()
        values = {"name": name, "position": cursor, "updated_at": now}
        if conn.execute(self._insert_cursor, values).first() is not None:
            return 0
        previous: int = conn.execute(
            select(FeedCursorRow.position).where(FeedCursorRow.name == name).with_for_update()
        ).scalar_one()
        if cursor > previous:
            conn.execute(
                update(FeedCursorRow)
                .where(FeedCursorRow.name == name)
                .values(position=cursor, updated_at=now)
            )
        return previous

    @staticmethod
    def _pulled(previous: int, cursor: int) -> Select[CandidateRow]:
        """Confirmed candidates at positions (previous, cursor], locked in id order.

        Locked because the ack rewrites their documents: a concurrent PATCH or stage report
        must not be overwritten. After waiting for a row, PostgreSQL checks the conditions on
        the row itself again, not the subquery on ``feed`` (read before the wait): so the
        position is asked of the row too, or a case a PATCH moved past ``cursor`` meanwhile
        would be pulled by the ack of the position it left.
        """
        positions = select(FeedRow.candidate_id).where(
            FeedRow.position > previous, FeedRow.position <= cursor
        )
        return (
            select(CandidateRow)
            .where(
                CandidateRow.id.in_(positions),
                CandidateRow.status == "confirmed",
                CandidateRow.feed_pos > previous,
                CandidateRow.feed_pos <= cursor,
            )
            .order_by(CandidateRow.id)
            .with_for_update(of=CandidateRow)
        )

    def release_held(self) -> int:
        """Give held candidates whose night hold has ended their feed positions."""
        with self.db.read() as session:
            if (
                session.execute(select(CandidateRow.id).where(_due(self.clock())).limit(1)).first()
                is None
            ):
                return 0
        events: list[Event] = []
        with self.db.write() as session:
            now = _locked_now(session, self.clock)
            due = _due(now)
            # Rows another transaction holds are skipped, not waited for: a concurrent release
            # (another worker's loop, a feed read) is placing them, or a writer is changing
            # them and the next release takes them. Either way no row gets two positions and
            # no concurrent change is overwritten.
            rows = list(
                session.scalars(
                    select(CandidateRow)
                    .where(due)
                    .order_by(CandidateRow.hold_until, CandidateRow.updated_at, CandidateRow.id)
                    .with_for_update(skip_locked=True)
                )
            )
            if rows:
                docs = self._release_rows(session, rows, now)
                events = [_event("candidate.changed", doc) for doc in docs]
        if events:
            self._log_released([data["id"] for _kind, data in events])
            self.hub.publish(events)
            self.hub.feed_changed()
        return len(events)

    def _release_rows(
        self, session: Session, rows: list[CandidateRow], now: datetime
    ) -> list[JsonDict]:
        """Give held ``rows``, locked and due by ``now``, their feed positions; their documents."""
        self._assign_positions(session, rows, now)
        docs: list[JsonDict] = []
        for row in rows:
            doc = json.loads(row.doc)
            at = _case_now(now, doc)
            self._history(doc, at, "policy", "released")
            self._save(row, doc, at)
            docs.append(doc)
        return docs

    @staticmethod
    def _log_released(ids: list[str]) -> None:
        log.info(
            "night hold ended for %d candidate(s): %s",
            len(ids),
            " ".join(ids),
            extra={"candidate_ids": ids},
        )

    # -- statistics --------------------------------------------------------------------------

    def stats(self, since: datetime | None, until: datetime | None) -> JsonDict:
        query = select(
            CandidateRow.id,
            CandidateRow.status,
            CandidateRow.type,
            CandidateRow.camera_id,
            CandidateRow.created_at,
            CandidateRow.reject_reason,
            CandidateRow.arrive_by,
            CandidateRow.arrived_at,
        )
        if since is not None:
            query = query.where(CandidateRow.created_at >= since)
        if until is not None:
            query = query.where(CandidateRow.created_at < until)
        with self.db.read() as session:
            rows = session.execute(query).all()
        return compute_stats(rows, self.clock(), self.policy)

    # -- helpers -----------------------------------------------------------------------------

    def _lock_in_order(self, session: Session, ids: list[str]) -> None:
        """Lock candidates in id order: merges of A into B and of B into A at the same time
        would otherwise each hold one row and wait for the other (a deadlock)."""
        if self._pg:
            ordered = sorted(set(ids))
            query = select(CandidateRow.id).where(CandidateRow.id.in_(ordered))
            session.execute(query.order_by(CandidateRow.id).with_for_update()).all()

    def _load(self, session: Session, cid: str, status: int = 404) -> CandidateRow:
        query = select(CandidateRow).where(CandidateRow.id == cid)
        if self._pg:
            query = query.with_for_update()
        row = session.scalars(query).first()
        if row is None:
            raise Problem(status, f"no candidate {cid}")
        return row

    def _derive(self, doc: JsonDict) -> list[str]:
        """Server-computed elements: urgency raise, routing, category, missing elements.

        Returns the evidence files the store does not hold, as judged here.
        """
        ctype = doc.get("type")
        if "urgency" in doc or ctype in self.policy.policy.urgent_types:
            doc["urgency"] = self.policy.urgency(ctype, doc.get("urgency"))
        doc["category"] = self.policy.category(ctype)
        doc["suggested_unit"] = self.policy.suggested_unit(ctype)
        hashes = sorted(set(_evidence_hashes(doc)))
        unheld = [h for h in hashes if not self.store.has(h)]
        # A candidate that had its evidence keeps the element while one file is held: a
        # supplement whose upload never lands must not take it away. One that never entered
        # review (incomplete, or returned from there) needs every file it refers to, and one
        # that did, if files were brought after its last return (what the return asked for),
        # needs one of them held: one that never landed does not answer it, nor hold it up.
        added = _added_since_return(doc)
        passed = doc.get("status") not in ("incomplete", "returned") or (
            _had_evidence(doc) and (not added or any(h not in unheld for h in added))
        )
        held = set(hashes) - set(unheld)
        doc["missing_elements"] = missing_elements(doc, held, any_evidence=passed)
        return unheld

    def _lost_elements(self, stored: JsonDict, doc: JsonDict) -> list[str]:
        """The required elements ``doc`` (``stored`` with a PATCH merged in) misses and
        ``stored`` has, both judged against the store as it is now (so an evidence file the
        store lost since is not held against the PATCH)."""
        if not doc["missing_elements"]:
            return []
        judged = dict(stored)
        self._derive(judged)
        return [name for name in doc["missing_elements"] if name not in judged["missing_elements"]]

    def _wait_for_evidence(self, session: Session, outcomes: list[Outcome]) -> None:
        """Note the evidence files waiting candidates miss, so that each file's upload
        judges them again (:meth:`evidence_arrived`).

        Every file the candidate was judged without is noted, also one that has landed since:
        asking the store again here would leave a candidate that missed a file stored in
        between incomplete with nothing waiting for it. :meth:`_recheck_evidence` looks
        after commit.
        """
        waiting = [
            {"sha256": sha, "candidate_id": o.doc["id"]} for o in outcomes for sha in _waits(o)
        ]
        if waiting:
            session.connection().execute(self._insert_missing, waiting)

    def _return_asks_now(self, doc: JsonDict, arrived: str | None = None) -> list[str]:
        """The required elements a return of ``doc`` asks for: those it lacks, evidence only
        while a file other than a ``latest`` frame is not held (``arrived``, the file whose
        upload is judged, counts as not held yet). A ``latest`` frame is a detector's routine
        update: neither its upload nor the next one may answer a return, as no PATCH bringing
        one does (:func:`status.answers_return`)."""
        awaited = any(h == arrived or not self.store.has(h) for h in _photos(doc))
        return [n for n in doc.get("missing_elements") or () if n != "evidence" or awaited]

    def _files_at_return(self, doc: JsonDict) -> list[str]:
        """The files a return of the candidate ``doc`` records as those it had: all but
        ``latest`` frames, so that it owes none of them. Only while the answer to an earlier
        return brought files none of which is held (the case waits for one as incomplete) are
        those left out: this return's answer, or an upload of one of them, must still bring a
        held one."""
        added = _added_since_return(doc)
        owed = set() if any(self.store.has(h) for h in added) else set(added)
        return sorted({h for h in _photos(doc) if h not in owed})

    def _completes_return(
        self, before: JsonDict, after: JsonDict, arrived: str | None = None
    ) -> bool:
        """Whether ``after`` (``before`` judged again, by a PATCH or the upload of the file
        ``arrived``) has every element the returned ``before`` still lacked of those its
        return asked for. A case returned as incomplete ("snapshot missing") is answered by
        the missing file's upload, not only by a PATCH: a detector or the alarm bridge sends
        none after its upload.

        ``after`` is judged as the return judged: evidence is missing only while a file other
        than a ``latest`` frame is not held. A case returned for its clean photo is answered
        by the photo although its latest frame is not held yet (it waits for that frame as
        incomplete): otherwise it would wait for the frame as returned, and for good if each
        update brings a frame before its upload.

        A return stored before returns recorded what they asked is taken to ask for what
        ``before`` lacks now, judged as a return now would judge it: nothing else tells, and
        a case returned for its photo would otherwise never come back.
        """
        if before.get("status") != "returned":
            return False
        asks = _return_asks(before)
        if asks is None:
            asks = self._return_asks_now(before, arrived)
        lacked = [name for name in asks if name in before.get("missing_elements", ())]
        still = self._return_asks_now(after)
        return bool(lacked) and not any(name in still for name in asks)

    @staticmethod
    def _stop_waiting(session: Session, ids: list[str]) -> None:
        """Forget the files the candidates ``ids`` waited for, as they wait for none now
        (complete, rejected, merged): a row kept would stay until a file that may never come
        is uploaded, and the rows of every case rejected for want of its photo would pile up.
        """
        if ids:
            session.execute(
                delete(MissingEvidenceRow).where(MissingEvidenceRow.candidate_id.in_(ids))
            )

    def _recheck_evidence(self, who: Principal, outcomes: list[Outcome]) -> None:
        """After commit: judge again candidates whose missing file the store holds by now.

        Its upload may have looked for candidates waiting for it before they were committed;
        then it stored the file before that commit, so the store has it here.
        """
        landed = sorted({sha for o in outcomes for sha in _waits(o) if self._held_now(sha)})
        self._judge_again(who, landed, [o.doc["id"] for o in outcomes if _waits(o)])

    def _held_now(self, sha256: str) -> bool:
        """Whether the store holds ``sha256``, for the looks after commit: a read that fails
        just now is logged and taken as not held (the file's upload, a replay or the next
        upload judges the candidate again), never as a failed answer."""
        try:
            return self.store.has(sha256)
        except EvidenceUnavailable as exc:
            log.warning("evidence %s: not looked at after commit: %s", sha256, exc.detail)
            return False

    def _heal(self, who: Principal, answers: list[tuple[int, JsonDict]]) -> None:
        """For replayed answers: judge again their candidates that still wait for a file the
        store holds by now. The first answer's look after commit may have failed (a busy
        database), and the file's upload, which came before the candidate waited for it, did
        not judge it: without this a retry would leave it incomplete for good."""
        wanted = [
            (sha, doc["id"])
            for status, doc in answers
            if status < 300 and _waiting(doc)
            for sha in sorted(set(_evidence_hashes(doc)))
            if self._held_now(sha)
        ]
        if not wanted:
            return
        pair = tuple_(MissingEvidenceRow.sha256, MissingEvidenceRow.candidate_id)
        try:
            with self.db.read() as session:
                rows = session.execute(
                    select(MissingEvidenceRow.sha256, MissingEvidenceRow.candidate_id).where(
                        pair.in_(wanted)
                    )
                ).all()
        except Exception:
            # The replay is answered all the same; the next one looks again.
            ids = sorted({cid for _sha, cid in wanted})
            log.exception(
                "looking for stored files candidate(s) %s wait for failed",
                " ".join(ids),
                extra={"candidate_ids": ids, "principal": who.name},
            )
            return
        self._judge_again(who, sorted({sha for sha, _ in rows}), sorted({c for _, c in rows}))

    def _judge_again(self, who: Principal, landed: list[str], ids: list[str]) -> None:
        """:meth:`evidence_arrived` for each of the files, after a commit: a failure is logged,
        not answered, as the request's work is done (a replay or the next upload of the file
        judges the candidates ``ids`` again)."""
        for sha in landed:
            try:
                self.evidence_arrived(who, sha)
            except Exception:
                log.exception(
                    "evidence %s: judging candidate(s) %s again failed; they stay incomplete",
                    sha,
                    " ".join(ids),
                    extra={"candidate_ids": ids, "principal": who.name},
                )

    def _enter_review(
        self,
        session: Session,
        row: CandidateRow,
        doc: JsonDict,
        now: datetime,
        outcome: Outcome,
        defer: list[CandidateRow] | None = None,
    ) -> None:
        doc["status"] = "new"
        # Complete once: from now on one held file is evidence enough (_had_evidence). A value
        # the server did not write (a client's, kept by an earlier release) is replaced.
        if _first_complete(doc) is None:
            doc["first_complete_at"] = now.isoformat()
        if _open_return(doc) is not None:
            # Back in review after a return, which these files answered: a file brought later
            # is judged as any other (_added_since_return).
            doc["history"][-1]["evidence_sha256"] = sorted(set(_photos(doc)))
        if self.policy.auto_confirms(doc.get("type")):
            doc["status"] = "confirmed"
            self._history(doc, now, "policy", "auto_confirmed")
            self._make_visible(session, row, doc, now, outcome, defer)

    def _make_visible(
        self,
        session: Session,
        row: CandidateRow,
        doc: JsonDict,
        now: datetime,
        outcome: Outcome,
        defer: list[CandidateRow] | None = None,
    ) -> None:
        """Give a confirmed candidate its feed position, or hold it for the night.

        With ``defer`` the row is queued there for one position assignment later.
        """
        hold = self.policy.hold_until(doc.get("urgency"), now)
        doc["hold_until"] = iso(hold)
        row.hold_until = hold
        if hold is None:
            if defer is None:
                self._assign_positions(session, [row], now)
            else:
                defer.append(row)
            outcome.feed = True
        else:
            self._history(doc, now, "policy", "held", until=hold.isoformat())

    def _assign_positions(self, session: Session, rows: list[CandidateRow], now: datetime) -> None:
        # The counter row's lock (PostgreSQL) or the database write lock (SQLite) is held to
        # commit, so positions become visible in order and without gaps.
        conn = session.connection()
        moved = [r.id for r in rows if r.feed_pos is not None]
        if moved:
            # A new position replaces the old one: the feed lists each candidate once, at its
            # latest change. An ack up to the old position no longer marks it pulled: the
            # platform reads it again at the new one, whose ack does.
            conn.execute(delete(FeedRow).where(FeedRow.candidate_id.in_(moved)))
        last = conn.execute(_ADVANCE_FEED, {"n": len(rows)}).scalar_one()
        first = last - len(rows) + 1
        for position, row in enumerate(rows, start=first):
            row.feed_pos = position
        conn.execute(
            _INSERT_FEED,
            [{"position": r.feed_pos, "candidate_id": r.id, "at": now} for r in rows],
        )

    def _assign_last(self, session: Session, ids: list[str]) -> None:
        """Feed positions for candidates already inserted, one statement each (PostgreSQL)."""
        for cid in ids:
            session.connection().execute(_POSITION_LAST, {"cid": cid, "at": self.clock()})

    @staticmethod
    def _history(doc: JsonDict, now: datetime, who: str, action: str, **extra: Any) -> None:
        entry = {"at": now.isoformat(), "who": who, "action": action}
        entry.update({k: v for k, v in extra.items() if v is not None})
        doc.setdefault("history", []).append(entry)

    @classmethod
    def _updated(
        cls, doc: JsonDict, now: datetime, who: str, fields: list[str], *, routine: bool
    ) -> None:
        """Record an update that leaves the status as it is.

        A routine one extends the entry of the routine updates by ``who`` just before it, if
        the history ends with one (``count`` of them, ``at`` the first, ``last_at`` the latest,
        ``fields`` all they changed), so an episode updated every few seconds for a week keeps
        a history of a few entries, not one per update. Any other entry ends the run.
        """
        if not routine:
            cls._history(doc, now, who, "updated", fields=fields)
            return
        history = doc.setdefault("history", [])
        last = history[-1] if history else {}
        if last.get("action") == "updated" and last.get("who") == who and "count" in last:
            last["fields"] = sorted({*last.get("fields", ()), *fields})
            last["count"] += 1
            last["last_at"] = now.isoformat()
        else:
            cls._history(doc, now, who, "updated", fields=fields, count=1, last_at=now.isoformat())

    @staticmethod
    def _save(row: CandidateRow, doc: JsonDict, now: datetime) -> str:
        """Store ``doc`` in ``row``; returns the document's JSON text."""
        doc["updated_at"] = now.isoformat()
        source = doc.get("source") or {}
        row.status = doc["status"]
        row.type = doc.get("type")
        row.camera_id = source.get("camera_id")
        row.sensor_id = source.get("sensor_id")
        row.source_system = source.get("system") if source.get("source_event_id") else None
        row.source_event_id = source.get("source_event_id") if source.get("system") else None
        row.urgency = doc.get("urgency")
        row.updated_at = now
        row.doc = json.dumps(doc, ensure_ascii=False)
        return row.doc


def _routine(entry: JsonDict) -> bool:
    """Whether a history entry is that of routine updates (CandidateService._updated)."""
    return entry.get("action") == "updated" and "count" in entry


def _case_now(now: datetime, doc: JsonDict) -> datetime:
    """The time to stamp a write of the case ``doc`` (as stored) at: ``now``, but at least
    CASE_TIME_STEP after its ``updated_at``.

    Instances behind a load balancer stamp a case with their own clocks, which differ: without
    this, a write on an instance behind the one before would date the case, and its history
    entry, before what it already had, and a decision's expected_updated_at
    (:func:`_changed_since_read`) would take an earlier change for a later one or miss it.
    Every write of a case is so later than the one before, its entries never before those of
    the version it changes (the entries of one write share its instant), as long as the
    instances' clocks are less than CASE_CLOCK_LEAD apart: a write is never stamped further
    ahead of ``now`` than that, so one dated ahead does not carry every later one with it.
    """
    last = doc.get("updated_at")
    if not last:
        return now
    after = datetime.fromisoformat(last) + CASE_TIME_STEP
    if after <= now + CASE_CLOCK_LEAD:
        return max(now, after)
    _warn_case_ahead(str(doc.get("id")), after - CASE_TIME_STEP - now)
    return now + CASE_CLOCK_LEAD


def _warn_case_ahead(cid: str, ahead: timedelta) -> None:
    with _LEAD_WARNED_LOCK:
        if cid in _LEAD_WARNED:
            return
        if len(_LEAD_WARNED) >= _LEAD_WARNED_MAX:
            del _LEAD_WARNED[next(iter(_LEAD_WARNED))]
        _LEAD_WARNED[cid] = None
    log.warning(
        "candidate %s: its last write is dated %.3f s ahead of this instance's clock (clock"
        " skew between instances); this write is stamped %.0f s ahead of the clock, before it",
        cid,
        ahead.total_seconds(),
        CASE_CLOCK_LEAD.total_seconds(),
        extra={"candidate_id": cid, "ahead_s": ahead.total_seconds()},
    )


def _precision_us(doc: JsonDict, value: datetime) -> int:
    """The precision of the case's time ``value`` as a client sent it, in microseconds: 1 when
    it has digits below the millisecond, 1000 when it has milliseconds (as JavaScript's Date
    keeps them), and for a whole second a second, unless it is an instant the case recorded
    (the server writes such an instant, exact, without a fraction)."""
    if value.microsecond % 1000:
        return 1
    if value.microsecond:
        return 1000
    history = doc.get("history") or []
    recorded = {doc.get("created_at"), *(t for h in history for t in (h["at"], h.get("last_at")))}
    return 1 if value in {datetime.fromisoformat(t) for t in recorded if t} else 1_000_000


def _floored(value: datetime, precision_us: int) -> datetime:
    return value - timedelta(microseconds=value.microsecond % precision_us)


def _changed_since_read(doc: JsonDict, read_at: datetime) -> bool:
    """Whether a case changed in what its reviewer judges since the version of it updated at
    ``read_at`` (that version's ``updated_at``, as given: exact, or cut to milliseconds or
    seconds).

    Every such change (a status, another type, location or evidence other than a ``latest``
    frame, a merge into it) records a history entry dated when it was made; routine updates (a
    detector's dwell time or latest frame, an alarm repeat) do not count, so that a console
    deciding a case a detector updates every few seconds is not refused each time. A
    ``read_at`` after the case's ``updated_at`` is no version it had: it counts as changed, as
    nothing tells it was not.

    A change is one recorded after the version read in the history's order, not one dated
    after it: with instances' clocks more than CASE_CLOCK_LEAD apart, a later write can be
    dated before the version read (:func:`_case_now`). Only a ``read_at`` no entry has is
    compared by time. Times are compared at ``read_at``'s precision: the entry of the version
    read, at its exact instant, is that instant cut to milliseconds. As writes of a case are
    at least a millisecond apart (:func:`_case_now`), a later change still counts at
    millisecond precision; at a second's, one in the same second as the version read does not.
    """
    updated = datetime.fromisoformat(doc["updated_at"])
    if read_at == updated:
        return False
    precision = _precision_us(doc, read_at)
    if read_at > _floored(updated, precision):
        return True
    history = doc.get("history") or []
    read = _version_read(history, read_at, precision)
    if read is not None:
        return any(not _routine(h) for h in history[read + 1 :])
    return any(
        _floored(datetime.fromisoformat(h["at"]), precision) > read_at
        for h in history
        if not _routine(h)
    )


def _version_read(history: list[JsonDict], read_at: datetime, precision: int) -> int | None:
    """The position in ``history`` of the last entry of the version updated at ``read_at`` (at
    ``precision``): one dated then, or a run of routine updates from ``at`` to ``last_at``
    that holds it. None if no entry does (the version of a stage report, dated at its own
    time)."""
    for i in range(len(history) - 1, -1, -1):
        entry = history[i]
        first = _floored(datetime.fromisoformat(entry["at"]), precision)
        last = _floored(datetime.fromisoformat(entry.get("last_at") or entry["at"]), precision)
        if first <= read_at <= last:
            return i
    return None


def _incomplete_decision(decision: ReviewIn) -> str | None:
    """What a review decision lacks, or None.

    A return tells whoever completes the case what to add, and "other" says nothing by itself:
    without a note neither is actionable, so the note is required there (as in the console).
    ``merge_into`` is for a merge only and ``reason_code`` for a rejection only.
    """
    noted = bool((decision.reason or "").strip())
    if decision.decision == "reject" and decision.reason_code is None:
        return "a rejection needs a reason_code"
    if decision.decision == "reject" and decision.reason_code == "other" and not noted:
        return "a rejection as other needs a reason"
    if decision.decision == "return" and not noted:
        return "a return needs a reason saying what is missing"
    if decision.decision == "merge" and decision.merge_into is None:
        return "a merge needs merge_into"
    # What belongs to another decision is refused, not recorded in the history as if it
    # applied: a reason (the note) goes with every decision.
    if decision.merge_into is not None and decision.decision != "merge":
        return f"merge_into goes only with the merge decision, not with {decision.decision}"
    if decision.reason_code is not None and decision.decision != "reject":
        return f"reason_code goes only with the reject decision, not with {decision.decision}"
    return None


def _waits(outcome: Outcome) -> list[str]:
    """The files an incomplete or returned candidate waits for: those it was judged
    without."""
    return outcome.unheld if _waiting(outcome.doc) else []


def _waiting(doc: JsonDict) -> bool:
    """Whether the candidate ``doc`` waits for evidence files: incomplete or returned, and
    missing evidence (a refused batch item's doc is a problem body, which is not). A returned
    one's upload updates its missing elements; it answers the return only when the return
    asked for that (``CandidateService._completes_return``)."""
    status = doc.get("status")
    missing = doc.get("missing_elements", ())
    return status in ("incomplete", "returned") and "evidence" in missing


def _had_evidence(doc: JsonDict) -> bool:
    """Whether the candidate ``doc`` passed the evidence check once: it entered review
    (``first_complete_at``, as the server wrote it: :func:`_first_complete`), or a return was
    made from ``new`` (its entry's ``from``). A case stored before both were recorded tells it
    by a return that found it lacking nothing (an entry without ``from`` whose
    ``missing_elements`` is []): a ``new`` case, or one incomplete only for an unheld
    ``latest`` frame, which a return does not ask for and which a ``new`` case need not have
    either. A return that records ``from`` is trusted for nothing else: one of an incomplete
    case lacking only its ``latest`` frame is no sign it entered review."""
    if _first_complete(doc) is not None:
        return True
    for entry in doc.get("history") or []:
        if not isinstance(entry, dict) or entry.get("action") != "returned":
            continue
        if entry.get("from") == "new" or (
            "from" not in entry and entry.get("missing_elements") == []
        ):
            return True
    return False


def _first_complete(doc: JsonDict) -> str | None:
    """The candidate's ``first_complete_at`` if the server wrote it, else None. The server
    writes it with a history entry of the same time (the create, supplement or upload that
    brought the case into review) and never before the case was created. A client's value,
    which an earlier release kept as sent, is no record of anything."""
    value = doc.get("first_complete_at")
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
        created = datetime.fromisoformat(str(doc.get("created_at")))
    except ValueError:
        return None
    if at.tzinfo is None or created.tzinfo is None or at < created:
        return None
    written = any(
        isinstance(entry, dict) and entry.get("at") == value for entry in doc.get("history") or []
    )
    return value if written else None


def _photos(doc: JsonDict) -> list[str]:
    """The hashes of the candidate's evidence files other than ``latest`` frames."""
    return [
        h
        for e in doc.get("evidence") or []
        if isinstance(e, dict)
        and e.get("kind") != "latest"
        and isinstance(h := e.get("sha256"), str)
    ]


def _open_return(doc: JsonDict) -> list[str] | None:
    """The files the candidate had at its last return (its entry's ``evidence_sha256``) while
    that return is not answered yet: None once the case entered review since (that entry
    records the files it had then), and for a return stored before returns recorded them."""
    for entry in reversed(doc.get("history") or []):
        if not isinstance(entry, dict):
            continue
        had = entry.get("evidence_sha256")
        if entry.get("action") == "returned":
            return list(had) if isinstance(had, list) else None
        if had is not None:
            return None
    return None


def _added_since_return(doc: JsonDict) -> list[str]:
    """The files (other than ``latest`` frames) the candidate got since its last return, while
    that is not answered (:func:`_open_return`): of those the answer brings, one must be held."""
    had = _open_return(doc)
    if had is None:
        return []
    return [h for h in _photos(doc) if h not in had]


def _return_asks(doc: JsonDict) -> list[str] | None:
    """The required elements the returned candidate ``doc`` lacked when it was returned (the
    return's history entry records them, [] for a case returned with every element):
    supplying them completes what the return asked for. None for a return stored before
    returns recorded them."""
    for entry in reversed(doc.get("history") or []):
        if entry.get("action") == "returned":
            asks = entry.get("missing_elements")
            return list(asks) if isinstance(asks, list) else None
    return None


def _deadlock(exc: DBAPIError) -> bool:
    """Whether PostgreSQL rolled the transaction back to break a deadlock (SQLSTATE 40P01)."""
    return getattr(exc.orig, "sqlstate", None) == "40P01"


def _replayed(stored: tuple[int, str]) -> list[tuple[int, JsonDict]]:
    """A stored answer as :meth:`CandidateService._heal` takes it; only one that may show a
    candidate waiting for evidence is parsed, to spare the other replays the work."""
    status, text = stored
    return [(status, json.loads(text))] if status < 300 and '"incomplete"' in text else []


def _evidence_hashes(doc: JsonDict) -> list[str]:
    return [
        h
        for e in doc.get("evidence") or []
        if isinstance(e, dict) and isinstance(h := e.get("sha256"), str)
    ]


def _encode_list_cursor(at: datetime, cid: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{cid}".encode()).decode().rstrip("=")


def _decode_list_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, cid = raw.split("|", 1)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None or not CANDIDATE_ID_RE.fullmatch(cid):
            raise ValueError("not a cursor of this list")
        # In UTC, as the query binds it: an instant that leaves the datetime range there
        # (year 1 east of UTC, year 9999 west of it) is refused, not a server error.
        return parsed.astimezone(UTC), cid
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise Problem(422, "invalid cursor") from exc


def _occurred(doc: JsonDict, created_at: datetime) -> datetime:
    """When a candidate occurred; when it was received if it does not say."""
    value = doc.get("occurred_at")
    with contextlib.suppress(ValueError):
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
        if at is not None and at.tzinfo is not None:
            return at
    return created_at


CONFIRMED_OR_LATER = sm.VISIBLE
# The SLA breaches GET /stats lists, the latest by arrive_by; sla.breaches counts them all.
SLA_BREACHES_LISTED = 200


def compute_stats(rows: Iterable[Any], now: datetime, policy: SitePolicy) -> JsonDict:
    """Counts, precision and SLA breaches from (id, status, type, camera, created, reason,
    arrive_by, arrived_at) rows; precision = confirmed / (confirmed + false positives).

    ``sla.breaches`` counts every breach; ``sla_breaches`` lists the latest
    :data:`SLA_BREACHES_LISTED` of them by ``arrive_by``, latest first."""
    by: dict[str, dict[str, int]] = {"type": {}, "camera": {}, "status": {}, "day": {}}
    hits: dict[str, dict[str, list[int]]] = {"type": {}, "camera": {}}
    breaches: list[tuple[datetime, str, JsonDict]] = []
    total = 0
    for cid, status, ctype, camera, created, reason, arrive_by, arrived_at in rows:
        total += 1
        day = created.astimezone(policy.tz).date().isoformat()
        for name, value in (("type", ctype), ("camera", camera), ("status", status), ("day", day)):
            if value is not None:
                by[name][value] = by[name].get(value, 0) + 1
        good = status in CONFIRMED_OR_LATER
        false_positive = status == "rejected" and reason == "false_positive"
        if good or false_positive:
            for name, value in (("type", ctype), ("camera", camera)):
                if value is not None:
                    counts = hits[name].setdefault(value, [0, 0])
                    counts[0 if good else 1] += 1
        if arrive_by is not None and (
            (arrived_at is not None and arrived_at > arrive_by)
            or (arrived_at is None and now > arrive_by)
        ):
            breach = {
                "id": cid,
                "type": ctype,
                "camera_id": camera,
                "arrive_by": arrive_by.isoformat(),
                "arrived_at": iso(arrived_at),
            }
            breaches.append((arrive_by, cid, breach))
    latest = heapq.nlargest(SLA_BREACHES_LISTED, breaches, key=lambda b: b[:2])
    precision = {
        name: {
            key: {"confirmed": tp, "false_positive": fp, "precision": tp / (tp + fp)}
            for key, (tp, fp) in sorted(values.items())
        }
        for name, values in hits.items()
    }
    return {
        "total": total,
        "by_type": dict(sorted(by["type"].items())),
        "by_camera": dict(sorted(by["camera"].items())),
        "by_status": dict(sorted(by["status"].items())),
        "by_day": dict(sorted(by["day"].items())),
        "precision_by_type": precision["type"],
        "precision_by_camera": precision["camera"],
        "sla": {"minutes": policy.policy.sla_minutes, "breaches": len(breaches)},
        "sla_breaches": [b for _at, _id, b in latest],
    }


def _follows(status: str, doc: JsonDict) -> tuple[str, datetime | None]:
    """The stage a report made at ``status`` follows, and its time: that stage's, or for the
    first stage the case's arrival in the feed (:func:`_visible_at`)."""
    stages = doc.get("stages", {})
    if status in stages:
        return status, datetime.fromisoformat(stages[status])
    return _visible_at(doc)


def _refuse_another_time(row: CandidateRow, doc: JsonDict, report: StatusIn, now: datetime) -> None:
    """Refuse (409) a report of the stage the case is at with an ``at`` that would not record
    the time it has: a correction, which would otherwise be answered 200 with the first time
    kept (and arrive_by, the SLA figures with it). Without ``at``, or with the one that
    recorded it, it is a replay."""
    if report.at is None:
        return
    stage = report.stage
    recorded = doc["stages"][stage]
    index = sm.STAGES.index(stage)
    before = sm.STAGES[index - 1] if index else "confirmed"
    at = _stage_time(row, doc, stage, report.at, now, _follows(before, doc))
    if at != datetime.fromisoformat(recorded):
        raise Problem(
            409,
            f"{stage} is recorded at {recorded}; a report of it at {report.at.isoformat()}"
            " does not change it",
        )


def _stage_time(
    row: CandidateRow,
    doc: JsonDict,
    stage: str,
    at: datetime | None,
    now: datetime,
    follows: tuple[str, datetime | None],
) -> datetime:
    """The time to record for ``stage`` reported ``at`` (None: the server's ``now``), never
    before the stage it ``follows`` (:func:`_follows`). Refuse (422) an ``at`` ahead of the
    server's clock, or before that stage or the candidate's creation, by more than the clock
    skew: arrive_by and the SLA figures are reckoned from it."""
    after, previous = follows
    # Either time may come from a platform's clock, off the server's by up to the skew: the
    # later one keeps an arrival from being recorded before its dispatch.
    if at is None:
        return now if previous is None else max(now, previous)
    skew = f"allowing {STAGE_CLOCK_SKEW.total_seconds() / 60:g} min of clock skew"
    if at > now + STAGE_CLOCK_SKEW:
        raise Problem(
            422,
            f"{stage} at {at.isoformat()} is later than the server's time {now.isoformat()}"
            f" ({skew})",
        )
    if previous is not None and at < previous - STAGE_CLOCK_SKEW:
        raise Problem(
            422,
            f"{stage} at {at.isoformat()} is before {after} at {previous.isoformat()} ({skew})",
        )
    if at < row.created_at - STAGE_CLOCK_SKEW:
        raise Problem(
            422,
            f"{stage} at {at.isoformat()} is before the candidate was created,"
            f" at {row.created_at.isoformat()}",
        )
    return at if previous is None else max(at, previous)


# History entries by which a confirmed case reaches the feed, and how a refusal names them.
_VISIBLE_ACTIONS = {"confirmed": "confirmed", "auto_confirmed": "confirmed", "released": "released"}


def _visible_at(doc: JsonDict) -> tuple[str, datetime | None]:
    """When the platform could first see the case, the time its first stage follows: its
    confirmation, or the end of its night hold (the latest of those entries). Not its
    ``pulled`` entry: the platform may register a case before it acknowledges the feed, and
    acknowledge it before it reports the registration."""
    for entry in reversed(doc.get("history") or []):
        action = entry.get("action") if isinstance(entry, dict) else None
        if action in _VISIBLE_ACTIONS:
            return _VISIBLE_ACTIONS[action], datetime.fromisoformat(entry["at"])
    return "confirmed", None


def _locked_now(session: Session, clock: Callable[[], datetime]) -> datetime:
    """The time once the transaction holds SQLite's write lock, which it may have waited for
    (up to the busy timeout): updated_at then follows commit order, which replays rely on."""
    session.connection()  # BEGIN IMMEDIATE
    return clock()


def _due(now: datetime) -> ColumnElement[bool]:
    """Held candidates whose night hold has ended by ``now``."""
    return and_(
        CandidateRow.feed_pos.is_(None),
        CandidateRow.hold_until <= now,
        CandidateRow.status.in_(sm.VISIBLE),
    )
