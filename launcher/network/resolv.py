"""Parse resolv.conf into the DNS servers and search domains handed to the guest.

Called by ``discover``; the plan copies the result into the DHCPv4 options 6/119, the
DHCPv6 DNS options and the RA RDNSS/DNSSL options. Unknown lines are ignored, as libc does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Resolv", "parse_resolv_conf"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Resolv:
    """Name servers (in file order) and search domains from resolv.conf."""

    nameservers: tuple[IPAddress, ...] = ()
    search: tuple[str, ...] = ()

    @property
    def nameservers4(self) -> tuple[ipaddress.IPv4Address, ...]:
        """The IPv4 name servers."""
        return tuple(a for a in self.nameservers if isinstance(a, ipaddress.IPv4Address))

    @property
    def nameservers6(self) -> tuple[ipaddress.IPv6Address, ...]:
        """The IPv6 name servers."""
        return tuple(a for a in self.nameservers if isinstance(a, ipaddress.IPv6Address))


def parse_resolv_conf(text: str) -> Resolv:
    """Parse resolv.conf text; the last ``search``/``domain`` line wins, as in libc."""
    servers: list[IPAddress] = []
    search: tuple[str, ...] = ()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        key, _, rest = line.partition(" ")
        words = rest.split()
        if key == "nameserver" and words:
            try:
                addr = ipaddress.ip_address(words[0].split("%", 1)[0])
            except ValueError:
                continue
            if addr not in servers:
                servers.append(addr)
        elif key in ("search", "domain") and words:
            search = tuple(w.rstrip(".").lower() for w in words if w.rstrip("."))
    return Resolv(nameservers=tuple(servers), search=search)
