"""Which Chromium the browser tests launch: GRIDPATROL_CHROMIUM, else a `chromium` on PATH that
runs, else Playwright's own (None). Ubuntu's `chromium` package is a stub of a snap that does
not run where there is no snapd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _chromium(folder: Path, status: int) -> Path:
    path = folder / "chromium"
    folder.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'Chromium 131.0'\nexit {status}\n")
    path.chmod(0o755)
    return path


def test_a_chromium_that_runs_is_used_and_a_snap_stub_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, find_chromium: Callable[[], str | None]
) -> None:
    monkeypatch.delenv("GRIDPATROL_CHROMIUM", raising=False)
    runs = _chromium(tmp_path / "debian", 0)
    monkeypatch.setenv("PATH", str(runs.parent))
    assert find_chromium() == str(runs)

    stub = _chromium(tmp_path / "ubuntu", 1)
    monkeypatch.setenv("PATH", str(stub.parent))
    assert find_chromium() is None  # Playwright's own

    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert find_chromium() is None

    monkeypatch.setenv("GRIDPATROL_CHROMIUM", "/opt/chrome/chrome")
    assert find_chromium() == "/opt/chrome/chrome"
