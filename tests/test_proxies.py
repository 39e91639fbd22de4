"""The proxy our HTTP requests take from the environment: the one httpx would take."""

from __future__ import annotations

import pytest

from gridpatrol.proxies import ProxyUnusable, proxy_for, transport

VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
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


@pytest.mark.parametrize(
    ("proxy", "cause"),
    [
        ("socks5://me:s3cret@s:1080", "Using SOCKS proxy, but the 'socksio' package is not"
         " installed. Make sure to install httpx using `pip install httpx[socks]`."),
        ("ftp://me:s3cret@p:21", "Unknown scheme for proxy URL URL('ftp://me:[secure]@p')"),
    ],
)  # fmt: skip
def test_a_proxy_that_cannot_be_used_is_one_clear_error(
    env: pytest.MonkeyPatch, proxy: str, cause: str
) -> None:
    env.setenv("all_proxy", proxy)
    with pytest.raises(ProxyUnusable) as err:
        transport("http://api.example:8000")
    shown = proxy.replace(":s3cret@", ":***@")
    assert str(err.value) == (
        f"http://api.example:8000 is reached through the proxy {shown} of the environment,"
        f" which cannot be used: {cause} (a SOCKS proxy needs httpx's socks extra: pip install"
        " 'httpx[socks]'; or add the host to no_proxy)"
    )
