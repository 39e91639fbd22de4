"""bench/bridge.py starts the Mosquitto that mosquitto_binary() finds: Debian installs it in
/usr/sbin, which is not on a non-root user's PATH."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

Bench = Callable[[str], ModuleType]


@pytest.mark.skipif(not Path("/usr/sbin/mosquitto").exists(), reason="Debian's mosquitto")
def test_mosquitto_off_the_path_is_started_from_sbin(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bridge = bench("bridge")
    monkeypatch.setattr(shutil, "which", lambda *_args, **_kwargs: None)  # a non-root PATH
    spawned: list[list[str]] = []

    def spawn(stack: Any, cmd: list[str], env: dict[str, str], log: str) -> None:
        spawned.append(cmd)
        raise RuntimeError("stand-in failure")

    monkeypatch.setattr(bridge.Stack, "_spawn", spawn)
    with pytest.raises(RuntimeError, match=r"^stand-in failure$"):
        bridge.Stack(tmp_path).start()
    assert [cmd[:2] for cmd in spawned] == [["/usr/sbin/mosquitto", "-c"]]


def test_no_mosquitto_is_named_before_anything_starts(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bridge = bench("bridge")
    monkeypatch.setattr(bridge, "mosquitto_binary", lambda: None)
    spawned: list[list[str]] = []
    monkeypatch.setattr(bridge.Stack, "_spawn", lambda stack, cmd, env, log: spawned.append(cmd))
    with pytest.raises(SystemExit) as raised:
        bridge.Stack(tmp_path).start()
    assert str(raised.value) == "bench/bridge.py needs the mosquitto binary (Debian: mosquitto)"
    assert spawned == []
