"""Two API processes migrating one fresh PostgreSQL database at once both end at head; a
start waiting for another's migration says who holds it."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from gridpatrol.api.db import MIGRATION_LOCK

from .conftest import fresh_database

# Everything imported and the engine made before the go: both upgrades start together.
MIGRATE = """
import sys
from gridpatrol.api.db import Database
db = Database(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
db.migrate()
db.dispose()
print("migrated", flush=True)
"""


def head() -> str:
    script = ScriptDirectory(str(files("gridpatrol.api").joinpath("migrations")))
    return str(script.get_current_head())


@pytest.mark.postgres
@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_migrate_a_fresh_database_at_once(
    tmp_path: Path, postgres_url: str, attempt: int
) -> None:
    with fresh_database("postgres", tmp_path, postgres_url) as url:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", MIGRATE, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:  # the barrier: both are released together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        done = [proc.communicate(timeout=120) for proc in procs]
        for proc, (out, err) in zip(procs, done, strict=True):
            assert proc.returncode == 0, err[-3000:]
            assert out == "migrated\n"
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        finally:
            engine.dispose()
        assert versions == [(head(),)]


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)
    into.put("")  # the end


def _next_line_with(lines: queue.Queue[str], text: str, within_s: float) -> str:
    """The next line of ``lines`` holding ``text``; fails at the stream's end or after
    ``within_s`` (a bound on a hang, not a measured time)."""
    end = time.monotonic() + within_s
    while True:
        line = lines.get(timeout=max(0.0, end - time.monotonic()))
        assert line, f"the process ended without saying {text!r}"
        if text in line:
            return line


@pytest.mark.postgres
def test_a_start_waiting_for_the_migration_lock_names_its_holder(
    tmp_path: Path, postgres_url: str
) -> None:
    side = sa.create_engine(postgres_url)
    with fresh_database("postgres", tmp_path, postgres_url) as url, side.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        holder.commit()
        pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        holder.commit()
        env = {
            "GRIDPATROL_DATABASE_URL": url,
            "GRIDPATROL_EVIDENCE_DIR": str(tmp_path / "evidence"),
            "GRIDPATROL_API_TOKENS": json.dumps({"t": {"role": "admin", "name": "a"}}),
            "PATH": "/usr/bin:/bin",
        }
        with socket.socket() as held:  # past ready it cannot listen, and ends with status 3
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = str(held.getsockname()[1])
            proc = subprocess.Popen(
                [sys.executable, "-m", "gridpatrol.cli", "api", "--port", port],
                env=env,
                cwd=tmp_path,
                stderr=subprocess.PIPE,
                text=True,
            )
            lines: queue.Queue[str] = queue.Queue(maxsize=10_000)
            reader = threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True)
            reader.start()
            try:
                warning = _next_line_with(lines, "migration lock", 60)
                assert " WARNING gridpatrol.api.db: waiting " in warning
                assert f"held by PostgreSQL backend pid {pid} " in warning
                assert proc.poll() is None
                holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                holder.commit()
                _next_line_with(lines, "intake API ready", 60)
                assert proc.wait(timeout=60) == 3  # ready, then the port the test holds
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                reader.join(timeout=10)
        with side.connect() as conn:
            conn.exec_driver_sql(f"SET search_path TO {url.rsplit('%3D', 1)[1]}")
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert versions == [(head(),)]
    side.dispose()
