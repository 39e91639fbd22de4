"""``gridpatrol api`` with a setting that cannot work: status 2 and one line naming it."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from .conftest import DATABASES, fresh_database
from .test_migrate_concurrently import head

ADMIN = {"role": "admin", "name": "a"}

SAMPLE_ENV = Path(__file__).resolve().parents[2] / "samples" / "systemd" / "api.env"


def sample_tokens() -> str:
    """GRIDPATROL_API_TOKENS as samples/systemd/api.env ships it, placeholders and all."""
    return sample_setting("GRIDPATROL_API_TOKENS")


HEX_SUFFIX = "gp-s3cret-token"  # a token written where its hash belongs


def sample_setting(name: str) -> str:
    """A setting's value as samples/systemd/api.env ships it."""
    lines = SAMPLE_ENV.read_text().splitlines()
    return next(line for line in lines if line.startswith(f"{name}=")).split("=", 1)[1]


IN_MEMORY = (
    "GRIDPATROL_DATABASE_URL names an in-memory SQLite database, which loses every candidate "
    "at a stop (and each connection would have one of its own): name a file, such as "
    "sqlite:///./var/gridpatrol.db"
)
SHORT_SECRET = (
    "GRIDPATROL_SESSION_SECRET must be at least 32 characters: set it to 64 random hexadecimal "
    "characters (openssl rand -hex 32)"
)
MAX_AGE = "GRIDPATROL_SESSION_MAX_AGE_S must be a number of seconds from 1 to 31622400 (366 days)"

# A session secret is never printed: whoever knows it signs session cookies.
SESSION_CASES = [
    # An empty key: a cookie is forged from a token's sha256: entry alone.
    ("GRIDPATROL_SESSION_SECRET", "", SHORT_SECRET),
    ("GRIDPATROL_SESSION_SECRET", "s3cret-of-31-characters-xxxxxxx", SHORT_SECRET),
    ("GRIDPATROL_SESSION_SECRET", sample_setting("GRIDPATROL_SESSION_SECRET"),
     "GRIDPATROL_SESSION_SECRET is still the placeholder of samples/systemd/api.env: set it "
     "to 64 random hexadecimal characters (openssl rand -hex 32)"),
    ("GRIDPATROL_SESSION_MAX_AGE_S", "-60", f"{MAX_AGE}, got -60"),
    ("GRIDPATROL_SESSION_MAX_AGE_S", "0", f"{MAX_AGE}, got 0"),
    ("GRIDPATROL_SESSION_MAX_AGE_S", "1000000000000", f"{MAX_AGE}, got 1000000000000"),
    ("GRIDPATROL_SESSION_MAX_AGE_S", "31622401", f"{MAX_AGE}, got 31622401"),
]  # fmt: skip
# A key may be the token itself: an entry is named by its name, or else its position.
TOKEN_CASES = [
    ("GRIDPATROL_API_TOKENS", json.dumps({"gp-TOPSECRET-s3cret": {"role": "reviwer",
                                                                  "name": "wang"}}),
     "GRIDPATROL_API_TOKENS: the entry named 'wang': role: Input should be 'producer', "
     "'reviewer', 'platform' or 'admin'"),
    ("GRIDPATROL_API_TOKENS", json.dumps({"t": ADMIN, "gp-TOPSECRET-s3cret": {"role": "admin"}}),
     "GRIDPATROL_API_TOKENS: the entry at position 2: name: Field required"),
    ("GRIDPATROL_API_TOKENS", json.dumps({"gp-TOPSECRET-s3cret": "admin"}),
     "GRIDPATROL_API_TOKENS: the entry at position 1: Input should be a valid dictionary or "
     "instance of TokenEntry"),
    ("GRIDPATROL_API_TOKENS", json.dumps({"gp-TOPSECRET-s3cret": ADMIN})[:-1],
     "GRIDPATROL_API_TOKENS is malformed JSON: Expecting ',' delimiter at line 1 column 55"),
    ("GRIDPATROL_API_TOKENS", json.dumps(["gp-TOPSECRET-s3cret"]),
     "GRIDPATROL_API_TOKENS: Input should be a valid dictionary"),
    # A repeated key: JSON parsers keep one of the two entries, whichever they like.
    ("GRIDPATROL_API_TOKENS",
     '{"gp-TOPSECRET-s3cret": {"role": "admin", "name": "a"}, "t": {"role": "admin", "name": '
     '"b"}, "gp-TOPSECRET-s3cret": {"role": "producer", "name": "c"}}',
     "GRIDPATROL_API_TOKENS: the entry at position 3 has the same key as the entry at position "
     "1; each token may appear once"),
    # Positions as written: the first repeat found is the 4th entry, of the 1st one's key.
    ("GRIDPATROL_API_TOKENS",
     '{"t": {"role": "admin", "name": "a"}, "gp-TOPSECRET-s3cret": {"role": "admin", "name": '
     '"b"}, "u": {"role": "admin", "name": "c"}, "t": {"role": "admin", "name": "d"}, '
     '"gp-TOPSECRET-s3cret": {"role": "admin", "name": "e"}}',
     "GRIDPATROL_API_TOKENS: the entry at position 4 has the same key as the entry at position "
     "1; each token may appear once"),
    # A field written twice: the last would decide, silently.
    ("GRIDPATROL_API_TOKENS",
     '{"t": {"role": "admin", "name": "a"}, "gp-TOPSECRET-s3cret": {"role": "admin", "role": '
     '"producer", "name": "b"}}',
     "GRIDPATROL_API_TOKENS: the entry at position 2 has the field role twice; each field may "
     "appear once"),
    ("GRIDPATROL_API_TOKENS",
     '{"gp-TOPSECRET-s3cret": {"role": "admin", "role": "producer", "name": "a"}}',
     "GRIDPATROL_API_TOKENS: the entry at position 1 has the field role twice; each field may "
     "appear once"),
    # One token as two keys: as written and as its digest (upper-case hex).
    ("GRIDPATROL_API_TOKENS",
     json.dumps({"gp-TOPSECRET-s3cret": ADMIN, "u": {"role": "admin", "name": "b"},
                 "sha256:" + hashlib.sha256(b"gp-TOPSECRET-s3cret").hexdigest().upper():
                 {"role": "producer", "name": "c"}}),
     "GRIDPATROL_API_TOKENS: the entry at position 3 is the same token as the entry at position "
     "1; each token may appear once"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("GRIDPATROL_DATABASE_URL", "foo",
         "GRIDPATROL_DATABASE_URL is not a database URL "
         "(dialect+driver://user:password@host:port/name)"),
        ("GRIDPATROL_DATABASE_URL", "postgres ql://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL is not a database URL "
         "(dialect+driver://user:password@host:port/name)"),
        # The password where the port belongs: int() would quote it.
        ("GRIDPATROL_DATABASE_URL", "postgresql://gp:s3cretdb/gp",
         "GRIDPATROL_DATABASE_URL: its port is not a number "
         "(dialect+driver://user:password@host:port/name)"),
        ("GRIDPATROL_DATABASE_URL", "nos3cretdb://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL: SQLAlchemy knows no database or driver of that name "
         "(postgresql+psycopg, sqlite)"),
        ("GRIDPATROL_DATABASE_URL", "sqlite:////proc/nope/gp.db",
         "GRIDPATROL_DATABASE_URL: [Errno 2] No such file or directory: '/proc/nope'"),
        # No restart installs a driver: status 2, not an ImportError traceback (status 1).
        ("GRIDPATROL_DATABASE_URL", "mysql://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL: its driver is not installed (No module named 'MySQLdb'); "
         "use postgresql+psycopg or sqlite"),
        ("GRIDPATROL_DATABASE_URL", "postgresql+pg8000://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL: its driver is not installed (No module named 'pg8000'); "
         "use postgresql+psycopg or sqlite"),
        ("GRIDPATROL_DATABASE_URL", "postgresql+psycopg_async://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL names an asyncio driver, which the API cannot use; use "
         "postgresql+psycopg or sqlite"),
        # create_engine would raise NoSuchModuleError: a traceback and status 1.
        ("GRIDPATROL_DATABASE_URL", "sqlite:///gp.db?plugin=nope",
         "GRIDPATROL_DATABASE_URL: its query names plugin=nope, which no installed package "
         "provides; remove it from the URL"),
        ("GRIDPATROL_DATABASE_URL", "postgresql+psycopg://gp:s3cret@db/gp?plugin=nope",
         "GRIDPATROL_DATABASE_URL: its query names plugin=nope, which no installed package "
         "provides; remove it from the URL"),
        # The driver's options: Python's words alone did not name the setting.
        *[("GRIDPATROL_DATABASE_URL", f"sqlite:///gp.db?{option}",
           f"GRIDPATROL_DATABASE_URL: an option of its query cannot be read ({says})")
          for option, says in (
            ("timeout=abc", "could not convert string to float: 'abc'"),
            ("check_same_thread=maybe", "String is not true/false: 'maybe'"),
            ("uri=maybe", "String is not true/false: 'maybe'"),
            ("detect_types=x", "invalid literal for int() with base 10: 'x'"))],
        # create_engine would raise ArgumentError: a traceback and status 1.
        ("GRIDPATROL_DATABASE_URL", "sqlite://gp:s3cret@localhost/gp.db",
         "GRIDPATROL_DATABASE_URL: the driver cannot read it (a SQLite URL has no user, "
         "password, host or port: sqlite:///relative/path.db or sqlite:////absolute/path.db)"),
        ("GRIDPATROL_DATABASE_URL", "postgresql+psycopg://gp:s3cret@/gp?host=db&port=abc",
         "GRIDPATROL_DATABASE_URL: the driver cannot read it (Received non-integer port "
         "arguments: ('abc',))"),
        # Lost at every stop, and SQLAlchemy's pool for it refused the pool's options.
        *[("GRIDPATROL_DATABASE_URL", url, IN_MEMORY) for url in (
            "sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?uri=true",
            "sqlite:///file:gp?mode=memory&cache=shared&uri=true")],
        ("GRIDPATROL_EVIDENCE_DIR", "/proc/nope/ev",
         "GRIDPATROL_EVIDENCE_DIR /proc/nope/ev: [Errno 2] No such file or directory: "
         "'/proc/nope'"),
        # Not "[Errno 17] File exists" nor "[Errno 20] Not a directory": which file is in the way.
        ("GRIDPATROL_EVIDENCE_DIR", "/etc/passwd",
         "GRIDPATROL_EVIDENCE_DIR /etc/passwd: /etc/passwd is a file, not a folder"),
        ("GRIDPATROL_EVIDENCE_DIR", "/etc/passwd/ev",
         "GRIDPATROL_EVIDENCE_DIR /etc/passwd/ev: /etc/passwd is a file, not a folder"),
        ("GRIDPATROL_API_TOKENS", json.dumps({"sha256:abcd": ADMIN}),
         "GRIDPATROL_API_TOKENS: the sha256: entry named 'a' has 4 characters after sha256:, "
         "not 64; it must be the 64 hexadecimal digits of the token's SHA-256"),
        ("GRIDPATROL_API_TOKENS", json.dumps({"sha256:" + HEX_SUFFIX + "x" * 16: ADMIN}),
         "GRIDPATROL_API_TOKENS: the sha256: entry named 'a' has 31 characters after sha256:, "
         "not 64; it must be the 64 hexadecimal digits of the token's SHA-256"),
        ("GRIDPATROL_API_TOKENS", json.dumps({"sha256:" + "ab" * 29 + "s3cret": ADMIN}),
         "GRIDPATROL_API_TOKENS: the sha256: entry named 'a' has a character that is no "
         "hexadecimal digit at position 59 after sha256:; it must be the 64 hexadecimal digits "
         "of the token's SHA-256"),
        ("GRIDPATROL_API_TOKENS", sample_tokens(),
         "GRIDPATROL_API_TOKENS: the sha256: entry named 'workers' has 16 characters after "
         "sha256:, not 64; it must be the 64 hexadecimal digits of the token's SHA-256"),
        *SESSION_CASES,
        *TOKEN_CASES,
    ],
)  # fmt: skip
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_setting_that_cannot_work_stops_the_api_with_status_2(
    tmp_path: Path, setting: str, value: str, says: str, workers: str
) -> None:
    done = run_api(tmp_path, {setting: value}, ["--workers", workers])
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert line.endswith(f" ERROR gridpatrol.api.cli: the intake API cannot start: {says}")
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
    assert "TOPSECRET" not in done.stderr
    if setting == "GRIDPATROL_SESSION_SECRET" and value:
        assert value not in done.stderr


def run_api(
    tmp_path: Path, settings: dict[str, str], options: list[str]
) -> subprocess.CompletedProcess[str]:
    """``gridpatrol api`` on a port the test holds: past the checks it cannot listen, so it
    ends (never serves) whether or not a check stopped it."""
    env = {
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{tmp_path}/gp.db",
        "GRIDPATROL_EVIDENCE_DIR": str(tmp_path / "evidence"),
        "GRIDPATROL_API_TOKENS": json.dumps({"t": ADMIN}),
        "PATH": "/usr/bin:/bin",
        **settings,
    }
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        return subprocess.run(
            [sys.executable, "-m", "gridpatrol.cli", "api", "--port", port, *options],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_good_settings_pass_the_checks(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    evidence.chmod(0o555)  # an existing folder is fine as it is
    settings = {
        "GRIDPATROL_DATABASE_URL": "sqlite:///var/db/gp.db",  # relative to the working folder
        "GRIDPATROL_EVIDENCE_DIR": str(evidence),
        "GRIDPATROL_API_TOKENS": json.dumps({"sha256:" + "Ab" * 32: ADMIN}),
    }
    done = run_api(tmp_path, settings, [])
    # Migrated and ready; then uvicorn's start-up failure on the port the test holds.
    assert done.returncode == 3, done.stderr[-3000:]
    assert "intake API ready: database sqlite" in done.stderr
    assert "address already in use" in done.stderr
    assert (tmp_path / "var" / "db" / "gp.db").is_file()
    assert " ERROR gridpatrol" not in done.stderr


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_port_out_of_range_is_refused(tmp_path: Path, port: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "api", "--port", port],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"gridpatrol api: error: argument --port: must be a port number from 1 to 65535, got "
        f"{port!r}"
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("GRIDPATROL_SESSION_SECRET", "0123456789abcdef0123456789abcdef"),
        ("GRIDPATROL_SESSION_MAX_AGE_S", "1"),
        ("GRIDPATROL_SESSION_MAX_AGE_S", "31622400"),
    ],
)
def test_session_settings_in_range_pass_the_checks(
    tmp_path: Path, setting: str, value: str
) -> None:
    done = run_api(tmp_path, {setting: value}, [])
    assert done.returncode == 3, done.stderr[-3000:]  # ready, then the port the test holds
    assert "intake API ready: database sqlite" in done.stderr
    assert " ERROR gridpatrol" not in done.stderr


def test_an_empty_site_file_setting_is_taken_as_unset(tmp_path: Path) -> None:
    done = run_api(tmp_path, {"GRIDPATROL_CONFIG": ""}, [])
    assert done.returncode == 3, done.stderr[-3000:]  # ready, then the port the test holds
    assert (
        " WARNING gridpatrol.api.settings: GRIDPATROL_CONFIG is not set: using the default "
        "policy and Asia/Shanghai" in done.stderr
    )
    assert "intake API ready: database sqlite" in done.stderr
    assert " ERROR gridpatrol" not in done.stderr


def at_revision(url: str, revision: str | None) -> None:
    """Stamp the empty database at ``url`` with ``revision`` (no table for None)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if revision is not None:
                conn.exec_driver_sql(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
                )
                conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{revision}')")
    finally:
        engine.dispose()


def start_refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a start refused with status 2, after 'cannot start: '."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "intake API ready" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if " ERROR " in line]
    return line.split(" ERROR gridpatrol.api.cli: the intake API cannot start: ", 1)[1]


@pytest.mark.parametrize(
    ("kind", "workers"),
    [
        ("sqlite", "1"),
        pytest.param("postgres", "1", marks=pytest.mark.postgres),
        pytest.param("postgres", "2", marks=pytest.mark.postgres),
    ],
)
def test_a_database_of_a_newer_release_stops_the_api_with_status_2(
    tmp_path: Path, postgres_url: str, kind: str, workers: str
) -> None:
    with fresh_database(kind, tmp_path, postgres_url) as url:
        at_revision(url, "0099")
        done = run_api(tmp_path, {"GRIDPATROL_DATABASE_URL": url}, ["--workers", workers])
    assert start_refused(done) == f"database at revision 0099, this release knows up to {head()}"


BEHIND = "start one instance with GRIDPATROL_MIGRATE_ON_START=true to migrate it"


def revision_of(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kind", "workers"),
    [
        ("sqlite", "1"),
        pytest.param("postgres", "1", marks=pytest.mark.postgres),
        pytest.param("postgres", "2", marks=pytest.mark.postgres),
    ],
)
@pytest.mark.parametrize(
    ("revision", "says"),
    [
        (None, "database at revision none (never migrated), this release needs {head}; " + BEHIND),
        ("0001", "database at revision 0001, this release needs {head}; " + BEHIND),
        # A newer release's: no start of this one mends it, with migrations on or off.
        ("0099", "database at revision 0099, this release knows up to {head}"),
    ],
)
def test_a_start_without_migrations_needs_the_database_at_head(
    tmp_path: Path, postgres_url: str, kind: str, workers: str, revision: str | None, says: str
) -> None:
    settings = {"GRIDPATROL_MIGRATE_ON_START": "false"}
    with fresh_database(kind, tmp_path, postgres_url) as url:
        if revision == "0001":
            migrate_to(url, revision)  # its tables too: an upgrade would succeed
        else:
            at_revision(url, revision)
        done = run_api(
            tmp_path, {**settings, "GRIDPATROL_DATABASE_URL": url}, ["--workers", workers]
        )
        assert revision_of(url) == revision  # nothing migrated it
    assert start_refused(done) == says.format(head=head())
    assert "Context impl" not in done.stderr and " INFO alembic" not in done.stderr


def migrate_to(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    cfg = Config(str(files("gridpatrol.api").joinpath("alembic.ini")))
    cfg.set_main_option("script_location", str(files("gridpatrol.api").joinpath("migrations")))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("name", "missing"),
    [("typo.db", "does not exist"), ("", "is not a file"), ("typo/sub/gp.db", "does not exist")],
)
def test_a_start_without_migrations_refuses_a_sqlite_file_that_is_not_there(
    tmp_path: Path, name: str, missing: str
) -> None:
    path = tmp_path / name  # "": the test's folder
    settings = {
        "GRIDPATROL_MIGRATE_ON_START": "false",
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{path}",
    }
    done = run_api(tmp_path, settings, [])
    assert start_refused(done) == (
        f"the SQLite database {path} {missing}; GRIDPATROL_MIGRATE_ON_START is false, so "
        "nothing creates it"
    )
    assert path.is_dir() if not name else not path.exists()
    # Nothing is created, not even the folder of a mistyped path.
    assert not (tmp_path / "typo").exists()


def test_a_start_without_migrations_serves_a_sqlite_uri_filename_at_head(tmp_path: Path) -> None:
    # With uri=true SQLite opens the path after file: (relative to the working directory).
    run_api(tmp_path, {"GRIDPATROL_DATABASE_URL": f"sqlite:///{tmp_path}/rel/new.db"}, [])
    assert revision_of(f"sqlite:///{tmp_path}/rel/new.db") == head()
    settings = {
        "GRIDPATROL_MIGRATE_ON_START": "false",
        "GRIDPATROL_DATABASE_URL": "sqlite:///file:rel/new.db?mode=ro&uri=true",
    }
    done = run_api(tmp_path, settings, [])
    assert done.returncode == 3, done.stderr[-3000:]  # ready, then the port the test holds
    assert "intake API ready" in done.stderr and "migrated to head" not in done.stderr
    assert not (tmp_path / "file:rel").exists()


@pytest.mark.parametrize("kind", DATABASES)
def test_a_start_without_migrations_serves_a_database_at_head(
    tmp_path: Path, postgres_url: str, kind: str
) -> None:
    with fresh_database(kind, tmp_path, postgres_url) as url:
        run_api(tmp_path, {"GRIDPATROL_DATABASE_URL": url}, [])  # migrates it
        settings = {"GRIDPATROL_MIGRATE_ON_START": "false", "GRIDPATROL_DATABASE_URL": url}
        done = run_api(tmp_path, settings, [])
    assert done.returncode == 3, done.stderr[-3000:]  # ready, then the port the test holds
    assert "intake API ready" in done.stderr and "migrated to head" not in done.stderr


@pytest.mark.parametrize("migrate", ["true", "false"])
def test_a_sqlite_file_that_is_no_database_stops_the_api_with_status_2(
    tmp_path: Path, migrate: str
) -> None:
    # A file named by mistake (a config file, a compressed backup): no restart mends it.
    path = tmp_path / "gp.db"
    path.write_text("[api]\nport = 8000\n" * 100)
    settings = {
        "GRIDPATROL_MIGRATE_ON_START": migrate,
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{path}",
    }
    done = run_api(tmp_path, settings, [])
    assert start_refused(done) == (
        f"the SQLite database {path} cannot be used: file is not a database"
    )
    assert path.read_text() == "[api]\nport = 8000\n" * 100


def test_a_sqlite_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "gp.db"
    folder.mkdir()  # a folder where the file belongs
    done = run_api(tmp_path, {"GRIDPATROL_DATABASE_URL": f"sqlite:///{folder}"}, [])
    assert start_refused(done) == (
        f"the SQLite database {folder} cannot be used: unable to open database file"
    )
