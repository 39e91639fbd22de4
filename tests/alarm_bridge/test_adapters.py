"""The adapter on packs naming another sensor of the sample site beside the topic's own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gridpatrol.alarm_bridge.adapters import Rejected, adapt
from gridpatrol.site import load_site

SAMPLE_SITE = Path(__file__).resolve().parents[2] / "samples" / "site.yaml"
RECEIVED = datetime(2026, 12, 1, 12, tzinfo=UTC)
BATTERY = {"n": "battery", "u": "%EL", "v": 80}


@pytest.mark.parametrize(
    ("pack", "detail"),
    [
        # mh-0002's bn after mh-0001's own record: read as mh-0001's 40° tilt alarm before.
        (
            [{"bn": "mh-0001:"} | BATTERY, {"bn": "mh-0002:", "n": "tilt", "u": "deg", "v": 40}],
            "bn 'mh-0002:' on 'mh-0001'",
        ),
        # The resolved form of that record, before the first bn or after an empty one.
        (
            [{"n": "mh-0002:tilt", "u": "deg", "v": 40}, {"bn": "mh-0001:"} | BATTERY],
            "n 'mh-0002:tilt' on 'mh-0001'",
        ),
        (
            [{"bn": "mh-0001:"} | BATTERY, {"bn": "", "n": "mh-0002:tilt", "u": "deg", "v": 40}],
            "n 'mh-0002:tilt' on 'mh-0001'",
        ),
    ],
)
def test_a_pack_naming_another_sensor_after_the_topics_own_is_a_mismatch(
    pack: list[dict[str, object]], detail: str
) -> None:
    adapted = adapt(
        json.dumps(pack).encode(),
        sensor_id="mh-0001",
        registry={s.id: s for s in load_site(SAMPLE_SITE).sensors},
        received_at=RECEIVED,
    )
    assert isinstance(adapted, Rejected), adapted
    assert (adapted.reason, adapted.detail) == ("sensor_id_mismatch", detail)
