"""``plausible_instant``: the API's check of a time, public for clients that check first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gridpatrol.api.schemas import plausible_instant
from gridpatrol.detectors.head_training import since_param


def test_an_instant_in_range_is_given_in_utc() -> None:
    at = datetime(2026, 12, 1, 8, 30, tzinfo=timezone(timedelta(hours=8)))
    assert plausible_instant(at) == datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    assert plausible_instant(at).tzinfo is UTC


@pytest.mark.parametrize(
    "at",
    [
        datetime(1899, 12, 31, 23, 59, tzinfo=UTC),
        datetime(9001, 1, 1, tzinfo=UTC),
        # 1900 as written, 1899 in UTC.
        datetime(1900, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
    ],
)
def test_an_instant_outside_the_years_is_refused(at: datetime) -> None:
    with pytest.raises(ValueError, match=r"^the time must lie between the years 1900 and 9000$"):
        plausible_instant(at)


def test_train_head_checks_since_with_it() -> None:
    assert since_param("2026-12-01T08:30+08:00") == "2026-12-01T00:30:00+00:00"
    with pytest.raises(ValueError, match="between the years 1900 and 9000"):
        since_param("1899-12-31")
