"""bench/console.py launches the Chromium the browser tests use, and an API that exits while
starting fails the bench at once with its exit code and log (it used to be waited for, then
taken as started)."""

from __future__ import annotations

import shutil
import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

Bench = Callable[[str], ModuleType]


def test_the_chromium_is_gridpatrol_chromium_else_playwrights_own(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = bench("console")
    monkeypatch.setattr(shutil, "which", lambda *_args, **_kwargs: None)  # no `chromium`
    monkeypatch.setenv("GRIDPATROL_CHROMIUM", "/x/chrome")
    assert console.system_chromium() == "/x/chrome"
    monkeypatch.delenv("GRIDPATROL_CHROMIUM")
    assert console.system_chromium() is None  # Playwright's own


def test_the_bench_launches_the_chosen_chromium(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = bench("console")
    monkeypatch.setattr(shutil, "which", lambda *_args, **_kwargs: None)
    launched: list[dict[str, Any]] = []

    def launch(**kwargs: Any) -> str:
        launched.append(kwargs)
        return "browser"

    playwright = types.SimpleNamespace(chromium=types.SimpleNamespace(launch=launch))
    monkeypatch.setenv("GRIDPATROL_CHROMIUM", "/x/chrome")
    assert console.launch_chromium(playwright) == "browser"
    monkeypatch.delenv("GRIDPATROL_CHROMIUM")
    console.launch_chromium(playwright)
    assert [kwargs["executable_path"] for kwargs in launched] == ["/x/chrome", None]


def test_an_api_that_exits_at_start_is_reported_and_the_directory_removed(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    console = bench("console")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(console, "tempfile", types.SimpleNamespace(mkdtemp=lambda prefix: work))
    monkeypatch.setenv("GRIDPATROL_IDEMPOTENCY_RETENTION_S", "0")  # the API refuses to start
    reached: list[int] = []

    def frames(count: int) -> list[bytes]:
        reached.append(count)
        raise AssertionError("the API was taken as started")

    monkeypatch.setattr(console, "frames", frames)
    with pytest.raises(RuntimeError, match=r"^server exited with code 2: ") as raised:
        console.run(1)
    assert "GRIDPATROL_IDEMPOTENCY_RETENTION_S must be a number of seconds" in str(raised.value)
    assert reached == []
    assert not work.exists()
