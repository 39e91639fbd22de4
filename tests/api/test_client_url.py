"""A GRIDPATROL_API_URL that cannot be the API's stops the producers at the start: one line,
status 2. Left to run, a bridge would take alarms off the broker and its outbox retry them for
ever against a URL httpx refuses."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
        ("http://gp:s3@cret@api:80a", "GRIDPATROL_API_URL 'http://gp:***@api:80a': a password "
         "must percent-encode # ? / @ (%23 %3F %2F %40)"),
        # a parser would quote the password's first piece as the port: 'Tr0ub4dor'
        ("http://gp:Tr0ub4dor#3@api:8000", "GRIDPATROL_API_URL 'http://gp:***@api:8000': a "
         "password must percent-encode # ? / @ (%23 %3F %2F %40)"),
        ("http://gp:Tr0/ub4dor@api:8000", "GRIDPATROL_API_URL 'http://gp:***@api:8000': a "
         "password must percent-encode # ? / @ (%23 %3F %2F %40)"),
        # a password of digits then a "/": host gp, port 2024 for a parser, and the rest a path
        *[(f"http://gp:2024{c}S3cret@127.0.0.1:9", "GRIDPATROL_API_URL 'http://***@127.0.0.1:9': "
           "a password must percent-encode # ? / @ (%23 %3F %2F %40)") for c in "/?#"],
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


PROXIES = ("all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_socks_all_proxy_the_api_bypasses_is_not_needed(
    no_proxies: pytest.MonkeyPatch, api_server: Any
) -> None:
    """A SOCKS ``all_proxy`` in the shell (without the socks extra installed) and the API on a
    host ``no_proxy`` names: the client is built and reaches the API directly."""
    no_proxies.setenv("all_proxy", "socks5://127.0.0.1:1")
    no_proxies.setenv("no_proxy", "localhost,127.0.0.1")
    client = ApiClient(api_server.url, api_server.tokens["reviewer"])
    try:
        assert client.list_candidates() == {"items": [], "next_cursor": None}
    finally:
        client.close()


def test_an_api_behind_a_socks_proxy_without_the_extra_is_one_clear_line(
    no_proxies: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_proxies.setenv("ALL_PROXY", "socks5://me:s3cret@127.0.0.1:1080")
    with pytest.raises(ApiConfigError) as err:
        ApiClient("http://gp:pw@d@api.example:8000", "tok-producer")
    says = (
        "the API at http://gp:***@api.example:8000: the environment's proxy"
        " socks5://me:***@127.0.0.1:1080 cannot be used: Using SOCKS proxy, but the 'socksio'"
        " package is not installed. Make sure to install httpx using `pip install httpx[socks]`."
        " (a SOCKS proxy needs httpx's socks extra: pip install 'httpx[socks]'); or add the host"
        " to no_proxy"
    )
    assert str(err.value) == says
    done = gridpatrol(  # the proxy setting inherited
        ["bridge", "--config", str(SITE)],
        tmp_path,
        GRIDPATROL_API_URL="http://gp:pw@d@api.example:8000",
        GRIDPATROL_MQTT_URL="mqtt://127.0.0.1:1",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line.endswith(f" ERROR gridpatrol.alarm_bridge.cli: {says}"), line


class Proxy(ThreadingHTTPServer):
    """An HTTP proxy that answers every request itself, recording the URLs asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.asked.append(self.path)
                body = json.dumps({"items": [], "next_cursor": None}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_an_http_proxy_of_the_environment_is_still_used(no_proxies: pytest.MonkeyPatch) -> None:
    proxy = Proxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        no_proxies.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        no_proxies.setenv("no_proxy", "elsewhere.example")
        client = ApiClient("http://api.example:8000", "tok-reviewer")
        try:
            assert client.list_candidates(limit=5) == {"items": [], "next_cursor": None}
        finally:
            client.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy.asked == ["http://api.example:8000/api/v1/candidates?limit=5"]
