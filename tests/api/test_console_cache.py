"""The console's files are revalidated before each use: an upgrade never leaves a browser
running a new module next to an old cached one it imports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gridpatrol.api.routers import console


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


def test_a_module_replaced_with_the_same_size_and_time_gets_a_new_etag(
    api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install that sets every file's time (or a copy keeping times) replaces a module by
    one of the same size: the browser's copy is not answered 304."""
    monkeypatch.setattr(console, "STATIC", tmp_path)
    module = tmp_path / "app.js"
    module.write_text("export const v = 1;\n", encoding="utf-8")
    os.utime(module, ns=(1_000_000_000, 1_000_000_000))
    first = api.http.get("/review/static/app.js")
    assert (first.status_code, first.text) == (200, "export const v = 1;\n")

    module.write_text("export const v = 2;\n", encoding="utf-8")
    os.utime(module, ns=(1_000_000_000, 1_000_000_000))
    again = api.http.get("/review/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert (again.status_code, again.text) == (200, "export const v = 2;\n")
    assert again.headers["etag"] != first.headers["etag"]
    assert (
        api.http.get(
            "/review/static/app.js", headers={"If-None-Match": again.headers["etag"]}
        ).status_code
        == 304
    )
