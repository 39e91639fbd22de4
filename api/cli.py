"""``gridpatrol api``: serve the intake API (imports FastAPI only when run)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "api", help="serve the intake API, the pull feed and the review console"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from gridpatrol.api.app import create_app
    from gridpatrol.site import SiteConfigError

    try:
        app = create_app()
    except (RuntimeError, SiteConfigError, ValueError) as exc:
        # ValueError covers invalid GRIDPATROL_* settings (pydantic names the field).
        log.error("the intake API cannot start: %s", exc)
        return 2
    level = logging.getLogger().getEffectiveLevel()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_level=logging.getLevelName(level).lower(),
        access_log=level <= logging.DEBUG,
    )
    return 0
