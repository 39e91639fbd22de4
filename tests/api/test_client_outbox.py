"""The producers' outbox against a real intake API: ordered, durable, duplicate-free."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from gridpatrol.api.client import (
    REFUSED_CREATES,
    ApiClient,
    ApiError,
    Outbox,
    OutboxBusy,
    UnsendableOperation,
    candidate_closed,
    merge_patches,
)


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def candidate(event_id: str, sha: str) -> dict[str, Any]:
    return {
        "source": {
            "type": "camera",
            "system": "outbox-test",
            "camera_id": "cam-1",
            "source_event_id": event_id,
        },
        "type": "garbage_overflow",
        "description": "暴露垃圾 / Garbage overflow",
        "occurred_at": datetime(2026, 11, 27, 3, 0, tzinfo=UTC).isoformat(),
        "location": {"lat": 31.28, "lon": 121.45},
        "severity": "MINOR",
        "urgency": "normal",
        "evidence": [{"sha256": sha, "kind": "clean"}],
        "detection": {"model": "yolo11n", "score": 0.8, "dwell_s": 10},
    }


def producer(api_server: Any, tmp_path: Path, name: str = "test") -> Outbox:
    client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
    return Outbox(tmp_path / f"outbox-{name}.db", client, component=name)


def deliver(outbox: Outbox, timeout: float = 30) -> None:
    """Start the outbox, wait until it holds nothing pending, stop it."""
    outbox.start()
    try:
        assert outbox.flush(timeout)
    finally:
        outbox.stop()


def wait_for_a_retry(outbox: Outbox, timeout: float = 30) -> None:
    """Wait until a delivery round of the outbox has failed and been put off for a retry;
    fail at once if it settled an operation instead."""
    deadline = time.monotonic() + timeout
    while (stats := outbox.stats())["retried"] == 0:
        assert stats["sent"] == stats["failed"] == 0, stats
        assert time.monotonic() < deadline, "the outbox never tried to deliver"
        time.sleep(0.02)


def all_candidates(api_server: Any) -> list[dict[str, Any]]:
    with api_server.client("admin") as http:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/candidates", params=params).json()
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def test_evidence_then_candidate_then_patch_in_order(api_server: Any, tmp_path: Path) -> None:
    outbox = producer(api_server, tmp_path)
    image = jpeg(1)
    with outbox.transaction() as txn:
        sha = txn.add_evidence(image, "image/jpeg")
        cid = txn.create_candidate(candidate("e-1", sha))
        txn.patch_candidate(cid, {"detection": {"dwell_s": 40}})
    outbox.start()
    try:
        assert outbox.flush(30)
    finally:
        outbox.stop()
    assert sha == hashlib.sha256(image).hexdigest()
    with api_server.client("reviewer") as http:
        got = http.get(f"/candidates/{cid}").json()
        assert got["id"] == cid
        assert got["status"] == "new"
        assert got["detection"]["dwell_s"] == 40
        assert [e["sha256"] for e in got["evidence"]] == [sha]
        assert http.get(f"/evidence/{sha}").content == image
    assert outbox.stats() == {"sent": 3, "retried": 0, "failed": 0, "depth": 0}


def test_api_downtime_loses_and_duplicates_nothing(api_server: Any, tmp_path: Path) -> None:
    api_server.stop()
    outbox = producer(api_server, tmp_path)
    ids = []
    for i in range(40):
        with outbox.transaction() as txn:
            sha = txn.add_evidence(jpeg(i), "image/jpeg")
            cid = txn.create_candidate(candidate(f"down-{i}", sha))
            txn.patch_candidate(cid, {"detection": {"dwell_s": 20 + i}})
            txn.patch_candidate(cid, {"detection": {"score": 0.9}})
        ids.append(cid)
    outbox.start()
    try:
        wait_for_a_retry(outbox)  # the sender has met the closed port
        assert (outbox.depth(), outbox.failed()) == (160, [])
        api_server.start()
        assert outbox.flush(90)
    finally:
        outbox.stop()
    stats = outbox.stats()
    assert stats["failed"] == 0 and stats["retried"] >= 1
    items = {c["id"]: c for c in all_candidates(api_server)}
    assert sorted(items) == sorted(ids)
    with api_server.client("reviewer") as http:
        for i, cid in enumerate(ids):
            got = http.get(f"/candidates/{cid}").json()
            assert got["detection"]["dwell_s"] == 20 + i
            assert got["detection"]["score"] == 0.9


def test_a_restarted_producer_resends_without_duplicates(api_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "outbox-restart.db"
    offline = Outbox(path, None, component="restart")
    with offline.transaction() as txn:
        sha = txn.add_evidence(jpeg(7), "image/jpeg")
        cid = txn.create_candidate(candidate("restart-1", sha))
    # Deliver the same stored operation twice, as a crash after sending but before the
    # bookkeeping would: the idempotency key makes the second delivery a replay.
    key = (
        sqlite3.connect(path)
        .execute("SELECT idempotency_key FROM outbox_ops WHERE kind = 'create'")
        .fetchone()[0]
    )
    client = ApiClient(api_server.url, api_server.tokens["producer"])
    client.put_evidence(jpeg(7), "image/jpeg")
    client.create_candidate({**candidate("restart-1", sha), "id": cid}, key)
    online = Outbox(path, client, component="restart")
    online.start()
    try:
        assert online.flush(30)
    finally:
        online.stop()
    assert [c["id"] for c in all_candidates(api_server)] == [cid]


def test_producer_state_and_outbox_share_one_transaction(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox-txn.db", None, component="txn")
    with outbox.transaction() as txn:
        txn.conn.execute("CREATE TABLE IF NOT EXISTS episodes (key TEXT PRIMARY KEY)")
    with pytest.raises(RuntimeError), outbox.transaction() as txn:
        txn.conn.execute("INSERT INTO episodes VALUES ('cam-1:z:t')")
        txn.create_candidate(candidate("txn-1", "0" * 64))
        raise RuntimeError("producer failed before its commit")
    rows = outbox._thread_conn().execute("SELECT COUNT(*) FROM episodes").fetchone()
    assert rows[0] == 0
    assert outbox.depth() == 0


def test_a_commit_that_fails_is_rolled_back_and_releases_the_write_lock(tmp_path: Path) -> None:
    """A COMMIT that fails (here a deferred constraint; SQLITE_BUSY, FULL or IOERR too) can
    leave SQLite's transaction open: it is rolled back, so the thread's next transaction
    begins and other connections can write, instead of waiting for a lock none releases."""
    path = tmp_path / "outbox-commit.db"
    outbox = Outbox(path, None, component="commit")
    conn = outbox._thread_conn()
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(
        """
        CREATE TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
        """
    )
    with (
        pytest.raises(sqlite3.IntegrityError, match=r"^FOREIGN KEY constraint failed$"),
        outbox.transaction() as txn,
    ):
        txn.conn.execute("INSERT INTO child VALUES (1)")  # checked at the COMMIT
        txn.create_candidate(candidate("commit-1", "0" * 64))
    assert not conn.in_transaction
    assert outbox.depth() == 0
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as other, other:
        other.execute("INSERT INTO parent VALUES (1)")  # no wait for the write lock
    with outbox.transaction() as txn:
        txn.conn.execute("INSERT INTO child VALUES (1)")
        txn.create_candidate(candidate("commit-2", "0" * 64))
    assert outbox.depth() == 1
    assert conn.execute("SELECT parent FROM child").fetchall() == [(1,)]


def test_refused_operations_are_kept_and_do_not_block(api_server: Any, tmp_path: Path) -> None:
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        txn.add_evidence(b"GIF89a not an accepted medium", "image/gif")
        bad = txn.create_candidate({**candidate("bad-1", "0" * 64), "occurred_at": [1, 2]})
        sha = txn.add_evidence(jpeg(3), "image/jpeg")
        good = txn.create_candidate(candidate("good-1", sha))
    outbox.start()
    try:
        assert outbox.flush(30)
    finally:
        outbox.stop()
    failed = outbox.failed()
    assert [(f["kind"], f["candidate_id"]) for f in failed] == [
        ("evidence", None),
        ("create", bad),
    ]
    assert failed[0]["error"].startswith("415 ")
    assert failed[1]["error"].startswith("422 ")
    assert [c["id"] for c in all_candidates(api_server)] == [good]


@pytest.mark.parametrize("token", ["not-a-token", "reviewer"])
def test_a_refused_token_holds_the_outbox_until_mended(
    api_server: Any, tmp_path: Path, token: str
) -> None:
    wrong = api_server.tokens.get(token, token)  # 401 for an unknown token, 403 for a reviewer's
    outbox = Outbox(
        tmp_path / "outbox-token.db", ApiClient(api_server.url, wrong, timeout=5), component="t"
    )
    ids = []
    for i in range(3):
        with outbox.transaction() as txn:
            sha = txn.add_evidence(jpeg(20 + i), "image/jpeg")
            ids.append(txn.create_candidate(candidate(f"token-{i}", sha)))
    outbox.start()
    try:
        wait_for_a_retry(outbox)  # the API has refused the token
        assert (outbox.depth(), outbox.failed()) == (6, [])
        outbox.client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
        assert outbox.flush(60)
    finally:
        outbox.stop()
    stats = outbox.stats()
    assert (stats["sent"], stats["failed"], stats["depth"]) == (6, 0, 0)
    assert stats["retried"] >= 1
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted(ids)


def test_a_week_of_updates_keeps_one_latest_frame(api_server: Any, tmp_path: Path) -> None:
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        clean = txn.add_evidence(jpeg(30), "image/jpeg")
        body = candidate("week-1", clean)
        body["evidence"].append({"sha256": clean, "kind": "latest"})
        cid = txn.create_candidate(body)
    outbox.start()
    try:
        for update in range(1, 151):  # more than a PATCH may carry, had they accumulated
            with outbox.transaction() as txn:
                sha = txn.add_evidence(jpeg(30 + update), "image/jpeg")
                evidence = [{"sha256": sha, "kind": "latest"}]
                txn.patch_candidate(cid, {"evidence": evidence, "detection": {"dwell_s": update}})
        assert outbox.flush(60)
    finally:
        outbox.stop()
    assert outbox.failed() == []
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
    assert [(e["kind"], e["sha256"]) for e in doc["evidence"]] == [
        ("clean", clean),
        ("latest", hashlib.sha256(jpeg(180)).hexdigest()),
    ]
    assert doc["detection"]["dwell_s"] == 150


@pytest.mark.parametrize("updates", [30, 50])
def test_updates_whose_evidence_passes_a_patchs_limit_all_arrive(
    api_server: Any, tmp_path: Path, updates: int
) -> None:
    """An episode's updates queued while the outbox was not delivering, each adding a clean,
    an annotated and a latest frame: merged into one PATCH, 50 of them would carry 101
    evidence items, over the API's 100. Every update arrives, the last one's dwell_s last."""
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        first = txn.add_evidence(jpeg(1000), "image/jpeg")
        cid = txn.create_candidate(candidate("many-frames-1", first))
    for update in range(1, updates + 1):
        with outbox.transaction() as txn:
            frames = [
                {
                    "sha256": txn.add_evidence(jpeg(1000 + 3 * update + k), "image/jpeg"),
                    "kind": kind,
                }
                for k, kind in enumerate(("clean", "annotated", "latest"))
            ]
            txn.patch_candidate(cid, {"evidence": frames, "detection": {"dwell_s": 10 + update}})
    deliver(outbox, 60)
    assert outbox.failed() == []
    stats = outbox.stats()
    assert (stats["sent"], stats["failed"], stats["depth"]) == (2 + 4 * updates, 0, 0)
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
    assert doc["detection"]["dwell_s"] == 10 + updates
    kinds = [e["kind"] for e in doc["evidence"]]
    assert (kinds.count("clean"), kinds.count("annotated"), kinds.count("latest")) == (
        1 + updates,
        updates,
        1,
    )


def test_a_merged_patch_refused_goes_again_one_update_at_a_time(
    api_server: Any, tmp_path: Path
) -> None:
    """A candidate's queued updates, one the API refuses (a top-level null): their merged
    PATCH gets 422, and they go again unmerged, under their own keys: only that one fails."""
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(1200), "image/jpeg")
        cid = txn.create_candidate(candidate("refused-in-merge-1", sha))
        txn.patch_candidate(cid, {"detection": {"dwell_s": 20}})
        txn.patch_candidate(cid, {"description": None})
        txn.patch_candidate(cid, {"detection": {"dwell_s": 30}, "severity": "MAJOR"})
    deliver(outbox)
    [failed] = outbox.failed()
    assert (failed["kind"], failed["candidate_id"]) == ("patch", cid)
    assert failed["error"].startswith("422 ")
    assert outbox.stats() == {"sent": 4, "retried": 0, "failed": 1, "depth": 0}
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
    assert (doc["detection"]["dwell_s"], doc["severity"]) == (30, "MAJOR")
    assert doc["description"] == "暴露垃圾 / Garbage overflow"


def test_a_merged_patch_refused_costs_one_request_an_update(
    api_server: Any, tmp_path: Path
) -> None:
    """100 updates of a candidate and one the API refuses (a top-level null), queued while
    the outbox was not delivering: their merged PATCH gets 422, then each goes alone once,
    never a merge of the rest refused again after each."""
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(1250), "image/jpeg")
        cid = txn.create_candidate(candidate("refused-in-merge-2", sha))
        for update in range(1, 101):
            txn.patch_candidate(cid, {"detection": {"dwell_s": 10 + update}})
        txn.patch_candidate(cid, {"urgency": None})
    before = patch_requests(api_server)
    deliver(outbox, 60)
    assert patch_requests(api_server) - before <= 103
    [failed] = outbox.failed()
    assert (failed["kind"], failed["candidate_id"]) == ("patch", cid)
    assert failed["error"].startswith("422 ")
    assert outbox.stats() == {"sent": 102, "retried": 0, "failed": 1, "depth": 0}
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
    assert (doc["detection"]["dwell_s"], doc["urgency"]) == (110, "normal")


def test_a_merged_patch_too_large_is_split_not_sent_one_update_at_a_time(
    api_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """200 updates of a candidate, each adding a clean frame, queued while the outbox was not
    delivering, against an API whose GRIDPATROL_MAX_BODY_BYTES is 8192: the merge of the first
    100 (about 11 kB) is refused with 413 and the candidate's merges are halved, rather than
    each of its updates sent alone: a few PATCHes, none refused, the last dwell_s arrives."""
    api_server.stop()
    api_server.env["GRIDPATROL_MAX_BODY_BYTES"] = "8192"
    api_server.start()
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.client")
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(1270), "image/jpeg")
        cid = txn.create_candidate(candidate("too-large-1", sha))
    for update in range(1, 201):
        with outbox.transaction() as txn:
            frame = {"sha256": txn.add_evidence(jpeg(1270 + update), "image/jpeg"), "kind": "clean"}
            txn.patch_candidate(cid, {"evidence": [frame], "detection": {"dwell_s": update}})
    deliver(outbox, 60)
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 402, "retried": 0, "failed": 0, "depth": 0}
    # 1 merge of 100 refused, then merges of about 50: not 2 refused and 200 alone.
    assert api_requests(api_server, 'method="PATCH"', 'status="413"') == 1
    assert api_requests(api_server, 'method="PATCH"') <= 10
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "merged PATCH of 100 updates (" in warning
    assert f"of candidate {cid} was refused as too large (HTTP 413" in warning
    assert "sending them in smaller merges, of at most " in warning
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{cid}").json()
    assert doc["detection"]["dwell_s"] == 200
    assert [e["kind"] for e in doc["evidence"]] == ["clean"] * 201


def test_a_candidates_patches_merge_within_the_byte_limit(api_server: Any, tmp_path: Path) -> None:
    outbox = producer(api_server, tmp_path)
    outbox.MAX_PATCH_BYTES = 60  # about two of these patches
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(1300), "image/jpeg")
        cid = txn.create_candidate(candidate("bytes-1", sha))
        for dwell in range(11, 16):
            txn.patch_candidate(cid, {"detection": {"dwell_s": dwell}})
    before = patch_requests(api_server)
    deliver(outbox)
    assert outbox.stats() == {"sent": 7, "retried": 0, "failed": 0, "depth": 0}
    assert patch_requests(api_server) - before == 3  # 2 + 2 + 1
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{cid}").json()["detection"]["dwell_s"] == 15


def test_a_patch_recorded_out_goes_again_as_it_was_whatever_its_size(
    api_server: Any, tmp_path: Path
) -> None:
    """A file an earlier version left with a PATCH out and no answer (stopped or killed while
    it was on its way): 1800 updates of a candidate merged into one PATCH, over 512 KiB of
    updates merging into a small body, which the API applied. It goes again exactly as it
    was, one PATCH under its key, which the API replays: no part of it is applied again under
    another key, and the last value stays."""
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(1400), "image/jpeg")
        cid = txn.create_candidate(candidate("recorded-out-1", sha))
    deliver(outbox)
    note = "x" * 320
    with outbox.transaction() as txn:
        for update in range(1, 1801):
            txn.patch_candidate(cid, {"description": note, "detection": {"dwell_s": 10 + update}})
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox-test.db")) as conn, conn:
        rows = conn.execute(
            "SELECT seq, idempotency_key, payload FROM outbox_ops WHERE kind = 'patch' ORDER BY seq"
        ).fetchall()
        assert len(rows) == 1800
        assert sum(len(payload) for _s, _k, payload in rows) > Outbox.MAX_PATCH_BYTES
        conn.execute(
            "INSERT INTO outbox_patch_groups (candidate_id, seqs) VALUES (?, ?)",
            (cid, json.dumps([seq for seq, _k, _p in rows])),
        )
    body: dict[str, Any] = {}
    for _seq, _key, payload in rows:
        body = merge_patches(body, json.loads(payload))
    client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
    with contextlib.closing(client):
        client.patch_candidate(cid, body, rows[-1][1])
    before = patch_requests(api_server)
    deliver(outbox, 60)
    assert patch_requests(api_server) - before == 1
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 1802, "retried": 0, "failed": 0, "depth": 0}
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{cid}").json()["detection"]["dwell_s"] == 1810


@pytest.mark.parametrize("linked", [False, True])
def test_one_process_at_a_time_delivers_from_an_outbox_file(tmp_path: Path, linked: bool) -> None:
    """Also when the second names the file through a symbolic link in another folder."""
    client = ApiClient("http://127.0.0.1:9", "token")
    path = tmp_path / "outbox-shared.db"
    first = Outbox(path, client, component="a")
    if linked:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / path.name).symlink_to(path)
        path = tmp_path / "b" / path.name
    second = Outbox(path, client, component="b")
    first.start()
    try:
        with pytest.raises(OutboxBusy, match=re.escape(f"outbox {path} is in use by another")):
            second.start()
    finally:
        first.stop()
    second.start()  # released by the first one's stop
    second.stop()


HUNG_PRODUCER = """
import sys
from gridpatrol.api.client import ApiClient, Outbox
# No upload ends by itself while the test watches: it ends them by closing their connections.
outbox = Outbox(sys.argv[1], ApiClient(sys.argv[2], "token", timeout=90), component="hung")
with outbox.transaction() as txn:
    for i in range(40):
        txn.add_evidence(b"evidence %d" % i, "application/json")
outbox.start()
sys.stdin.readline()  # the test's go: it has seen the uploads under way
outbox.stop(timeout=0)
print("stopped", flush=True)
"""


def test_stopping_drops_the_uploads_not_begun(tmp_path: Path) -> None:
    """An API that accepts connections and never answers: stopping leaves the uploads under
    way to end, and drops the whole window behind them (they stay in the file for the next
    start) instead of sending it after them."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stopped = threading.Event()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])
                if stopped.is_set():
                    accepted[-1].close()  # an upload begun after the stop ends at once

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    path = tmp_path / "outbox-hung.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_PRODUCER, str(path), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(accepted) < Outbox.PARALLEL and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        # One upload under way per sender; the rest wait for a free one.
        assert len(accepted) == Outbox.PARALLEL
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"stopped\n"
        # The uploads under way fail now; with the rest dropped, none follows them.
        stopped.set()
        for conn in list(accepted):
            conn.close()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    assert proc.returncode == 0, err.decode()
    assert len(accepted) == Outbox.PARALLEL
    assert Outbox(path, None, component="hung").depth() == 40


def api_requests(api_server: Any, *labels: str) -> int:
    """Requests the API has answered with all of ``labels`` (e.g. 'method="PATCH"'), from
    its /metrics."""
    with api_server.client("admin") as http:
        text = http.get("/metrics").text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("gridpatrol_api_requests_total{")
        and all(label in line for label in labels)
    )


def patch_requests(api_server: Any) -> int:
    """PATCH /candidates/{id} requests the API has answered."""
    return api_requests(api_server, 'method="PATCH"', 'route="/api/v1/candidates/{candidate_id}"')


def test_interleaved_updates_merge_per_candidate_in_order(api_server: Any, tmp_path: Path) -> None:
    """Updates of many candidates, interleaved as an alarm stream makes them, reach the API
    as one merged PATCH per candidate per round; each candidate's last value wins."""
    api_server.stop()
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(7), "image/jpeg")
        ids = [txn.create_candidate(candidate(f"mix-{i}", sha)) for i in range(10)]
    for count in range(1, 31):
        with outbox.transaction() as txn:
            for cid in ids:
                txn.patch_candidate(cid, {"detection": {"dwell_s": count}})
    # A later patch references evidence queued after the creates; it must arrive first.
    with outbox.transaction() as txn:
        late = txn.add_evidence(jpeg(8), "image/jpeg")
        txn.patch_candidate(ids[0], {"evidence": [{"sha256": late, "kind": "latest"}]})
    api_server.start()
    before = patch_requests(api_server)
    outbox.start()
    try:
        assert outbox.flush(60)
    finally:
        outbox.stop()
    assert outbox.stats() == {"sent": 1 + 10 + 300 + 2, "retried": 0, "failed": 0, "depth": 0}
    assert patch_requests(api_server) - before == len(ids)
    with api_server.client("reviewer") as http:
        docs = [http.get(f"/candidates/{cid}").json() for cid in ids]
        assert [d["detection"]["dwell_s"] for d in docs] == [30] * 10
        assert [e["sha256"] for e in docs[0]["evidence"]] == [sha, late]
        assert http.get(f"/evidence/{late}").content == jpeg(8)


def test_client_raises_problem_details(api_server: Any) -> None:
    reviewer = ApiClient(api_server.url, api_server.tokens["reviewer"])
    with pytest.raises(ApiError) as info:
        reviewer.get_evidence("f" * 64)
    assert (info.value.status, info.value.problem["status"]) == (404, 404)
    producer = ApiClient(api_server.url, api_server.tokens["producer"])
    with pytest.raises(ApiError) as info:
        producer.review(str(uuid.uuid4()), "confirm")
    assert (info.value.status, info.value.retryable) == (403, True)  # the token, not the request


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"alarm": {"count": 2, "x": 1}}, {"alarm": {"count": 3}}, {"alarm": {"count": 3, "x": 1}}),
        (
            {"evidence": [{"sha256": "a"}]},
            {"evidence": [{"sha256": "b"}]},
            {"evidence": [{"sha256": "a"}, {"sha256": "b"}]},
        ),
        (
            {"evidence": [{"sha256": "a", "kind": "clean"}, {"sha256": "b", "kind": "latest"}]},
            {"evidence": [{"sha256": "c", "kind": "latest"}]},
            {"evidence": [{"sha256": "a", "kind": "clean"}, {"sha256": "c", "kind": "latest"}]},
        ),
        (
            {"evidence": [{"sha256": "b", "kind": "latest"}]},
            {"evidence": [{"sha256": "d", "kind": "clean"}]},
            {"evidence": [{"sha256": "b", "kind": "latest"}, {"sha256": "d", "kind": "clean"}]},
        ),
        ({"references": ["x"]}, {"references": ["x", "y"]}, {"references": ["x", "y"]}),
        ({"severity": "MINOR"}, {"severity": "MAJOR", "b": None}, {"severity": "MAJOR", "b": None}),
    ],
)
def test_merge_patches(
    first: dict[str, Any], second: dict[str, Any], merged: dict[str, Any]
) -> None:
    assert merge_patches(first, second) == merged


def test_an_id_taken_by_another_event_is_refused_for_good(api_server: Any, tmp_path: Path) -> None:
    """Two producers that give one id to different events: the second one's create is final
    (409, not retried) and its patches are not sent, so they change nothing of the first's."""
    first, second = producer(api_server, tmp_path, "first"), producer(api_server, tmp_path, "two")
    cid, own = str(uuid.uuid4()), str(uuid.uuid4())
    with first.transaction() as txn:
        sha = txn.add_evidence(jpeg(40), "image/jpeg")
        txn.create_candidate(candidate("taken-1", sha), cid)
    rounds = [(first, []), (second, ["taken-2"]), (second, ["taken-3", "own-4"])]
    for outbox, events in rounds:  # the second's creates alone, then in a batch
        with outbox.transaction() as txn:
            for event in events:
                txn.create_candidate(candidate(event, sha), own if event == "own-4" else cid)
                txn.patch_candidate(cid, {"description": f"from {event}"})
        deliver(outbox)
    assert first.failed() == []
    failed = second.failed()
    kinds = ["create", "patch", "create", "patch", "patch"]  # round 2, then round 3
    assert [(f["kind"], f["candidate_id"]) for f in failed] == [(k, cid) for k in kinds]
    assert all(f["error"].startswith("409 ") for f in failed)
    assert "candidate-id-taken" in failed[0]["error"]
    assert "not sent: the API refused this candidate's create" in failed[1]["error"]
    assert second.stats() == {"sent": 1, "retried": 0, "failed": 5, "depth": 0}
    docs = {c["id"]: c for c in all_candidates(api_server)}
    assert sorted(docs) == sorted([cid, own])
    assert docs[cid]["source"]["source_event_id"] == "taken-1"
    assert docs[cid]["description"] == candidate("taken-1", sha)["description"]


@pytest.mark.parametrize(
    ("batched", "window"),
    [(False, Outbox.WINDOW), (False, 1), (True, Outbox.WINDOW)],
    ids=["alone", "patch-in-a-later-round", "in-a-batch"],
)
def test_updates_follow_a_create_the_api_answered_with_the_candidate_it_holds(
    api_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, batched: bool, window: int
) -> None:
    """An event the API holds already, created again under a new id (a producer that lost
    its state): the API answers with its candidate (200), and the producer's updates of the
    new id, queued before that answer or after it, reach that candidate."""
    client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
    sha = client.put_evidence(jpeg(60), "image/jpeg")
    body = {**candidate("again-1", sha), "id": str(uuid.uuid4())}
    held = client.create_candidate(body, str(uuid.uuid4()))["id"]
    outbox = producer(api_server, tmp_path)
    outbox.WINDOW = window  # 1: the patch is still queued when the create's answer comes
    with outbox.transaction() as txn:
        again = txn.create_candidate(candidate("again-1", sha))
        others = [txn.create_candidate(candidate("again-2", sha))] if batched else []
        txn.patch_candidate(again, {"detection": {"dwell_s": 40}})
    deliver(outbox)
    with outbox.transaction() as txn:
        txn.patch_candidate(again, {"detection": {"score": 0.95}})
    deliver(outbox)
    assert outbox.failed() == []
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{held}").json()
        assert (doc["detection"]["dwell_s"], doc["detection"]["score"]) == (40, 0.95)
        assert http.get(f"/candidates/{again}").status_code == 404
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted([held, *others])
    assert [r.getMessage() for r in caplog.records if again in r.getMessage()] == [
        f"outbox test: the API answered the create of {again} with candidate {held}, which it"
        f" already held for that event; updates of {again} go to {held}"
    ]
    # Rejected there, it is closed under the producer's id too: its updates stop.
    rejected_then_patched(api_server, outbox, held, again)
    failed = outbox.failed()
    assert [(f["kind"], f["candidate_id"], f["error"][:4]) for f in failed] == [
        ("patch", held, "410 ")
    ]
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        assert candidate_closed(conn, again)


def rejected_then_patched(api_server: Any, outbox: Outbox, held: str, cid: str) -> None:
    """A reviewer rejects the API's candidate ``held``; the producer then patches it, by its
    own id ``cid``, and the outbox delivers (the patch answered 410)."""
    with api_server.client("reviewer") as http:
        decision = {"decision": "reject", "reason_code": "duplicate", "reason": "seen"}
        assert http.post(f"/candidates/{held}/review", json=decision).status_code == 200
    with outbox.transaction() as txn:
        txn.patch_candidate(cid, {"detection": {"dwell_s": 50}})
    deliver(outbox)


def test_batches_stay_under_the_size_limit_and_a_body_over_it_is_refused(
    api_server: Any, tmp_path: Path
) -> None:
    api_server.stop()
    api_server.env["GRIDPATROL_MAX_BODY_BYTES"] = "100000"
    api_server.env["GRIDPATROL_MAX_BATCH_BYTES"] = "200000"
    api_server.start()
    outbox = producer(api_server, tmp_path)
    outbox.MAX_BATCH_BYTES = 150_000  # 5 creates of 30 kB a batch
    ids = []
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(50), "image/jpeg")
        for i in range(20):
            ids.append(txn.create_candidate({**candidate(f"size-{i}", sha), "note": "x" * 30_000}))
            if i == 10:
                big = txn.create_candidate({**candidate("size-big", sha), "note": "x" * 120_000})
    deliver(outbox, 60)
    failed = outbox.failed()
    assert [(f["kind"], f["candidate_id"]) for f in failed] == [("create", big)]
    assert failed[0]["error"].startswith("413 ")
    assert outbox.stats() == {"sent": 21, "retried": 0, "failed": 1, "depth": 0}
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted(ids)
    # Only the body over the limit, sent alone (it fills a batch by itself): no batch was.
    assert api_requests(api_server, 'method="POST"', 'status="413"') == 1


class Proxy(ApiClient):
    """The producer's client behind a proxy that records the creates and patches it forwards,
    and answers the first ``lose`` patches with a 503 of its own once the API has done them:
    their answers are lost."""

    def __init__(self, api_server: Any, lose: int = 0) -> None:
        super().__init__(api_server.url, api_server.tokens["producer"], timeout=5)
        self.sent: list[tuple[str, Any, str]] = []  # (request, body, idempotency key)
        self.lose = lose

    def create_candidate(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        self.sent.append(("POST", body, idempotency_key))
        return super().create_candidate(body, idempotency_key)

    def create_batch(self, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        self.sent.append(("BATCH", [body for _key, body in items], ""))
        return super().create_batch(items)

    def patch_candidate(
        self, candidate_id: str, patch: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        self.sent.append((f"PATCH {candidate_id}", patch, idempotency_key))
        answer = super().patch_candidate(candidate_id, patch, idempotency_key)
        if self.lose > 0:
            self.lose -= 1
            raise ApiError(503, {"title": "Service Unavailable"})
        return answer


def held_candidate(api_server: Any, event_id: str, seed: int) -> tuple[str, str]:
    """(evidence, candidate) the API holds for ``event_id`` already, under an id of its own."""
    client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
    sha = client.put_evidence(jpeg(seed), "image/jpeg")
    body = {**candidate(event_id, sha), "id": str(uuid.uuid4())}
    return sha, client.create_candidate(body, str(uuid.uuid4()))["id"]


@pytest.mark.parametrize("when", ["after-the-answer", "before-the-answer", "in-its-batch"])
def test_bodies_name_the_candidate_the_api_answered_a_create_with(
    api_server: Any, tmp_path: Path, when: str
) -> None:
    """A producer that lost its state creates an event the API holds again, under a new id,
    and then a new episode or alarm that references it. Queued after the API's answer, or
    before it but sent in a later batch, the reference and the bridge's alarm ids (its
    candidate ids) name the API's candidate. Sent in the same batch, before the answer was
    known, the create keeps naming the producer's id: a retry must send the body it first
    sent. The patch queued before the answer names the API's candidate in every case."""
    sha, held = held_candidate(api_server, "named-1", 70)
    proxy = Proxy(api_server)
    outbox = Outbox(tmp_path / "outbox-test.db", proxy, component="test")
    if when == "before-the-answer":
        outbox.MAX_BATCH = 2  # the third create waits for the next round
    with outbox.transaction() as txn:
        again = txn.create_candidate(candidate("named-1", sha))
        plain = txn.create_candidate(candidate("named-2", sha))
        txn.patch_candidate(again, {"alarm": {"alarm_id": again, "count": 2}})
    if when == "after-the-answer":
        deliver(outbox)
    new, refs = str(uuid.uuid4()), [again, plain, again.upper()]
    with outbox.transaction() as txn:
        alarm = {"alarm_id": new, "previous_alarm_id": again}
        txn.create_candidate({**candidate("named-3", sha), "references": refs, "alarm": alarm}, new)
    deliver(outbox)
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 4, "retried": 0, "failed": 0, "depth": 0}
    requests = ["BATCH", f"PATCH {held}"] + (["POST"] if when != "in-its-batch" else [])
    assert [request for request, _body, _key in proxy.sent] == requests
    with api_server.client("reviewer") as http:
        doc = http.get(f"/candidates/{new}").json()
        if when == "in-its-batch":
            assert (doc["references"], doc["alarm"]["previous_alarm_id"]) == (refs, again)
        else:
            assert doc["references"] == [held, plain]
            assert doc["alarm"] == {"alarm_id": new, "previous_alarm_id": held}
        assert http.get(f"/candidates/{held}").json()["alarm"] == {"alarm_id": held, "count": 2}
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted([held, plain, new])


def test_a_chain_of_creates_goes_in_one_batch(api_server: Any, tmp_path: Path) -> None:
    """Creates that each name the one before (an alarm raised again after its clear, a zone's
    next episode) go in one batch like any others, and reach the API as queued."""
    proxy = Proxy(api_server)
    outbox = Outbox(tmp_path / "outbox-chain.db", proxy, component="chain")
    ids: list[str] = []
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(80), "image/jpeg")
        for i in range(50):
            cid, previous = str(uuid.uuid4()), ids[-1] if ids else None
            body = {**candidate(f"chain-{i}", sha), "references": ids[-1:]}
            body["alarm"] = {"alarm_id": cid, "previous_alarm_id": previous}
            ids.append(txn.create_candidate(body, cid))
    deliver(outbox)
    assert outbox.stats() == {"sent": 51, "retried": 0, "failed": 0, "depth": 0}
    assert [request for request, _body, _key in proxy.sent] == ["BATCH"]
    assert [body["id"] for body in proxy.sent[0][1]] == ids
    docs = {c["id"]: c for c in all_candidates(api_server)}
    assert [docs[cid]["references"] for cid in ids] == [[]] + [[cid] for cid in ids[:-1]]
    assert [docs[cid]["alarm"]["previous_alarm_id"] for cid in ids] == [None, *ids[:-1]]


def test_a_retry_sends_the_body_first_sent_though_an_alias_came_between(
    api_server: Any, tmp_path: Path
) -> None:
    """A patch that names a candidate whose create is queued after it is sent in an earlier
    round (two creates a batch cut the window before that create), and its answer lost; that
    create is then answered with the API's candidate of another id. The retry sends the body
    first sent, under the same key: the API replays its answer instead of refusing another
    body under that key (422), which would lose the patch."""
    sha, held = held_candidate(api_server, "later-x", 90)
    proxy = Proxy(api_server, lose=1)
    outbox = Outbox(tmp_path / "outbox-test.db", proxy, component="test")
    outbox.MAX_BATCH = 2
    later = str(uuid.uuid4())
    with outbox.transaction() as txn:
        cid = txn.create_candidate(candidate("later-c", sha))
        other = txn.create_candidate(candidate("later-a", sha))
        txn.patch_candidate(cid, {"references": [later]})
        b = txn.create_candidate({**candidate("later-b", sha), "references": [other]})
        txn.create_candidate(candidate("later-x", sha), later)
    deliver(outbox)
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 5, "retried": 1, "failed": 0, "depth": 0}
    requests = [request for request, _body, _key in proxy.sent]
    assert requests == ["BATCH", f"PATCH {cid}", "BATCH", f"PATCH {cid}"]
    assert [body["id"] for body in proxy.sent[2][1]] == [b, later]
    patches = [proxy.sent[1], proxy.sent[3]]
    assert patches[0] == patches[1] == (f"PATCH {cid}", {"references": [later]}, patches[0][2])
    assert api_requests(api_server, 'method="PATCH"', 'status="200"') == 2
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{cid}").json()["references"] == [later]
        assert http.get(f"/candidates/{later}").status_code == 404  # the API's is ``held``
    assert held in {c["id"] for c in all_candidates(api_server)}


def test_a_create_a_previous_version_sent_is_retried_as_it_was_sent(
    api_server: Any, tmp_path: Path
) -> None:
    """An outbox file carried over an upgrade: the previous version, which rewrote no body,
    recorded an alias, then sent a create naming the producer's id and lost the answer. The
    retry sends that body under that key: the API replays its answer (201), and the producer
    does not take the candidate for closed."""
    sha, held = held_candidate(api_server, "upgrade-1", 100)
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        again = txn.create_candidate(candidate("upgrade-1", sha))
    deliver(outbox)
    new, key = str(uuid.uuid4()), str(uuid.uuid4())
    body = {**candidate("upgrade-2", sha), "references": [again], "id": new}
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        conn.execute(  # as the previous version queued it
            "INSERT INTO outbox_ops (kind, candidate_id, idempotency_key, payload, created_at)"
            " VALUES ('create', ?, ?, ?, ?)",
            (new, key, json.dumps(body).encode(), time.time()),
        )
        conn.commit()
    client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
    created = 'method="POST"', 'route="/api/v1/candidates"', 'status="201"'
    client.create_candidate(body, key)  # its attempt, whose answer was lost
    before = api_requests(api_server, *created)
    deliver(outbox)
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 2, "retried": 0, "failed": 0, "depth": 0}
    assert api_requests(api_server, *created) == before + 1
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        assert not candidate_closed(conn, new)
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{new}").json()["references"] == [again]
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted([held, new])


class LoseOneAnswer(Proxy):
    """A proxy that answers the last create of the first ``lose`` batches with a 503 of its own
    once the API has stored it: that answer is lost, the others arrive. It records a batch's
    items as (idempotency key, body)."""

    def create_batch(self, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        results = super().create_batch(items)
        self.sent[-1] = ("BATCH", [(key, body) for key, body in items], "")
        if self.lose > 0:
            self.lose -= 1
            results[-1] = {"status": 503, "body": {"title": "Service Unavailable"}}
        return results


def test_a_create_of_a_batch_answered_in_part_is_retried_as_it_was_sent(
    api_server: Any, tmp_path: Path
) -> None:
    """A batch of two creates, the second naming the first: the API answers the first with
    its candidate of another id, and the second's answer is lost after the API stored it.
    The second was sent naming the producer's id, so its retry sends that body under the same
    key: the API replays its answer instead of refusing another body under that key (422),
    which would refuse the create for good."""
    sha, held = held_candidate(api_server, "part-x", 110)
    proxy = LoseOneAnswer(api_server, lose=1)
    outbox = Outbox(tmp_path / "outbox-part.db", proxy, component="part")
    with outbox.transaction() as txn:
        x = txn.create_candidate(candidate("part-x", sha))
        q = txn.create_candidate({**candidate("part-q", sha), "references": [x]})
    deliver(outbox)
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 2, "retried": 1, "failed": 0, "depth": 0}
    assert [request for request, _body, _key in proxy.sent] == ["BATCH", "POST"]
    batch, retry = proxy.sent[0][1], proxy.sent[1]
    assert [body["id"] for _key, body in batch] == [x, q]
    assert (retry[2], retry[1]) == batch[1]
    assert retry[1]["references"] == [x]
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{q}").json()["references"] == [x]
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted([held, q])


CRASHING_DELIVERY = """
import os, sys
from gridpatrol.api.client import ApiClient, Outbox

class Crashing(Outbox):
    MAX_BATCH = 1  # the aliased create alone: the creates after it are queued, not sent
    REWRITE_CHUNK = 1

    def _connect(self):
        conn = super()._connect()
        chunks = []

        def trace(sql):  # the process dies inside the rewrite's second transaction
            if sql.startswith("UPDATE outbox_rewrites"):
                chunks.append(sql)
                if len(chunks) == 2:
                    os._exit(3)

        conn.set_trace_callback(trace)
        return conn

outbox = Crashing(sys.argv[1], ApiClient(sys.argv[2], sys.argv[3], timeout=5), component="t")
outbox.start()
outbox.flush(30)
"""


class StoppedInTheRewrite(Outbox):
    """Rewrites one body a transaction, and holds its first rewrite transaction open until
    the outbox is told to stop."""

    REWRITE_CHUNK = 1

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rewriting = threading.Event()

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()

        def trace(sql: str) -> None:
            if sql.startswith("UPDATE outbox_rewrites") and not self.rewriting.is_set():
                self.rewriting.set()
                self._stop.wait(30)

        conn.set_trace_callback(trace)
        return conn


def test_a_stop_during_a_rewrite_ends_delivery_before_anything_more_is_sent(
    api_server: Any, tmp_path: Path
) -> None:
    """A rewrite a crash cut short is finished when delivery starts again; a stop meanwhile
    ends delivery there, and the next start finishes it."""
    sha, held = held_candidate(api_server, "stop-x", 121)
    path = tmp_path / "outbox-stop.db"
    with Outbox(path, None, component="t").transaction() as txn:
        x = txn.create_candidate(candidate("stop-x", sha))
        ids = [
            txn.create_candidate({**candidate(f"stop-{i}", sha), "references": [x]})
            for i in range(3)
        ]
    token = api_server.tokens["producer"]
    run = [sys.executable, "-c", CRASHING_DELIVERY, str(path), api_server.url, token]
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 3

    outbox = StoppedInTheRewrite(path, ApiClient(api_server.url, token, timeout=5), component="t")
    outbox.start()
    assert outbox.rewriting.wait(30)
    outbox.stop()
    assert [t for t in threading.enumerate() if t.name == "outbox-t"] == []
    assert outbox.depth() == 3
    assert [c["id"] for c in all_candidates(api_server)] == [held]

    deliver(Outbox(path, ApiClient(api_server.url, token, timeout=5), component="t"))
    with api_server.client("reviewer") as http:
        assert [http.get(f"/candidates/{c}").json()["references"] for c in ids] == [[held]] * 3


class SlowBatch(ApiClient):
    """The producer's client; its create batches wait for ``release`` once they are ``in``
    (the API slow to answer them)."""

    def __init__(self, api_server: Any) -> None:
        super().__init__(api_server.url, api_server.tokens["producer"], timeout=5)
        self.batch_in = threading.Event()
        self.release = threading.Event()

    def create_batch(self, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        self.batch_in.set()
        assert self.release.wait(30)
        return super().create_batch(items)


def test_a_stop_during_a_round_is_quiet_and_loses_nothing(
    api_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """stop() while a create batch waits for its answer, which comes after: the round ends
    without sending the patches behind it, with no error logged, and the next start
    delivers them."""
    path = tmp_path / "outbox-stop.db"
    client = SlowBatch(api_server)
    outbox = Outbox(path, client, component="t")
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(130), "image/jpeg")
        ids = [txn.create_candidate(candidate(f"quiet-{i}", sha)) for i in range(2)]
        txn.patch_candidate(ids[0], {"detection": {"dwell_s": 40}})
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.client")
    outbox.start()
    thread = outbox._thread
    assert thread is not None and client.batch_in.wait(30)
    outbox.stop(timeout=0)
    client.release.set()
    thread.join(30)
    assert not thread.is_alive()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert outbox.stats() == {"sent": 3, "retried": 0, "failed": 0, "depth": 1}

    deliver(Outbox(path, producer(api_server, tmp_path, "stop").client, component="t"))
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{ids[0]}").json()["detection"]["dwell_s"] == 40


def test_a_rewrite_a_crash_cut_short_is_finished_before_anything_is_sent(
    api_server: Any, tmp_path: Path
) -> None:
    """The bodies already queued when an alias is recorded are rewritten a few at a time, in
    transactions of their own, so producers are not held up by a whole backlog. A process
    that dies between two of them leaves some bodies naming the producer's id: the next
    delivery finishes the rewrite before it sends any, and every body names the API's id."""
    sha, held = held_candidate(api_server, "crash-x", 120)
    path = tmp_path / "outbox-crash.db"
    with Outbox(path, None, component="t").transaction() as txn:
        x = txn.create_candidate(candidate("crash-x", sha))
        alarm = {"alarm_id": x, "count": 2}
        ids = [
            txn.create_candidate({**candidate(f"crash-{i}", sha), "references": [x]})
            for i in range(3)
        ]
        txn.patch_candidate(x, {"alarm": alarm})
    token = api_server.tokens["producer"]
    run = [sys.executable, "-c", CRASHING_DELIVERY, str(path), api_server.url, token]
    crashed = subprocess.run(run, capture_output=True, timeout=60)
    assert crashed.returncode == 3, crashed.stderr.decode()
    outbox = Outbox(path, ApiClient(api_server.url, token, timeout=5), component="t")
    deliver(outbox)
    assert outbox.failed() == []
    assert outbox.stats() == {"sent": 4, "retried": 0, "failed": 0, "depth": 0}
    with api_server.client("reviewer") as http:
        assert [http.get(f"/candidates/{c}").json()["references"] for c in ids] == [[held]] * 3
        assert http.get(f"/candidates/{held}").json()["alarm"] == alarm | {"alarm_id": held}
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted([held, *ids])


def queue_as_an_older_version(path: Path, kind: str, candidate_id: str, body: Any) -> None:
    """Queue an operation as a version that encoded bodies with ``json.dumps`` defaults did:
    NaN and Infinity written as such, which no request can carry."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "INSERT INTO outbox_ops (kind, candidate_id, idempotency_key, payload, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (kind, candidate_id, str(uuid.uuid4()), json.dumps(body).encode(), time.time()),
        )
        conn.commit()


NOT_JSON = "Out of range float values are not JSON compliant"


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "in-a-batch"])
def test_an_operation_no_request_can_carry_is_failed_and_holds_up_nothing(
    api_server: Any, tmp_path: Path, batched: bool
) -> None:
    """A create and a patch with Infinity or NaN in a file an older version wrote: each is
    failed for good, unsent, and the operations queued after them are delivered."""
    outbox = producer(api_server, tmp_path)
    bad = str(uuid.uuid4())
    with outbox.transaction() as txn:
        sha = txn.add_evidence(jpeg(130), "image/jpeg")
        first = txn.create_candidate(candidate("unsendable-1", sha))
    if not batched:
        deliver(outbox)
    poisoned = candidate("unsendable-2", sha)
    poisoned["detection"]["score"] = float("inf")
    queue_as_an_older_version(outbox.path, "create", bad, {**poisoned, "id": bad})
    with outbox.transaction() as txn:
        second = txn.create_candidate(candidate("unsendable-3", sha))
    queue_as_an_older_version(outbox.path, "patch", first, {"detection": {"dwell_s": math.nan}})
    queue_as_an_older_version(outbox.path, "patch", bad, {"description": "never sent"})
    with outbox.transaction() as txn:
        txn.patch_candidate(first, {"detection": {"dwell_s": 40}})
    deliver(outbox)
    failed = outbox.failed()
    assert [(f["kind"], f["candidate_id"]) for f in failed] == [
        ("create", bad),
        ("patch", first),
        ("patch", bad),
    ]
    assert [f["error"].split(" ", 1)[0] for f in failed] == ["0", "0", "0"]
    assert NOT_JSON in failed[0]["error"] and NOT_JSON in failed[1]["error"]
    assert "not sent: the outbox failed this candidate's create" in failed[2]["error"]
    assert outbox.stats() == {"sent": 4, "retried": 0, "failed": 3, "depth": 0}
    with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
        assert candidate_closed(conn, bad)
        assert not candidate_closed(conn, first)
    assert sorted(c["id"] for c in all_candidates(api_server)) == sorted([first, second])
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{first}").json()["detection"]["dwell_s"] == 40


def test_a_request_that_cannot_be_built_fails_its_operation_alone(
    api_server: Any, tmp_path: Path
) -> None:
    """A content type httpx cannot put in a header (not ASCII): that upload is failed for
    good, unsent, and the round goes on."""
    outbox = producer(api_server, tmp_path)
    with outbox.transaction() as txn:
        txn.add_evidence(jpeg(131), "imäge/jpeg")
        sha = txn.add_evidence(jpeg(132), "image/jpeg")
        cid = txn.create_candidate(candidate("unbuildable-1", sha))
    deliver(outbox)
    (failed,) = outbox.failed()
    assert (failed["kind"], failed["error"].split(" ", 1)[0]) == ("evidence", "0")
    assert "'ascii' codec can't encode character" in failed["error"]
    assert outbox.stats() == {"sent": 2, "retried": 0, "failed": 1, "depth": 0}
    assert [c["id"] for c in all_candidates(api_server)] == [cid]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["create", "patch"])
def test_a_body_no_request_can_carry_is_not_queued(tmp_path: Path, kind: str, value: float) -> None:
    """The producer hears of it at once, in its own transaction, which rolls back."""
    outbox = Outbox(tmp_path / "outbox-nan.db", None, component="t")
    cid = str(uuid.uuid4())
    with pytest.raises(UnsendableOperation) as err, outbox.transaction() as txn:
        txn.create_candidate(candidate("nan-0", "0" * 64))
        if kind == "create":
            txn.create_candidate({**candidate("nan-1", "0" * 64), "score": value}, cid)
        else:
            txn.patch_candidate(cid, {"detection": {"dwell_s": value}})
    assert str(err.value) == (
        f"{kind} of candidate {cid} not queued: no request can carry its body: {NOT_JSON}"
    )
    assert outbox.depth() == 0


def test_the_client_sends_no_request_it_cannot_encode() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": "x"})

    client = ApiClient("http://api.invalid", "token")
    client._http = httpx.Client(
        base_url="http://api.invalid/api/v1", transport=httpx.MockTransport(answer)
    )
    with pytest.raises(UnsendableOperation) as err:
        client.patch_candidate(str(uuid.uuid4()), {"detection": {"dwell_s": math.inf}}, "k")
    assert str(err.value).endswith(f"no request can carry it: {NOT_JSON}")
    assert client.create_candidate({"id": "x"}, "k") == {"id": "x"}
    assert [r.method for r in sent] == ["POST"]


def test_no_link_to_a_candidate_whose_create_was_refused(api_server: Any, tmp_path: Path) -> None:
    """A create refused for good (409: the id is another producer's candidate), then the next
    episode or alarm, which references it: the create is queued without that reference and
    with no previous alarm, so it is not linked to the other producer's candidate. A reference
    to a candidate closed later (rejected by a reviewer: its patch answered 410) is kept: that
    candidate is the producer's own at the API."""
    first, second = producer(api_server, tmp_path, "first"), producer(api_server, tmp_path, "two")
    taken, rejected = str(uuid.uuid4()), str(uuid.uuid4())
    with first.transaction() as txn:
        sha = txn.add_evidence(jpeg(80), "image/jpeg")
        txn.create_candidate(candidate("link-1", sha), taken)
    deliver(first)
    with second.transaction() as txn:
        txn.create_candidate(candidate("link-2", sha), taken)
        txn.create_candidate(candidate("link-3", sha), rejected)
    deliver(second)
    rejected_then_patched(api_server, second, rejected, rejected)
    assert [(f["kind"], f["candidate_id"], f["error"][:4]) for f in second.failed()] == [
        ("create", taken, "409 "),
        ("patch", rejected, "410 "),
    ]
    with contextlib.closing(sqlite3.connect(second.path)) as conn:
        assert (candidate_closed(conn, taken), candidate_closed(conn, rejected)) == (True, True)

    after, kept = str(uuid.uuid4()), str(uuid.uuid4())
    with second.transaction() as txn:
        alarm = {"alarm_id": after, "previous_alarm_id": taken.upper()}
        body = {**candidate("link-4", sha), "references": [taken.upper()], "alarm": alarm}
        txn.create_candidate(body, after)
        alarm = {"alarm_id": kept, "previous_alarm_id": rejected}
        body = {**candidate("link-5", sha), "references": [taken, rejected], "alarm": alarm}
        txn.create_candidate(body, kept)
    with contextlib.closing(sqlite3.connect(second.path)) as conn:
        queued = {
            cid: json.loads(payload)
            for cid, payload in conn.execute(
                "SELECT candidate_id, payload FROM outbox_ops WHERE state = 'pending'"
            ).fetchall()
        }
    assert ("references" in queued[after], queued[after]["alarm"]) == (
        False,
        {"alarm_id": after, "previous_alarm_id": None},
    )
    assert (queued[kept]["references"], queued[kept]["alarm"]) == (
        [rejected],
        {"alarm_id": kept, "previous_alarm_id": rejected},
    )
    deliver(second)
    assert second.stats()["failed"] == 2
    with api_server.client("reviewer") as http:
        docs = {cid: http.get(f"/candidates/{cid}").json() for cid in (after, kept, taken)}
    assert ("references" in docs[after], docs[after]["alarm"]) == (
        False,
        {"alarm_id": after, "previous_alarm_id": None},
    )
    assert (docs[kept]["references"], docs[kept]["alarm"]["previous_alarm_id"]) == (
        [rejected],
        rejected,
    )
    assert docs[taken]["source"]["source_event_id"] == "link-1"


def test_the_refused_creates_of_a_body_are_looked_up_by_candidate(tmp_path: Path) -> None:
    # Looked up for every queued operation that names a candidate: by the state index it walks
    # every refusal the file keeps.
    path = tmp_path / "outbox.db"
    Outbox(path, ApiClient("http://127.0.0.1:9", "t"), component="plan").stop()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        query = REFUSED_CREATES.format(marks="?,?")
        plan = conn.execute(f"EXPLAIN QUERY PLAN {query}", ["a", "b"]).fetchall()
    assert [row[-1] for row in plan] == [
        "SEARCH outbox_ops USING INDEX outbox_ops_refused_creates (candidate_id=?)"
    ]
