"""Detector fixtures: camera JPEGs as real cameras send them, variable-frame-rate videos,
images too large to decode."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
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


# MP4 boxes that hold other boxes, down to the video track's sample table.
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})


def _boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    at = 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        yield kind, data[at + 8 : at + size]
        at += size


def _retimed(data: bytes, ticks: Sequence[int]) -> bytes:
    """The MP4 (one video track, moov after mdat, as OpenCV's writer lays it out) with frame
    ``i`` lasting ``ticks[i]`` of its written frame periods: the sample durations (stts) and
    every duration of the file scaled, the edit list dropped (it would cut the track at the old
    duration). The sample data and its offsets stay as they are."""
    out = b""
    for kind, payload in _boxes(data):
        if kind in _CONTAINERS:
            payload = _retimed(payload, ticks)
        elif kind == b"edts":
            continue
        elif kind == b"stts":
            (delta,) = struct.unpack(">I", payload[12:16])
            runs = [(len(list(same)), k * delta) for k, same in itertools.groupby(ticks)]
            entries = b"".join(struct.pack(">II", *run) for run in runs)
            payload = payload[:4] + struct.pack(">I", len(runs)) + entries
        elif kind in (b"mvhd", b"tkhd", b"mdhd"):
            assert payload[0] == 0, "version 1 headers (64-bit durations) are not written"
            at = 20 if kind == b"tkhd" else 16
            (old,) = struct.unpack(">I", payload[at : at + 4])
            scaled = old * sum(ticks) // len(ticks)
            payload = payload[:at] + struct.pack(">I", scaled) + payload[at + 4 :]
        out += struct.pack(">I4s", 8 + len(payload), kind) + payload
    return out


def _write_vfr(path: Path, frames: Sequence[np.ndarray], ticks: Sequence[int]) -> Path:
    assert len(frames) == len(ticks)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    path.write_bytes(_retimed(path.read_bytes(), ticks))
    return path


@pytest.fixture
def write_vfr() -> Callable[[Path, Sequence[np.ndarray], Sequence[int]], Path]:
    """Write a variable-frame-rate MP4: frame ``i`` lasts ``ticks[i]`` tenths of a second (as
    a phone or a recorder that drops frames writes them; OpenCV's writer only writes one rate)."""
    return _write_vfr


def _write_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 and the row's bits, all 0
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


@pytest.fixture
def write_png() -> Callable[[Path, int, int], Path]:
    """Write a black PNG of any size without holding its pixels: a few hundred kB on disk for
    a billion pixels, as a panorama or a crafted file may claim."""
    return _write_png
