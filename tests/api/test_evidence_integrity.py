"""Evidence the store must refuse or not trust: JSON nested too deeply to parse, and stored
files whose bytes no longer hash to their name (a write torn by a power cut)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridpatrol.api.client import ApiError
from gridpatrol.api.evidence import EvidenceStore

from .conftest import TOKENS, RoleClient

URL = "/api/v1/evidence"


def put(api: Any, data: bytes, media: str) -> Any:
    sha = hashlib.sha256(data).hexdigest()
    return api.as_("producer").put(f"{URL}/{sha}", content=data, headers={"Content-Type": media})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_json_evidence_nested_too_deeply_is_refused_with_422_not_500(api: Any) -> None:
    # A 500 would be retried by the producer's outbox for ever, blocking its queue.
    deep = b"[" * 100_000 + b"]" * 100_000
    response = put(api, deep, "application/json")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    sha = hashlib.sha256(deep).hexdigest()
    assert response.json() == {
        "type": "about:blank",
        "title": "Invalid Content",
        "status": 422,
        "detail": "not a valid application/json: nested too deeply",
        "instance": f"{URL}/{sha}",
    }
    assert api.as_("reviewer").get(f"{URL}/{sha}").status_code == 404
    # Nesting Python's parser takes is stored as before.
    assert put(api, b"[" * 500 + b"]" * 500, "application/json").status_code == 201


def stored_file(api: Any, sha: str) -> Path:
    return Path(api.http.app.state.services.store.root) / sha[:2] / sha


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data[:1000], id="torn"),
        pytest.param(lambda data: bytes(len(data)), id="zeros-of-the-right-size"),
    ],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_damaged_stored_file_counts_as_missing_and_the_next_upload_replaces_it(
    api: Any, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    """What a power cut can leave of a file written just before it: its name, with too few
    bytes or blocks of zeros. It must not be served as the hash, count as held, or make the
    producer's upload answer "already there" (after which the producer deletes its copy)."""
    image = api.jpeg(7)
    sha = hashlib.sha256(image).hexdigest()
    assert put(api, image, "image/jpeg").status_code == 201
    bad = damage(image)
    stored_file(api, sha).write_bytes(bad)
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.evidence")

    damage_text = f"{len(bad)} bytes hashing to {hashlib.sha256(bad).hexdigest()}"
    waiting = counted_as_missing(
        api,
        caplog,
        sha,
        f"evidence {sha}: the stored file is damaged ({damage_text}); it counts as missing "
        "until its bytes are uploaded again",
    )
    replaced_by_the_next_upload(
        api,
        caplog,
        image,
        waiting,
        f"evidence {sha}: the stored file was damaged ({damage_text}); replaced by this upload",
    )


def counted_as_missing(api: Any, caplog: pytest.LogCaptureFixture, sha: str, logged: str) -> str:
    """The file of ``sha`` is not served (404, also to a conditional GET) and a candidate
    referring to it waits for it (its id is returned); each look logs ``logged``."""
    reviewer = api.as_("reviewer")
    got = reviewer.get(f"{URL}/{sha}")
    assert (got.status_code, got.json()["detail"]) == (404, f"no evidence {sha}")
    cached = reviewer.get(f"{URL}/{sha}", headers={"If-None-Match": f'"{sha}"'})
    assert cached.status_code == 404
    doc = api.create(api.body(f"missing-{sha[:8]}", sha))
    assert (doc["status"], doc["missing_elements"]) == ("incomplete", ["evidence"])
    # Logged by each look at it (the candidate's judgement looks more than once).
    assert {r.getMessage() for r in caplog.records} == {logged}
    caplog.clear()
    return str(doc["id"])


def replaced_by_the_next_upload(
    api: Any, caplog: pytest.LogCaptureFixture, image: bytes, waiting: str, logged: str
) -> None:
    """The next upload of ``image`` stores it anew (201, logging ``logged``); it is served,
    the candidate ``waiting`` for it is complete, and the upload after finds it there."""
    sha = hashlib.sha256(image).hexdigest()
    again = put(api, image, "image/jpeg")
    assert (again.status_code, again.json()) == (
        201,
        {"sha256": sha, "media_type": "image/jpeg", "size": len(image), "width": 64, "height": 48},
    )
    assert [r.getMessage() for r in caplog.records] == [logged]
    assert stored_file(api, sha).read_bytes() == image
    assert sorted(p.name for p in stored_file(api, sha).parent.iterdir()) == [sha]
    reviewer = api.as_("reviewer")
    got = reviewer.get(f"{URL}/{sha}")
    assert (got.status_code, got.content, got.headers["etag"]) == (200, image, f'"{sha}"')
    done = reviewer.get(f"/api/v1/candidates/{waiting}").json()
    assert (done["status"], done["missing_elements"]) == ("new", [])
    assert put(api, image, "image/jpeg").status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_file_and_its_name_reach_the_disk_before_the_upload_is_answered(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is synced before it gets its name, and its folder after; an upload answered
    "already there" syncs both too, and a damaged file's replacement is synced like a new one."""
    root = Path(api.http.app.state.services.store.root)
    steps: list[tuple[str, str]] = []

    def name(path: str) -> str:
        rel = str(Path(path).relative_to(root.parent))
        return re.sub(r"\.tmp-\w+$", ".tmp", rel)

    def record(step: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            if step == "fsync":
                where = str(Path(f"/proc/self/fd/{args[0]}").readlink())
                if Path(where).is_relative_to(root):
                    steps.append((step, name(where)))
            elif Path(args[0]).is_relative_to(root):
                steps.append((step, f"{name(args[0])} -> {name(args[1])}"))
            return real(*args, **kw)

        return call

    for step in ("fsync", "link", "replace"):
        monkeypatch.setattr(os, step, record(step, getattr(os, step)))
    image = api.jpeg(8)
    sha = hashlib.sha256(image).hexdigest()
    fan = f"evidence/{sha[:2]}"

    assert put(api, image, "image/jpeg").status_code == 201
    assert steps == [
        ("fsync", "evidence"),  # the new fan-out folder's name
        ("fsync", f"{fan}/.tmp"),
        ("link", f"{fan}/.tmp -> {fan}/{sha}"),
        ("fsync", fan),
    ]
    steps.clear()
    assert put(api, image, "image/jpeg").status_code == 200
    assert steps == [("fsync", f"{fan}/{sha}"), ("fsync", fan)]
    steps.clear()
    stored_file(api, sha).write_bytes(b"")
    assert put(api, image, "image/jpeg").status_code == 201
    assert steps == [
        ("fsync", f"{fan}/.tmp"),
        ("replace", f"{fan}/.tmp -> {fan}/{sha}"),
        ("fsync", fan),
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_stored_file_that_cannot_be_read_counts_as_missing_and_the_next_upload_replaces_it(
    api: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad block (EIO), a permission lost in a restore (EACCES) or a stale NFS handle
    (ESTALE): the file is there but reading it fails. That is no 500 for the candidate, the
    reviewer or the producer's upload that mends it."""
    image = api.jpeg(9)
    sha = hashlib.sha256(image).hexdigest()
    assert put(api, image, "image/jpeg").status_code == 201
    target = stored_file(api, sha)
    bad_inode = target.stat().st_ino  # the replacement is another file
    read_bytes = Path.read_bytes

    def failing(path: Path) -> bytes:
        if path == target and path.stat().st_ino == bad_inode:
            raise OSError(errno.EIO, "Input/output error")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.evidence")

    waiting = counted_as_missing(
        api,
        caplog,
        sha,
        f"evidence {sha}: the stored file cannot be read ([Errno 5] Input/output error); it "
        "counts as missing until its bytes are uploaded again",
    )
    replaced_by_the_next_upload(
        api,
        caplog,
        image,
        waiting,
        f"evidence {sha}: the stored file could not be read ([Errno 5] Input/output error); "
        "replaced by this upload",
    )
    assert target.stat().st_ino != bad_inode


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_read_error_that_passes_fails_the_request_and_its_retry_succeeds(
    api: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors for a moment (EMFILE): the file is there and good. Were it
    counted as missing, the create would be answered 201 incomplete and the producer, answered,
    would never upload the file again. The request is answered 503 instead, with Retry-After,
    and the outbox retries it: a create, a PATCH supplying the file, an upload, a download."""
    image = api.jpeg(10)
    sha = hashlib.sha256(image).hexdigest()
    assert put(api, image, "image/jpeg").status_code == 201
    target = stored_file(api, sha)
    no_text = api.body("emfile-patch")
    del no_text["description"], no_text["evidence"]
    incomplete = api.create(no_text)
    read_bytes = Path.read_bytes
    shortage = [True]

    def failing(path: Path) -> bytes:
        if shortage[0] and path == target:
            raise OSError(errno.EMFILE, "Too many open files")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.evidence")
    producer, reviewer = api.as_("producer"), api.as_("reviewer")
    create = {"json": api.body("emfile", sha), "headers": {"Idempotency-Key": "emfile-create"}}
    supplement = {
        "json": {"description": "garbage", "evidence": api.body(None, sha)["evidence"]},
        "headers": {"Idempotency-Key": "emfile-patch"},
    }
    patch_url = f"/api/v1/candidates/{incomplete['id']}"
    detail = f"evidence {sha} cannot be read just now ([Errno 24] Too many open files)"
    for answer, path in (
        (producer.post("/api/v1/candidates", **create), "/api/v1/candidates"),
        (producer.patch(patch_url, **supplement), patch_url),
        (reviewer.get(f"{URL}/{sha}"), f"{URL}/{sha}"),
        (reviewer.get(f"{URL}/{sha}", headers={"If-None-Match": f'"{sha}"'}), f"{URL}/{sha}"),
        (
            producer.put(f"{URL}/{sha}", content=image, headers={"Content-Type": "image/jpeg"}),
            f"{URL}/{sha}",
        ),
    ):
        unavailable = {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": detail,
            "instance": path,
        }
        assert (answer.status_code, answer.headers["retry-after"], answer.json()) == (
            503,
            "1",
            unavailable,
        )
        assert ApiError(answer.status_code, answer.json()).retryable is True
    assert [r.getMessage() for r in caplog.records if r.name == "gridpatrol.api.evidence"] == []

    shortage[0] = False  # the descriptors are back: the retries succeed
    created = producer.post("/api/v1/candidates", **create)
    assert created.status_code == 201, created.text
    assert (created.json()["status"], created.json()["missing_elements"]) == ("new", [])
    patched = producer.patch(patch_url, **supplement)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["status"], patched.json()["missing_elements"]) == ("new", [])
    got = reviewer.get(f"{URL}/{sha}")
    assert (got.status_code, got.content) == (200, image)
    again = producer.put(f"{URL}/{sha}", content=image, headers={"Content-Type": "image/jpeg"})
    assert again.status_code == 200
    assert target.read_bytes() == image


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_read_error_that_passes_after_commit_does_not_fail_the_answer(
    api: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create is committed, waiting for a file not stored yet; the look after commit
    for that file meets a moment without file descriptors. The answer is the create's (201),
    the look is logged, and the file's upload judges the candidate again."""
    image = api.jpeg(11)
    sha = hashlib.sha256(image).hexdigest()
    services = api.http.app.state.services
    target = services.store.path(sha)
    stat = Path.stat
    shortage = [False]

    def failing(path: Path, **kwargs: Any) -> os.stat_result:
        if shortage[0] and path == target:
            raise OSError(errno.EMFILE, "Too many open files")
        return stat(path, **kwargs)

    notify = services.candidates._notify

    def committed(outcome: Any) -> None:
        shortage[0] = True  # from the commit on, until the test ends the shortage
        notify(outcome)

    monkeypatch.setattr(Path, "stat", failing)
    monkeypatch.setattr(services.candidates, "_notify", committed)
    caplog.set_level(logging.WARNING, logger="gridpatrol.api.service")
    http = TestClient(api.http.app, raise_server_exceptions=False)
    producer = RoleClient(http, TOKENS["producer"])
    created = producer.post(
        "/api/v1/candidates",
        json=api.body("emfile-after", sha),
        headers={"Idempotency-Key": "emfile-after"},
    )
    assert created.status_code == 201, created.text
    assert (created.json()["status"], created.json()["missing_elements"]) == (
        "incomplete",
        ["evidence"],
    )
    assert [r.getMessage() for r in caplog.records if r.name == "gridpatrol.api.service"] == [
        f"evidence {sha}: not looked at after commit: evidence {sha} cannot be read just now "
        "([Errno 24] Too many open files)"
    ]

    shortage[0] = False
    monkeypatch.setattr(services.candidates, "_notify", notify)
    assert put(api, image, "image/jpeg").status_code == 201
    got = RoleClient(http, TOKENS["reviewer"]).get(f"/api/v1/candidates/{created.json()['id']}")
    assert (got.json()["status"], got.json()["missing_elements"]) == ("new", [])


def test_unfinished_uploads_older_than_an_hour_are_deleted_at_start(tmp_path: Path) -> None:
    root = tmp_path / "evidence"
    (root / "ab").mkdir(parents=True)
    old, fresh = root / "ab" / ".tmp-x", root / "ab" / ".tmp-y"
    old.write_bytes(b"half a jpeg")
    fresh.write_bytes(b"being written by another instance")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    stored = root / "ab" / ("ab" * 32)
    stored.write_bytes(b"stored")
    os.utime(stored, (two_hours_ago, two_hours_ago))
    EvidenceStore(root)
    assert sorted(p.name for p in (root / "ab").iterdir()) == [".tmp-y", "ab" * 32]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_upload_after_its_folder_was_removed_makes_it_again(api: Any) -> None:
    """An offline job deleting old evidence may remove a fan-out folder it emptied: the API
    that made or saw it stores the next upload to it, rather than answering 500 until a
    restart (its producer's outbox would retry for ever)."""
    image = api.jpeg(11)
    sha = hashlib.sha256(image).hexdigest()
    assert put(api, image, "image/jpeg").status_code == 201
    folder = stored_file(api, sha).parent
    stored_file(api, sha).unlink()
    folder.rmdir()
    response = put(api, image, "image/jpeg")
    assert response.status_code == 201, response.text
    assert stored_file(api, sha).read_bytes() == image
    assert api.as_("reviewer").get(f"{URL}/{sha}").content == image


def refused_for_a_folder(api: Any, caplog: pytest.LogCaptureFixture, data: bytes, why: str) -> None:
    """The upload of ``data`` is answered 503 saying ``why``, in one ERROR line: no traceback,
    and the producer's outbox keeps the upload to send again."""
    sha = hashlib.sha256(data).hexdigest()
    caplog.clear()
    response = put(api, data, "application/json")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": f"evidence {sha} cannot be stored: {why}",
        "instance": f"{URL}/{sha}",
    }
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [
        ("gridpatrol.api.evidence", f"evidence {sha} cannot be stored: {why}")
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_upload_while_the_evidence_folder_is_missing_is_503_naming_it(
    api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A store removed whole, or a file system not mounted: the folder is not made again (a
    folder made beneath a mount point hides its uploads once the file system is back)."""
    root = Path(api.http.app.state.services.store.root)
    before, after = b'{"before": 1}', b'{"after": 2}'  # in folders 15 and 5e
    assert put(api, before, "application/json").status_code == 201
    shutil.rmtree(root)
    why = f"the evidence folder {root} is missing (removed, or not mounted)"
    refused_for_a_folder(api, caplog, before, why)  # a folder it made
    refused_for_a_folder(api, caplog, after, why)  # one it did not
    assert not root.exists()
    root.mkdir()  # mounted again
    assert put(api, before, "application/json").status_code == 201
    assert put(api, after, "application/json").status_code == 201


@pytest.mark.parametrize("in_way", ["fan-out folder", "root"])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_file_where_an_evidence_folder_belongs_is_503_naming_it(
    api: Any, caplog: pytest.LogCaptureFixture, in_way: str
) -> None:
    root = Path(api.http.app.state.services.store.root)
    data = b'{"in the way": 3}'
    sha = hashlib.sha256(data).hexdigest()
    path = root / sha[:2]
    if in_way == "root":
        assert put(api, data, "application/json").status_code == 201
        shutil.rmtree(root)
        path = root
    path.write_bytes(b"not a folder")
    refused_for_a_folder(api, caplog, data, f"{path} is not a folder (a file is in the way)")
    assert path.read_bytes() == b"not a folder"
    path.unlink()
    root.mkdir(exist_ok=True)
    assert put(api, data, "application/json").status_code == 201
    assert api.as_("reviewer").get(f"{URL}/{sha}").content == data
