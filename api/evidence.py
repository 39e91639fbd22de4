"""The content-addressed evidence store: the only module that touches evidence files.

Files live at ``<dir>/<first two hex digits>/<sha256>``, written to a temporary file,
flushed to disk and then given their name, so a reader never sees half a file and an upload
answered 2xx survives a power cut. A stored file counts only while its bytes hash to its
name: one torn by a crash (or damaged since), or one that cannot be read (a bad block, a
permission lost in a restore, a stale NFS handle), is not served, not counted as held, and is
replaced by the next upload of its bytes. A read that fails for a while only (out of file
descriptors or memory, interrupted) fails the request instead (:class:`EvidenceUnavailable`),
which the producer retries. A file verified once is remembered by its device, inode, size,
modification and change times, so looking at it again costs one stat until it changes. Every
path is built from a validated hash only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gridpatrol.ingest import messages

log = logging.getLogger(__name__)

# What link(2) answers on a file system that has no hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# What fsync(2) of a directory answers on a file system that cannot sync one (some FUSE and
# object-store mounts): there the names are as durable as that file system makes them.
_NO_DIR_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# Read errors that last until the file is mended or uploaded again: such a file counts as
# missing. Any other (EMFILE, ENFILE, ENOMEM, EINTR, EAGAIN, ...) passes, and is raised as
# EvidenceUnavailable: counting the file as missing would leave its candidate incomplete
# while its producer, answered, never uploads it again.
_LASTING = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.EISDIR,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.ESTALE,
        errno.EBADMSG,  # ext4 and others: a checksum error
        getattr(errno, "EUCLEAN", errno.EIO),  # file system structure damaged
    }
)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Stored files remembered as verified (about 200 bytes each): a candidate's files and those
# of the candidates waiting for uploads stay among the most recently looked at.
VERIFIED_FILES = 4096
# A file modified this recently (in ns) is verified again at each look (:meth:`_remember`).
RECENT_NS = 20_000_000
MEDIA_TYPES = ("image/jpeg", "image/png", "application/json")
# An upload's temporary file (``.tmp-*`` beside its target) left by a process that died
# mid-write is deleted at the next start once it is this old (seconds). Not at once: another
# instance sharing the folder may be writing it now, and no upload writes for an hour.
STALE_TMP_S = 3600.0
TMP_PREFIX = ".tmp-"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class EvidenceError(Exception):
    """Refused evidence; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        super().__init__(detail)


class EvidenceUnavailable(EvidenceError):
    """A stored file could not be read for a reason that passes (out of file descriptors or
    memory, an interrupted read): 503, and the request is to be retried."""

    def __init__(self, sha256: str, exc: OSError) -> None:
        super().__init__(
            503, "Service Unavailable", f"evidence {sha256} cannot be read just now ({exc})"
        )


@dataclass(frozen=True)
class Stored:
    sha256: str
    media_type: str
    size: int
    created: bool
    width: int | None = None
    height: int | None = None


def media_type_of(header: str | None) -> str:
    """The accepted media type named by a Content-Type header, or raise 415."""
    media = (header or "").split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise EvidenceError(
            415, "Unsupported Media Type", f"evidence must be one of {', '.join(MEDIA_TYPES)}"
        )
    return media


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment; ValueError if it is no JPEG.

    The frame reader's walk, whose work is bounded whatever the upload (a body of fill bytes
    or markers walked one step at a time would hold a request thread for seconds)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start-of-image marker")
    # Any size a JPEG can state (a producer's panorama too), not only a camera frame's.
    return messages.jpeg_size(data, most=0xFFFF)  # its MessageError is a ValueError


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("no PNG signature and IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ValueError("PNG image of zero size")
    return width, height


def sniff(data: bytes) -> str:
    """The media type of stored bytes (they were verified when stored)."""
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "image/png"
    return "application/json"


class EvidenceStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._dirs: set[str] = set()  # fan-out directories known to exist
        # Files whose bytes hashed to their name (:func:`_key`), the most recently looked at
        # last. A file replaced, truncated, written or given other permissions since (also
        # by a copy that keeps its modification time) has another key, and is read and
        # hashed again.
        self._verified: OrderedDict[Key, None] = OrderedDict()
        self._lock = threading.Lock()  # uploads and looks run on the event loop and the pool
        self.sweep_temporaries()

    def sweep_temporaries(self, older_than_s: float = STALE_TMP_S) -> int:
        """Delete the temporary files of uploads that ended with their process (killed, a
        power cut) over ``older_than_s`` seconds ago; how many. Nothing else ever would.
        A folder that cannot be listed is logged and skipped: the store works without this."""
        cutoff = time.time() - older_than_s
        removed = 0
        try:
            folders = [e.path for e in os.scandir(self.root) if len(e.name) == 2 and e.is_dir()]
        except OSError as exc:
            log.warning("evidence: %s cannot be listed to delete stale uploads: %s", self.root, exc)
            return 0
        for folder in folders:
            try:
                with os.scandir(folder) as entries:
                    stale = [
                        e.path
                        for e in entries
                        if e.name.startswith(TMP_PREFIX)
                        and e.stat(follow_symlinks=False).st_mtime < cutoff
                    ]
                for path in stale:
                    Path(path).unlink(missing_ok=True)
                    removed += 1
            except OSError as exc:
                log.warning("evidence: stale uploads in %s cannot be deleted: %s", folder, exc)
        if removed:
            log.info("evidence: deleted %d unfinished upload(s) of an earlier run", removed)
        return removed

    def path(self, sha256: str) -> Path:
        """The file of a hash; the hash is validated before it becomes part of a path."""
        if not SHA256_RE.fullmatch(sha256):
            raise EvidenceError(404, "Not Found", "evidence is addressed by a lowercase SHA-256")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Whether the store holds the file of ``sha256`` with bytes that hash to it: one stat
        when it was verified before and has not changed since, else it is read and hashed.
        :class:`EvidenceUnavailable` when it cannot be looked at just now."""
        if not SHA256_RE.fullmatch(sha256):
            return False
        path = self.path(sha256)
        try:
            before = path.stat()
        except FileNotFoundError:
            return False
        except OSError as exc:
            _unreadable(sha256, exc)
            return False
        key = _key(sha256, before)
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
        if self._held(sha256) is None:
            return False
        self._remember(sha256, key)
        return True

    def put(self, sha256: str, data: bytes, content_type: str | None) -> Stored:
        if not SHA256_RE.fullmatch(sha256):
            raise EvidenceError(422, "Invalid Hash", "the path must be a lowercase SHA-256")
        media = media_type_of(content_type)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise EvidenceError(
                422, "Hash Mismatch", f"the body hashes to {actual}, not to the path's {sha256}"
            )
        width, height = _verify(media, data)
        target = self.path(sha256)
        unreadable: OSError | None = None
        try:
            stored: bytes | None = target.read_bytes()
        except FileNotFoundError:
            stored = None
        except OSError as exc:  # a bad block, a lost permission, a stale NFS handle
            _check_lasting(sha256, exc)
            stored, unreadable = None, exc
        if stored == data:
            # Already there. Made durable before the answer, as a new file is: the upload that
            # stored it may not have synced its folder yet.
            _sync(target)
            _sync_dir(target.parent)
            return Stored(sha256, media, len(data), False, width, height)
        # Torn by a crash, or unreadable: replaced by these bytes.
        damaged = stored is not None or unreadable is not None
        fd, tmp = self._temporary(sha256, target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if damaged:
                Path(tmp).replace(target)
                created = True
            else:
                created = _publish(Path(tmp), target)
            _sync_dir(target.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)
        if unreadable is not None:
            log.warning(
                "evidence %s: the stored file could not be read (%s); replaced by this upload",
                sha256,
                unreadable,
            )
        elif stored is not None:
            log.warning(
                "evidence %s: the stored file was damaged (%s); replaced by this upload",
                sha256,
                _damage(stored),
            )
        elif created:
            log.info("evidence %s stored (%s, %d bytes)", sha256, media, len(data))
        return Stored(sha256, media, len(data), created, width, height)

    def _temporary(self, sha256: str, folder: Path) -> tuple[int, str]:
        """A new temporary file in the fan-out folder ``folder``, made unless it is there;
        503 naming the path when it cannot be (see :meth:`_cannot_store`)."""
        try:
            if folder.name not in self._dirs:
                self._make_folder(folder)
            try:
                return tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX)
            except FileNotFoundError:
                # Removed since this process made or saw it (an offline job deleting old
                # evidence may take an emptied folder too): every upload to it would fail
                # until a restart.
                self._make_folder(folder)
                return tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX)
        except OSError as exc:
            raise self._cannot_store(sha256, folder, exc) from None

    def _cannot_store(self, sha256: str, folder: Path, exc: OSError) -> EvidenceError:
        """503 for an upload whose folder cannot be written, logged once as an ERROR: only an
        operator mends it, and the producer's outbox keeps the upload until then.

        A missing root is not made again here, as a fan-out folder is: it is gone only when
        removed whole (all the evidence with it) or when its file system is not mounted, and
        one made then would hold uploads in the folder beneath the mount point, hidden once
        the file system is mounted again."""
        if not self.root.exists():
            why = f"the evidence folder {self.root} is missing (removed, or not mounted)"
        elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
            in_way = self.root if not self.root.is_dir() else folder
            why = f"{in_way} is not a folder (a file is in the way)"
        else:
            why = f"{folder}: {exc.strerror or exc}"
        log.error("evidence %s cannot be stored: %s", sha256, why)
        return EvidenceError(
            503, "Service Unavailable", f"evidence {sha256} cannot be stored: {why}"
        )

    def _make_folder(self, folder: Path) -> None:
        """Make a fan-out folder unless it is there, its name durable, and remember it."""
        try:
            folder.mkdir()
        except FileExistsError:
            pass
        else:
            _sync_dir(self.root)
        self._dirs.add(folder.name)

    def get(self, sha256: str) -> tuple[bytes, str]:
        """The bytes of ``sha256`` and their media type, always read and hashed: served bytes
        are never taken on trust (404 when missing, damaged or unreadable)."""
        path = self.path(sha256)  # 404 for what is no hash
        try:
            before: os.stat_result | None = path.stat()
        except OSError:  # missing, or unreadable: the read says which
            before = None
        data = self._held(sha256)
        if data is None:
            if before is not None:  # damaged in place, keeping its size and time: not held
                with self._lock:
                    self._verified.pop(_key(sha256, before), None)
            raise EvidenceError(404, "Not Found", f"no evidence {sha256}")
        if before is not None:
            self._remember(sha256, _key(sha256, before))
        return data, sniff(data)

    def _held(self, sha256: str) -> bytes | None:
        """The stored bytes of ``sha256``; None when there is no file, it cannot be read for
        good (:data:`_LASTING`), or its bytes do not hash to its name (a write torn by a
        crash): such a file counts as missing. :class:`EvidenceUnavailable` for a read error
        that passes."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            _unreadable(sha256, exc)
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            log.warning(
                "evidence %s: the stored file is damaged (%s); it counts as missing until "
                "its bytes are uploaded again",
                sha256,
                _damage(data),
            )
            return None
        return data

    def _remember(self, sha256: str, key: Key) -> None:
        """Remember the stored file of ``sha256`` as verified, if it is still the file of
        ``key`` (its stat before it was read and hashed) and was not written just now: a
        file system stamps times in ticks of a few ms, so a file changed again within the
        tick it was written in could keep its size and modification time."""
        try:
            if _key(sha256, self.path(sha256).stat()) != key:
                return
        except OSError:
            return
        if time.time_ns() - key.mtime_ns <= RECENT_NS:
            return
        with self._lock:
            self._verified[key] = None
            self._verified.move_to_end(key)
            while len(self._verified) > VERIFIED_FILES:
                self._verified.popitem(last=False)


class Key(NamedTuple):
    """What a stat tells of a stored file, to know it unchanged: a chmod, or a copy over it
    that keeps its size and modification time (``cp -p``), changes its change time."""

    sha256: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _key(sha256: str, st: os.stat_result) -> Key:
    return Key(sha256, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_lasting(sha256: str, exc: OSError) -> None:
    """Raise :class:`EvidenceUnavailable` unless ``exc`` lasts (:data:`_LASTING`)."""
    if exc.errno not in _LASTING:
        raise EvidenceUnavailable(sha256, exc) from exc


def _unreadable(sha256: str, exc: OSError) -> None:
    """A stored file that cannot be read counts as missing; EvidenceUnavailable for an error
    that passes."""
    _check_lasting(sha256, exc)
    log.warning(
        "evidence %s: the stored file cannot be read (%s); it counts as missing until its "
        "bytes are uploaded again",
        sha256,
        exc,
    )


def _damage(data: bytes) -> str:
    return f"{len(data)} bytes hashing to {hashlib.sha256(data).hexdigest()}"


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(folder: Path) -> None:
    """Make the names in ``folder`` durable (a new file's name is not, until this)."""
    try:
        _sync(folder)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise


def _publish(tmp: Path, target: Path) -> bool:
    """Give the written file ``tmp`` its name ``target``; False when another upload of the
    same bytes got there first.

    A hard link creates the name only if it is absent, in one step: of two uploads that both
    found no file, exactly one stores it (201) and the other learns it is already there
    (200). A reader still never sees half a file: the link is made after the write.
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # A file system without hard links (some network and object-store mounts): the rename
        # is still atomic for readers, but two uploads racing here may both answer 201.
        tmp.replace(target)
    return True


def _verify(media: str, data: bytes) -> tuple[int | None, int | None]:
    try:
        if media == "image/jpeg":
            return jpeg_size(data)
        if media == "image/png":
            return png_size(data)
        json.loads(data)
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise EvidenceError(422, "Invalid Content", f"not a valid {media}: {exc}") from exc
    except RecursionError:  # json.loads of arrays or objects nested thousands deep
        raise EvidenceError(
            422, "Invalid Content", f"not a valid {media}: nested too deeply"
        ) from None
    return None, None
