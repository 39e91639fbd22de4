"""Size limits of request bodies, enforced before they are read.

A body whose ``Content-Length`` is over the limit is answered 413 at once; a chunked one is
counted as it arrives and answered 413 as soon as it passes the limit. Every write is limited
(``max_body_bytes``; a candidate batch ``max_batch_bytes``), whether or not it needs a login:
``POST /session`` reads its body before it knows the caller. Evidence uploads have a limit of
their own (``max_evidence_bytes``, in the evidence router). Each item of a batch is held to
``max_body_bytes`` by its body's bytes as the batch carries them (:func:`item_body_sizes`), as
the same bytes posted alone would be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridpatrol.api.problems import problem_response

PREFIX = "/api/v1/candidates"
BATCH = f"{PREFIX}/batch"
EVIDENCE = "/api/v1/evidence/"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyLimit:
    """413 problem+json for a body over ``body_bytes`` (a candidate batch: ``batch_bytes``)."""

    def __init__(self, app: ASGIApp, body_bytes: int, batch_bytes: int) -> None:
        self.app = app
        self.body_bytes = body_bytes
        self.batch_bytes = batch_bytes

    def limit_of(self, path: str) -> tuple[int, str]:
        """The limit of a write to ``path`` and what the 413 calls its body."""
        if path == BATCH:
            return self.batch_bytes, "a batch"
        if path.startswith(PREFIX):
            return self.body_bytes, "a candidate body"
        return self.body_bytes, "a request body"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in WRITES or path.startswith(EVIDENCE):
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_of(path)

        async def refuse() -> None:
            detail = f"{what} is limited to {limit} bytes"
            await problem_response(413, detail, instance=path)(scope, receive, send)

        declared = _content_length(scope)
        if declared is not None:
            # The server reads no more than the declared length: nothing to count.
            if declared > limit:
                await refuse()
            else:
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: nothing to answer (counted as 499 by the metrics).
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await refuse()
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks)}

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()
            message, body = body, None
            return message

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


_SPACE = re.compile(r"[ \t\n\r]*")
# The rest of a string after its opening quote, up to and with its closing quote.
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Everything up to the next bracket outside a string, and that bracket (group 1): the text
# between brackets, strings whole (a bracket in one is not counted), is passed over inside the
# regex engine, so the walk in Python steps through brackets only. Possessive, so that a
# failed match (no bracket left) gives up without backtracking.
_TO_BRACKET = re.compile(r'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+([\[\]{}])', re.S)
# A number, true, false or null (NaN and Infinity too, as json.loads takes them).
_SCALAR = re.compile(r"[^,\]}\s]+")
_DECODER = json.JSONDecoder()


def item_body_sizes(raw: bytes) -> list[int]:
    """The bytes of each item's ``body`` in a ``POST /candidates/batch`` request body, as sent
    (0 for an item without one): what the same body posted alone would carry.

    ``raw`` is JSON the app parsed already (with :func:`json.loads`, duplicate names taking
    the last value, as here) into an object whose last ``items`` is a list of objects; an
    earlier ``items`` may be any value, and is passed over. It is read once, in time linear in
    its size, without building its values: the app's parse of it is alive meanwhile, and a
    second one would double the objects every garbage collection walks. ValueError if it is
    not such JSON.
    """
    encoding = json.detect_encoding(raw)
    text = raw.decode(encoding, "surrogatepass")
    # Counted in the request's own encoding (a UTF-16 or UTF-32 BOM opens the request, not an
    # item).
    unit = "utf-16-le" if "16" in encoding else "utf-32-le" if "32" in encoding else "utf-8"
    sizes: list[int] = []

    def member(name: str, at: int) -> int:
        if name != "items":
            return _skip(text, at)
        # Only the last items counts, as in the parse: an earlier one is forgotten.
        sizes.clear()
        if text[at] != "[":
            return _skip(text, at)
        return _array(text, at, item)

    def item(at: int) -> int:
        sizes.append(0)
        if text[at] != "{":
            return _skip(text, at)
        return _object(text, at, field)

    def field(name: str, at: int) -> int:
        end = _skip(text, at)
        if name == "body":
            sizes[-1] = len(text[at:end].encode(unit, "surrogatepass"))
        return end

    try:
        _object(text, _after(_SPACE, text, 0), member)
    except IndexError as exc:
        raise ValueError("the batch ends early") from exc
    return sizes


def _after(pattern: re.Pattern[str], text: str, at: int) -> int:
    """The end of ``pattern`` matched at ``at``."""
    found = pattern.match(text, at)
    if found is None:
        raise ValueError(f"unexpected text at {at}")
    return found.end()


def _skip(text: str, at: int) -> int:
    """The end of the JSON value that starts at ``at``, found without building it, at any
    depth."""
    first = text[at]
    if first == '"':
        return _after(_STRING_REST, text, at + 1)
    if first not in "[{":
        return _after(_SCALAR, text, at)
    depth = 0
    end = at
    while (found := _TO_BRACKET.match(text, end)) is not None:
        end = found.end()
        if found[1] in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return end
    raise ValueError(f"the value at {at} does not end")


def _next(text: str, at: int, close: str) -> tuple[int, bool]:
    """After a member or element ending at ``at``: where the next one starts (False), or the
    end of its object or array, past its ``close`` (True)."""
    at = _after(_SPACE, text, at)
    if text[at] == close:
        return at + 1, True
    if text[at] != ",":
        raise ValueError(f"expected , or {close} at {at}")
    return _after(_SPACE, text, at + 1), False


def _object(text: str, at: int, member: Callable[[str, int], int]) -> int:
    """Walk the object at ``at``: ``member(name, value start)`` returns its value's end.
    The object's end."""
    if text[at] != "{":
        raise ValueError(f"expected an object at {at}")
    start = _after(_SPACE, text, at + 1)
    if text[start] == "}":
        return start + 1
    closed = False
    while not closed:
        if text[start] != '"':
            raise ValueError(f"expected a name at {start}")
        name, at = _DECODER.raw_decode(text, start)
        at = _after(_SPACE, text, at)
        if text[at] != ":":
            raise ValueError(f"expected : at {at}")
        start, closed = _next(text, member(name, _after(_SPACE, text, at + 1)), "}")
    return start


def _array(text: str, at: int, element: Callable[[int], int]) -> int:
    """Walk the array at ``at``: ``element(start)`` returns the element's end. The array's
    end."""
    start = _after(_SPACE, text, at + 1)
    if text[start] == "]":
        return start + 1
    closed = False
    while not closed:
        start, closed = _next(text, element(start), "]")
    return start
