"""DHCPv6 for guest NICs: wire codec, static leases, the server; RAs live in dhcp.ra."""

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
