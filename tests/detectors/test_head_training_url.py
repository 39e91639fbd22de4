"""``train-head --from-reviews``: the intake API's URL, read and checked as the other commands
read it, and shown without its password."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from gridpatrol.api.client import DEFAULT_API_URL
from gridpatrol.detectors.head_training import _api_url

from .test_train_head import train_head


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound, never listening, held meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def env_with(**settings: str) -> dict[str, str]:
    return {**os.environ, "GRIDPATROL_API_TOKEN": "tok-reviewer", **settings}


def test_the_api_urls_password_is_not_shown(closed_port: int) -> None:
    url = f"http://gp:S3cretPw@127.0.0.1:{closed_port}"
    proc = train_head(
        "--from-reviews", "--name", "garbage", "--cv-only", env=env_with(GRIDPATROL_API_URL=url)
    )
    assert proc.returncode == 2, proc.stderr
    assert "S3cretPw" not in proc.stderr + proc.stdout
    assert proc.stderr.splitlines()[-1].startswith(
        f"train-head: intake API at http://gp:***@127.0.0.1:{closed_port}: "
    )


@pytest.mark.parametrize(
    ("option", "variable", "says"),
    [
        # Every request failed, and each was tried 4 times, before the run stopped.
        ([], "ftp://x",
         "train-head: GRIDPATROL_API_URL must be http://host[:port] or https://…, got 'ftp://x'"),
        (["--api-url", "ftp://x"], "",
         "train-head: --api-url must be http://host[:port] or https://…, got 'ftp://x'"),
        ([], "http://gp:pw#S3cret@127.0.0.1:1",
         "train-head: GRIDPATROL_API_URL 'http://gp:***@127.0.0.1:1': a password must "
         "percent-encode # ? / @ (%23 %3F %2F %40)"),
    ],
)  # fmt: skip
def test_an_api_url_that_cannot_work_is_one_line_and_status_2_at_once(
    option: list[str], variable: str, says: str
) -> None:
    proc = train_head(
        "--from-reviews", "--name", "garbage", "--cv-only", *option,
        env=env_with(GRIDPATROL_API_URL=variable),
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [says]


def test_an_empty_api_url_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was taken as the URL "", and every request failed on it, retried.
    monkeypatch.setenv("GRIDPATROL_API_URL", "")
    assert _api_url(None) == DEFAULT_API_URL
    monkeypatch.delenv("GRIDPATROL_API_URL")
    assert _api_url("") == DEFAULT_API_URL
    assert _api_url("https://api.example/intake") == "https://api.example/intake"
