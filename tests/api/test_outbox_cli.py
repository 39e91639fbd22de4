"""``gridpatrol outbox FILE [--drain]``: what a producer's file holds, delivered by hand."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gridpatrol.alarm_bridge import store
from gridpatrol.alarm_bridge.lifecycle import AlarmState
from gridpatrol.api.client import Outbox, candidate_closed
from gridpatrol.detectors import episodes

from .test_client_holds import mocked


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "outbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
    )


def producer_env(api_server: Any) -> dict[str, str]:
    """The environment of a producer that delivers to the test's API."""
    return {
        **os.environ,
        "GRIDPATROL_API_URL": api_server.url,
        "GRIDPATROL_API_TOKEN": api_server.tokens["producer"],
    }


def left_behind(path: Path) -> str:
    """A shard's file after its worker went away: evidence and a candidate not delivered."""
    box = Outbox(path, None, component="detect-1-of-2")
    with box.transaction() as txn:
        sha = txn.add_evidence(b'{"trace": []}', "application/json")
        return txn.create_candidate(
            {
                "source": {
                    "type": "camera",
                    "system": "gridpatrol-detect",
                    "camera_id": "cam-1",
                    "source_event_id": "cam-1:kerb:illegal_parking:1",
                },
                "type": "illegal_parking",
                "description": "违章停车 / Illegal parking",
                "occurred_at": datetime(2026, 11, 29, 8, 0, tzinfo=UTC).isoformat(),
                "location": {"lat": 31.28, "lon": 121.45},
                "severity": "MINOR",
                "urgency": "normal",
                "evidence": [{"sha256": sha, "kind": "clean"}],
            }
        )


def test_a_left_behind_outbox_is_shown_then_drained(api_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "outbox-detect-1-of-2.db"
    cid = left_behind(path)
    shown = run(str(path))
    assert (shown.returncode, shown.stdout) == (0, f"{path}: 2 operation(s) pending\n")

    env = producer_env(api_server)
    running = Outbox(path, None, component="detect-1-of-2")
    running.claim()  # its worker still runs: the file is not drained behind its back
    try:
        busy = run(str(path), "--drain", env=env)
    finally:
        running.stop()
    assert busy.returncode == 2
    assert busy.stderr == (
        f"outbox {path} is in use by another process; stop the worker that delivers from it first\n"
    )

    drained = run(str(path), "--drain", env=env)
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout == f"{path}: 2 delivered, 0 pending, 0 refused\n"
    with api_server.client("reviewer") as http:
        assert http.get(f"/candidates/{cid}").json()["status"] == "new"


def test_no_such_file_or_no_token_is_a_setup_error(tmp_path: Path) -> None:
    missing = run(str(tmp_path / "nothing.db"))
    assert missing.returncode == 2
    assert f"outbox: no such file {tmp_path / 'nothing.db'}" in missing.stderr
    assert not (tmp_path / "nothing.db").exists()
    path = tmp_path / "outbox.db"
    left_behind(path)
    env = {k: v for k, v in os.environ.items() if k != "GRIDPATROL_API_TOKEN"}
    no_token = run(str(path), "--drain", env=env)
    assert no_token.returncode == 2
    assert "GRIDPATROL_API_TOKEN is not set" in no_token.stderr


def tables_and_journal(path: Path) -> tuple[list[str], str]:
    with sqlite3.connect(path) as conn:
        names = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    return [name for (name,) in names], mode


@pytest.mark.parametrize("drain", [[], ["--drain"]])
def test_a_sqlite_file_that_is_no_outbox_is_refused_untouched(
    tmp_path: Path, drain: list[str]
) -> None:
    # Opened as an outbox, it was given the outbox's tables and switched to WAL.
    path = tmp_path / "site.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE readings (at TEXT, value REAL)")
    conn.close()
    before = tables_and_journal(path)
    assert before == (["readings"], "delete")
    env = {**os.environ, "GRIDPATROL_API_URL": "http://127.0.0.1:9", "GRIDPATROL_API_TOKEN": "t"}
    done = run(str(path), *drain, env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"outbox: {path} is not an outbox file\n"
    assert tables_and_journal(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.db"]


def test_a_file_that_is_no_sqlite_database_is_one_line_and_status_2(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but long enough to have a header's length of text\n" * 4)
    done = run(str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"outbox: {path} cannot be read: file is not a database\n"


@pytest.mark.parametrize("timeout", ["nan", "-5", "0", "inf"])
def test_a_drain_timeout_that_is_no_positive_number_is_a_usage_error(
    tmp_path: Path, timeout: str
) -> None:
    # NaN drained for ever; -5 gave up at once, with status 1.
    path = tmp_path / "outbox.db"
    left_behind(path)
    done = run(str(path), "--drain", "--timeout", timeout)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == (
        "gridpatrol outbox: error: argument --timeout: must be a positive number of seconds, "
        f"got {timeout!r}"
    )


def test_ctrl_c_while_draining_is_one_line_and_status_130(tmp_path: Path) -> None:
    """Ctrl-C while the API is down: a traceback (status -2) before."""
    path = tmp_path / "outbox.db"
    left_behind(path)
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "GRIDPATROL_API_URL": f"http://127.0.0.1:{closed.getsockname()[1]}",
            "GRIDPATROL_API_TOKEN": "tok-producer",
        }
        command = ["outbox", str(path), "--drain", "--timeout", "30"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridpatrol.cli", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()  # the first delivery failed: it drains
            assert " not delivered ([Errno 111] Connection refused); retrying in " in first
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert (proc.returncode, out) == (130, "")
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "gridpatrol outbox: interrupted"
    assert Outbox(path, None, component="check").depth() == 2


def parked_episode(cid: str) -> episodes.Episode:
    """The open episode of ``cid`` in a detector's book: seen from 08:00 to 08:07 UTC."""
    last_seen = datetime(2026, 11, 29, 8, 7, tzinfo=UTC)
    return episodes.Episode(
        camera_id="cam-1",
        zone_id="kerb",
        type="illegal_parking",
        candidate_id=cid,
        source_event_id="cam-1:kerb:illegal_parking:1",
        started_at=datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        reported_at=last_seen,
        last_event_at=last_seen,
        best_confidence=0.8,
        dwell_s=420.0,
    )


def test_a_retired_shards_open_episodes_end_at_their_last_sighting(
    api_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "outbox-detect-1-of-2.db"
    cid = left_behind(path)
    with Outbox(path, None, component="detect-1-of-2").transaction() as txn:
        episodes.ensure_schema(txn.conn)
        episodes.save_episode(txn.conn, parked_episode(cid))
    shown = run(str(path))
    assert shown.stdout.splitlines()[1:] == [
        f"open episode: camera cam-1 zone kerb illegal_parking, candidate {cid}, "
        "last seen 2026-11-29T08:07:00+00:00"
    ]

    env = producer_env(api_server)
    retired = run(str(path), "--end-episodes", env=env)
    assert retired.returncode == 0, retired.stderr
    assert retired.stdout.splitlines() == [
        f"ended candidate {cid} (camera cam-1 zone kerb illegal_parking) at its last sighting "
        "2026-11-29T08:07:00+00:00",
        f"{path}: 3 delivered, 0 pending, 0 refused",
    ]
    assert episodes.open_episodes(path) == []
    with api_server.client("reviewer") as http:
        detection = http.get(f"/candidates/{cid}").json()["detection"]
    assert detection == {
        "score": 0.8,
        "zone_id": "kerb",
        "dwell_s": 420.0,
        "ended_at": "2026-11-29T08:07:00+00:00",
        "started_at": "2026-11-29T08:00:00+00:00",
    }


def test_a_retired_shards_episode_of_a_rejected_candidate_ends_without_a_patch(
    api_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "outbox-detect-1-of-2.db"
    cid = left_behind(path)
    env = producer_env(api_server)
    assert run(str(path), "--drain", env=env).returncode == 0
    with api_server.client("reviewer") as http:
        decision = {"decision": "reject", "reason_code": "false_positive"}
        assert http.post(f"/candidates/{cid}/review", json=decision).status_code == 200
    # The worker's last update, sent after the rejection, was refused for good (410).
    with Outbox(path, None, component="detect-1-of-2").transaction() as txn:
        txn.patch_candidate(cid, {"detection": {"dwell_s": 400.0}})
        episodes.ensure_schema(txn.conn)
        episodes.save_episode(txn.conn, parked_episode(cid))
    refused = run(str(path), "--drain", env=env)
    assert refused.stdout == f"{path}: 0 delivered, 0 pending, 1 refused\n"

    retired = run(str(path), "--end-episodes", env=env)
    assert retired.returncode == 0, retired.stderr
    assert retired.stdout.splitlines() == [
        f"ended the episode of candidate {cid} (camera cam-1 zone kerb illegal_parking) at its "
        "last sighting 2026-11-29T08:07:00+00:00 in the book only: the API refused it for good, "
        "no end is sent",
        f"{path}: 0 delivered, 0 pending, 0 refused",
    ]
    assert episodes.open_episodes(path) == []


# A worker killed with operations in its write-ahead log: the file, its -wal and its -shm.
KILLED_WORKER = """
import os, sys
from gridpatrol.api.client import Outbox
with Outbox(sys.argv[1], None, component="detect-1-of-2").transaction() as txn:
    txn.add_evidence(b'{"trace": []}', "application/json")
    txn.add_evidence(b'{"trace": [1]}', "application/json")
os._exit(0)  # no close: the log is not checkpointed into the file
"""


def outbox_left(folder: Path, how: str) -> Path:
    """An outbox with 2 operations pending, left in ``folder`` by a worker that was killed
    ("killed"), the same without its -shm ("no shm"), or one closed cleanly ("closed")."""
    folder.mkdir()
    path = folder / "outbox.db"
    if how == "closed":
        worker = folder.parent / "worker.db"
        left_behind(worker)
        with (
            contextlib.closing(sqlite3.connect(worker)) as src,
            contextlib.closing(sqlite3.connect(path)) as dst,
        ):
            src.backup(dst)
        assert path.read_bytes()[18:20] == b"\x02\x02"  # still a WAL file
    else:
        done = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(path)], timeout=60)
        assert done.returncode == 0
        if how == "no shm":
            (folder / "outbox.db-shm").unlink()
    return path


def in_read_only_mount(folder: str | Path, script: str) -> list[str]:
    """The command that runs ``script`` with ``folder`` mounted read-only over itself, in a
    mount namespace of its own: gone with it, nothing to unmount, unseen by other processes."""
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0"'
    return ["unshare", "-m", "sh", "-c", f"{mount} && {script}", str(folder)]


@functools.cache
def read_only_mounts() -> bool:
    """Whether this root may mount a folder read-only (not in every container)."""
    with tempfile.TemporaryDirectory() as folder:
        command = in_read_only_mount(folder, '! touch "$0/probe"')
        probe = subprocess.run(command, capture_output=True, timeout=30)
    return probe.returncode == 0


def run_read_only(folder: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``gridpatrol outbox`` by an operator who may read ``folder`` and its files but not
    write them: its permissions; for root, which ignores them, a read-only mount of it."""
    if os.geteuid() != 0:
        files = list(folder.iterdir())
        for path in files:
            path.chmod(0o444)
        folder.chmod(0o555)
        try:
            return run(*args, env=env)
        finally:
            folder.chmod(0o755)
            for path in files:
                path.chmod(0o644)
    if shutil.which("unshare") is None or not read_only_mounts():
        pytest.skip("root ignores permissions, and cannot mount a folder read-only here")
    cli = [sys.executable, "-m", "gridpatrol.cli", "outbox", *args]
    return subprocess.run(
        [*in_read_only_mount(folder, 'exec "$@"'), *cli],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
    )


def listing(folder: Path) -> list[tuple[str, bytes]]:
    return sorted((path.name, path.read_bytes()) for path in folder.iterdir())


@pytest.mark.parametrize("how", ["killed", "closed"])
def test_an_outbox_the_operator_may_not_write_is_shown(tmp_path: Path, how: str) -> None:
    # A traceback before ("attempt to write a readonly database") when killed; refused as
    # "cannot be read: unable to open database file" when closed (no -shm could be made).
    path = outbox_left(tmp_path / "worker", how)
    before = listing(path.parent)
    shown = run_read_only(path.parent, str(path))
    assert (shown.returncode, shown.stdout, shown.stderr) == (
        0,
        f"{path}: 2 operation(s) pending\n",
        "",
    )
    assert listing(path.parent) == before


def test_an_outbox_read_without_its_write_ahead_log_says_so(tmp_path: Path) -> None:
    path = outbox_left(tmp_path / "worker", "no shm")
    shown = run_read_only(path.parent, str(path))
    assert (shown.returncode, shown.stdout) == (0, f"{path}: 0 operation(s) pending\n")
    assert shown.stderr == (
        f"outbox: {path}: read without its write-ahead log, which cannot be opened here: "
        "the latest operations may be missing\n"
    )


@pytest.mark.parametrize("how", ["killed", "closed"])
def test_draining_an_outbox_the_operator_may_not_write_is_one_line_and_status_2(
    tmp_path: Path, how: str
) -> None:
    path = outbox_left(tmp_path / "worker", how)
    before = listing(path.parent)
    env = {**os.environ, "GRIDPATROL_API_URL": "http://127.0.0.1:9", "GRIDPATROL_API_TOKEN": "t"}
    drained = run_read_only(path.parent, str(path), "--drain", env=env)
    assert (drained.returncode, drained.stdout) == (2, "")
    assert drained.stderr.startswith(f"outbox: {path}: ")
    assert len(drained.stderr.splitlines()) == 1, drained.stderr
    assert listing(path.parent) == before


def refused(box: Outbox, queue: str, error: str, days_ago: float) -> str:
    """A candidate whose create (``queue`` 'create') or patch ('patch') the API refused
    ``days_ago`` days ago: its id."""
    with box.transaction() as txn:
        cid = txn.create_candidate({"type": "illegal_parking"})
        if queue == "patch":
            txn.patch_candidate(cid, {"detection": {"dwell_s": 40}})
        txn.conn.execute(
            "UPDATE outbox_ops SET state = 'failed', last_error = ?, created_at = ?"
            " WHERE candidate_id = ? AND kind = ?",
            (error, time.time() - days_ago * 86400, cid, queue),
        )
        txn.conn.execute(
            "DELETE FROM outbox_ops WHERE state = 'pending' AND candidate_id = ?", (cid,)
        )
    return cid


def episode(conn: sqlite3.Connection, zone: str, candidate_id: str, ended: bool) -> None:
    conn.execute(
        "INSERT INTO detector_episodes (camera_id, zone_id, type, candidate_id, source_event_id,"
        " started_at, reported_at, last_event_at, best_confidence, dwell_s, ended_at)"
        " VALUES ('cam-1', ?, 'illegal_parking', ?, ?, 0, 0, 0, 0.9, 40, ?)",
        (zone, candidate_id, f"cam-1:{zone}", 1.0 if ended else None),
    )


def test_old_refusals_are_pruned_but_those_of_the_episode_book(tmp_path: Path) -> None:
    """--prune-refused DAYS forgets the refused operations and aliases older than DAYS, but
    those of candidates the episode book still names, an ended episode's too (the next
    episode of its key references it): candidate_closed() and the alias still answer for
    them, so the worker keeps sending nothing of them."""
    path = tmp_path / "outbox-detect-1-of-2.db"
    box = Outbox(path, None, component="detect-1-of-2")
    open_create = refused(box, "create", '422 {"title": "invalid"}', 40)
    ended_create = refused(box, "create", '422 {"title": "invalid"}', 40)
    gone_create = refused(box, "create", '422 {"title": "invalid"}', 40)
    recent_create = refused(box, "create", '422 {"title": "invalid"}', 2)
    api_open, api_ended, api_gone = (refused(box, "patch", "410 {}", 40) for _ in range(3))
    local_open, local_ended, local_gone = (str(uuid.uuid4()) for _ in range(3))
    with box.transaction() as txn:
        sha = txn.add_evidence(b"{}", "application/json")
        txn.conn.execute(
            "UPDATE outbox_ops SET state = 'failed', last_error = '413 {}', payload = x'',"
            " created_at = ? WHERE sha256 = ?",
            (time.time() - 40 * 86400, sha),
        )
        pending = txn.create_candidate({"type": "illegal_parking"})  # old but not refused
        txn.conn.execute("UPDATE outbox_ops SET created_at = 0 WHERE candidate_id = ?", (pending,))
        txn.conn.executemany(
            "INSERT INTO outbox_aliases (local_id, server_id, created_at) VALUES (?, ?, ?)",
            [
                (local_open, api_open, 0.0),
                (local_ended, api_ended, 0.0),
                (local_gone, api_gone, 0.0),
            ],
        )
        episodes.ensure_schema(txn.conn)
        episode(txn.conn, "a", open_create, ended=False)
        episode(txn.conn, "b", ended_create, ended=True)
        episode(txn.conn, "c", local_open, ended=False)
        episode(txn.conn, "d", local_ended, ended=True)

    pruned = run(str(path), "--prune-refused", "30")
    assert (pruned.returncode, pruned.stderr) == (0, "")
    assert pruned.stdout == f"{path}: 3 refused operation(s) and 1 alias(es) forgotten\n"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        closed = [
            candidate_closed(conn, cid)
            for cid in (open_create, local_open, recent_create, ended_create, local_ended)
        ]
        assert closed == [True, True, True, True, True]
        assert [candidate_closed(conn, cid) for cid in (gone_create, local_gone)] == [False, False]
        kept = conn.execute("SELECT candidate_id, state FROM outbox_ops ORDER BY seq").fetchall()
        assert kept == [
            (open_create, "failed"),
            (ended_create, "failed"),
            (recent_create, "failed"),
            (api_open, "failed"),
            (api_ended, "failed"),
            (pending, "pending"),
        ]
        aliases = conn.execute(
            "SELECT local_id, server_id FROM outbox_aliases ORDER BY created_at, rowid"
        ).fetchall()
        assert aliases == [(local_open, api_open), (local_ended, api_ended)]


@dataclass(frozen=True)
class Raise:
    """A rule's raise, as episodes.step takes it."""

    zone_id: str
    t: datetime
    kind: str = "raise"
    rule: str = "illegal_parking"
    confidence: float = 0.9
    dwell_s: float = 40.0

    @property
    def first_seen(self) -> datetime:
        return self.t


def test_the_next_episode_references_an_ended_one_by_the_apis_id_after_a_prune(
    tmp_path: Path,
) -> None:
    """An ended episode whose create the API answered with the candidate it already held
    (an alias recorded 40 days ago): after --prune-refused 30, the next episode of its key
    still references it by the API's id, not by the local id the API never stored."""
    path = tmp_path / "outbox-detect-1-of-2.db"
    box = Outbox(path, None, component="detect-1-of-2")
    local, api = str(uuid.uuid4()), str(uuid.uuid4())
    with box.transaction() as txn:
        txn.conn.execute(
            "INSERT INTO outbox_aliases (local_id, server_id, created_at) VALUES (?, ?, ?)",
            (local, api, time.time() - 40 * 86400),
        )
        episodes.ensure_schema(txn.conn)
        episode(txn.conn, "a", local, ended=True)

    pruned = run(str(path), "--prune-refused", "30")
    assert (pruned.returncode, pruned.stderr) == (0, "")
    assert pruned.stdout == f"{path}: 0 refused operation(s) and 0 alias(es) forgotten\n"

    box = Outbox(path, None, component="detect-1-of-2")
    with box.transaction() as txn:
        book = episodes.load_book(txn.conn)
        fresh = str(uuid.uuid4())
        later = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
        _book, ops = episodes.step(
            book, "cam-1", Raise("a", later), update_s=120, resume_s=60, new_id=lambda: fresh
        )
        assert [(op.kind, op.episode.previous_id) for op in ops] == [("open", local)]
        txn.create_candidate({"type": "illegal_parking", "references": [local]}, fresh)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (payload,) = conn.execute(
            "SELECT payload FROM outbox_ops WHERE candidate_id = ?", (fresh,)
        ).fetchone()
    assert json.loads(payload)["references"] == [api]


def test_a_refused_create_with_pending_patches_is_kept(tmp_path: Path) -> None:
    """A create refused 40 days ago (409 candidate-id-taken: the id names another producer's
    candidate) with a patch of it still pending: --prune-refused 30 keeps the refusal, so
    delivery fails the patch unsent instead of changing the other producer's candidate."""
    path = tmp_path / "outbox-detect-1-of-2.db"
    box = Outbox(path, None, component="detect-1-of-2")
    taken = '409 {"type": "urn:gridpatrol:problem:candidate-id-taken", "status": 409}'
    cid = refused(box, "create", taken, 40)
    with box.transaction() as txn:
        txn.patch_candidate(cid, {"detection": {"dwell_s": 90}})
        txn.conn.execute(
            "UPDATE outbox_ops SET created_at = ? WHERE state = 'pending'",
            (time.time() - 40 * 86400,),
        )

    pruned = run(str(path), "--prune-refused", "30")
    assert (pruned.returncode, pruned.stderr) == (0, "")
    assert pruned.stdout == f"{path}: 0 refused operation(s) and 0 alias(es) forgotten\n"

    sent: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={"id": cid})

    box = Outbox(path, mocked(api), component="detect-1-of-2")
    box.start()
    try:
        assert box.flush(30)
    finally:
        box.stop()
    assert sent == []
    failed = box.failed()
    assert [(f["kind"], f["candidate_id"]) for f in failed] == [("create", cid), ("patch", cid)]
    assert failed[1]["error"].startswith("409 ")
    assert "not sent: the API refused this candidate's create (409 " in failed[1]["error"]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert candidate_closed(conn, cid)


@pytest.mark.parametrize("other", [["--drain"], ["--end-episodes"], ["--drain", "--end-episodes"]])
def test_pruning_with_a_drain_is_a_usage_error(tmp_path: Path, other: list[str]) -> None:
    """--prune-refused with --drain or --end-episodes: one line and status 2, the file as it
    was (pruning took the place of the drain, which reported nothing of it)."""
    path = tmp_path / "outbox.db"
    cid = left_behind(path)
    box = Outbox(path, None, component="detect-1-of-2")
    with box.transaction() as txn:
        episodes.ensure_schema(txn.conn)
        episode(txn.conn, "a", cid, ended=False)
    before = path.read_bytes()
    env = {**os.environ, "GRIDPATROL_API_URL": "http://127.0.0.1:9", "GRIDPATROL_API_TOKEN": "t"}
    done = run(str(path), "--prune-refused", "30", *other, env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "outbox: --prune-refused cannot be combined with --drain or --end-episodes: "
        "run them one after the other\n"
    )
    assert path.read_bytes() == before
    assert [ep.candidate_id for ep in episodes.open_episodes(path)] == [cid]


def test_the_alarm_bridges_alarms_keep_their_refusals(tmp_path: Path) -> None:
    """In the alarm bridge's file, the refusals of each sensor's active or last alarm, of its
    coalesced updates not yet queued and of the alarms whose snapshot it still awaits (pushed
    out of the alarm state by later alarms of the sensor and type) are kept; pruning is
    refused while the bridge runs."""
    path = tmp_path / "bridge.db"
    box = Outbox(path, None, component="alarm_bridge")
    last, pending, other = (refused(box, "patch", "410 {}", 40) for _ in range(3))
    # Its create refused: the id is another producer's candidate, which the snapshot's patch
    # must not reach.
    awaiting = refused(
        box, "create", "409 exists with another (source.system, source_event_id)", 40
    )
    with box.transaction() as txn:
        store.init(txn.conn)
        store.save_state(txn.conn, "mh-1", "manhole_tilt", AlarmState("normal", alarm_id=last))
        txn.conn.execute(
            "INSERT INTO bridge_pending_patch (candidate_id, body, since) VALUES (?, '{}', 0)",
            (pending,),
        )
        store.want_snapshot(txn.conn, awaiting, "cam-1", 0.0)
    running = Outbox(path, None, component="alarm_bridge")
    running.claim()
    busy = run(str(path), "--prune-refused", "30")
    running.stop()
    assert (busy.returncode, busy.stdout) == (2, "")
    assert busy.stderr == (
        f"outbox {path} is in use by another process; stop the worker that delivers from it first\n"
    )

    pruned = run(str(path), "--prune-refused", "30")
    assert pruned.stdout == f"{path}: 1 refused operation(s) and 0 alias(es) forgotten\n"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert [candidate_closed(conn, cid) for cid in (last, pending, awaiting, other)] == [
            True,
            True,
            True,
            False,
        ]
