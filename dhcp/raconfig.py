"""What a router-advertisement server advertises on one link (:class:`RaConfig`).

Built by the launcher's network plan (one per guest NIC with IPv6) and by
``python -m dhcp serve --ra``; served by :class:`dhcp.ra.RaServer`. A module of its own,
like ``dhcp.v4.config`` and ``dhcp.v6.lease``, so a plan that carries it — and the
netlink child that unpickles one — does not import the server and asyncio with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["RaConfig"]


@dataclass(frozen=True, slots=True)
class RaConfig:
    """What to advertise on one guest-facing interface.

    ``managed`` (M) and ``other`` (O) default to the DHCPv6-assigns-the-address case;
    ``autonomous`` on the prefix is then off so the guest does not add a SLAAC address.
    """

    interface: str
    prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    managed: bool = True
    other: bool = True
    autonomous: bool = False
    router_lifetime: int = 1800
    interval: float = 200.0
    initial_interval: float = 4.0
    initial_count: int = 3
    mtu: int | None = None
    rdnss: tuple[ipaddress.IPv6Address, ...] = ()
    dnssl: tuple[str, ...] = ()
    prefix_valid: int = 86400
    prefix_preferred: int = 14400

    def __post_init__(self) -> None:
        if not 0 <= self.router_lifetime <= 9000:
            raise ValueError(f"router lifetime {self.router_lifetime} is outside 0..9000 s")
        if not 0.05 <= self.interval <= 1800:
            raise ValueError(f"RA interval {self.interval} is outside 0.05..1800 s")
        if self.mtu is not None and not 1280 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} is outside 1280..65535")
