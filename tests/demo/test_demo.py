"""``gridpatrol demo`` end to end: every component as a subprocess, candidates with evidence."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from gridpatrol import cli
from gridpatrol.ingest.broker import free_port, mosquitto_binary, start_mosquitto

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_unattended_and_produces_candidates_with_evidence(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRIDPATROL_MQTT_URL"}  # own broker
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "gridpatrol.cli", "demo", "--duration", "60", "--no-browser"]
    argv += ["--port", str(free_port()), "--workdir", str(workdir)]
    stderr = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    out: list[str] = []
    for line in proc.stdout:
        out.append(line.rstrip("\n"))
        key, sep, value = line.partition(":  ")
        if sep:
            printed[key.strip()] = value.strip()
        if "reviewer token" in printed:
            break
    try:
        console, token = printed["review console"], printed["reviewer token"]
        assert console.startswith("http://127.0.0.1:") and console.endswith("/review")
        assert token.startswith("gp-reviewer-")

        # While it runs: the console is served; a zone-editor snapshot comes from ingest (MQTT).
        page = httpx.get(console, timeout=30)
        assert page.status_code == 200 and "<title>" in page.text
        api = console.removesuffix("/review") + "/api/v1"
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 45  # ingest may still be opening its sources
        while True:
            snapshot = httpx.post(f"{api}/cameras/cam-dn-002/snapshot", headers=headers, timeout=30)
            if snapshot.status_code != 504 or time.monotonic() > deadline:
                break
        assert snapshot.status_code == 200, snapshot.text
        assert snapshot.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(snapshot.content, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (432, 768)  # the car park clip's frames

    except BaseException:
        proc.send_signal(signal.SIGINT)  # the demo stops its components in order
        proc.wait(timeout=120)
        raise
    rest, _ = proc.communicate(timeout=240)
    stderr.close()
    out += rest.splitlines()
    log = (tmp_path / "stderr.log").read_text()[-3000:]
    assert proc.returncode == 0, "\n".join(out[-30:]) + log
    last = out[-1]
    assert last.startswith("candidates: "), out[-10:]
    count = int(last.removeprefix("candidates: "))
    assert count >= 1, log

    # The table rows above the last line: type, camera/sensor, count, with evidence, statuses.
    header = next(i for i, line in enumerate(out) if line.startswith("type "))
    rows = [line.split() for line in out[header + 2 : -1]]
    assert sum(int(r[2]) for r in rows) == count
    assert sum(int(r[3]) for r in rows) == count  # every candidate carries evidence
    stored = [p for p in (workdir / "evidence").rglob("*") if p.is_file()]
    assert len(stored) >= 1
    for name in ("api", "ingest", "detect", "bridge", "sensors"):
        assert (workdir / "logs" / f"{name}.log").stat().st_size > 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


MQTT_COMPONENTS = ("sensors", "ingest", "detect", "bridge")


def _wait_until_connected(logs: Path, names: tuple[str, ...], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(names)
    while waiting and time.monotonic() < deadline:
        waiting = [n for n in waiting if ": connected to mqtt://" not in _read(logs / f"{n}.log")]
        time.sleep(0.2)
    assert waiting == [], f"not connected to the broker within {timeout} s: {waiting}"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _terminal_ctrl_c(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # a terminal signals its whole foreground process group


def _sigterm(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)  # as `docker stop` or systemd would


def _impatient_ctrl_c(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)  # the stop has begun
    os.killpg(proc.pid, signal.SIGINT)  # pressed again while the components stop


def _terminal_closed(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGHUP)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "exit_code"),
    [
        (_sigterm, 128 + signal.SIGTERM),
        (_terminal_ctrl_c, 128 + signal.SIGINT),
        (_impatient_ctrl_c, 128 + signal.SIGINT),
        (_terminal_closed, 128 + signal.SIGHUP),
    ],
    ids=["sigterm", "ctrl-c", "ctrl-c twice", "terminal closed"],
)
def test_a_stop_signal_stops_every_component_in_order_and_prints_the_summary(
    tmp_path: Path, stop: Callable[[subprocess.Popen[str]], None], exit_code: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRIDPATROL_MQTT_URL"}  # own broker
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "gridpatrol.cli", "demo", "--no-browser"]
    argv += ["--port", str(free_port()), "--workdir", str(workdir)]
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )
        assert proc.stdout is not None
        out = []
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("logs:"):  # the last line printed once everything has started
                break
        _wait_until_connected(workdir / "logs", MQTT_COMPONENTS)
        stop(proc)
        proc.wait(timeout=180)
    log = stderr_path.read_text()
    started = {
        line.split("started ")[1].split(" ")[0]: int(line.split("(pid ")[1].split(")")[0])
        for line in log.splitlines()
        if "gridpatrol.demo: started " in line
    }
    left_running = [name for name, pid in started.items() if _alive(pid)]
    for name in left_running:
        os.kill(started[name], signal.SIGKILL)
    assert proc.returncode == exit_code, log[-3000:]
    assert set(started) == {"api", "bridge", "detect", "ingest", "sensors"}
    assert left_running == []
    for name in ("sensors", "ingest", "detect", "bridge", "api"):
        assert f"gridpatrol.demo: stopped {name} (exit " in log
    assert "did not stop in" not in log
    # The broker outlives the components: none of them lost it while stopping.
    for name in MQTT_COMPONENTS:
        assert "disconnected from" not in (workdir / "logs" / f"{name}.log").read_text(), name
    out += proc.stdout.read().splitlines()
    assert out[-1].startswith("candidates: "), out[-10:]


def test_footage_comes_from_the_shared_folder(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gridpatrol import demo

    monkeypatch.setenv("GRIDPATROL_SHARED", str(shared_dir))
    footage = demo.find_footage(tmp_path)
    assert footage == tmp_path / "var" / "footage"
    assert footage.is_symlink() and footage.resolve() == (shared_dir / "footage").resolve()
    assert demo.find_footage(tmp_path) == footage  # the second run finds the link


@pytest.mark.parametrize("broken_link", [False, True], ids=["no footage", "a broken link"])
def test_offline_without_footage_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken_link: bool
) -> None:
    from gridpatrol import demo

    footage = tmp_path / "var" / "footage"
    if broken_link:  # linked to shared footage that has moved since
        footage.parent.mkdir()
        footage.symlink_to(tmp_path / "moved-away")
    monkeypatch.setenv("GRIDPATROL_SHARED", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(demo, "SAMPLE_CLIPS_URL", f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(SystemExit) as exc:
        demo.find_footage(tmp_path)
    message = str(exc.value)
    assert message.startswith("no footage: ")
    assert "could not be downloaded" in message
    clips = ", ".join(demo.SAMPLE_CLIPS)
    assert f"Put MP4 clips named {clips} in {footage}, or set GRIDPATROL_SHARED" in message
    assert footage.is_dir() and not footage.is_symlink()  # where the clips go


@pytest.mark.parametrize(
    ("prepare", "code"),
    [("a folder of someone's files", 2), ("an earlier demo's folder", None), ("a file", 2)],
)
def test_the_demo_clears_only_a_folder_of_its_own(tmp_path: Path, prepare: str, code: int) -> None:
    workdir = tmp_path / "work"
    if prepare == "a file":
        workdir.write_text("not a folder")
    else:
        workdir.mkdir()
        (workdir / "notes.txt").write_text("keep me")
    if prepare == "an earlier demo's folder":
        (workdir / ".gridpatrol-demo").write_text("")
    argv = [sys.executable, "-m", "gridpatrol.cli", "demo", "--no-browser", "--duration", "0"]
    argv += ["--port", str(free_port()), "--workdir", str(workdir)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    if code is None:  # it was the demo's own: cleared and used
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (workdir / "notes.txt").exists()
        assert (workdir / "logs").is_dir() and (workdir / ".gridpatrol-demo").is_file()
    elif prepare == "a file":
        assert done.returncode == code
        assert done.stderr == f"demo: --workdir {workdir} is not a folder\n"
        assert workdir.read_text() == "not a folder"
    else:
        assert done.returncode == code
        assert "is not empty and was not made by the demo" in done.stderr
        assert workdir.exists() and (workdir.is_file() or (workdir / "notes.txt").exists())


def _listening(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:``port``, or, where something else already listens
    there, a closed one: the port is taken either way."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
    return sock


# A site file that is not there ends the demo (status 2) after it has chosen its port, before
# it starts anything.
NO_SITE = ["--config", "/nonexistent/site.yaml"]


def test_a_port_given_and_taken_stops_the_demo_with_status_2(tmp_path: Path) -> None:
    port = free_port()
    with _listening(port):
        done = _run_demo_on(tmp_path / "demo", ["--port", str(port), *NO_SITE])
    assert done.returncode == 2
    assert done.stderr == (
        f"demo: port {port} is in use; stop what listens there or give another --port\n"
    )
    assert not (tmp_path / "demo").exists()


def test_the_default_port_taken_moves_the_api_and_says_so(tmp_path: Path) -> None:
    with _listening(8000):
        done = _run_demo_on(tmp_path / "demo", NO_SITE)
    assert done.returncode == 2  # the site file: the port was chosen before it
    said = re.fullmatch(
        r"demo: port 8000 is in use; the API listens on (\d+)", done.stderr.split("\n")[0]
    )
    assert said is not None, done.stderr
    assert int(said[1]) != 8000
    assert "cannot read the site file" in done.stderr
    assert "port 8000" not in done.stdout


def test_a_privileged_port_without_privileges_stops_the_demo_with_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tests may run as root, which binds port 80: the kernel's refusal of an unprivileged
    # user is made here by bind itself, in the demo's own process.
    real_bind = socket.socket.bind

    def bind(sock: socket.socket, address: Any) -> None:
        if address[1] == 80:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_bind(sock, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    argv = ["demo", "--no-browser", "--port", "80", *NO_SITE, "--workdir", str(tmp_path / "demo")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "demo: port 80 needs privileges; give a port above 1023\n"
    assert not (tmp_path / "demo").exists()


def _run_demo_on(workdir: Path, options: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gridpatrol.cli", "demo", "--no-browser", *options]
    argv += ["--workdir", str(workdir)]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


def _mqtt_client(port: int, client_id: str, *, persistent: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    client.connect("127.0.0.1", port)
    return client


ALARM = {
    "schema": "gridalarm/1", "event_id": "prod-1", "sensor_id": "mh-0001",
    "alarm_type": "manhole_open", "transition": "raise", "severity": "CRITICAL",
    "ts": "2026-01-01T00:00:00Z", "measurements": [],
}  # fmt: skip


@pytest.mark.parametrize("option", ["--own-broker", None], ids=["own broker", "configured broker"])
def test_the_demo_leaves_the_sites_topics_and_bridge_session_on_a_configured_broker_alone(
    tmp_path: Path, option: str | None
) -> None:
    from gridpatrol import demo

    # On the configured broker, topics and session of this host's and work folder's own.
    prefix = (
        demo.demo_prefix((tmp_path / "demo").resolve()) if option is None else "gridpatrol-demo"
    )
    binary = mosquitto_binary()
    assert binary is not None, "the tests need the mosquitto binary"
    production = start_mosquitto(binary)
    port = int(production.url.rsplit(":", 1)[1])
    try:
        # The site's bridge is down, its persistent session holding an alarm for it.
        bridge = _mqtt_client(port, "gp-alarm_bridge", persistent=True)
        bridge.loop_start()
        bridge.subscribe("gridpatrol/sensors/+/alarm", qos=1)
        time.sleep(0.5)
        bridge.disconnect()
        bridge.loop_stop()
        topics: list[str] = []
        watcher = _mqtt_client(port, "watcher")
        watcher.on_message = lambda _c, _u, msg: topics.append(msg.topic)
        watcher.subscribe("#", qos=0)
        watcher.loop_start()
        time.sleep(0.5)
        watcher.publish(
            "gridpatrol/sensors/mh-0001/alarm", json.dumps(ALARM), qos=1
        ).wait_for_publish()

        env = {**os.environ, "GRIDPATROL_MQTT_URL": production.url}
        argv = [sys.executable, "-m", "gridpatrol.cli", "demo", "--no-browser", "--duration", "5"]
        argv += ["--port", str(free_port()), "--workdir", str(tmp_path / "demo")]
        argv += [option] if option else []
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        watcher.loop_stop()
        watcher.disconnect()
        assert done.returncode == 0, done.stderr[-3000:]
        broker = next(line for line in done.stdout.splitlines() if line.startswith("broker:"))
        mine = f"topics {prefix}/#, bridge client id gp-alarm_bridge-{prefix})"
        if option == "--own-broker":
            assert production.url not in broker and "(Mosquitto started by the demo; " in broker
            assert broker.endswith(mine)
            assert topics == ["gridpatrol/sensors/mh-0001/alarm"]  # only the site's own alarm
        else:
            assert broker == f"broker:          {production.url} (GRIDPATROL_MQTT_URL; {mine}"
            theirs = [t for t in topics if not t.startswith(f"{prefix}/")]
            assert theirs == ["gridpatrol/sensors/mh-0001/alarm"]
            assert len(topics) > len(theirs)  # the demo ran on this broker
        assert f"--client-id gp-alarm_bridge-{prefix}" in done.stderr

        # The site's bridge comes back to its alarm: the demo did not take it.
        received: list[bytes] = []
        bridge = _mqtt_client(port, "gp-alarm_bridge", persistent=True)
        bridge.on_message = lambda _c, _u, msg: received.append(msg.payload)
        bridge.loop_start()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        bridge.disconnect()
        bridge.loop_stop()
        assert [json.loads(p)["event_id"] for p in received] == ["prod-1"]
    finally:
        production.stop()


def test_the_demo_runs_the_site_under_its_own_prefix_with_the_same_sources(tmp_path: Path) -> None:
    from gridpatrol import demo
    from gridpatrol.site import load_site

    (tmp_path / "site").mkdir()
    config = tmp_path / "site" / "site.yaml"
    config.write_text(
        (REPO / "samples" / "site.yaml").read_text(encoding="utf-8")
        .replace("var/footage/pedestrian_street_1080p.mp4", "beside.mp4", 1)
        .replace("var/footage/car_park_overhead.mp4", "samples/site.yaml")
        .replace("var/footage/car_park_people_bikes.mp4", "rtsp://10.0.0.5/sub")
        .replace("var/footage/pedestrian_street_1080p.mp4", str(tmp_path / "abs.mp4")),
        encoding="utf-8",
    )  # fmt: skip
    original = load_site(config)
    (tmp_path / "ran.yaml").write_text(demo.demo_site_text(config), encoding="utf-8")
    ran = load_site(tmp_path / "ran.yaml")
    assert ran.mqtt.prefix == "gridpatrol-demo" != original.mqtt.prefix
    assert [c.source for c in ran.cameras] == [
        str(config.parent / "beside.mp4"),  # beside the site file, where ingest finds it
        str(REPO / "samples" / "site.yaml"),  # from the components' working directory
        "rtsp://10.0.0.5/sub",
        str(tmp_path / "abs.mp4"),
    ]
    cameras = [
        c.model_copy(update={"source": o.source})
        for c, o in zip(ran.cameras, original.cameras, strict=True)
    ]
    assert ran.model_copy(update={"mqtt": original.mqtt, "cameras": cameras}) == original


# ---------------------------------------------------------------------------------------------
# When its surroundings misbehave: the broker dies or will not start, the footage link is broken,
# there is no display, an http_proxy is set.


def _demo_argv(workdir: Path, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "gridpatrol.cli", "demo", *options]
    return [*argv, "--port", str(free_port()), "--workdir", str(workdir)]


def _own_broker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GRIDPATROL_MQTT_URL"}
    return {**env, **extra}


def _run_demo(
    workdir: Path, env: dict[str, str], *options: str
) -> subprocess.CompletedProcess[str]:
    # timeout: a demo held up (by a text browser, say) fails the test instead of hanging it
    return subprocess.run(
        _demo_argv(workdir, *options),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _stub(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def _wait_for(path: Path, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} within {timeout} s")


@pytest.mark.parametrize("dying", ["broker", "detect"])
def test_the_demo_stops_with_exit_1_when_its_broker_or_a_component_dies(
    tmp_path: Path, dying: str
) -> None:
    workdir = tmp_path / "demo"
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            _demo_argv(workdir, "--no-browser", "--duration", "60"),
            cwd=REPO,
            env=_own_broker_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert proc.stdout is not None
            out = []
            for line in proc.stdout:
                out.append(line.rstrip("\n"))
                if line.startswith("logs:"):  # everything has started
                    break
            broker = next(line for line in out if line.startswith("broker:"))
            port = broker.split("mqtt://127.0.0.1:")[1].split(" ")[0]
            mark = f"on 127.0.0.1:{port}" if dying == "broker" else f"started {dying} (pid "
            log = _wait_for(stderr_path, mark)
            started = next(line for line in log.splitlines() if mark in line)
            pid = int(started.split("(pid ")[1].split(")")[0])
            os.kill(pid, signal.SIGKILL)
            rest, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    out += rest.splitlines()
    err = stderr_path.read_text()
    assert proc.returncode == 1, "\n".join(out[-20:]) + err[-3000:]
    assert f"{dying} exited unexpectedly (exit -9):" in err.splitlines()  # as a failure
    assert not any("exited unexpectedly" in line for line in out)
    assert out[-1].startswith("candidates: ")  # the components were stopped in order
    assert (workdir / "logs" / "broker.log").exists()


def test_a_broker_that_does_not_start_fails_the_demo_in_one_message(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _stub(bin_dir, "mosquitto", 'echo "Error: Unable to open config file $2." >&2\nexit 3\n')
    env = _own_broker_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = _run_demo(tmp_path / "demo", env, "--no-browser", "--duration", "5")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "demo failed: the broker did not start: the broker exited with code 3\n" in done.stderr
    assert "Error: Unable to open config file " in done.stderr  # the tail of broker.log
    assert (
        "Error: Unable to open config file "
        in (tmp_path / "demo" / "logs" / "broker.log").read_text()
    )


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 128 + signal.SIGINT)],
    ids=["sigterm", "ctrl-c"],
)
def test_a_demo_stopped_while_its_broker_starts_leaves_no_broker_running(
    tmp_path: Path, signum: int, exit_code: int
) -> None:
    bin_dir = tmp_path / "bin"
    pid_file = tmp_path / "broker.pid"
    _stub(bin_dir, "mosquitto", f'echo $$ > "{pid_file}"\nexec sleep 60\n')  # never listens
    env = _own_broker_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        _demo_argv(tmp_path / "demo", "--no-browser", "--duration", "5"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(_wait_for(pid_file, "\n"))
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        left_running = pid_file.exists() and _alive(int(pid_file.read_text()))
        if left_running:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert left_running is False
    assert proc.returncode == exit_code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert pid > 0


def test_without_a_display_the_demo_opens_no_text_browser(tmp_path: Path) -> None:
    # On a headless SSH session webbrowser would run www-browser in the terminal and wait for it.
    bin_dir = tmp_path / "bin"
    opened = tmp_path / "opened"
    _stub(bin_dir, "www-browser", f'echo $$ > "{opened}"\nexec sleep 300\n')
    env = _own_broker_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TERM="xterm")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        env.pop(name, None)
    try:
        done = _run_demo(tmp_path / "demo", env, "--duration", "2")
    finally:
        if opened.exists():  # the text browser the demo waited for
            os.kill(int(opened.read_text()), signal.SIGKILL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not opened.exists()
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("candidates: ")
    # The API listens on 127.0.0.1 only: a user on a remote machine is told how to reach it.
    (console,) = [line.split()[-1] for line in lines if line.startswith("review console:")]
    port = console.split(":")[2].split("/")[0]
    hint = (
        f"no display here: from your own machine, ssh -L {port}:127.0.0.1:{port} <this host>, "
        f"then open {console}"
    )
    assert lines[lines.index(f"logs:            {tmp_path / 'demo' / 'logs'}") + 1] == hint


@pytest.mark.parametrize(
    "given",
    [
        {"NO_PROXY": "cam.lan"},
        {"no_proxy": "cam.lan"},
        {"NO_PROXY": "cam.lan", "no_proxy": "nvr.lan"},
    ],
)
def test_the_components_keep_the_users_proxy_exceptions(
    given: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Python reads only ``no_proxy`` when both spellings are set: adding the local hosts to it
    must not drop an exception the user gave as ``NO_PROXY``."""
    from gridpatrol.demo import Demo

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    env = Demo(tmp_path / "site.yaml", tmp_path, 8000).env()
    hosts = set(given.values()) | {"127.0.0.1", "localhost"}
    assert set(env["no_proxy"].split(",")) == hosts
    assert env["NO_PROXY"] == env["no_proxy"]


def test_an_http_proxy_does_not_carry_the_demos_local_calls(tmp_path: Path) -> None:
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens: a call through it fails
    env = _own_broker_env(http_proxy=proxy, HTTP_PROXY=proxy)
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    done = _run_demo(tmp_path / "demo", env, "--no-browser", "--duration", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("reviewer token:  gp-reviewer-") for line in lines)
    assert lines[-1].startswith("candidates: ")
    assert "could not read the candidates" not in done.stderr


@pytest.mark.parametrize("duration", ["-1", "nan", "inf", "soon"])
def test_a_duration_that_is_no_time_is_refused_before_anything_is_cleared(
    tmp_path: Path, duration: str
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".gridpatrol-demo").write_text("")
    (workdir / "api.db").write_text("an earlier run")
    argv = [sys.executable, "-m", "gridpatrol.cli", "demo", "--no-browser"]
    argv += ["--duration", duration, "--workdir", str(workdir)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        f"argument --duration: must be a number of seconds, 0 or more, got {duration!r}"
    )
    assert (workdir / "api.db").read_text() == "an earlier run"
