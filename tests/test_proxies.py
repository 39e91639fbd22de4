"""The proxy our HTTP requests take from the environment: the one httpx would take."""

from __future__ import annotations

import re

import pytest

from gridpatrol import proxies
from gridpatrol.proxies import ProxyUnusable, masked, proxy_for, transport

VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    # Each test sees the warnings of its own no_proxy: they are given once per process.
    monkeypatch.setattr(proxies, "_warned", set())
    return monkeypatch


@pytest.mark.parametrize(
    ("variables", "url", "proxy"),
    [
        ({}, "http://api.example:8000", None),
        ({"http_proxy": "http://p:3128"}, "http://api.example:8000", "http://p:3128"),
        ({"HTTP_PROXY": "http://p:3128"}, "http://api.example:8000", "http://p:3128"),
        ({"http_proxy": "http://p:3128"}, "https://api.example", None),
        ({"https_proxy": "http://p:3128"}, "https://api.example", "http://p:3128"),
        ({"all_proxy": "socks5://s:1080"}, "https://api.example", "socks5://s:1080"),
        # curl's reading: a proxy named without a scheme is an HTTP proxy
        ({"http_proxy": "p.corp:3128"}, "http://api.example:8000", "http://p.corp:3128"),
        ({"http_proxy": "http://p:1", "no_proxy": "127.0.0.1"}, "http://127.0.0.1:8000", None),
        ({"http_proxy": "http://p:1", "no_proxy": "::1"}, "http://[::1]:8000", None),
        ({"http_proxy": "http://p:1", "no_proxy": "localhost,*"}, "http://api.example", None),
        ({"http_proxy": "http://p:1", "no_proxy": "*"}, "http://api.example", None),
        ({"http_proxy": "http://p:1", "no_proxy": "example"}, "http://api.example", None),
        ({"http_proxy": "http://p:1", "no_proxy": ".example"}, "http://example", "http://p:1"),
        ({"http_proxy": "http://p:1", "no_proxy": "other"}, "http://gp:pw@api:80", "http://p:1"),
        ({"all_proxy": "socks5://s:1", "NO_PROXY": "cam.lan"}, "http://cam.lan/snap", None),
    ],
)  # fmt: skip
def test_the_proxy_is_the_one_httpx_takes_from_the_environment(
    env: pytest.MonkeyPatch, variables: dict[str, str], url: str, proxy: str | None
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    assert proxy_for(url) == proxy


SOCKSIO = (
    "Using SOCKS proxy, but the 'socksio' package is not installed. Make sure to install httpx"
    " using `pip install httpx[socks]`. (a SOCKS proxy needs httpx's socks extra: pip install"
    " 'httpx[socks]')"
)


@pytest.mark.parametrize(
    ("proxy", "cause"),
    [
        ("socks5://me:s3cret@s:1080", SOCKSIO),
        ("ftp://me:s3cret@p:21", "httpx cannot use its URL"),
        ("ftp://p:21", "Unknown scheme for proxy URL URL('ftp://p')"),
        ("http://p:notaport", "Invalid port: 'notaport'"),
        # httpx's words would quote a piece of the password it took for a port
        ("http://me:pw#1@p:3128", "httpx cannot use its URL"),
    ],
)  # fmt: skip
def test_a_proxy_that_cannot_be_used_is_one_clear_error(
    env: pytest.MonkeyPatch, proxy: str, cause: str
) -> None:
    env.setenv("all_proxy", proxy)
    with pytest.raises(ProxyUnusable) as err:
        transport("http://api.example:8000/?user=admin&pwd=S3cret")
    shown = re.sub(r":(s3cret|pw#1)@", ":***@", proxy)
    # Not the URL: the caller shows it, redacted as it must be (its query too).
    assert str(err.value) == (
        f"the environment's proxy {shown} cannot be used: {cause}; or add the host to no_proxy"
    )


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxy"),
    [
        ("192.168.1.0/24,localhost", "http://192.168.1.64/snap.jpg", None),
        ("192.168.1.0/24", "http://192.168.2.64/snap.jpg", "socks5://s:1"),
        ("fd00::/8", "http://[fd00::10]:8080/", None),
        ("[fd00::]/8", "http://[fd00::10]:8080/", None),  # curl's bracketed form
        ("[fd00::]/8", "http://[fe80::10]:8080/", "socks5://s:1"),
        ("10.0.0.0/8", "http://cam.lan/", "socks5://s:1"),  # a name: not an address in it
        ("10.0.0.0/33,10.1.2.3", "http://10.1.2.3/", None),  # a broken network is no match
    ],
)
def test_a_no_proxy_network_holds_the_addresses_in_it(
    env: pytest.MonkeyPatch, no_proxy: str, url: str, proxy: str | None
) -> None:
    env.setenv("all_proxy", "socks5://s:1")
    env.setenv("no_proxy", no_proxy)
    assert proxy_for(url) == proxy


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("socks5://me:s3cret@s:1080", "socks5://me:***@s:1080"),
        # a password may hold an '@': the user info ends at the netloc's last one
        ("http://admin:p@ss@cam/snap?at=a@b", "http://admin:***@cam/snap?at=a@b"),
        ("http://u:p@w@[fe80::1]:8080/", "http://u:***@[fe80::1]:8080/"),
        ("http://gp:s3cret@api:80a", "http://gp:***@api:80a"),
        # a password may hold an unencoded '#' or '?', which ends the user info for a parser
        ("http://gp:Tr0ub#4@api:8000/x", "http://gp:***@api:8000/x"),
        ("socks5://me:p?w@p:1080", "socks5://me:***@p:1080"),
        ("http://gp:Pa/ss@api:8000/x", "http://gp:***@api:8000/x"),
        # a host and its port, a path holding an '@': no user info (so a password of digits
        # then a '/ ? #', which reads the same, is not seen: it has to be percent-encoded)
        ("http://api:8000/a@b", "http://api:8000/a@b"),
        ("rtsp://192.168.1.10:554/cam@1", "rtsp://192.168.1.10:554/cam@1"),
        ("http://10.0.0.5:80/snap@2x.jpg", "http://10.0.0.5:80/snap@2x.jpg"),
        ("http://[::1]:8000/a@b", "http://[::1]:8000/a@b"),
        ("http://host:8080?x=a@b", "http://host:8080?x=a@b"),  # a query holding an '@'
        # no password: as given, however broken, since callers show it as typed
        ("http://admin@cam/s.cgi?pwd=x", "http://admin@cam/s.cgi?pwd=x"),
        ("http://api:8000\n", "http://api:8000\n"),
        ("http://api:8000/a:b@c", "http://api:8000/a:b@c"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        # no "//": whatever a parser would make of it, nothing before the last '@' shows
        ("mqtt:/gp:S3cret@127.0.0.1:1883", "mqtt:/***@127.0.0.1:1883"),
        ("mqtt:gp:S3cret@127.0.0.1:1883", "mqtt:***@127.0.0.1:1883"),
        ("gp:S3cret@127.0.0.1:1883", "gp:***@127.0.0.1:1883"),
        ("@@S3cret@host", "***@host"),
    ],
)  # fmt: skip
def test_masked_hides_the_whole_password(url: str, shown: str) -> None:
    assert masked(url) == shown


@pytest.mark.parametrize("no_proxy", ["[::1]", "::1/128", "localhost,[::1]", "[::1]/128"])
def test_an_ipv6_no_proxy_entry_as_curl_takes_it_holds_the_address(
    env: pytest.MonkeyPatch, no_proxy: str
) -> None:
    # A bracketed address or an IPv6 network failed httpx's parsing, at every request.
    env.setenv("http_proxy", "http://p:1")
    env.setenv("no_proxy", no_proxy)
    assert proxy_for("http://[::1]:8000/") is None
    assert proxy_for("http://10.0.0.5/") == "http://p:1"
    transport("http://[::1]:8000/")
    transport("http://10.0.0.5/")


def test_a_no_proxy_entry_httpx_cannot_read_is_left_out_with_one_warning(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("http_proxy", "http://p:1")
    env.setenv("no_proxy", "cam.lan,a:b:c]:x,10.0.0.0/8")
    for _ in range(3):
        assert proxy_for("http://cam.lan/") is None
        assert proxy_for("http://10.1.2.3/") is None
        assert proxy_for("http://api.example/") == "http://p:1"
        transport("http://api.example/")
    assert [r.getMessage() for r in caplog.records] == [
        "no_proxy: the entry 'a:b:c]:x' is not a host, domain or network: left out"
    ]


def test_a_no_proxy_entry_ending_in_a_slash_is_its_host_and_a_broken_network_warns(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("http_proxy", "http://p:1")
    env.setenv("no_proxy", "192.168.1.10/,cam.lan/,cam.lan/24,10.0.0.0/33")
    for _ in range(2):
        assert proxy_for("http://192.168.1.10/snap.jpg") is None
        assert proxy_for("http://cam.lan/snap.jpg") is None
        assert proxy_for("http://10.0.0.1/") == "http://p:1"
    assert [r.getMessage() for r in caplog.records] == [
        f"no_proxy: the entry {entry!r} is not a host, domain or network: left out"
        for entry in ("cam.lan/24", "10.0.0.0/33")
    ]
