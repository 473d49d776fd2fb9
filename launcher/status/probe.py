"""Bounded ARP / neighbour-discovery probes for the network doctor (``launcher.status.doctor``).

Called by the status collector only when a request finds the last diagnosis older than
its bound (docs/status.md): nothing here runs while nobody asks. Each probe opens one
``AF_PACKET`` socket bound to one interface, sends ONE request frame and reads frames for
at most ``timeout`` seconds (and at most ``_MAX_FRAMES`` of them), then closes it.

* the guest is probed **on its tap** (the frame goes only to the guest, never out of the
  pod; the reply is read on the tap before the bridge or the anti-spoofing rules see it,
  so a guest answering from another MAC than planned is seen with that MAC);
* the pod's gateway is probed on the pod interface (an ARP probe with sender 0.0.0.0 when
  the pod interface has no IPv4 address left, as in the bridge binding; a DAD-style
  neighbour solicitation from ``::`` for IPv6).

Written by hand because no library on the allowed list builds ARP or ND frames (pyroute2
reads the kernel's neighbour table but cannot make the kernel probe an address it has no
route for: in the bridge binding the guest's address is not on any pod interface).
Needs CAP_NET_RAW (the pod field ``securityContext.capabilities.add: [NET_RAW]`` the
manifest already asks for): without it a probe reports ``unavailable`` with that reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ProbeResult", "LinkOpener", "arp_probe", "nd_probe", "link_local_from_mac"]

_ETH_P_ALL = 0x0003
_ETH_P_ARP = 0x0806
_ETH_P_IPV6 = 0x86DD
_MAX_FRAMES = 2000
_BROADCAST = b"\xff" * 6


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw: ``answered`` is None when it could not be sent."""

    target: str
    interface: str
    answered: bool | None
    mac: str | None = None  # who answered (the link-layer source of the reply)
    rtt_ms: float | None = None
    detail: str = ""
    #: Other source MACs seen on the interface meanwhile (only when ``expect_mac`` was
    #: given: a guest using another MAC than planned), each with "dhcp" when it sent a
    #: DHCPv4/DHCPv6 request, else "frames".
    strangers: tuple[tuple[str, str], ...] = ()


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def _mac_text(raw: bytes) -> str:
    return raw.hex(":")


def link_local_from_mac(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address of ``mac``."""
    octets = bytearray(_mac_bytes(mac))
    octets[0] ^= 0x02
    eui = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui)


def _open(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    try:
        sock.bind((interface, _ETH_P_ALL))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_dhcp_request(data: bytes) -> bool:
    """A DHCPv4 (UDP to 67) or DHCPv6 (UDP to 547) client message, no IP options."""
    if data[12:14] == b"\x08\x00" and len(data) >= 38 and data[23] == socket.IPPROTO_UDP:
        ihl = (data[14] & 0x0F) * 4
        return len(data) >= 14 + ihl + 4 and data[14 + ihl + 2 : 14 + ihl + 4] == b"\x00\x43"
    if data[12:14] == b"\x86\xdd" and len(data) >= 58 and data[20] == socket.IPPROTO_UDP:
        return data[56:58] == b"\x02\x23"
    return False


#: Opens the probe's link-layer socket on an interface (default: in this process; the
#: launcher passes one that asks its privileged helper once it holds no capability).
LinkOpener = Callable[[str], socket.socket]


def _exchange(
    interface: str,
    target: str,
    frame: bytes,
    match: Callable[[bytes], str | None],
    *,
    timeout: float,
    expect_mac: str | None,
    opener: LinkOpener | None = None,
) -> ProbeResult:
    try:
        sock = (opener or _open)(interface)
        sock.setblocking(False)
    except PermissionError as err:
        return ProbeResult(
            target,
            interface,
            None,
            detail=f"no probe: {err.strerror} (needs CAP_NET_RAW: "
            "securityContext.capabilities.add NET_RAW)",
        )
    except OSError as err:
        return ProbeResult(target, interface, None, detail=f"no probe: {err.strerror}")
    with contextlib.closing(sock):
        start = time.monotonic()
        try:
            sock.send(frame)
        except OSError as err:
            return ProbeResult(target, interface, None, detail=f"send failed: {err.strerror}")
        deadline = start + timeout
        strangers: dict[str, str] = {}
        for _ in range(_MAX_FRAMES):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                continue
            except OSError as err:
                return ProbeResult(target, interface, None, detail=f"read failed: {err.strerror}")
            if addr[2] == socket.PACKET_OUTGOING or len(data) < 14:
                continue
            source = _mac_text(data[6:12])
            if expect_mac is not None and source != expect_mac and len(strangers) < 8:
                dhcp = _is_dhcp_request(data)
                if dhcp or source not in strangers:
                    strangers[source] = "dhcp" if dhcp else "frames"
            who = match(data)
            if who is not None:
                rtt = round((time.monotonic() - start) * 1000, 2)
                return ProbeResult(
                    target, interface, True, who, rtt, strangers=tuple(strangers.items())
                )
    return ProbeResult(
        target,
        interface,
        False,
        detail=f"no answer within {round(timeout * 1000)} ms",
        strangers=tuple(strangers.items()),
    )


class _ArpReply:
    """Recognizes the ARP reply for ``target``; returns the answering MAC."""

    def __init__(self, target: ipaddress.IPv4Address) -> None:
        self.target = target.packed

    def __call__(self, data: bytes) -> str | None:
        if len(data) < 42 or data[12:14] != b"\x08\x06":
            return None
        op = struct.unpack_from("!H", data, 20)[0]
        if op != 2 or data[28:32] != self.target:
            return None
        return _mac_text(data[22:28])


class _NeighbourAdvert:
    """Recognizes the neighbour advertisement for ``target``; returns its source MAC."""

    def __init__(self, target: ipaddress.IPv6Address) -> None:
        self.target = target.packed

    def __call__(self, data: bytes) -> str | None:
        # Ethernet (14) + IPv6 (40) + ICMPv6 NA (24: type, code, sum, flags, target)
        if len(data) < 78 or data[12:14] != b"\x86\xdd" or data[20] != socket.IPPROTO_ICMPV6:
            return None
        if data[54] != 136 or data[62:78] != self.target:
            return None
        return _mac_text(data[6:12])


def arp_probe(
    interface: str,
    target: ipaddress.IPv4Address,
    *,
    source_mac: str,
    source_ip: ipaddress.IPv4Address | None = None,
    timeout: float = 1.0,
    expect_mac: str | None = None,
    opener: LinkOpener | None = None,
) -> ProbeResult:
    """Ask "who has ``target``" on ``interface`` (from ``source_ip``, or 0.0.0.0: an RFC
    5227 probe, which hosts answer without learning a sender) and wait for the reply."""
    sha = _mac_bytes(source_mac)
    spa = (source_ip or ipaddress.IPv4Address(0)).packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + sha + spa + b"\x00" * 6 + target.packed
    frame = _BROADCAST + sha + struct.pack("!H", _ETH_P_ARP) + arp
    return _exchange(
        interface,
        str(target),
        frame,
        _ArpReply(target),
        timeout=timeout,
        expect_mac=expect_mac,
        opener=opener,
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def nd_probe(
    interface: str,
    target: ipaddress.IPv6Address,
    *,
    source_mac: str,
    source_ip: ipaddress.IPv6Address | None = None,
    timeout: float = 1.0,
    expect_mac: str | None = None,
    opener: LinkOpener | None = None,
) -> ProbeResult:
    """A neighbour solicitation for ``target`` on ``interface``, to its solicited-node
    multicast group, from ``source_ip`` (with our link-layer address) or from ``::`` (a
    DAD-style probe: the answer goes to all nodes), and wait for the advertisement."""
    sha = _mac_bytes(source_mac)
    group = ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + target.packed[13:])
    src = source_ip or ipaddress.IPv6Address(0)
    option = b"" if source_ip is None else b"\x01\x01" + sha  # source link-layer address
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed + option
    pseudo = src.packed + group.packed + struct.pack("!I3xB", len(body), socket.IPPROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = (
        struct.pack("!IHBB", 6 << 28, len(body), socket.IPPROTO_ICMPV6, 255)
        + src.packed
        + group.packed
    )
    dst_mac = b"\x33\x33" + group.packed[12:]
    frame = dst_mac + sha + struct.pack("!H", _ETH_P_IPV6) + ip6 + body
    return _exchange(
        interface,
        str(target),
        frame,
        _NeighbourAdvert(target),
        timeout=timeout,
        expect_mac=expect_mac,
        opener=opener,
    )
