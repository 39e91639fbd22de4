"""bench/console.py removes its database and evidence directory, unless told to keep them."""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

Bench = Callable[[str], ModuleType]


def stop_after_start_up(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, work: Path
) -> tuple[ModuleType, list[bool]]:
    """The console bench on ``work``, failing at its first step after the real API is up."""
    console = bench("console")
    work.mkdir()
    monkeypatch.setattr(console, "tempfile", types.SimpleNamespace(mkdtemp=lambda prefix: work))
    database_seen: list[bool] = []

    def failing_frames(count: int) -> list[bytes]:
        database_seen.append((work / "api.db").exists())
        raise RuntimeError("stand-in failure")

    monkeypatch.setattr(console, "frames", failing_frames)
    return console, database_seen


@pytest.mark.parametrize("keep", [False, True])
def test_a_failed_run_removes_its_directory_unless_kept(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keep: bool
) -> None:
    work = tmp_path / "work"
    console, database_seen = stop_after_start_up(bench, monkeypatch, work)
    with pytest.raises(RuntimeError, match=r"^stand-in failure$"):
        console.run(1, keep=keep)
    assert database_seen == [True]
    assert (work / "api.db").exists() is keep
    assert work.exists() is keep
