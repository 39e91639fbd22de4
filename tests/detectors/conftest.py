"""Detector fixtures: camera JPEGs as real cameras send them."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment holding only an Orientation tag, right after SOI,
    as an HTTP snapshot camera mounted on its side sends it."""
    ifd = (1).to_bytes(2, "big")  # one entry: tag 0x0112, type SHORT, count 1, the value
    ifd += bytes.fromhex("0112 0003 00000001") + orientation.to_bytes(2, "big") + b"\0\0"
    ifd += (0).to_bytes(4, "big")  # no next IFD
    exif = b"Exif\0\0" + b"MM\0\x2a" + (8).to_bytes(4, "big") + ifd
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    return jpeg[:2] + app1 + jpeg[2:]


@pytest.fixture
def with_orientation() -> Callable[[bytes, int], bytes]:
    """Add an EXIF orientation tag to a JPEG (6: the camera is turned 90° clockwise)."""
    return _with_orientation
