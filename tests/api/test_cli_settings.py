"""``gridpatrol api`` with a setting that cannot work: status 2 and one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ADMIN = {"role": "admin", "name": "a"}
SAMPLE_ENV = Path(__file__).resolve().parents[2] / "samples" / "systemd" / "api.env"


def sample_tokens() -> str:
    """GRIDPATROL_API_TOKENS as samples/systemd/api.env ships it, placeholders and all."""
    lines = SAMPLE_ENV.read_text().splitlines()
    return next(line for line in lines if line.startswith("GRIDPATROL_API_TOKENS=")).split("=", 1)[
        1
    ]


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("GRIDPATROL_DATABASE_URL", "foo",
         "GRIDPATROL_DATABASE_URL is not a database URL: Could not parse SQLAlchemy URL from "
         "given URL string"),
        ("GRIDPATROL_DATABASE_URL", "postgres ql://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL is not a database URL: Could not parse SQLAlchemy URL from "
         "given URL string"),
        ("GRIDPATROL_DATABASE_URL", "nosuchdb://gp:s3cret@db/gp",
         "GRIDPATROL_DATABASE_URL is not a database URL: Can't load plugin: "
         "sqlalchemy.dialects:nosuchdb"),
        ("GRIDPATROL_DATABASE_URL", "sqlite:////proc/nope/gp.db",
         "GRIDPATROL_DATABASE_URL: [Errno 2] No such file or directory: '/proc/nope'"),
        ("GRIDPATROL_EVIDENCE_DIR", "/proc/nope/ev",
         "GRIDPATROL_EVIDENCE_DIR /proc/nope/ev: [Errno 2] No such file or directory: "
         "'/proc/nope'"),
        ("GRIDPATROL_API_TOKENS", json.dumps({"sha256:abcd": ADMIN}),
         "GRIDPATROL_API_TOKENS: the entry 'sha256:abcd' (name 'a') must be sha256: and the 64 "
         "hexadecimal digits of the token's SHA-256"),
        ("GRIDPATROL_API_TOKENS", json.dumps({"sha256:" + "ab" * 33: ADMIN}),
         "GRIDPATROL_API_TOKENS: the entry 'sha256:abababababababababababa...' (name 'a') must "
         "be sha256: and the 64 hexadecimal digits of the token's SHA-256"),
        ("GRIDPATROL_API_TOKENS", sample_tokens(),
         "GRIDPATROL_API_TOKENS: the entry 'sha256:REPLACE-WITH-HEX' (name 'workers') must be "
         "sha256: and the 64 hexadecimal digits of the token's SHA-256"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_setting_that_cannot_work_stops_the_api_with_status_2(
    tmp_path: Path, setting: str, value: str, says: str, workers: str
) -> None:
    env = {
        "GRIDPATROL_DATABASE_URL": f"sqlite:///{tmp_path}/gp.db",
        "GRIDPATROL_EVIDENCE_DIR": str(tmp_path / "evidence"),
        "GRIDPATROL_API_TOKENS": json.dumps({"t": ADMIN}),
        "PATH": "/usr/bin:/bin",
        setting: value,
    }
    done = subprocess.run(
        [sys.executable, "-m", "gridpatrol.cli", "api", "--port", "1", "--workers", workers],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert line.endswith(f" ERROR gridpatrol.api.cli: the intake API cannot start: {says}")
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
    assert not (tmp_path / "gp.db").exists()  # refused before anything was migrated
