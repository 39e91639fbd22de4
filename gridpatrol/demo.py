"""``gridpatrol demo``: the whole pipeline on sample footage, in one command.

Start-up order: broker → API → bridge → detector worker → ingest → simulated sensors; shutdown
in reverse, so producers flush their outboxes while the API still runs. Every component runs as
its own ``gridpatrol`` subprocess with its log under ``var/demo/logs/``.

``var/`` is the checkout's; an installed (non-editable) gridpatrol has no checkout, so there it is
``var/`` in the working directory, and the site is the copy of ``samples/site.yaml`` packaged
with gridpatrol.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gridpatrol.ingest.broker import BrokerHandle

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# Installed from a wheel, ROOT is site-packages: no checkout, and no place for footage or state.
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file()
ROLES = ("producer", "reviewer", "platform", "admin")
# Public clips used when the shared footage is absent (CC BY 4.0, intel-iot-devkit/sample-videos).
SAMPLE_CLIPS = {
    "pedestrian_street_1080p.mp4": "people-detection.mp4",
    "car_park_overhead.mp4": "car-detection.mp4",
    "car_park_people_bikes.mp4": "person-bicycle-car-detection.mp4",
}
SAMPLE_CLIPS_URL = "https://github.com/intel-iot-devkit/sample-videos/raw/master/"
STOP_TIMEOUT_S = 20.0
# The demo's own topics and bridge session: on a broker that also serves a site, the demo must
# neither take over the production bridge's persistent session (and acknowledge its alarms
# into a throwaway database) nor publish frames, alarms and statuses into its topics. On a
# configured broker the prefix is also the demo's own (see demo_prefix).
DEMO_PREFIX = "gridpatrol-demo"
# Credentials and TLS files of the configured broker: not for the demo's private broker.
BROKER_SETTINGS = (
    "GRIDPATROL_MQTT_USERNAME",
    "GRIDPATROL_MQTT_PASSWORD",
    "GRIDPATROL_MQTT_CA",
    "GRIDPATROL_MQTT_CERT",
    "GRIDPATROL_MQTT_KEY",
)


def demo_prefix(workdir: Path) -> str:
    """The demo's topic prefix on a configured broker: its own per host and work folder, so
    that two demos sharing that broker neither take over each other's bridge session nor see
    each other's frames and alarms, while a demo run again in its folder keeps its session."""
    key = f"{socket.gethostname()}:{workdir}".encode()
    return f"{DEMO_PREFIX}-{hashlib.sha256(key).hexdigest()[:8]}"


def bridge_client_id(prefix: str) -> str:
    """The demo bridge's persistent session: never the site bridge's (``gp-alarm_bridge``)."""
    return f"gp-alarm_bridge-{prefix}"


def home() -> Path:
    """Where footage and the work folder live and the components run: the checkout, else the
    working directory."""
    return ROOT if IN_CHECKOUT else Path.cwd()


def sample_site() -> Path:
    """The demo site: the checkout's ``samples/site.yaml``, else the copy packaged with us."""
    checkout = ROOT / "samples" / "site.yaml"
    if IN_CHECKOUT:
        return checkout
    try:
        return Path(str(resources.files("gridpatrol.samples").joinpath("site.yaml")))
    except ModuleNotFoundError:  # a broken install: the site loader names the missing file
        return checkout


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run broker, API, ingest, detector, bridge and simulated sensors on sample footage",
    )
    parser.add_argument(
        "--duration", type=run_seconds, default=None, help="stop after S seconds (default: Ctrl-C)"
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open the console")
    parser.add_argument(
        "--port",
        type=port_number,
        default=None,
        help=f"API port (default {DEFAULT_PORT}, or a free one when that is in use)",
    )
    parser.add_argument(
        "--config", default=str(sample_site()), help="the site file (default: %(default)s)"
    )
    parser.add_argument(
        "--workdir",
        default=str(home() / "var" / "demo"),
        help="database, evidence, logs; cleared at every start (a new, empty or earlier demo's "
        "folder; default: %(default)s)",
    )
    parser.add_argument(
        "--own-broker",
        action="store_true",
        help=f"start a broker of its own even when GRIDPATROL_MQTT_URL names a reachable one; "
        f"its topics are then under {DEMO_PREFIX}/ (without it, with GRIDPATROL_MQTT_URL set, "
        f"under {DEMO_PREFIX}-<id>/ of this host and work folder, with a bridge session of "
        "its own)",
    )
    parser.set_defaults(func=run_demo)


# ---------------------------------------------------------------------------------------------
# Footage


def find_footage(root: Path | None = None) -> Path:
    """``var/footage`` (linked by the Makefile), else the shared folder, else downloaded clips."""
    root = root or home()
    target = root / "var" / "footage"
    if all((target / name).exists() for name in SAMPLE_CLIPS):
        return target
    shared = Path(os.environ.get("GRIDPATROL_SHARED") or root.parent / "shared") / "footage"
    if all((shared / name).exists() for name in SAMPLE_CLIPS):
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or not target.exists():
            target.unlink(missing_ok=True)
            target.symlink_to(shared.resolve(), target_is_directory=True)
            return target
        for name in SAMPLE_CLIPS:
            if not (target / name).exists():
                shutil.copyfile(shared / name, target / name)
        return target
    return download_clips(target)


def download_clips(target: Path) -> Path:
    if target.is_symlink() and not target.exists():
        # A link to shared footage that has moved or gone: the clips are downloaded instead.
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for name, remote in SAMPLE_CLIPS.items():
        path = target / name
        if path.exists():
            continue
        url = SAMPLE_CLIPS_URL + remote
        print(f"downloading sample footage {url} -> {path}", flush=True)
        # Into a partial file renamed once whole: an interrupted or cut-off download must not
        # leave a clip that the next run, seeing it there, takes for the real one.
        partial = path.with_name(path.name + ".part")
        try:
            _fetch(url, partial)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise SystemExit(
                f"no footage: {path} is missing, GRIDPATROL_SHARED has no footage/ folder and "
                f"the public sample clips could not be downloaded ({exc}).\n"
                f"Put MP4 clips named {', '.join(SAMPLE_CLIPS)} in {target}, or set "
                "GRIDPATROL_SHARED to a folder holding footage/, and run the demo again."
            ) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
    return target


def _fetch(url: str, path: Path) -> None:
    """The body at ``url`` into ``path``; OSError when it ends before its declared length
    (which reading in chunks does not notice by itself)."""
    with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as out:
        shutil.copyfileobj(response, out)
        if response.length:  # what its Content-Length said is still to come
            got = out.tell()
            raise OSError(f"the download ended after {got} of {got + response.length} bytes")


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Component:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                # -P: -m would put the working directory first on sys.path, and where that
                # is a checkout (or the image's WORKDIR) its gridpatrol/ folder, lacking the
                # subpackages an installed gridpatrol maps in, would hide the installed one.
                # An editable install finds its sources without it.
                [sys.executable, "-P", "-m", "gridpatrol.cli", *self.args],
                env=self.env,
                cwd=home(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops us in order
            )
        command = " ".join(self.args)
        log.info("started %s (pid %d): gridpatrol %s", self.name, self.proc.pid, command)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killing it", self.name, STOP_TIMEOUT_S)
                self.proc.kill()
                self.proc.wait()
        log.info("stopped %s (exit %s)", self.name, self.proc.returncode)

    def tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Demo:
    config: Path
    workdir: Path
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    private_broker: bool = True
    prefix: str = DEMO_PREFIX
    api_ready: bool = False  # it answered healthz: there are candidates to read at the end

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "GRIDPATROL_CONFIG": str(self.config), **extra}
        if self.private_broker:
            for name in BROKER_SETTINGS:
                env.pop(name, None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The components call the demo's API on 127.0.0.1: never through an http_proxy. Python
        # reads only no_proxy when both are set, so both carry the user's exceptions of either.
        bypass = (env.get("no_proxy"), env.get("NO_PROXY"), LOCAL_HOSTS)
        env["no_proxy"] = env["NO_PROXY"] = ",".join(dict.fromkeys(filter(None, bypass)))
        return env

    def add(self, name: str, args: list[str], **extra_env: str) -> Component:
        component = Component(
            name, args, self.env(**extra_env), self.workdir / "logs" / f"{name}.log"
        )
        self.components.append(component)
        component.start()
        return component

    def producer_env(self, component: str) -> dict[str, str]:
        return {
            "GRIDPATROL_API_URL": self.api_url,
            "GRIDPATROL_API_TOKEN": self.tokens["producer"],
            "GRIDPATROL_STATE_DIR": str(self.workdir / "state"),
            "GRIDPATROL_OUTBOX": str(self.workdir / "state" / f"outbox-{component}.db"),
        }

    def stop_all(self) -> None:
        for component in reversed(self.components):
            component.stop()


def generate_tokens() -> dict[str, str]:
    return {role: f"gp-{role}-{secrets.token_urlsafe(18)}" for role in ROLES}


DEFAULT_PORT = 8000


def port_number(text: str) -> int:
    """A TCP port for argparse: 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return port


def run_seconds(text: str) -> float:
    """How long the demo runs, for argparse: a finite number of seconds, 0 or more (0 starts
    everything and stops it at once). Checked before the work folder is cleared."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text!r}")
    return value


def api_port(requested: int | None) -> int | None:
    """The API's port: ``--port`` as given, or None after a line when it cannot be bound
    (another port would leave the operator's URL, proxy or firewall rule pointing elsewhere);
    without ``--port``, 8000, else a free port, said in a line."""
    if requested is None:
        return _default_port()
    try:
        return _bound(requested)
    except OSError as exc:
        print(f"demo: {_refusal(requested, exc)}", file=sys.stderr)
        return None


def _default_port() -> int:
    try:
        return _bound(DEFAULT_PORT)
    except OSError:  # 8000 needs no privileges: something listens there
        port = _bound(0)
        print(f"demo: port {DEFAULT_PORT} is in use; the API listens on {port}", file=sys.stderr)
        return port


def _refusal(port: int, exc: OSError) -> str:
    """Why ``port`` cannot be the API's, and what to do instead."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"port {port} needs privileges; give a port above 1023"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use; stop what listens there or give another --port"
    return f"cannot listen on port {port} ({exc.strerror}); give another --port"


def _bound(port: int) -> int:
    """The port a socket could bind on 127.0.0.1 (0: any free one); OSError when it cannot."""
    with socket.socket() as sock:
        # As uvicorn binds: a port left in TIME_WAIT by an earlier demo is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        bound: int = sock.getsockname()[1]
        return bound


LOCAL_HOSTS = "127.0.0.1,localhost"
# The demo's own calls go to its API on 127.0.0.1: an http_proxy of the environment must not
# carry them (the sample clips' download still uses it).
_local = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_json(url: str, token: str, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with _local.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_healthy(demo: Demo, api: Component, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not api.alive():
            raise RuntimeError(f"the API exited:\n{api.tail()}")
        try:
            with _local.open(f"{demo.api_url}/api/v1/healthz", timeout=2) as r:
                if r.status == 200:
                    demo.api_ready = True
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not become healthy in {timeout:.0f} s:\n{api.tail()}")


# ---------------------------------------------------------------------------------------------
# Summary


def all_candidates(demo: Demo) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = ""
    while True:
        query = "limit=200" + (f"&cursor={cursor}" if cursor else "")
        page = http_json(f"{demo.api_url}/api/v1/candidates?{query}", demo.tokens["admin"])
        items += page["items"]
        cursor = page.get("next_cursor") or ""
        if not cursor or not page["items"]:
            return items


def summary_lines(items: list[dict[str, Any]]) -> list[str]:
    """A table by type and source: count, with evidence, statuses; last line ``candidates: N``."""
    rows: Counter[tuple[str, str]] = Counter()
    with_evidence: Counter[tuple[str, str]] = Counter()
    statuses: dict[tuple[str, str], Counter[str]] = {}
    for item in items:
        source = item.get("source") or {}
        key = (str(item.get("type")), str(source.get("camera_id") or source.get("sensor_id")))
        rows[key] += 1
        with_evidence[key] += bool(item.get("evidence"))
        statuses.setdefault(key, Counter())[str(item.get("status"))] += 1
    header = f"{'type':<22} {'camera / sensor':<16} {'count':>5} {'evidence':>8}  statuses"
    lines = [header, "-" * len(header)]
    for key in sorted(rows):
        states = ", ".join(f"{s} {n}" for s, n in sorted(statuses[key].items()))
        lines.append(f"{key[0]:<22} {key[1]:<16} {rows[key]:>5} {with_evidence[key]:>8}  {states}")
    lines.append(f"candidates: {len(items)}")
    return lines


# ---------------------------------------------------------------------------------------------
# The command


WORKDIR_MARKER = ".gridpatrol-demo"
# Held (flock) by the demo running in the folder, for the whole run; the clearing keeps it, so
# a second demo finds the first one's lock instead of a fresh file of its own.
WORKDIR_LOCK = ".gridpatrol-demo.lock"


def _ours_to_clear(workdir: Path) -> bool:
    """Whether the demo may empty ``workdir``: new, empty, or made by an earlier demo."""
    if not workdir.exists():
        return True
    others = [p for p in workdir.iterdir() if p.name != WORKDIR_LOCK]
    return (workdir / WORKDIR_MARKER).is_file() or not others


def _lock_workdir(workdir: Path) -> int | None:
    """The descriptor of ``workdir``'s lock, now held by this process and naming its pid;
    None after a line when a running demo holds it."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / WORKDIR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        print(f"demo: --workdir {workdir} is in use by a running demo{pid}", file=sys.stderr)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _clear(workdir: Path) -> None:
    """Empty ``workdir`` but for its lock: every demo starts from an empty database."""
    for path in workdir.iterdir():
        if path.name == WORKDIR_LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, systemd, ``timeout``) or SIGHUP (the terminal closed): stop
    in order, as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_in_order_on_signals() -> None:
    # The components run in sessions of their own, so a SIGTERM that killed only the demo
    # would leave them running; turn it into the same orderly stop as Ctrl-C instead.
    def handler(signum: int, _frame: FrameType | None) -> None:
        _ignore_stop_signals()
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _ignore_stop_signals() -> None:
    """While the components stop, a second Ctrl-C must not cut the stop short and leave the
    rest of them running."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def demo_site_text(config: Path, prefix: str = DEMO_PREFIX) -> str:
    """The site file the demo's components run on (it writes it into its work folder):
    ``config`` under the demo's own topic prefix, its file sources made absolute (found as
    ingest finds them, from the components' working directory, else beside ``config``);
    :class:`SiteConfigError` when ``config`` is no site file."""
    import yaml

    from gridpatrol.ingest.sources import source_kind
    from gridpatrol.site import load_site

    data = load_site(config).model_dump(mode="json", by_alias=True, exclude_unset=True)
    data["mqtt"] = {**data.get("mqtt", {}), "prefix": prefix}
    cwd = home()
    for camera in data.get("cameras", []):
        source = camera["source"]
        path = Path(os.path.expandvars(source)).expanduser()
        if source_kind(source) == "file" and not path.is_absolute():
            camera["source"] = str(cwd / path if (cwd / path).exists() else config.parent / path)
    header = f"# {config} as the demo runs it: topics under {prefix}/\n"
    return header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


class BrokerStartError(Exception):
    """The demo's broker did not start; the message names why, with the tail of its log."""


@contextmanager
def _broker(use_configured: bool, log_path: Path, prefix: str) -> Iterator[BrokerHandle]:
    from gridpatrol.ingest.broker import ensure_broker
    from gridpatrol.ingest.mqtt import _shown

    configured = os.environ.get("GRIDPATROL_MQTT_URL")
    try:
        handle = ensure_broker(use_configured=use_configured, log_path=log_path)
    except (RuntimeError, OSError) as exc:  # OSError: TimeoutError, or it could not be run
        raise BrokerStartError(f"{exc}\n{log_tail(log_path)}".rstrip()) from exc
    try:
        if handle.kind == "configured":
            what = "GRIDPATROL_MQTT_URL"
        else:
            what = f"{'Mosquitto' if handle.kind == 'mosquitto' else 'amqtt'} started by the demo"
        print(
            f"broker:          {_shown(handle.url)} ({what}; topics {prefix}/#, bridge "
            f"client id {bridge_client_id(prefix)})",
            flush=True,
        )
        if configured and not use_configured:
            print(
                f"                 (GRIDPATROL_MQTT_URL {_shown(configured)} is left alone: "
                "--own-broker was given)",
                flush=True,
            )
        yield handle
    finally:
        handle.stop()


def _start_components(demo: Demo) -> None:
    config = str(demo.config)
    api = demo.add(
        "api",
        ["api", "--host", "127.0.0.1", "--port", str(demo.port)],
        GRIDPATROL_DATABASE_URL=f"sqlite:///{demo.workdir / 'api.db'}",
        GRIDPATROL_EVIDENCE_DIR=str(demo.workdir / "evidence"),
        GRIDPATROL_API_TOKENS=json.dumps(
            {tok: {"role": role, "name": f"demo-{role}"} for role, tok in demo.tokens.items()}
        ),
    )
    wait_healthy(demo, api)
    demo.add(
        "bridge",
        ["bridge", "--config", config, "--client-id", bridge_client_id(demo.prefix)],
        **demo.producer_env("bridge"),
    )
    demo.add("detect", ["detect", "--config", config], **demo.producer_env("detect"))
    demo.add("ingest", ["ingest", "--config", config])
    demo.add("sensors", ["simulate-sensors", "--config", config, "--rate", "1"])


def _watch(demo: Demo, broker: BrokerHandle, duration: float | None) -> bool:
    """Run until the duration ends or a stop signal; report progress; False when one died
    (a component, or the broker the demo started)."""
    started = time.monotonic()
    next_report = started + 10
    while duration is None or time.monotonic() - started < duration:
        time.sleep(0.5)
        code = broker.exit_code()
        if code is not None:
            tail = log_tail(broker.log_path) if broker.log_path else ""
            print(
                f"broker exited unexpectedly (exit {code}):\n{tail}".rstrip(),
                file=sys.stderr,
                flush=True,
            )
            return False
        dead = [c for c in demo.components if not c.alive()]
        if dead:
            for component in dead:
                code = component.proc.returncode if component.proc else None
                print(
                    f"{component.name} exited unexpectedly (exit {code}):\n{component.tail()}",
                    file=sys.stderr,
                    flush=True,
                )
            return False
        if time.monotonic() >= next_report:
            next_report += 10
            try:
                count = len(all_candidates(demo))
            except (urllib.error.URLError, OSError, ValueError):
                continue
            elapsed = time.monotonic() - started
            print(f"[{elapsed:5.0f} s] candidates so far: {count}", flush=True)
    return True


def _graphical() -> bool:
    return sys.platform in ("darwin", "win32") or any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY")
    )


def _open_console(url: str) -> None:
    # Without a display, webbrowser falls back to a text browser (www-browser, lynx) that takes
    # over the terminal and blocks the demo until it is quit: on a headless SSH session, never.
    if _graphical():
        import webbrowser

        webbrowser.open(url)


def _remote_hint(port: int) -> str | None:
    """How to reach the console from another machine, when this one has no display: the API
    listens on 127.0.0.1 only (the demo's tokens are printed in the clear)."""
    if _graphical():
        return None
    return f"no display here: from your own machine, ssh -L {port}:127.0.0.1:{port} <this host>"


def _signal_status(exc: KeyboardInterrupt) -> int:
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


def _broker_url_usable() -> bool:
    """Whether GRIDPATROL_MQTT_URL can be a broker's URL; if not, says why, as the components
    would (one line, status 2), before anything is started or cleared."""
    from gridpatrol.ingest.mqtt import MqttConfigError, MqttSettings

    try:
        MqttSettings.from_url(os.environ["GRIDPATROL_MQTT_URL"])
    except MqttConfigError as exc:
        print(f"demo: cannot start: {exc}", file=sys.stderr)
        return False
    return True


def run_demo(args: argparse.Namespace) -> int:
    config = Path(args.config).resolve()
    workdir = Path(args.workdir).resolve()
    if workdir.exists() and not workdir.is_dir():
        print(f"demo: --workdir {workdir} is not a folder", file=sys.stderr)
        return 2
    if not _ours_to_clear(workdir):
        print(
            f"demo: --workdir {workdir} is not empty and was not made by the demo, which clears "
            "its folder at every start; give a new or empty folder",
            file=sys.stderr,
        )
        return 2
    port = api_port(args.port)
    if port is None:
        return 2
    # Decided before the broker starts: a configured one that cannot be reached gives way to
    # a private broker, where a prefix of its own does no harm.
    shared = bool(os.environ.get("GRIDPATROL_MQTT_URL")) and not args.own_broker
    if shared and not _broker_url_usable():
        return 2
    prefix = demo_prefix(workdir) if shared else DEMO_PREFIX
    # Before the clearing and the footage: a mistyped --config keeps the last run's data and
    # downloads nothing. The text the demo runs is made once the footage is in place.
    if _site_text(config, prefix) is None:
        return 2
    lock = _lock_workdir(workdir)
    if lock is None:
        return 2
    demo = Demo(workdir / "site.yaml", workdir, port, generate_tokens(), prefix=prefix)
    try:
        return _run_locked(args, demo, config)
    finally:
        os.close(lock)


def _needs_sample_footage(config: Path) -> bool:
    """Whether a camera of ``config`` plays a file of ``var/footage`` not found beside it: the
    sample clips, to be linked or downloaded first. A site of the user's own clips needs none
    (offline too)."""
    from gridpatrol.ingest.sources import source_kind
    from gridpatrol.site import SiteConfigError, load_site

    try:
        cameras = load_site(config).cameras
    except SiteConfigError:
        return False  # changed since it was checked: the site text says why, nothing fetched
    for camera in cameras:
        path = Path(os.path.expandvars(camera.source)).expanduser()
        if source_kind(camera.source) != "file" or path.is_absolute():
            continue
        if path.parts[:2] == ("var", "footage") and not (config.parent / path).exists():
            return True
    return False


def _site_text(config: Path, prefix: str) -> str | None:
    """:func:`demo_site_text`, else None after a line saying why ``config`` is no site file."""
    from gridpatrol.site import SiteConfigError

    try:
        return demo_site_text(config, prefix)
    except SiteConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return None


def _run_locked(args: argparse.Namespace, demo: Demo, config: Path) -> int:
    """:func:`run_demo` of the site file ``config`` in the demo's work folder, its lock held."""
    workdir = demo.workdir
    if _needs_sample_footage(config):
        print(f"footage: {find_footage()}", flush=True)
    # Only now: a relative source is made absolute where it exists, and on a first run the
    # footage it names exists only once find_footage has linked or downloaded it.
    site_text = _site_text(config, demo.prefix)
    if site_text is None:  # changed while the footage was downloaded; nothing cleared yet
        return 2
    _clear(workdir)
    (workdir / "logs").mkdir()
    (workdir / "state").mkdir()
    (workdir / WORKDIR_MARKER).write_text("made by gridpatrol demo; cleared at every start\n")
    demo.config.write_text(site_text, encoding="utf-8")
    _stop_in_order_on_signals()
    try:
        with _broker(not args.own_broker, workdir / "logs" / "broker.log", demo.prefix) as broker:
            return _run(demo, broker, args)
    except BrokerStartError as exc:
        print(f"demo failed: the broker did not start: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as exc:  # while the broker started: it was stopped
        return _signal_status(exc)


def _run(demo: Demo, broker: BrokerHandle, args: argparse.Namespace) -> int:
    """Start the components on ``broker``, watch them, stop them in order, print the summary."""
    workdir = demo.workdir
    interrupted: int | None = None  # the exit status of a stop by signal
    healthy = True
    items: list[dict[str, Any]] = []
    demo.private_broker = broker.kind != "configured"
    try:
        _start_components(demo)
        url = f"{demo.api_url}/review"
        print(f"review console:  {url}", flush=True)
        print(f"reviewer token:  {demo.tokens['reviewer']}", flush=True)
        print(f"platform token:  {demo.tokens['platform']}", flush=True)
        print(f"API reference:   {demo.api_url}/api/v1/docs", flush=True)
        print(f"logs:            {workdir / 'logs'}", flush=True)
        if (hint := _remote_hint(demo.port)) is not None:
            print(f"{hint}, then open {url}", flush=True)
        if not args.no_browser:
            _open_console(url)
        healthy = _watch(demo, broker, args.duration)
    except KeyboardInterrupt as exc:
        interrupted = _signal_status(exc)
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        demo.stop_all()
        return 1
    finally:
        _ignore_stop_signals()
        api = next((c for c in demo.components if c.name == "api"), None)
        for component in reversed(demo.components):
            if component is not api:
                component.stop()
        if api is not None and demo.api_ready and api.alive():
            try:
                items = all_candidates(demo)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                print(f"could not read the candidates: {exc}", file=sys.stderr)
        demo.stop_all()
    for line in summary_lines(items):
        print(line, flush=True)
    if interrupted is not None:
        return interrupted
    return 0 if healthy else 1
