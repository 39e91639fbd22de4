"""Benchmark servers and brokers that fail to start (or are interrupted) leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import httpx
import pytest

Bench = Callable[[str], ModuleType]


class Recorded(subprocess.Popen[bytes]):
    """Popen that remembers every process it started, so a test can look at them."""

    started: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Recorded.started.append(self)


@pytest.fixture
def recorded() -> Iterator[list[subprocess.Popen[bytes]]]:
    Recorded.started = []
    yield Recorded.started
    for proc in Recorded.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_broker_that_exits_at_once_is_reported_and_its_directory_removed(
    bench: Bench,
) -> None:
    workdirs: list[Path] = []

    def bad_conf(port: int, workdir: Path) -> str:
        workdirs.append(workdir)
        return "no_such_option 1\n"

    with pytest.raises(SystemExit) as raised:
        bench("mqtt").Broker("bad", bad_conf)
    assert len(workdirs) == 1
    assert not workdirs[0].exists()
    assert str(raised.value) == "bad: mosquitto exited with code 3"


def test_an_api_server_interrupted_while_starting_is_killed(
    bench: Bench,
    recorded: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    api = bench("api")
    monkeypatch.setattr(
        api,
        "subprocess",
        types.SimpleNamespace(Popen=Recorded, TimeoutExpired=subprocess.TimeoutExpired),
    )

    def interrupted(*_args: Any, **_kwargs: Any) -> httpx.Response:
        raise KeyboardInterrupt  # Ctrl-C during the health check

    monkeypatch.setattr(
        api, "httpx", types.SimpleNamespace(get=interrupted, TransportError=httpx.TransportError)
    )
    never_healthy = [sys.executable, "-c", "import time; time.sleep(600)"]
    with pytest.raises(KeyboardInterrupt):
        api.Server(never_healthy, {}, 9, tmp_path / "log")
    assert len(recorded) == 1
    assert recorded[0].poll() is not None


# A supervisor as `gridpatrol api --workers N` is one: SIGTERM stops its worker, SIGKILL leaves
# it running.
SUPERVISOR = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(worker.pid))
def stop(*_):
    worker.terminate(); worker.wait(); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(600)
"""


def test_an_api_server_that_fails_to_start_stops_its_workers_too(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = bench("api")
    pid_file = tmp_path / "worker.pid"

    def interrupted(*_args: Any, **_kwargs: Any) -> httpx.Response:
        if not pid_file.exists() or not pid_file.read_text():
            raise httpx.TransportError("starting")  # until the worker runs
        raise KeyboardInterrupt

    monkeypatch.setattr(
        api, "httpx", types.SimpleNamespace(get=interrupted, TransportError=httpx.TransportError)
    )
    with pytest.raises(KeyboardInterrupt):
        api.Server([sys.executable, "-c", SUPERVISOR, str(pid_file)], {}, 9, tmp_path / "log")
    worker = int(pid_file.read_text())
    gone = subprocess.run(["ps", "-o", "stat=", "-p", str(worker)], capture_output=True, text=True)
    assert gone.stdout.strip() in ("", "Z")  # ended (a zombie until its new parent reaps it)


def test_an_api_server_that_exits_at_once_is_reported_with_its_code(
    bench: Bench, tmp_path: Path
) -> None:
    exits = [sys.executable, "-c", "import sys; print('no database'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"^server exited with code 3: no database\n$"):
        bench("api").Server(exits, {}, 9, tmp_path / "log")


def test_the_bridge_bench_stops_its_broker_and_removes_its_directory_when_the_api_crashes(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bridge = bench("bridge")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(bridge, "tempfile", types.SimpleNamespace(mkdtemp=lambda prefix: work))
    monkeypatch.setattr(sys, "argv", ["bridge.py", "--quick"])
    spawned: list[tuple[str, subprocess.Popen[bytes]]] = []
    spawn = bridge.Stack._spawn

    def crashing_api(
        stack: Any, cmd: list[str], env: dict[str, str], log: str
    ) -> subprocess.Popen[bytes]:
        if log == "api.log":
            cmd = [sys.executable, "-c", "import sys; print('cannot start'); sys.exit(4)"]
        proc: subprocess.Popen[bytes] = spawn(stack, cmd, env, log)
        spawned.append((log, proc))
        return proc

    monkeypatch.setattr(bridge.Stack, "_spawn", crashing_api)
    try:
        with pytest.raises(RuntimeError, match=r"^the API exited with code 4: cannot start\n$"):
            bridge.main()
        assert [log for log, _ in spawned] == ["mosquitto.log", "api.log"]
        assert [proc.poll() is None for _, proc in spawned] == [False, False]
        assert not work.exists()
    finally:
        for _, proc in spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
