"""Reliable consumption for alarm consumers: nothing is lost between the broker and the disk.

QoS 1 subscriptions on a persistent session (clean start off, a session expiry of a day by
default), so messages published while the consumer is down wait at the broker; each message is
acknowledged only after the handler returned, i.e. after the consumer's durable write, and the
acknowledgements leave in arrival order. A handler that keeps failing on one message does not
stall the stream for ever: after ``max_attempts`` the message goes to the dead-letter topic,
with the handler's last error, and is acknowledged; when the client does not take the letter,
the message is left unacknowledged (logged) and the broker sends it again after the next
reconnection. A letter over the broker's packet limit has its payload cut further to fit
(:func:`fit_dead_letter`): refused for its size, it would be refused again at every redelivery.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Sequence

from gridpatrol.ingest.messages import DEAD_LETTER_PAYLOAD_BYTES, dead_letter
from gridpatrol.ingest.mqtt import Message, MqttConnection, MqttSettings, Subscription
from gridpatrol.ingest.topics import deadletter_topic

log = logging.getLogger(__name__)

Handler = Callable[[Message], None]

# Of the handler's last error, in a dead letter: the type and the text, cut to this many
# characters (a message quoting a whole payload must not make the letter twice its size).
ERROR_CHARS = 1000
DEAD_LETTER_LOG_BYTES = 1024  # of a dead letter dropped, in its log line


class ReliableConsumer:
    def __init__(
        self,
        component_id: str,
        topic_filters: Sequence[str],
        settings: MqttSettings | None = None,
        *,
        prefix: str = "gridpatrol",
        session_expiry_s: int = 86400,
        client_id: str | None = None,
        maxsize: int = 10000,
        max_attempts: int = 3,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.conn = MqttConnection(
            component_id,
            settings,
            prefix=prefix,
            persistent=True,
            session_expiry_s=session_expiry_s,
            manual_ack=True,
            client_id=client_id,
        )
        self.subs: list[Subscription] = [
            self.conn.subscribe(f, qos=1, maxsize=maxsize) for f in topic_filters
        ]
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.handled = 0
        self.dead_lettered = 0
        self.left_for_redelivery = 0  # given up, but the dead letter refused: left for redelivery
        # Given up and acknowledged without a letter: not even one without payload would fit.
        self.dead_letters_lost = 0
        self.stop_event = threading.Event()

    def start(self, timeout: float = 10.0) -> bool:
        return self.conn.start(timeout)

    def stop(self) -> None:
        self.stop_event.set()
        self.conn.stop()

    def get(self, timeout: float = 0.5) -> Message | None:
        """The next message from any of the subscriptions (oldest first within each)."""
        for sub in self.subs:
            message = sub.get(0)
            if message is not None:
                return message
        return self.subs[0].get(timeout) if len(self.subs) == 1 else self._poll(timeout)

    def _poll(self, timeout: float) -> Message | None:
        step = 0.05
        waited = 0.0
        while waited < timeout and not self.stop_event.is_set():
            for sub in self.subs:
                message = sub.get(0)
                if message is not None:
                    return message
            self.stop_event.wait(step)
            waited += step
        return None

    def ack(self, message: Message) -> None:
        self.conn.ack(message)

    def handle(self, message: Message, handler: Handler) -> bool:
        """Run ``handler`` (the durable write) and acknowledge; True when it succeeded."""
        failure: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                handler(message)
            except Exception as exc:
                failure = exc
                log.exception(
                    "%s: handler failed on %s (attempt %d of %d)",
                    self.conn.component_id,
                    message.topic,
                    attempt,
                    self.max_attempts,
                )
                if self.stop_event.wait(self.retry_delay_s * attempt):
                    return False  # stopping: leave it unacknowledged for redelivery
                continue
            self.handled += 1
            self.conn.ack(message)
            return True
        self._give_up(message, failure)
        return False

    def _give_up(self, message: Message, failure: Exception | None) -> None:
        """Dead-letter the message, with the handler's last error, and acknowledge it.

        The letter's payload is cut to what the connection's packet limit leaves it
        (:func:`fit_dead_letter`). A letter the client does not take (its queue full, no
        client, or it failed) leaves the message unacknowledged, logged: the broker sends it
        again after the next reconnection. Later messages are still acknowledged past it. One
        that would not fit even without its payload (a limit of a few KB, a long topic) could
        never be published: the message is acknowledged without it, logged and counted.
        """
        topic = deadletter_topic(self.conn.prefix, self.conn.component_id)
        letter = dead_letter(
            "handler_failed",
            message.topic,
            message.payload,
            message.received_at,
            DEAD_LETTER_PAYLOAD_BYTES,
            error=None if failure is None else error_text(failure),
        )
        body = fit_dead_letter(letter, self.conn.max_payload(topic, 1))
        if body is None:
            log.error(
                "%s: the dead letter for %s (message id %d) is over the broker's packet limit "
                "of %d bytes even without its payload; the message is acknowledged without "
                "it: %s",
                self.conn.component_id,
                message.topic,
                message.mid,
                self.conn.max_packet_size,
                letter[:DEAD_LETTER_LOG_BYTES].decode(),
            )
            self.dead_letters_lost += 1
            self.conn.ack(message)
            return
        if not self._letter_taken(message, topic, body):
            self.left_for_redelivery += 1
            self.conn.skip(message)
            return
        self.dead_lettered += 1
        self.conn.ack(message)

    def _letter_taken(self, message: Message, topic: str, body: bytes) -> bool:
        """Queue the dead letter for ``message``; whether the client took it (logged if not)."""
        failed: Exception | None = None
        try:
            queued = self.conn.publish(topic, body, qos=1)
        except Exception as exc:
            queued, failed = False, exc
        if not queued:
            log.error(
                "%s: the dead letter for %s (message id %d) was not taken by the client (%s);"
                " left unacknowledged for redelivery after the next reconnection",
                self.conn.component_id,
                message.topic,
                message.mid,
                "it failed" if failed else "its queue full, or no client",
                exc_info=failed,
            )
        return queued

    def run(self, handler: Handler) -> None:
        """Consume until :meth:`stop` (call from the consumer's own thread)."""
        while not self.stop_event.is_set():
            message = self.get(0.5)
            if message is not None:
                self.handle(message, handler)


def fit_dead_letter(body: bytes, most: int) -> bytes | None:
    """A dead letter (the JSON of :func:`~gridpatrol.ingest.messages.dead_letter`) of at most
    ``most`` bytes: ``body`` when it fits, else with its payload cut further, to what fits,
    ``payload_bytes`` (the original size) and ``payload_truncated`` saying so. A broker drops
    a client that sends a packet over its limit, so the connection refuses one (and would
    again at every attempt). None when not even an empty payload fits, or ``body`` is no
    dead letter."""
    if len(body) <= most:
        return body
    try:
        letter = json.loads(body)
        payload = base64.b64decode(letter["payload_b64"], validate=True)
        size = int(letter.get("payload_bytes", len(payload)))
    except (ValueError, KeyError, TypeError, AttributeError):  # binascii.Error is a ValueError
        return None
    letter |= {"payload_b64": "", "payload_bytes": size, "payload_truncated": True}
    room = most - len(_compact(letter))
    if room < 0:
        return None
    # Base64 makes 4 characters of each 3 bytes, none of them escaped in JSON.
    letter["payload_b64"] = base64.b64encode(payload[: room // 4 * 3]).decode("ascii")
    return _compact(letter)


def _compact(letter: dict[str, object]) -> bytes:
    """As :func:`~gridpatrol.ingest.messages.dead_letter` writes a letter."""
    return json.dumps(letter, separators=(",", ":")).encode()


def error_text(exc: BaseException) -> str:
    """``"<Type>: <text>"`` (the type alone when the text is empty), at most
    :data:`ERROR_CHARS` characters."""
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:ERROR_CHARS]
