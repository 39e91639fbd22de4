"""The worker's evidence for background rules of a scheduled zone: a pile dumped and removed
while the schedule is off is raised when it opens, with a first-seen frame that shows it."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import pytest

from gridpatrol.api.client import Outbox
from gridpatrol.detectors.evidence import decode_jpeg
from gridpatrol.detectors.types import Detections, InferenceResult, Letterbox
from gridpatrol.detectors.worker import DetectorWorker
from gridpatrol.ingest.messages import FrameHeader, encode_frame
from gridpatrol.site import parse_site
from tests.detectors.test_pipeline_schedule import EVENING, at, street
from tests.detectors.test_worker import _Backend, _Conn

SITE = """
site: {name: 测试, timezone: Asia/Shanghai}
cameras:
  - id: cam-00
    source: mqtt
    location: {address: 大宁路 0号}
    zones:
      - id: corner
        polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]
        rules: {piled_materials: {}}
        schedule: {from: "06:00", to: "23:00"}
"""


def _worker(tmp_path: Path, site_text: str = SITE) -> tuple[DetectorWorker, Outbox]:
    from gridpatrol.detectors.motion import MotionSettings

    site = parse_site(site_text)
    outbox = Outbox(tmp_path / "outbox-detect.db", None, component="detect")
    worker = DetectorWorker(
        site, site.cameras, _Backend(), {}, outbox, _Conn(),  # type: ignore[arg-type]
        motion=MotionSettings(), component_id="detect",
    )  # fmt: skip
    return worker, outbox


def _payload(k: int, pile: bool, ts: object) -> bytes:
    """Frame ``k`` of the street (320x180, the pile on its lower left when ``pile``)."""
    image = cv2.resize(cv2.cvtColor(street(k, pile), cv2.COLOR_GRAY2BGR), (320, 180))
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    header = FrameHeader(ts=ts, seq=k, camera_id="cam-00", width=320, height=180)  # type: ignore[arg-type]
    return encode_frame(header, buf.tobytes())


def _night(worker: DetectorWorker, until: datetime, since: datetime = EVENING) -> None:
    """cam-00's frames every 20 s from 22:00 (from ``since`` on) to ``until``, decoded and
    judged as the worker takes them (no objects detected); a pile lies in view from 23:30 to
    01:00."""
    _frames(worker, EVENING, until, [(at("23:30"), at("01:00", 1))], step_s=20, since=since)


def _frames(
    worker: DetectorWorker,
    start: datetime,
    until: datetime,
    piles: list[tuple[datetime, datetime]],
    step_s: int = 60,
    since: datetime | None = None,
) -> None:
    """cam-00's frames every ``step_s`` from ``start`` (judged from ``since`` on) to ``until``,
    decoded and judged as the worker takes them (no objects detected); the pile lies in view
    over each of ``piles``."""
    rt = worker.cams["cam-00"]
    nothing = InferenceResult(Detections.empty(), {}, Letterbox(1.0, 0.0, 0.0))
    k = 0
    while (t := start + timedelta(seconds=step_s * k)) <= until:
        if since is None or t >= since:
            pile = any(dumped <= t < removed for dumped, removed in piles)
            ready = worker._decode(rt, "frame", _payload(k, pile, t), t)
            assert ready is not None
            ready.result = nothing
            worker._judge(ready)
        k += 1


def test_first_seen_of_a_pile_raised_when_the_schedule_opens_shows_the_pile(
    tmp_path: Path,
) -> None:
    """A frame every 20 s from 22:00; a pile dumped at 23:30 is removed at 01:00, and the
    schedule opens at 06:00: the rule raises and clears it then, on one frame that shows bare
    ground. The frame ring reaches back over the night (the seven hours off the schedule and
    the dwell), so the candidate's first_seen frame is one of the pile, not of 05:29; so are its
    clean and annotated frames (the pile's last sighting, whose boxes they carry), while its
    latest frame is the one of 06:00."""
    worker, outbox = _worker(tmp_path)
    _night(worker, until=at("06:00", 1))
    dumped, removed, until = at("23:30"), at("01:00", 1), at("06:00", 1)
    with outbox.transaction() as txn:
        rows = txn.conn.execute("SELECT kind, payload, sha256 FROM outbox_ops ORDER BY seq")
        queued = rows.fetchall()
    blobs = {sha: bytes(data) for kind, data, sha in queued if kind == "evidence"}
    ops = [(kind, data) for kind, data, _ in queued if kind != "evidence"]
    assert [kind for kind, _ in ops] == ["create", "patch"]
    evidence = {e["kind"]: e for e in json.loads(ops[0][1])["evidence"]}
    assert sorted(evidence) == ["annotated", "clean", "first_seen", "latest"]
    assert datetime.fromisoformat(evidence["latest"]["captured_at"]) == until
    latest = decode_jpeg(blobs[evidence["latest"]["sha256"]])
    assert latest is not None
    assert float(latest[110:150, 90:150].mean()) < 130  # bare ground at 06:00
    for kind in ("first_seen", "clean", "annotated"):
        shown = evidence[kind]
        assert dumped <= datetime.fromisoformat(shown["captured_at"]) < removed, kind
        image = decode_jpeg(blobs[shown["sha256"]])
        assert image is not None
        # The pile (gray 200 where the street is 80 to 110) fills rows 100-160, columns 80-160.
        assert float(image[110:150, 90:150].mean()) > 180, kind
    clean, annotated = evidence["clean"], evidence["annotated"]
    assert clean["captured_at"] == annotated["captured_at"]
    detection = json.loads(ops[0][1])["detection"]
    # The pile's boxes, in pixels of the clean frame that shows it.
    assert detection["boxes"] == [[80.0, 100.0, 160.0, 160.0]]
    assert (detection["frame_width"], detection["frame_height"]) == (320, 180)


@pytest.mark.parametrize(
    ("schedule", "off_s"),
    [
        ({"from": "06:00", "to": "23:00"}, 25140.0),  # 23:01 to 06:00
        ({"from": "22:00", "to": "06:00"}, 57540.0),  # 06:01 to 22:00
        ({"days": ["mon", "wed"], "from": "09:00", "to": "17:00"}, 86400.0),  # capped at a day
        ({"days": ["mon", "tue"], "from": "00:00", "to": "23:59"}, 86400.0),
        ({}, 0.0),
    ],
)
def test_a_background_rules_ring_reaches_back_over_the_longest_time_off_the_schedule(
    tmp_path: Path, schedule: dict[str, object], off_s: float
) -> None:
    """The horizon: that time off (at most a day), the dwell (1800 s), its gap (20 s) and 30 s;
    a rule that is no background rule of the same zone keeps its own. The ring holds as many
    frames as ever (RING_FRAMES), only further apart."""
    from gridpatrol.detectors.worker import RING_FRAMES, _horizon_s
    from gridpatrol.site import Camera

    def horizon(rules: dict[str, object]) -> float:
        zone = {"id": "z", "polygon": [[0, 0], [1, 0], [1, 1]], "rules": rules}
        cam = {"id": "c", "source": "mqtt", "location": {"address": "x"}}
        return _horizon_s(Camera.model_validate({**cam, "zones": [{**zone, "schedule": schedule}]}))

    assert horizon({"piled_materials": {}}) == off_s + 1850.0
    assert horizon({"crowd_gathering": {"dwell_s": 1800, "gap_s": 20}}) == 1850.0
    worker, _ = _worker(tmp_path)
    assert worker.cams["cam-00"].ring.capacity == RING_FRAMES


def test_a_raise_and_clear_on_one_frame_the_outbox_could_not_take_are_queued_with_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pile of the night is raised and cleared on the 06:00 frame, when the outbox file is
    locked: neither is queued, and no event of the rule follows (it is idle). Both are kept and
    queued together with the next frame: one candidate, created and ended, never half."""
    from gridpatrol.detectors.episodes import load_book
    from tests.detectors.test_worker import _locked_once

    worker, outbox = _worker(tmp_path)
    _night(worker, until=at("06:00", 1) - timedelta(seconds=20))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox)
    _night(worker, until=at("06:00", 1), since=at("06:00", 1))
    assert failed == ["database is locked"]
    assert (worker.book, _queued(outbox)) == ({}, [])
    seconds = timedelta(seconds=20)
    _night(worker, until=at("06:00", 1) + seconds, since=at("06:00", 1) + seconds)
    (ended,) = worker.book.values()
    assert (ended.started_at, ended.ended_at, ended.reported_at) == (
        at("23:30"),
        at("01:00", 1) - seconds,
        at("06:00", 1),
    )
    assert _queued(outbox) == [("create", ended.candidate_id), ("patch", ended.candidate_id)]
    with outbox.transaction() as txn:
        assert load_book(txn.conn) == {ended.key: ended}
    assert (_ops(worker, "open"), _ops(worker, "end")) == (1.0, 1.0)
    _night(worker, until=at("06:01", 1), since=at("06:00", 1) + 2 * seconds)
    assert len(_queued(outbox)) == 2
    assert (
        "camera cam-00: the raise and clear of rule piled_materials in zone corner at "
        f"{at('06:00', 1).astimezone(UTC).isoformat()} were not queued (database is locked); "
        "they are tried again with the next frame"
    ) in caplog.messages


def test_kept_operations_failing_again_frame_after_frame_are_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox file stays locked for the 06:00 frame and the two after it: the raise and
    clear kept from 06:00 fail with each, logged once (the worker's clock stands still), and are
    queued with the frame of 06:01."""
    from tests.detectors.test_worker import _locked_once

    worker, outbox = _worker(tmp_path)
    worker.clock = lambda: 1000.0
    _night(worker, until=at("06:00", 1) - timedelta(seconds=20))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox, times=3)
    _night(worker, until=at("06:01", 1), since=at("06:00", 1))
    (ended,) = worker.book.values()
    assert len(failed) == 3
    assert _queued(outbox) == [("create", ended.candidate_id), ("patch", ended.candidate_id)]
    failures = [m for m in caplog.messages if "not queued" in m]
    assert failures == [
        "camera cam-00: the raise and clear of rule piled_materials in zone corner at "
        f"{at('06:00', 1).astimezone(UTC).isoformat()} were not queued (database is locked); "
        "they are tried again with the next frame"
    ]


def _unsendable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outbox refuses for good (as a body no request can carry) the create of the first
    candidate it is given, each time it is given it again. Returns the refusals so far."""
    from gridpatrol.api.client import OutboxTxn, UnsendableOperation

    real = OutboxTxn.create_candidate
    refused: list[str] = []

    def create(txn: OutboxTxn, body: dict[str, object], candidate_id: str | None = None) -> str:
        if not refused or candidate_id == refused[0]:
            refused.append(str(candidate_id))
            raise UnsendableOperation(f"create of candidate {candidate_id} not queued: test")
        return real(txn, body, candidate_id)

    monkeypatch.setattr(OutboxTxn, "create_candidate", create)
    return refused


def test_a_raise_and_clear_the_outbox_refuses_for_good_are_dropped_and_the_next_raise_queued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pile of the night is raised and cleared on the 06:00 frame, and the outbox refuses
    its create for good (no request could carry it): nothing is kept to try again with each
    frame. A second pile, dumped at 06:10, is raised when its dwell completes and queued."""
    worker, outbox = _worker(tmp_path)
    rt = worker.cams["cam-00"]
    _night(worker, until=at("06:00", 1) - timedelta(seconds=20))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    refused = _unsendable(monkeypatch)
    _night(worker, until=at("06:00", 1), since=at("06:00", 1))
    assert len(refused) == 1
    assert (rt.unqueued, worker.book, _queued(outbox)) == ({}, {}, [])
    nothing = InferenceResult(Detections.empty(), {}, Letterbox(1.0, 0.0, 0.0))
    t, k = at("06:00", 1), 10_000
    while not _queued(outbox) and t < at("07:00", 1):
        t, k = t + timedelta(seconds=20), k + 1
        ready = worker._decode(rt, "frame", _payload(k, t >= at("06:10", 1), t), t)
        assert ready is not None
        ready.result = nothing
        worker._judge(ready)
    (opened,) = worker.book.values()
    assert (opened.started_at, opened.open, len(refused)) == (at("06:10", 1), True, 1)
    assert _queued(outbox) == [("create", opened.candidate_id)]
    assert rt.unqueued == {}
    failures = [r.getMessage() for r in caplog.records if "not queued" in r.getMessage()]
    assert failures == [
        "camera cam-00: the raise and clear of rule piled_materials in zone corner at "
        f"{at('06:00', 1).astimezone(UTC).isoformat()} were not queued (create of candidate "
        f"{refused[0]} not queued: test)"
    ]


def test_operations_kept_from_the_last_frame_are_queued_at_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The raise and clear of the 06:00 frame, which the outbox file (locked) did not take, are
    kept; no frame follows before the worker stops. The stop queues them; had the file still
    been locked, the log would say they are lost, naming the episode."""
    from tests.detectors.test_worker import _locked_once

    worker, outbox = _worker(tmp_path)
    _night(worker, until=at("06:00", 1) - timedelta(seconds=20))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox)
    _night(worker, until=at("06:00", 1), since=at("06:00", 1))
    assert (failed, _queued(outbox)) == (["database is locked"], [])
    _stop(worker, outbox, monkeypatch)
    (ended,) = worker.book.values()
    assert _queued(outbox) == [("create", ended.candidate_id), ("patch", ended.candidate_id)]
    assert (worker.cams["cam-00"].unqueued, _ops(worker, "end")) == ({}, 1.0)


def test_operations_the_outbox_still_does_not_take_at_stop_are_logged_as_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.detectors.test_worker import _locked_once

    worker, outbox = _worker(tmp_path)
    _night(worker, until=at("06:00", 1) - timedelta(seconds=20))
    caplog.set_level(logging.INFO, logger="gridpatrol.detectors.worker")
    failed = _locked_once(monkeypatch, outbox, times=2)
    _night(worker, until=at("06:00", 1), since=at("06:00", 1))
    _stop(worker, outbox, monkeypatch)
    assert failed == ["database is locked"] * 2
    assert (worker.cams["cam-00"].unqueued, worker.book, _queued(outbox)) == ({}, {}, [])
    lost = [r for r in caplog.records if "before the stop" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in lost] == [
        (
            logging.ERROR,
            "camera cam-00: the raise and clear of rule piled_materials in zone corner (episode "
            f"started at {at('23:30').astimezone(UTC).isoformat()}) were not queued before the "
            "stop and are lost: database is locked",
        )
    ]


def _stop(worker: DetectorWorker, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's stop, as after SIGTERM (the outbox neither started nor sending)."""
    import argparse

    from gridpatrol.detectors import worker as worker_module
    from tests.detectors.test_worker import _ServeConn

    monkeypatch.setattr(worker_module, "stop_on_signals", lambda *args: None)
    monkeypatch.setattr(worker, "run", lambda: None)
    monkeypatch.setattr(worker, "report_safely", lambda: None)
    monkeypatch.setattr(outbox, "start", lambda: None)
    monkeypatch.setattr(outbox, "flush", lambda timeout: True)
    monkeypatch.setattr(outbox, "stop", lambda: None)

    class Backend:
        def close(self) -> None:
            pass

    conn = _ServeConn([])
    status = worker_module._serve(worker, Backend(), conn, argparse.Namespace())  # type: ignore[arg-type]
    assert status == 0


def _ops(worker: DetectorWorker, op: str) -> float | None:
    return worker.metrics.registry.get_sample_value(
        "gridpatrol_detect_candidate_ops_total", {"camera": "cam-00", "op": op}
    )


def _queued(outbox: Outbox) -> list[tuple[str, str | None]]:
    """The candidate operations in the outbox (not their evidence files), in order."""
    with outbox.transaction() as txn:
        rows = txn.conn.execute(
            "SELECT kind, candidate_id FROM outbox_ops WHERE kind != 'evidence' ORDER BY seq"
        )
        return rows.fetchall()


MORNING_SITE = SITE.replace('{from: "06:00", to: "23:00"}', '{from: "06:00", to: "08:00"}')


@pytest.mark.parametrize("kept", [True, False])
def test_clean_and_annotated_of_a_pile_raised_hours_later_are_of_its_occupancy(
    tmp_path: Path, kept: bool
) -> None:
    """Schedule 06:00-08:00: the ring's 24 frames are spread over 22 hours off and the dwell,
    about an hour apart. A frame every 60 s from 08:00; a pile in view 00:10-00:50 (its dwell,
    30 min, completes at 00:40) is raised and cleared at 06:00. The ring keeps no frame of those
    40 minutes; the frames of the pile's last and first sightings, kept for the raise, are its
    clean and annotated frame (not the ring's frame of before the pile, with boxes on bare
    ground) and its first_seen frame (not the ring's first frame after 00:10, of bare ground
    after the pile was taken away). Without them (``kept`` False: none kept for it), the clean
    and annotated frames are the current frame of 06:00 and first_seen the ring's first frame
    after 00:10, as docs/detectors.md says: no frame shows the pile."""
    worker, outbox = _worker(tmp_path, MORNING_SITE)
    rt = worker.cams["cam-00"]
    start, dumped, removed, until = at("08:00"), at("00:10", 1), at("00:50", 1), at("06:00", 1)
    nothing = InferenceResult(Detections.empty(), {}, Letterbox(1.0, 0.0, 0.0))
    k = 0
    while (t := start + timedelta(seconds=60 * k)) <= until:
        if t == until and not kept:
            rt.sightings.clear()
        ready = worker._decode(rt, "frame", _payload(k, dumped <= t < removed, t), t)
        assert ready is not None
        ready.result = nothing
        worker._judge(ready)
        k += 1
    with outbox.transaction() as txn:
        rows = txn.conn.execute("SELECT kind, payload, sha256 FROM outbox_ops ORDER BY seq")
        queued = rows.fetchall()
    blobs = {sha: bytes(data) for kind, data, sha in queued if kind == "evidence"}
    ops = [json.loads(data) for kind, data, _ in queued if kind != "evidence"]
    assert len(ops) == 2  # the create and its ending
    evidence = {e["kind"]: e for e in ops[0]["evidence"]}
    assert sorted(evidence) == ["annotated", "clean", "first_seen", "latest"]
    detection = ops[0]["detection"]
    assert datetime.fromisoformat(detection["started_at"]) == dumped
    last = at("00:49", 1)  # the last frame with the pile
    assert datetime.fromisoformat(ops[1]["detection"]["ended_at"]) == last
    assert datetime.fromisoformat(evidence["latest"]["captured_at"]) == until
    for kind in ("clean", "annotated"):
        assert datetime.fromisoformat(evidence[kind]["captured_at"]) == (last if kept else until)
        image = decode_jpeg(blobs[evidence[kind]["sha256"]])
        assert image is not None
        # The pile (gray 200 where the street is 80 to 110) fills rows 100-160, columns 80-160.
        mean = float(image[110:150, 90:150].mean())
        assert mean > 180 if kept else mean < 130, kind
    if not kept:  # the very frame: the clean frame is the latest
        assert evidence["clean"]["sha256"] == evidence["latest"]["sha256"]
    first_seen = datetime.fromisoformat(evidence["first_seen"]["captured_at"])
    # The pile's first sighting; without it, the ring's first frame after 00:10 (ring.at).
    assert first_seen == (dumped if kept else at("01:28", 1))
    ring_first = rt.ring.at(dumped)
    assert ring_first is not None and ring_first.t == at("01:28", 1)
    if not kept:  # the ring's very frame, as received
        assert blobs[evidence["first_seen"]["sha256"]] == ring_first.data
    image = decode_jpeg(blobs[evidence["first_seen"]["sha256"]])
    assert image is not None
    mean = float(image[110:150, 90:150].mean())
    assert mean > 180 if kept else mean < 130
    assert detection["boxes"] == [[80.0, 100.0, 160.0, 160.0]]
    assert not rt.ring.within(dumped, removed)  # thinned out: no ring frame shows the pile
    assert len(rt.sightings) == 0  # forgotten once raised and cleared


def test_the_sightings_of_a_pile_the_rule_dropped_while_the_schedule_was_off_are_forgotten(
    tmp_path: Path,
) -> None:
    """Schedule 06:00-08:00: 17 piles of 40 minutes, 70 minutes apart from 09:00, each dwell
    (30 min) completed while the schedule is off. The rule holds at most HELD_MAX = 16 of them
    and drops the oldest unraised one; the 16 it held are raised and cleared at 06:00, each with
    the frame of its last sighting, kept for it, as the clean frame. Then nothing is kept: the
    first pile's frames went when the rule dropped it (they stayed until 17 later occupancies of
    the rule pushed them out, on a quiet zone weeks, about 0.5 MB each)."""
    from gridpatrol.detectors.rules import HELD_MAX

    worker, outbox = _worker(tmp_path, MORNING_SITE)
    rt = worker.cams["cam-00"]
    piles = [
        (at("09:00") + timedelta(minutes=70 * n), at("09:40") + timedelta(minutes=70 * n))
        for n in range(HELD_MAX + 1)
    ]
    until = at("06:00", 1)
    _frames(worker, at("08:00"), at("05:59", 1), piles)
    # Each pile is over, its dwell complete, and held by the rule but the first.
    assert rt.pipeline.held() == {("corner", "piled_materials"): tuple(d for d, _ in piles[1:])}
    _frames(worker, until, until, piles)
    with outbox.transaction() as txn:
        rows = txn.conn.execute("SELECT kind, payload FROM outbox_ops ORDER BY seq")
        ops = [json.loads(data) for kind, data in rows.fetchall() if kind != "evidence"]
    creates = [op for op in ops if "evidence" in op]
    assert len(ops) == 2 * HELD_MAX and len(creates) == HELD_MAX  # each raised and ended
    for op, (dumped, removed) in zip(creates, piles[1:], strict=True):
        assert datetime.fromisoformat(op["detection"]["started_at"]) == dumped
        clean = next(e for e in op["evidence"] if e["kind"] == "clean")
        # The pile's last sighting, a minute before it was taken away.
        assert datetime.fromisoformat(clean["captured_at"]) == removed - timedelta(minutes=1)
    assert rt.pipeline.held() == {}
    assert len(rt.sightings) == 0


@pytest.mark.parametrize("schedule", [None, '{from: "06:00", to: "23:00"}'])
def test_the_sightings_of_a_pile_its_silent_camera_ended_are_forgotten(
    tmp_path: Path, schedule: str | None
) -> None:
    """A pile in view 09:00-09:40 is raised at 09:30 on its last sighting, while the schedule is
    on (or of a zone without one), then the camera goes silent and the worker ends its episode:
    the rule has no clear of it. Ten frames of bare ground later, no frame of it is kept. A zone
    without a schedule keeps none at all (its raises are on their last sighting, the current
    frame); a scheduled one's went with the episode (they stayed until 17 later occupancies of
    the rule pushed them out)."""
    text = SITE.replace('\n        schedule: {from: "06:00", to: "23:00"}', "")
    if schedule is not None:
        text = SITE.replace('{from: "06:00", to: "23:00"}', schedule)
    worker, outbox = _worker(tmp_path, text)
    rt = worker.cams["cam-00"]
    dumped, removed = at("09:00"), at("09:40")
    _frames(worker, at("08:00"), at("09:35"), [(dumped, removed)])
    held = rt.pipeline.held()
    assert held == {("corner", "piled_materials"): (dumped,)}
    assert len(rt.sightings) == (0 if schedule is None else 1)
    worker._end_silent_camera(rt, 1e6)
    assert rt.pipeline.held() == {}
    _frames(worker, at("10:00"), at("10:09"), [])
    with outbox.transaction() as txn:
        rows = txn.conn.execute("SELECT kind, payload FROM outbox_ops ORDER BY seq")
        ops = [json.loads(data) for kind, data in rows.fetchall() if kind != "evidence"]
    # The create at 09:30, its updates (update_s 120 s) and its ending: no clear came.
    ended = [("id" in op, "ended_at" in op["detection"]) for op in ops]
    assert ended == [(True, False), (False, False), (False, False), (False, True)]
    assert datetime.fromisoformat(ops[-1]["detection"]["ended_at"]) == at("09:35")
    assert len(rt.sightings) == 0
