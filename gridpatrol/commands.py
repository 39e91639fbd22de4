"""Commands of the thin top-level package: ``check-config``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gridpatrol.site import SiteFile


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
    from gridpatrol.site import SiteConfigError, read_site, site_warnings, summarise

    try:
        model, names, why = _model_classes(args.model)
    except ModelNotFoundError as exc:  # only when --model names one explicitly
        print(f"check-config: {exc}", file=sys.stderr)
        return 2
    try:
        checked = read_site(args.file, class_names=names or None)
    except SiteConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: INVALID ({len(exc.problems)} problem(s))", file=sys.stderr)
        return 1
    from gridpatrol.ingest.patrol import patrol_overload
    from gridpatrol.ingest.sources import source_kind

    site = checked.site
    # A camera on MQTT sends its own frames: ingest patrols only the others (ingest.service).
    patrolled = [c for c in site.cameras if source_kind(c.source) != "mqtt"]
    for line in [
        *summarise(site, source_kind),
        *patrol_overload(patrolled, site.patrol.max_fps),
        *site_warnings(checked),
        *_source_warnings(checked),
        *_head_warnings(checked),
    ]:
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


def _head_warnings(checked: SiteFile) -> list[str]:
    """A garbage_overflow zone whose scene head is not shipped needs detect --heads."""
    from gridpatrol.detectors.heads import HEADS_DIR

    shipped = sorted(_head_name(meta) for meta in HEADS_DIR.glob("*.json"))
    out = []
    for c, cam in enumerate(checked.site.cameras):
        for z, zone in enumerate(cam.zones):
            rule = zone.rules.garbage_overflow
            if rule is not None and rule.head not in shipped:
                at = checked.at("cameras", c, "zones", z, "rules", "garbage_overflow", "head")
                out.append(
                    f"{at}: warning: {rule.head!r} is not a shipped scene head (shipped: "
                    f"{', '.join(shipped) or 'none'}): detect and scan need --heads with a folder "
                    f"holding {rule.head}.json and {rule.head}.npz, or the zone never raises"
                )
    return out


def _head_name(meta: Path) -> str:
    try:
        name = json.loads(meta.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return meta.stem
    return name if isinstance(name, str) else meta.stem


# A camera's address written without its scheme: an IP address, www.…, host:port, user@….
_ADDRESS = re.compile(r"^([^/@\s]+@)?((\d{1,3}\.){3}\d{1,3}|www\.[^/\s]+|[^/\s:]+:\d{2,5})(/|$)")


def _source_warnings(checked: SiteFile) -> list[str]:
    """A camera source that ingest will not read as meant, e.g. an address without a scheme."""
    base = Path(checked.name).parent
    out = []
    for c, cam in enumerate(checked.site.cameras):
        odd = _odd_source(cam.source, base)
        if odd is not None:
            out.append(f"{checked.at('cameras', c, 'source')}: warning: {odd}")
    return out


def _odd_source(source: str, base: Path) -> str | None:
    # The schema has refused unknown schemes and normalised mqtt, case and spaces already.
    from gridpatrol.ingest.sources import resolve_path, source_kind

    kind = source_kind(source)
    if kind == "mqtt":
        return None
    parts = urlsplit(source)
    if kind != "file":
        if not parts.hostname:
            return f"{source!r} names no host: write {parts.scheme}://host/…"
        return None
    if re.match(r"^[A-Za-z]:[\\/]", source) or "\\" in source:
        name = source.replace("\\", "/").rsplit("/", 1)[-1]
        return (
            f"{source!r} looks like a Windows path: write the path on the machine that runs "
            f"ingest, with /, e.g. /srv/footage/{name}"
        )
    if _ADDRESS.match(source):
        return (
            f"{source!r} looks like a camera's address without a scheme, and is read as a file "
            f"path: write rtsp://{source} for a stream or http://{source} for snapshots"
        )
    if not resolve_path(source, base).exists():
        return (
            f"no file {source!r} in the working directory ({Path.cwd()}) nor beside the site "
            f"file ({base / source}), where ingest looks for it"
        )
    return None
