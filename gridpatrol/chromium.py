"""Which Chromium drives the review console headless (browser tests, ``bench/console.py``).

GRIDPATROL_CHROMIUM, else a `chromium` on PATH that runs, else None: Playwright's own Chromium.
Ubuntu's `chromium` package is a stub of a snap that does not run where there is no snapd;
`make browser` installs Playwright's Chromium then.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def system_chromium() -> str | None:
    """The executable to launch, or None for Playwright's own Chromium."""
    if chosen := os.environ.get("GRIDPATROL_CHROMIUM"):
        return chosen
    found = shutil.which("chromium")
    if found is None:
        return None
    try:
        done = subprocess.run([found, "--version"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found if done.returncode == 0 else None
