"""The link refresh: a pod address change seen at run time reaches the guest at once.

Called by the composition root (``launcher.run``: the ``link-refresh`` task beside
``hotplug``) with the run's hot-plug :class:`~launcher.hotplug.manager.Manager`, which
does the work under its lock (one owner per NIC: :meth:`launcher.nics.Nics.replan`).

How the launcher sees the change (docs/network.md, "Link refresh"): the bridge binding
took the pod interface's addresses away at start-up, so any global address that appears
on a bridge NIC's pod interface afterwards was put there by someone else — a CNI that
ran again, an IPAM that re-addressed the pod. :func:`watch` listens for rtnetlink
address notifications (:mod:`launcher.network.addrwatch`: unprivileged, no pyroute2);
while nothing happens it sleeps on the socket with no timer armed (issue 17). After a
notification it lets the burst settle (``settle_s`` of quiet, a bounded number of
rounds) and asks the manager to follow the pod addresses.

What is decided (:func:`decide`, pure): only a **bridge** NIC whose servers hand out
the pod's addresses follows them. For each address family that has a global address
on the pod interface now, those addresses replace the planned ones (a family with none
keeps its own). If the guest's address (the first of a family) changes, the NIC is
re-planned, its servers renewed and its link **refreshed** (down, a pause, up) so the
guest's DHCP client starts again and gets the new lease; if not (the guest's own
address put back), the address is only moved off the pod interface again.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from launcher.network.addrwatch import AddressEvent, AddressMonitor, LinkAddresses, wait_readable
from launcher.network.model import NicPlan
from launcher.spec.model import BindingKind

__all__ = [
    "RefreshAction",
    "Readdress",
    "decide",
    "not_followed",
    "watch",
    "relevant",
    "SETTLE_S",
    "MAX_SETTLE_ROUNDS",
]

log = logging.getLogger(__name__)

#: Quiet time after an address notification before the pod is read (a CNI adds the
#: IPv4 and IPv6 addresses one after the other).
SETTLE_S = 0.5
MAX_SETTLE_ROUNDS = 10

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class RefreshAction(enum.StrEnum):
    """What a pod address change means for one NIC."""

    NONE = "none"  # nothing to follow (another binding, no address, no DHCP served)
    MOVE = "move"  # re-planned, the guest's addresses unchanged: no link refresh
    REFRESH = "refresh"  # the guest's addresses change: re-plan and refresh the link


@dataclass(frozen=True, slots=True)
class Readdress:
    """The decision for one NIC and what it is based on."""

    action: RefreshAction
    reason: str
    old: tuple[Address, ...] = ()  # what the guest was given (IPv4, IPv6)
    new: tuple[Address, ...] = ()  # what it is given from now on
    addresses4: tuple[ipaddress.IPv4Interface, ...] = ()  # the pod interface's, re-planned
    addresses6: tuple[ipaddress.IPv6Interface, ...] = ()


def _guest(nic: NicPlan) -> tuple[Address, ...]:
    return tuple(a for a in (nic.guest_ipv4, nic.guest_ipv6) if a is not None)


def not_followed(nic: NicPlan) -> str | None:
    """Why ``nic`` does not follow its pod interface's addresses (None: it does)."""
    if nic.binding is not BindingKind.BRIDGE:
        why = {
            BindingKind.MASQUERADE: "the pod keeps its addresses, the guest's is private",
            BindingKind.MANAGEDTAP: "the CNI's own DHCP server hands out the guest's address",
        }.get(nic.binding, "the guest does not get the pod's addresses")
        return f"a {nic.binding} interface: {why}"
    if nic.pod_port is None or (nic.dhcp4 is None and nic.dhcp6 is None):
        return "no DHCP is served on this interface"
    return None


def decide(nic: NicPlan, now: LinkAddresses) -> Readdress:
    """What ``now`` (the global addresses on ``nic``'s pod interface) asks of ``nic``."""
    why = not_followed(nic)
    if why is not None:
        return Readdress(RefreshAction.NONE, why)
    if not now.addresses4 and not now.addresses6:
        return Readdress(RefreshAction.NONE, f"no address on {nic.pod_interface}")
    addresses4 = now.addresses4 or nic.original.addresses4
    addresses6 = now.addresses6 or nic.original.addresses6
    old = _guest(nic)
    new: tuple[Address, ...] = (*addresses4[:1], *addresses6[:1])
    seen = ", ".join(str(a) for a in (*now.addresses4, *now.addresses6))
    if new == old:
        return Readdress(
            RefreshAction.MOVE,
            f"{seen} appeared on {nic.pod_interface}; the guest already has it",
            old,
            new,
            addresses4,
            addresses6,
        )
    return Readdress(
        RefreshAction.REFRESH,
        f"{seen} appeared on pod interface {nic.pod_interface}",
        old,
        new,
        addresses4,
        addresses6,
    )


def relevant(events: list[AddressEvent] | None, indexes: frozenset[int]) -> bool:
    """True when ``events`` may have changed the addresses of a link in ``indexes``
    (None: the kernel dropped events, so anything may have)."""
    if events is None:
        return True
    return any(e.added and e.is_global and e.index in indexes for e in events)


async def watch(
    indexes: Callable[[], frozenset[int]],
    follow: Callable[[], Awaitable[object]],
    *,
    monitor: AddressMonitor | None = None,
    settle_s: float = SETTLE_S,
) -> None:
    """Until cancelled: after each settled burst of address notifications that touches a
    link of ``indexes()`` (the bridge NICs' pod interfaces), await ``follow()``."""
    monitor = monitor or AddressMonitor()
    try:
        while True:
            await wait_readable(monitor.fileno())
            if not relevant(monitor.read(), indexes()):
                continue
            for _ in range(MAX_SETTLE_ROUNDS):
                await asyncio.sleep(settle_s)
                more = monitor.read()
                if more is not None and not more:
                    break
            # Removing the address from the pod interface (what following does) is a
            # RTM_DELADDR: not news on the next round.
            await follow()
    finally:
        monitor.close()
