"""Frame consumption with validation: decoded frames out, malformed payloads dead-lettered.

Keeps only the newest frames per camera when the consumer falls behind (the subscription's
bounded queue drops the oldest and counts), takes the cameras' queues in turn so a busy camera
does not starve the others, and never stops on bad input: each rejection is
published to ``{prefix}/deadletter/{component}`` with its reason, the decoder's detail as
``error`` and the original bytes (their first :data:`DEAD_LETTER_PAYLOAD_BYTES` when there are
more, with their size; fewer when the broker's packet limit leaves the letter less room).
A camera sending garbage gets a letter and a warning line for its first
:data:`LETTERS_PER_TOPIC` rejections in each :data:`LETTER_WINDOW_S` (and all cameras together
:data:`LETTERS_PER_WINDOW`); the rest are counted exactly and said in one warning per window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gridpatrol.ingest.messages import (
    DEAD_LETTER_PAYLOAD_BYTES,
    Frame,
    MessageError,
    dead_letter,
    decode_frame,
)
from gridpatrol.ingest.mqtt import Message, MqttConnection
from gridpatrol.ingest.reliable import (
    DEAD_LETTER_LOG_BYTES,
    ERROR_CHARS,
    error_text,
    fit_dead_letter,
)
from gridpatrol.ingest.topics import deadletter_topic, frame_topic, parse_topic, wildcard

log = logging.getLogger(__name__)

# Dead letters (each with its warning line) per frame topic, and for all topics together, in
# each window. A camera publishing garbage at its frame rate, or a faulty one at thousands of
# messages a second, got a letter of up to 87 KB and a log line for every frame: 2,000 bad
# frames a second made 2,000 letters and 300 KB of log a second, and 64 KiB ones at 1,000 a
# second held 150 MB of letters in the client's queue, lost at the exit. The first few of a
# window tell what is wrong; the counts stay exact.
LETTERS_PER_TOPIC = 10  # and as many again of internal_error, each with its traceback
LETTERS_PER_WINDOW = 100
LETTER_WINDOW_S = 60.0
INTERNAL_ERROR = "internal_error"


@dataclass
class LetterLimit:
    """Which rejections get a dead letter and a warning line: in each window of ``window_s``
    (from the first rejection after the last window ended), the first ``per_topic`` on each
    topic, and ``per_window`` in all; as many again of ``internal_error`` (a bug's, logged
    with its traceback). The others are counted by reason in :attr:`suppressed`,
    and said in one warning to ``logger`` when their window ends (:meth:`tick`, or the next
    rejection), as so many ``what`` over the limit per ``topics``. Safe to share between
    threads: ingest dead-letters requests and boosts from two."""

    clock: Callable[[], float] = time.monotonic
    per_topic: int = LETTERS_PER_TOPIC
    per_window: int = LETTERS_PER_WINDOW
    window_s: float = LETTER_WINDOW_S
    what: str = "malformed frames"
    topics: str = "camera topic"
    logger: logging.Logger = log
    # Since the start, by reason.
    suppressed: Counter[str] = field(default_factory=Counter, init=False)
    _started: float | None = field(default=None, init=False)  # the current window's start
    # Only topics that got a letter: at most 2 * per_window keys, whatever ids a flood uses.
    # Keyed with whether the letter is of a bug (internal_error): a bug's letters have their
    # own allowance, else a camera's garbage, using up its topic's, kept every traceback unsaid.
    _sent: Counter[tuple[str, bool]] = field(default_factory=Counter, init=False)
    # Suppressed in the current window, by reason.
    _held: Counter[str] = field(default_factory=Counter, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def admit(self, topic: str, reason: str) -> bool:
        """Whether a rejection on ``topic`` gets its letter; counted as suppressed if not."""
        with self._lock:
            now = self.clock()
            self._tick(now)
            if self._started is None:
                self._started = now
            key = (topic, reason == INTERNAL_ERROR)
            if self._sent[key] < self.per_topic and self._kind_total(key[1]) < self.per_window:
                self._sent[key] += 1
                return True
            self._held[reason] += 1
            self.suppressed[reason] += 1
            return False

    def _kind_total(self, bug: bool) -> int:
        return sum(n for (_, of_bug), n in self._sent.items() if of_bug == bug)

    def suppressed_now(self) -> dict[str, int]:
        """A copy of :attr:`suppressed`, taken while no other thread adds to it."""
        with self._lock:
            return dict(self.suppressed)

    def tick(self, now: float | None = None) -> None:
        """End the current window when its time is up, saying what it suppressed."""
        with self._lock:
            self._tick(self.clock() if now is None else now)

    def _tick(self, now: float) -> None:
        if self._started is None or now - self._started < self.window_s:
            return
        if self._held:
            self.logger.warning(
                "%d %s in the last %.0f s were not dead-lettered nor logged one by one (over "
                "%d letters per %s, %d in all, in a window): %s",
                self._held.total(),
                self.what,
                now - self._started,
                self.per_topic,
                self.topics,
                self.per_window,
                dict(self._held),
            )
        self._started = None
        self._sent.clear()
        self._held.clear()


class FrameReceiver:
    def __init__(
        self,
        conn: MqttConnection,
        camera_ids: Sequence[str] | None = None,
        maxsize: int = 8,
        letters: LetterLimit | None = None,
    ) -> None:
        self.conn = conn
        self.letters = letters or LetterLimit()
        filters = (
            [frame_topic(conn.prefix, c) for c in camera_ids]
            if camera_ids
            else [wildcard(conn.prefix, "frame")]
        )
        # Set on every arrival on any of the subscriptions: get() waits on it.
        self._wake = threading.Event()
        self.subs = [conn.subscribe(f, qos=0, maxsize=maxsize, wake=self._wake) for f in filters]
        self._next = 0  # the subscription looked at first next time
        self.rejected: Counter[str] = Counter()  # every rejection, with a letter or not
        self.accepted = 0

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.subs)

    def get(self, timeout: float) -> Frame | None:
        """The next valid frame, waiting up to ``timeout`` s in total."""
        deadline = time.monotonic() + timeout
        while True:
            self.letters.tick()
            # Cleared before looking: an arrival after the look sets it again.
            self._wake.clear()
            if (frame := self._take()) is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0 or not self._wake.wait(left):
                return None

    def _take(self) -> Frame | None:
        """The next valid frame queued, or None: one message from each subscription in turn,
        so a camera whose queue is never empty does not keep the others' frames waiting until
        they are dropped."""
        empty = 0
        while empty < len(self.subs):
            sub = self.subs[self._next]
            self._next = (self._next + 1) % len(self.subs)
            message = sub.get(0)
            if message is None:
                empty += 1
                continue
            empty = 0
            if (frame := self._decode(message)) is not None:
                return frame
        return None

    def _decode(self, message: Message) -> Frame | None:
        match = parse_topic(self.conn.prefix, message.topic)
        if match is None or match.kind != "frame":
            # The subscription takes only …/cameras/+/frame: an id no camera can have.
            self.reject("bad_topic", message)
            return None
        try:
            frame = decode_frame(
                message.payload, topic_camera_id=match.id, received_at=message.received_at
            )
        except MessageError as exc:
            self.reject(exc.reason, message, exc.detail)
            return None
        except Exception as exc:
            # A payload the decoder did not foresee is dead-lettered too: the consumer goes on.
            # Its traceback is logged with its letter, under the same limit: one per frame of
            # a camera sending such frames was a flood.
            self.reject("internal_error", message, error_text(exc), exc)
            return None
        self.accepted += 1
        return frame

    def reject(
        self, reason: str, message: Message, error: str = "", exc: BaseException | None = None
    ) -> None:
        """Count the rejection; dead-letter and log it (with ``exc``'s traceback, if given)
        when the letter limit admits it."""
        self.rejected[reason] += 1
        if not self.letters.admit(message.topic, reason):
            return
        publish_dead_letter(self.conn, reason, message, error)
        log.warning(
            "dead-lettered a frame on %s: %s %s", message.topic, reason, error, exc_info=exc
        )


def publish_dead_letter(conn: MqttConnection, reason: str, message: Message, error: str) -> None:
    """Dead-letter ``message`` on the connection's component topic: see
    :func:`dead_letter_body` and :func:`publish_fitted`."""
    topic = deadletter_topic(conn.prefix, conn.component_id)
    body = dead_letter_body(reason, message.topic, message.payload, message.received_at, error)
    publish_fitted(conn, topic, body)


def publish_fitted(conn: MqttConnection, topic: str, body: bytes) -> bool:
    """Publish the dead letter ``body`` on ``topic`` at QoS 1, its payload cut further to what
    the connection's packet limit leaves it (:func:`fit_dead_letter`): the connection refuses
    a larger one, and under about 86 KiB (a 64 KiB payload is 87,384 bytes in base64) every
    letter of a large frame would be lost. One that does not fit even without its payload is
    logged (its first KiB) and not published. Whether the client took it."""
    most = conn.max_payload(topic, 1)
    letter = fit_dead_letter(body, most)
    if letter is None:
        log.error(
            "a dead letter is over the %d bytes the broker's packet limit leaves it on %s even "
            "without its payload; not published: %s",
            most,
            topic,
            body[:DEAD_LETTER_LOG_BYTES].decode(errors="replace"),
        )
        return False
    return conn.publish(topic, letter, qos=1)


def dead_letter_body(
    reason: str, topic: str, payload: bytes, received_at: datetime, error: str
) -> bytes:
    """The dead letter of ingest, ``watch-frames`` and ``detect``: the payload cut to its first
    :data:`DEAD_LETTER_PAYLOAD_BYTES`, and ``error``, what the reason alone does not say (many
    causes share one: ``bad_ts`` for a frame time in RFC 3339 and for one out of range), cut
    to :data:`ERROR_CHARS` and left out when empty."""
    return dead_letter(
        reason,
        topic,
        payload,
        received_at,
        DEAD_LETTER_PAYLOAD_BYTES,
        error=error[:ERROR_CHARS] or None,
    )
