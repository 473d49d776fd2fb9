"""Pod interface addresses, read and watched over rtnetlink without pyroute2 or privileges.

Called by the link refresh (``launcher.hotplug.refresh``) in the long-lived launcher,
which holds no capability once the guest runs and never imports pyroute2 (≈14 MiB; the
one pyroute2 adapter, :mod:`launcher.network.netlink`, lives in the short-lived netlink
child). What this needs from the kernel is small and unprivileged: a ``NETLINK_ROUTE``
socket bound to the ``RTMGRP_IPV4_IFADDR``/``RTMGRP_IPV6_IFADDR`` multicast groups
receives every ``RTM_NEWADDR``/``RTM_DELADDR`` of the network namespace (rtnetlink lets
any process listen), and an ``RTM_GETADDR`` dump lists the addresses (reads need no
capability either). Only those two message types are decoded, with :mod:`struct`.

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
import os
import socket
import struct
from dataclasses import dataclass

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

NETLINK_ROUTE = 0
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_DADFAILED = 0x08
RT_SCOPE_UNIVERSE = 0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type
_RECV_BYTES = 1 << 16
_RCVBUF = 1 << 20
#: Bounds one dump: reads (each up to 64 KiB) and seconds per read.
_DUMP_READS = 256
_DUMP_TIMEOUT_S = 2.0

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


def _align(n: int) -> int:
    return (n + 3) & ~3


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
    events: list[AddressEvent] = []
    done = False
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += _align(length)
        if kind == NLMSG_DONE:
            done = True
            continue
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EIO
            if code:
                raise OSError(code, f"rtnetlink: {os.strerror(code)}")
            continue
        if kind not in (RTM_NEWADDR, RTM_DELADDR) or len(body) < _IFADDRMSG.size:
            continue
        family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(body)
        attrs: dict[int, bytes] = {}
        pos = _IFADDRMSG.size
        while pos + _RTATTR.size <= len(body):
            alen, atype = _RTATTR.unpack_from(body, pos)
            if alen < _RTATTR.size or pos + alen > len(body):
                break
            attrs[atype & 0x3FFF] = body[pos + _RTATTR.size : pos + alen]
            pos += _align(alen)
        if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) == 4:
            flags = struct.unpack("=I", attrs[IFA_FLAGS])[0]
        address = _address(family, prefixlen, attrs)
        if address is not None:
            events.append(AddressEvent(kind, index, address, scope, flags))
    return events, done


class AddressMonitor:
    """A non-blocking rtnetlink socket receiving every address change in this netns."""

    def __init__(self) -> None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE
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
        for _ in range(_DUMP_READS):  # bounded: a flood cannot keep this loop busy
            try:
                data = self._sock.recv(_RECV_BYTES)
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
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(_DUMP_TIMEOUT_S)
        sock.bind((0, 0))
        request = _NLMSGHDR.pack(
            _NLMSGHDR.size + _IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        ) + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(request)
        events: list[AddressEvent] = []
        for _ in range(_DUMP_READS):
            batch, done = decode(sock.recv(_RECV_BYTES))
            events.extend(batch)
            if done:
                break
        else:
            raise OSError(errno.EMSGSIZE, "rtnetlink address dump did not end")
    mine = [e for e in events if e.index == index and e.is_global and not e.flags & IFA_F_DADFAILED]
    v4 = tuple(e.address for e in mine if isinstance(e.address, ipaddress.IPv4Interface))
    v6 = tuple(e.address for e in reversed(mine) if isinstance(e.address, ipaddress.IPv6Interface))
    return LinkAddresses(v4, v6)
