"""Command-line failures an operator meets: one clear line, exit code 2 (1 while running)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpatrol.alarm_bridge import cli as bridge_cli
from gridpatrol.alarm_bridge.worker import Bridge
from gridpatrol.api.client import Outbox
from gridpatrol.cli import build_parser
from gridpatrol.ingest.broker import free_port
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription
from gridpatrol.site import PREFIX_PATTERN

from ..conftest import Mosquitto
from ..ingest.conftest import IngestProcess

SAMPLE_SITE = Path(__file__).resolve().parents[2] / "samples" / "site.yaml"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "env_drop", "message"),
    [
        (["bridge", "--config", str(SAMPLE_SITE)], "GRIDPATROL_API_TOKEN", "GRIDPATROL_API_TOKEN"),
        (["bridge", "--config", "/nonexistent/site.yaml"], "", "cannot read the site file"),
        *(
            (
                ["simulate-sensors", "--config", str(SAMPLE_SITE), "--rate", rate],
                "",
                f"argument --rate: must be a positive number of messages per second, got '{rate}'",
            )
            for rate in ("0", "-1", "nan", "inf", "fast")
        ),
        *(
            (
                ["simulate-sensors", "--config", str(SAMPLE_SITE), "--rate", "1", "--duration", d],
                "",
                f"argument --duration: must be a positive number of seconds, got '{d}'",
            )
            for d in ("0", "-1", "nan", "inf")
        ),
        (
            ["bridge", "--config", str(SAMPLE_SITE), "--progress-s", "0"],
            "",
            "argument --progress-s: must be a positive number of seconds, got '0'",
        ),
        (
            ["bridge", "--config", str(SAMPLE_SITE), "--snapshot-max-age-s", "-1"],
            "",
            "argument --snapshot-max-age-s: must be a positive number of seconds, got '-1'",
        ),
    ],
    ids=[
        "no producer token",
        "missing site file",
        *(f"rate {rate}" for rate in ("0", "-1", "nan", "inf", "fast")),
        *(f"duration {d}" for d in ("0", "-1", "nan", "inf")),
        "zero progress interval",
        "negative snapshot age",
    ],
)
def test_refusals(args: list[str], env_drop: str, message: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != env_drop}
    env["GRIDPATROL_STATE_DIR"] = str(tmp_path)
    # No broker: a flag let through must not publish to a real one.
    env["GRIDPATROL_MQTT_URL"] = "mqtt://127.0.0.1:9"
    done = run(args, env)
    assert done.returncode == 2
    assert message in done.stderr


def test_simulated_sensors_never_reaching_the_broker_say_none_was_sent_and_exit_1(
    tmp_path: Path,
) -> None:
    """No broker the whole run: the messages wait in the client's memory and are lost with
    the process. The run said "25 messages in 5.0 s", warned that the broker "did not
    acknowledge the last messages within 10 s" without waiting, and exited 0."""
    env = {**os.environ, "GRIDPATROL_MQTT_URL": "mqtt://127.0.0.1:9"}  # nothing listens
    command = ["simulate-sensors", "--config", str(SAMPLE_SITE), "--rate", "5"]
    done = run([*command, "--duration", "1"], env)
    assert done.returncode == 1
    lines = [line.split(" ", 3)[3] for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(lines) == 1
    assert re.fullmatch(  # as many messages as were due in the second before the end
        r"gridpatrol\.alarm_bridge\.cli: simulate-sensors: the broker mqtt://127\.0\.0\.1:9 was"
        r" never reached; none of the [1-5] messages was sent",
        lines[0],
    )
    assert "did not acknowledge" not in done.stderr


def _signalled_in_the_final_wait(
    tmp_path: Path, url: str, duration: str, lose_broker: Callable[[], None] | None = None
) -> list[str]:
    """simulate-sensors on the sample site for ``duration`` s against ``url``; once connected,
    ``lose_broker`` is called; SIGTERM once it says it waits for the broker at its end. Its
    status and the lines after the one saying it waits (without time and level)."""
    env = {**os.environ, "GRIDPATROL_MQTT_URL": url}
    command = ["simulate-sensors", "--config", str(SAMPLE_SITE), "--rate", "5"]
    log_path = tmp_path / "err"
    with log_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridpatrol.cli", *command, "--duration", duration],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )

    def logged(text: str) -> bool:
        for _ in range(600):  # until it is said, or the run ended without it
            if text in log_path.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        return text in log_path.read_text()

    waiting = f"simulate-sensors: waiting up to 10 s for the broker {url}"
    try:
        if lose_broker is not None:
            assert logged(f"simulate-sensors: connected to {url}"), log_path.read_text()
            lose_broker()
        assert logged(waiting), log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    said = log_path.read_text().splitlines()
    begun = next(i for i, line in enumerate(said) if waiting in line)
    return [str(status), *(line.split(" ", 3)[3] for line in said[begun + 1 :])]


def test_a_signal_while_simulated_sensors_wait_for_the_broker_at_their_end_ends_the_wait(
    tmp_path: Path,
) -> None:
    """At its end the run waits up to 10 s for a broker that is down to take what it holds.
    A SIGTERM or Ctrl-C during that wait was ignored (the run's stop event was already set):
    the operator waited the whole 10 s. It now ends the wait, and the run says what was lost."""
    status, *after = _signalled_in_the_final_wait(tmp_path, "mqtt://127.0.0.1:9", "1")
    assert status == "1"
    assert after[:2] == [
        "gridpatrol.cli: gridpatrol: signal 15, shutting down",
        "gridpatrol.alarm_bridge.cli: simulate-sensors: stopped waiting for the broker",
    ]
    assert re.fullmatch(
        r"gridpatrol\.alarm_bridge\.cli: simulate-sensors: the broker mqtt://127\.0\.0\.1:9 was"
        r" never reached; none of the [1-5] messages was sent",
        after[2],
    )
    assert len(after) == 3


def test_a_signal_ending_the_final_wait_for_a_lost_broker_is_said_so(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The broker reached, then lost: the warning said the broker had not acknowledged the
    last messages "within 10 s" also when a signal had ended the wait before."""
    status, *after = _signalled_in_the_final_wait(
        tmp_path, mosquitto.url, "3", lambda: mosquitto.stop(kill=True)
    )
    assert status == "0"
    assert after[:2] == [
        "gridpatrol.cli: gridpatrol: signal 15, shutting down",
        "gridpatrol.alarm_bridge.cli: simulate-sensors: stopped waiting for the broker",
    ]
    assert after[2] == (
        "gridpatrol.alarm_bridge.cli: simulate-sensors: the broker did not acknowledge the last"
        " messages before the wait was ended; some of them may not have arrived"
    )
    assert re.fullmatch(
        r"gridpatrol\.alarm_bridge\.cli: simulate-sensors: \d+ messages in .*", after[3]
    )
    assert len(after) == 4


def _signalled_while_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], connects: int
) -> tuple[list[str], int]:
    """Start ``command`` against a broker that nothing serves, send SIGTERM once it has said
    ``connecting to`` ``connects`` times: what it logged after the last of them (without the
    time and level) and its status."""
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: each start waits for it
    monkeypatch.setenv("GRIDPATROL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "t")
    log_path = tmp_path / "err"
    proc = IngestProcess([*command, "--config", str(SAMPLE_SITE)], url, log_path)
    connecting = f"gridpatrol.alarm_bridge.cli: {command[0]}: connecting to {url}"
    try:
        lines = proc.wait_for(lambda lines: sum(connecting in x for x in lines) == connects, 60)
        assert sum(connecting in line for line in lines) == connects, lines
        proc.signal(signal.SIGTERM)
        status, _, _ = proc.wait(60)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)
    said = [line.split(" ", 3)[3] for line in log_path.read_text().splitlines()]
    last = len(said) - 1 - said[::-1].index(connecting)
    return said[last + 1 :], status


@pytest.mark.parametrize(
    ("command", "after"),
    [
        (["bridge"], r"gridpatrol\.alarm_bridge\.cli: bridge: stopped \(outbox depth 0\)"),
        (["simulate-sensors", "--rate", "1"],
         r"gridpatrol\.alarm_bridge\.cli: simulate-sensors: 0 messages in [0-9.]+ s"),
    ],
    ids=["bridge", "simulate-sensors"],
)  # fmt: skip
def test_a_signal_while_the_start_waits_for_the_broker_ends_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], after: str
) -> None:
    """A SIGTERM while the start waited for a broker not reachable yet was acted on only after
    the whole wait (10 s, and the bridge's media connection 10 s more): 'not reachable yet;
    retrying in the background' followed the signal, and the bridge went on to start. The
    wait now ends at the signal: its closing line alone follows it, and the status is 0."""
    said, status = _signalled_while_connecting(tmp_path, monkeypatch, command, 1)
    assert said[0] == "gridpatrol.cli: gridpatrol: signal 15, shutting down", said
    assert len(said) == 2, said
    assert re.fullmatch(after, said[-1]), said
    assert status == 0, said


def test_simulate_sensors_help_says_what_the_seed_does_and_its_default() -> None:
    """``--seed`` was listed in ``simulate-sensors --help`` without a word."""
    # Wide enough for argparse not to wrap the help, which it does at hyphens too.
    done = run(["simulate-sensors", "--help"], {**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0
    (line,) = [" ".join(x.split()) for x in done.stdout.splitlines() if x.startswith("  --seed")]
    assert line == (
        "--seed SEED whole number seeding the random values, tilts and drop-outs (default 1)"
    ), done.stdout


def test_a_signal_while_the_media_connection_waits_for_the_broker_starts_no_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session connection's start did not find the broker ('not reachable yet'), and the
    media connection's start ('connecting to' again) waits for it too: a SIGTERM meanwhile
    ended that wait, but the bridge went on to start ('bridge: 6 sensors, state …' after the
    signal) before stopping. Its closing line alone now follows the signal, and the status is
    0."""
    said, status = _signalled_while_connecting(tmp_path, monkeypatch, ["bridge"], 2)
    assert said == [
        "gridpatrol.cli: gridpatrol: signal 15, shutting down",
        "gridpatrol.alarm_bridge.cli: bridge: stopped (outbox depth 0)",
    ], said
    assert status == 0, said


def test_a_second_bridge_on_one_state_directory_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "GRIDPATROL_STATE_DIR": str(tmp_path), "GRIDPATROL_API_TOKEN": "t"}
    running = Outbox(tmp_path / "bridge.db", None, component="alarm_bridge")
    running.claim()  # as a bridge already serving this directory holds it
    try:
        done = run(["bridge", "--config", str(SAMPLE_SITE)], env)
    finally:
        running.stop()
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        f"outbox {tmp_path / 'bridge.db'} is in use by another process; another bridge runs on "
        "it: give each bridge its own GRIDPATROL_STATE_DIR"
    )


@pytest.mark.parametrize(
    ("command", "url", "says"),
    [
        (["bridge"], "http://broker:1883",
         "broker URL must be mqtt:// or mqtts://, got 'http://broker:1883'"),
        (["simulate-sensors", "--rate", "1"], "http://broker:1883",
         "simulate-sensors: cannot start: broker URL must be mqtt:// or mqtts://, got "
         "'http://broker:1883'"),
        (["simulate-sensors", "--rate", "1"], "mqtt://gp:s3cret@127.0.0.1:x",
         "simulate-sensors: cannot start: broker URL 'mqtt://gp:***@127.0.0.1:x': Port could not "
         "be cast to integer value as 'x'"),
    ],
)  # fmt: skip
def test_a_malformed_broker_url_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str], url: str, says: str
) -> None:
    env = {
        **os.environ,
        "GRIDPATROL_STATE_DIR": str(tmp_path),
        "GRIDPATROL_API_TOKEN": "t",
        "GRIDPATROL_MQTT_URL": url,
    }
    done = run([*command, "--config", str(SAMPLE_SITE)], env)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.endswith(says)
    assert "s3cret" not in done.stderr


@pytest.mark.parametrize("kind", ["not a directory", "not a database"])
def test_a_state_database_that_cannot_be_used_is_one_line_and_exit_2(
    tmp_path: Path, kind: str
) -> None:
    state = tmp_path / "file" / "sub"
    if kind == "not a directory":
        # A regular file where a folder should be: as root, where file modes stop no write,
        # this is what a state directory the bridge cannot write looks like.
        state.parent.write_text("")
        says = f"[Errno 20] Not a directory: '{state}'"
    else:
        state.mkdir(parents=True)
        (state / "bridge.db").write_text("no database " * 100)
        says = "file is not a database"
    env = {**os.environ, "GRIDPATROL_STATE_DIR": str(state), "GRIDPATROL_API_TOKEN": "t"}
    done = run(["bridge", "--config", str(SAMPLE_SITE)], env)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.endswith(
        " ERROR gridpatrol.alarm_bridge.cli: bridge: cannot start: the state database "
        f"{state / 'bridge.db'}: {says}"
    )


def _bridge_args(
    tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> argparse.Namespace:
    """``gridpatrol bridge`` on the sample site under ``mqtt_prefix``, its state in
    ``tmp_path/state``, to run in this process (pytest keeps its signal handlers)."""
    site = tmp_path / "site.yaml"
    text = SAMPLE_SITE.read_text()
    site.write_text(text.replace("prefix: gridpatrol", f"prefix: {mqtt_prefix}", 1))
    monkeypatch.setenv("GRIDPATROL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "t")
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", "mqtt://127.0.0.1:1883")
    monkeypatch.setattr(bridge_cli, "stop_on_signals", lambda stop: None)
    return build_parser().parse_args(
        ["bridge", "--config", str(site), "--client-id", f"gp-{mqtt_prefix}"]
    )


def test_a_state_database_failing_while_running_is_one_line_and_exit_1(
    tmp_path: Path,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bridge stops on a database error (the broker redelivers what it did not
    acknowledge): one line naming the file, no traceback."""
    state = tmp_path / "state"
    args = _bridge_args(tmp_path, mqtt_prefix, monkeypatch)

    def disk_full(_bridge: Bridge) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Bridge, "run", disk_full)
    with caplog.at_level(logging.INFO):
        code = args.func(args)
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"bridge: stopping: the state database {state / 'bridge.db'} failed: database or disk "
        "is full"
    ]
    assert all(r.exc_info is None for r in caplog.records)


REFUSED = "broker mqtt://127.0.0.1:1883 refused the credentials of {} (Not authorized)"


@pytest.mark.parametrize("media_refused", [False, True], ids=["media up", "media refused"])
def test_credentials_refused_after_a_start_that_found_no_broker_exit_1_in_one_line(
    tmp_path: Path,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    media_refused: bool,
) -> None:
    """The session connection's start found no broker (timed out); the broker then came up
    and refused it: status 1, so the unit restarts (an authentication backend up after the
    broker). The media connection, starting then, may be refused too: that is the same
    refusal, not a second line nor a status 2."""
    from gridpatrol.ingest.mqtt import MqttAuthError, MqttConnection

    args = _bridge_args(tmp_path, mqtt_prefix, monkeypatch)

    def start(
        conn: MqttConnection, timeout: float = 10.0, stop: threading.Event | None = None
    ) -> bool:
        error = MqttAuthError(REFUSED.format(conn.component_id))
        if conn.component_id == "alarm_bridge":
            for hook in conn._refusal_hooks:  # refused after the start returned
                hook(conn, error)
            return False  # not reachable within the start
        if media_refused:
            raise error
        return False

    def run(bridge: Bridge) -> None:
        assert bridge._stop.wait(10), "not stopped by the refusal"

    monkeypatch.setattr(MqttConnection, "start", start)
    monkeypatch.setattr(Bridge, "run", run)
    with caplog.at_level(logging.INFO):
        code = args.func(args)
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"bridge: stopping: {REFUSED.format('alarm_bridge')}"]


@pytest.mark.parametrize(
    ("session_up", "code", "line"),
    [
        (False, 1, f"bridge: stopping: {REFUSED.format('alarm_bridge-media')}"),
        (True, 2, f"bridge: cannot start: {REFUSED.format('alarm_bridge-media')}"),
    ],
    ids=["session start timed out", "session up"],
)
def test_the_media_connection_refused_at_its_start_exits_by_what_the_session_start_found(
    tmp_path: Path,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    session_up: bool,
    code: int,
    line: str,
) -> None:
    """The broker was down as the bridge started: the session connection's start timed out;
    the broker came up during the media connection's start and refused it first (the session
    connection, backing off, had not tried again). A refusal after a start that found no
    broker: one `stopping` line and status 1, so the unit restarts. With the session
    connection up after its start, the credentials were refused at a start: status 2."""
    from gridpatrol.ingest.mqtt import MqttAuthError, MqttConnection

    args = _bridge_args(tmp_path, mqtt_prefix, monkeypatch)

    def start(
        conn: MqttConnection, timeout: float = 10.0, stop: threading.Event | None = None
    ) -> bool:
        if conn.component_id == "alarm_bridge":
            if session_up:
                conn._connected.set()
            return session_up  # timed out: not reachable within the start
        raise MqttAuthError(REFUSED.format(conn.component_id))

    def run(_bridge: Bridge) -> None:
        raise AssertionError("the bridge ran after the media connection was refused")

    monkeypatch.setattr(MqttConnection, "start", start)
    monkeypatch.setattr(Bridge, "run", run)
    with caplog.at_level(logging.INFO):
        got = args.func(args)
    assert got == code
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [line]


def _bridge_session(settings: MqttSettings, prefix: str) -> tuple[MqttConnection, Subscription]:
    """The bridge's session connection under ``prefix``, with its default client id."""
    conn = MqttConnection(
        "alarm_bridge",
        settings,
        prefix=prefix,
        persistent=True,
        manual_ack=True,
        client_id=bridge_cli.default_client_id(prefix),
    )
    return conn, conn.subscribe(f"{prefix}/sensors/+/alarm", qos=1)


def _until_probe(conn: MqttConnection, sub: Subscription, probe: bytes) -> list[bytes]:
    """The payloads ``sub`` takes up to ``probe``, published last, each acknowledged."""
    got: list[bytes] = []
    message: Message | None = None
    while message is None or message.payload != probe:
        message = sub.get(timeout=10)
        assert message is not None, f"no probe; got {got}"
        conn.ack(message)
        got.append(message.payload)
    return got


def test_prefixes_differing_in_a_slash_or_a_dash_have_sessions_of_their_own(
    mosquitto: Any,
) -> None:
    """city/dn and city-dn used to share the client id gp-alarm_bridge-city-dn: the bridge of
    city-dn, connecting first, took the alarms queued for city/dn's bridge, acknowledged them
    as matching none of its subscriptions, and they were lost."""
    settings = MqttSettings.from_url(mosquitto.url)
    for prefix in ("city/dn", "city-dn"):  # both sessions exist, subscribed, then stop
        conn, _ = _bridge_session(settings, prefix)
        assert conn.start(10)
        conn.stop()
    pub = MqttConnection("pub", settings, prefix="city/dn")
    assert pub.start(10)
    sessions: list[MqttConnection] = []
    try:
        for i in range(5):  # queued for city/dn's bridge while it is down
            assert pub.publish_wait("city/dn/sensors/s1/alarm", b"a%d" % i, qos=1, timeout=10)
        got: dict[str, list[bytes]] = {}
        for prefix in ("city-dn", "city/dn"):
            conn, sub = _bridge_session(settings, prefix)
            sessions.append(conn)
            assert conn.start(10)
            probe = f"probe {prefix}".encode()
            assert pub.publish_wait(f"{prefix}/sensors/p/alarm", probe, qos=1, timeout=10)
            got[prefix] = _until_probe(conn, sub, probe)
        assert got == {
            "city-dn": [b"probe city-dn"],
            "city/dn": [b"a0", b"a1", b"a2", b"a3", b"a4", b"probe city/dn"],
        }
        assert [(c.client_id, c.connects, c.unrouted) for c in sessions] == [
            ("gp-alarm_bridge.city-dn", 1, 0),
            ("gp-alarm_bridge-city-dn", 1, 0),
        ]
    finally:
        for conn in (*sessions, pub):
            conn.stop()


@pytest.mark.parametrize(
    ("prefix", "client_id"),
    [
        ("gridpatrol", "gp-alarm_bridge"),
        ("city", "gp-alarm_bridge-city"),
        ("city/dn", "gp-alarm_bridge-city-dn"),  # as before: a running session is kept
        ("city_dn/a.b", "gp-alarm_bridge-city_dn-a.b"),
        ("city-dn", "gp-alarm_bridge.city-dn"),
        ("city-dn/a_b", "gp-alarm_bridge.city-dn_-a__b"),
        ("a-/b", "gp-alarm_bridge.a-_-b"),
        ("a/-b", "gp-alarm_bridge.a_--b"),
    ],
)
def test_the_default_client_id_of_a_prefix(prefix: str, client_id: str) -> None:
    assert bridge_cli.default_client_id(prefix) == client_id


# Prefixes of the characters that could make two ids alike, so that near pairs are tried.
PREFIXES = st.text(alphabet="a_-/.", min_size=1, max_size=8).filter(
    lambda p: re.fullmatch(PREFIX_PATTERN, p) is not None
)


@given(PREFIXES, PREFIXES)
def test_two_prefixes_never_share_a_default_client_id(first: str, second: str) -> None:
    if first != second:
        assert bridge_cli.default_client_id(first) != bridge_cli.default_client_id(second)


def test_simulated_sensors_all_offline_are_asked_again_at_the_rate_and_owe_nothing_after(
    tmp_path: Path, mqtt_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every sensor is offline the command waits a turn before asking again, instead of
    asking flat out; back online, it sends at its rate from there, not the messages it could
    not send meanwhile in a burst. Its clock passes only while it waits: counts, not speed."""
    from gridpatrol.alarm_bridge.simulate import Publication, SimulatedSensor
    from gridpatrol.ingest.mqtt import MqttConnection

    rate, duration, offline = 10, 40.0, {"s-1": (10.0, 20.0), "s-2": (10.0, 25.0)}
    site = tmp_path / "site.yaml"
    site.write_text(
        f"site: {{name: t, timezone: Asia/Shanghai}}\nmqtt: {{prefix: {mqtt_prefix}}}\n"
        "sensors:\n"
        + "".join(f"  - {{id: {s}, kind: smoke, location: {{address: a}}}}\n" for s in offline)
    )
    now = [0.0]
    stops: list[threading.Event] = []
    asked = [0]
    published: list[float] = []

    def hold(stop: threading.Event) -> None:
        def wait(timeout: float | None = None) -> bool:
            now[0] += timeout or 0.0
            return stop.is_set()

        stop.wait = wait  # type: ignore[method-assign]
        stops.append(stop)

    def next_message(sim: SimulatedSensor, t: float) -> Publication | None:
        asked[0] += 1
        if asked[0] >= 100_000:
            stops[0].set()  # asking flat out: the clock would never move on
        start, end = offline[sim.sensor.id]
        return None if start <= now[0] < end else Publication(f"{sim.sensor.id}/alarm", b"x")

    def publish(conn: MqttConnection, topic: str, *args: Any, **kwargs: Any) -> bool:
        published.append(now[0])
        return True

    monkeypatch.setenv("GRIDPATROL_MQTT_URL", "mqtt://127.0.0.1:1883")
    monkeypatch.setattr(bridge_cli, "stop_on_signals", hold)
    clock = SimpleNamespace(monotonic=lambda: now[0], time=lambda: 1_795_000_000.0 + now[0])
    monkeypatch.setattr(bridge_cli, "time", clock)
    monkeypatch.setattr(SimulatedSensor, "next_message", next_message)
    monkeypatch.setattr(MqttConnection, "publish", publish)
    command = ["simulate-sensors", "--config", str(site), "--rate", str(rate)]
    args = build_parser().parse_args([*command, "--duration", str(duration)])
    assert args.func(args) == 0
    # At most every sensor asked once a turn: 2 sensors, 10 turns a second, 40 s.
    assert asked[0] <= len(offline) * rate * duration + len(offline)
    assert len(published) == rate * (duration - 10.0)  # 0-10 s and 20-40 s, owing nothing
    assert max(sum(p <= q < p + 1 for q in published) for p in published) == rate
