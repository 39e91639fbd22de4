"""bench/api.py finds PostgreSQL where the tests do, and stops before measuring when it cannot
use it (a failed PostgreSQL phase came after minutes of bare and SQLite figures, all lost)."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gridpatrol.ingest.broker import free_port

Bench = Callable[[str], ModuleType]
BENCH = Path(__file__).resolve().parents[2] / "bench"


def admin_url_with(
    monkeypatch: pytest.MonkeyPatch, bench_pg: str | None, tests_pg: str | None
) -> str:
    """PG_ADMIN_URL of bench/api.py loaded afresh with these two variables (None: unset)."""
    for name, value in (
        ("GRIDPATROL_BENCH_PG", bench_pg),
        ("GRIDPATROL_TEST_POSTGRES_URL", tests_pg),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    name = f"bench_api_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, BENCH / "api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])  # it imports bench/rawhttp.py
    spec.loader.exec_module(module)
    url: str = module.PG_ADMIN_URL
    return url


def test_the_admin_url_is_the_tests_database_without_its_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readme = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/test"  # README's export
    assert admin_url_with(monkeypatch, None, readme) == (
        "postgresql://postgres:postgres@127.0.0.1:5432/test"
    )
    assert admin_url_with(monkeypatch, None, None) == "postgresql://postgres@127.0.0.1:5432/test"
    assert admin_url_with(monkeypatch, "postgresql://bench@db.example:5433/admin", readme) == (
        "postgresql://bench@db.example:5433/admin"
    )


def unreachable_bench(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[ModuleType, int, list[str]]:
    """bench/api.py with these arguments, its admin URL on a port nothing listens on (with a
    password), and its bare phase replaced by a stand-in that fails; the phases started."""
    api = bench("api")
    port = free_port()
    monkeypatch.setattr(api, "PG_ADMIN_URL", f"postgresql://postgres:secret@127.0.0.1:{port}/test")
    phases: list[str] = []

    def bare_phase(work: Path) -> None:
        phases.append("bare")
        raise RuntimeError("stand-in failure")

    monkeypatch.setattr(api, "start_bare", bare_phase)
    monkeypatch.setattr(sys, "argv", ["api.py", *argv])
    return api, port, phases


def test_an_unreachable_postgres_stops_the_bench_before_its_first_phase(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, port, phases = unreachable_bench(bench, monkeypatch, "--quick")
    with pytest.raises(SystemExit) as raised:
        api.main()
    message = str(raised.value)
    assert phases == []
    assert message.startswith(f"PostgreSQL at postgresql://postgres:***@127.0.0.1:{port}/test ")
    assert message.endswith(
        "set GRIDPATROL_TEST_POSTGRES_URL (or GRIDPATROL_BENCH_PG) to a server whose user may"
        " create databases, or run with --no-postgres"
    )
    assert "secret" not in message
    assert "\n" not in message


def test_no_postgres_skips_the_check(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    api, _, phases = unreachable_bench(bench, monkeypatch, "--quick", "--no-postgres")
    with pytest.raises(RuntimeError, match=r"^stand-in failure$"):
        api.main()
    assert phases == ["bare"]


@pytest.mark.postgres
def test_a_bench_database_is_created_and_dropped_through_the_admin_url(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = bench("api")
    admin = api.PG_ADMIN_URL
    url, drop = api.create_pg_database()
    name = make_url(url).database
    try:
        assert make_url(url).drivername == "postgresql+psycopg"
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT current_database()")).scalar_one() == name
        finally:
            engine.dispose()
    finally:
        drop()
    with psycopg.connect(admin) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert left.fetchone() == (0,)
