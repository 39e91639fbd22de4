"""Statistics for the supervision group."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gridpatrol.api.deps import Reviewer, Svc
from gridpatrol.api.schemas import Instant

router = APIRouter(prefix="/api/v1", tags=["stats"])


@router.get("/stats")
def stats(
    _who: Reviewer,
    services: Svc,
    since: Instant | None = None,
    until: Instant | None = None,
) -> dict[str, Any]:
    return services.candidates.stats(since, until)
