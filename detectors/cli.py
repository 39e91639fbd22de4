"""Detector sub-commands: ``scan``, ``detect`` and ``train-head``.

Light at import time: the modules that need OpenVINO, OpenCV or Ultralytics are imported inside
the command that runs, and a command whose module is absent is not offered.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from typing import Any


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or videos")
    parser.add_argument("--config", help="site file; with --camera, run that camera's rules")
    parser.add_argument("--camera", help="camera id in the site file (needs --config)")
    parser.add_argument(
        "--model", help="OpenVINO IR folder, .xml, .onnx, .pt or manifest name (GRIDPATROL_MODEL)"
    )
    parser.add_argument("--fps", type=float, default=2.0, help="video sampling rate (default 2)")
    parser.add_argument(
        "--conf",
        type=float,
        default=0.25,
        help="lowest confidence of the listed detections (default 0.25); with --config --camera "
        "the camera's rules also see the weaker boxes the worker keeps",
    )
    parser.add_argument(
        "--start",
        help="wall-clock time of a video's first frame for --config schedules "
        "(ISO 8601 with offset; default now)",
    )
    parser.add_argument(
        "--heads",
        metavar="DIR",
        help="folder of scene-head files, e.g. var/heads where train-head writes (default: the "
        "heads shipped with gridpatrol)",
    )
    parser.add_argument(
        "--backend", choices=["openvino", "ultralytics"], default="openvino", help=argparse.SUPPRESS
    )


def run_scan(args: argparse.Namespace) -> int:
    from gridpatrol.detectors import scan

    return scan.run(args)


def _run_module(module: str, function: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        code: int = getattr(importlib.import_module(module), function)(args)
        return code

    return run


def register(sub: Any) -> None:
    scan_parser = sub.add_parser(
        "scan",
        help="detect and judge violations in images, folders and videos (JSON lines)",
        description="One JSON object per image or sampled video frame on stdout: source, "
        "frame (index in the video; 0 for stills), ts (seconds from the video start; null for "
        "stills), width, height, detections (pixels), scene (head scores) and violations. "
        "Without --config the rules that can judge a still do so on the whole frame "
        "(dwell_verified false); with --config and --camera a still is judged within that "
        "camera's zones (dwell_verified false) and a video runs through its zones, schedules "
        "and dwell (dwell_verified true). Progress goes to stderr.",
    )
    add_scan_arguments(scan_parser)
    scan_parser.set_defaults(func=run_scan)

    worker = "gridpatrol.detectors.worker"
    if _present(worker):
        detect = sub.add_parser("detect", help="run a detector worker for a site's cameras")
        importlib.import_module(worker).add_arguments(detect)
        detect.set_defaults(func=_run_module(worker, "run"))

    heads = "gridpatrol.detectors.heads"
    if _present(heads):
        train = sub.add_parser("train-head", help="train a scene head (e.g. garbage)")
        importlib.import_module(heads).add_train_arguments(train)
        train.set_defaults(func=_run_module(heads, "run_train"))
