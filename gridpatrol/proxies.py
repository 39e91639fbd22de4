"""The proxy an HTTP request of ours goes through: the one the environment names for its URL.

Left to itself, httpx builds a transport for every proxy of the environment, also those
``no_proxy`` makes unused, and a SOCKS ``all_proxy`` (a common shell setting) then fails
without the ``socksio`` package, even for a host on 127.0.0.1 or the camera LAN.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

# The no_proxy entries already warned of: a grab asks for its proxy each round, the warning
# is for the operator once.
_warned: set[str] = set()


class ProxyUnusable(RuntimeError):
    """The environment's proxy for a URL cannot be used: a SOCKS proxy without the package it
    needs, a proxy URL of a scheme httpx does not take. Its text names the proxy, not the URL:
    that may hold credentials beyond a password (a camera's ``?user=admin&pwd=...``), and the
    caller knows how to show it."""


def user_info(url: str) -> tuple[str, str, str] | None:
    """``url`` as (``scheme://``, its user info, the rest from the host on); None without one.

    The user info ends at the last ``@`` before the path, query or fragment, for a password may
    hold an unencoded ``@``; and where what comes before them looks like a user and a password,
    not a host and a port, at the next ``@``, for a password may hold a ``/ ? #`` too (which
    would end it for a URL parser)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    head = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in head:
        at = head.rindex("@")
    else:
        # A password holding a ``/ ? #``: the head is "user:pass…", no host and port, and the
        # user info runs to the next ``@``.
        _, colon, port = head.partition(":")
        later = rest.find("@", len(head))
        if not colon or port.isdigit() or head.startswith("[") or later < 0:
            return None
        at = later
    return scheme + sep, rest[:at], rest[at + 1 :]


def masked(url: str, mask: str = "***") -> str:
    """``url`` with the password of its user info (see :func:`user_info`) replaced by
    ``mask``, to be shown; as given without one."""
    if "://" not in url and "@" in url:
        # No URL a parser reads alike ("mqtt:/gp:pw@host", "gp:pw@host"): all before the
        # last "@" may be a password, all but a leading scheme is hidden.
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/*", url)
        lead = scheme.group() if scheme else ""
        return f"{lead}{mask}@{url.rpartition('@')[2]}"
    parts = user_info(url)
    if parts is None or ":" not in parts[1]:
        return url
    scheme_sep, info, rest = parts
    return f"{scheme_sep}{info.partition(':')[0]}:{mask}@{rest}"


def proxy_for(url: str) -> str | None:
    """The proxy httpx would take from the environment for ``url`` (``https_proxy``,
    ``http_proxy``, ``all_proxy``, ``no_proxy``), None for none.

    httpx's own reading of the environment and its URL patterns, so that the choice stays the
    one it made before: a proxy named without a scheme, ``no_proxy`` entries for IPv6 hosts,
    domains and ``*`` among others. They are internal to httpx: its version is pinned. A
    ``no_proxy`` entry may also be a network (``192.168.1.0/24``, ``fd00::/8``), as curl reads
    it: cameras are named by their addresses on a LAN; and an IPv6 address in brackets
    (``[::1]``), as curl takes it. An entry httpx cannot read is left out with a warning, for
    it would otherwise fail every request (and the start of a service making one)."""
    from httpx import URL, InvalidURL
    from httpx._utils import URLPattern, get_environment_proxies

    target = URL(url)
    if _in_no_proxy_network(target.host):
        return None
    # httpx's reading, its no_proxy entries left out: they are read below, as curl does.
    proxied = get_environment_proxies().items()
    keys: dict[str, str | None] = {key: proxy for key, proxy in proxied if proxy is not None}
    if not keys:
        return None  # no proxy, or a no_proxy of "*"
    keys.update(dict.fromkeys(_no_proxy_keys()))
    mounts = []
    for key, proxy in keys.items():
        try:
            mounts.append((URLPattern(key), proxy))
        except InvalidURL:  # an entry of no_proxy: the proxies' keys are httpx's own schemes
            _warn_once(key)
    mounts.sort(key=lambda mount: mount[0].priority)  # the most specific first
    return next((proxy for pattern, proxy in mounts if pattern.matches(target)), None)


def _no_proxy_entries() -> list[str]:
    """``no_proxy``'s entries, upper case too (as urllib and httpx read it), without blanks."""
    entries = urllib.request.getproxies().get("no", "").split(",")
    return [entry.strip() for entry in entries if entry.strip()]


def _no_proxy_keys() -> list[str]:
    """httpx's pattern keys for the ``no_proxy`` entries naming hosts (its own mapping, see
    ``httpx._utils.get_environment_proxies``), an IPv6 address in brackets taken without them;
    a network (an entry with a ``/``) is left to :func:`_in_no_proxy_network`, for httpx
    would read ``::1/128`` as a host and fail on it."""
    from httpx._utils import is_ipv4_hostname, is_ipv6_hostname

    keys = []
    for entry in _no_proxy_entries():
        if "://" in entry:
            keys.append(entry)
            continue
        # A slash ending the entry ("192.168.1.10/", "cam.lan/") stands for no network: the
        # host, as httpx read it before networks were.
        entry = entry.removesuffix("/") if entry.count("/") == 1 else entry
        if "/" in entry:
            if _network(entry) is None:
                _warn_once(entry)
            continue
        host = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        if is_ipv4_hostname(host) or host.lower() == "localhost":
            keys.append(f"all://{host}")
        elif is_ipv6_hostname(host):
            keys.append(f"all://[{host}]")
        else:
            keys.append(f"all://*{host}")
    return keys


def _warn_once(key: str) -> None:
    entry = key.removeprefix("all://").removeprefix("*")
    if entry not in _warned:
        _warned.add(entry)
        log.warning("no_proxy: the entry %r is not a host, domain or network: left out", entry)


def _in_no_proxy_network(host: str) -> bool:
    """Whether ``host`` is an address in a network ``no_proxy`` names (``10.0.0.0/8``,
    ``fd00::/8`` or ``[fd00::]/8``)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: httpx's patterns judge it
    for entry in (e for e in _no_proxy_entries() if "/" in e and "://" not in e):
        network = _network(entry)
        if network is not None and address in network:
            return True
    return False


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network of a ``no_proxy`` entry with a ``/`` (curl's ``[fd00::]/8`` too), or None."""
    try:
        return ipaddress.ip_network(re.sub(r"^\[([^\]]*)\]/", r"\1/", entry), strict=False)
    except ValueError:
        return None


def transport(url: str) -> httpx.HTTPTransport:
    """A transport for requests to ``url``'s host, through :func:`proxy_for` (TLS settings of
    the environment honoured); :class:`ProxyUnusable` when that proxy cannot be used."""
    import httpx

    httpx.URL(url)  # a URL of ours that cannot be parsed is the caller's to report, as it was
    proxy = None
    try:
        proxy = proxy_for(url)
        return httpx.HTTPTransport(proxy=proxy)
    except (ImportError, ValueError, httpx.InvalidURL) as exc:  # socksio missing, a bad URL
        shown = masked(proxy or "") or "setting"
        # httpx's words on a URL may quote a piece of a password it could not parse ("Invalid
        # port: 'pw'" for user:pw#1@host): said only of a proxy without one.
        said = isinstance(exc, ImportError) or shown == proxy
        cause = f"{exc}" if said else "httpx cannot use its URL"
        if (proxy or "").lower().startswith("socks"):
            cause += " (a SOCKS proxy needs httpx's socks extra: pip install 'httpx[socks]')"
        raise ProxyUnusable(
            f"the environment's proxy {shown} cannot be used: {cause}; or add the host to no_proxy"
        ) from exc
