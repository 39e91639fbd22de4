"""A minimal keep-alive HTTP/1.1 client for load generation.

The benchmarks share two cores with the server they measure. A general client such as httpx
spends about as much CPU per request as the server does, so it caps the measured rate at
its own speed. This one writes pre-built request bytes to a persistent connection and reads
back only the status line, the headers it needs and the body: a few microseconds per request.
It understands Content-Length responses only, which is what uvicorn sends for JSON bodies.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One persistent connection; requests on it are strictly sequential."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer, f"{host}:{port}")

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Reply:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return await self._read_reply()

    async def _read_reply(self) -> Reply:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this client")
        return Reply(status, await self._reader.readexactly(length) if length else b"")

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
