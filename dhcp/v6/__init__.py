"""DHCPv6 for guest NICs: wire codec, static leases, the server; RAs live in dhcp.ra.

Names are imported from their modules on first use (see ``dhcp/__init__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dhcp.lazy import lazy_exports

if TYPE_CHECKING:
    from dhcp.v6.lease import Config6, Lease6, parse_lease6, server_duid
    from dhcp.v6.server import Dhcp6Server, Dhcp6Snapshot, Event6, Packet6

__all__ = [
    "Dhcp6Server",
    "Config6",
    "Lease6",
    "parse_lease6",
    "server_duid",
    "Dhcp6Snapshot",
    "Event6",
    "Packet6",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "Dhcp6Server": ".server",
        "Config6": ".lease",
        "Lease6": ".lease",
        "parse_lease6": ".lease",
        "server_duid": ".lease",
        "Dhcp6Snapshot": ".server",
        "Event6": ".server",
        "Packet6": ".server",
    },
)
