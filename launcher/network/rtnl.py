"""A small rtnetlink codec for the long-lived launcher: messages, attributes, one dump.

Called by :mod:`launcher.network.addrwatch` (address notifications and dumps, the link
refresh) and :mod:`launcher.network.linkstats` (link counters and neighbours, the status
endpoint). The launcher's process lives as long as its VM and never imports pyroute2
(≈5.4 MiB of RSS for the status reader alone, measured; the one pyroute2 adapter,
:mod:`launcher.network.netlink`, runs in the short-lived netlink child), and what it
reads there is a few fixed message types that need no capability: written by hand with
:mod:`struct`, as no other library on the allowed list speaks netlink.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

__all__ = [
    "NETLINK_ROUTE",
    "NLM_F_REQUEST",
    "NLM_F_DUMP",
    "align",
    "attributes",
    "messages",
    "dump",
    "open_socket",
]

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTATTR = struct.Struct("=HH")  # len, type
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
RECV_BYTES = 1 << 16
#: Bounds one dump: reads (each up to 64 KiB) and seconds per read.
DUMP_READS = 256
DUMP_TIMEOUT_S = 2.0


def align(n: int) -> int:
    """``n`` rounded up to netlink's 4-byte alignment."""
    return (n + 3) & ~3


def attributes(body: bytes, offset: int) -> dict[int, bytes]:
    """The route attributes from ``offset`` of a message body (type → payload); a
    truncated attribute ends the list."""
    attrs: dict[int, bytes] = {}
    pos = offset
    while pos + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, pos)
        if length < _RTATTR.size or pos + length > len(body):
            break
        attrs[kind & _NLA_TYPE_MASK] = body[pos + _RTATTR.size : pos + length]
        pos += align(length)
    return attrs


def messages(data: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """The (type, body) of each message in one netlink datagram, and whether it ended a
    dump (``NLMSG_DONE``). A truncated message ends the parse; an ``NLMSG_ERROR`` with a
    non-zero code raises the OSError it carries (an acknowledgement is skipped)."""
    out: list[tuple[int, bytes]] = []
    done = False
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            break
        body = data[offset + NLMSGHDR.size : offset + length]
        offset += align(length)
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EIO
            if code:
                raise OSError(code, f"rtnetlink: {os.strerror(code)}")
        else:
            out.append((kind, body))
    return out, done


def open_socket() -> socket.socket:
    """A blocking ``NETLINK_ROUTE`` socket of this thread's netns, every read bounded."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.settimeout(DUMP_TIMEOUT_S)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def dump(sock: socket.socket, kind: int, header: bytes, seq: int = 1) -> list[tuple[int, bytes]]:
    """Every message of one ``kind`` dump request (``header``: the family header that
    follows the netlink header) on ``sock``; OSError when the kernel refuses it, a read
    times out, or the dump does not end within ``DUMP_READS`` reads."""
    size = NLMSGHDR.size + len(header)
    sock.send(NLMSGHDR.pack(size, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + header)
    out: list[tuple[int, bytes]] = []
    for _ in range(DUMP_READS):
        batch, done = messages(sock.recv(RECV_BYTES))
        out.extend(batch)
        if done:
            return out
    raise OSError(errno.EMSGSIZE, "rtnetlink dump did not end")
