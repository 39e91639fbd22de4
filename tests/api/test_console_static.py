"""The console's files are served by name from ``api/static/``; any other name is a 404."""

from __future__ import annotations

import logging
from typing import Any

import pytest


@pytest.mark.parametrize(
    ("path", "name"),
    [
        pytest.param("%00", "\x00", id="nul"),
        pytest.param("app.js%00", "app.js\x00", id="nul-after-a-file"),
        pytest.param("a" * 300, "a" * 300, id="component-past-name-max"),
        pytest.param("/".join(["a" * 250] * 20), "/".join(["a" * 250] * 20), id="past-path-max"),
        pytest.param("..%2fapp.py", "../app.py", id="traversal"),
        pytest.param("app.js/..%2f..%2f__init__.py", "app.js/../../__init__.py", id="via-a-file"),
        pytest.param("nowhere.js", "nowhere.js", id="absent"),
        pytest.param("", "", id="the-folder"),
    ],
)
def test_a_name_no_console_file_has_is_a_404_problem(
    api: Any, caplog: pytest.LogCaptureFixture, path: str, name: str
) -> None:
    caplog.set_level(logging.WARNING)
    response = api.http.get(f"/review/static/{path}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == f"no console file {name}"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
