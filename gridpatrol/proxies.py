"""The proxy an HTTP request of ours goes through: the one the environment names for its URL.

Left to itself, httpx builds a transport for every proxy of the environment, also those
``no_proxy`` makes unused, and a SOCKS ``all_proxy`` (a common shell setting) then fails
without the ``socksio`` package, even for a host on 127.0.0.1 or the camera LAN.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class ProxyUnusable(RuntimeError):
    """The environment's proxy for a URL cannot be used: a SOCKS proxy without the package it
    needs, a proxy URL of a scheme httpx does not take. Its text names the proxy, not the URL:
    that may hold credentials beyond a password (a camera's ``?user=admin&pwd=...``), and the
    caller knows how to show it."""


def masked(url: str, mask: str = "***") -> str:
    """``url`` with the password of its user info replaced by ``mask``, to be shown; as given
    without one.

    The user info ends at the netloc's last ``@``: a password may hold an unencoded ``@``."""
    return re.sub(r"(://[^/?#:]*):[^/?#]*@", lambda m: f"{m[1]}:{mask}@", url)


def proxy_for(url: str) -> str | None:
    """The proxy httpx would take from the environment for ``url`` (``https_proxy``,
    ``http_proxy``, ``all_proxy``, ``no_proxy`` as curl reads them), None for none.

    httpx's own reading of the environment and its URL patterns, so that the choice stays the
    one it made before: a proxy named without a scheme, ``no_proxy`` entries for IPv6 hosts,
    domains and ``*`` among others. They are internal to httpx: its version is pinned."""
    from httpx import URL
    from httpx._utils import URLPattern, get_environment_proxies

    target = URL(url)
    mounts = [(URLPattern(key), proxy) for key, proxy in get_environment_proxies().items()]
    mounts.sort(key=lambda mount: mount[0].priority)  # the most specific first
    return next((proxy for pattern, proxy in mounts if pattern.matches(target)), None)


def transport(url: str) -> httpx.HTTPTransport:
    """A transport for requests to ``url``'s host, through :func:`proxy_for` (TLS settings of
    the environment honoured); :class:`ProxyUnusable` when that proxy cannot be used."""
    import httpx

    proxy = proxy_for(url)
    try:
        return httpx.HTTPTransport(proxy=proxy)
    except (ImportError, ValueError) as exc:  # socksio missing, a scheme httpx cannot use
        raise ProxyUnusable(
            f"the environment's proxy {masked(proxy or '')} cannot be used: {exc} (a SOCKS"
            " proxy needs httpx's socks extra: pip install 'httpx[socks]'; or add the host to"
            " no_proxy)"
        ) from exc
