"""Byte-exact BOOTP/DHCPv4 message codec (RFC 2131, RFC 2132, RFC 3396).

Provides :class:`Message` (a frozen view of one message), :func:`parse` and
:meth:`Message.build`. The DHCPv4 server calls ``parse`` on every datagram and
``build`` on every reply; tests use both on real captured client packets.

Parsing handles pad (0) and end (255), option overload (52: more options in ``file``
and/or ``sname``, read in the RFC 2131 order options → file → sname) and RFC 3396
long options (several instances of one code are concatenated). Any input that is not a
valid message raises :class:`dhcp.errors.MalformedPacket` and nothing else. Building
writes each option at its exact length (split into 255-byte pieces when longer), an
end option, and pads the message to the 300-byte BOOTP minimum that old clients expect.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from dhcp.errors import MalformedPacket

__all__ = [
    "Message",
    "parse",
    "MAGIC_COOKIE",
    "BOOTREQUEST",
    "BOOTREPLY",
    "FLAG_BROADCAST",
    "MIN_BOOTP_SIZE",
]

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST = 1
BOOTREPLY = 2
FLAG_BROADCAST = 0x8000
MIN_BOOTP_SIZE = 300
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_FIXED = _HEADER.size  # 236
_OPT_PAD = 0
_OPT_END = 255
_OPT_OVERLOAD = 52
_OPT_MESSAGE_TYPE = 53
_ZERO = IPv4Address(0)


@dataclass(frozen=True, slots=True)
class Message:
    """One BOOTP/DHCP message; ``options`` keeps wire order, one entry per code.

    ``chaddr`` holds only the first ``hlen`` bytes (the MAC for Ethernet); ``sname`` and
    ``file`` are empty when they carried overloaded options.
    """

    op: int
    xid: int
    chaddr: bytes
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _ZERO
    yiaddr: IPv4Address = _ZERO
    siaddr: IPv4Address = _ZERO
    giaddr: IPv4Address = _ZERO
    sname: bytes = b""
    file: bytes = b""
    options: tuple[tuple[int, bytes], ...] = field(default=())

    def option(self, code: int) -> bytes | None:
        """The value of option ``code``, or None if the message does not carry it."""
        for key, value in self.options:
            if key == code:
                return value
        return None

    @property
    def message_type(self) -> int | None:
        """Option 53 (1 DISCOVER … 8 INFORM), None for plain BOOTP."""
        value = self.option(_OPT_MESSAGE_TYPE)
        return value[0] if value is not None and len(value) == 1 else None

    def build(self) -> bytes:
        """Wire bytes of this message (exact option sizes, end option, padded to 300)."""
        if len(self.chaddr) > 16:
            raise ValueError(f"chaddr {self.chaddr.hex()} is longer than 16 bytes")
        if len(self.sname) > 64 or len(self.file) > 128:
            raise ValueError("sname is limited to 64 bytes and file to 128 bytes")
        head = _HEADER.pack(
            self.op,
            self.htype,
            len(self.chaddr),
            self.hops,
            self.xid,
            self.secs,
            self.flags,
            self.ciaddr.packed,
            self.yiaddr.packed,
            self.siaddr.packed,
            self.giaddr.packed,
            self.chaddr,
            self.sname,
            self.file,
        )
        out = bytearray(head)
        out += MAGIC_COOKIE
        out += encode_options(self.options)
        out.append(_OPT_END)
        if len(out) < MIN_BOOTP_SIZE:
            out += bytes(MIN_BOOTP_SIZE - len(out))
        return bytes(out)


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Code/length/value triplets; values over 255 bytes are split (RFC 3396)."""
    out = bytearray()
    for code, value in options:
        if not 1 <= code <= 254:
            raise ValueError(f"option code {code} is not between 1 and 254")
        if len(value) <= 255:
            out.append(code)
            out.append(len(value))
            out += value
            continue
        for start in range(0, len(value), 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk)))
            out += chunk
    return bytes(out)


def encoded_size(code: int, value: bytes) -> int:
    """Number of bytes :func:`encode_options` writes for one option."""
    del code
    return 2 if not value else len(value) + 2 * (-(-len(value) // 255))


def _read_options(data: bytes, where: str, into: dict[int, bytearray], order: list[int]) -> None:
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == _OPT_PAD:
            i += 1
            continue
        if code == _OPT_END:
            return
        if i + 1 >= n:
            raise MalformedPacket(f"option {code} in {where} at offset {i} has no length byte")
        length = data[i + 1]
        if i + 2 + length > n:
            raise MalformedPacket(
                f"option {code} in {where} at offset {i} claims {length} bytes, "
                f"only {n - i - 2} remain"
            )
        if code not in into:
            into[code] = bytearray()
            order.append(code)
        into[code] += data[i + 2 : i + 2 + length]
        i += 2 + length
    # A missing end option is tolerated (several embedded clients omit it in sname/file).


def parse(data: bytes) -> Message:
    """Decode one BOOTP/DHCP message; MalformedPacket if ``data`` is not one."""
    if len(data) < _FIXED + len(MAGIC_COOKIE):
        raise MalformedPacket(f"message of {len(data)} bytes is shorter than the 240-byte minimum")
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
    ) = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"op {op} is neither BOOTREQUEST (1) nor BOOTREPLY (2)")
    if hlen > 16:
        raise MalformedPacket(f"hlen {hlen} is longer than the 16-byte chaddr field")
    cookie = data[_FIXED : _FIXED + 4]
    if cookie != MAGIC_COOKIE:
        raise MalformedPacket(f"magic cookie {cookie.hex()} is not 63825363")
    values: dict[int, bytearray] = {}
    order: list[int] = []
    _read_options(data[_FIXED + 4 :], "options", values, order)
    overload = values.get(_OPT_OVERLOAD)
    file_used = sname_used = False
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedPacket(f"option overload (52) value {overload.hex()} is not 1, 2 or 3")
        file_used = bool(overload[0] & 1)
        sname_used = bool(overload[0] & 2)
        if file_used:
            _read_options(file, "file", values, order)
        if sname_used:
            _read_options(sname, "sname", values, order)
        del values[_OPT_OVERLOAD]
        order.remove(_OPT_OVERLOAD)
    return Message(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        htype=htype,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_addr(ciaddr),
        yiaddr=_addr(yiaddr),
        siaddr=_addr(siaddr),
        giaddr=_addr(giaddr),
        sname=b"" if sname_used else sname.rstrip(b"\0"),
        file=b"" if file_used else file.rstrip(b"\0"),
        options=tuple((code, bytes(values[code])) for code in order),
    )


def _addr(packed: bytes) -> IPv4Address:
    return _ZERO if packed == b"\0\0\0\0" else IPv4Address(packed)


def ip(value: bytes) -> IPv4Address:
    """A 4-byte option value as an address; MalformedPacket for any other length."""
    if len(value) != 4:
        raise MalformedPacket(f"address option value {value.hex()} is not 4 bytes")
    return ipaddress.IPv4Address(value)
