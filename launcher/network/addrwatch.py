"""Pod interface addresses, read and watched over rtnetlink without pyroute2 or privileges.

Called by the link refresh (``launcher.hotplug.refresh``) in the long-lived launcher,
which holds no capability once the guest runs and never imports pyroute2 (≈14 MiB; the
one pyroute2 adapter, :mod:`launcher.network.netlink`, lives in the short-lived netlink
child). What this needs from the kernel is small and unprivileged: a ``NETLINK_ROUTE``
socket bound to the ``RTMGRP_IPV4_IFADDR``/``RTMGRP_IPV6_IFADDR`` multicast groups
receives every ``RTM_NEWADDR``/``RTM_DELADDR`` of the network namespace (rtnetlink lets
any process listen), and an ``RTM_GETADDR`` dump lists the addresses (reads need no
capability either). Only those two message types are decoded, with :mod:`struct`
(:mod:`launcher.network.rtnl`).

* :class:`AddressMonitor` — the multicast socket; :meth:`AddressMonitor.read` returns
  the queued events without blocking (None when the kernel dropped some: the socket's
  buffer overran, so the caller must read the addresses again);
  :func:`wait_readable` sleeps on it without arming a timer (issue 17: an idle launcher
  is not woken).
* :func:`link_addresses` — the global (scope universe) addresses of one link now, in
  :func:`launcher.network.discover`'s order: IPv4 as the kernel lists them (the first
  primary first), IPv6 oldest first.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from . import rtnl

__all__ = [
    "AddressEvent",
    "AddressMonitor",
    "LinkAddresses",
    "decode",
    "link_addresses",
    "wait_readable",
    "RTM_NEWADDR",
    "RTM_DELADDR",
]

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_DADFAILED = 0x08
RT_SCOPE_UNIVERSE = 0

_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RCVBUF = 1 << 20

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class AddressEvent:
    """One address added (``RTM_NEWADDR``) or removed (``RTM_DELADDR``) on link ``index``."""

    kind: int  # RTM_NEWADDR or RTM_DELADDR
    index: int
    address: Address
    scope: int
    flags: int

    @property
    def added(self) -> bool:
        """True for an address that appeared (or changed: the kernel sends NEWADDR)."""
        return self.kind == RTM_NEWADDR

    @property
    def is_global(self) -> bool:
        """Scope universe and not an IPv6 link-local."""
        return self.scope == RT_SCOPE_UNIVERSE and not self.address.ip.is_link_local


@dataclass(frozen=True, slots=True)
class LinkAddresses:
    """The global addresses of one link, in discover's order (see the module docstring)."""

    addresses4: tuple[ipaddress.IPv4Interface, ...] = ()
    addresses6: tuple[ipaddress.IPv6Interface, ...] = ()


def _address(family: int, prefixlen: int, attrs: dict[int, bytes]) -> Address | None:
    if family == socket.AF_INET:
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is None or len(raw) != 4:
            return None
        return ipaddress.IPv4Interface((raw, prefixlen))
    if family == socket.AF_INET6:
        raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
        if raw is None or len(raw) != 16:
            return None
        return ipaddress.IPv6Interface((raw, prefixlen))
    return None


def decode(data: bytes) -> tuple[list[AddressEvent], bool]:
    """The address messages in one netlink datagram, and whether it ended a dump
    (``NLMSG_DONE``). Anything else is skipped; a truncated message ends the parse.
    An ``NLMSG_ERROR`` with a non-zero code raises the OSError it carries."""
    found, done = rtnl.messages(data)
    return [e for kind, body in found if (e := _event(kind, body)) is not None], done


def _event(kind: int, body: bytes) -> AddressEvent | None:
    if kind not in (RTM_NEWADDR, RTM_DELADDR) or len(body) < _IFADDRMSG.size:
        return None
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(body)
    attrs = rtnl.attributes(body, _IFADDRMSG.size)
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) == 4:
        flags = struct.unpack("=I", attrs[IFA_FLAGS])[0]
    address = _address(family, prefixlen, attrs)
    return None if address is None else AddressEvent(kind, index, address, scope, flags)


class AddressMonitor:
    """A non-blocking rtnetlink socket receiving every address change in this netns."""

    def __init__(self) -> None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, rtnl.NETLINK_ROUTE
        )
        try:
            # Room for a burst (a CNI adding a few addresses); an overrun is reported.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

    def fileno(self) -> int:
        """The socket's fd (for :func:`wait_readable`)."""
        if self._sock is None:
            raise ValueError("the address monitor is closed")
        return self._sock.fileno()

    def read(self) -> list[AddressEvent] | None:
        """Every queued event (may be empty); None when the kernel dropped events."""
        if self._sock is None:
            raise ValueError("the address monitor is closed")
        events: list[AddressEvent] = []
        lost = False
        for _ in range(rtnl.DUMP_READS):  # bounded: a flood cannot keep this loop busy
            try:
                data = self._sock.recv(rtnl.RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                lost = True
                continue
            try:
                more, _done = decode(data)
            except OSError:
                continue
            events.extend(more)
        return None if lost else events

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def wait_readable(fd: int) -> None:
    """Sleep until ``fd`` is readable; no timer is armed."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def link_addresses(index: int) -> LinkAddresses:
    """The global addresses of link ``index`` now (one bounded ``RTM_GETADDR`` dump)."""
    with rtnl.open_socket() as sock:
        found = rtnl.dump(sock, RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    events = [e for kind, body in found if (e := _event(kind, body)) is not None]
    mine = [e for e in events if e.index == index and e.is_global and not e.flags & IFA_F_DADFAILED]
    v4 = tuple(e.address for e in mine if isinstance(e.address, ipaddress.IPv4Interface))
    v6 = tuple(e.address for e in reversed(mine) if isinstance(e.address, ipaddress.IPv6Interface))
    return LinkAddresses(v4, v6)
