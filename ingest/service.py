"""The ingest process: camera publishers, the patrol loop and snapshot answers on one connection."""

from __future__ import annotations

import json
import logging
import math
import queue
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from gridpatrol.ingest.messages import Frame, MessageError
from gridpatrol.ingest.mqtt import Message, MqttConnection
from gridpatrol.ingest.patrol import PatrolScheduler, patrol_overload
from gridpatrol.ingest.receiver import LetterLimit, publish_dead_letter
from gridpatrol.ingest.reliable import ERROR_CHARS, error_text
from gridpatrol.ingest.snapshot import encode_reply, parse_request
from gridpatrol.ingest.sources import (
    NO_FRAME,
    CameraOutput,
    CameraPublisher,
    grab_frame,
    redact,
    source_kind,
)
from gridpatrol.ingest.topics import parse_topic, snapshot_topic, wildcard
from gridpatrol.site import Camera, Site

log = logging.getLogger(__name__)

DEFAULT_BOOST = 4.0
DEFAULT_BOOST_S = 600.0
# A boost beyond these would hand one camera nearly the whole patrol budget, or for days.
MAX_BOOST = 16.0
MAX_BOOST_S = 86400.0
# The oldest newest-frame a snapshot request is answered with when its grab gets no frame,
# counted back from the request's arrival (a grab can take tens of seconds, with its queue). A
# requester takes a reply for a fresh picture (the alarm bridge puts it on a new alarm): a
# camera dead for hours must not answer with its last one. The bridge's own fallback to the
# newest frame it saw stops at the same age by default; its --snapshot-max-age-s does not
# change this one.
SNAPSHOT_FALLBACK_MAX_AGE_S = 120.0
# Snapshot grabs under way at once; the others wait for a free thread.
SNAPSHOT_THREADS = 2
# Topics no camera can have whose retained request or boost a process dead-letters once:
# retained ones on further such topics (ever new ids) are only counted, so the set is bounded.
RETAINED_BAD_TOPICS = 256


def parse_boost(payload: bytes) -> tuple[float, float]:
    """``{"factor", "duration_s"}`` (both optional: ``{}`` asks for the defaults) →
    (factor, duration_s); a payload out of range raises :class:`MessageError` ``bad_boost``. A
    NaN would make the patrol's virtual time NaN, and every camera's order with it. An empty
    payload is no boost (it is not JSON): the service ignores it before, as a cleared one."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MessageError("bad_boost", "not JSON") from exc
    if not isinstance(body, dict):
        raise MessageError("bad_boost", "expected a JSON object")
    factor = _boost_number(body, "factor", DEFAULT_BOOST)
    duration = _boost_number(body, "duration_s", DEFAULT_BOOST_S)
    if not 1 <= factor <= MAX_BOOST:
        raise MessageError("bad_boost", f"factor {factor:g} is not within 1-{MAX_BOOST:g}")
    if not 0 < duration <= MAX_BOOST_S:
        raise MessageError("bad_boost", f"duration_s {duration:g} is not within 0-{MAX_BOOST_S:g}")
    return factor, duration


def _boost_number(body: dict[str, object], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError("bad_boost", f"{key} is not a number: {str(value)[:40]!r}")
    try:
        number = float(value)
    except OverflowError as exc:  # an integer of hundreds of digits
        raise MessageError("bad_boost", f"{key} is out of range") from exc
    if not math.isfinite(number):
        raise MessageError("bad_boost", f"{key} is not finite")
    return number


def retained_bad_topic_error(what: str, topic: str) -> str:
    """The ``error`` of the letter of a retained ``what`` on ``topic``, one no camera can have:
    that it is retained, and the command that clears it, the topic quoted for a POSIX shell
    (a quote or a space in it is an id no camera can have, so a common case). A command that
    would be cut at ERROR_CHARS, as the letter's error is, is left out: a cut one would run
    with the topic's start, or not at all."""
    said = (
        f"a retained {what}, handed over again at every connection and dead-lettered only this "
        "once; an empty retained message on its topic clears it"
    )
    command = f": mosquitto_pub -r -n -t {shlex.quote(topic)}"
    if len(said) + len(command) <= ERROR_CHARS:
        return said + command
    return said + " (mosquitto_pub -r -n -t with the letter's topic, too long to quote here)"


class IngestService:
    """Publishes every camera of ``cameras`` whose source is not ``mqtt``."""

    def __init__(
        self,
        site: Site,
        conn: MqttConnection,
        cameras: Sequence[Camera],
        *,
        base_dir: Path | None = None,
        progress_s: float = 10.0,
        letters: LetterLimit | None = None,
    ) -> None:
        self.site = site
        self.conn = conn
        self.base_dir = base_dir
        self.progress_s = progress_s
        self.stop_event = threading.Event()
        served = [c for c in cameras if source_kind(c.source) != "mqtt"]
        self.outputs = {c.id: CameraOutput(c, conn) for c in served}
        self.continuous = [c for c in served if not c.is_patrol]
        self.patrol = [c for c in served if c.is_patrol]
        self.scheduler = PatrolScheduler(site.patrol.max_fps)
        for cam in self.patrol:
            self.scheduler.add(cam.id, cam.interval_s or 60.0, cam.weight)
        self._sched_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Cameras whose waiting requests want a grab. Daemon threads of ours take them, not a
        # concurrent.futures pool: the interpreter joins a pool's threads at its exit, and a
        # grab's open waits for OpenCV's lock behind every other open of the process (10 s for
        # each camera that does not answer), which would hold the exit up for minutes.
        self._grabs: queue.SimpleQueue[str] = queue.SimpleQueue()
        # Requests waiting for a camera's grab under way, with when each arrived: a burst of
        # them takes one grab, not one each (opening a dead camera can take seconds).
        self._waiting: dict[str, list[tuple[str, datetime]]] = {}
        self._waiting_lock = threading.Lock()
        # Continuous cameras whose last snapshot grab got no frame: warned of once a stretch. A
        # stretch ends when a grab gets a frame or a request is answered from a fresh stream
        # frame (then no grab is made, and the next outage must warn again).
        self._grab_failing: set[str] = set()
        self.bad_requests = 0  # every one, with a letter or not
        self.replies_refused = 0  # snapshot replies the connection did not take
        self.rejected: Counter[str] = Counter()  # the same, by reason
        # A client sending garbage requests or boosts at thousands a second got a letter and a
        # warning line each: as watch-frames, a few per topic and window, the others counted.
        # ``letters`` is another limit: a test's, with a clock of its own to end a window.
        self.letters = letters or LetterLimit(
            what="malformed requests and boosts", topics="topic", logger=log
        )
        # The request and the patrol loops reject. Held around the counts and the limit's
        # admit together (always taken before the limit's own lock), so that the progress line
        # never reads a rejection counted in one figure and not yet in another.
        self._rejected_lock = threading.Lock()
        # Retained requests and boosts of this process's cameras, by topic: commands left on
        # the broker, which hands them over at every subscription (each start and
        # reconnection); ignored, said once a topic. Read and written under _rejected_lock.
        self.stale: Counter[str] = Counter()
        self._cleared_said: set[str] = set()  # topics whose empty message was logged
        # Topics no camera can have whose retained message was dead-lettered: the broker hands
        # it over again at every subscription, and a letter and a warning at each were noise.
        # Only those whose letter the limit admitted (one refused must get its letter at a
        # later hand-over), till an empty message clears the topic. Under _rejected_lock, as
        # stale_bad: the hand-overs not dead-lettered.
        self._bad_retained: set[str] = set()
        self.stale_bad: int = 0
        self._requests = conn.subscribe(
            wildcard(conn.prefix, "snapshot_request"), qos=1, maxsize=100
        )
        self._boosts = conn.subscribe(wildcard(conn.prefix, "patrol_boost"), qos=1, maxsize=100)
        conn.on_connect(self._republish_status)

    def start(self) -> None:
        for cam in self.continuous:
            publisher = CameraPublisher(self.outputs[cam.id], self.stop_event, self.base_dir)
            self._threads.append(publisher)
        if self.patrol:
            self._threads.append(threading.Thread(target=self._patrol_loop, name="patrol"))
        self._threads.append(threading.Thread(target=self._request_loop, name="snapshot-requests"))
        for number in range(SNAPSHOT_THREADS):
            self._threads.append(
                threading.Thread(target=self._grab_loop, name=f"snapshot_{number}")
            )
        self._threads.append(threading.Thread(target=self._progress_loop, name="progress"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()
        if not self.outputs:
            log.warning("ingest: no camera to publish (every selected source is mqtt)")
        log.info(
            "ingest: %d continuous and %d patrol camera(s) sharing %g fps",
            len(self.continuous),
            len(self.patrol),
            self.site.patrol.max_fps,
        )
        for line in patrol_overload(self.patrol, self.site.patrol.max_fps):
            log.warning("ingest: %s", line)

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        # Past the deadline the threads left (in an open, which no stop interrupts) are
        # daemons: the process exits without them.
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        for output in self.outputs.values():
            output.close()  # grabs still under way (snapshots, a stuck source) publish nothing
        self.log_progress()

    def wait(self) -> None:
        """Block until every continuous camera has ended (non-looping files) or stop()."""
        while not self.stop_event.wait(0.5):
            live = [t for t in self._threads if isinstance(t, CameraPublisher) and t.is_alive()]
            if not live and not self.patrol:
                return

    def boost(
        self, camera_id: str, factor: float = DEFAULT_BOOST, duration_s: float = DEFAULT_BOOST_S
    ) -> None:
        """Visit a patrol camera more often for a while (a violation is active there)."""
        with self._sched_lock:
            self.scheduler.boost(camera_id, time.monotonic(), factor, duration_s)
        log.info("camera %s: patrol boosted x%g for %g s", camera_id, factor, duration_s)

    # -- loops ----------------------------------------------------------------------------------

    def _patrol_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._patrol_step()
            except Exception:
                # A failure the checks did not foresee must not end the patrol of every camera.
                log.exception("patrol: a step failed; going on in 1 s")
                self.stop_event.wait(1.0)

    def _patrol_step(self) -> None:
        self._apply_boosts()
        with self._sched_lock:
            decision = self.scheduler.next(time.monotonic())
        if decision.camera_id is None:
            self.stop_event.wait(min(decision.wait_s, 0.5))
            return
        self._visit(decision.camera_id)

    def _visit(self, camera_id: str) -> Frame | None:
        """A patrol visit: its outcome schedules the next and sets the camera's status. It
        succeeds only with a frame published: one that cannot be made to fit the broker's
        packet limit reaches nobody, so the camera is failing as much as one that gives none
        (and is tried less often rather than decoded and re-encoded at every interval)."""
        output = self.outputs[camera_id]
        grabbed = self._grab_once(output)
        if self.stop_event.is_set():
            return None  # stopping: nothing is said nor published after the shutdown began
        frame = None if isinstance(grabbed, str) else output.publish(*grabbed)
        if frame is None:
            source = redact(output.camera.source)
            self._visit_failed(
                output,
                f"got no frame from {source} ({grabbed})"
                if isinstance(grabbed, str)
                else f"got a frame from {source} too large for the broker's packet limit that "
                "cannot be made to fit (dropped)",
            )
            return None
        with self._sched_lock:
            self.scheduler.succeeded(camera_id)
        return frame

    def _visit_failed(self, output: CameraOutput, why: str) -> None:
        """Take the camera offline and try it less often; ``why`` is what the visit got."""
        camera_id = output.camera.id
        output.stats.failures += 1
        with self._sched_lock:
            retry_s = self.scheduler.failed(camera_id)
        if output.online is not False:  # once per failing streak, not on every visit
            log.warning(
                "camera %s: the patrol visit %s; offline until a visit succeeds, next try in "
                "%.0f s",
                camera_id,
                why,
                retry_s,
            )
        output.set_status(False)

    def _grab_once(self, output: CameraOutput) -> tuple[bytes, int, int] | str:
        """:func:`grab_frame`, an HTTP snapshot up to the camera's own cap (or why it got
        none, said by the caller once a failing streak); :data:`NO_FRAME` without an open once
        ingest is stopping: the open would wait for OpenCV's lock behind the others and hold
        the exit up."""
        if self.stop_event.is_set():
            return NO_FRAME
        return grab_frame(output.camera, self.base_dir, max_bytes=output.http_max_bytes)

    def _grab(self, camera_id: str) -> Frame | None:
        """A snapshot grab: a visit for a patrol camera. A continuous camera's grab opens its
        source a second time beside the stream its publisher reads (a camera may refuse a
        second connection): its frame answers the requests alone, and neither its frame nor
        its failure says anything of the stream, so its status stays. A file that has ended is
        not read again (a frame of it now would be none of the camera's): its requests get its
        newest frame (see :meth:`_recent`)."""
        output = self.outputs[camera_id]
        if output.camera.is_patrol:
            return self._visit(camera_id)
        if output.ended:
            return None
        grabbed = self._grab_once(output)
        if self.stop_event.is_set():
            return None
        if isinstance(grabbed, str):
            output.stats.failures += 1
            if camera_id not in self._grab_failing:  # once a failing stretch, not per request
                self._grab_failing.add(camera_id)
                log.warning(
                    "camera %s: the snapshot grab got no frame from %s (%sits stream is left "
                    "as it is; not said again until a grab gets one)",
                    camera_id,
                    redact(output.camera.source),
                    "" if grabbed == NO_FRAME else f"{grabbed}; ",
                )
            return None
        if camera_id in self._grab_failing:
            self._grab_failing.discard(camera_id)
            log.info("camera %s: the snapshot grab got a frame again", camera_id)
        return output.reply_frame(*grabbed)

    def _apply_boosts(self) -> None:
        while (message := self._boosts.get(0)) is not None:
            self._guarded(self._apply_boost, message)

    def _apply_boost(self, message: Message) -> None:
        match = parse_topic(self.conn.prefix, message.topic)
        if match is None:  # an id no camera can have (the filter takes any level)
            self._bad_topic(message, "patrol boost")
            return
        if match.id not in self.outputs or not self.outputs[match.id].camera.is_patrol:
            return  # not a patrol camera of this process: another's, or nobody's
        if self._stale(message, "patrol boost"):
            return
        if self._cleared(message, "patrol boost"):
            return
        try:
            factor, duration = parse_boost(message.payload)
        except MessageError as exc:
            self._dead_letter(exc.reason, message, exc.detail)
            return
        self.boost(match.id, factor, duration)

    def _guarded(self, handle: Callable[[Message], None], message: Message) -> None:
        """``handle(message)``; what fails in it is logged and dead-lettered as
        ``internal_error``: a message the checks let through must not end a loop, which would
        leave every later message unserved until ingest restarts."""
        try:
            handle(message)
        except Exception as exc:
            # The traceback goes with the letter, under its limit: a loop failing on every
            # message of a flood logged one traceback per message.
            self._dead_letter("internal_error", message, error_text(exc), exc)

    def _request_loop(self) -> None:
        while not self.stop_event.is_set():
            if not self.patrol:
                self._apply_boosts()  # nobody else drains them: within 0.5 s of their arrival
            self.letters.tick()  # says, once their window is over, the letters not sent
            message = self._requests.get(0.5)
            if message is None:
                continue
            self._guarded(self._request, message)

    def _request(self, message: Message) -> None:
        match = parse_topic(self.conn.prefix, message.topic)
        if match is None:  # an id no camera can have (the filter takes any level)
            self._bad_topic(message, "snapshot request")
            return
        if match.id not in self.outputs:
            return  # another ingest process serves that camera
        if self._stale(message, "snapshot request"):
            return
        if self._cleared(message, "snapshot request"):
            return
        try:
            request_id = parse_request(message.payload)
        except MessageError as exc:
            self._dead_letter(exc.reason, message, exc.detail)
            return
        self._answer(match.id, request_id, message.received_at)

    def _answer(self, camera_id: str, request_id: str, received_at: datetime) -> None:
        output = self.outputs[camera_id]
        latest = output.latest
        fresh_s = 2.0 / output.camera.sample_fps if not output.camera.is_patrol else 0.0
        age = (datetime.now(UTC) - latest.header.ts).total_seconds() if latest else None
        if latest is not None and age is not None and age <= max(fresh_s, 1.0):
            if camera_id in self._grab_failing:
                self._grab_failing.discard(camera_id)
                log.info("camera %s: the stream answers snapshot requests again", camera_id)
            self._reply(camera_id, latest, request_id)
            return

        with self._waiting_lock:
            waiting = self._waiting.setdefault(camera_id, [])
            waiting.append((request_id, received_at))
            if len(waiting) > 1:
                return  # a grab is under way: it answers this request too

        self._grabs.put(camera_id)

    def _grab_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                camera_id = self._grabs.get(timeout=0.5)
            except queue.Empty:
                continue
            if self.stop_event.is_set():
                return
            try:
                self._grab_and_reply(camera_id)
            except Exception:  # the thread must go on serving the other cameras' requests
                log.exception("camera %s: snapshot requests not answered", camera_id)

    def _grab_and_reply(self, camera_id: str) -> None:
        """Grab a frame and answer every request waiting for it. The waiting list is cleared
        whatever the grab raises (logged): a list left behind would park every later request
        for the camera behind a grab that never ends."""
        error: Exception | None = None
        frame: Frame | None = None
        output = self.outputs[camera_id]
        # Said already: a patrol camera offline, a continuous one whose grabs get no frame.
        failing = (
            output.online is False if output.camera.is_patrol else camera_id in self._grab_failing
        )
        try:
            frame = self._grab(camera_id)
        except Exception as exc:
            error = exc
        with self._waiting_lock:
            waiting = self._waiting.pop(camera_id, [])
        if error is not None:
            log.error("camera %s: the snapshot grab failed", camera_id, exc_info=error)
        if self.stop_event.is_set():
            return  # stopping: the grab was given up, and nothing is published any more
        request_ids = [request_id for request_id, _ in waiting]
        if frame is None and waiting:
            frame, request_ids = self._recent(camera_id, waiting, quiet=failing and error is None)
        if frame is None:
            return
        for waiting_id in request_ids:
            try:
                self._reply(camera_id, frame, waiting_id)
            except Exception:
                log.exception("camera %s: snapshot request %s not answered", camera_id, waiting_id)

    def _recent(
        self, camera_id: str, waiting: list[tuple[str, datetime]], *, quiet: bool
    ) -> tuple[Frame | None, list[str]]:
        """The newest frame and the requests it answers, for requests whose grab got none:
        each request whose own arrival came at most :data:`SNAPSHOT_FALLBACK_MAX_AGE_S` after
        the frame's capture. The others are not answered and their requester goes without (or
        uses a fallback of its own). ``quiet``: the failing stretch was warned of, these lines
        are info."""
        level = logging.INFO if quiet else logging.WARNING
        latest = self.outputs[camera_id].latest
        if latest is None:
            log.log(
                level,
                "camera %s: no frame for %d snapshot request(s); not answered",
                camera_id,
                len(waiting),
            )
            return None, []
        ages = [(request_id, (at - latest.header.ts).total_seconds()) for request_id, at in waiting]
        refused = [age for _, age in ages if age > SNAPSHOT_FALLBACK_MAX_AGE_S]
        if refused:
            log.log(
                level,
                "camera %s: no frame for %d snapshot request(s) and the newest was captured "
                "%.0f s before %s (over %.0f s); not answered",
                camera_id,
                len(refused),
                min(refused),
                "the request" if len(refused) == 1 else "the first of them",
                SNAPSHOT_FALLBACK_MAX_AGE_S,
            )
        return latest, [
            request_id for request_id, age in ages if age <= SNAPSHOT_FALLBACK_MAX_AGE_S
        ]

    def _reply(self, camera_id: str, frame: Frame, request_id: str) -> None:
        topic = snapshot_topic(self.conn.prefix, camera_id)
        if not self.conn.publish(topic, encode_reply(frame, request_id), qos=1):
            # Refused by the connection (its queue full while the broker is away, or over the
            # packet limit): the requester waits in vain, so it is no answer.
            with self._rejected_lock:
                self.replies_refused += 1
            log.warning(
                "camera %s: snapshot request %s not answered: the connection refused the reply "
                "(its queue is full or the reply is over the packet limit)",
                camera_id,
                request_id,
            )
            return
        log.info("camera %s: answered snapshot request %s", camera_id, request_id)

    def _stale(self, message: Message, what: str) -> bool:
        """Whether ``message`` is retained, and so ignored. A command is acted on when it is
        sent; a retained one is handed over again at every subscription: a boost of a day
        would come back at each start, an old request be answered again. Counted, and said
        once per topic (the broker hands the same one over at each reconnection). Checked
        after the topic (a retained message on a malformed topic is dead-lettered) and after
        the camera: only for this process's cameras, so the topics kept are at most two a
        camera, whatever ids the retained messages of other processes' cameras use."""
        if not message.retain:
            return False
        with self._rejected_lock:
            first = message.topic not in self.stale
            self.stale[message.topic] += 1
        if first:
            log.warning(
                "ignoring a retained %s on %s: a command is acted on when it is sent, not "
                "again at each start; clear it with an empty retained message on that topic "
                "(retained ones there are counted, not said again)",
                what,
                message.topic,
            )
        return True

    def _bad_topic(self, message: Message, what: str) -> None:
        """Dead-letter ``message``, on a topic no camera can have, as ``bad_topic``. A retained
        one is handed over again at every subscription (each start and reconnection): it is
        dead-lettered once per topic, the letter and the warning saying it is retained and how
        to clear it, and only counted as retained (ignored) after that, as are those on topics
        past the first RETAINED_BAD_TOPICS. A topic is taken as lettered only when the letter
        limit admitted its letter, and forgotten when the empty message that clears it comes
        (without the flag, as the broker hands it to subscribers already there): that one is
        the fix the letter asked for, said at INFO, not a new fault to dead-letter."""
        topic = message.topic
        if not message.retain:
            if not message.payload:
                with self._rejected_lock:
                    cleared = topic in self._bad_retained
                    self._bad_retained.discard(topic)
                if cleared:
                    log.info(
                        "the retained %s on %s was cleared (an empty message there, not "
                        "dead-lettered); a retained one there again is dead-lettered again",
                        what,
                        topic,
                    )
                    return
            self._dead_letter("bad_topic", message)
            return
        with self._rejected_lock:
            known = topic in self._bad_retained or len(self._bad_retained) >= RETAINED_BAD_TOPICS
            if known:
                self.stale_bad += 1
        if known:
            return
        if self._dead_letter("bad_topic", message, retained_bad_topic_error(what, topic)):
            with self._rejected_lock:
                if len(self._bad_retained) < RETAINED_BAD_TOPICS:
                    self._bad_retained.add(topic)

    def _cleared(self, message: Message, what: str) -> bool:
        """Whether ``message`` is empty, and so ignored: an empty retained message clears the
        one retained on its topic, and the broker hands it to the subscribers already there
        without the flag. Read as a boost, it would be ``{}``'s (the default boost); as a
        request, a malformed one, dead-lettered. Said at INFO once a topic, so that a client
        sending an empty boost on purpose learns that ``{}`` asks for the default one. Checked
        after the topic (an empty message on a malformed topic is dead-lettered) and after the
        camera: only for this process's cameras, so the topics said are at most two a camera,
        whatever ids a flood of empty messages uses."""
        if message.payload:
            return False
        with self._rejected_lock:
            first = message.topic not in self._cleared_said
            self._cleared_said.add(message.topic)
        if first:
            log.info(
                "ignoring an empty %s on %s: taken for a retained one cleared (empty "
                "ones there are not said again)%s",
                what,
                message.topic,
                "; {} asks for the default boost" if what == "patrol boost" else "",
            )
        return True

    def _dead_letter(
        self, reason: str, message: Message, error: str = "", exc: BaseException | None = None
    ) -> bool:
        """Count the rejection; dead-letter and log it when the letter limit admits it, and
        say whether it did."""
        with self._rejected_lock:
            self.bad_requests += 1
            self.rejected[reason] += 1
            admitted = self.letters.admit(message.topic, reason)
        if not admitted:
            return False
        publish_dead_letter(self.conn, reason, message, error)
        log.warning(
            "dead-lettered %s %s from %s: %s",
            reason,
            error,
            message.topic,
            message.payload[:60],
            exc_info=exc,
        )
        return True

    def _republish_status(self, _conn: MqttConnection) -> None:
        # A broker without persistence forgets retained statuses when it restarts.
        for output in self.outputs.values():
            if output.online is not None:
                output.set_status(output.online, force=True)

    def _progress_loop(self) -> None:
        last = dict.fromkeys(self.outputs, 0)
        started = time.monotonic()
        while not self.stop_event.wait(self.progress_s):
            elapsed = time.monotonic() - started
            started = time.monotonic()
            self.log_progress(last, elapsed)

    def log_progress(self, last: dict[str, int] | None = None, elapsed: float = 0.0) -> None:
        for cid, output in self.outputs.items():
            stats = output.stats
            before = last.get(cid, 0) if last is not None else stats.published
            rate = (stats.published - before) / elapsed if elapsed > 0 else 0.0
            if last is not None:
                last[cid] = stats.published
            log.info(
                "camera %s: %d frames published, %.2f fps, %d dropped, %d skipped late, %d "
                "source failures, %s",
                cid,
                stats.published,
                rate,
                stats.dropped,
                stats.late,
                stats.failures,
                "online" if output.online else "offline",
            )
        malformed, rejected, unlettered = self.rejections()
        with self._rejected_lock:  # a topic's first retained message would resize the map
            retained = sum(self.stale.values()) + self.stale_bad
            refused = self.replies_refused
        # Requests and boosts come in faster than they are served only in a storm, and a
        # dropped request is a candidate without its snapshot: say so.
        log.info(
            "ingest: snapshot requests %d received, %d dropped (queue full); %d snapshot "
            "replies refused by the connection; patrol boosts %d received, %d dropped; %d "
            "retained (ignored); %d malformed %s, of them not dead-lettered (over the limit) %s",
            self._requests.received,
            self._requests.dropped,
            refused,
            self._boosts.received,
            self._boosts.dropped,
            retained,
            malformed,
            rejected,
            unlettered,
        )

    def rejections(self) -> tuple[int, dict[str, int], dict[str, int]]:
        """The malformed requests and boosts, those by reason and those without a letter by
        reason, taken at one moment: read one by one during a flood, the later ones counted
        more (the line said 21606 malformed, 24666 of them not dead-lettered)."""
        with self._rejected_lock:
            return self.bad_requests, dict(self.rejected), self.letters.suppressed_now()
