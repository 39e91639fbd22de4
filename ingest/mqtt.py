"""The one owner of MQTT connections (paho-mqtt 2.x).

Every component talks to the broker through :class:`MqttConnection`: MQTT 5 first, 3.1.1 when
the broker refuses 5; a last will ``offline`` on ``{prefix}/components/{id}/status``;
reconnection with backoff and re-subscription on every connect; no retry loop on credentials
refused at the first connection, a slow one on credentials that worked before. paho's network
thread only ever appends to bounded queues (dropping the oldest and counting), so a slow
consumer can never stall keep-alives or other subscriptions.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridpatrol import proxies
from gridpatrol.ingest.topics import component_status_topic, valid_id

log = logging.getLogger(__name__)

DEFAULT_URL = "mqtt://127.0.0.1:1883"
ONLINE = b"online"
OFFLINE = b"offline"
_RC_UNSUPPORTED_PROTOCOL = 132
# amqtt neither answers nor closes on an MQTT 5 CONNECT. Past this the connection tries 3.1.1;
# a broker that answers that as slowly is slow, not refusing, and gets MQTT 5 again.
_V5_CONNACK_GRACE_S = 2.5
# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED: a matter of clocks and dates.
_CERT_DATES = frozenset({9, 10})
_TLS_PROBE_S = 5.0  # the handshake that tells why a TLS broker was not reached at the start
# What a broker URL whose user info holds / ? # is told, in the words the API URL gets.
PASSWORD_CHARS = "a password must percent-encode # ? / @ (%23 %3F %2F %40)"
_RC_AUTH = frozenset({134, 135})  # bad user name or password, not authorised (v3: 4, 5)
RECONNECT_S = (1, 30)  # backoff between reconnection attempts, doubling
# The largest packet a connection sends unless GRIDPATROL_MQTT_MAX_PACKET_SIZE says otherwise:
# the max_packet_size of samples/mosquitto.conf. A broker drops a client that sends a larger
# one (its will fires), and an MQTT 3.1.1 broker does not say its limit.
DEFAULT_MAX_PACKET_SIZE = 16 * 2**20
MQTT_MAX_PACKET_SIZE = 268435455 + 5  # the largest remaining length and its fixed header
# Backoff after the broker refused credentials it had accepted before: a password rotated on
# the broker first, an authentication backend that comes up after the broker. Slow, so an
# account lock-out policy sees few attempts.
AUTH_RETRY_S = (30, 120)
# The publications of a ``latest`` topic (a camera's frames) that may wait unwritten before the
# next is dropped. A broker that keeps up still leaves a short backlog at times: every camera's
# frames share the one socket, so a frame waits behind the others' (16 cameras of 1.5 MB frames
# at 25 fps on a local broker dropped 3-21 % when only one could wait, and had up to 3 waiting
# when a frame came, with none dropped, when any number could). A count rather than bytes: it
# bounds the memory they hold (4 frames a camera, 6 MB of 1.5 MB frames) and, while the broker
# reads, how stale they get (4 periods; a byte cap would let a small-frame camera lag seconds
# behind). After a stall the frames that waited go out first, as old as the stall.
LATEST_UNWRITTEN = 4

# Topics whose matching subscriptions are remembered (per subscription list). paho's
# topic_matches_sub builds a matcher per call, a few microseconds per subscription and message.
ROUTE_CACHE = 4096

# Brokers that refused MQTT 5 (a CONNACK saying so, or no CONNACK at all, the socket closed),
# so later connections skip the failed attempt. A CONNACK that is only late never lands here.
_V311_BROKERS: set[tuple[str, int]] = set()


class MqttConfigError(ValueError):
    """A broker URL or a component id that cannot work: the setup must be mended before a
    start can succeed (the commands exit with status 2)."""


class MqttAuthError(RuntimeError):
    """The broker refused the credentials at the first connection; retrying would only lock
    the account."""


class MqttTlsError(MqttConfigError, MqttAuthError):
    """The broker's certificate fails verification against the configured CA (or its host
    name): no retry can succeed before the setup is mended. Both a setting error and a refusal
    at the start, so every command that stops on either says it in one line, status 2."""


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE

    @classmethod
    def from_url(cls, url: str) -> MqttSettings:
        """Settings from ``mqtt://[user:password@]host[:port]``; :class:`MqttConfigError` when
        the URL cannot be a broker's: also for one with a path, query or fragment, and for a
        user info holding an unencoded ``/ ? #`` (a URL parser would end the user info there
        and take a piece of the password for the host or the port)."""
        shown = _shown(url)
        if re.search(r"[/?#]", url.partition("://")[2].rpartition("@")[0]):
            raise MqttConfigError(f"broker URL {shown!r}: {PASSWORD_CHARS}")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:  # a port that is no number, a broken [IPv6] address
            raise MqttConfigError(f"broker URL {shown!r}: {exc}") from exc
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise MqttConfigError(f"broker URL must be mqtt:// or mqtts://, got {shown!r}")
        # A lone "/" is harmless: it was always taken.
        if parts.path not in ("", "/") or "?" in url or "#" in url:
            raise MqttConfigError(
                "broker URL must be mqtt://[user:password@]host[:port] or mqtts://… with no "
                f"path, query or fragment, got {shown!r}"
            )
        # An empty host (a variable of the URL that came out empty) or port 0 was taken for
        # 127.0.0.1 or the scheme's port: a broker nobody configured got the frames, and the
        # credentials of the URL.
        if not parts.hostname:
            raise MqttConfigError(
                f"broker URL {shown!r} names no host: mqtt://[user:password@]host[:port]"
            )
        if port == 0:
            raise MqttConfigError(f"broker URL {shown!r}: port 0 is no broker's port")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @classmethod
    def from_env(cls) -> MqttSettings:
        """``GRIDPATROL_MQTT_URL`` plus the credential and TLS variables that override it;
        :class:`MqttConfigError` for a URL that cannot be a broker's and, with TLS, for a CA,
        certificate or key file that cannot be read or used (the TLS context is built here,
        not first at the connection's start)."""
        env = os.environ
        settings = cls.from_url(env.get("GRIDPATROL_MQTT_URL") or DEFAULT_URL)
        settings = replace(
            settings,
            username=env.get("GRIDPATROL_MQTT_USERNAME") or settings.username,
            password=env.get("GRIDPATROL_MQTT_PASSWORD") or settings.password,
            ca_file=env.get("GRIDPATROL_MQTT_CA") or None,
            cert_file=env.get("GRIDPATROL_MQTT_CERT") or None,
            key_file=env.get("GRIDPATROL_MQTT_KEY") or None,
            max_packet_size=_max_packet_size(env.get("GRIDPATROL_MQTT_MAX_PACKET_SIZE")),
        )
        if settings.tls:
            settings.ssl_context()
        return settings

    @property
    def url(self) -> str:
        """The URL without the password, for logs."""
        user = f"{self.username}@" if self.username else ""
        # An IPv6 address in brackets: 'mqtt://::1:1883' reads as no URL, and cannot be used
        # as GRIDPATROL_MQTT_URL.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context; :class:`MqttConfigError`, naming the file and its variable, when
        the CA file, the client certificate or its key cannot be read or used, or a key is
        given without a certificate."""
        files = (
            (self.ca_file, "CA file", "GRIDPATROL_MQTT_CA"),
            (self.cert_file, "client certificate", "GRIDPATROL_MQTT_CERT"),
            (self.key_file, "client key", "GRIDPATROL_MQTT_KEY"),
        )
        for path, what, variable in files:
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise MqttConfigError(f"TLS {what} {path!r} ({variable}): {_why(exc)}") from exc
        if self.key_file is not None and self.cert_file is None:
            raise MqttConfigError(
                f"TLS client key {self.key_file!r} (GRIDPATROL_MQTT_KEY) without a client "
                "certificate (GRIDPATROL_MQTT_CERT)"
            )
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise MqttConfigError(
                f"TLS CA file {self.ca_file!r} (GRIDPATROL_MQTT_CA): {_why(exc)}"
            ) from exc
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ValueError) as exc:
                key = "" if self.key_file is None else f" and key {self.key_file!r}"
                raise MqttConfigError(
                    f"TLS client certificate {self.cert_file!r}{key} (GRIDPATROL_MQTT_CERT, "
                    f"GRIDPATROL_MQTT_KEY): {_why(exc)}"
                ) from exc
        return context


def _max_packet_size(text: str | None) -> int:
    """``GRIDPATROL_MQTT_MAX_PACKET_SIZE`` in bytes (default 16 MiB); :class:`MqttConfigError`
    for one that is no whole number from 1024 to MQTT's own limit."""
    if not text:
        return DEFAULT_MAX_PACKET_SIZE
    size = int(text) if text.strip().isdecimal() else 0
    if not 1024 <= size <= MQTT_MAX_PACKET_SIZE:
        raise MqttConfigError(
            f"GRIDPATROL_MQTT_MAX_PACKET_SIZE must be a number of bytes from 1024 to "
            f"{MQTT_MAX_PACKET_SIZE}, got {text!r}"
        )
    return size


def publish_overhead(topic: str, qos: int, v5: bool) -> int:
    """The bytes a PUBLISH on ``topic`` adds to its payload: the fixed header (with the longest
    remaining length), the topic, the packet id of QoS 1 and 2, MQTT 5's empty properties."""
    return 1 + 4 + 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0)


def _why(exc: OSError | ValueError) -> str:
    """Why a TLS file cannot be used, for one line: an OSError's text without its number, an
    SSLError's without the OpenSSL source line."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return exc.strerror
    return re.sub(r"\s*\(_ssl\.c:\d+\)\Z", "", str(exc))


def _shown(url: str) -> str:
    """The broker URL for a message, its password masked.

    A broker URL has no path, query or fragment, so its user info runs to its last ``@``: a
    password may hold an unencoded ``/ ? #`` or ``@``. Read so even for a URL a parser
    refuses, or splits elsewhere (``mqtt://gp:12/pw@host`` is host gp, port 12 for it)."""
    scheme, sep, rest = url.partition("://")
    info, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in info:
        return proxies.masked(url)
    return f"{scheme}://{info.partition(':')[0]}:***@{host}"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    retain: bool
    received_at: datetime
    mid: int
    session: int = 0  # connection generation, so an ack never crosses a reconnect
    # The MQTT DUP flag: the broker sends this packet again (a resend of an unacknowledged one).
    dup: bool = False
    # The CONNACK of the message's connection said the broker kept the session: only then can
    # it resend what an earlier connection left unacknowledged.
    session_present: bool = False
    # Its place among the messages of its connection, in the order they arrived: consumers of
    # several subscriptions order by it, not by ``received_at``, which the wall clock stepping
    # back (NTP) would reorder.
    arrival: int = 0


class Subscription:
    """A bounded inbound queue for one topic filter; the oldest message goes when full."""

    def __init__(
        self, topic_filter: str, qos: int, maxsize: int, wake: threading.Event | None = None
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.received = 0
        self.dropped = 0
        self._queue: deque[Message] = deque(maxlen=maxsize)
        self._ready = threading.Condition()
        # Set on every arrival: lets one consumer wait for any of several subscriptions.
        self._wake = wake

    def _put(self, message: Message) -> Message | None:
        """Append; return the message pushed out when the queue was full."""
        with self._ready:
            evicted = None
            if len(self._queue) == self._queue.maxlen:
                evicted = self._queue[0]
                self.dropped += 1
            self._queue.append(message)
            self.received += 1
            self._ready.notify()
        if self._wake is not None:
            self._wake.set()
        return evicted

    def get(self, timeout: float | None = None) -> Message | None:
        """The oldest queued message, waiting up to ``timeout`` s; None when nothing came."""
        with self._ready:
            if not self._queue:
                self._ready.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def drain(self) -> list[Message]:
        with self._ready:
            items = list(self._queue)
            self._queue.clear()
            return items

    def __len__(self) -> int:
        return len(self._queue)


class MqttConnection:
    """One component's broker connection; see the module docstring."""

    def __init__(
        self,
        component_id: str,
        settings: MqttSettings | None = None,
        *,
        prefix: str = "gridpatrol",
        persistent: bool = False,
        session_expiry_s: int = 86400,
        manual_ack: bool = False,
        client_id: str | None = None,
        max_queued_messages: int = 10000,
        max_inflight_messages: int = 100,
        auth_retry_s: tuple[int, int] = AUTH_RETRY_S,
    ) -> None:
        if not valid_id(component_id):
            raise MqttConfigError(
                f"component id {component_id!r} is not an MQTT topic level: 1-64 of the letters "
                "A-Z a-z, the digits 0-9 and _ . -"
            )
        self.component_id = component_id
        self.settings = settings or MqttSettings.from_env()
        self.prefix = prefix
        self.persistent = persistent
        self.session_expiry_s = session_expiry_s
        self.manual_ack = manual_ack
        # A persistent session is found again by its client id, so it must be stable.
        default_id = f"gp-{component_id}" if persistent else f"gp-{component_id}-{_short_id()}"
        self.client_id = client_id or default_id
        self.status_topic = component_status_topic(prefix, component_id)
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.auth_retry_s = auth_retry_s
        self.protocol = self._initial_protocol()
        self.published = 0
        self.publish_dropped = 0
        self.publish_oversize = 0  # refused as larger than max_packet_size (in publish_dropped)
        self._oversize_said: set[str] = set()  # topics whose oversize publication was logged
        # Publications of ``latest`` topics (a camera's frames) that the broker does not take:
        # dropped while LATEST_UNWRITTEN of the topic's are still unwritten (in publish_dropped).
        self.publish_behind = 0
        # Topic -> the client and the paho message info of its ``latest`` publications that
        # were unwritten when last looked at, oldest first.
        self._unwritten: dict[str, list[tuple[paho.Client, paho.MQTTMessageInfo]]] = {}
        # The Maximum Packet Size of the broker's MQTT 5 CONNACK, None when it gave none.
        self._broker_max_packet: int | None = None
        self.connects = 0
        self.unrouted = 0  # messages no subscription matched (acknowledged under manual ack)
        self.auth_failed = False  # refused at the first connection: not retried
        self._auth_reason = ""  # the broker's reason for that refusal
        self.auth_refusals = 0  # refusals of credentials that had worked: retried slowly
        self._auth_backoff = False
        self._subs: list[Subscription] = []
        # The subscription list the routes were computed for, and topic -> its subscriptions.
        self._routes: tuple[list[Subscription], dict[str, tuple[Subscription, ...]]] = ([], {})
        self._hooks: list[Callable[[MqttConnection], None]] = []
        self._refusal_hooks: list[Callable[[MqttConnection, MqttAuthError], None]] = []
        self._lock = threading.Lock()
        # Serialises (un)subscribe, which snapshot threads call side by side. Never taken in a
        # paho callback: those run under paho's callback mutex, which client.subscribe may take.
        self._subs_lock = threading.Lock()
        self._session = 0
        self._arrivals = itertools.count(1)  # taken on paho's network thread alone
        self.session_present = False  # the current connection resumed the broker's session
        self._unrouted_warned = -1  # the connection whose first unrouted message was logged
        # Manual-ack messages in arrival order: mid -> [state, qos], state wait / ack / skip
        # (skip: pushed out of a full queue, left for redelivery).
        self._pending: OrderedDict[int, list[Any]] = OrderedDict()
        self._connected = threading.Event()
        # The current attempt asked for a reconnection with another protocol: _switch_to says
        # why (see _switch) and what to log.
        self._switch_wanted = threading.Event()
        self._switch_to = ("", "")
        # On 3.1.1 since MQTT 5 went unanswered, not refused: the 3.1.1 CONNACK tells which.
        self._v5_unanswered = False
        self._patient = False  # a slow broker: MQTT 5 waits a whole keep-alive for its CONNACK
        self._abandoned = False  # given up for MQTT 5 on its CONNACK: its messages come again
        self._client: paho.Client | None = None
        self._stopping = False
        self._starting = False
        self._socket_opened_at: float | None = None
        self._connack_seen = False

    # -- lifecycle --------------------------------------------------------------------------

    def _initial_protocol(self) -> MQTTProtocolVersion:
        key = (self.settings.host, self.settings.port)
        return MQTTProtocolVersion.MQTTv311 if key in _V311_BROKERS else MQTTProtocolVersion.MQTTv5

    def start(self, timeout: float = 10.0, stop: threading.Event | None = None) -> bool:
        """Connect in the background; True once connected within ``timeout``.

        False means the broker is not reachable yet: paho keeps retrying with backoff. The
        wait ends as well once ``stop`` is set (the command got SIGTERM): False, unsaid.
        Raises :class:`MqttAuthError` on refused credentials.
        """
        self._stopping = False
        self._starting = True
        stopped = stop or threading.Event()
        try:
            self._open()
            # Each change of protocol gets a fresh timeout: 5, 3.1.1 when 5 goes unanswered,
            # 5 again when 3.1.1 shows a slow broker, 3.1.1 when the broker refuses 5.
            while not self._stopping and not self._wait_first(timeout, stopped):
                if stopped.is_set():
                    break
                if not self._switch_wanted.is_set():
                    break
                self._switch()
        finally:
            with self._lock:  # a refusal seen while starting is raised here, not logged there
                self._starting = False
                refused = self.auth_failed
                # Asked for as the wait ended: nobody else will make the change.
                late = self._switch_wanted.is_set() and not self._stopping
        if late and not refused:
            threading.Thread(target=self._switch, name="mqtt-switch", daemon=True).start()
        if stopped.is_set() and not refused and not self._connected.is_set():
            return False  # stopping: no "retrying in the background", no TLS probe
        return self._result(refused)

    def _request_switch(self, why: str, said: str) -> None:
        """Ask for a reconnection with the other protocol (see _switch); after start() the
        change runs on its own thread."""
        with self._lock:
            first = not self._switch_wanted.is_set()
            if first:
                self._switch_to = (why, said)
                self._switch_wanted.set()
            background = first and not self._starting
        if background:
            threading.Thread(target=self._switch, name="mqtt-switch", daemon=True).start()

    def _switch(self) -> None:
        """Reconnect as the last attempt asked: ``refused`` (the broker refused MQTT 5: 3.1.1,
        for every later connection to it too), ``unanswered`` (no CONNACK within the grace:
        3.1.1 for this connection), ``slow`` (3.1.1 was answered as late: MQTT 5 again, with
        no grace)."""
        why, said = self._switch_to
        if why == "refused":
            _V311_BROKERS.add((self.settings.host, self.settings.port))
        self._v5_unanswered = why == "unanswered"
        self._patient = self._patient or why == "slow"
        log.warning("%s", said)
        self._close_client()
        v5 = why == "slow"
        self.protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        if not self._stopping:
            self._open()

    def _wait_first(self, timeout: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._connected.is_set() or self._switch_wanted.is_set() or self.auth_failed:
                break
            if stop.is_set():
                break
            time.sleep(0.02)
        return self._connected.is_set()

    def _result(self, refused: bool) -> bool:
        if refused:
            self._close_client()
            raise self._auth_error()
        if not self._connected.is_set():
            why = self._tls_trouble() if self.settings.tls else ""
            log.warning(
                "%s: broker %s not reachable yet%s; retrying in the background",
                self.component_id,
                self.settings.url,
                f" ({why})" if why else "",
            )
        return self._connected.is_set()

    def _tls_trouble(self) -> str:
        """Why a TLS handshake with the broker fails, "" when it succeeds or nothing answers.

        paho retries a failed handshake in silence for ever; a certificate that fails
        verification cannot do better on a retry: :class:`MqttTlsError`, the connection closed.
        """
        host, port = self.settings.host, self.settings.port
        context = self.settings.ssl_context()
        deadline = time.monotonic() + _TLS_PROBE_S  # the connect and the handshake together
        try:
            with socket.create_connection((host, port), timeout=_TLS_PROBE_S) as raw:
                raw.settimeout(max(0.01, deadline - time.monotonic()))
                with context.wrap_socket(raw, server_hostname=host):
                    return ""
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code in _CERT_DATES:
                # A clock not yet set (a device without a battery-backed clock after a power
                # cut) or a renewal running late: it may pass by itself, so retried, not fatal.
                return (
                    f"TLS: {exc.verify_message}; check this host's clock and the broker's "
                    "certificate dates"
                )
            self._close_client()
            ca = self.settings.ca_file
            unset = "a CA the system trusts (GRIDPATROL_MQTT_CA is unset)"
            trusted = f"the CA in GRIDPATROL_MQTT_CA, {ca}" if ca else unset
            raise MqttTlsError(
                f"broker {self.settings.url}: TLS certificate verify failed: "
                f"{exc.verify_message or _why(exc)}; the broker's certificate must name {host} "
                f"and be signed by {trusted}"
            ) from exc
        except ssl.SSLError as exc:
            return f"TLS: {_why(exc)}"
        except OSError:
            return ""

    def _open(self) -> None:
        self._switch_wanted.clear()
        self._abandoned = False
        self._socket_opened_at = None
        self._connack_seen = False
        client = self._make_client()
        self._client = client
        kwargs: dict[str, Any] = {}
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry_s if self.persistent else 0
            kwargs = {"clean_start": not self.persistent, "properties": props}
        client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive, **kwargs
        )
        client.loop_start()

    def _make_client(self) -> paho.Client:
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else not self.persistent,
            manual_ack=self.manual_ack,
        )
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.tls:
            client.tls_set_context(self.settings.ssl_context())
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(*RECONNECT_S)
        client.max_queued_messages_set(self.max_queued_messages)
        client.max_inflight_messages_set(self.max_inflight_messages)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, disconnect cleanly and stop the network thread."""
        client = self._client
        if client is None:
            return
        self._stopping = True
        if self._connected.is_set():
            info = client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("%s: could not publish offline before stopping", self.component_id)
        self._close_client()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def on_connect(self, hook: Callable[[MqttConnection], None]) -> None:
        """Run ``hook(connection)`` after every (re)connect, e.g. to republish retained state."""
        self._hooks.append(hook)

    def on_refused(self, hook: Callable[[MqttConnection, MqttAuthError], None]) -> None:
        """Run ``hook(connection, error)`` (on the network thread: never block) when the broker
        refuses credentials it never accepted after :meth:`start` returned: a broker that was
        not reachable at the start. The connection does not retry them; with a hook, it leaves
        the saying so to the hook."""
        self._refusal_hooks.append(hook)

    def _auth_error(self) -> MqttAuthError:
        return MqttAuthError(
            f"broker {self.settings.url} refused the credentials of {self.component_id} "
            f"({self._auth_reason})"
        )

    # -- paho callbacks (network thread: never block) ------------------------------------------

    def _on_socket_open(self, client: paho.Client, _userdata: Any, _sock: Any) -> None:
        opened = self._socket_opened_at = time.monotonic()
        if self.protocol == MQTTProtocolVersion.MQTTv5 and not self._patient:
            # amqtt 0.12 neither answers nor closes on an MQTT 5 CONNECT; paho would only
            # notice at the keep-alive timeout.
            args = (client, opened)
            timer = threading.Timer(_V5_CONNACK_GRACE_S, self._check_connack, args=args)
            timer.daemon = True
            timer.start()

    def _check_connack(self, client: paho.Client, opened: float) -> None:
        current = client is self._client and opened == self._socket_opened_at
        if current and not self._connack_seen and not self._stopping:
            self._request_switch(
                "unanswered",
                f"{self.component_id}: broker {self.settings.url} did not answer MQTT 5 within "
                f"{_V5_CONNACK_GRACE_S:g} s; trying MQTT 3.1.1",
            )

    def _on_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connack_seen = True
        code = int(getattr(reason, "value", reason))
        if code == _RC_UNSUPPORTED_PROTOCOL and self.protocol == MQTTProtocolVersion.MQTTv5:
            client.disconnect()
            self._refuse_v5()
            return
        if code in _RC_AUTH and self.connects and not self._starting:
            self._refused_again(client, reason)
            return
        if code in _RC_AUTH:
            self._refused_first(client, reason)
            return
        if code != 0:
            log.warning("%s: connection refused: %s", self.component_id, reason)
            return
        if self._v5_unanswered and self._slow_broker(client):
            return
        if self._auth_backoff:
            self._auth_backoff = False
            client.reconnect_delay_set(*RECONNECT_S)
            log.info("%s: the broker accepts the credentials again", self.component_id)
        with self._lock:
            self._session += 1
            self.session_present = bool(flags.session_present)
            self._pending.clear()
        self.connects += 1
        self._broker_max_packet = getattr(props, "MaximumPacketSize", None)
        log.info(
            "%s: connected to %s (MQTT %s, packets up to %d bytes)",
            self.component_id,
            self.settings.url,
            "5" if self.protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1",
            self.max_packet_size,
        )
        # Under the subscriptions' lock up to "connected": a subscribe() meanwhile either is
        # in the list read here or finds the connection up and subscribes itself.
        with self._subs_lock:
            subs = [(s.topic_filter, s.qos) for s in self._subs]
            if subs:
                client.subscribe(subs)
            # After the SUBSCRIBE: whoever sees "online" can count on our subscriptions.
            client.publish(self.status_topic, ONLINE, qos=1, retain=True)
            self._connected.set()
        for hook in self._hooks:
            try:
                hook(self)
            except Exception:
                log.exception("%s: connect hook failed", self.component_id)

    def _refuse_v5(self) -> None:
        self._request_switch(
            "refused",
            f"{self.component_id}: broker {self.settings.url} refuses MQTT 5; falling back to "
            "MQTT 3.1.1",
        )

    def _slow_broker(self, client: paho.Client) -> bool:
        """After MQTT 5 went unanswered: whether the 3.1.1 CONNACK came as late, from a broker
        that is slow (a loaded one, a slow authentication backend), not one refusing 5. The
        connection is then given up for MQTT 5, with no grace, before any subscription or
        ``online``: what its session delivers meanwhile is not taken, nor acknowledged, and
        comes again."""
        self._v5_unanswered = False
        waited = time.monotonic() - (self._socket_opened_at or 0.0)
        if waited < _V5_CONNACK_GRACE_S:
            return False
        self._abandoned = True
        client.disconnect()
        self._request_switch(
            "slow",
            f"{self.component_id}: broker {self.settings.url} took {waited:.1f} s to answer "
            "MQTT 3.1.1 too: slow, not refusing MQTT 5; reconnecting with MQTT 5",
        )
        return True

    def _refused_first(self, client: paho.Client, reason: Any) -> None:
        """Credentials refused before any connection: not retried. While start() runs, its
        MqttAuthError carries the reason and the command says it in one line; later, nobody
        raises: the :meth:`on_refused` hooks run (a command stops with that line), and without
        any the error is logged here."""
        with self._lock:
            self.auth_failed = True
            self._auth_reason = str(reason)
            starting = self._starting
        hooks = [] if starting else list(self._refusal_hooks)
        log.log(
            logging.DEBUG if starting or hooks else logging.ERROR,
            "%s: broker %s refused the credentials (%s); not retrying",
            self.component_id,
            self.settings.url,
            reason,
        )
        client.disconnect()
        error = self._auth_error()
        for hook in hooks:
            try:
                hook(self, error)
            except Exception:
                log.exception("%s: refusal hook failed", self.component_id)

    def _refused_again(self, client: paho.Client, reason: Any) -> None:
        """Credentials that worked were refused on a reconnect: retry, slowly, for good.

        A typo never gets this far; this is a password rotated on the broker before the
        component, or an authentication backend not up yet. Retrying in the process keeps the
        subscriptions and the queued QoS 1 publications, and mends itself when the broker does.
        """
        self.auth_refusals += 1
        low, high = self.auth_retry_s
        if not self._auth_backoff:  # only at the first refusal, or the backoff would not grow
            self._auth_backoff = True
            client.reconnect_delay_set(low, high)
        log.error(
            "%s: broker %s refused the credentials it accepted before (%s); retrying every "
            "%d-%d s until it accepts them",
            self.component_id,
            self.settings.url,
            reason,
            low,
            high,
        )

    def _on_disconnect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        # Closed on our CONNECT, or no CONNACK within a keep-alive; not our own closing.
        opened = self._socket_opened_at is not None and client is self._client
        if v5 and opened and not self._connack_seen:
            self._refuse_v5()
        if was and not self._stopping:
            log.warning(
                "%s: disconnected from %s (%s); reconnecting",
                self.component_id,
                self.settings.url,
                reason,
            )

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._abandoned:
            return
        message = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            received_at=datetime.now(UTC),
            mid=msg.mid,
            session=self._session,
            dup=bool(msg.dup),
            session_present=self.session_present,
            arrival=next(self._arrivals),
        )
        tracked = self.manual_ack and msg.qos > 0
        if tracked:
            with self._lock:
                self._pending[msg.mid] = ["wait", msg.qos]
        subs = self._route(msg.topic)
        if not subs:
            self._on_unrouted(message)
            if tracked:
                # Nobody will ever acknowledge it; unacknowledged, it would hold a slot of the
                # broker's in-flight window until the next reconnect, and be sent again then.
                self._settle(msg.mid, "ack")
            return
        for sub in subs:
            evicted = sub._put(message)
            if evicted is not None:
                self._on_evicted(sub, evicted)
            if tracked:
                return  # a message to acknowledge has exactly one consumer

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        """The subscriptions whose filter matches ``topic``, in subscription order.

        ``_subs`` is replaced, never changed, on (un)subscribe: a new list object means the
        remembered routes are stale.
        """
        subs = self._subs
        computed_for, routes = self._routes
        if computed_for is not subs:
            routes = {}
            self._routes = (subs, routes)
        found = routes.get(topic)
        if found is None:
            if len(routes) >= ROUTE_CACHE:
                routes.clear()  # ever new topics (e.g. one per sensor): stay bounded
            found = tuple(s for s in subs if paho.topic_matches_sub(s.topic_filter, topic))
            routes[topic] = found
        return found

    def _on_unrouted(self, message: Message) -> None:
        """A message no subscription matches: counted, and acknowledged by the caller.

        On a persistent session it comes from a filter the broker kept from an earlier run
        (say ``prefix/sensors/#`` where this version wants ``prefix/sensors/+/alarm``).
        """
        self.unrouted += 1
        if self.persistent and self._unrouted_warned != self._session:
            self._unrouted_warned = self._session
            log.warning(
                "%s: got %s, which none of its subscriptions wants (a filter the persistent "
                "session kept from an earlier run?); such messages are acknowledged and counted",
                self.component_id,
                message.topic,
            )

    def _on_evicted(self, sub: Subscription, evicted: Message) -> None:
        if self.manual_ack and evicted.qos > 0:
            # Left unacknowledged: the broker redelivers it after the next reconnect. It holds
            # a slot of the broker's in-flight window until then, yet never closes the window:
            # a message of this connection is pushed out only when the queue holds ``maxsize``
            # unacknowledged ones of this connection, i.e. the window is larger than the queue.
            log.error(
                "%s: queue for %s full; message %d left for redelivery",
                self.component_id,
                sub.topic_filter,
                evicted.mid,
            )
            if evicted.session == self._session:
                self._settle(evicted.mid, "skip")

    # -- API ----------------------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 0,
        maxsize: int = 1000,
        wake: threading.Event | None = None,
    ) -> Subscription:
        """A queue of the messages matching ``topic_filter``; ``wake`` is set on each arrival."""
        sub = Subscription(topic_filter, qos, maxsize, wake)
        with self._subs_lock:
            self._subs = [*self._subs, sub]
            client = self._client
            if client is not None and self._connected.is_set():
                client.subscribe(topic_filter, qos)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``; the broker subscription goes when no one else shares it."""
        # Copy on write: the network thread iterates the list without a lock. The broker call
        # stays under the lock too, or a concurrent subscribe to the same filter could be undone.
        with self._subs_lock:
            self._subs = [s for s in self._subs if s is not sub]
            client = self._client
            still = any(s.topic_filter == sub.topic_filter for s in self._subs)
            if client is not None and self._connected.is_set() and not still:
                client.unsubscribe(sub.topic_filter)

    @property
    def max_packet_size(self) -> int:
        """The largest packet this connection sends: ``settings.max_packet_size``, lowered to
        the Maximum Packet Size the broker gave in its MQTT 5 CONNACK."""
        broker = self._broker_max_packet
        mine = self.settings.max_packet_size
        return mine if broker is None else min(mine, broker)

    def max_payload(self, topic: str, qos: int) -> int:
        """The largest payload a publication on ``topic`` at ``qos`` may carry: what a caller
        that must not lose a publication (a dead letter) cuts it to before publishing, as a
        larger one is refused for good, where a refusal for a full queue is not."""
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        return self.max_packet_size - publish_overhead(topic, qos, v5)

    def _oversize(self, topic: str, payload: bytes | str, qos: int) -> bool:
        """Whether the publication would make a packet over :attr:`max_packet_size`, which the
        broker answers by dropping the connection (the will fires, every publication in flight
        is lost): then it is refused, counted, and logged once per topic."""
        size = len(payload.encode() if isinstance(payload, str) else payload)
        most = self.max_payload(topic, qos)
        if size <= most:
            return False
        self.publish_oversize += 1
        self.publish_dropped += 1
        if topic not in self._oversize_said:
            self._oversize_said.add(topic)
            log.warning(
                "%s: not publishing %d bytes on %s: over the %d a packet of at most %d bytes "
                "carries (the broker's limit, or GRIDPATROL_MQTT_MAX_PACKET_SIZE); such "
                "publications are dropped and counted, not said again for this topic",
                self.component_id,
                size,
                topic,
                most,
                self.max_packet_size,
            )
        return True

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        *,
        latest: bool = False,
    ) -> bool:
        """Queue a publication; False when it was dropped (QoS 0 while disconnected, full queue,
        over the packet limit). Whether a payload is over the limit, :meth:`max_payload` tells
        beforehand (a False that does not say which would be taken for a full queue and tried
        again for ever).

        ``latest`` (QoS 0, a camera's frames): only the newest matters, so the publication is
        dropped (counted in ``publish_behind`` too) while ``LATEST_UNWRITTEN`` of the topic's
        are still unwritten: a short backlog goes through, a stalled broker holds no more than
        that per topic. A broker that stops reading (hung, a network partition) leaves the
        connection open: without this, every frame would wait in paho's unbounded queue,
        counted as published, and the process would grow by the cameras' bitrate."""
        client = self._client
        if client is None or (qos == 0 and not self._connected.is_set()):
            self.publish_dropped += 1
            return False
        if self._oversize(topic, payload, qos):
            return False
        latest = latest and qos == 0
        if latest and len(self._still_unwritten(client, topic)) >= LATEST_UNWRITTEN:
            self.publish_behind += 1
            self.publish_dropped += 1
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) or (
            qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS
        ):
            self.publish_dropped += 1
            return False
        if latest:
            self._unwritten.setdefault(topic, []).append((client, info))
        self.published += 1
        return True

    def _still_unwritten(
        self, client: paho.Client, topic: str
    ) -> list[tuple[paho.Client, paho.MQTTMessageInfo]]:
        """The topic's ``latest`` publications on ``client`` that wait to be written; the
        others are forgotten. paho marks a QoS 0 publication lost at a reconnection (an error
        then, not waiting); one of a client since replaced is never written."""
        held = [
            (owner, info)
            for owner, info in self._unwritten.get(topic, ())
            if owner is client and not _written(info)
        ]
        self._unwritten[topic] = held
        return held

    def publish_wait(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 10.0,
    ) -> bool:
        """Publish and wait until the broker acknowledged it (QoS 1/2) or it was sent (QoS 0);
        False when it was not, or is over the packet limit."""
        client = self._client
        if client is None or self._oversize(topic, payload, qos):
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def ack(self, message: Message) -> None:
        """Acknowledge a manual-ack message once it is durably handled.

        Acknowledgements leave in the order the messages arrived, whatever order the consumer
        acknowledges them in; an ack from before a reconnect is void (the broker redelivers).
        """
        if not self.manual_ack or message.qos == 0 or message.session != self._session:
            return
        self._settle(message.mid, "ack")

    def skip(self, message: Message) -> None:
        """Never acknowledge ``message`` on this connection (the broker sends it again after
        the next reconnection), without holding back the acknowledgements of the messages
        after it: settled as a message pushed out of a full queue is."""
        if not self.manual_ack or message.qos == 0 or message.session != self._session:
            return
        self._settle(message.mid, "skip")

    def _settle(self, mid: int, state: str) -> None:
        ready: list[tuple[int, int]] = []
        with self._lock:
            entry = self._pending.get(mid)
            if entry is None:
                return
            entry[0] = state
            while self._pending:
                first_mid, (first_state, qos) = next(iter(self._pending.items()))
                if first_state == "wait":
                    break
                self._pending.popitem(last=False)
                if first_state == "ack":
                    ready.append((first_mid, qos))
        client = self._client
        if client is not None:
            for done, qos in ready:
                client.ack(done, qos)

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "publish_dropped": self.publish_dropped,
            "publish_oversize": self.publish_oversize,
            "publish_behind": self.publish_behind,
            "received": sum(s.received for s in self._subs),
            "dropped": sum(s.dropped for s in self._subs),
            "unrouted": self.unrouted,
            "connects": self.connects,
            "auth_refusals": self.auth_refusals,
        }


def _short_id() -> str:
    return uuid.uuid4().hex[:8]


def mqtt_connection(
    logger: logging.Logger, command: str, component_id: str, prefix: str
) -> MqttConnection | None:
    """The command's broker connection, not yet started; None, after one line on the command's
    ``logger``, for a malformed GRIDPATROL_MQTT_URL or a component id that is no topic level
    (exit 2: mend and restart)."""
    try:
        return MqttConnection(component_id, prefix=prefix)
    except MqttConfigError as exc:
        logger.error("%s: cannot start: %s", command, exc)
        return None


def stop_when_refused(
    logger: logging.Logger, command: str, stop: threading.Event, *conns: MqttConnection
) -> threading.Event:
    """Stop the command when the broker, not reachable at the start, later refuses the
    credentials of one of ``conns``: one line on the command's ``logger``, ``stop`` set, and
    the returned event set. The command then exits 1, not 2 as for a refusal at the start: a
    broker whose authentication backend comes up after it (a site after a power cut) refuses
    for a while, and the units restart on 1 but not on 2. At the restart the broker accepts
    the credentials or refuses them at the start (status 2: mend and restart). Call before
    the start."""
    refused = threading.Event()
    lock = threading.Lock()

    def hook(_conn: MqttConnection, error: MqttAuthError) -> None:
        with lock:  # a command's connections may be refused side by side: one line
            first = not refused.is_set()
            refused.set()
        if first:
            logger.error("%s: stopping: %s", command, error)
        stop.set()

    for conn in conns:
        conn.on_refused(hook)
    return refused


def mqtt_started(
    logger: logging.Logger,
    command: str,
    conn: MqttConnection,
    stop: threading.Event | None = None,
) -> bool:
    """Start ``conn``; False, after one line on the command's ``logger`` with the broker's
    reason, when the broker refused the credentials (exit 2: retrying would lock the account
    out, so mend and restart). The commands install their signal handlers before this: the
    start can wait for an unreachable broker, and ends its wait once ``stop`` (set by them)
    is set; the command then checks ``stop`` and starts nothing."""
    logger.info("%s: connecting to %s", command, conn.settings.url)
    try:
        conn.start(stop=stop)
    except MqttAuthError as exc:
        logger.error("%s: cannot start: %s", command, exc)
        return False
    return True


def _written(info: paho.MQTTMessageInfo) -> bool:
    """Whether paho wrote a QoS 0 publication, or will never: lost with its connection (an
    error), or never queued."""
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        return True
