"""What an outbox keeps of operations the API refused for good: the record, not the bytes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from gridpatrol.api.client import ApiClient, Outbox, candidate_closed

# A refused medium (the API takes JPEG evidence); large, as camera frames are.
REFUSED = b"GIF89a" + bytes(2 << 20)


def payload_sizes(path: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT kind, state, length(payload) FROM outbox_ops ORDER BY seq")
        return [(k, s, int(n)) for k, s, n in rows.fetchall()]


def show(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "outbox", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_refused_evidence_keeps_its_record_without_its_bytes(
    api_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "outbox-detect.db"
    client = ApiClient(api_server.url, api_server.tokens["producer"], timeout=5)
    outbox = Outbox(path, client, component="detect")
    with outbox.transaction() as txn:
        txn.add_evidence(REFUSED, "image/gif")
    outbox.start()
    try:
        assert outbox.flush(30)
    finally:
        outbox.stop()
    assert payload_sizes(path) == [("evidence", "failed", 0)]
    assert "refused: evidence evidence: 415 " in show(path)


def test_refused_evidence_bytes_an_older_file_kept_go_when_it_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "outbox-detect.db"
    Outbox(path, None, component="detect")  # the schema
    with sqlite3.connect(path) as conn:  # as an older producer left a refusal
        conn.execute(
            "INSERT INTO outbox_ops (kind, payload, content_type, sha256, state, last_error,"
            " created_at) VALUES ('evidence', ?, 'image/gif', ?, 'failed', '415 {}', 0)",
            (REFUSED, "0" * 64),
        )
    assert "refused: evidence evidence: 415 {}" in show(path)
    # Showing only reads the file; a worker or a drain opening it drops the bytes.
    assert payload_sizes(path) == [("evidence", "failed", len(REFUSED))]
    Outbox(path, None, component="detect")
    assert payload_sizes(path) == [("evidence", "failed", 0)]


def test_a_refused_candidate_is_looked_up_by_its_id(tmp_path: Path) -> None:
    """Every update or end of a detector's candidate asks whether it was refused: an index
    answers, not a scan of the failed operations."""
    path = tmp_path / "outbox-detect.db"
    outbox = Outbox(path, None, component="detect")
    cid = str(uuid.uuid4())
    with outbox.transaction() as txn:
        txn.patch_candidate(cid, {"detection": {"dwell_s": 10}})
        txn.conn.execute("UPDATE outbox_ops SET state = 'failed', last_error = '410 {}'")
    with sqlite3.connect(path) as conn:
        asked: list[str] = []
        conn.set_trace_callback(asked.append)
        assert candidate_closed(conn, cid)
        assert not candidate_closed(conn, str(uuid.uuid4()))
        conn.set_trace_callback(None)
        plan = conn.execute("EXPLAIN QUERY PLAN " + asked[0]).fetchall()
    assert [row[3] for row in plan] == [
        "SEARCH outbox_ops USING INDEX outbox_ops_failed (candidate_id=?)"
    ]
