"""DHCPv6 wire codec (RFC 8415): messages, the options this server uses, DUIDs.

Called by :mod:`dhcp.v6.server` to read client messages and build answers, and by the
tests to decode captured client packets. :func:`decode` validates every option the
server interprets (client/server id, IA_NA with its IAADDR and status sub-options,
ORO, elapsed time, client link-layer address) so a malformed packet is rejected in one
place; it raises :class:`dhcp.errors.MalformedPacket` and never another exception.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from dhcp.common import encode_search_list
from dhcp.errors import MalformedPacket

__all__ = [
    "MsgType",
    "Opt",
    "Status",
    "Message",
    "IAAddr",
    "IANA",
    "decode",
    "encode",
    "parse_ia_na",
    "encode_ia_na",
    "encode_status",
    "parse_status",
    "encode_domain_list",
    "decode_domain_list",
    "duid_mac",
    "duid_ll",
    "duid_uuid",
    "parse_oro",
    "linklayer_mac",
    "mac_bytes",
    "CLIENT_PORT",
    "SERVER_PORT",
    "ALL_SERVERS",
]

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS = "ff02::1:2"


class MsgType(enum.IntEnum):
    """DHCPv6 message types (RFC 8415 section 7.3)."""

    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


class Opt(enum.IntEnum):
    """Option codes this server reads or writes."""

    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    DNS_SERVERS = 23
    DOMAIN_LIST = 24
    CLIENT_LINKLAYER_ADDR = 79


class Status(enum.IntEnum):
    """Status codes (RFC 8415 section 21.13)."""

    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5


@dataclass(frozen=True, slots=True)
class IAAddr:
    """One IA Address option: an address with its lifetimes (and an optional status)."""

    address: ipaddress.IPv6Address
    preferred: int
    valid: int
    status: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class IANA:
    """An Identity Association for Non-temporary Addresses."""

    iaid: int
    t1: int
    t2: int
    addresses: tuple[IAAddr, ...] = ()
    status: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A client/server DHCPv6 message; options are kept raw and in order."""

    msg_type: int
    xid: int
    options: tuple[tuple[int, bytes], ...] = field(default=())

    def get(self, code: int) -> bytes | None:
        """The first option with this code, or None."""
        for c, data in self.options:
            if c == code:
                return data
        return None

    def all(self, code: int) -> list[bytes]:
        """Every option with this code, in order."""
        return [data for c, data in self.options if c == code]

    def ia_nas(self) -> list[IANA]:
        """The IA_NA options, parsed (already validated by :func:`decode`)."""
        return [parse_ia_na(d) for d in self.all(Opt.IA_NA)]

    def oro(self) -> tuple[int, ...]:
        """Requested option codes (empty when there is no ORO)."""
        data = self.get(Opt.ORO)
        return () if data is None else parse_oro(data)


def _iter_options(data: bytes, where: str) -> Iterable[tuple[int, bytes]]:
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 4:
            raise MalformedPacket(f"{where}: truncated option header at offset {pos}")
        code, length = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + length > end:
            raise MalformedPacket(
                f"{where}: option {code} length {length} runs past the end at offset {pos}"
            )
        yield code, bytes(data[pos : pos + length])
        pos += length


def _opt(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def parse_status(data: bytes) -> tuple[int, str]:
    """Decode a Status Code option body into (code, message)."""
    if len(data) < 2:
        raise MalformedPacket(f"status code option of {len(data)} bytes is shorter than 2")
    (code,) = struct.unpack_from("!H", data)
    return code, data[2:].decode("utf-8", errors="replace")


def encode_status(code: int, message: str = "") -> bytes:
    """A complete Status Code option (header included)."""
    return _opt(Opt.STATUS_CODE, struct.pack("!H", code) + message.encode())


def _parse_iaaddr(data: bytes) -> IAAddr:
    if len(data) < 24:
        raise MalformedPacket(f"IAADDR option of {len(data)} bytes is shorter than 24")
    addr = ipaddress.IPv6Address(data[:16])
    preferred, valid = struct.unpack_from("!II", data, 16)
    status = None
    for code, body in _iter_options(data[24:], "IAADDR"):
        if code == Opt.STATUS_CODE:
            status = parse_status(body)
    return IAAddr(addr, preferred, valid, status)


def parse_ia_na(data: bytes) -> IANA:
    """Decode an IA_NA option body."""
    if len(data) < 12:
        raise MalformedPacket(f"IA_NA option of {len(data)} bytes is shorter than 12")
    iaid, t1, t2 = struct.unpack_from("!III", data)
    addrs: list[IAAddr] = []
    status = None
    for code, body in _iter_options(data[12:], "IA_NA"):
        if code == Opt.IAADDR:
            addrs.append(_parse_iaaddr(body))
        elif code == Opt.STATUS_CODE:
            status = parse_status(body)
    return IANA(iaid, t1, t2, tuple(addrs), status)


def encode_ia_na(ia: IANA) -> bytes:
    """A complete IA_NA option (header included)."""
    body = struct.pack("!III", ia.iaid, ia.t1, ia.t2)
    for a in ia.addresses:
        sub = a.address.packed + struct.pack("!II", a.preferred, a.valid)
        if a.status is not None:
            sub += encode_status(*a.status)
        body += _opt(Opt.IAADDR, sub)
    if ia.status is not None:
        body += encode_status(*ia.status)
    return _opt(Opt.IA_NA, body)


def parse_oro(data: bytes) -> tuple[int, ...]:
    """Decode an Option Request option body into option codes."""
    if len(data) % 2:
        raise MalformedPacket(f"ORO option length {len(data)} is odd")
    return struct.unpack(f"!{len(data) // 2}H", data)


def encode_domain_list(names: Iterable[str]) -> bytes:
    """Domain names in uncompressed DNS wire format (RFC 3646: option 24 and DNSSL)."""
    listed = list(names)
    try:
        return encode_search_list(listed, compress=False)
    except ValueError as err:
        raise ValueError(f"search domain list {listed!r} is not valid: {err}") from err


def decode_domain_list(data: bytes) -> tuple[str, ...]:
    """Decode uncompressed DNS wire-format names; trailing zero padding is allowed (DNSSL)."""
    names: list[str] = []
    labels: list[str] = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        pos += 1
        if length == 0:
            if labels:
                names.append(".".join(labels))
                labels = []
            continue
        if length > 63:
            raise MalformedPacket(f"domain label length {length} at offset {pos - 1} exceeds 63")
        if pos + length > len(data):
            raise MalformedPacket(f"domain label of {length} bytes runs past the end")
        labels.append(data[pos : pos + length].decode("ascii", errors="replace"))
        pos += length
    if labels:
        raise MalformedPacket(f"domain name {'.'.join(labels)!r} is not terminated")
    return tuple(names)


_VALIDATORS = {
    Opt.IA_NA: parse_ia_na,
    Opt.ORO: parse_oro,
    Opt.STATUS_CODE: parse_status,
}


def decode(data: bytes) -> Message:
    """Decode a client or server message (not relay messages)."""
    try:
        return _decode(bytes(data))
    except MalformedPacket:
        raise
    except (ValueError, struct.error, IndexError) as err:  # pragma: no cover - defence
        raise MalformedPacket(f"DHCPv6 message could not be decoded: {err}") from err


def _decode(data: bytes) -> Message:
    if len(data) < 4:
        raise MalformedPacket(f"DHCPv6 message of {len(data)} bytes is shorter than 4")
    msg_type = data[0]
    if msg_type in (MsgType.RELAY_FORW, MsgType.RELAY_REPL):
        raise MalformedPacket(f"relay message type {msg_type} is not served on a guest link")
    if msg_type == 0 or msg_type > 255:
        raise MalformedPacket(f"message type {msg_type} is not a DHCPv6 message type")
    xid = int.from_bytes(data[1:4], "big")
    options = tuple(_iter_options(data[4:], "message"))
    for code, body in options:
        if code in (Opt.CLIENTID, Opt.SERVERID) and not 2 <= len(body) <= 130:
            raise MalformedPacket(f"DUID option {code} has invalid length {len(body)}")
        if code == Opt.ELAPSED_TIME and len(body) != 2:
            raise MalformedPacket(f"elapsed time option has length {len(body)}, not 2")
        if code == Opt.RAPID_COMMIT and body:
            raise MalformedPacket(f"rapid commit option has length {len(body)}, not 0")
        if code == Opt.CLIENT_LINKLAYER_ADDR and len(body) < 3:
            raise MalformedPacket(f"client link-layer option has length {len(body)}, below 3")
        validator = _VALIDATORS.get(code)  # type: ignore[call-overload]
        if validator is not None:
            validator(body)
    return Message(msg_type, xid, options)


def encode(msg: Message) -> bytes:
    """Encode a message; options are written in the given order."""
    out = bytearray([msg.msg_type]) + msg.xid.to_bytes(3, "big")
    for code, body in msg.options:
        out += _opt(code, body)
    return bytes(out)


def duid_mac(duid: bytes) -> str | None:
    """The Ethernet MAC inside a DUID-LLT or DUID-LL, as ``aa:bb:..``; None otherwise."""
    if len(duid) < 4:
        return None
    duid_type, hw_type = struct.unpack_from("!HH", duid)
    if hw_type != 1:
        return None
    if duid_type == 1 and len(duid) == 14:
        return _mac_str(duid[8:])
    if duid_type == 3 and len(duid) == 10:
        return _mac_str(duid[4:])
    return None


def duid_ll(mac: str) -> bytes:
    """DUID-LL (type 3, hardware type 1) for an Ethernet MAC."""
    return struct.pack("!HH", 3, 1) + mac_bytes(mac)


def duid_uuid(uuid_bytes: bytes) -> bytes:
    """DUID-UUID (type 4, RFC 6355) from 16 UUID bytes."""
    if len(uuid_bytes) != 16:
        raise ValueError(f"UUID of {len(uuid_bytes)} bytes is not 16 bytes long")
    return struct.pack("!H", 4) + uuid_bytes


def linklayer_mac(body: bytes) -> str | None:
    """The MAC in a Client Link-Layer Address option (RFC 6939) if it is Ethernet."""
    if len(body) == 8 and body[:2] == b"\x00\x01":
        return _mac_str(body[2:])
    return None


def mac_bytes(mac: str) -> bytes:
    """Six bytes for ``aa:bb:cc:dd:ee:ff`` (also accepts ``-`` separators)."""
    parts = mac.replace("-", ":").split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError as err:
        raise ValueError(f"{mac!r} is not a MAC address") from err
    if len(raw) != 6 or any(len(p) not in (1, 2) for p in parts):
        raise ValueError(f"{mac!r} is not a MAC address")
    return raw


def _mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
