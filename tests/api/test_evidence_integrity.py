"""Evidence the store must refuse or not trust: JSON nested too deeply to parse, and stored
files whose bytes no longer hash to their name (a write torn by a power cut)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

URL = "/api/v1/evidence"


def put(api: Any, data: bytes, media: str) -> Any:
    sha = hashlib.sha256(data).hexdigest()
    return api.as_("producer").put(f"{URL}/{sha}", content=data, headers={"Content-Type": media})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_json_evidence_nested_too_deeply_is_refused_with_422_not_500(api: Any) -> None:
    # A 500 would be retried by the producer's outbox for ever, blocking its queue.
    deep = b"[" * 100_000 + b"]" * 100_000
    response = put(api, deep, "application/json")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    sha = hashlib.sha256(deep).hexdigest()
    assert response.json() == {
        "type": "about:blank",
        "title": "Invalid Content",
        "status": 422,
        "detail": "not a valid application/json: nested too deeply",
        "instance": f"{URL}/{sha}",
    }
    assert api.as_("reviewer").get(f"{URL}/{sha}").status_code == 404
    # Nesting Python's parser takes is stored as before.
    assert put(api, b"[" * 500 + b"]" * 500, "application/json").status_code == 201
