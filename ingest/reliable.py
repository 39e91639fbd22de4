"""Reliable consumption for alarm consumers: nothing is lost between the broker and the disk.

QoS 1 subscriptions on a persistent session (clean start off, a session expiry of a day by
default), so messages published while the consumer is down wait at the broker; each message is
acknowledged only after the handler returned, i.e. after the consumer's durable write, and the
acknowledgements leave in arrival order. A handler that keeps failing on one message does not
stall the stream for ever: after ``max_attempts`` the message goes to the dead-letter topic,
with the handler's last error, and is acknowledged; when the client does not take the letter,
the message is left unacknowledged (logged) and the broker sends it again after the next
reconnection.
"""

from __future__ import annotations

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

        A letter the client does not take (its queue full, no client, or it failed) leaves
        the message unacknowledged, logged: the broker sends it again after the next
        reconnection. Later messages are still acknowledged past it.
        """
        body = dead_letter(
            "handler_failed",
            message.topic,
            message.payload,
            message.received_at,
            DEAD_LETTER_PAYLOAD_BYTES,
            error=None if failure is None else error_text(failure),
        )
        if not self._letter_taken(message, body):
            self.left_for_redelivery += 1
            self.conn.skip(message)
            return
        self.dead_lettered += 1
        self.conn.ack(message)

    def _letter_taken(self, message: Message, body: bytes) -> bool:
        """Queue the dead letter for ``message``; whether the client took it (logged if not)."""
        topic = deadletter_topic(self.conn.prefix, self.conn.component_id)
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


def error_text(exc: BaseException) -> str:
    """``"<Type>: <text>"`` (the type alone when the text is empty), at most
    :data:`ERROR_CHARS` characters."""
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:ERROR_CHARS]
