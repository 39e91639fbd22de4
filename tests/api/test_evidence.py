"""Evidence upload and download: content addressing, media checks, size limit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from alembic import command
from alembic.config import Config

from gridpatrol.api import evidence
from gridpatrol.api.routers.evidence import INLINE_BYTES

from .conftest import on_event_loop

URL = "/api/v1/evidence"


def png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def put(api: Any, data: bytes, media: str, sha: str | None = None, role: str = "producer") -> Any:
    sha = sha or hashlib.sha256(data).hexdigest()
    return api.as_(role).put(f"{URL}/{sha}", content=data, headers={"Content-Type": media})


def test_jpeg_png_and_json_are_stored_once(api: Any) -> None:
    image = api.jpeg(1)
    first = put(api, image, "image/jpeg")
    assert first.status_code == 201
    assert first.json()["width"] == 64 and first.json()["height"] == 48
    assert put(api, image, "image/jpeg").status_code == 200
    pic = put(api, png(3, 2), "image/png")
    assert (pic.status_code, pic.json()["width"], pic.json()["height"]) == (201, 3, 2)
    trace = json.dumps({"n": "tilt", "v": [1, 2, 3]}).encode()
    assert put(api, trace, "application/json; charset=utf-8").status_code == 201
    sha = hashlib.sha256(image).hexdigest()
    for role in ("reviewer", "platform", "admin"):
        got = api.as_(role).get(f"{URL}/{sha}")
        assert got.status_code == 200
        assert got.content == image
        assert got.headers["content-type"] == "image/jpeg"
        assert got.headers["etag"] == f'"{sha}"'
    cached = api.as_("reviewer").get(f"{URL}/{sha}", headers={"If-None-Match": f'"{sha}"'})
    assert cached.status_code == 304


@pytest.mark.parametrize(
    ("data", "media", "sha", "status"),
    [
        (b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg", None, 422),
        (b"\x89PNG\r\n\x1a\nbroken", "image/png", None, 422),
        (b"{not json", "application/json", None, 422),
        (b"GIF89a....", "image/gif", None, 415),
        (b"plain", "text/plain", None, 415),
        (b'{"a": 1}', "application/json", "0" * 64, 422),
        (b'{"a": 1}', "application/json", "ABC", 422),
        (b'{"a": 1}', "application/json", "../../etc/passwd" + "0" * 48, 404),
    ],
)
def test_refused_evidence(
    api: Any, data: bytes, media: str, sha: str | None, status: int, tmp_path: Any
) -> None:
    response = put(api, data, media, sha)
    assert response.status_code == status, response.text
    if status != 404:  # an unroutable path is a plain 404 problem
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status


SOF = b"\xff\xc0\x00\x11\x08\x00\x30\x00\x40\x03" + bytes(9)  # 64 × 48, three components


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\xff\xd8\xff\xd0" + SOF, "bad_jpeg: marker FFD0 before the start-of-frame segment"),
        (
            b"\xff\xd8" + b"\xff\xfe\x00\x02" * 5000 + SOF,
            "bad_jpeg: more than 4096 markers before the start-of-frame segment",
        ),
        (b"\xff\xd8" + b"\xff" * 2**20, "bad_jpeg: no start-of-frame segment"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x40", "bad_height: 0"),
    ],
    ids=["restart-marker", "marker-flood", "fill-bytes", "zero-height"],
)
def test_a_jpeg_is_read_as_the_frame_reader_reads_it(api: Any, data: bytes, detail: str) -> None:
    """One walk of a JPEG's segments for frames and evidence, whose work is bounded whatever
    the bytes: uploads of junk are refused with the reader's reason."""
    response = put(api, data, "image/jpeg")
    assert (response.status_code, response.json()["detail"]) == (
        422,
        f"not a valid image/jpeg: {detail}",
    )
    assert put(api, b"\xff\xd8" + SOF, "image/jpeg").json()["width"] == 64


def test_a_jpeg_wider_than_any_camera_frame_is_evidence_too(api: Any) -> None:
    """A stitched panorama of a producer: the frames' size limit is not evidence's."""
    wide = cv2.imencode(".jpg", np.zeros((8, 20000, 3), np.uint8))[1].tobytes()
    stored = put(api, wide, "image/jpeg")
    assert (stored.status_code, stored.json()["width"], stored.json()["height"]) == (201, 20000, 8)


def test_too_large_is_413(make_api: Any) -> None:
    api = make_api(max_evidence_bytes=1000)
    big = json.dumps({"v": list(range(1000))}).encode()
    response = put(api, big, "application/json")
    assert response.status_code == 413
    assert response.json()["status"] == 413
    assert put(api, b'{"v": 1}', "application/json").status_code == 201


def test_roles_and_unknown_hashes(api: Any) -> None:
    image = api.jpeg(2)
    sha = hashlib.sha256(image).hexdigest()
    assert put(api, image, "image/jpeg", role="reviewer").status_code == 403
    assert api.http.put(f"{URL}/{sha}", content=image).status_code == 401
    assert put(api, image, "image/jpeg", role="admin").status_code == 201
    assert api.as_("producer").get(f"{URL}/{sha}").status_code == 403
    assert api.as_("reviewer").get(f"{URL}/{'e' * 64}").status_code == 404
    assert api.as_("reviewer").get(f"{URL}/not-a-hash").status_code == 404


def test_a_conditional_get_is_answered_304_when_any_tag_it_names_is_the_file(api: Any) -> None:
    """If-None-Match compares weakly (RFC 9110): a weak tag, a list and ``*`` name the file as
    well as its strong tag does; the 304 keeps the 200's caching headers."""
    image = api.jpeg(3)
    sha = hashlib.sha256(image).hexdigest()
    assert put(api, image, "image/jpeg").status_code == 201
    reviewer = api.as_("reviewer")
    full = reviewer.get(f"{URL}/{sha}")
    assert (full.status_code, full.content) == (200, image)
    caching = {"etag": f'"{sha}"', "cache-control": "private, max-age=31536000, immutable"}
    assert {name: full.headers[name] for name in caching} == caching

    for tags in (f'"{sha}"', f'W/"{sha}"', f'"0123", W/"{sha}"', f'"0123" ,"{sha}"', "*"):
        cached = reviewer.get(f"{URL}/{sha}", headers={"If-None-Match": tags})
        assert (cached.status_code, cached.content) == (304, b""), tags
        assert {name: cached.headers[name] for name in caching} == caching, tags
    for tags in ('"0123"', f"{sha}", f'"{sha[:-1]}", W/"0123"'):
        got = reviewer.get(f"{URL}/{sha}", headers={"If-None-Match": tags})
        assert (got.status_code, got.content) == (200, image), tags

    # "*" names only a file the store holds; a caller the file is not for gets no 304.
    anything = {"If-None-Match": "*"}
    assert reviewer.get(f"{URL}/{'e' * 64}", headers=anything).status_code == 404
    assert api.as_("producer").get(f"{URL}/{sha}", headers=anything).status_code == 403


def big_jpeg() -> bytes:
    """A JPEG above the inline size (1600 x 1200 of noise)."""
    noise = np.random.default_rng(5).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    data = bytes(encoded.tobytes())
    assert len(data) > INLINE_BYTES
    return data


class HeldStore:
    """Wraps the app's ``store.put``: records where each write runs; ``hold()`` blocks the
    writes until its block ends, announcing each one in ``writing``."""

    def __init__(self, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        store = api.http.app.state.services.store
        self.stored = store.put
        self.on_loop: list[bool] = []
        self.writing = threading.Event()
        self.release = threading.Event()
        self.release.set()
        monkeypatch.setattr(store, "put", self.put)

    def put(self, *args: Any) -> Any:
        self.on_loop.append(on_event_loop())
        self.writing.set()
        self.release.wait(60)
        return self.stored(*args)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.writing.clear()
        self.release.clear()
        try:
            yield
        finally:
            self.release.set()


def assert_answered_while_a_write_is_held(api: Any, held: HeldStore, data: bytes) -> None:
    """Upload ``data`` while its write is held: ``/healthz`` must still be answered, which
    an event loop stuck in the write could not do. Afterwards the upload must succeed."""
    with ThreadPoolExecutor(2) as pool:
        with held.hold():
            upload = pool.submit(put, api, data, "image/jpeg")
            assert held.writing.wait(20)
            assert held.on_loop[-1] is False, "the write runs on the event loop"
            # Bounded only so that a stalled event loop fails the test instead of hanging it.
            health = pool.submit(api.http.get, "/api/v1/healthz").result(timeout=20)
            assert not upload.done()
        assert health.status_code == 200
        assert upload.result(timeout=20).status_code == 201


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_small_evidence_is_stored_on_the_event_loop_and_larger_from_the_pool(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite (the single box, a local disk) up to 1 MiB an upload is stored on the event
    # loop, cheaper than a thread hop; a larger one in the pool, so no request waits for it.
    held = HeldStore(api, monkeypatch)
    small = api.jpeg(3)
    assert len(small) <= INLINE_BYTES
    assert put(api, small, "image/jpeg").status_code == 201
    assert held.on_loop == [True]

    data = big_jpeg()
    assert_answered_while_a_write_is_held(api, held, data)
    assert held.on_loop == [True, False]
    sha = hashlib.sha256(data).hexdigest()
    again = put(api, data, "image/jpeg", sha)
    assert again.status_code == 200
    assert (again.json()["width"], again.json()["height"], again.json()["size"]) == (
        1600,
        1200,
        len(data),
    )
    assert held.on_loop == [True, False, False]
    got = api.as_("reviewer").get(f"{URL}/{sha}")
    assert got.status_code == 200 and got.content == data


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_two_uploads_of_one_new_file_at_once_store_it_once(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both uploads find no file, then both write it: one of them stored it (201), the other
    found it there (200). Each write waits for the other at its start, so both have looked
    before either names the file. (A file above the inline size: stored from the pool, the
    two requests run side by side.)"""
    root = api.http.app.state.services.store.root
    both_looked = threading.Barrier(2, timeout=30)
    mkstemp = evidence.tempfile.mkstemp

    def after_both_looked(*args: Any, **kw: Any) -> Any:
        if Path(kw["dir"]).parent == root:
            both_looked.wait()
        return mkstemp(*args, **kw)

    monkeypatch.setattr(evidence.tempfile, "mkstemp", after_both_looked)
    data = big_jpeg()
    with ThreadPoolExecutor(2) as pool:
        uploads = [pool.submit(put, api, data, "image/jpeg") for _ in range(2)]
        statuses = sorted(upload.result(timeout=60).status_code for upload in uploads)
    assert statuses == [200, 201]
    sha = hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (root / sha[:2]).iterdir()) == [sha]  # no temporary file left
    got = api.as_("reviewer").get(f"{URL}/{sha}")
    assert got.status_code == 200 and got.content == data


@pytest.mark.postgres
@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_with_postgresql_a_slow_evidence_store_holds_up_no_other_request(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With PostgreSQL the evidence store is typically shared (NFS, an object store mount):
    # small uploads too are stored from the thread pool, not on the event loop.
    held = HeldStore(api, monkeypatch)
    assert_answered_while_a_write_is_held(api, held, api.jpeg(3))
    assert held.on_loop == [False]


CANDIDATES = "/api/v1/candidates"


def doc_of(api: Any, cid: str) -> dict[str, Any]:
    return dict(api.as_("reviewer").get(f"{CANDIDATES}/{cid}").json())


def test_evidence_uploaded_after_its_candidates_completes_them(api: Any) -> None:
    late = hashlib.sha256(api.jpeg(5)).hexdigest()
    waiting = api.create(api.body("e1", late))
    no_text = api.body("e2", late)
    del no_text["description"]
    partly = api.create(no_text)
    auto = api.create(api.body("e3", late, ctype="smoke"))
    rejected = api.create(api.body("e4", late))
    assert [d["missing_elements"] for d in (waiting, partly, auto)] == [
        ["evidence"],
        ["description", "evidence"],
        ["evidence"],
    ]
    rejected = api.review(rejected["id"], "reject", reason_code="other", reason="blurred").json()
    api.clock.advance(minutes=1)
    assert put(api, api.jpeg(5), "image/jpeg").status_code == 201
    entry = {"at": api.clock.now.isoformat(), "who": "test-producer", "fields": ["evidence"]}
    done = doc_of(api, waiting["id"])
    assert (done["status"], done["missing_elements"]) == ("new", [])
    assert done["history"][-1] == {**entry, "action": "supplemented"}
    still = doc_of(api, partly["id"])
    assert (still["status"], still["missing_elements"]) == ("incomplete", ["description"])
    assert still["history"][-1] == {**entry, "action": "updated"}
    confirmed = doc_of(api, auto["id"])
    assert confirmed["status"] == "confirmed"
    assert [h["action"] for h in confirmed["history"]] == [
        "created",
        "supplemented",
        "auto_confirmed",
    ]
    feed = api.as_("platform").get("/api/v1/feed").json()
    assert [c["id"] for c in feed["items"]] == [auto["id"]]
    assert doc_of(api, rejected["id"]) == rejected
    # Uploaded again: nothing waits for it any more.
    assert put(api, api.jpeg(5), "image/jpeg").status_code == 200
    assert doc_of(api, waiting["id"]) == done
    assert doc_of(api, partly["id"]) == still


def test_a_supplement_whose_upload_failed_does_not_demote_a_candidate(api: Any) -> None:
    sha = api.put_jpeg(1)
    lost = hashlib.sha256(api.jpeg(9)).hexdigest()  # its upload was refused: never held
    new = api.create(api.body("e1", sha))
    visible = api.create(api.body("e2", sha))
    assert api.review(visible["id"], "confirm").status_code == 200
    extra = {"evidence": [{"sha256": lost, "kind": "snapshot"}]}
    for cid, status in ((new["id"], "new"), (visible["id"], "confirmed")):
        response = api.as_("producer").patch(
            f"{CANDIDATES}/{cid}", json=extra, headers={"Idempotency-Key": f"x-{cid}"}
        )
        assert response.status_code == 200
        doc = response.json()
        assert (doc["status"], doc["missing_elements"]) == (status, [])
        assert [e["sha256"] for e in doc["evidence"]] == [sha, lost]
    # An incomplete candidate needs every file it refers to before it enters review.
    no_text = api.body("e3", sha)
    del no_text["description"]
    incomplete = api.create(no_text)
    supplement = {"description": "garbage", **extra}
    response = api.as_("producer").patch(
        f"{CANDIDATES}/{incomplete['id']}", json=supplement, headers={"Idempotency-Key": "s"}
    )
    doc = response.json()
    assert (doc["status"], doc["missing_elements"]) == ("incomplete", ["evidence"])
    assert put(api, api.jpeg(9), "image/jpeg").status_code == 201
    doc = doc_of(api, incomplete["id"])
    assert (doc["status"], doc["missing_elements"]) == ("new", [])


def migrate(db: Any, revision: str, down: bool = False) -> None:
    """Run the API's Alembic migrations up (or down) to ``revision``."""
    cfg = Config(str(files("gridpatrol.api").joinpath("alembic.ini")))
    cfg.set_main_option("script_location", str(files("gridpatrol.api").joinpath("migrations")))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def test_candidates_stored_before_the_upgrade_wait_for_their_evidence(api: Any) -> None:
    late = hashlib.sha256(api.jpeg(5)).hexdigest()
    doc = api.create(api.body("e1", late))
    db = api.http.app.state.db
    migrate(db, "0001", down=True)  # as stored by a version that noted no missing evidence
    migrate(db, "head")
    assert put(api, api.jpeg(5), "image/jpeg").status_code == 201
    assert doc_of(api, doc["id"])["status"] == "new"
