"""Router advertisements (RFC 4861, RFC 8106): codec and an asyncio sender for one link.

The launcher (and ``python -m dhcp serve --ra``) runs one :class:`RaServer` per guest
NIC so the guest gets a default route, the on-link prefix, MTU, RDNSS and DNSSL; the
M/O flags tell it whether DHCPv6 assigns its address. The codec half
(:func:`encode_ra`, :func:`parse_ra`, :func:`parse_rs`) raises only
:class:`dhcp.errors.MalformedPacket` for bad input.

Sending uses an ICMPv6 raw socket bound to the interface (SO_BINDTODEVICE) and to its
link-local address, hop limit 255, joined to ff02::2 and filtered to Router
Solicitations. Adverts go out periodically (a few fast ones at start, then every
``interval``) and in answer to solicitations; :meth:`RaServer.close` sends a final
advert with router lifetime 0 so the guest drops the default route at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field

from dhcp.errors import MalformedPacket, ServerError
from dhcp.lifecycle import Server
from dhcp.raconfig import RaConfig
from dhcp.ratelimit import RateLimiter
from dhcp.sockets import SocketOpener, SocketRequest, open_local
from dhcp.v6.codec import decode_domain_list, encode_domain_list, mac_bytes

__all__ = [
    "RaConfig",
    "RaServer",
    "RouterAdvert",
    "PrefixInfo",
    "RouterSolicit",
    "RaCounters",
    "RaSnapshot",
    "encode_ra",
    "parse_ra",
    "parse_rs",
    "build_advert",
]

log = logging.getLogger(__name__)

ICMP6_RS = 133
ICMP6_RA = 134
OPT_SLLA = 1
OPT_PREFIX = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_DNSSL = 31
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
_ICMP6_FILTER = 1
_SO_BINDTODEVICE = 25
_IPV6_JOIN_GROUP = 20


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    """A Prefix Information option."""

    prefix: ipaddress.IPv6Network
    on_link: bool = True
    autonomous: bool = False
    valid: int = 86400
    preferred: int = 14400


@dataclass(frozen=True, slots=True)
class RouterAdvert:
    """A decoded or to-be-encoded Router Advertisement."""

    managed: bool
    other: bool
    router_lifetime: int
    cur_hop_limit: int = 64
    reachable_time: int = 0
    retrans_timer: int = 0
    source_mac: str | None = None
    mtu: int | None = None
    prefixes: tuple[PrefixInfo, ...] = ()
    rdnss: tuple[ipaddress.IPv6Address, ...] = ()
    rdnss_lifetime: int = 0
    dnssl: tuple[str, ...] = ()
    dnssl_lifetime: int = 0


@dataclass(frozen=True, slots=True)
class RouterSolicit:
    """A decoded Router Solicitation."""

    source_mac: str | None


def _mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _pad8(body: bytes, opt_type: int) -> bytes:
    total = 2 + len(body)
    pad = (-total) % 8
    body += b"\x00" * pad
    return bytes([opt_type, (2 + len(body)) // 8]) + body


def encode_ra(ra: RouterAdvert) -> bytes:
    """ICMPv6 RA bytes with a zero checksum (the kernel fills it on raw ICMPv6 sockets)."""
    flags = (0x80 if ra.managed else 0) | (0x40 if ra.other else 0)
    out = struct.pack(
        "!BBHBBHII",
        ICMP6_RA,
        0,
        0,
        ra.cur_hop_limit,
        flags,
        ra.router_lifetime,
        ra.reachable_time,
        ra.retrans_timer,
    )
    if ra.source_mac is not None:
        out += _pad8(mac_bytes(ra.source_mac), OPT_SLLA)
    if ra.mtu is not None:
        out += struct.pack("!BBHI", OPT_MTU, 1, 0, ra.mtu)
    for p in ra.prefixes:
        pflags = (0x80 if p.on_link else 0) | (0x40 if p.autonomous else 0)
        out += struct.pack(
            "!BBBBIII16s",
            OPT_PREFIX,
            4,
            p.prefix.prefixlen,
            pflags,
            p.valid,
            p.preferred,
            0,
            p.prefix.network_address.packed,
        )
    if ra.rdnss:
        body = struct.pack("!HI", 0, ra.rdnss_lifetime) + b"".join(a.packed for a in ra.rdnss)
        out += bytes([OPT_RDNSS, 1 + 2 * len(ra.rdnss)]) + body
    if ra.dnssl:
        body = struct.pack("!HI", 0, ra.dnssl_lifetime) + encode_domain_list(ra.dnssl)
        out += _pad8(body, OPT_DNSSL)
    return out


def _options(data: bytes, start: int) -> list[tuple[int, bytes]]:
    opts: list[tuple[int, bytes]] = []
    pos = start
    while pos < len(data):
        if len(data) - pos < 2:
            raise MalformedPacket(f"truncated ND option header at offset {pos}")
        opt_type, units = data[pos], data[pos + 1]
        if units == 0:
            raise MalformedPacket(f"ND option {opt_type} at offset {pos} has length 0")
        end = pos + units * 8
        if end > len(data):
            raise MalformedPacket(f"ND option {opt_type} at offset {pos} runs past the end")
        opts.append((opt_type, data[pos + 2 : end]))
        pos = end
    return opts


def parse_rs(data: bytes) -> RouterSolicit:
    """Decode an ICMPv6 Router Solicitation (from its ICMPv6 header on)."""
    data = bytes(data)
    if len(data) < 8:
        raise MalformedPacket(f"router solicitation of {len(data)} bytes is shorter than 8")
    if data[0] != ICMP6_RS or data[1] != 0:
        raise MalformedPacket(f"ICMPv6 type {data[0]} code {data[1]} is not a solicitation")
    mac = None
    for opt_type, body in _options(data, 8):
        if opt_type == OPT_SLLA and len(body) >= 6:
            mac = _mac_str(body[:6])
    return RouterSolicit(mac)


def parse_ra(data: bytes) -> RouterAdvert:
    """Decode an ICMPv6 Router Advertisement (from its ICMPv6 header on)."""
    data = bytes(data)
    if len(data) < 16:
        raise MalformedPacket(f"router advertisement of {len(data)} bytes is shorter than 16")
    if data[0] != ICMP6_RA or data[1] != 0:
        raise MalformedPacket(f"ICMPv6 type {data[0]} code {data[1]} is not an advertisement")
    _t, _c, _ck, hop, flags, lifetime, reach, retrans = struct.unpack_from("!BBHBBHII", data)
    mac: str | None = None
    mtu: int | None = None
    prefixes: list[PrefixInfo] = []
    rdnss: list[ipaddress.IPv6Address] = []
    rdnss_life = 0
    dnssl: list[str] = []
    dnssl_life = 0
    for opt_type, body in _options(data, 16):
        if opt_type == OPT_SLLA and len(body) >= 6:
            mac = _mac_str(body[:6])
        elif opt_type == OPT_MTU:
            (mtu,) = struct.unpack_from("!I", body, 2)
        elif opt_type == OPT_PREFIX:
            if len(body) != 30:
                raise MalformedPacket(f"prefix option of {len(body) + 2} bytes is not 32")
            plen, pflags, valid, pref = struct.unpack_from("!BBII", body)
            if plen > 128:
                raise MalformedPacket(f"prefix length {plen} exceeds 128")
            net = ipaddress.IPv6Network((body[14:30], plen), strict=False)
            prefixes.append(PrefixInfo(net, bool(pflags & 0x80), bool(pflags & 0x40), valid, pref))
        elif opt_type == OPT_RDNSS:
            if len(body) < 22 or (len(body) - 6) % 16:
                raise MalformedPacket(f"RDNSS option of {len(body) + 2} bytes is malformed")
            (rdnss_life,) = struct.unpack_from("!I", body, 2)
            rdnss += [ipaddress.IPv6Address(body[i : i + 16]) for i in range(6, len(body), 16)]
        elif opt_type == OPT_DNSSL:
            if len(body) < 14:
                raise MalformedPacket(f"DNSSL option of {len(body) + 2} bytes is too short")
            (dnssl_life,) = struct.unpack_from("!I", body, 2)
            dnssl += decode_domain_list(body[6:])
    return RouterAdvert(
        managed=bool(flags & 0x80),
        other=bool(flags & 0x40),
        router_lifetime=lifetime,
        cur_hop_limit=hop,
        reachable_time=reach,
        retrans_timer=retrans,
        source_mac=mac,
        mtu=mtu,
        prefixes=tuple(prefixes),
        rdnss=tuple(rdnss),
        rdnss_lifetime=rdnss_life,
        dnssl=tuple(dnssl),
        dnssl_lifetime=dnssl_life,
    )


def build_advert(cfg: RaConfig, source_mac: str | None, *, final: bool = False) -> RouterAdvert:
    """The advert this config describes (router lifetime 0 when ``final``)."""
    dns_life = max(int(cfg.interval * 3), 3 * 200) if not final else 0
    return RouterAdvert(
        managed=cfg.managed,
        other=cfg.other,
        router_lifetime=0 if final else cfg.router_lifetime,
        source_mac=source_mac,
        mtu=cfg.mtu,
        prefixes=tuple(
            PrefixInfo(p, True, cfg.autonomous, cfg.prefix_valid, cfg.prefix_preferred)
            for p in cfg.prefixes
        ),
        rdnss=cfg.rdnss,
        rdnss_lifetime=dns_life,
        dnssl=cfg.dnssl,
        dnssl_lifetime=dns_life,
    )


@dataclass(slots=True)
class RaCounters:
    """Mutable counters; :meth:`snapshot` gives a frozen copy for the status endpoint."""

    solicits: int = 0
    adverts: int = 0
    malformed: int = 0
    rate_limited: int = 0
    ignored: int = 0
    last_advert: float = 0.0
    last_solicit: float = 0.0
    last_solicit_mac: str | None = None

    def snapshot(self) -> RaSnapshot:
        return RaSnapshot(
            self.solicits,
            self.adverts,
            self.malformed,
            self.rate_limited,
            self.ignored,
            self.last_advert,
            self.last_solicit,
            self.last_solicit_mac,
        )


@dataclass(frozen=True, slots=True)
class RaSnapshot:
    """Counters at one instant."""

    solicits: int
    adverts: int
    malformed: int
    rate_limited: int
    ignored: int
    last_advert: float
    last_solicit: float = 0.0  # wall time of the last RS answered (0: none yet)
    last_solicit_mac: str | None = None  # its source link-layer address, when it had one


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until ``sock`` has data (recvmsg has no asyncio equivalent)."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


def _hop_limit(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(data) >= 4:
            return int(struct.unpack("@i", data[:4])[0])
    return None


def link_facts(ifname: str) -> tuple[int, str, ipaddress.IPv6Address | None]:
    """(ifindex, MAC, first link-local address or None) read from /sys and /proc."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError as err:
        raise ServerError(f"interface {ifname!r} does not exist") from err
    with open(f"/sys/class/net/{ifname}/address", encoding="ascii") as f:
        mac = f.read().strip()
    ll = None
    with open("/proc/net/if_inet6", encoding="ascii") as f:
        for line in f:
            hexaddr, _idx, _plen, scope, _flags, name = line.split()
            if name == ifname and scope == "20":
                ll = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
                break
    return index, mac, ll


@dataclass(slots=True)
class RaServer(Server):
    """Sends router advertisements on one interface until closed."""

    config: RaConfig
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate=2.0, burst=4))
    counters: RaCounters = field(default_factory=RaCounters)
    link_local_timeout: float = 5.0
    opener: SocketOpener = open_local  # makes the raw ICMPv6 socket (dhcp.sockets)
    _sock: socket.socket | None = None
    _index: int = 0
    _mac: str | None = None
    _last_multicast: float = 0.0

    async def open(self) -> None:
        """Create the socket; waits (bounded) for the link-local address to leave DAD."""
        if self._sock is not None:
            return
        ifname = self.config.interface
        deadline = time.monotonic() + self.link_local_timeout
        while True:
            index, mac, ll = link_facts(ifname)
            if ll is not None:
                try:
                    sock = await self.opener(SocketRequest("icmp6"))
                except PermissionError as err:
                    raise ServerError(
                        f"router advertisements on {ifname!r} need CAP_NET_RAW: {err}"
                    ) from err
                try:
                    self._setup(sock, ifname, index, ll)
                except OSError as err:
                    sock.close()
                    if time.monotonic() > deadline:
                        raise ServerError(f"cannot send RAs from {ll}%{ifname}: {err}") from err
                else:
                    break
            elif time.monotonic() > deadline:
                raise ServerError(f"interface {ifname!r} has no IPv6 link-local address")
            await asyncio.sleep(0.1)
        self._sock, self._index, self._mac = sock, index, mac
        log.info("router advertisements on %s from %s", ifname, ll)

    def _setup(
        self, sock: socket.socket, ifname: str, index: int, ll: ipaddress.IPv6Address
    ) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, ifname.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        # ICMP6_FILTER: block everything but Router Solicitations.
        blocked = [0xFFFFFFFF] * 8
        blocked[ICMP6_RS >> 5] &= ~(1 << (ICMP6_RS & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *blocked))
        mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_JOIN_GROUP, mreq)
        sock.bind((str(ll), 0, 0, index))

    def snapshot(self) -> RaSnapshot:
        return self.counters.snapshot()

    def _send(self, dest: str, *, final: bool = False) -> None:
        assert self._sock is not None
        ra = build_advert(self.config, self._mac, final=final)
        try:
            self._sock.sendto(encode_ra(ra), (dest, 0, 0, self._index))
        except OSError as err:
            log.warning("RA to %s on %s failed: %s", dest, self.config.interface, err)
            return
        self.counters.adverts += 1
        self.counters.last_advert = time.time()
        log.debug("--> RA to %s on %s lifetime %d", dest, self.config.interface, ra.router_lifetime)

    async def serve(self) -> None:
        """Advertise periodically and answer solicitations until cancelled."""
        if self._sock is None:
            raise ServerError(f"router advertisements on {self.config.interface!r}: not open")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._periodic(), name=f"ra-periodic-{self.config.interface}")
            tg.create_task(self._answer(), name=f"ra-solicit-{self.config.interface}")

    async def _periodic(self) -> None:
        sent = 0
        while True:
            self._send(ALL_NODES)
            sent += 1
            delay = (
                self.config.initial_interval
                if sent < self.config.initial_count
                else self.config.interval
            )
            await asyncio.sleep(min(delay, self.config.interval))

    async def _answer(self) -> None:
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            await _readable(loop, sock)
            for _ in range(64):
                try:
                    data, anc, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(4))
                except BlockingIOError:
                    break
                self.solicitation(data, addr[0].split("%")[0], _hop_limit(anc))

    def solicitation(self, data: bytes, src: str, hop_limit: int | None) -> None:
        """Answer one received Router Solicitation (RFC 4861 6.1.1 and 6.2.6)."""
        if hop_limit is not None and hop_limit != 255:
            # Not from this link: a router must ignore it.
            self.counters.ignored += 1
            log.debug("dropped RS from %s with hop limit %d", src, hop_limit)
            return
        try:
            rs = parse_rs(data)
        except MalformedPacket as err:
            self.counters.malformed += 1
            log.debug("dropped RS from %s: %s", src, err)
            return
        if src == "::" and rs.source_mac is not None:
            self.counters.malformed += 1
            return
        if not self.limiter.allow(rs.source_mac or src):
            self.counters.rate_limited += 1
            return
        self.counters.solicits += 1
        self.counters.last_solicit = time.time()
        self.counters.last_solicit_mac = rs.source_mac
        log.debug("<-- RS from %s (%s)", src, rs.source_mac)
        # Answers are multicast at most every 3 s; a solicitation from a known source
        # address with its link-layer address may be answered by unicast.
        if src != "::" and rs.source_mac is not None:
            self._send(src)
        elif time.monotonic() - self._last_multicast >= 3.0:
            self._last_multicast = time.monotonic()
            self._send(ALL_NODES)

    async def close(self, *, final: bool = True) -> None:
        """Send the goodbye advert (router lifetime 0) unless told not to, then close."""
        if self._sock is None:
            return
        if final:
            with contextlib.suppress(OSError):
                self._send(ALL_NODES, final=True)
        self._sock.close()
        self._sock = None
