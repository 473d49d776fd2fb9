"""In-process DHCPv4, DHCPv6 and router-advertisement servers for guest NICs."""

from dhcp.v4 import Dhcp4Config, Dhcp4Server, Dhcp4Snapshot, Lease4

__all__: list[str] = [
    "Dhcp4Server",
    "Dhcp4Config",
    "Lease4",
    "Dhcp4Snapshot",
]
