"""``gridpatrol bridge`` and ``gridpatrol simulate-sensors``.

Light at import time: everything heavy is imported inside the command functions.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridpatrol.cli import stop_on_signals
from gridpatrol.ingest.cli import positive_seconds

if TYPE_CHECKING:
    from gridpatrol.api.client import Outbox
    from gridpatrol.ingest.mqtt import MqttConnection

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    bridge: argparse.ArgumentParser = sub.add_parser(
        "bridge",
        help="turn field-sensor alarms into candidate cases",
        description="Environment: GRIDPATROL_MQTT_URL, GRIDPATROL_API_URL, GRIDPATROL_API_TOKEN, "
        "GRIDPATROL_STATE_DIR (default var/state; the state database is bridge.db there).",
    )
    bridge.add_argument("--config", required=True, help="the site YAML file")
    bridge.add_argument(
        "--client-id", default=None, help="MQTT client id of the persistent session"
    )
    bridge.add_argument(
        "--progress-s", type=positive_seconds, default=5.0, help="seconds between progress lines"
    )
    bridge.add_argument(
        "--snapshot-max-age-s",
        type=positive_seconds,
        default=None,
        help="seconds (default 120): the oldest newest-frame used when a camera does not"
        " answer a snapshot request, and the oldest frame a reply may carry, its time"
        " corrected by the camera's clock offset seen on its frames (without streamed frames,"
        " 300 s more are allowed); an older reply is taken for no reply",
    )
    bridge.set_defaults(func=run_bridge)

    sim: argparse.ArgumentParser = sub.add_parser(
        "simulate-sensors", help="publish realistic simulated sensor traffic"
    )
    sim.add_argument("--config", required=True, help="the site YAML file")
    sim.add_argument(
        "--rate", type=positive_rate, required=True, help="messages per second in total"
    )
    sim.add_argument(
        "--duration", type=positive_seconds, default=None, help="seconds (default: forever)"
    )
    sim.add_argument(
        "--seed",
        type=int,
        default=1,
        help="whole number seeding the random values, tilts and drop-outs (default 1)",
    )
    sim.set_defaults(func=run_simulate)


def positive_rate(text: str) -> float:
    """A rate for argparse: a finite number above zero (NaN or infinity would publish flat
    out)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of messages per second, got {text!r}"
        )
    return value


def _relay_stop(stop: threading.Event, action: Callable[[], None]) -> None:
    stop.wait()
    action()


def default_client_id(prefix: str) -> str:
    """Stable per prefix, so the persistent session is found again after a restart, and
    another for every prefix, so two bridges never take over each other's session.

    A prefix without ``-`` keeps the id it always had, each ``/`` as ``-`` (``city/dn``:
    ``gp-alarm_bridge-city-dn``). A prefix with ``-`` would share it with one that has a ``/``
    there, so its id starts ``gp-alarm_bridge.``, which no prefix without ``-`` gives, followed
    by the prefix with each ``_`` doubled and each ``/`` as ``_-`` (``city-dn``:
    ``gp-alarm_bridge.city-dn``; ``city-dn/a_b``: ``gp-alarm_bridge.city-dn_-a__b``), which
    no other prefix gives.
    """
    if prefix == "gridpatrol":
        return "gp-alarm_bridge"
    if "-" not in prefix:
        return "gp-alarm_bridge-" + prefix.replace("/", "-")
    return "gp-alarm_bridge." + prefix.replace("_", "__").replace("/", "_-")


def run_bridge(args: argparse.Namespace) -> int:
    from gridpatrol.alarm_bridge.worker import COMPONENT, Bridge
    from gridpatrol.api.client import ApiClient, Outbox, OutboxBusy
    from gridpatrol.ingest.mqtt import (
        MqttAuthError,
        MqttConfigError,
        MqttConnection,
        MqttSettings,
        mqtt_started,
        stop_when_refused,
    )
    from gridpatrol.site import SiteConfigError, load_site

    try:
        site = load_site(args.config)
        settings = MqttSettings.from_env()  # a malformed broker URL: say so, no traceback
    except (SiteConfigError, MqttConfigError) as exc:
        log.error("%s", exc)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    prefix = site.mqtt.prefix
    state_dir = Path(os.environ.get("GRIDPATROL_STATE_DIR") or "var/state")
    try:
        client = ApiClient.from_env()
    except RuntimeError as exc:  # no producer token: say so instead of a traceback
        log.error("%s", exc)
        return 2
    mqtt = MqttConnection(
        COMPONENT,
        settings,
        prefix=prefix,
        persistent=True,
        manual_ack=True,
        client_id=args.client_id or default_client_id(prefix),
    )
    media = MqttConnection(f"{COMPONENT}-media", settings, prefix=prefix)
    state = state_dir / "bridge.db"
    try:
        outbox = Outbox(
            state,
            client,
            component=COMPONENT,
            busy_hint="another bridge runs on it: give each bridge its own GRIDPATROL_STATE_DIR",
        )
        outbox.claim()  # one bridge per state directory
        bridge = Bridge(
            site,
            outbox,
            mqtt,
            media,
            progress_s=args.progress_s,
            fallback_max_age_s=args.snapshot_max_age_s,
        )
    except OutboxBusy as exc:
        log.error("%s", exc)
        return 2
    except (OSError, sqlite3.Error) as exc:  # a directory it cannot write, a damaged file
        log.error("bridge: cannot start: the state database %s: %s", state, exc)
        return 2
    stop = threading.Event()
    stop_on_signals(stop)
    threading.Thread(target=_relay_stop, args=(stop, bridge.stop), daemon=True).start()
    refused = stop_when_refused(log, "bridge", stop, mqtt, media)
    if not mqtt_started(log, "bridge", mqtt, stop):
        mqtt.stop()
        outbox.stop()
        return 2
    if stop.is_set():
        # Stopped while the start waited for the broker: the media connection and the bridge
        # do not start after the signal.
        return _stopped_at_start(mqtt, outbox, refused)
    # Whether the session connection's start found the broker. If not (it timed out), a broker
    # that came up since may refuse the media connection as it starts, before the session
    # connection's backoff brings it back: a refusal after a start that found no broker too.
    first_up = mqtt.connected
    log.info("bridge: connecting to %s", media.settings.url)
    try:
        media.start(stop=stop)
    except MqttAuthError as exc:
        # Stopped first: once its network thread has ended, the session connection's refusal
        # hook either said it already (`stopping`) or never will, so one line in all.
        mqtt.stop()
        said = refused.is_set()
        refused.set()
        # Refused at a start that found the broker: 2 (mend and restart); after a start that
        # did not, 1 (the unit restarts: an authentication backend up after the broker).
        late = said or not first_up
        if not said:
            log.error("bridge: %s: %s", "stopping" if late else "cannot start", exc)
        outbox.stop()
        return 1 if late else 2
    if stop.is_set():
        # Stopped while the media connection's start waited for a broker the session
        # connection's start did not find either: the bridge does not start after the signal.
        media.stop()
        return _stopped_at_start(mqtt, outbox, refused)
    outbox.start()
    log.info("bridge: %d sensors, state %s, broker %s", len(site.sensors), state, mqtt.settings.url)
    try:
        bridge.run()
    except sqlite3.Error as exc:
        # The database, not a message (a full disk): what was not acknowledged comes again
        # after the restart.
        log.error("bridge: stopping: the state database %s failed: %s", state, exc)
        return 1
    finally:
        media.stop()
        mqtt.stop()
        outbox.stop()
    log.info("bridge: stopped (outbox depth %d)", outbox.depth())
    # Refused after a start that found no broker: 1, so the unit restarts (an authentication
    # backend up after the broker); credentials refused at that start exit 2.
    return 1 if refused.is_set() else 0


def _stopped_at_start(mqtt: MqttConnection, outbox: Outbox, refused: threading.Event) -> int:
    """The bridge stopped (a signal, or credentials refused by a broker not reachable at the
    start) before its work started: the closing line, and its status."""
    mqtt.stop()
    outbox.stop()
    log.info("bridge: stopped (outbox depth %d)", outbox.depth())
    return 1 if refused.is_set() else 0


# How long simulate-sensors waits at exit for the broker to acknowledge what it sent.
FINAL_ACK_TIMEOUT_S = 10.0


def run_simulate(args: argparse.Namespace) -> int:
    from gridpatrol.alarm_bridge.simulate import simulated_sensors
    from gridpatrol.ingest.mqtt import mqtt_connection, mqtt_started, stop_when_refused
    from gridpatrol.site import SiteConfigError, load_site

    try:
        site = load_site(args.config)
    except SiteConfigError as exc:
        log.error("%s", exc)
        return 2
    if not site.sensors:
        log.error("nothing to simulate: the site has no sensors")
        return 2
    prefix = site.mqtt.prefix
    sensors = simulated_sensors(site.sensors, prefix, seed=args.seed)
    conn = mqtt_connection(log, "simulate-sensors", "simulate-sensors", prefix)
    if conn is None:
        return 2
    # Before the start, which waits up to 10 s for an unreachable broker: a signal meanwhile
    # still ends the run in order, with its summary.
    stop = threading.Event()
    stop_on_signals(stop)
    refused = stop_when_refused(log, "simulate-sensors", stop, conn)
    if not mqtt_started(log, "simulate-sensors", conn, stop):
        return 2
    start = time.monotonic()
    sent = 0
    tick = 0
    silent = 0  # sensors asked in a row that were offline
    # The schedule: message n after this is due at paced_from + (n - paced_sent) / rate.
    paced_from, paced_sent = start, 0
    last_report = start
    try:
        while not stop.is_set():
            now = time.monotonic()
            if args.duration is not None and now - start >= args.duration:
                break
            due = paced_from + (sent - paced_sent) / args.rate
            if due > now:
                stop.wait(min(due - now, 0.5))
                continue
            sim = sensors[tick % len(sensors)]
            tick += 1
            pub = sim.next_message(time.time())
            if pub is None:  # offline: the next sensor has the turn
                silent += 1
                if silent >= len(sensors):
                    # Every sensor is offline: ask again a turn later, and the schedule starts
                    # there, so that the messages not sent meanwhile do not come in a burst.
                    silent = 0
                    paced_from, paced_sent = now + 1 / args.rate, sent
                continue
            silent = 0
            conn.publish(pub.topic, pub.payload, qos=1, retain=pub.retain)
            sent += 1
            if now - last_report >= 5.0:
                log.info("simulate-sensors: %d messages, %.1f/s", sent, sent / (now - start))
                last_report = now
    finally:
        # Refused: the refusal said it, and nothing more will be taken. Nothing sent and no
        # connection: nothing is held, so nothing to wait for.
        acknowledged = refused.is_set() or (sent == 0 and not conn.connected)
        if not acknowledged:
            # The signal that ended the run is spent: one during the wait ends the wait.
            stop.clear()
            acknowledged = _final_ack(conn, stop)
        reached = conn.connects > 0
        if not acknowledged and reached:
            log.warning(
                "simulate-sensors: the broker did not acknowledge the last messages %s; some "
                "of them may not have arrived",
                "before the wait was ended"
                if stop.is_set()
                else f"within {FINAL_ACK_TIMEOUT_S:.0f} s",
            )
        conn.stop()
    if not reached and sent and not refused.is_set():
        # Held in the client's memory only, lost with the process: none of them was sent.
        log.error(
            "simulate-sensors: the broker %s was never reached; none of the %d messages was sent",
            conn.settings.url,
            sent,
        )
        return 1
    log.info("simulate-sensors: %d messages in %.1f s", sent, time.monotonic() - start)
    return 1 if refused.is_set() else 0  # refused after the start: the unit restarts


def _final_ack(conn: MqttConnection, stop: threading.Event) -> bool:
    """Whether the broker acknowledged everything published, waiting up to
    :data:`FINAL_ACK_TIMEOUT_S` (below the demo's stop timeout, so a lost broker cannot hold
    it) for a connection that is down to come back: QoS 1 publications leave in order, so once
    a last one is acknowledged all earlier are. Without the connection the publication fails
    at once, and the messages held for a broker coming back were dropped at once. ``stop``
    set (a signal) ends the wait for the connection."""
    deadline = time.monotonic() + FINAL_ACK_TIMEOUT_S
    if not conn.connected:
        log.info(
            "simulate-sensors: waiting up to %.0f s for the broker %s to take the messages "
            "held (Ctrl-C ends the wait)",
            FINAL_ACK_TIMEOUT_S,
            conn.settings.url,
        )
    while not conn.wait_connected(0.1):
        if stop.is_set():
            log.info("simulate-sensors: stopped waiting for the broker")
            return False
        if time.monotonic() >= deadline:
            return False
    left = max(0.0, deadline - time.monotonic())
    return conn.publish_wait(conn.status_topic, b"online", qos=1, retain=True, timeout=left)
