"""``gridpatrol ingest`` and ``gridpatrol broker`` (light at import time)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gridpatrol.cli import stop_on_signals

if TYPE_CHECKING:
    from gridpatrol.site import Site

log = logging.getLogger(__name__)

MAX_ID = 64  # the longest topic level, see gridpatrol.ingest.topics.ID_RE
ID_HASH_CHARS = 10
BROKER_POLL_S = 1.0


def register(sub: Any) -> None:
    ingest = sub.add_parser(
        "ingest", help="publish the site's cameras (files, RTSP, HTTP snapshots) to MQTT"
    )
    ingest.add_argument("--config", required=True, help="the site file (YAML)")
    ingest.add_argument("--cameras", help="comma-separated camera ids (default: all)")
    ingest.add_argument(
        "--component-id", help="MQTT component id (default: ingest-<host>, or with the cameras)"
    )
    ingest.add_argument(
        "--progress-s", type=progress_seconds, default=10.0, help="progress line interval"
    )
    ingest.set_defaults(func=run_ingest)

    watch = sub.add_parser(
        "watch-frames",
        help="print one JSON line per valid frame; dead-letter malformed ones",
    )
    watch.add_argument("--config", required=True, help="the site file (YAML)")
    watch.add_argument("--cameras", help="comma-separated camera ids (default: all)")
    watch.add_argument(
        "--count", type=count_or_zero, default=0, help="stop after this many frames (0: never)"
    )
    watch.add_argument(
        "--timeout", type=seconds_or_zero, default=0, help="stop after this many seconds (0: never)"
    )
    watch.add_argument(
        "--component-id",
        default="watch-frames",
        help="MQTT component id, naming its status and dead-letter topics (default: watch-frames)",
    )
    watch.set_defaults(func=run_watch)

    broker = sub.add_parser(
        "broker", help="run a broker: the configured one, else mosquitto, else embedded amqtt"
    )
    broker.add_argument("--amqtt", action="store_true", help="use the embedded amqtt broker")
    broker.set_defaults(func=run_broker)


def positive_seconds(text: str) -> float:
    """An interval for argparse: a finite number above zero (an interval of 0 spins a core)."""
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


# The shortest interval between ingest's progress lines: each is one line per camera, and an
# interval of a nanosecond wrote thousands of lines a second.
MIN_PROGRESS_S = 1.0


def progress_seconds(text: str) -> float:
    """A progress interval for argparse: a :func:`positive_seconds` of at least
    :data:`MIN_PROGRESS_S`."""
    value = positive_seconds(text)
    if value < MIN_PROGRESS_S:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_PROGRESS_S:g} second, got {text!r}"
        )
    return value


def seconds_or_zero(text: str) -> float:
    """A time limit for argparse: 0 (none) or a finite number above zero."""
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"must be 0 (none) or a positive number of seconds, got {text!r}"
        )
    return value


def count_or_zero(text: str) -> int:
    """A count for argparse: 0 (none) or a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be 0 (none) or a positive whole number, got {text!r}"
        )
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _component_id(args: argparse.Namespace) -> str:
    """``ingest-<host>[-<camera>...]``, the cameras sorted: the same id (and status topic) for
    the same cameras in any order. An id that would be longer than a topic level allows keeps
    a readable head and a hash of the whole: cut short, two processes on one host whose camera
    lists differ only late would share it, and one's retained "offline" would mark the
    other's cameras offline."""
    if args.component_id:
        return str(args.component_id)
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    cameras = sorted({c for c in args.cameras.split(",") if c}) if args.cameras else []
    full = "-".join(["ingest", *filter(None, [host]), *cameras])
    if len(full) <= MAX_ID:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:ID_HASH_CHARS]
    head = full[: MAX_ID - ID_HASH_CHARS - 1].rstrip("-_.")
    return f"{head}-{digest}"


def _selected(cameras: str | None, site: Site) -> list[str] | Literal[False] | None:
    """The ids of ``--cameras`` (None: all), or False after one line when one is not a camera
    of the site file (exit 2: an id that is no topic level would otherwise end in a
    traceback, one of another site would be waited for in vain) or when it names none."""
    if cameras is None:
        return None
    wanted = [c for c in cameras.split(",") if c]
    if not wanted:
        # An empty list is a mistake, never "all": a sharded unit whose variable came out
        # empty would duplicate the others' cameras (ingest took "" for all), and "," made
        # ingest publish nothing and exit 0 (watch-frames watched every camera for it).
        log.error("--cameras %r names no camera; leave it out for all cameras", cameras)
        return False
    known = {c.id for c in site.cameras}
    unknown = sorted(set(wanted or ()) - known)
    if unknown:
        log.error("unknown camera id(s) %s; the site file has %s", unknown, sorted(known))
        return False
    return wanted


def run_ingest(args: argparse.Namespace) -> int:
    from gridpatrol.ingest.mqtt import mqtt_connection, mqtt_started, stop_when_refused
    from gridpatrol.ingest.service import IngestService
    from gridpatrol.ingest.sources import source_kind
    from gridpatrol.site import SiteConfigError, load_site

    try:
        site = load_site(args.config)
    except SiteConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    wanted = _selected(args.cameras, site)
    if wanted is False:
        return 2
    cameras = [c for c in site.cameras if wanted is None or c.id in wanted]
    if not cameras:  # "the source of [] is mqtt" was said of a site without cameras
        log.error("ingest: no camera to publish: the site has no camera")
        return 2
    if all(source_kind(c.source) == "mqtt" for c in cameras):
        # Nothing to publish: it exited 0 at once, and a unit that restarts it on any exit
        # but status 2 started it again every few seconds for ever.
        log.error(
            "ingest: no camera to publish: the source of %s is mqtt (a camera that publishes "
            "its own frames)",
            [c.id for c in cameras],
        )
        return 2
    conn = mqtt_connection(log, "ingest", _component_id(args), site.mqtt.prefix)
    if conn is None:
        return 2
    service = IngestService(
        site, conn, cameras, base_dir=Path(args.config).resolve().parent, progress_s=args.progress_s
    )
    # Before the start, which waits up to 10 s for an unreachable broker: a signal meanwhile
    # still ends the run in order.
    stop_on_signals(service.stop_event)
    refused = stop_when_refused(log, "ingest", service.stop_event, conn)
    if not mqtt_started(log, "ingest", conn, service.stop_event):
        return 2
    try:
        # Stopped while the start waited for the broker: no camera starts after the signal.
        if not service.stop_event.is_set():
            service.start()
            service.wait()
    finally:
        service.stop()
        conn.stop()
    # Refused after a late start, status 1: the unit restarts, and the broker (its
    # authentication backend up by then, after a power cut) accepts the credentials, or
    # refuses them at the start, status 2 (see stop_when_refused).
    return 1 if refused.is_set() else 0


def run_watch(args: argparse.Namespace) -> int:
    import json
    import time

    from gridpatrol.ingest.mqtt import mqtt_connection, mqtt_started, stop_when_refused
    from gridpatrol.ingest.receiver import FrameReceiver
    from gridpatrol.site import SiteConfigError, load_site

    try:
        site = load_site(args.config)
    except SiteConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    cameras = _selected(args.cameras, site)
    if cameras is False:
        return 2
    conn = mqtt_connection(log, "watch-frames", args.component_id, site.mqtt.prefix)
    if conn is None:
        return 2
    receiver = FrameReceiver(conn, cameras, maxsize=100)
    stop = threading.Event()
    stop_on_signals(stop)
    refused = stop_when_refused(log, "watch-frames", stop, conn)
    if not mqtt_started(log, "watch-frames", conn, stop):
        return 2
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")
    seen = 0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if args.count and seen >= args.count:
                break
            frame = receiver.get(0.2)
            if frame is None:
                continue
            seen += 1
            line = {**frame.header.to_json(), "bytes": len(frame.image)}
            print(json.dumps(line), flush=True)
    finally:
        conn.stop()
    log.info(
        "%d frames, %d dropped, rejected %s, of them not dead-lettered (over the limit) %s",
        seen,
        receiver.dropped,
        dict(receiver.rejected),
        dict(receiver.letters.suppressed),
    )
    return 1 if refused.is_set() else 0  # refused after a late start: as ingest


def run_broker(args: argparse.Namespace) -> int:
    from gridpatrol.ingest.broker import ensure_broker
    from gridpatrol.ingest.mqtt import MqttConfigError, _shown

    # Before the start: a SIGTERM while the broker starts is then heard once it listens, and
    # the broker stopped with the command instead of left running in a session of its own.
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        handle = ensure_broker(use_configured=not args.amqtt, use_mosquitto=not args.amqtt)
    except MqttConfigError as exc:  # a GRIDPATROL_MQTT_URL to mend: as the other commands
        log.error("broker: cannot start: %s", exc)
        return 2
    except (RuntimeError, OSError) as exc:  # OSError: TimeoutError, or it could not be run
        log.error("broker: cannot start: %s", exc)
        return 1
    # A configured broker's URL may carry its password: the terminal and its logs must not.
    print(f"GRIDPATROL_MQTT_URL={_shown(handle.url)}  ({handle.kind})", flush=True)
    try:
        # Serving a dead broker's URL until the next SIGTERM, then exiting 0, would keep a
        # supervisor from restarting it: its end is this command's failure.
        while not stop.wait(BROKER_POLL_S):
            code = handle.exit_code()
            if code is not None and handle.proc is not None:
                log.error(
                    "broker: %s (pid %d) %s; stopping",
                    handle.kind,
                    handle.proc.pid,
                    _exit_text(code),
                )
                return 1
    finally:
        handle.stop()
    return 0


def _exit_text(code: int) -> str:
    """A Popen return code in words: a negative one is the signal that ended the process."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
