"""Link counters and neighbour entries of the pod, read over rtnetlink for the status endpoint.

Called by :class:`launcher.status.collect.Collector` (``/status``, ``/metrics``, the
doctor) in a worker thread of the long-lived launcher: one ``RTM_GETLINK`` dump (name,
MAC, MTU, operational state, the 64-bit counters) and one ``RTM_GETNEIGH`` dump, decoded
with :mod:`launcher.network.rtnl` — not pyroute2, which would add ≈5.4 MiB to every
launcher the first time someone asks for its status (bench/README.md, *Idle*). Reads
need no capability, so this works after the launcher dropped its own.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from launcher.errors import NetworkError

from . import rtnl

__all__ = ["LinkCounters", "Neighbour", "LinkReader"]

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_STATS = 7
IFLA_OPERSTATE = 16
IFLA_STATS64 = 23
NDA_DST = 1
NDA_LLADDR = 2
NUD_FAILED = 0x20
NUD_NOARP = 0x40
CLONE_NEWNET = 0x40000000

_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
#: RFC 2863 operational states as the kernel numbers them (IF_OPER_*), as ``ip`` names them.
_OPER_STATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
#: The first eight counters of rtnl_link_stats64 / rtnl_link_stats, in the kernel's order.
_COUNTERS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
             "rx_dropped", "tx_dropped")  # fmt: skip


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
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    mtu: int = 0
    mac: str = ""


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


def _u32(raw: bytes | None) -> int:
    return struct.unpack("=I", raw)[0] if raw is not None and len(raw) == 4 else 0


def _counters(attrs: dict[int, bytes]) -> dict[str, int]:
    raw64, raw32 = attrs.get(IFLA_STATS64), attrs.get(IFLA_STATS)
    if raw64 is not None and len(raw64) >= 8 * len(_COUNTERS):
        values = struct.unpack_from(f"={len(_COUNTERS)}Q", raw64)
    elif raw32 is not None and len(raw32) >= 4 * len(_COUNTERS):
        values = struct.unpack_from(f"={len(_COUNTERS)}I", raw32)
    else:
        values = (0,) * len(_COUNTERS)
    return dict(zip(_COUNTERS, values, strict=True))


def decode_link(body: bytes) -> tuple[int, LinkCounters] | None:
    """(index, counters) of one ``RTM_NEWLINK`` body; None when it has no name."""
    if len(body) < _IFINFOMSG.size:
        return None
    _family, _type, index, _flags, _change = _IFINFOMSG.unpack_from(body)
    attrs = rtnl.attributes(body, _IFINFOMSG.size)
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    if not name:
        return None
    oper = (attrs.get(IFLA_OPERSTATE) or b"\0")[0]
    return index, LinkCounters(
        name=name,
        oper_state=_OPER_STATES[oper] if oper < len(_OPER_STATES) else "unknown",
        mtu=_u32(attrs.get(IFLA_MTU)),
        mac=_mac(attrs.get(IFLA_ADDRESS)),
        **_counters(attrs),
    )


def decode_neighbour(body: bytes, names: dict[int, str]) -> Neighbour | None:
    """The entry of one ``RTM_NEWNEIGH`` body on a link in ``names`` (index → name);
    None for other links, failed or NOARP entries, or no address or MAC."""
    if len(body) < _NDMSG.size:
        return None
    _family, index, state, _flags, _type = _NDMSG.unpack_from(body)
    name = names.get(index)
    if name is None or state & (NUD_FAILED | NUD_NOARP):
        return None
    attrs = rtnl.attributes(body, _NDMSG.size)
    dst, mac = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    if not dst or len(dst) not in (4, 16) or not mac:
        return None
    return Neighbour(name, str(ipaddress.ip_address(dst)), _mac(mac))


def _socket_in(netns: str) -> socket.socket:
    """A netlink socket of the named netns (made by a thread that entered it)."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            finally:
                os.close(fd)
            made.append(rtnl.open_socket())
        except BaseException as err:  # noqa: BLE001 - re-raised by the caller
            failed.append(err)

    thread = threading.Thread(target=enter, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout=rtnl.DUMP_TIMEOUT_S)
    if failed or not made:
        reason = failed[0] if failed else "timed out"
        raise OSError(f"cannot open netlink in netns {netns!r}: {reason}")
    return made[0]


class LinkReader:
    """One netlink socket (opened lazily, in ``netns`` or the current one), used under a lock.

    Methods block for well under a millisecond on a pod-sized netns; callers run them in a
    worker thread. Failures raise :class:`NetworkError`.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def _dump(self, kind: int, header: bytes) -> list[tuple[int, bytes]]:
        if self._sock is None:
            self._sock = _socket_in(self.netns) if self.netns else rtnl.open_socket()
        self._seq += 1
        try:
            return rtnl.dump(self._sock, kind, header, self._seq)
        except OSError:
            self._drop()  # a half-read dump: the next call starts on a fresh socket
            raise

    def _links(self) -> dict[int, LinkCounters]:
        found = self._dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        out: dict[int, LinkCounters] = {}
        for kind, body in found:
            if kind == RTM_NEWLINK and (link := decode_link(body)) is not None:
                out[link[0]] = link[1]
        return out

    def links(self, names: Iterable[str] | None) -> dict[str, LinkCounters]:
        """Counters of the named links that exist (missing ones are left out); every
        link of the netns when ``names`` is None."""
        wanted = None if names is None else set(names)
        if wanted is not None and not wanted:
            return {}
        with self._lock:
            try:
                links = self._links()
            except OSError as err:
                raise NetworkError(f"cannot list links in netns {self.netns!r}: {err}") from err
        return {c.name: c for c in links.values() if wanted is None or c.name in wanted}

    def neighbours(self, interfaces: Iterable[str]) -> tuple[Neighbour, ...]:
        """Resolved (not failed, not NOARP) neighbour entries on ``interfaces``."""
        wanted = set(interfaces)
        if not wanted:
            return ()
        with self._lock:
            try:
                names = {i: c.name for i, c in self._links().items() if c.name in wanted}
                found = (
                    self._dump(RTM_GETNEIGH, _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
                    if names
                    else []
                )
            except OSError as err:
                raise NetworkError(
                    f"cannot read the neighbour table of {sorted(wanted)} in netns "
                    f"{self.netns!r}: {err}"
                ) from err
        entries = (decode_neighbour(body, names) for kind, body in found if kind == RTM_NEWNEIGH)
        return tuple(n for n in entries if n is not None)

    def close(self) -> None:
        """Close the socket (a later call opens a new one)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
