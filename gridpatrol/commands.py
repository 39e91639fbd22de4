"""Commands of the thin top-level package: ``check-config``."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "check-config", help="validate a site file and summarise it"
    )
    parser.add_argument("file", help="the site YAML file")
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    from gridpatrol.site import SiteConfigError, load_site, summarise

    try:
        site = load_site(args.file)
    except SiteConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: INVALID ({len(exc.problems)} problem(s))", file=sys.stderr)
        return 1
    for line in summarise(site):
        print(line)
    print(f"{args.file}: OK")
    return 0
