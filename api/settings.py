"""Settings of the intake API, read from ``GRIDPATROL_*`` environment variables."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gridpatrol.site import Policy, Site, load_site

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Dialect

log = logging.getLogger(__name__)

Role = Literal["producer", "reviewer", "platform", "admin"]
CookieSecure = Literal["auto", "true", "false"]
DEFAULT_TIMEZONE = "Asia/Shanghai"
_SHA256_HEX = re.compile(r"[0-9A-Fa-f]{64}")
URL_FORM = "dialect+driver://user:password@host:port/name"
DEFAULT_IDEMPOTENCY_RETENTION_S = 7 * 24 * 3600
MAX_IDEMPOTENCY_RETENTION_S = 10 * 365 * 24 * 3600
MIN_SESSION_SECRET_CHARS = 32
MAX_SESSION_MAX_AGE_S = 366 * 24 * 3600
# The placeholders of samples/systemd/api.env: a copy left unedited must not start.
_PLACEHOLDER = "CHANGE-ME"


class TokenEntry(BaseModel):
    role: Role
    name: str = Field(min_length=1, max_length=100)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the configured name of the token and its role."""

    name: str
    role: Role
    token_digest: bytes

    def has(self, role: Role) -> bool:
        return self.role == role or self.role == "admin"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDPATROL_", extra="ignore")

    database_url: str = "sqlite:///./var/gridpatrol.db"
    evidence_dir: Path = Path("./var/evidence")
    # token (or "sha256:<hex>" of a token) -> {"role", "name"}; its JSON read by _json_tokens,
    # whose errors quote no part of it, a token or a key (NoDecode: not by pydantic-settings).
    api_tokens: Annotated[dict[str, TokenEntry], NoDecode] = Field(default_factory=dict)
    config: Path | None = None
    # The detection model (GRIDPATROL_MODEL, as for the workers): the zone editor checks the
    # classes a rule names against it when its weights are on this machine.
    model: str | None = None
    max_evidence_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # JSON bodies: a candidate's (POST, PATCH, each item of a batch) and a whole batch's.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_batch_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    session_secret: str = Field(default_factory=lambda: secrets.token_hex(32))
    session_max_age_s: int = 12 * 3600
    # The Secure attribute of the console's session cookie. auto: when the request reached the
    # API over https, as uvicorn tells it (behind a load balancer: from X-Forwarded-Proto, which
    # uvicorn takes from the addresses in FORWARDED_ALLOW_IPS, 127.0.0.1 by default); true:
    # always (the load balancer's https is not visible here); false: never.
    session_cookie_secure: CookieSecure = "auto"
    allow_generated_tokens: bool = False
    release_interval_s: float = Field(default=5.0, gt=0)
    # Answered idempotency keys (each with its whole response) are deleted this long after
    # their request: a producer's outbox resends an unanswered operation within 36 s for as
    # long as the API is reachable (api/client.py, Outbox.MAX_BACKOFF_S plus jitter) and never
    # gives up, so a key comes back after this only when an outage held it longer.
    idempotency_retention_s: int = DEFAULT_IDEMPOTENCY_RETENTION_S
    # A feed long poll also looks at the database this often: positions given by another
    # process without the bus, or a night hold ending, wake nobody in this one.
    feed_recheck_s: float = Field(default=1.0, gt=0)
    # ``gridpatrol api --workers N`` migrates once in its parent and turns this off for the
    # workers, so they do not race on Alembic's version table.
    migrate_on_start: bool = True
    # Relay notifications (events, feed wake-ups) between processes over PostgreSQL
    # LISTEN/NOTIFY; on for the workers of ``--workers N``.
    bus: bool = False

    @field_validator("idempotency_retention_s")
    @classmethod
    def _retention_in_range(cls, value: int) -> int:
        if not 0 < value <= MAX_IDEMPOTENCY_RETENTION_S:
            raise ValueError(
                "GRIDPATROL_IDEMPOTENCY_RETENTION_S must be a number of seconds from 1 to "
                f"{MAX_IDEMPOTENCY_RETENTION_S} (10 years), got {value}"
            )
        return value

    @field_validator("session_secret")
    @classmethod
    def _secret_strong(cls, value: str) -> str:
        # Anyone who knows the key signs a session cookie for any configured token digest, and
        # those digests are meant to sit in configuration files (sha256:<hex>).
        if _PLACEHOLDER.lower() in value.lower():
            raise ValueError(
                "GRIDPATROL_SESSION_SECRET is still the placeholder of samples/systemd/api.env: "
                "set it to 64 random hexadecimal characters (openssl rand -hex 32)"
            )
        if len(value) < MIN_SESSION_SECRET_CHARS:
            raise ValueError(
                f"GRIDPATROL_SESSION_SECRET must be at least {MIN_SESSION_SECRET_CHARS} "
                "characters: set it to 64 random hexadecimal characters (openssl rand -hex 32)"
            )
        return value

    @field_validator("session_max_age_s")
    @classmethod
    def _max_age_in_range(cls, value: int) -> int:
        # Past about a year the expiry of a logged-out session is no date the database holds.
        if not 0 < value <= MAX_SESSION_MAX_AGE_S:
            raise ValueError(
                "GRIDPATROL_SESSION_MAX_AGE_S must be a number of seconds from 1 to "
                f"{MAX_SESSION_MAX_AGE_S} (366 days), got {value}"
            )
        return value

    @field_validator("session_cookie_secure", mode="before")
    @classmethod
    def _secure_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _json_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value, object_pairs_hook=_WrittenObject)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"GRIDPATROL_API_TOKENS is malformed JSON: {exc.msg} at line {exc.lineno} "
                    f"column {exc.colno}"
                ) from None
        return _token_entries(value) if isinstance(value, dict) else value

    @field_validator("config", mode="before")
    @classmethod
    def _empty_config_unset(cls, value: object) -> object:
        # An empty GRIDPATROL_CONFIG= (an env file's line left blank) would be the path ".".
        return None if isinstance(value, str) and not value.strip() else value

    def token_digests(self) -> list[tuple[bytes, TokenEntry]]:
        """Configured tokens as SHA-256 digests, so presented tokens compare in constant time."""
        out = []
        first: dict[bytes, int] = {}
        for position, (token, entry) in enumerate(self.api_tokens.items(), 1):
            if token.startswith("sha256:"):
                digest = _hashed_token(token, entry)
            else:
                digest = hashlib.sha256(token.encode()).digest()
            # A token and its sha256: (in either case of hex) are two keys but one token: the
            # last of them would decide its role.
            if digest in first:
                raise ValueError(
                    f"GRIDPATROL_API_TOKENS: the entry at position {position} is the same token "
                    f"as the entry at position {first[digest]}; each token may appear once"
                )
            first[digest] = position
            out.append((digest, entry))
        return out

    def check(self) -> None:
        """A ValueError naming the setting when the database URL, a token entry or the
        evidence folder cannot work: said before anything is migrated or served."""
        # Without migrations nothing may be created: the start then refuses a SQLite file (and
        # a folder) that is not there, naming it, rather than leave an empty folder behind.
        check_database_url(self.database_url, make_folder=self.migrate_on_start)
        self.token_digests()
        try:
            self.evidence_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = _not_a_folder(self.evidence_dir, exc)
            raise ValueError(f"GRIDPATROL_EVIDENCE_DIR {self.evidence_dir}: {why}") from None

    def load_site(self) -> Site | None:
        if self.config is None:
            log.warning(
                "GRIDPATROL_CONFIG is not set: using the default policy and %s", DEFAULT_TIMEZONE
            )
            return None
        return load_site(self.config)


def load_settings() -> Settings:
    """The settings of the environment; a ValueError naming each invalid variable otherwise,
    without the values pydantic quotes (a session secret, a token written as a key)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ValueError("; ".join(_described(error) for error in exc.errors())) from None


def _described(error: Any) -> str:
    variable = f"GRIDPATROL_{str(error['loc'][0]).upper()}" if error["loc"] else "GRIDPATROL_*"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])  # ours: each names its variable
    return f"{variable}: {error['msg']}"


class _WrittenObject(dict[str, Any]):
    """A JSON object that also keeps its members as written: a plain dict keeps only the last
    of a repeated key, silently dropping an entry and shifting the positions of the others."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _token_entries(raw: dict[Any, Any]) -> dict[str, TokenEntry]:
    """The entries of GRIDPATROL_API_TOKENS; a wrong one is named by its ``name`` or its
    position as written, never by its key, which may be the token itself."""
    if isinstance(raw, _WrittenObject):
        first: dict[str, int] = {}
        for position, (token, entry) in enumerate(raw.pairs, 1):
            if token in first:
                raise ValueError(
                    f"GRIDPATROL_API_TOKENS: the entry at position {position} has the same key "
                    f"as the entry at position {first[token]}; each token may appear once"
                )
            first[token] = position
            # A field written twice is as silent: the last "role" of an entry would decide.
            fields = [field for field, _value in getattr(entry, "pairs", [])]
            twice = next((f for i, f in enumerate(fields) if f in fields[:i]), None)
            if twice is not None:
                raise ValueError(
                    f"GRIDPATROL_API_TOKENS: the entry at position {position} has the field "
                    f"{twice} twice; each field may appear once"
                )
    entries = {}
    for position, (token, entry) in enumerate(raw.items(), 1):
        try:
            entries[str(token)] = TokenEntry.model_validate(entry)
        except ValidationError as exc:
            name = entry.get("name") if isinstance(entry, dict) else None
            named = isinstance(name, str) and name.strip()
            which = f"named {name!r}" if named else f"at position {position}"
            wrong = "; ".join(
                ": ".join([".".join(map(str, e["loc"])), e["msg"]]).lstrip(": ")
                for e in exc.errors()
            )
            raise ValueError(f"GRIDPATROL_API_TOKENS: the entry {which}: {wrong}") from None
    return entries


def _hashed_token(token: str, entry: TokenEntry) -> bytes:
    """The digest of a ``sha256:<hex>`` entry; any other length could never match a token.
    A wrong entry is named by its ``name`` only: an operator may have written the token itself
    after ``sha256:``, and the message must not print part of it."""
    hexdigits = token.removeprefix("sha256:")
    if not _SHA256_HEX.fullmatch(hexdigits):
        raise ValueError(
            f"GRIDPATROL_API_TOKENS: the sha256: entry named {entry.name!r} {_not_hex(hexdigits)}; "
            "it must be the 64 hexadecimal digits of the token's SHA-256"
        )
    return bytes.fromhex(hexdigits)


def _not_hex(text: str) -> str:
    """What is wrong with ``text`` as 64 hexadecimal digits, without showing any of it."""
    if len(text) != 64:
        return f"has {len(text)} characters after sha256:, not 64"
    position = next(i for i, c in enumerate(text, 1) if c not in string.hexdigits)
    return f"has a character that is no hexadecimal digit at position {position} after sha256:"


IN_MEMORY = (
    "GRIDPATROL_DATABASE_URL names an in-memory SQLite database, which loses every candidate "
    "at a stop (and each connection would have one of its own): name a file, such as "
    "sqlite:///./var/gridpatrol.db"
)


def _not_a_folder(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot be made a folder. The system's words ("File exists", "Not a
    directory") do not say which file is in the way; this does."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        for part in (path, *path.parents):
            if part.exists() and not part.is_dir():
                return f"{part} is a file, not a folder"
    return str(exc)


def check_database_url(url: str, *, make_folder: bool = True) -> None:
    """A ValueError naming GRIDPATROL_DATABASE_URL, when SQLAlchemy cannot use it, it names an
    in-memory SQLite database, or the folder of its SQLite file cannot be made (with
    ``make_folder``). The messages are ours: SQLAlchemy's and Python's can quote parts of the
    URL (``int()`` on a port that is a password: ``gp:s3cret/gp``)."""
    from sqlalchemy import util
    from sqlalchemy.dialects import plugins
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"GRIDPATROL_DATABASE_URL is not a database URL ({URL_FORM})") from None
    except ValueError:
        raise ValueError(
            f"GRIDPATROL_DATABASE_URL: its port is not a number ({URL_FORM})"
        ) from None
    try:
        dialect = parsed.get_dialect()
    except ArgumentError:
        raise ValueError(
            "GRIDPATROL_DATABASE_URL: SQLAlchemy knows no database or driver of that name "
            "(postgresql+psycopg, sqlite)"
        ) from None
    # Else the start ends in an ImportError traceback with status 1, which systemd restarts
    # for ever: no restart installs a driver.
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ValueError(
            f"GRIDPATROL_DATABASE_URL: its driver is not installed ({exc}); use "
            "postgresql+psycopg or sqlite"
        ) from None
    if getattr(dialect, "is_async", False):
        raise ValueError(
            "GRIDPATROL_DATABASE_URL names an asyncio driver, which the API cannot use; use "
            "postgresql+psycopg or sqlite"
        )
    # Else create_engine ends the start in a NoSuchModuleError traceback with status 1.
    for name in util.to_list(parsed.query.get("plugin", ())):
        try:
            plugins.load(name)
        except NoSuchModuleError:
            raise ValueError(
                f"GRIDPATROL_DATABASE_URL: its query names plugin={name}, which no installed "
                "package provides; remove it from the URL"
            ) from None
    _check_query(dialect, parsed)
    if in_memory(parsed):
        raise ValueError(IN_MEMORY)
    path = sqlite_path(parsed)
    if path is not None and make_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # SQLite URLs hold a path, no password
            raise ValueError(f"GRIDPATROL_DATABASE_URL: {exc}") from None


def _check_query(dialect: type[Dialect], parsed: URL) -> None:
    """The options of the URL's query as the driver will read them (``timeout=abc``,
    ``check_same_thread=maybe``), and its form (a SQLite URL with a user or a host, a
    PostgreSQL ``port=`` that is no number): their errors would not name the setting, and
    create_engine's ArgumentError ended the start in a traceback with status 1."""
    from sqlalchemy import util
    from sqlalchemy.exc import ArgumentError

    try:
        dialect().create_connect_args(parsed)
        util.asbool(parsed.query.get("uri", "false"))  # read by sqlite_path
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"GRIDPATROL_DATABASE_URL: an option of its query cannot be read ({exc})"
        ) from None
    except ArgumentError as exc:
        # pysqlite's words quote the whole URL over four lines; PostgreSQL's its hosts and ports.
        why = (
            "a SQLite URL has no user, password, host or port: sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
            if parsed.get_backend_name() == "sqlite"
            else str(exc)
        )
        raise ValueError(f"GRIDPATROL_DATABASE_URL: the driver cannot read it ({why})") from None


def sqlite_path(parsed: URL) -> Path | None:
    """The file of a SQLite URL, or None for another database or an in-memory one. With
    ``uri=true`` SQLite reads the name as a ``file:`` URI (its own query already taken off by
    SQLAlchemy): the file is the URI's path, not a folder called ``file:``."""
    from sqlalchemy import util

    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or name in (None, "", ":memory:"):
        return None
    if not util.asbool(parsed.query.get("uri", "false")) or not name.startswith("file:"):
        return Path(name)
    if parsed.query.get("mode") == "memory":
        return None
    path = name.removeprefix("file:")
    if path.startswith("//"):  # file://host/path: SQLite takes only an empty host or localhost
        path = "/" + path[2:].partition("/")[2]
    path = unquote(path)
    return None if path in ("", ":memory:") else Path(path)


def in_memory(parsed: URL) -> bool:
    """Whether a URL names a SQLite database held in memory (or in a temporary file) only."""
    return parsed.get_backend_name() == "sqlite" and sqlite_path(parsed) is None


def site_policy(site: Site | None) -> tuple[Policy, str]:
    """The policy and time zone the API applies."""
    if site is None:
        return Policy(), DEFAULT_TIMEZONE
    return site.policy, site.site.timezone


def generate_tokens() -> dict[str, dict[str, str]]:
    """Fresh random tokens, one per role, for a demo started without configured tokens."""
    return {
        f"gp-{role}-{secrets.token_urlsafe(18)}": {"role": role, "name": f"demo-{role}"}
        for role in ("producer", "reviewer", "platform", "admin")
    }
