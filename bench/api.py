"""Intake API throughput, as ratios to a bare FastAPI endpoint measured in the same run.

    .venv/bin/python bench/api.py            # SQLite, PostgreSQL with 1 and 2 workers (~2 min)
    .venv/bin/python bench/api.py --quick    # fewer requests
    .venv/bin/python bench/api.py --json     # one JSON object last
    .venv/bin/python bench/api.py --no-postgres  # bare and SQLite only

PostgreSQL: the server of GRIDPATROL_TEST_POSTGRES_URL (as for the tests), or of
GRIDPATROL_BENCH_PG (a libpq URL) when set; its user must be allowed to create databases.

Every candidate is of an auto-confirmed, urgent type, so each one reaches the feed at once.
Each "post" is what a producer does per finding: PUT a ~100 KB JPEG evidence file, then POST a
candidate that references it. The bare baseline is a FastAPI app served by the same uvicorn
settings that accepts the same two requests and does nothing with them, so the ratio shows
what storage, validation and idempotency cost on top of the framework on this machine.
Posts and batches come over 16 (batches: 2) keep-alive connections of a minimal HTTP client
(``bench/rawhttp.py``) that costs far less CPU per request than the server does, so the
generator, which shares the two cores, does not cap the rate it measures.
Each connection first makes :data:`WARMUP_ROUNDS` requests of the kind measured, untimed:
a fresh server's first requests (its database connections opened, lazy imports and
validators built, in every worker) cost many times a steady one and would land in the rate
and the p99 of whichever server meets them, the bare one included. The feed is read once
before it is timed, for the same reason.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from rawhttp import Connection

from gridpatrol.ingest.broker import free_port

TOKENS = {"bench-producer": "producer", "bench-reviewer": "reviewer", "bench-platform": "platform"}
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
# Untimed requests per connection before a load is measured (see the module's docstring).
WARMUP_ROUNDS = 2
POST_CONNECTIONS = 16
BATCH_CONNECTIONS = 2


def pg_admin_url(environ: Mapping[str, str]) -> str:
    """The libpq URL the bench creates its databases through: GRIDPATROL_BENCH_PG, else the
    tests' GRIDPATROL_TEST_POSTGRES_URL (the README has Debian users export it with a password)
    without its SQLAlchemy driver, which libpq does not read."""
    if bench := environ.get("GRIDPATROL_BENCH_PG"):
        return bench
    tests = environ.get("GRIDPATROL_TEST_POSTGRES_URL") or DEFAULT_PG
    return re.sub(r"^(postgres(?:ql)?)\+\w+:", r"\1:", tests)


PG_ADMIN_URL = pg_admin_url(os.environ)

BARE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI, Request
    app = FastAPI()

    @app.get("/api/v1/healthz")
    def health() -> dict:
        return {"status": "ok"}

    @app.put("/api/v1/evidence/{sha}", status_code=201)
    async def put(sha: str, request: Request) -> dict:
        await request.body()
        return {"sha256": sha}

    @app.post("/api/v1/candidates", status_code=201)
    async def post(body: dict) -> dict:
        return body
    """
)


def base_jpeg(target: int = 100_000) -> bytes:
    """A real-looking JPEG of about ``target`` bytes (textured noise)."""
    rng = np.random.default_rng(0)
    side = 200
    while True:
        image = cv2.GaussianBlur(rng.integers(0, 255, (side, side, 3), dtype=np.uint8), (3, 3), 0)
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        if len(data) >= target:
            return data
        side += 40


def unique_jpeg(base: bytes, n: int) -> bytes:
    """The same picture with a unique JPEG comment segment, so every upload is new."""
    text = f"bench {n} {uuid.uuid4()}".encode()
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return base[:2] + segment + base[2:]


def body(sha: str, n: int, kind: str = "manhole_cover") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "source": {
            "type": "camera",
            "system": "bench",
            "camera_id": f"cam-{n % 50}",
            "source_event_id": f"bench-{uuid.uuid4()}",
        },
        "type": kind,
        "description": "井盖异常 / Manhole cover",
        "occurred_at": datetime.now(UTC).isoformat(),
        "location": {"lat": 31.28, "lon": 121.45, "grid_code": "JA-DN-0101"},
        "severity": "MINOR",
        "urgency": "immediate",
        "evidence": [{"sha256": sha, "kind": "clean", "width": 640, "height": 480}],
        "detection": {"model": "yolo11n", "model_version": "8.3", "score": 0.81, "dwell_s": 12},
    }


class Server:
    def __init__(
        self, cmd: list[str], env: dict[str, str], port: int, log: Path, workers: int = 1
    ) -> None:
        self.port = port
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        try:
            self._wait_healthy(log, workers)
        except BaseException:
            # Not started (or Ctrl-C meanwhile): the caller never gets a server to stop.
            self.stop()
            raise

    def _wait_healthy(self, log: Path, workers: int) -> None:
        # Ready when every worker has answered on a fresh connection: connections opened
        # while one is still starting would all go to the others.
        answered: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"server exited with code {code}: {log.read_text()[-2000:]}")
            try:
                health = httpx.get(f"{self.url}/api/v1/healthz", timeout=1)
                if health.status_code == 200:
                    answered.add(health.headers.get("X-Worker-Pid", "one"))
                    if len(answered) >= workers:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not healthy: {log.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM, which a supervisor of --workers passes on to its workers (a SIGKILL would
        leave them running, on the port); SIGKILL only once it has had 25 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_gridpatrol(workdir: Path, db_url: str, workers: int = 1) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "GRIDPATROL_DATABASE_URL": db_url,
        "GRIDPATROL_EVIDENCE_DIR": str(workdir / "evidence"),
        "GRIDPATROL_API_TOKENS": json.dumps(
            {tok: {"role": role, "name": tok} for tok, role in TOKENS.items()}
        ),
    }
    cmd = [sys.executable, "-m", "gridpatrol.cli", "--log-level", "WARNING", "api"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return Server(cmd, env, port, workdir / "log", workers)


def start_bare(workdir: Path) -> Server:
    (workdir / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    return Server(cmd, env, port, workdir / "bare.log")


async def run_load(
    url: str, n: int, concurrency: int, one: Callable[[Connection, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run ``one(conn, i)`` for i < n over ``concurrency`` keep-alive connections, timed
    after :func:`warmed_up` on each of them (i from n on: ``warmup_calls(concurrency)`` more)."""
    latencies: list[float] = []
    counter = iter(range(n))
    host, port = url.removeprefix("http://").split(":")
    connections = [await Connection.open(host, int(port)) for _ in range(concurrency)]

    async def worker(conn: Connection) -> None:
        for i in counter:
            started = time.perf_counter()
            await one(conn, i)
            latencies.append(time.perf_counter() - started)

    try:
        await warmed_up(connections, one, first=n)
        started = time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in connections))
    finally:
        for conn in connections:
            await conn.close()
    return n / (time.perf_counter() - started), latencies


def warmup_calls(concurrency: int) -> int:
    """The untimed calls :func:`run_load` makes before it measures over ``concurrency``
    connections."""
    return WARMUP_ROUNDS * concurrency


async def warmed_up(
    connections: list[Connection],
    one: Callable[[Connection, int], Awaitable[None]],
    first: int,
) -> None:
    """:data:`WARMUP_ROUNDS` calls of ``one`` on every connection, all connections at once
    (i from ``first`` on), so that the first requests of every server worker a connection
    reaches, and the database connections a full load opens, come before the clock starts."""
    rounds = iter(range(first, first + warmup_calls(len(connections))))

    async def warm(conn: Connection) -> None:
        for _ in range(WARMUP_ROUNDS):
            await one(conn, next(rounds))

    await asyncio.gather(*(warm(conn) for conn in connections))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else 0.0


async def posts(url: str, n: int, concurrency: int, image: bytes) -> dict[str, float]:
    auth = {"Authorization": "Bearer bench-producer"}
    put_headers = {**auth, "Content-Type": "image/jpeg"}

    async def one(conn: Connection, i: int) -> None:
        data = unique_jpeg(image, i)
        sha = hashlib.sha256(data).hexdigest()
        put = await conn.request("PUT", f"/api/v1/evidence/{sha}", put_headers, data)
        assert put.status in (200, 201), put.body
        headers = {**auth, "Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
        post = await conn.request(
            "POST", "/api/v1/candidates", headers, json.dumps(body(sha, i)).encode()
        )
        assert post.status in (200, 201), post.body

    rate, lat = await run_load(url, n, concurrency, one)
    return {"posts_per_s": rate, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


async def batches(url: str, n_batches: int, size: int, image: bytes) -> float:
    auth = {"Authorization": "Bearer bench-producer"}
    sha = hashlib.sha256(image).hexdigest()
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=auth, timeout=120) as http:
        await http.put(f"/evidence/{sha}", content=image, headers={"Content-Type": "image/jpeg"})
    headers = {**auth, "Content-Type": "application/json"}

    async def one(conn: Connection, i: int) -> None:
        items = [
            {"idempotency_key": str(uuid.uuid4()), "body": body(sha, i * size + k)}
            for k in range(size)
        ]
        payload = json.dumps({"items": items}).encode()
        response = await conn.request("POST", "/api/v1/candidates/batch", headers, payload)
        assert response.status in (200, 207), response.body

    rate, _ = await run_load(url, n_batches, BATCH_CONNECTIONS, one)
    return rate * size


async def feed(url: str, expected: int) -> float:
    headers = {"Authorization": "Bearer bench-platform"}
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers, timeout=60) as http:
        # Untimed: the client's connection and the route's first request (see the docstring).
        (await http.get("/feed", params={"limit": 1})).raise_for_status()
        seen, cursor = 0, None
        started = time.perf_counter()
        while seen < expected:
            params: dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/feed", params=params)).json()
            if not page["items"]:
                break
            seen += len(page["items"])
            cursor = page["next_cursor"]
        elapsed = time.perf_counter() - started
    if seen < expected:
        raise RuntimeError(f"the feed returned {seen} of {expected} candidates")
    return seen / elapsed


def check_postgres() -> None:
    """Stop before the first phase when PostgreSQL cannot be used, rather than after minutes
    of bare and SQLite figures that a failed PostgreSQL phase would throw away."""
    import psycopg
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=5).close()
    except (psycopg.Error, ValueError) as exc:
        try:
            shown = make_url(PG_ADMIN_URL).render_as_string(hide_password=True)
        except ArgumentError:  # a libpq key=value string, which may hold a password
            shown = "GRIDPATROL_BENCH_PG"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SystemExit(
            f"PostgreSQL at {shown} cannot be used ({reason}): set GRIDPATROL_TEST_POSTGRES_URL"
            " (or GRIDPATROL_BENCH_PG) to a server whose user may create databases,"
            " or run with --no-postgres"
        ) from None


def create_pg_database() -> tuple[str, Callable[[], None]]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"gp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # The admin URL's user, password, host and query, on the new database, for SQLAlchemy.
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False), drop


def measure_backend(
    label: str,
    db_url: str,
    workdir: Path,
    n: int,
    image: bytes,
    bare: dict[str, float],
    workers: int = 1,
) -> dict[str, Any]:
    print(f"[{label}] starting the API ({workers} worker(s))", file=sys.stderr)
    server = start_gridpatrol(workdir, db_url, workers)
    try:
        print(f"[{label}] {n} posts with evidence", file=sys.stderr)
        result: dict[str, Any] = asyncio.run(posts(server.url, n, POST_CONNECTIONS, image))
        size, n_batches = 100, max(4, n // 50)
        print(f"[{label}] batch posts", file=sys.stderr)
        result["batch_candidates_per_s"] = asyncio.run(batches(server.url, n_batches, size, image))
        # The warm-ups' candidates are in the feed too.
        warmups = warmup_calls(POST_CONNECTIONS) + warmup_calls(BATCH_CONNECTIONS) * size
        expected = n + n_batches * size + warmups
        print(f"[{label}] reading {expected} candidates through the feed", file=sys.stderr)
        result["feed_candidates_per_s"] = asyncio.run(feed(server.url, expected))
    finally:
        server.stop()
    result["posts_ratio_to_bare"] = result["posts_per_s"] / bare["posts_per_s"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--pg-workers",
        type=int,
        default=2,
        help="also measure PostgreSQL with this many API worker processes (1: skip)",
    )
    args = parser.parse_args()
    if not args.no_postgres:
        check_postgres()
    n = 300 if args.quick else 1500
    image = base_jpeg()
    results: dict[str, Any] = {
        "jpeg_bytes": len(image),
        "posts": n,
        "concurrency": POST_CONNECTIONS,
        "warmup_rounds": WARMUP_ROUNDS,
    }
    try:
        measure_all(args, n, image, results)
    finally:
        # Also after a failed or interrupted phase: the figures measured before it.
        if "bare" in results:
            print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0


def measure_all(args: argparse.Namespace, n: int, image: bytes, results: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="gp-bench-api-") as tmp:
        work = Path(tmp)
        bare_server = start_bare(work)
        try:
            print("[bare] posts with evidence", file=sys.stderr)
            bare = asyncio.run(posts(bare_server.url, n, POST_CONNECTIONS, image))
        finally:
            bare_server.stop()
        results["bare"] = bare
        (work / "sqlite").mkdir()
        sqlite_url = f"sqlite:///{work}/sqlite/api.db"
        results["sqlite"] = measure_backend("sqlite", sqlite_url, work / "sqlite", n, image, bare)
        if not args.no_postgres:
            for label, workers in (("postgres", 1), ("postgres_workers", args.pg_workers)):
                if workers < 2 and label != "postgres":
                    continue
                (work / label).mkdir()
                pg_url, drop = create_pg_database()
                try:
                    results[label] = measure_backend(
                        label, pg_url, work / label, n, image, bare, workers
                    )
                    results[label]["workers"] = workers
                finally:
                    drop()


def print_table(results: dict[str, Any]) -> None:
    bare = results["bare"]
    print(f"bare FastAPI: {bare['posts_per_s']:.0f} posts/s, p50 {bare['p50_ms']:.1f} ms")
    for label in ("sqlite", "postgres", "postgres_workers"):
        if label not in results:
            continue
        r = results[label]
        workers = f" ({r['workers']} workers)" if r.get("workers", 1) > 1 else ""
        print(
            f"{label}{workers}: {r['posts_per_s']:.0f} posts/s with evidence "
            f"({r['posts_ratio_to_bare']:.2f} x bare), p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms; batch {r['batch_candidates_per_s']:.0f} candidates/s; "
            f"feed {r['feed_candidates_per_s']:.0f} candidates/s"
        )


if __name__ == "__main__":
    sys.exit(main())
