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
    parser.add_argument(
        "--model",
        help="check the classes the rules name against this model (default: GRIDPATROL_MODEL, "
        "else the manifest's default; looked up on disk only, skipped when absent)",
    )
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    from gridpatrol.detectors.models import ModelNotFoundError
    from gridpatrol.site import SiteConfigError, load_site, summarise

    try:
        model, names, why = _model_classes(args.model)
    except ModelNotFoundError as exc:  # only when --model names one explicitly
        print(f"check-config: {exc}", file=sys.stderr)
        return 2
    try:
        site = load_site(args.file, class_names=names or None)
    except SiteConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: INVALID ({len(exc.problems)} problem(s))", file=sys.stderr)
        return 1
    from gridpatrol.ingest.patrol import patrol_overload

    for line in [*summarise(site), *patrol_overload(site.cameras, site.patrol.max_fps)]:
        print(line)
    if names:
        print(f"classes: checked against model {model} ({len(names)} classes)")
    else:
        print(f"classes: not checked ({why})")
    print(f"{args.file}: OK")
    return 0


def _model_classes(arg: str | None) -> tuple[str, tuple[str, ...], str]:
    """(model name, class names, why there are none) for the class check.

    A model named by ``--model`` must exist; the default one is optional, since a site file
    is often checked on a machine without weights.
    """
    from gridpatrol.detectors.models import ModelNotFoundError, local_class_names

    try:
        model, names = local_class_names(arg)
    except ModelNotFoundError as exc:
        if arg:
            raise
        return "", (), f"no model on this machine: {str(exc).splitlines()[0]}"
    return model, names, f"model {model} has no metadata.yaml with class names"
