"""The privileged part of opening a server's sockets, behind one injectable opener.

(Also the launcher's status probes' link-layer socket, ``link``: one list of the raw
sockets the pod's processes may be handed.)

Used by :class:`dhcp.v4.server.Dhcp4Server`, :class:`dhcp.v6.server.Dhcp6Server` and
:class:`dhcp.ra.RaServer`. Each server asks for the sockets only a privileged process
may make — a UDP socket bound to a port below 1024 on one interface (NET_BIND_SERVICE),
a packet socket and a raw ICMPv6 socket (NET_RAW) — with a :class:`SocketRequest`, and
sets every unprivileged option itself. By default (:func:`open_local`) the socket is
made in this process; a caller that has given up its capabilities (the launcher after
start-up) passes an opener that asks a process which kept them and gets the socket
back as a file descriptor. The same :func:`open_socket` code runs on both sides.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["SocketRequest", "SocketOpener", "open_socket", "open_local", "KINDS"]

#: ``udp4``/``udp6``: bound to ``port`` on ``interface`` (SO_REUSEADDR, SO_BINDTODEVICE);
#: ``packet``: AF_PACKET/SOCK_DGRAM, protocol 0 (receives nothing until bound);
#: ``icmp6``: a raw ICMPv6 socket;
#: ``link``: AF_PACKET/SOCK_RAW for every protocol, bound to ``interface`` (the launcher's
#: status endpoint sends its ARP/ND probes on it, ``launcher.status.probe``).
KINDS = ("udp4", "udp6", "packet", "icmp6", "link")
_ETH_P_ALL = 0x0003

_IFNAMSIZ = 16


@dataclass(frozen=True, slots=True)
class SocketRequest:
    """One privileged socket a server needs."""

    kind: Literal["udp4", "udp6", "packet", "icmp6", "link"]
    interface: str = ""
    port: int = 0


SocketOpener = Callable[[SocketRequest], Awaitable[socket.socket]]


def open_socket(request: SocketRequest) -> socket.socket:
    """Make the socket ``request`` names (OSError if this process may not; ValueError
    for a request that is not one of :data:`KINDS` with a valid interface and port)."""
    kind, iface, port = request.kind, request.interface, request.port
    if kind == "packet":
        return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    if kind == "icmp6":
        return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    if kind not in ("udp4", "udp6", "link"):
        raise ValueError(f"socket kind {kind!r} is not one of {', '.join(KINDS)}")
    if not 0 < len(iface.encode()) < _IFNAMSIZ or "/" in iface:
        raise ValueError(f"interface {iface!r} is not a Linux interface name")
    if kind == "link":
        link = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        try:
            link.bind((iface, _ETH_P_ALL))
        except OSError:
            link.close()
            raise
        return link
    if not 0 <= port < 65536:  # 0: any free port (tests)
        raise ValueError(f"port {port!r} is not a UDP port")
    family = socket.AF_INET if kind == "udp4" else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        sock.bind(("0.0.0.0" if kind == "udp4" else "::", port))
    except OSError:
        sock.close()
        raise
    return sock


async def open_local(request: SocketRequest) -> socket.socket:
    """The default opener: :func:`open_socket` in this process."""
    return open_socket(request)
