"""Read-only netlink for the status endpoint: neighbour entries and link counters.

Called by ``launcher.status.collect`` on each (cached) snapshot. The guest's addresses
are learned from the pod's neighbour table on the guest-facing bridge (so no guest agent
is needed) and the guest NIC counters from its tap. Like ``launcher.network.netlink``
this module is an adapter: pyroute2 message objects never leave it; the values returned
are frozen dataclasses. Nothing here changes the netns.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from launcher.errors import NetworkError
from launcher.network.netlink import lean_import

lean_import()  # only pyroute2's iproute, not its package __init__ (launcher.network.netlink)
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["Neighbour", "LinkCounters", "NetlinkReader"]

_NUD_FAILED = 0x20
_NUD_NOARP = 0x40


@dataclass(frozen=True, slots=True)
class Neighbour:
    """One neighbour table entry: an address seen at a MAC on an interface."""

    interface: str
    address: str
    mac: str


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """A link's operational state and its kernel counters (from the link's own side)."""

    name: str
    oper_state: str  # up, down, unknown…
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


class NetlinkReader:
    """One netlink socket (opened lazily, in ``netns`` or the current one), used under a lock.

    Methods block for well under a millisecond on a pod-sized netns; callers run them in a
    worker thread. Failures raise :class:`NetworkError` naming the interface.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ip: IPRoute | None = None
        self._lock = threading.Lock()

    def _socket(self) -> IPRoute:
        if self._ip is None:
            try:
                self._ip = IPRoute(netns=self.netns) if self.netns else IPRoute()
            except (OSError, NetlinkError) as err:
                raise NetworkError(f"cannot open netlink in netns {self.netns!r}: {err}") from err
        return self._ip

    def close(self) -> None:
        """Close the socket (a later call opens a new one)."""
        with self._lock:
            if self._ip is not None:
                self._ip.close()
                self._ip = None

    def links(self, names: Iterable[str]) -> dict[str, LinkCounters]:
        """Counters of the named links that exist (missing ones are left out)."""
        wanted = set(names)
        out: dict[str, LinkCounters] = {}
        if not wanted:
            return out
        with self._lock:
            try:
                raw = list(self._socket().get_links())
            except (OSError, NetlinkError) as err:
                self._drop()
                raise NetworkError(f"cannot list links in netns {self.netns!r}: {err}") from err
        for msg in raw:
            name = _attr(msg, "IFLA_IFNAME")
            if name not in wanted:
                continue
            stats = _attr(msg, "IFLA_STATS64") or _attr(msg, "IFLA_STATS") or {}
            out[name] = LinkCounters(
                name=name,
                oper_state=str(_attr(msg, "IFLA_OPERSTATE") or "unknown").lower(),
                rx_bytes=int(stats.get("rx_bytes", 0)),
                tx_bytes=int(stats.get("tx_bytes", 0)),
                rx_packets=int(stats.get("rx_packets", 0)),
                tx_packets=int(stats.get("tx_packets", 0)),
            )
        return out

    def neighbours(self, interfaces: Iterable[str]) -> tuple[Neighbour, ...]:
        """Resolved (not failed, not NOARP) neighbour entries on ``interfaces``."""
        wanted = set(interfaces)
        if not wanted:
            return ()
        with self._lock:
            try:
                ip = self._socket()
                index = {
                    msg["index"]: _attr(msg, "IFLA_IFNAME")
                    for msg in ip.get_links()
                    if _attr(msg, "IFLA_IFNAME") in wanted
                }
                raw = list(ip.get_neighbours()) if index else []
            except (OSError, NetlinkError) as err:
                self._drop()
                raise NetworkError(
                    f"cannot read the neighbour table of {sorted(wanted)} in netns "
                    f"{self.netns!r}: {err}"
                ) from err
        out: list[Neighbour] = []
        for msg in raw:
            name = index.get(msg["ifindex"])
            if name is None or msg["state"] & (_NUD_FAILED | _NUD_NOARP):
                continue
            dst, mac = _attr(msg, "NDA_DST"), _attr(msg, "NDA_LLADDR")
            if dst and mac:
                out.append(Neighbour(name, str(dst), str(mac).lower()))
        return tuple(out)

    def _drop(self) -> None:
        if self._ip is not None:
            self._ip.close()
            self._ip = None
