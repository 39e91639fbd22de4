"""A minimal MQTT 3.1.1 publisher (QoS 0) for load generation.

The detector benchmark publishes about 100 frames of 100 KB per second on the two cores the
worker it measures runs on. paho-mqtt spends about a millisecond of CPU per such frame
(building the packet in Python, its network thread), a twentieth of an inference. This client
writes each PUBLISH packet to the socket in one call: a few microseconds per frame, so the
publisher stands for cameras elsewhere and does not take the worker's CPU. It connects with a
clean session and no keep-alive, sends QoS 0 only and reads nothing after the CONNACK.
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlsplit


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer: 7 bits per byte, high bit set while more follow."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def connect_packet(client_id: str) -> bytes:
    # Protocol "MQTT" level 4 (3.1.1), flags: clean session; keep-alive 0 (off).
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 0) + utf8(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    head = utf8(topic)
    return b"\x30" + remaining_length(len(head) + len(payload)) + head + payload


class RawPublisher:
    """One connection to a broker without authentication (``mqtt://host:port``)."""

    def __init__(self, url: str, client_id: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or parts.username:
            raise ValueError(f"a plain mqtt://host:port URL without credentials, not {url}")
        self._sock = socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 1883), timeout=timeout
        )
        self._sock.sendall(connect_packet(client_id))
        ack = self._read(4)
        if ack[:2] != b"\x20\x02" or ack[3] != 0:
            self._sock.close()
            raise ConnectionError(f"the broker at {url} refused the connection: {ack.hex()}")
        self.published = 0

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    def publish(self, topic: str, payload: bytes) -> None:
        self._sock.sendall(publish_packet(topic, payload))
        self.published += 1

    def close(self) -> None:
        try:
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, a clean goodbye
        finally:
            self._sock.close()
