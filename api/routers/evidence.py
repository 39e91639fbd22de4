"""Evidence upload and download (content-addressed)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from gridpatrol.api.deps import Producer, ReviewerOrPlatform, Svc, run_blocking
from gridpatrol.api.evidence import SHA256_RE, EvidenceError, media_type_of
from gridpatrol.api.routers.console import not_modified

router = APIRouter(prefix="/api/v1", tags=["evidence"])
# Up to this size, hashing and writing the file to a local disk (about 1 ms) cost less than a
# thread hop and its GIL hand-overs; larger uploads are stored in the pool, not on the event
# loop. Only the single-box SQLite setup does this: with PostgreSQL the evidence store is
# typically shared (NFS, an object store mount), where one slow write would stall every
# request of the process.
INLINE_BYTES = 1 << 20
# A file's bytes never change under its hash; private: who may see it is checked per request.
CACHE = {"Cache-Control": "private, max-age=31536000, immutable"}

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {}},
        },
    }
}


@router.put("/evidence/{sha256}", status_code=201, openapi_extra=UPLOAD_BODY)
async def put_evidence(sha256: str, request: Request, who: Producer, services: Svc) -> JSONResponse:
    # An EvidenceError is answered as a problem by the app's handler (503 with Retry-After
    # when the stored file cannot be read just now).
    if not SHA256_RE.fullmatch(sha256):
        raise EvidenceError(422, "Invalid Hash", "the path must be a lowercase SHA-256")
    media_type_of(request.headers.get("content-type"))
    data = await _body(request, services.settings.max_evidence_bytes)
    put = partial(services.store.put, sha256, data, request.headers.get("content-type"))
    inline = services.db.dialect == "sqlite" and len(data) <= INLINE_BYTES
    stored = await run_blocking(put, inline=inline)
    # Incomplete candidates that refer to this file are judged again.
    await services.write(partial(services.candidates.evidence_arrived, who, sha256))
    body = {
        "sha256": stored.sha256,
        "media_type": stored.media_type,
        "size": stored.size,
        "width": stored.width,
        "height": stored.height,
    }
    return JSONResponse(body, status_code=201 if stored.created else 200)


async def _body(request: Request, limit: int) -> bytes:
    """The upload's bytes; 413 as soon as the declared or received size passes ``limit``."""
    too_large = EvidenceError(413, "Content Too Large", f"evidence is limited to {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/evidence/{sha256}", response_class=Response)
def get_evidence(
    sha256: str,
    _who: ReviewerOrPlatform,
    services: Svc,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, **CACHE}
    if not_modified(if_none_match, etag) and services.store.has(sha256):
        return Response(status_code=304, headers=headers)
    data, media = services.store.get(sha256)
    return Response(data, media_type=media, headers=headers)
