"""What a DHCPv4 server hands out: :class:`Lease4` (MAC → address/prefix) and :class:`Dhcp4Config`.

The launcher builds one ``Dhcp4Config`` per guest-facing interface from its network
plan (leases from the pod's original addresses, DNS and search list it read from the
pod's resolv.conf, the link-local server address it configured on the bridge);
``python -m dhcp serve`` builds it from the command line. Both are frozen and
validated here, once: a wrong value raises ``ValueError`` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from dhcp.common import check_domain
from dhcp.v4 import options as o

__all__ = [
    "Lease4",
    "Pool4",
    "Dhcp4Config",
    "classless_routes",
    "normalize_mac",
    "DEFAULT_LEASE_TIME",
]

DEFAULT_LEASE_TIME = 86400
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ON_LINK = IPv4Address("0.0.0.0")
_DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")

Route4 = tuple[IPv4Network, IPv4Address]


def classless_routes(
    address: IPv4Interface, router: IPv4Address | None, extra: Sequence[Route4] = ()
) -> tuple[Route4, ...]:
    """Option 121 (RFC 3442) for a client at ``address``: THE rule, used by the server
    for every reply and by whoever shows what the server will send (``virt-launcher plan``).

    Empty — no option 121, option 3 alone says it all — when the router is inside the
    client's subnet and there is no other route. Otherwise: an on-link host route to a
    router outside the subnet first (Calico's /32 with 169.254.1.1: the client cannot
    reach its gateway without it), then ``extra`` (default routes and the subnet route the
    mask implies are dropped, duplicates kept once), then the default route via the router
    last: a client that takes option 121 ignores option 3, so 121 must carry it too.
    """
    routes: list[Route4] = []
    for dst, hop in extra:
        implied = dst == address.network and hop == _ON_LINK
        if dst.prefixlen and not implied and (dst, hop) not in routes:
            routes.append((dst, hop))
    if router is not None and router not in address.network:
        host = IPv4Network(f"{router}/32")
        routes = [(dst, hop) for dst, hop in routes if dst != host]
        routes.insert(0, (host, _ON_LINK))
    if routes and router is not None:
        routes.append((_DEFAULT_ROUTE, router))
    return tuple(routes)


def normalize_mac(mac: str) -> str:
    """``aa:bb:cc:dd:ee:ff`` in lower case; ValueError for anything else."""
    norm = mac.strip().lower().replace("-", ":")
    if not _MAC.match(norm):
        raise ValueError(f"MAC address {mac!r} is not six colon-separated hex octets")
    return norm


@dataclass(frozen=True, slots=True)
class Lease4:
    """A static lease: the guest NIC with ``mac`` gets ``address`` (with its prefix)."""

    mac: str
    address: IPv4Interface
    hostname: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        if self.hostname is not None:
            try:
                check_domain(self.hostname)
            except ValueError as err:
                raise ValueError(
                    f"hostname {self.hostname!r} of lease {self.mac} is not a DNS name"
                ) from err

    @property
    def mac_bytes(self) -> bytes:
        """The MAC as the 6 bytes clients put in chaddr."""
        return bytes.fromhex(self.mac.replace(":", ""))


@dataclass(frozen=True, slots=True)
class Pool4:
    """A dynamic range ``start``–``end`` with ``prefix`` (benchmarking only: any MAC gets one)."""

    start: IPv4Address
    end: IPv4Address
    prefix: int

    def __post_init__(self) -> None:
        if int(self.end) < int(self.start):
            raise ValueError(f"pool end {self.end} is before start {self.start}")
        if not 0 <= self.prefix <= 32:
            raise ValueError(f"pool prefix {self.prefix} is not between 0 and 32")
        if (
            IPv4Interface(f"{self.start}/{self.prefix}").network
            != IPv4Interface(f"{self.end}/{self.prefix}").network
        ):
            raise ValueError(f"pool {self.start}-{self.end} does not fit in one /{self.prefix}")

    @property
    def size(self) -> int:
        """Number of addresses in the range."""
        return int(self.end) - int(self.start) + 1


@dataclass(frozen=True, slots=True)
class Dhcp4Config:
    """Everything one DHCPv4 server on one interface answers with.

    ``server_address`` is the server's source address and server identifier (54): a
    link-local address on the guest-facing bridge, never the pod IP. ``routes`` are
    extra classless routes; the router's default route (and, when the router is not
    inside the lease's subnet, e.g. a Calico /32, an on-link host route to it) are added
    per lease. ``private_options`` carries KubeVirt ``dhcpOptions.privateOptions``
    (codes 224–254, raw values). ``pool`` and ``allow_relay`` exist for benchmarking with
    perfdhcp; ``rate``/``burst`` bound each client MAC; ``max_events`` bounds the event
    list in snapshots; ``port`` is 67 except in tests.
    """

    interface: str
    server_address: IPv4Address
    leases: tuple[Lease4, ...] = ()
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    search: tuple[str, ...] = ()
    domain: str | None = None
    hostname: str | None = None
    mtu: int | None = None
    routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()
    lease_time: int = DEFAULT_LEASE_TIME
    ntp: tuple[IPv4Address, ...] = ()
    tftp_server: str | None = None
    boot_file: str | None = None
    private_options: tuple[tuple[int, bytes], ...] = ()
    pool: Pool4 | None = None
    allow_relay: bool = False
    rate: float = 20.0
    burst: int = 40
    max_events: int = 256
    port: int = field(default=67)

    def __post_init__(self) -> None:
        if not self.interface or len(self.interface) > 15:
            raise ValueError(f"interface name {self.interface!r} is empty or over 15 chars")
        seen: set[str] = set()
        for lease in self.leases:
            if lease.mac in seen:
                raise ValueError(f"MAC {lease.mac} has more than one lease")
            seen.add(lease.mac)
            if lease.address.ip == self.server_address:
                raise ValueError(
                    f"lease address {lease.address.ip} equals the server address; the server "
                    "must use its own link-local address"
                )
        if not 60 <= self.lease_time <= 0xFFFFFFFF:
            raise ValueError(f"lease time {self.lease_time} is not between 60 s and 2^32-1 s")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} is not between 68 and 65535")
        for name in self.search:
            check_domain(name)
        if self.domain is not None:
            check_domain(self.domain)
        if self.hostname is not None:
            check_domain(self.hostname)
        for code, value in self.private_options:
            if not o.PRIVATE_FIRST <= code <= o.PRIVATE_LAST:
                raise ValueError(f"private option code {code} is not between 224 and 254")
            if len(value) > 255:
                raise ValueError(f"private option {code} value is over 255 bytes")
        if self.tftp_server is not None and not self.tftp_server.isascii():
            raise ValueError(f"TFTP server {self.tftp_server!r} is not ASCII")
        if self.boot_file is not None and not self.boot_file.isascii():
            raise ValueError(f"boot file {self.boot_file!r} is not ASCII")
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"rate {self.rate} and burst {self.burst} must be positive")
