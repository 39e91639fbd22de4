"""Size limits of request bodies, enforced before they are read.

A body whose ``Content-Length`` is over the limit is answered 413 at once; a chunked one is
counted as it arrives and answered 413 as soon as it passes the limit. Every write is limited
(``max_body_bytes``; a candidate batch ``max_batch_bytes``), whether or not it needs a login:
``POST /session`` reads its body before it knows the caller. Evidence uploads have a limit of
their own (``max_evidence_bytes``, in the evidence router).
"""

from __future__ import annotations

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
