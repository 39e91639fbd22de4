"""bench/run_all.py: an interrupted bench gets to run its cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[2] / "bench" / "run_all.py"

# A bench whose cleanup (like stopping its servers and dropping its database) takes a second.
STUB = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    marker = Path(os.environ["STUB_MARKER"])
    try:
        marker.with_suffix(".started").write_text("started")
        time.sleep(120)
    finally:
        time.sleep(1)
        marker.write_text("cleaned up")
    """
)

# run_all's main() with its bench directory and list pointed at the stub.
DRIVER = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("run_all", sys.argv[1])
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    run_all.HERE = Path(sys.argv[2])
    run_all.BENCHES = ("stub",)
    sys.argv = ["run_all.py", "stub"]
    sys.exit(run_all.main())
    """
)


def test_ctrl_c_lets_the_bench_finish_its_cleanup(tmp_path: Path) -> None:
    (tmp_path / "stub.py").write_text(STUB)
    marker = tmp_path / "marker.txt"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(RUN_ALL), str(tmp_path)],
        env={**os.environ, "STUB_MARKER": str(marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.with_suffix(".started").exists():
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < deadline, "the stub bench never started"
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        output, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert (marker.read_text() if marker.exists() else "killed before its cleanup") == "cleaned up"
    assert driver.returncode == 130, output
    assert b"== stub: interrupted after" in output
