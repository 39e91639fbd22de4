"""The platform's reports of later stages (registered … closed)."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter

from gridpatrol.api.deps import Platform, Svc
from gridpatrol.api.routers.candidates import CandidateId
from gridpatrol.api.schemas import StatusIn

router = APIRouter(prefix="/api/v1", tags=["hand-over"])


@router.post("/candidates/{candidate_id}/status")
async def report_stage(
    candidate_id: CandidateId, report: StatusIn, who: Platform, services: Svc
) -> dict[str, Any]:
    """Record the next stage of a confirmed case, dated ``at`` (the platform's clock, within
    5 min of the server's) or, without it, by the server.

    409, the case unchanged: a stage out of order; a case still held for the night (detail
    ``candidate <id> is held until <hold_until>``); the stage the case is at with an ``at``
    that would record another time than the one it has (``<stage> is recorded at <time>; …``).
    The stage it is at, without ``at`` or with the same one, is a replay: 200, unchanged."""
    return await services.write(partial(services.candidates.set_stage, who, candidate_id, report))
