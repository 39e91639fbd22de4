"""Stored files verified once are looked at with one stat until they change: a candidate's
create and PATCH, the candidates judged again on an upload and a conditional GET do not read
and hash the file each time."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gridpatrol.api import evidence
from gridpatrol.api.evidence import EvidenceStore

from .conftest import jpeg

URL = "/api/v1/evidence"
HOUR_AGO = time.time_ns() - 3600 * 10**9


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each file was read, by name."""
    counted: Counter[str] = Counter()
    read_bytes = Path.read_bytes

    def counting(path: Path) -> bytes:
        counted[path.name] += 1
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", counting)
    return counted


def stored(store: EvidenceStore, seed: int, mtime_ns: int = HOUR_AGO) -> tuple[str, Path]:
    """The hash and file of a JPEG stored with the modification time ``mtime_ns``."""
    data = jpeg(seed)
    sha = hashlib.sha256(data).hexdigest()
    assert store.put(sha, data, "image/jpeg").created
    os.utime(store.path(sha), ns=(mtime_ns, mtime_ns))
    return sha, store.path(sha)


def test_a_verified_file_is_not_read_again_until_it_changes(
    tmp_path: Path, reads: Counter[str], caplog: pytest.LogCaptureFixture
) -> None:
    store = EvidenceStore(tmp_path)
    sha, path = stored(store, 1)
    reads.clear()  # the upload's look for a file already there
    assert [store.has(sha) for _ in range(3)] == [True, True, True]
    assert reads == {sha: 1}

    # Truncated: another size.
    good = path.read_bytes()
    with path.open("r+b") as out:
        out.truncate(1000)
    os.utime(path, ns=(HOUR_AGO, HOUR_AGO))
    reads.clear()
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.evidence")
    assert (store.has(sha), store.has(sha)) == (False, False)
    assert reads == {sha: 2}  # a damaged file is never remembered
    damage = f"1000 bytes hashing to {hashlib.sha256(good[:1000]).hexdigest()}"
    assert [r.getMessage() for r in caplog.records] == 2 * [
        f"evidence {sha}: the stored file is damaged ({damage}); it counts as missing until "
        "its bytes are uploaded again"
    ]

    # Mended by an upload (another file), verified again; then overwritten in place with
    # zeros of the same size: only its modification time tells.
    assert store.put(sha, good, "image/jpeg").created
    os.utime(path, ns=(HOUR_AGO, HOUR_AGO))
    reads.clear()
    assert (store.has(sha), store.has(sha)) == (True, True)
    assert reads == {sha: 1}
    path.write_bytes(bytes(len(good)))
    os.utime(path, ns=(HOUR_AGO + 10**9, HOUR_AGO + 10**9))
    assert store.has(sha) is False
    assert reads == {sha: 2}


@pytest.mark.parametrize(
    "ago_ns",
    [
        # Within a file system's timestamp tick a change may keep the modification time.
        pytest.param(5_000_000, id="5-ms-ago"),
        # An NFS server's clock ahead of ours puts it in the future.
        pytest.param(-3600 * 10**9, id="an-hour-ahead"),
    ],
)
def test_a_file_modified_just_now_is_verified_at_each_look(
    tmp_path: Path, reads: Counter[str], monkeypatch: pytest.MonkeyPatch, ago_ns: int
) -> None:
    store = EvidenceStore(tmp_path)
    now = time.time_ns()
    sha, _ = stored(store, 2, mtime_ns=now - ago_ns)
    # The clock of the looks stands still: the file stays as recent as it was made.
    monkeypatch.setattr(evidence, "time", SimpleNamespace(time_ns=lambda: now))
    reads.clear()
    assert (store.has(sha), store.has(sha), store.has(sha)) == (True, True, True)
    assert reads == {sha: 3}


def test_the_least_recently_looked_at_files_are_forgotten_beyond_the_bound(
    tmp_path: Path, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evidence, "VERIFIED_FILES", 2)
    store = EvidenceStore(tmp_path)
    a, b, c = (stored(store, seed)[0] for seed in (3, 4, 5))
    reads.clear()
    assert [store.has(sha) for sha in (a, b, a, c)] == [True] * 4  # a looked at after b
    assert reads == {a: 1, b: 1, c: 1}
    assert [store.has(sha) for sha in (a, c, b)] == [True] * 3
    assert reads == {a: 1, b: 2, c: 1}  # b was the one forgotten


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_candidates_and_conditional_gets_read_a_stored_file_once(
    api: Any, reads: Counter[str]
) -> None:
    image = api.jpeg(11)
    sha = hashlib.sha256(image).hexdigest()
    producer, reviewer = api.as_("producer"), api.as_("reviewer")
    assert (
        producer.put(f"{URL}/{sha}", content=image, headers={"Content-Type": "image/jpeg"})
    ).status_code == 201
    os.utime(api.http.app.state.services.store.path(sha), ns=(HOUR_AGO, HOUR_AGO))
    reads.clear()

    doc = api.create(api.body("cached", sha))
    assert (doc["status"], doc["missing_elements"]) == ("new", [])
    patched = producer.patch(
        f"/api/v1/candidates/{doc['id']}",
        json={"description": "a second look"},
        headers={"Idempotency-Key": "cached-patch"},
    )
    assert patched.status_code == 200, patched.text
    for _ in range(2):
        cached = reviewer.get(f"{URL}/{sha}", headers={"If-None-Match": f'"{sha}"'})
        assert (cached.status_code, cached.headers["etag"]) == (304, f'"{sha}"')
    assert reads == {sha: 1}
    # A plain GET serves bytes read and hashed.
    got = reviewer.get(f"{URL}/{sha}")
    assert (got.status_code, got.content) == (200, image)
    assert reads == {sha: 2}


def test_a_get_that_finds_a_remembered_file_damaged_forgets_it(
    tmp_path: Path, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damage no stat shows (bit rot: the disk returns other bytes) is found by a GET, which
    always hashes what it serves, and then the file is not held."""
    store = EvidenceStore(tmp_path)
    sha, path = stored(store, 6)
    assert store.has(sha) is True
    read_bytes = Path.read_bytes  # counting

    def rotten(read: Path) -> bytes:
        data = read_bytes(read)
        return bytes(len(data)) if read == path else data

    monkeypatch.setattr(Path, "read_bytes", rotten)
    reads.clear()
    assert store.has(sha) is True  # remembered: one stat, no read
    assert reads == {}
    with pytest.raises(evidence.EvidenceError) as err:
        store.get(sha)
    assert (err.value.status, err.value.detail) == (404, f"no evidence {sha}")
    assert store.has(sha) is False
    assert reads == {sha: 2}


def changed_since(path: Path, ctime_ns: int, change: Callable[[], None]) -> None:
    """``change`` the file, again until its change time is another than ``ctime_ns`` (a file
    system stamps times in ticks of a few ms)."""
    change()
    while path.stat().st_ctime_ns == ctime_ns:
        change()


def test_a_lost_permission_or_a_copy_keeping_size_and_times_is_looked_at_again(
    tmp_path: Path, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chmod keeps the inode, size and modification time, and so does a damaged copy over
    the file that keeps its times (``cp -p``): only the change time tells."""
    store = EvidenceStore(tmp_path)
    sha, path = stored(store, 7)
    other, other_path = stored(store, 8)
    assert (store.has(sha), store.has(other)) == (True, True)
    read_bytes = Path.read_bytes  # counting

    def denied(read: Path) -> bytes:
        data = read_bytes(read)  # counted
        if read == path:  # tests run as root, whom a mode does not stop
            raise PermissionError(errno.EACCES, "Permission denied")
        return data

    monkeypatch.setattr(Path, "read_bytes", denied)
    reads.clear()
    before = path.stat()
    changed_since(path, before.st_ctime_ns, lambda: path.chmod(0o000))
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (store.has(sha), store.has(sha)) == (False, False)
    assert reads == {sha: 2}

    # Zeros of the right size copied over the other file, its modification time kept.
    before = other_path.stat()
    with other_path.open("r+b") as out:
        out.write(bytes(before.st_size))

    def keep_times() -> None:
        os.utime(other_path, ns=(before.st_atime_ns, before.st_mtime_ns))

    changed_since(other_path, before.st_ctime_ns, keep_times)
    after = other_path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    reads.clear()
    assert store.has(other) is False
    assert reads == {other: 1}
