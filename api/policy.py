"""The centre's policy as pure functions: urgency, routing, category, night hold, SLA.

Every function takes the time it judges explicitly, so the night window and the SLA are
testable at any hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gridpatrol.site import Policy, parse_hhmm


@dataclass(frozen=True)
class SitePolicy:
    """The policy section of the site file together with the site's time zone."""

    policy: Policy
    tz: ZoneInfo

    @classmethod
    def of(cls, policy: Policy, timezone: str) -> SitePolicy:
        return cls(policy, ZoneInfo(timezone))

    def urgency(self, ctype: str | None, requested: str | None) -> str | None:
        """Raise the urgency to immediate for ``urgent_types``; never lower it."""
        if ctype in self.policy.urgent_types:
            return "immediate"
        return requested

    def auto_confirms(self, ctype: str | None) -> bool:
        return ctype in self.policy.auto_confirm

    def suggested_unit(self, ctype: str | None) -> str | None:
        return self.policy.routing.get(ctype) if ctype else None

    def category(self, ctype: str | None) -> dict[str, Any] | None:
        if not ctype or ctype not in self.policy.categories:
            return None
        return self.policy.categories[ctype].model_dump(exclude_none=True)

    def hold_until(self, urgency: str | None, confirmed_at: datetime) -> datetime | None:
        """The end of the night window when a non-immediate candidate is confirmed inside it."""
        if urgency == "immediate":
            return None
        start = parse_hhmm(self.policy.night.start)
        end = parse_hhmm(self.policy.night.end)
        return night_end(confirmed_at, start, end, self.tz)

    def arrive_by(self, dispatched_at: datetime) -> datetime:
        return dispatched_at + timedelta(minutes=self.policy.sla_minutes)


def night_end(t: datetime, start: time, end: time, tz: ZoneInfo) -> datetime | None:
    """When the night window containing ``t`` ends (aware UTC), or None when ``t`` is outside.

    The window is ``[start, end)`` in local time of ``tz``; ``start > end`` crosses midnight
    and ``start == end`` means no night window.
    """
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    local = t.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    day = local.date()
    if start == end:
        return None
    if start < end:
        inside = start <= clock < end
        end_day = day
    else:
        inside = clock >= start or clock < end
        end_day = day + timedelta(days=1) if clock >= start else day
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(UTC)
