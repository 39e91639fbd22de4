"""The proxy an HTTP request of ours goes through: the one the environment names for its URL.

Left to itself, httpx builds a transport for every proxy of the environment, also those
``no_proxy`` makes unused, and a SOCKS ``all_proxy`` (a common shell setting) then fails
without the ``socksio`` package, even for a host on 127.0.0.1 or the camera LAN.
"""

from __future__ import annotations

import re
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx


class ProxyUnusable(RuntimeError):
    """The environment's proxy for a URL needs a package that is not installed."""


def masked(url: str) -> str:
    """``url`` with the password of its user info masked, to be shown."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def proxy_for(url: str) -> str | None:
    """The proxy of the environment for ``url`` (``https_proxy``, ``http_proxy``,
    ``all_proxy``), None when there is none or ``no_proxy`` covers its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    return proxy


def transport(url: str) -> httpx.HTTPTransport:
    """A transport for requests to ``url``'s host, through :func:`proxy_for` (TLS settings of
    the environment honoured); :class:`ProxyUnusable` for a SOCKS proxy without the extra."""
    import httpx

    proxy = proxy_for(url)
    try:
        return httpx.HTTPTransport(proxy=proxy)
    except ImportError as exc:
        raise ProxyUnusable(
            f"{masked(url)} is reached through the SOCKS proxy {masked(proxy or '')} of the"
            f" environment, which needs httpx's socks extra (pip install 'httpx[socks]'); or"
            f" add its host to no_proxy ({exc})"
        ) from exc
