"""docs/operations.md's reverse-proxy settings against the API's own limits."""

from __future__ import annotations

import re
from pathlib import Path

from gridpatrol.api.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# nginx sizes: bytes, or a k / m / g suffix (either case) in units of 1024.
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _nginx_directives() -> dict[str, str]:
    doc = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", doc, re.DOTALL)
    assert blocks, "docs/operations.md shows no nginx settings"
    directives = {}
    for line in "".join(blocks).splitlines():
        name, _, value = line.strip().rstrip(";").partition(" ")
        directives[name] = value.strip()
    return directives


def _size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def test_the_documented_proxy_lets_every_body_the_api_accepts_through() -> None:
    """nginx's default limit (1 MiB) answers 413 to larger bodies before the API sees them, and
    a producer's outbox takes a 413 as final: the frames of a candidate over 1 MiB would never
    be stored, and larger batches never accepted."""
    fields = Settings.model_fields
    largest = max(
        int(fields[name].default)
        for name in ("max_batch_bytes", "max_evidence_bytes", "max_body_bytes")
    )
    directives = _nginx_directives()
    assert _size(directives["client_max_body_size"]) >= largest
    # The live events and the feed's long poll, as the text says.
    assert directives["proxy_buffering"] == "off"
