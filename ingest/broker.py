"""A broker for the demo and the tests: the configured one, else Mosquitto, else amqtt.

``ensure_broker()`` returns a handle whose URL every component can use (it also exports
``GRIDPATROL_MQTT_URL`` when it started a broker of its own). The embedded amqtt broker speaks
MQTT 3.1.1 only and keeps nothing on disk: persistent sessions do not survive its restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gridpatrol.ingest.mqtt import MqttSettings

log = logging.getLogger(__name__)

BrokerKind = Literal["configured", "mosquitto", "amqtt"]


@dataclass
class BrokerHandle:
    url: str
    kind: BrokerKind
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)
    # The process of a broker this handle started (None for the configured one): whoever
    # depends on it can notice that it died.
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    def exit_code(self) -> int | None:
        """The exit status of the broker process this handle started, once it has exited."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        self._stop()
        self._stop = lambda: None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with code {proc.returncode}")
        if reachable("127.0.0.1", port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the broker did not listen on 127.0.0.1:{port} within {timeout} s")


def _spawn(argv: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    # A session of its own: a terminal's Ctrl-C signals the whole foreground process group, and
    # the broker must outlive the components that still flush through it while they stop.
    if log_path is None:
        return subprocess.Popen(argv, stderr=subprocess.DEVNULL, start_new_session=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _started(
    proc: subprocess.Popen[bytes], port: int, timeout: float, workdir: Path | None
) -> None:
    """Wait until the broker listens; kill it when it does not, or the wait is cut short."""
    try:
        _wait_port(port, proc, timeout)
    except BaseException:
        # Ctrl-C, SIGTERM (raised here by the demo's handler) or a broker that never listened:
        # in a session of its own, nobody would stop it later.
        proc.kill()
        proc.wait()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


MOSQUITTO_TEMPLATE = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {dir}/
autosave_interval 5
max_queued_messages 100000
max_queued_bytes 0
max_inflight_messages 100
persistent_client_expiration 1d
log_dest stderr
log_type error
log_type warning
"""


def start_mosquitto(
    binary: str, port: int | None = None, log_path: Path | None = None
) -> BrokerHandle:
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="gridpatrol-mosquitto-"))
    conf = workdir / "mosquitto.conf"
    text = MOSQUITTO_TEMPLATE.format(port=port, dir=workdir)
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to its own user, which cannot write our private
        # temporary directory: persistence would silently stay off.
        text += "user root\n"
    conf.write_text(text)
    proc = _spawn([binary, "-c", str(conf)], log_path)
    _started(proc, port, 10.0, workdir)
    log.info("started Mosquitto (pid %d) on 127.0.0.1:%d (data in %s)", proc.pid, port, workdir)
    url = f"mqtt://127.0.0.1:{port}"
    return BrokerHandle(url, "mosquitto", _stopper(proc, workdir), proc, log_path)


def start_amqtt(
    port: int | None = None, log_path: Path | None = None, why: str = ""
) -> BrokerHandle:
    """The embedded amqtt broker; ``why`` it was started, for its warning (none: not said)."""
    port = port or free_port()
    # -P: -m would put the working directory first on sys.path, and where that is a checkout
    # its gridpatrol/ folder would hide the installed gridpatrol (as for the demo's components).
    cmd = [sys.executable, "-P", "-m", "gridpatrol.ingest.broker", "--amqtt-port", str(port)]
    proc = _spawn(cmd, log_path)
    _started(proc, port, 20.0, None)
    log.warning(
        "%sstarted the embedded amqtt broker (pid %d) on 127.0.0.1:%d (MQTT 3.1.1 only, no "
        "persistence: sessions and queued messages are lost when it stops; use Mosquitto or "
        "EMQX in production)",
        f"{why}: " if why else "",
        proc.pid,
        port,
    )
    url = f"mqtt://127.0.0.1:{port}"
    return BrokerHandle(url, "amqtt", _stopper(proc, None), proc, log_path)


def _stopper(proc: subprocess.Popen[bytes], workdir: Path | None) -> Callable[[], None]:
    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    return stop


def ensure_broker(
    *, use_configured: bool = True, use_mosquitto: bool = True, log_path: Path | None = None
) -> BrokerHandle:
    """The configured broker when reachable; else a private Mosquitto; else embedded amqtt
    (its output appended to ``log_path`` when given)."""
    url = os.environ.get("GRIDPATROL_MQTT_URL")
    if url and use_configured:
        settings = MqttSettings.from_url(url)
        if reachable(settings.host, settings.port):
            return BrokerHandle(url, "configured")
        log.warning("configured broker %s is not reachable; starting one", settings.url)
    binary = mosquitto_binary() if use_mosquitto else None
    # Said with the warning: "no broker configured" was said of an amqtt broker asked for
    # (gridpatrol broker --amqtt), a configured broker and a mosquitto binary there.
    if not use_mosquitto:
        why = "as asked"
    elif url and use_configured:
        why = "no mosquitto binary"
    else:
        why = "no broker configured and no mosquitto binary"
    handle = (
        start_mosquitto(binary, log_path=log_path)
        if binary
        else start_amqtt(log_path=log_path, why=why)
    )
    os.environ["GRIDPATROL_MQTT_URL"] = handle.url
    return handle


def _run_amqtt(port: int) -> None:
    import asyncio

    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "auth": {"allow-anonymous": True},
        "topic-check": {"enabled": False},
    }

    async def serve() -> None:
        broker = Broker(config)
        await broker.start()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the embedded amqtt broker.")
    parser.add_argument("--amqtt-port", type=int, required=True)
    logging.basicConfig(level=logging.ERROR)
    _run_amqtt(parser.parse_args().amqtt_port)
