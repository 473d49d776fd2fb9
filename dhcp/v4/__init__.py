"""The embedded DHCPv4 server: codec, options, static-lease configuration, asyncio server.

Names are imported from their modules on first use (see ``dhcp/__init__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dhcp.lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__ = lazy_exports(
    __name__,
    {
        "Dhcp4Server": ".server",
        "Dhcp4Config": ".config",
        "Lease4": ".config",
        "Pool4": ".config",
        "Dhcp4Snapshot": ".server",
        "Dhcp4Counters": ".server",
        "Dhcp4Event": ".server",
        "Message": ".codec",
        "parse": ".codec",
    },
)
