"""Run every benchmark in turn (``make bench``); each prints its own ratios and figures.

    .venv/bin/python bench/run_all.py            # full runs (~20 min on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # short runs
    .venv/bin/python bench/run_all.py api mqtt   # only these

Run it on a quiet machine: the figures are ratios measured within each run, but a busy
neighbour still adds noise. Results belong in docs/PERFORMANCE.md with their command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("api", "mqtt", "detector", "rules", "heads", "bridge", "console")
# How long an interrupted bench may take to stop its servers, brokers and databases.
CLEANUP_S = 60.0


def run(cmd: list[str], grace: float = CLEANUP_S) -> int:
    """Run one bench; on Ctrl-C let it clean up before passing the interrupt on."""
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The bench shares our process group, so it got the Ctrl-C too and is running its
        # finally blocks; subprocess.call would SIGKILL it after 0.25 s and leave its API,
        # brokers, temporary directories and PostgreSQL databases behind.
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description="run the gridpatrol benchmarks")
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="short runs")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    failed = []
    for name in args.names or BENCHES:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        try:
            code = run(cmd)
        except KeyboardInterrupt:
            print(f"== {name}: interrupted after {time.monotonic() - started:.0f} s", flush=True)
            return 130
        print(f"== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
