"""Reviewers' decisions on candidates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gridpatrol.api.deps import Reviewer, Svc
from gridpatrol.api.routers.candidates import CandidateId
from gridpatrol.api.schemas import ReviewIn

router = APIRouter(prefix="/api/v1", tags=["review"])


@router.post("/candidates/{candidate_id}/review")
def review(
    candidate_id: CandidateId, decision: ReviewIn, who: Reviewer, services: Svc
) -> dict[str, Any]:
    return services.candidates.review(who, candidate_id, decision)
