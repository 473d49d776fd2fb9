"""The embedded DHCPv4 server: codec, options, static-lease configuration, asyncio server."""

from dhcp.v4.codec import Message, parse
from dhcp.v4.config import Dhcp4Config, Lease4, Pool4
from dhcp.v4.server import Dhcp4Counters, Dhcp4Event, Dhcp4Server, Dhcp4Snapshot

__all__ = [
    "Dhcp4Server",
    "Dhcp4Config",
    "Lease4",
    "Pool4",
    "Dhcp4Snapshot",
    "Dhcp4Counters",
    "Dhcp4Event",
    "Message",
    "parse",
]
