"""DHCPv4 option codes and exact-size value encoders (RFC 2132, 3442, 3397, 2939).

Provides the option numbers the server uses, encoders that always produce the value at
its exact size (an IPv4 address is 4 bytes, a lease time 4, an MTU 2 — Windows rejects
an address option of any other length), decoders for what clients send (parameter
request list, maximum message size, requested address) and :func:`classless_routes`
(option 121). Called by ``dhcp.v4.logic`` when building replies and by the tests.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from dhcp.common import decode_search_list, encode_search_list

__all__ = [
    "SUBNET_MASK",
    "ROUTER",
    "DNS",
    "HOSTNAME",
    "DOMAIN_NAME",
    "INTERFACE_MTU",
    "BROADCAST",
    "NTP_SERVERS",
    "REQUESTED_ADDRESS",
    "LEASE_TIME",
    "OVERLOAD",
    "MESSAGE_TYPE",
    "SERVER_ID",
    "PARAMETER_LIST",
    "MESSAGE",
    "MAX_SIZE",
    "RENEWAL_TIME",
    "REBINDING_TIME",
    "CLIENT_ID",
    "TFTP_SERVER",
    "BOOT_FILE",
    "DOMAIN_SEARCH",
    "CLASSLESS_ROUTES",
    "PRIVATE_FIRST",
    "PRIVATE_LAST",
    "DISCOVER",
    "OFFER",
    "REQUEST",
    "DECLINE",
    "ACK",
    "NAK",
    "RELEASE",
    "INFORM",
    "TYPE_NAMES",
    "enc_ip",
    "enc_ips",
    "enc_u32",
    "enc_u16",
    "enc_text",
    "enc_search",
    "classless_routes",
    "decode_classless_routes",
    "describe",
]

SUBNET_MASK = 1
ROUTER = 3
DNS = 6
HOSTNAME = 12
DOMAIN_NAME = 15
INTERFACE_MTU = 26
BROADCAST = 28
NTP_SERVERS = 42
REQUESTED_ADDRESS = 50
LEASE_TIME = 51
OVERLOAD = 52
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAMETER_LIST = 55
MESSAGE = 56
MAX_SIZE = 57
RENEWAL_TIME = 58
REBINDING_TIME = 59
CLIENT_ID = 61
TFTP_SERVER = 66
BOOT_FILE = 67
DOMAIN_SEARCH = 119
CLASSLESS_ROUTES = 121
PRIVATE_FIRST = 224
PRIVATE_LAST = 254

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
TYPE_NAMES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}


def enc_ip(address: IPv4Address) -> bytes:
    """Exactly 4 bytes."""
    return address.packed


def enc_ips(addresses: Iterable[IPv4Address]) -> bytes:
    """4 bytes per address, nothing else."""
    return b"".join(a.packed for a in addresses)


def enc_u32(value: int) -> bytes:
    """Exactly 4 bytes, network order (lease times)."""
    return struct.pack("!I", value)


def enc_u16(value: int) -> bytes:
    """Exactly 2 bytes, network order (MTU, maximum message size)."""
    return struct.pack("!H", value)


def enc_text(value: str) -> bytes:
    """ASCII without a terminating NUL (RFC 2132 section 2: NUL is not required)."""
    return value.encode("ascii")


def enc_search(domains: Iterable[str]) -> bytes:
    """Option 119: DNS wire format with compression (RFC 3397)."""
    return encode_search_list(domains, compress=True)


def classless_routes(routes: Iterable[tuple[IPv4Network, IPv4Address]]) -> bytes:
    """Option 121 (RFC 3442): width, significant destination octets, router, per route."""
    out = bytearray()
    for network, gateway in routes:
        width = network.prefixlen
        out.append(width)
        out += network.network_address.packed[: (width + 7) // 8]
        out += gateway.packed
    return bytes(out)


def decode_classless_routes(data: bytes) -> list[tuple[IPv4Network, IPv4Address]]:
    """Inverse of :func:`classless_routes`; ValueError for a truncated or bad value."""
    routes: list[tuple[IPv4Network, IPv4Address]] = []
    i = 0
    while i < len(data):
        width = data[i]
        if width > 32:
            raise ValueError(f"route width {width} is over 32")
        octets = (width + 7) // 8
        if i + 1 + octets + 4 > len(data):
            raise ValueError(f"route at offset {i} is truncated")
        dest = data[i + 1 : i + 1 + octets] + bytes(4 - octets)
        gateway = IPv4Address(data[i + 1 + octets : i + 5 + octets])
        routes.append((IPv4Network((dest, width), strict=False), gateway))
        i += 5 + octets
    return routes


_NAMES = {
    SUBNET_MASK: "subnet-mask",
    ROUTER: "router",
    DNS: "dns-servers",
    HOSTNAME: "hostname",
    DOMAIN_NAME: "domain-name",
    INTERFACE_MTU: "interface-mtu",
    BROADCAST: "broadcast-address",
    NTP_SERVERS: "ntp-servers",
    LEASE_TIME: "lease-time",
    MESSAGE_TYPE: "message-type",
    SERVER_ID: "server-identifier",
    RENEWAL_TIME: "renewal-time",
    REBINDING_TIME: "rebinding-time",
    CLIENT_ID: "client-identifier",
    TFTP_SERVER: "tftp-server-name",
    BOOT_FILE: "bootfile-name",
    DOMAIN_SEARCH: "domain-search",
    CLASSLESS_ROUTES: "classless-static-routes",
}
_ADDRESSES = frozenset({SUBNET_MASK, ROUTER, DNS, BROADCAST, NTP_SERVERS, SERVER_ID})
_TEXT = frozenset({HOSTNAME, DOMAIN_NAME, TFTP_SERVER, BOOT_FILE})
_NUMBERS = frozenset({INTERFACE_MTU, LEASE_TIME, RENEWAL_TIME, REBINDING_TIME})


def describe(code: int, value: bytes) -> dict[str, object]:
    """One option as plain data: code, name, the value decoded where the code is known,
    and the exact bytes (``hex``). For ``virt-launcher plan`` and diagnostics."""
    decoded: object
    if code in _ADDRESSES and len(value) % 4 == 0:
        decoded = [str(IPv4Address(value[i : i + 4])) for i in range(0, len(value), 4)]
    elif code in _TEXT:
        decoded = value.decode("ascii", "backslashreplace")
    elif code in _NUMBERS:
        decoded = int.from_bytes(value, "big")
    elif code == MESSAGE_TYPE and len(value) == 1:
        decoded = TYPE_NAMES.get(value[0], value[0])
    elif code == DOMAIN_SEARCH:
        decoded = decode_search_list(value)
    elif code == CLASSLESS_ROUTES:
        decoded = [f"{dst} via {hop}" for dst, hop in decode_classless_routes(value)]
    elif PRIVATE_FIRST <= code <= PRIVATE_LAST:
        decoded = value.decode("utf-8", "backslashreplace")
    else:
        decoded = None
    name = _NAMES.get(code, "private" if PRIVATE_FIRST <= code <= PRIVATE_LAST else "other")
    return {"code": code, "name": name, "value": decoded, "hex": value.hex()}
