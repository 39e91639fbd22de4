"""Candidate intake (producers) and reads (reviewers, the platform)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator

from gridpatrol.api.bodylimit import item_body_sizes
from gridpatrol.api.deps import Producer, ReviewerOrPlatform, Svc
from gridpatrol.api.schemas import (
    CANDIDATE_PATH_PATTERN,
    ID_PATTERN,
    TYPE_PATTERN,
    BatchIn,
    CandidateIn,
    CandidatePatch,
    Instant,
    Page,
    StatusName,
    canonical_candidate_id,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["candidates"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
CandidateId = Annotated[
    str, Path(pattern=CANDIDATE_PATH_PATTERN), AfterValidator(canonical_candidate_id)
]


def json_text(text: str, status: int = 200) -> Response:
    """A response whose body is JSON serialized already (the stored document)."""
    return Response(text.encode(), status_code=status, media_type="application/json")


def raw_page(items: list[str], next_cursor: str | None) -> Response:
    """A page built from stored JSON documents without parsing them again."""
    cursor = "null" if next_cursor is None else f'"{next_cursor}"'
    body = '{"items":[' + ",".join(items) + '],"next_cursor":' + cursor + "}"
    return Response(body.encode(), media_type="application/json")


@router.post("/candidates", status_code=201, response_model=dict[str, Any])
async def create_candidate(
    candidate: CandidateIn, who: Producer, services: Svc, key: IdempotencyKey = None
) -> Response:
    status, text = await services.write(partial(services.candidates.create, who, key, candidate))
    return json_text(text, status)


async def request_body(request: Request) -> bytes:
    """The request's body as sent (read already, to parse it)."""
    return await request.body()


@router.post("/candidates/batch", status_code=207, response_model=dict[str, Any])
def create_batch(
    batch: BatchIn,
    who: Producer,
    services: Svc,
    raw: Annotated[bytes, Depends(request_body)],
) -> JSONResponse:
    # Each item is held to the body limit by its bytes as sent, as a single POST is.
    try:
        sizes = item_body_sizes(raw)
    except ValueError as exc:
        # The parse took what the measure cannot read: answered as the parse answers JSON it
        # cannot read (422), not as a server error.
        log.warning("a batch the parse took cannot be measured by item: %s", exc)
        error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}
        raise RequestValidationError([{**error, "input": {}, "ctx": {"error": str(exc)}}]) from exc
    items = zip(batch.items, sizes, strict=True)
    results = services.candidates.batch(
        who, [(item.idempotency_key, item.body, size) for item, size in items]
    )
    return JSONResponse({"items": results}, status_code=207)


@router.get("/candidates", response_model=Page)
def list_candidates(
    _who: ReviewerOrPlatform,
    services: Svc,
    status: Annotated[StatusName | None, Query()] = None,
    type: Annotated[str | None, Query(pattern=TYPE_PATTERN)] = None,
    camera_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    sensor_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    since: Instant | None = None,
    until: Instant | None = None,
    open: Annotated[
        bool, Query(description="leave out rejected, merged and closed candidates")
    ] = False,
    near: Annotated[
        Annotated[str, AfterValidator(canonical_candidate_id)] | None,
        Query(
            pattern=CANDIDATE_PATH_PATTERN,
            description="instead of the list: the other candidates of this one's type and"
            " camera or sensor that occurred within 24 h of it, nearest first (one page)",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    if near is not None:
        return raw_page(services.candidates.near(near, open_only=open, limit=limit), None)
    items, next_cursor = services.candidates.search(
        status=status,
        ctype=type,
        camera_id=camera_id,
        sensor_id=sensor_id,
        since=since,
        until=until,
        open_only=open,
        cursor=cursor,
        limit=limit,
    )
    return raw_page(items, next_cursor)


@router.get("/candidates/{candidate_id}", response_model=dict[str, Any])
def get_candidate(
    candidate_id: CandidateId,
    _who: ReviewerOrPlatform,
    services: Svc,
) -> Response:
    return json_text(services.candidates.get(candidate_id))


@router.patch("/candidates/{candidate_id}", response_model=dict[str, Any])
async def patch_candidate(
    candidate_id: CandidateId,
    patch: CandidatePatch,
    who: Producer,
    services: Svc,
    key: IdempotencyKey = None,
) -> Response:
    """Merge the elements into the candidate: objects merge field by field (a field left out
    stays as it is, the later value wins); evidence and references accumulate, except that a
    ``latest`` frame supersedes the earlier one; any other list (``measurements``,
    ``detection.boxes``, ...) is replaced by the one sent, and ``[]`` empties it.

    A top-level element set to null is refused (422); a field inside one may be null
    (``alarm.first_seen``, ``location.lat``), and a field the schema does not name is kept as
    sent. A PATCH that would leave a confirmed candidate (or one further on) without a
    required element it has is refused (422, the candidate unchanged): an empty
    ``description``, a ``location`` with neither coordinates (``lat`` and ``lon``) nor
    ``address`` nor ``grid_code``, a ``source`` without ``source_event_id``. A location that
    keeps its address or grid code is still present, so its coordinates may be set to null. A
    ``new`` candidate that loses a required element goes back to ``incomplete``."""
    call = partial(services.candidates.patch, who, candidate_id, key, patch)
    status, text = await services.write(call)
    return json_text(text, status)
