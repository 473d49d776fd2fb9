"""In-process DHCPv4, DHCPv6 and router-advertisement servers for guest NICs.

Stands alone: imports nothing from ``launcher`` or ``hypervisor``. The names below are
imported from their modules on first use (a module ``__getattr__``), so a caller that
needs only a configuration type (the launcher's network plan) does not import the
servers and asyncio with it; ``dhcp.v4`` and ``dhcp.v6`` do the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dhcp.lazy import lazy_exports

if TYPE_CHECKING:
    from dhcp.lifecycle import Server
    from dhcp.ra import RaServer
    from dhcp.raconfig import RaConfig
    from dhcp.v4.config import Dhcp4Config, Lease4
    from dhcp.v4.server import Dhcp4Server, Dhcp4Snapshot
    from dhcp.v6.lease import Config6, Lease6
    from dhcp.v6.server import Dhcp6Server

__all__ = [
    "Server",
    "Dhcp4Server",
    "Dhcp4Config",
    "Lease4",
    "Dhcp4Snapshot",
    "Dhcp6Server",
    "Config6",
    "Lease6",
    "RaServer",
    "RaConfig",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "Server": "dhcp.lifecycle",
        "Dhcp4Server": "dhcp.v4.server",
        "Dhcp4Config": "dhcp.v4.config",
        "Lease4": "dhcp.v4.config",
        "Dhcp4Snapshot": "dhcp.v4.server",
        "Dhcp6Server": "dhcp.v6.server",
        "Config6": "dhcp.v6.lease",
        "Lease6": "dhcp.v6.lease",
        "RaServer": "dhcp.ra",
        "RaConfig": "dhcp.raconfig",
    },
)
