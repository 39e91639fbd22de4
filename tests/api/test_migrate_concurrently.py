"""Two API processes migrating one fresh PostgreSQL database at once both end at head."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

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
