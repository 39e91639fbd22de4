"""A GRIDPATROL_API_URL that cannot be the API's stops the producers at the start: one line,
status 2. Left to run, a bridge would take alarms off the broker and its outbox retry them for
ever against a URL httpx refuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gridpatrol.api.client import ApiClient, ApiConfigError, Outbox

from ..ingest.test_tls_settings import SITE, gridpatrol

NO_SCHEME = "GRIDPATROL_API_URL must be http://host[:port] or https://…, got 'api:8000'"
NO_EXTRAS = (
    "GRIDPATROL_API_URL must be http://host[:port][/path] or https://… with no spaces around it "
    "and no query or fragment, got "
)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("api:8000", NO_SCHEME),
        ("ftp://api:8000", "GRIDPATROL_API_URL must be http://host[:port] or https://…, got "
         "'ftp://api:8000'"),
        ("http://:8000", "GRIDPATROL_API_URL must be http://host[:port] or https://…, got "
         "'http://:8000'"),
        ("http://api server:8000", "GRIDPATROL_API_URL must be http://host[:port] or https://…, "
         "got 'http://api server:8000'"),
        ("http://gp:s3cret@api:80a", "GRIDPATROL_API_URL 'http://gp:***@api:80a': Port could "
         "not be cast to integer value as '80a'"),
        ("http://api:8000\n", "GRIDPATROL_API_URL 'http://api:8000\\n': Invalid non-printable "
         "ASCII character in URL, '\\n' at position 15."),
        # httpx takes these as URLs, then refuses every request (UnsupportedProtocol) or
        # sends each to a URL that is not the API's (/api/v1 lost in the query or fragment).
        (" http://127.0.0.1:9", f"{NO_EXTRAS}' http://127.0.0.1:9'"),
        ("http://api:8000/ ", f"{NO_EXTRAS}'http://api:8000/ '"),
        ("http://api:8000?x=1", f"{NO_EXTRAS}'http://api:8000?x=1'"),
        ("http://api:8000/?", f"{NO_EXTRAS}'http://api:8000/?'"),
        ("http://gp:s3cret@api:8000/#top", f"{NO_EXTRAS}'http://gp:***@api:8000/#top'"),
    ],
)  # fmt: skip
def test_from_env_refuses_a_url_that_cannot_be_the_apis(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "tok-producer")
    monkeypatch.setenv("GRIDPATROL_API_URL", url)
    with pytest.raises(ApiConfigError) as err:
        ApiClient.from_env()
    assert str(err.value) == says
    assert isinstance(err.value, RuntimeError)  # what the commands catch for status 2


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://api.example:8443/intake", "https://api.example:8443/intake"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://api:8000/", "http://api:8000"),
        ("http://api/intake/", "http://api/intake"),
        ("", "http://127.0.0.1:8000"),  # set but empty: the default, as for the broker URL
    ],
)
def test_from_env_takes_http_and_https_urls(
    monkeypatch: pytest.MonkeyPatch, url: str, base: str
) -> None:
    monkeypatch.setenv("GRIDPATROL_API_TOKEN", "tok-producer")
    monkeypatch.setenv("GRIDPATROL_API_URL", url)
    client = ApiClient.from_env()
    try:
        assert client.base_url == base
    finally:
        client.close()


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # The broker URL is never reached.
    return gridpatrol(
        args, tmp_path, GRIDPATROL_API_URL="api:8000", GRIDPATROL_MQTT_URL="mqtt://127.0.0.1:1"
    )


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["bridge", "--config", str(SITE)], f" ERROR gridpatrol.alarm_bridge.cli: {NO_SCHEME}"),
        (
            ["detect", "--config", str(SITE), "--shard", "0/1"],
            f" ERROR gridpatrol.detectors.worker: detect-0-of-1: cannot start: {NO_SCHEME}",
        ),
    ],
)
def test_the_producers_exit_2_with_one_line(tmp_path: Path, command: list[str], says: str) -> None:
    done = run(command, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line.endswith(says), line
    assert not (tmp_path / "state").exists()  # stopped before the bridge's state database


def test_outbox_drain_exits_2_with_one_line(tmp_path: Path) -> None:
    Outbox(tmp_path / "left.db", None, component="detect").stop()
    done = run(["outbox", str(tmp_path / "left.db"), "--drain"], tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"outbox: {NO_SCHEME}\n")
