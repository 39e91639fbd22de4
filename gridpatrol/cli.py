"""The ``gridpatrol`` command.

Each package contributes its sub-commands through a module with a ``register(subparsers)``
function. Those modules import only argparse-level things at the top, so ``gridpatrol --help``
and light commands start fast; heavy imports (OpenVINO, FastAPI, Ultralytics) happen inside
the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from gridpatrol import __version__

# Modules that register sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "gridpatrol.commands",
    "gridpatrol.api.cli",
    "gridpatrol.ingest.cli",
    "gridpatrol.detectors.cli",
    "gridpatrol.alarm_bridge.cli",
    "gridpatrol.demo",
)


log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("httpx", "httpcore")


def stop_on_signals(stop: threading.Event, component: str = "gridpatrol") -> None:
    """SIGTERM and SIGINT set ``stop`` so a component can shut down in order."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: signal %d, shutting down", component, signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridpatrol", description="Video patrol and sensor ingestion for grid centres."
    )
    parser.add_argument("--version", action="version", version=f"gridpatrol {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a package without commands yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    # At INFO httpx logs every request's URL whole, a camera's credentials with it.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`gridpatrol scan … | head`): end quietly, as Unix tools do.
        # Python's exit flush would fail on the closed pipe too, so stdout goes to devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        # Ctrl-C in a command that does not handle it (scan, outbox --drain): one line and the
        # shell's status for SIGINT, no traceback.
        print(f"gridpatrol {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return code


if __name__ == "__main__":
    sys.exit(main())
