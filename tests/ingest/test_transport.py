"""The MQTT connection owner against real brokers: restarts, sessions, wills, fallback, auth."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from gridpatrol.ingest.broker import ensure_broker, free_port, start_amqtt
from gridpatrol.ingest.messages import DEAD_LETTER_PAYLOAD_BYTES, rfc3339
from gridpatrol.ingest.mqtt import (
    Message,
    MqttAuthError,
    MqttConnection,
    MqttSettings,
    MqttTlsError,
)
from gridpatrol.ingest.reliable import ReliableConsumer
from gridpatrol.ingest.topics import sensor_alarm_topic

from ..conftest import start_listening


def wait_for(check: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def drain(
    get: Callable[[float], Message | None], count: int, timeout: float = 30.0
) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        message = get(0.2)
        if message is not None:
            out.append(message)
    return out


def first_seen(messages: list[Message]) -> list[int]:
    order: list[int] = []
    for m in messages:
        if int(m.payload) not in order:
            order.append(int(m.payload))
    return order


def keep_privileges(broker: Any) -> None:
    """Restart the private broker so that, run as root, it can write its persistence file.

    As root, Mosquitto drops to its own user, which cannot write pytest's private temporary
    directory, and persistence would silently stay off.
    """
    if os.geteuid() == 0 and "user root" not in broker.conf.read_text():
        broker.stop()
        broker.conf.write_text(broker.conf.read_text() + "user root\n")
        broker.start()


def consumer(url: str, prefix: str, name: str = "bridge-t") -> ReliableConsumer:
    return ReliableConsumer(
        name,
        [f"{prefix}/sensors/+/alarm"],
        MqttSettings.from_url(url),
        prefix=prefix,
        client_id=f"{prefix}-{name}",
        retry_delay_s=0.05,
    )


def test_publisher_and_consumer_recover_after_a_broker_restart(
    mosquitto: Any, mqtt_prefix: str
) -> None:
    keep_privileges(mosquitto)
    reader = consumer(mosquitto.url, mqtt_prefix)
    assert reader.start()
    pub = MqttConnection("sensor-gw", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    assert pub.start()
    topic = sensor_alarm_topic(mqtt_prefix, "s1")
    try:
        assert pub.publish(topic, b"0", qos=1)
        received = drain(reader.get, 1)
        mosquitto.stop()  # graceful: sessions are written to disk
        wait_for(lambda: not pub.connected and not reader.conn.connected)
        for i in range(1, 21):  # queued by the publisher while the broker is away
            assert pub.publish(topic, str(i).encode(), qos=1)
        assert not pub.publish(topic, b"lost", qos=0)  # QoS 0 while offline: dropped, counted
        assert list(mosquitto.workdir.glob("*.db")), "the broker did not persist its state"
        mosquitto.start()
        wait_for(lambda: pub.connected and reader.conn.connected)
        for i in range(21, 31):
            assert pub.publish(topic, str(i).encode(), qos=1)
        deadline = time.monotonic() + 30
        while len(first_seen(received)) < 31 and time.monotonic() < deadline:
            received += drain(reader.get, 1, timeout=1)  # QoS 1 may repeat one
        for m in received:
            reader.ack(m)
    finally:
        pub.stop()
        reader.stop()
    assert first_seen(received) == list(range(31))
    assert pub.stats()["publish_dropped"] == 1
    assert pub.connects == reader.conn.connects == 2


def test_persistent_consumer_gets_what_was_published_while_away_and_acks_in_order(
    mosquitto: Any, mqtt_prefix: str
) -> None:
    first = consumer(mosquitto.url, mqtt_prefix)
    assert first.start()
    first.stop()
    pub = MqttConnection("sensor-gw", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    assert pub.start()
    topic = sensor_alarm_topic(mqtt_prefix, "s1")
    for i in range(50):
        assert pub.publish_wait(topic, str(i).encode(), qos=1)
    pub.stop()

    second = consumer(mosquitto.url, mqtt_prefix)
    assert second.start()
    got = drain(second.get, 50)
    assert [int(m.payload) for m in got] == list(range(50))
    for m in got[:20]:
        second.ack(m)
    second.ack(got[21])  # out of order: held back until 20 is acknowledged, which never happens
    acks_handled(second)
    second.stop()

    third = consumer(mosquitto.url, mqtt_prefix)
    assert third.start()
    again = drain(third.get, 30)
    assert [int(m.payload) for m in again] == list(range(20, 50))
    handled: list[int] = []
    for m in again:
        assert third.handle(m, lambda msg: handled.append(int(msg.payload)))
    assert handled == list(range(20, 50))
    acks_handled(third)
    third.stop()

    fourth = consumer(mosquitto.url, mqtt_prefix)
    assert fourth.start()
    # What the session still held is sent on the connect, before anything published after it.
    pub = MqttConnection("sensor-gw", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    assert pub.start()
    assert pub.publish_wait(topic, b"new", qos=1)
    pub.stop()
    assert [m.payload for m in drain(fourth.get, 1)] == [b"new"]
    fourth.stop()


def acks_handled(reader: ReliableConsumer) -> None:
    """Return once the broker has taken the consumer's acknowledgements: they leave on its
    connection in order, before a publication the broker then confirms."""
    assert reader.conn.publish_wait(f"{reader.conn.prefix}/acks-fence", b"", qos=1)


@pytest.mark.parametrize(
    ("payload", "error"),
    [(b"poison", "database is down"), (b"p" * (1 << 20), "bad row: " + "p" * 5000)],
    ids=["small", "1MiB"],
)
def test_a_failing_handler_ends_in_the_dead_letter_topic(
    mosquitto: Any, mqtt_prefix: str, payload: bytes, error: str
) -> None:
    """A payload over 64 KiB goes cut, with its size: whole in base64 it could be larger
    than the broker takes. The letter says the handler's last error, cut to 1000 characters."""
    reader = consumer(mosquitto.url, mqtt_prefix)
    letters = MqttConnection("dl-watch", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    dead = letters.subscribe(f"{mqtt_prefix}/deadletter/#", qos=1)
    assert reader.start() and letters.start()
    pub = MqttConnection("sensor-gw", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    assert pub.start()
    try:
        assert pub.publish_wait(sensor_alarm_topic(mqtt_prefix, "s1"), payload, qos=1)
        (message,) = drain(reader.get, 1)

        def broken(_m: Message) -> None:
            raise RuntimeError(error)

        assert not reader.handle(message, broken)
        letter = dead.get(10)
    finally:
        pub.stop()
        letters.stop()
        reader.stop()
    assert letter is not None
    assert letter.topic == f"{mqtt_prefix}/deadletter/bridge-t"
    body = json.loads(letter.payload)
    assert body.pop("received_at") == rfc3339(message.received_at)
    size = len(payload)
    cut = {"payload_bytes": size, "payload_truncated": True} if size > 64 * 1024 else {}
    assert body == {
        "reason": "handler_failed",
        "topic": sensor_alarm_topic(mqtt_prefix, "s1"),
        "payload_b64": base64.b64encode(payload[:DEAD_LETTER_PAYLOAD_BYTES]).decode(),
        **cut,
        "error": f"RuntimeError: {error}"[:1000],
    }
    assert reader.dead_lettered == 1


def test_a_dead_letter_the_client_refuses_leaves_its_message_for_redelivery(
    mosquitto: Any,
    mqtt_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given up on, a message whose dead letter the client does not take (its queue full, no
    client) is not acknowledged: the broker sends it again on the next connection, and it
    is dead-lettered then. The message after it is acknowledged all the same."""
    reader = consumer(mosquitto.url, mqtt_prefix)
    letters = MqttConnection("dl-watch", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    dead = letters.subscribe(f"{mqtt_prefix}/deadletter/#", qos=1)
    pub = MqttConnection("sensor-gw", MqttSettings.from_url(mosquitto.url), prefix=mqtt_prefix)
    assert reader.start() and letters.start() and pub.start()
    topic = sensor_alarm_topic(mqtt_prefix, "s1")

    def broken(m: Message) -> None:
        if m.payload == b"poison":
            raise KeyError("no such row")

    try:
        assert pub.publish_wait(topic, b"poison", qos=1)
        assert pub.publish_wait(topic, b"fine", qos=1)
        poison, fine = drain(reader.get, 2)
        refusals: list[str] = []

        def refuse(letter_topic: str, *_a: Any, **_k: Any) -> bool:
            refusals.append(letter_topic)
            return False

        monkeypatch.setattr(reader.conn, "publish", refuse)
        with caplog.at_level(logging.ERROR, logger="gridpatrol.ingest.reliable"):
            caplog.clear()
            assert not reader.handle(poison, broken)
        assert reader.handle(fine, broken)
        acks_handled(reader)
        assert refusals == [f"{mqtt_prefix}/deadletter/bridge-t"]
        assert caplog.messages[-1] == (
            f"bridge-t: the dead letter for {topic} (message id {poison.mid}) was not taken by"
            " the client (its queue full, or no client); left unacknowledged for redelivery"
            " after the next reconnection"
        )
        reader.stop()

        again = consumer(mosquitto.url, mqtt_prefix)
        assert again.start()
        assert pub.publish_wait(topic, b"after", qos=1)
        redelivered = drain(again.get, 2)
        assert [m.payload for m in redelivered] == [b"poison", b"after"]
        assert not again.handle(redelivered[0], broken)
        assert again.handle(redelivered[1], broken)
        letter = dead.get(10)
        acks_handled(again)
        again.stop()
    finally:
        pub.stop()
        letters.stop()
        reader.stop()
    assert letter is not None
    assert json.loads(letter.payload) == {
        "reason": "handler_failed",
        "topic": topic,
        "payload_b64": base64.b64encode(b"poison").decode(),
        "received_at": rfc3339(redelivered[0].received_at),
        "error": "KeyError: 'no such row'",
    }
    assert (reader.dead_lettered, reader.left_for_redelivery) == (0, 1)
    assert (again.dead_lettered, again.left_for_redelivery) == (1, 0)


def test_component_status_goes_offline_when_the_process_is_killed(
    mosquitto: Any,
    mqtt_prefix: str,
    site_file: Callable[..., Path],
    gridpatrol_proc: Any,
    watch: Any,
) -> None:
    site = site_file(
        "  - {id: c1, source: $FOOTAGE, fps: 1, loop: true, location: {address: here}}\n"
    )
    status = f"{mqtt_prefix}/components/ing-k/status"
    watcher = watch(mosquitto.url, status, mqtt_prefix)
    proc = gridpatrol_proc(
        ["ingest", "--config", str(site), "--component-id", "ing-k"], mosquitto.url
    )
    seen = watcher.collect(lambda s: [m.payload for m in s] == [b"online"], timeout=30)
    assert [m.payload for m in seen] == [b"online"]
    proc.signal(signal.SIGKILL)
    seen = watcher.collect(lambda s: len(s) >= 2, timeout=30)
    assert [m.payload for m in seen] == [b"online", b"offline"]
    assert seen[-1].retain is False  # delivered live; it stays retained for later subscribers
    late = watch(mosquitto.url, status, mqtt_prefix)
    assert [m.payload for m in late.collect(lambda s: len(s) >= 1, timeout=10)] == [b"offline"]


def test_falls_back_to_mqtt_311_on_the_embedded_amqtt_broker(
    monkeypatch: pytest.MonkeyPatch, mqtt_prefix: str
) -> None:
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")  # unreachable
    handle = ensure_broker(use_mosquitto=False)
    try:
        assert handle.kind == "amqtt"
        sub = MqttConnection("amqtt-sub", prefix=mqtt_prefix)  # settings from the exported URL
        messages = sub.subscribe(f"{mqtt_prefix}/x", qos=1)
        assert sub.start(20)
        pub = MqttConnection("amqtt-pub", prefix=mqtt_prefix)
        assert pub.start(20)
        assert pub.publish_wait(f"{mqtt_prefix}/x", b"hello", qos=1)
        message = messages.get(10)
        pub.stop()
        sub.stop()
    finally:
        handle.stop()
    assert sub.protocol == pub.protocol == MQTTProtocolVersion.MQTTv311
    assert message is not None
    assert message.payload == b"hello"


def test_ensure_broker_prefers_the_configured_one_then_mosquitto(
    monkeypatch: pytest.MonkeyPatch, mosquitto: Any
) -> None:
    monkeypatch.setenv("GRIDPATROL_MQTT_URL", mosquitto.url)
    configured = ensure_broker()
    assert (configured.kind, configured.url) == ("configured", mosquitto.url)
    monkeypatch.delenv("GRIDPATROL_MQTT_URL")
    own = ensure_broker()
    try:
        assert own.kind == "mosquitto"
        conn = MqttConnection("probe", MqttSettings.from_url(own.url))
        assert conn.start()
        assert conn.protocol == MQTTProtocolVersion.MQTTv5
        conn.stop()
    finally:
        own.stop()


def set_passwords(passwords: Path, users: dict[str, str]) -> None:
    passwords.unlink(missing_ok=True)
    for user, password in users.items():
        create = ["-c"] if not passwords.exists() else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(passwords), user, password], check=True
        )


def password_broker(folder: Path, users: dict[str, str]) -> tuple[int, Path, Path]:
    """The port, password file and configuration of a broker that wants credentials."""
    port = free_port()
    passwords = folder / "passwd"
    set_passwords(passwords, users)
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        f"log_dest file {folder / 'mosquitto.log'}\nlog_type all\n"
        + ("user root\n" if os.geteuid() == 0 else "")  # see keep_privileges
    )
    return port, passwords, conf


# What Mosquitto 2.0 logs for each refused CONNECT; the client id is not known yet.
REFUSAL = "Client <unknown> disconnected, not authorised."


def refusals(folder: Path) -> int:
    return (folder / "mosquitto.log").read_text().count(REFUSAL)


def run_broker(
    conf: Path, port: int, *, movable: bool = True
) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on ``conf`` listening on ``port``, and its port: until clients know it
    (``movable``), a port another process took meanwhile is given up for a new free one."""
    errors = conf.with_suffix(".err")

    def launch(port: int) -> subprocess.Popen[bytes]:
        text = conf.read_text()
        conf.write_text(re.sub(r"^listener \d+ ", f"listener {port} ", text, count=1, flags=re.M))
        with errors.open("ab") as err:
            return subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=err)

    return start_listening(
        launch,
        port,
        movable=movable,
        output=lambda proc: errors.read_text(errors="replace")[-3000:],
    )


def test_a_test_broker_moves_off_a_port_another_process_took(tmp_path: Path) -> None:
    """Answering on the port is no proof that the broker started: another process may have
    taken the port since free_port(), and our Mosquitto died."""
    _, _, conf = password_broker(tmp_path, {"gp": "s3cret"})
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        taken = squatter.getsockname()[1]
        broker, port = run_broker(conf, taken)
        try:
            assert port != taken
            assert f"listener {port} 127.0.0.1\n" in conf.read_text()
            conn = MqttConnection(
                "ing", MqttSettings.from_url(f"mqtt://gp:s3cret@127.0.0.1:{port}")
            )
            assert conn.start(10)
            conn.stop()
        finally:
            broker.terminate()
            broker.wait(10)


def test_bad_credentials_fail_fast_without_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _, conf = password_broker(tmp_path, {"gp": "s3cret"})
    broker, port = run_broker(conf, port)
    try:
        wrong = MqttConnection("ing", MqttSettings.from_url(f"mqtt://gp:wrong@127.0.0.1:{port}"))
        with pytest.raises(MqttAuthError, match="refused the credentials"):
            wrong.start(20)
        assert wrong.auth_failed and not wrong.connected
        right = MqttConnection("ing", MqttSettings.from_url(f"mqtt://gp:s3cret@127.0.0.1:{port}"))
        assert right.start(10)
        right.stop()
        # The environment overrides credentials in the URL.
        monkeypatch.setenv("GRIDPATROL_MQTT_URL", f"mqtt://gp:wrong@127.0.0.1:{port}")
        monkeypatch.setenv("GRIDPATROL_MQTT_PASSWORD", "s3cret")
        from_env = MqttConnection("ing")
        assert from_env.start(10)
        from_env.stop()
    finally:
        broker.terminate()
        broker.wait(10)
    # The wrong credentials were tried once, not again until the start() timeout; the
    # right ones, in the URL or from the environment, were never refused.
    assert refusals(tmp_path) == 1


def test_credentials_refused_after_a_reconnect_are_retried_until_accepted_again(
    tmp_path: Path, mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    users = {"gp": "s3cret", "watch": "w4tch"}
    port, passwords, conf = password_broker(tmp_path, users)
    broker, port = run_broker(conf, port)
    url = f"mqtt://{{}}@127.0.0.1:{port}"
    topic = f"{mqtt_prefix}/alarms"
    conn = MqttConnection(
        "ing",
        MqttSettings.from_url(url.format("gp:s3cret")),
        prefix=mqtt_prefix,
        auth_retry_s=(1, 2),
    )
    watcher = MqttConnection("watch", MqttSettings.from_url(url.format("watch:w4tch")))
    seen = watcher.subscribe(topic, qos=1)
    try:
        assert conn.start(10) and watcher.start(10)
        # The password is rotated on the broker before the component knows the new one.
        set_passwords(passwords, {**users, "gp": "n3w"})
        broker.terminate()
        broker.wait(10)
        broker, _ = run_broker(conf, port, movable=False)  # the component knows the port
        wait_for(lambda: "refused the credentials" in caplog.text, 20)
        assert watcher.wait_connected(20) and not conn.connected
        assert conn.publish(topic, b"kept", qos=1)  # waits in the component's queue
        set_passwords(passwords, users)  # rotated back; the broker rereads it on SIGHUP
        broker.send_signal(signal.SIGHUP)
        assert conn.wait_connected(20)
        message = seen.get(10)
    finally:
        conn.stop()
        watcher.stop()
        broker.terminate()
        broker.wait(10)
    assert message is not None and message.payload == b"kept"
    assert conn.connects == 2 and conn.auth_refusals >= 1 and not conn.auth_failed


def make_certificates(folder: Path, days: int = 2) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1, valid for ``days`` (expired for
    a negative number)."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=gridpatrol test CA"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", days, "-extfile", ext],
    ]  # fmt: skip
    for cmd in run:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return ca, cert, key


def run_tls_broker(folder: Path, days: int = 2) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Mosquitto with a TLS listener, its certificate from a private CA for 127.0.0.1 (valid
    for ``days``); its port and that CA."""
    ca, cert, key = make_certificates(folder, days)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        + ("user root\n" if os.geteuid() == 0 else "")  # see keep_privileges
    )
    broker, port = run_broker(conf, port)
    return broker, port, ca


def test_tls_with_a_private_ca_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mqtt_prefix: str
) -> None:
    broker, port, ca = run_tls_broker(tmp_path)
    try:
        monkeypatch.setenv("GRIDPATROL_MQTT_URL", f"mqtts://127.0.0.1:{port}")
        untrusted = MqttConnection("tls-untrusted", prefix=mqtt_prefix)
        # The system CAs do not know our private CA: no retry can mend that.
        with pytest.raises(MqttTlsError, match="certificate verify failed"):
            untrusted.start(3)
        assert not untrusted.connected
        untrusted.stop()
        monkeypatch.setenv("GRIDPATROL_MQTT_CA", str(ca))
        settings = MqttSettings.from_env()
        assert (settings.tls, settings.ca_file, settings.url) == (
            True,
            str(ca),
            f"mqtts://127.0.0.1:{port}",
        )
        conn = MqttConnection("tls-ok", settings, prefix=mqtt_prefix)
        echo = conn.subscribe(f"{mqtt_prefix}/tls", qos=1)
        assert conn.start(10)
        assert conn.publish_wait(f"{mqtt_prefix}/tls", b"secure", qos=1)
        message = echo.get(10)
        conn.stop()
    finally:
        broker.terminate()
        broker.wait(10)
    assert message is not None
    assert message.payload == b"secure"


def test_an_expired_broker_certificate_is_retried_as_a_matter_of_clocks(
    tmp_path: Path, mqtt_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate out of its dates may be this host's clock not yet set after a power cut,
    or a renewal running late: said, and retried, not a setting to mend (status 2)."""
    broker, port, ca = run_tls_broker(tmp_path, days=-1)
    settings = replace(MqttSettings.from_url(f"mqtts://127.0.0.1:{port}"), ca_file=str(ca))
    conn = MqttConnection("tls-dates", settings, prefix=mqtt_prefix)
    try:
        with caplog.at_level(logging.WARNING, logger="gridpatrol.ingest.mqtt"):
            assert not conn.start(3)
    finally:
        conn.stop()
        broker.terminate()
        broker.wait(10)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"tls-dates: broker mqtts://127.0.0.1:{port} not reachable yet (TLS: certificate has"
        " expired; check this host's clock and the broker's certificate dates); retrying in the"
        " background"
    ]


def test_falls_back_when_amqtt_comes_up_after_the_component(mqtt_prefix: str) -> None:
    port = free_port()
    conn = MqttConnection(
        "early-bird", MqttSettings.from_url(f"mqtt://127.0.0.1:{port}"), prefix=mqtt_prefix
    )
    messages = conn.subscribe(f"{mqtt_prefix}/late", qos=1)
    assert not conn.start(1)  # nothing listens yet: paho keeps retrying
    handle = start_amqtt(port)
    try:
        assert conn.wait_connected(60)
        assert conn.protocol == MQTTProtocolVersion.MQTTv311
        assert conn.publish_wait(f"{mqtt_prefix}/late", b"made it", qos=1)
        message = messages.get(10)
        conn.stop()
    finally:
        handle.stop()
    assert message is not None
    assert message.payload == b"made it"


class SlowBroker:
    """A TCP proxy to a broker that holds back the broker's first bytes of every connection,
    its CONNACK, by ``delay`` s: a loaded broker, a slow authentication backend."""

    def __init__(self, broker_port: int, delay: float) -> None:
        self.broker_port, self.delay = broker_port, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            self.sockets += [client, broker]
            for src, dst, delay in ((client, broker, 0.0), (broker, client, self.delay)):
                threading.Thread(target=self._pump, args=(src, dst, delay), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(delay)
                delay = 0.0
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):  # one side gone: so is the other
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        for sock in self.sockets:
            sock.close()


def test_a_slow_connack_is_no_refusal_of_mqtt_5(mosquitto: Any) -> None:
    """Only amqtt leaves an MQTT 5 CONNECT unanswered for good; a broker slower than the grace
    answers 3.1.1 as slowly, and keeps MQTT 5, for this connection and the next ones."""
    prefix = "gptest-slow-connack"
    topic = f"{prefix}/alarms"
    slow = SlowBroker(mosquitto.port, delay=3.0)  # longer than the 2.5 s grace
    settings = MqttSettings.from_url(f"mqtt://127.0.0.1:{slow.port}")
    consumer = MqttConnection("slow", settings, prefix=prefix, persistent=True, manual_ack=True)
    alarms = consumer.subscribe(topic, qos=1)
    direct = MqttConnection("direct", MqttSettings.from_url(mosquitto.url), prefix=prefix)
    try:
        assert consumer.start(20)
        later = MqttConnection("slow-later", settings, prefix=prefix)
        assert later.start(20)
        assert direct.start(10)
        assert direct.publish_wait(topic, b"alarm", qos=1)
        message = alarms.get(10)
        later.stop()
    finally:
        consumer.stop()
        direct.stop()
        slow.close()
    assert consumer.protocol == later.protocol == MQTTProtocolVersion.MQTTv5
    assert message is not None and message.payload == b"alarm"


def test_a_wake_event_is_set_by_any_of_its_subscriptions(mqtt_prefix: str) -> None:
    wake = threading.Event()
    conn = MqttConnection(
        "wake-t", MqttSettings.from_url("mqtt://127.0.0.1:1883"), prefix=mqtt_prefix
    )
    assert conn.start(timeout=10)
    try:
        subs = [
            conn.subscribe(f"{mqtt_prefix}/{name}", qos=1, maxsize=1, wake=wake)
            for name in ("a", "b")
        ]
        time.sleep(0.5)  # the broker registers the subscriptions
        assert not wake.is_set()
        for count, (name, body) in enumerate((("b", b"1"), ("b", b"2"), ("a", b"3")), start=1):
            wake.clear()
            assert conn.publish(f"{mqtt_prefix}/{name}", body, qos=1)
            assert wake.wait(10), f"no wake-up for {name}"
            # The event is set after the message is queued: it is there already.
            assert sum(sub.received for sub in subs) == count
        # One slot per subscription: the newest message stays, the older one is counted.
        assert [(sub.received, sub.dropped) for sub in subs] == [(1, 0), (2, 1)]
        assert [m.payload for m in subs[1].drain()] == [b"2"]
    finally:
        conn.stop()


def test_routes_follow_subscribe_and_unsubscribe(mqtt_prefix: str) -> None:
    conn = MqttConnection(
        "routes-t", MqttSettings.from_url("mqtt://127.0.0.1:1883"), prefix=mqtt_prefix
    )
    assert conn.start(timeout=10)
    topic = f"{mqtt_prefix}/cameras/c1/frame"
    # The broker handles one client's packets in order and sends it what it routes in order
    # (QoS 0 here throughout): a subscription sent before a publication applies to it, and a
    # fence message published after a message arrives after every copy of it.
    fence = conn.subscribe(f"{mqtt_prefix}/fence", maxsize=10)

    def settled(mark: bytes) -> None:
        assert conn.publish(f"{mqtt_prefix}/fence", mark, qos=1)
        message = fence.get(10)
        assert message is not None and message.payload == mark

    try:
        wild = conn.subscribe(f"{mqtt_prefix}/cameras/+/frame", maxsize=10)
        assert conn.publish(topic, b"1", qos=1)
        assert wild.get(10) is not None  # the topic's route is now remembered
        exact = conn.subscribe(topic, maxsize=10)
        other = conn.subscribe(f"{mqtt_prefix}/cameras/c2/frame", maxsize=10)
        assert conn.publish(topic, b"2", qos=1)
        settled(b"after 2")
        # MQTT 5 lets the broker deliver once per matching filter: every copy reaches both
        # matching queues, none the other one.
        to_exact, to_wild = exact.drain(), wild.drain()
        assert [m.payload for m in to_exact] in ([b"2"], [b"2", b"2"])
        assert [m.payload for m in to_wild] == [m.payload for m in to_exact]
        assert other.received == 0
        conn.unsubscribe(wild)
        seen = wild.received
        assert conn.publish(topic, b"3", qos=1)
        settled(b"after 3")
        assert [m.payload for m in exact.drain()] == [b"3"]  # the one filter left
        assert wild.received == seen and other.received == 0
    finally:
        conn.stop()


def limit_inflight(broker: Any, window: int) -> None:
    """Restart the private broker with at most ``window`` unacknowledged messages per client."""
    broker.stop()
    lines = [line for line in broker.conf.read_text().splitlines() if "max_inflight" not in line]
    broker.conf.write_text("\n".join([*lines, f"max_inflight_messages {window}"]) + "\n")
    broker.start()


def acking(settings: MqttSettings, prefix: str) -> MqttConnection:
    """A persistent manual-ack connection with a stable client id, as the alarm bridge has."""
    return MqttConnection(
        "bridge-t",
        settings,
        prefix=prefix,
        persistent=True,
        manual_ack=True,
        client_id=f"{prefix}-bridge",
    )


def test_messages_no_subscription_wants_are_acknowledged(mosquitto: Any, mqtt_prefix: str) -> None:
    limit_inflight(mosquitto, 5)
    settings = MqttSettings.from_url(mosquitto.url)
    # An earlier version subscribed wider; the persistent session keeps that filter.
    earlier = acking(settings, mqtt_prefix)
    earlier.subscribe(f"{mqtt_prefix}/sensors/#", qos=1)
    assert earlier.start()
    earlier.stop()
    conn = acking(settings, mqtt_prefix)
    alarms = conn.subscribe(f"{mqtt_prefix}/sensors/+/alarm", qos=1)
    pub = MqttConnection("sensor-gw", settings, prefix=mqtt_prefix)
    assert conn.start() and pub.start()
    try:
        for i in range(12):  # more than the broker's window, none of them ours
            assert pub.publish_wait(f"{mqtt_prefix}/sensors/s1/reading", str(i).encode(), qos=1)
        assert pub.publish_wait(sensor_alarm_topic(mqtt_prefix, "s1"), b"alarm", qos=1)
        message = alarms.get(10)
        assert message is not None and message.payload == b"alarm"
        wait_for(lambda: conn.stats()["unrouted"] == 12, 10)
    finally:
        pub.stop()
        conn.stop()


def test_a_full_queue_leaves_its_oldest_for_redelivery_without_closing_the_window(
    mosquitto: Any, mqtt_prefix: str
) -> None:
    limit_inflight(mosquitto, 5)
    settings = MqttSettings.from_url(mosquitto.url)
    conn = acking(settings, mqtt_prefix)
    alarms = conn.subscribe(f"{mqtt_prefix}/sensors/+/alarm", qos=1, maxsize=3)
    pub = MqttConnection("sensor-gw", settings, prefix=mqtt_prefix)
    assert conn.start() and pub.start()
    topic = sensor_alarm_topic(mqtt_prefix, "s1")
    got: list[Message] = []

    def consume(count: int) -> None:
        for message in drain(alarms.get, count, timeout=10):
            got.append(message)
            conn.ack(message)

    try:
        for i in range(5):  # the whole window comes in while the consumer is busy
            assert pub.publish_wait(topic, str(i).encode(), qos=1)
        wait_for(lambda: alarms.dropped == 2, 10)
        consume(3)
        assert pub.publish_wait(topic, b"5", qos=1)  # 0 and 1 are in flight, yet 5 comes
        consume(1)
        mosquitto.stop()
        wait_for(lambda: not conn.connected)
        mosquitto.start()
        consume(2)  # never acknowledged: sent again on the next connection
    finally:
        pub.stop()
        conn.stop()
    assert [int(m.payload) for m in got] == [2, 3, 4, 5, 0, 1]


def test_a_resend_is_marked_dup_on_a_resumed_session_and_a_lost_session_starts_anew(
    mosquitto: Any, mqtt_prefix: str
) -> None:
    """A message left unacknowledged is sent again with the DUP flag on a session the broker
    kept; after a restart without persistence the session is new and its messages are not
    resends."""
    settings = MqttSettings.from_url(mosquitto.url)
    conn = acking(settings, mqtt_prefix)
    alarms = conn.subscribe(f"{mqtt_prefix}/sensors/+/alarm", qos=1)
    # Renewed in the same SUBSCRIBE as the alarms: a probe that arrives proves both are back.
    probes = conn.subscribe(f"{mqtt_prefix}/probe", qos=0)
    pub = MqttConnection("sensor-gw", settings, prefix=mqtt_prefix)
    topic = sensor_alarm_topic(mqtt_prefix, "s1")
    got: list[Message] = []
    try:
        assert conn.start() and pub.start()
        assert pub.publish_wait(topic, b"0", qos=1)
        got += drain(alarms.get, 1)  # never acknowledged
        mosquitto.stop()  # graceful: the session, with the message in flight, is kept
        mosquitto.start()
        got += drain(alarms.get, 1)
        assert conn.session_present
        mosquitto.stop()
        mosquitto.conf.write_text(
            mosquitto.conf.read_text().replace("persistence true", "persistence false")
        )
        mosquitto.start()
        # QoS 0 probes use no packet id, so the alarm below is the new session's first.
        wait_for(lambda: pub.publish(f"{mqtt_prefix}/probe", b"?") and probes.get(0.2) is not None)
        assert pub.publish_wait(topic, b"1", qos=1)
        got += drain(alarms.get, 1)
        assert not conn.session_present
    finally:
        pub.stop()
        conn.stop()
    assert [(m.payload, m.session, m.dup, m.session_present) for m in got] == [
        (b"0", 1, False, False),
        (b"0", 2, True, True),
        (b"1", 3, False, False),
    ]


def test_a_broker_at_an_ipv6_address_is_named_by_a_url_that_can_be_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """'connected to mqtt://::1:1883' was logged: no URL, and refused as GRIDPATROL_MQTT_URL."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} ::1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    conn = MqttConnection("ing-v6", MqttSettings.from_url(f"mqtt://gp:pw@[::1]:{port}"))
    try:
        with caplog.at_level(logging.INFO, logger="gridpatrol.ingest.mqtt"):
            assert conn.start(10)
    finally:
        conn.stop()
        broker.terminate()
        broker.wait(10)
    url = f"mqtt://gp@[::1]:{port}"
    assert f"ing-v6: connected to {url} (MQTT 5" in caplog.text
    assert (MqttSettings.from_url(url).host, MqttSettings.from_url(url).port) == ("::1", port)
