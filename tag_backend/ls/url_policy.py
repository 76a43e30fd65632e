"""Which network addresses a task image may be downloaded from (server-side request forgery guard).

Task data is written by whoever can create tasks, and the backend often runs next to things
that must not be reachable through it: cloud metadata (169.254.169.254), the database, Label
Studio's own admin port, other containers. So by default an image download may only connect to
**public** addresses. Refused are loopback, link-local, private (RFC 1918, unique-local IPv6),
shared (CGNAT), unspecified, multicast, reserved and documentation ranges, for IPv4 and IPv6;
an IPv4 address embedded in IPv6 (``::ffff:a.b.c.d``, 6to4, NAT64) is judged as that IPv4
address. Exceptions:

* the Label Studio host (``LABEL_STUDIO_URL``: same host name and port), which usually is local;
* ``TAG_URL_ALLOWLIST``: comma-separated host names (``images.lan``, ``.corp.example`` for a
  domain and its subdomains) and IP networks (``10.1.0.0/16``, ``127.0.0.1``, ``fd00::/8``).

The check is made on the addresses a host name **resolves to**, at connection time, for every
connection (so every redirect hop), and the connection is made to the checked address itself:
a second DNS answer (rebinding) cannot swap it. Spellings such as ``2130706433`` or
``0177.0.0.1`` resolve to ``127.0.0.1`` and are refused like it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from ..errors import ConfigError
from .errors import MediaError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlNotAllowed(MediaError):
    """A download would connect to an address the URL policy refuses."""


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), else ``ip`` itself."""
    if ip.version != 6:
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (see the module docstring)."""
    ip = embedded_ipv4(ip)
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


@dataclass(frozen=True)
class Allowlist:
    """Parsed ``TAG_URL_ALLOWLIST``: exact host names, domain suffixes and networks."""

    hosts: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> "Allowlist":
        hosts, domains, networks = set(), [], []
        for raw in (text or "").replace(";", ",").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("."):
                domains.append(entry)
            elif "/" in entry or ":" in entry or " " in entry:
                raise ValueError(f"TAG_URL_ALLOWLIST: {raw.strip()!r} is neither a host name nor an IP network")
            else:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(domains), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(
            host.endswith(d) or host == d[1:] for d in self.domains
        )

    def address_allowed(self, ip: IPAddress) -> bool:
        return any(ip in net or embedded_ipv4(ip) in net for net in self.networks)


Resolver = Callable[[str, int], list[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the C library's rules: also ``0177.1`` and friends)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def resolve_within(host: str, port: int, timeout: float, resolve: Resolver = system_resolve) -> list[str]:
    """``resolve(host, port)`` abandoned after ``timeout`` seconds.

    ``getaddrinfo`` cannot be interrupted and may wait for its own resolver timeouts (several
    seconds per attempt); running it in a daemon thread lets the download's deadline hold.
    """
    result: list = []

    def run() -> None:
        try:
            result.append(resolve(host, port))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, name="tag-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if not result:
        raise TimeoutError(f"resolving {host} took more than {timeout:.1f} s")
    if isinstance(result[0], OSError):
        raise result[0]
    return result[0]


class UrlPolicy:
    """Decides, per connection, which resolved address of a host may be connected to."""

    def __init__(self, allowlist: Allowlist, trusted: tuple[tuple[str, int], ...] = ()) -> None:
        self.allowlist = allowlist
        self.trusted = frozenset((h.lower().rstrip("."), p) for h, p in trusted)

    @classmethod
    def from_settings(cls, settings) -> "UrlPolicy":
        """The policy of ``Settings``: its allow-list plus the Label Studio host."""
        trusted = []
        if settings.label_studio_url:
            parsed = urlparse(settings.label_studio_url)
            if parsed.hostname:
                default = 443 if parsed.scheme == "https" else 80
                trusted.append((parsed.hostname, parsed.port or default))
        try:
            allowlist = Allowlist.parse(settings.url_allowlist)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(allowlist, tuple(trusted))

    def trusts_host(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        return (host, port) in self.trusted or self.allowlist.host_allowed(host)

    def pick_address(self, host: str, port: int, timeout: float,
                     resolve: Resolver = system_resolve) -> str:
        """The address to connect to for ``host:port``; :class:`UrlNotAllowed` if refused.

        Every resolved address must be allowed (a name answering with one public and one
        private address is refused: which one a client uses is not under our control).
        """
        bare = host.strip("[]")
        addresses = resolve_within(bare, port, timeout, resolve)
        if not addresses:
            raise OSError(f"{bare} resolves to no address")
        if self.trusts_host(bare, port):
            return addresses[0]
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not is_public(ip) and not self.allowlist.address_allowed(ip):
                logger.warning("image URL refused: %s resolves to %s, a non-public address", bare, ip)
                raise UrlNotAllowed(
                    f"image URL host {bare} resolves to the non-public address {ip}: refused "
                    "(allow it with TAG_URL_ALLOWLIST)"
                )
        return addresses[0]
