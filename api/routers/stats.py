"""Statistics for the supervision group."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import AwareDatetime

from gridpatrol.api.deps import Reviewer, Svc

router = APIRouter(prefix="/api/v1", tags=["stats"])


@router.get("/stats")
def stats(
    _who: Reviewer,
    services: Svc,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
) -> dict[str, Any]:
    return services.candidates.stats(since, until)
