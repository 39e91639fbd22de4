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
    return await services.write(partial(services.candidates.set_stage, who, candidate_id, report))
