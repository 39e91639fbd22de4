"""``gridpatrol demo`` in the test's own process, on a broker of the test's: its work folder,
its site file and what it prints, with the components' run replaced where a test needs only
what comes before it."""

from __future__ import annotations

import argparse
import functools
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gridpatrol import cli, demo
from gridpatrol.ingest.broker import BrokerHandle, free_port
from gridpatrol.site import load_site
from tests.conftest import Mosquitto


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    # The demo turns SIGTERM and SIGHUP into a stop and ignores them while it stops.
    saved = {signum: signal.getsignal(signum) for signum in demo.STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def broker(mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of the test's broker, configured as the demo's, with a password."""
    url = f"mqtt://ops:s3cret@127.0.0.1:{mosquitto.port}"
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", url)
    return url


def _argv(workdir: Path, *options: str) -> list[str]:
    return ["demo", "--no-browser", "--port", str(free_port()), "--workdir", str(workdir), *options]


def _no_components(_demo: demo.Demo, _broker: BrokerHandle, _args: argparse.Namespace) -> int:
    return 0


@pytest.mark.parametrize("option", [None, "--own-broker"], ids=["configured", "own broker"])
def test_the_configured_brokers_password_is_not_printed(
    tmp_path: Path,
    broker: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str | None,
) -> None:
    monkeypatch.setattr(demo, "_run", _no_components)
    assert cli.main(_argv(tmp_path / "demo", *([option] if option else []))) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    shown = broker.replace(":s3cret@", ":***@")
    lines = out.splitlines()
    if option is None:
        said = f"broker:          {shown} (GRIDPATROL_MQTT_URL; "
        assert any(line.startswith(said) for line in lines)
    else:
        assert (
            f"                 (GRIDPATROL_MQTT_URL {shown} is left alone: --own-broker was given)"
            in lines
        )


def test_a_second_demo_in_the_folder_of_a_running_one_stops_with_status_2_clearing_nothing(
    tmp_path: Path, broker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    runs: list[str] = []
    second: list[int] = []

    def run(_demo: demo.Demo, _broker: BrokerHandle, _args: argparse.Namespace) -> int:
        runs.append("run")
        if len(runs) == 1:  # the first demo, running: a second is started in its folder
            (workdir / "logs" / "api.log").write_text("the running demo's")
            second.append(cli.main(_argv(workdir)))
        return 0

    monkeypatch.setattr(demo, "_run", run)
    assert cli.main(_argv(workdir)) == 0
    assert second == [2]
    err = capsys.readouterr().err.splitlines()
    assert f"demo: --workdir {workdir} is in use by a running demo (pid {os.getpid()})" in err
    assert (workdir / "logs" / "api.log").read_text() == "the running demo's"
    assert cli.main(_argv(workdir)) == 0  # the folder is free again once the demo has ended
    assert not (workdir / "logs" / "api.log").exists()


def test_a_mistyped_site_file_keeps_the_last_runs_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / demo.WORKDIR_MARKER).write_text("made by gridpatrol demo; cleared at every start\n")
    (workdir / "api.db").write_text("the last run's")
    assert cli.main(_argv(workdir, "--config", str(tmp_path / "sit.yaml"))) == 2
    assert "cannot read the site file" in capsys.readouterr().err
    assert (workdir / "api.db").read_text() == "the last run's"


def test_ctrl_c_while_the_api_starts_reads_no_candidates_from_it(
    tmp_path: Path, broker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def ctrl_c(_demo: demo.Demo, _api: demo.Component, timeout: float = 60.0) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "wait_healthy", ctrl_c)
    assert cli.main(_argv(tmp_path / "demo")) == 128 + signal.SIGINT
    captured = capsys.readouterr()
    assert "could not read the candidates" not in captured.err
    assert captured.out.splitlines()[-1] == "candidates: 0"
    assert (tmp_path / "demo" / "logs" / "api.log").exists()  # the API had been started


def _broker_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("broker:"))


def test_two_demos_on_one_configured_broker_keep_to_topics_and_sessions_of_their_own(
    tmp_path: Path, broker: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "_run", _no_components)
    said: dict[str, tuple[str, str]] = {}
    for run in ("first", "second", "first again"):
        workdir = tmp_path / run.removesuffix(" again")
        assert cli.main(_argv(workdir)) == 0
        line = _broker_line(capsys.readouterr().out)
        topics = line.split("; topics ")[1].split("/#")[0]
        assert line.endswith(f"/#, bridge client id gp-alarm_bridge-{topics})")
        assert load_site(workdir / "site.yaml").mqtt.prefix == topics
        said[run] = (topics, line)
    assert said["first"][0] != said["second"][0]
    assert all(re.fullmatch(r"gridpatrol-demo-[0-9a-f]{8}", p) for p, _ in said.values())
    assert said["first again"] == said["first"]  # run again, it takes up its session

    # On a broker of its own the demo is alone: the plain prefix, as the README shows it.
    assert cli.main(_argv(tmp_path / "own", "--own-broker")) == 0
    line = _broker_line(capsys.readouterr().out)
    assert line.endswith(
        "; topics gridpatrol-demo/#, bridge client id gp-alarm_bridge-gridpatrol-demo)"
    )


def test_a_broker_url_that_cannot_work_is_one_line_and_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", "mqtt://ops:s3cret@127.0.0.1:notaport")
    monkeypatch.setattr(demo, "_run", _no_components)
    assert cli.main(_argv(tmp_path / "demo")) == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "demo: cannot start: broker URL 'mqtt://ops:***@127.0.0.1:notaport': Port could not be"
        " cast to integer value as 'notaport'\n",
    )
    assert not (tmp_path / "demo").exists()


@pytest.fixture
def clip_server(tmp_path: Path) -> Iterator[str]:
    """The URL of a local web server holding the public sample clips (a few bytes each)."""
    folder = tmp_path / "public"
    folder.mkdir()
    for remote in demo.SAMPLE_CLIPS.values():
        (folder / remote).write_bytes(f"clip {remote}".encode())
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("footage", ["shared", "downloaded"])
def test_a_first_demo_runs_its_cameras_on_the_footage_it_has_just_put_in_place(
    tmp_path: Path,
    broker: str,
    clip_server: str,
    monkeypatch: pytest.MonkeyPatch,
    footage: str,
) -> None:
    # A checkout (or working directory) without var/footage: a fresh machine, an installed
    # wheel, a checkout before `make links`.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(demo, "home", lambda: checkout)
    shared = tmp_path / "shared"
    (shared / "footage").mkdir(parents=True)
    if footage == "shared":
        for name in demo.SAMPLE_CLIPS:
            (shared / "footage" / name).write_bytes(b"shared clip")
    monkeypatch.setenv("GRIDPATROL_SHARED", str(shared))
    monkeypatch.setattr(demo, "SAMPLE_CLIPS_URL", clip_server)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    seen: list[list[str]] = []

    def run(ran: demo.Demo, _broker: BrokerHandle, _args: argparse.Namespace) -> int:
        seen.append([c.source for c in load_site(ran.config).cameras if Path(c.source).is_file()])
        return 0

    monkeypatch.setattr(demo, "_run", run)
    workdir = checkout / "var" / "demo"
    assert cli.main(_argv(workdir, "--config", str(demo.sample_site()))) == 0
    clips = checkout / "var" / "footage"
    assert seen == [
        [
            str(clips / "pedestrian_street_1080p.mp4"),
            str(clips / "car_park_overhead.mp4"),
            str(clips / "car_park_people_bikes.mp4"),
            str(clips / "pedestrian_street_1080p.mp4"),
        ]
    ]
    expected = b"shared clip" if footage == "shared" else b"clip people-detection.mp4"
    assert (clips / "pedestrian_street_1080p.mp4").read_bytes() == expected


def test_a_download_cut_off_leaves_no_clip_behind(tmp_path: Path) -> None:
    """A clip whose body ends before its declared length is no clip: nothing is left for the
    next run to take for the real one, and the demo says what to do instead."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes(500))

    threading.Thread(target=serve, daemon=True).start()
    target = tmp_path / "footage"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(demo, "SAMPLE_CLIPS_URL", f"http://127.0.0.1:{server.getsockname()[1]}/")
            patch.setenv("no_proxy", "127.0.0.1")
            with pytest.raises(SystemExit) as stopped:
                demo.download_clips(target)
    finally:
        server.close()
    assert str(stopped.value).startswith(
        f"no footage: {target / 'pedestrian_street_1080p.mp4'} is missing"
    )
    assert "(the download ended after 500 of 1000 bytes)" in str(stopped.value)
    assert list(target.iterdir()) == []


def test_a_demo_of_the_users_own_clips_fetches_no_sample_footage(
    tmp_path: Path, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, with no sample clips anywhere: a site whose cameras play clips beside it runs,
    instead of stopping for want of footage it does not use."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(demo, "home", lambda: checkout)
    monkeypatch.setenv("GRIDPATROL_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setattr(demo, "SAMPLE_CLIPS_URL", f"http://127.0.0.1:{free_port()}/")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    mine = tmp_path / "mine"
    (mine / "clips").mkdir(parents=True)
    (mine / "clips" / "gate.mp4").write_bytes(b"my clip")
    site = mine / "site.yaml"
    site.write_text(
        demo.sample_site()
        .read_text(encoding="utf-8")
        .replace("var/footage/pedestrian_street_1080p.mp4", "clips/gate.mp4")
        .replace("var/footage/car_park_overhead.mp4", "clips/gate.mp4")
        .replace("var/footage/car_park_people_bikes.mp4", "clips/gate.mp4"),
        encoding="utf-8",
    )
    seen: list[list[str]] = []

    def run(ran: demo.Demo, _broker: BrokerHandle, _args: argparse.Namespace) -> int:
        seen.append([c.source for c in load_site(ran.config).cameras])
        return 0

    monkeypatch.setattr(demo, "_run", run)
    workdir = checkout / "var" / "demo"
    assert cli.main(_argv(workdir, "--config", str(site))) == 0
    assert seen == [[str(mine / "clips" / "gate.mp4")] * 4]
    assert not (checkout / "var" / "footage").exists()
