"""The process supervisor of ``gridpatrol api --workers N``.

Each worker listens on a socket of its own, bound to the same address with SO_REUSEPORT, so the
kernel spreads new connections over the workers by their addresses. With one shared listening
socket (uvicorn's own ``workers=N``) whichever worker waits in ``accept`` takes the next
connection, and a burst of keep-alive connections can all land on one worker: measured on a
2-core host, 16 of 16 connections on one worker, 225 posts/s with two workers against 230 with
one; with a socket per worker, 379 against 262.

The parent starts the workers, restarts one that dies after it had served, stops everything
when a worker could not start (the same error would repeat), and on SIGTERM or SIGINT asks
every worker to finish its requests, then waits for them.

Every server, a worker's or that of ``gridpatrol api`` alone, is a ``Server``: told to stop, it
sets ``app.state.stopping``, so event streams end and feed long polls answer at once (they would
hold the graceful shutdown until their clients left), and it gives the requests still running
GRACEFUL_SHUTDOWN_S before it cancels them, well inside STOP_TIMEOUT_S and the 10 s a container
runtime allows before it kills.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from gridpatrol.cli import stop_on_signals

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
# What a stopping server gives the requests still running, then it cancels them.
GRACEFUL_SHUTDOWN_S = 5
# A worker's exit code when it never served: the same error would repeat on every restart.
EXIT_STARTUP_FAILURE = 3


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs; it is pickled to the spawned child."""

    host: str
    port: int
    log_config: dict[str, Any]
    log_level: str
    access_log: bool


class Server(uvicorn.Server):
    """uvicorn's server, which also tells the app when it is told to stop: ``stopping`` is set
    on the first SIGTERM or SIGINT (put it on ``app.state.stopping``)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler may interrupt the event loop anywhere: the event is set by the loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.stopping.set)


def config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of every ``gridpatrol api`` server."""
    return uvicorn.Config(app, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **options)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that other sockets with SO_REUSEPORT may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def worker_main(spec: WorkerSpec) -> None:
    """A worker: its own socket, one server of the app factory."""

    def build_app() -> Any:
        # Called by uvicorn as it starts the server below.
        from gridpatrol.api.app import create_app

        app = create_app()
        app.state.stopping = server.stopping
        return app

    server = Server(
        config(
            build_app,
            factory=True,
            log_config=spec.log_config,
            log_level=spec.log_level,
            access_log=spec.access_log,
        )
    )
    try:
        server.run(sockets=[listening_socket(spec.host, spec.port)])
    except BaseException:
        # uvicorn exits with 1 when the app cannot be built; tell the parent it never served.
        if not server.started:
            raise SystemExit(EXIT_STARTUP_FAILURE) from None
        raise
    if not server.started:
        raise SystemExit(EXIT_STARTUP_FAILURE)


class Supervisor:
    def __init__(self, spec: WorkerSpec, count: int) -> None:
        self.spec = spec
        self.count = count
        self.stop = threading.Event()
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []

    def run(self) -> int:
        """Serve until a signal (0) or until a worker cannot start (2)."""
        # Held, not listened on: the port is ours from here on, and a worker that cannot
        # bind it fails at start instead of in a restart loop later.
        address = f"{self.spec.host}:{self.spec.port}"
        try:
            guard = listening_socket(self.spec.host, self.spec.port)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {address}: {exc}") from exc
        stop_on_signals(self.stop, "api")
        try:
            self._workers = [self._spawn(slot) for slot in range(self.count)]
            log.info("%d workers serving on %s:%d", self.count, self.spec.host, self.spec.port)
            while not self.stop.wait(0.5):
                if not self._keep_alive():
                    return 2
            return 0
        finally:
            self._stop_all()
            guard.close()

    def _spawn(self, slot: int) -> BaseProcess:
        process = self._context.Process(
            target=worker_main, args=(self.spec,), name=f"gridpatrol-api-{slot}"
        )
        process.start()
        log.info("api worker %d started: pid %s", slot, process.pid)
        return process

    def _keep_alive(self) -> bool:
        """Restart workers that died; False when one failed at start."""
        for slot, process in enumerate(self._workers):
            if process.is_alive():
                continue
            code = process.exitcode
            if code == EXIT_STARTUP_FAILURE:
                log.error(
                    "api worker %d (pid %s) failed at start (exit code %s); stopping",
                    slot,
                    process.pid,
                    code,
                )
                return False
            log.warning("api worker %d (pid %s) died (exit code %s)", slot, process.pid, code)
            self._workers[slot] = self._spawn(slot)
        return True

    def _stop_all(self) -> None:
        for process in self._workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("api worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
