"""Reviewers' decisions on candidates."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter

from gridpatrol.api.deps import Reviewer, Svc
from gridpatrol.api.routers.candidates import CandidateId
from gridpatrol.api.schemas import ReviewIn

router = APIRouter(prefix="/api/v1", tags=["review"])


@router.post("/candidates/{candidate_id}/review")
async def review(
    candidate_id: CandidateId, decision: ReviewIn, who: Reviewer, services: Svc
) -> dict[str, Any]:
    return await services.write(partial(services.candidates.review, who, candidate_id, decision))
