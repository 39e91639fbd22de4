"""The console's files are revalidated before each use: an upgrade never leaves a browser
running a new module next to an old cached one it imports."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize(
    "path",
    ["/review", "/review/static/app.js", "/review/static/queue.js", "/review/static/style.css"],
)
def test_console_files_are_revalidated_before_use(api: Any, path: str) -> None:
    response = api.http.get(path)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    etag = response.headers["etag"]

    again = api.http.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "no-cache"

    listed = api.http.get(path, headers={"If-None-Match": f'"0123", W/{etag}'})
    assert listed.status_code == 304
    full = api.http.get(path, headers={"If-None-Match": '"another-version"'})
    assert full.status_code == 200
    assert full.content == response.content
    assert full.headers["cache-control"] == "no-cache"
