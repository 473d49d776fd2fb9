"""DHCPv6 server (RFC 8415) for one guest-facing interface with static leases.

The launcher (and ``python -m dhcp serve --lease6``) runs one :class:`Dhcp6Server`
per guest NIC inside its TaskGroup. :meth:`Dhcp6Server.handle` is the pure protocol
core (bytes in, bytes out) that the component tests drive directly; :meth:`serve`
does the socket I/O.

Identifying the guest. A lease is keyed by the guest's MAC, but DHCPv6 clients
identify themselves by a DUID that often carries no MAC (DUID-EN, DUID-UUID, or a
DUID-LLT made from another NIC). The server matches, in order: an exact DUID lease;
the Client Link-Layer Address option (RFC 6939, normally relay-only but honoured);
the MAC inside a DUID-LL/LLT; and the Ethernet source address of the frame. The last
one needs the L2 header, which a UDP socket never sees (IPV6_PKTINFO gives only the
IPv6 addresses and the interface; the neighbour table has no entry for a client
that has not been answered yet; an EUI-64 link-local is not reliable because of
privacy/stable-privacy addresses). So packets are *received* on an AF_PACKET
SOCK_DGRAM socket bound to the interface with a classic BPF filter that passes only
IPv6/UDP to port 547 (the guest's data traffic never reaches Python), and the
sockaddr_ll gives the source MAC. Answers are *sent* from an ordinary UDP socket
bound to [::]:547 on that device (SO_BINDTODEVICE), which is also joined to
ff02::1:2 and carries a BPF filter that accepts nothing, so the kernel does not
queue a second copy of each message. Without CAP_NET_RAW
the server falls back to receiving on the UDP socket and matches by DUID only.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from dhcp.errors import MalformedPacket, ServerError
from dhcp.lifecycle import Server
from dhcp.ratelimit import RateLimiter
from dhcp.sockets import SocketOpener, SocketRequest, open_local
from dhcp.v6.codec import (
    ALL_SERVERS,
    IANA,
    SERVER_PORT,
    IAAddr,
    Message,
    MsgType,
    Opt,
    Status,
    decode,
    duid_mac,
    encode,
    encode_domain_list,
    encode_ia_na,
    linklayer_mac,
)
from dhcp.v6.lease import Config6, Lease6, server_duid

__all__ = ["Dhcp6Server", "Packet6", "Dhcp6Snapshot", "Event6", "parse_ipv6_udp"]

log = logging.getLogger(__name__)

_ETH_P_IPV6 = 0x86DD
_SO_BINDTODEVICE = 25
_SO_ATTACH_FILTER = 26
_IPV6_JOIN_GROUP = 20
_PACKET_OUTGOING = 4
# Classic BPF on a SOCK_DGRAM packet socket (offset 0 is the IPv6 header):
# next header == UDP and UDP destination port == 547, else drop.
_BPF = (
    (0x30, 0, 0, 6),  # ldb [6]
    (0x15, 0, 3, 17),  # jeq #17
    (0x28, 0, 0, 42),  # ldh [42]
    (0x15, 0, 1, SERVER_PORT),  # jeq #547
    (0x06, 0, 0, 0x40000),  # ret #262144
    (0x06, 0, 0, 0),  # ret #0
)

_TO_SERVER = frozenset({MsgType.REQUEST, MsgType.RENEW, MsgType.RELEASE, MsgType.DECLINE})
_NO_SERVER_ID = frozenset({MsgType.SOLICIT, MsgType.CONFIRM, MsgType.REBIND})
_COUNTED = {
    MsgType.SOLICIT: "solicits",
    MsgType.REQUEST: "requests",
    MsgType.CONFIRM: "confirms",
    MsgType.RENEW: "renews",
    MsgType.REBIND: "rebinds",
    MsgType.RELEASE: "releases",
    MsgType.DECLINE: "declines",
    MsgType.INFORMATION_REQUEST: "information_requests",
}


@dataclass(frozen=True, slots=True)
class Packet6:
    """One received UDP datagram with what the link told us about it."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    sport: int
    payload: bytes
    src_mac: str | None = None


@dataclass(frozen=True, slots=True)
class Event6:
    """Something the status endpoint may show (bounded list, newest last)."""

    at: float
    kind: str
    mac: str | None
    duid: str
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Dhcp6Snapshot:
    """Counters and recent events at one instant."""

    interface: str
    server_duid: str
    counters: dict[str, int]
    events: tuple[Event6, ...]


def parse_ipv6_udp(data: bytes) -> Packet6:
    """Decode an IPv6 header + UDP header (no extension headers) around a DHCPv6 payload."""
    if len(data) < 48:
        raise MalformedPacket(f"IPv6/UDP packet of {len(data)} bytes is shorter than 48")
    if data[0] >> 4 != 6 or data[6] != socket.IPPROTO_UDP:
        raise MalformedPacket(f"packet is not IPv6/UDP (first byte {data[0]:#x})")
    sport, _dport, ulen = struct.unpack_from("!HHH", data, 40)
    if ulen < 8 or 40 + ulen > len(data):
        raise MalformedPacket(f"UDP length {ulen} does not fit a packet of {len(data)} bytes")
    return Packet6(
        ipaddress.IPv6Address(data[8:24]),
        ipaddress.IPv6Address(data[24:40]),
        sport,
        bytes(data[48 : 40 + ulen]),
    )


@dataclass(slots=True)
class Dhcp6Server(Server):
    """Serves :class:`Config6` on its interface; ``handle`` is usable without sockets.

    ``duid_file``: where the server DUID is kept when it cannot be derived from a stable
    MAC (see :func:`dhcp.v6.lease.server_duid`); a runtime resource, not configuration.
    """

    config: Config6
    mac: str | None = None
    duid_file: Path | None = None
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(rate=10.0, burst=20))
    max_events: int = 256
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    events: collections.deque[Event6] = field(init=False)
    duid: bytes = b""
    opener: SocketOpener = open_local  # makes the privileged sockets (dhcp.sockets)
    _rx: socket.socket | None = None
    _tx: socket.socket | None = None
    _index: int = 0
    _dns_opts: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        self.events = collections.deque(maxlen=self.max_events)
        if self.config.server_duid is not None:
            self.duid = self.config.server_duid
        elif self.mac is not None:
            self.duid = server_duid(self.mac, self.duid_file)
        opts: list[tuple[int, bytes]] = []
        if self.config.dns:
            opts.append((Opt.DNS_SERVERS, b"".join(a.packed for a in self.config.dns)))
        if self.config.search:
            opts.append((Opt.DOMAIN_LIST, encode_domain_list(self.config.search)))
        self._dns_opts = tuple(opts)

    # ------------------------------------------------------------------ protocol core

    def snapshot(self) -> Dhcp6Snapshot:
        """A frozen copy of the counters and recent events."""
        return Dhcp6Snapshot(
            self.config.interface, self.duid.hex(), dict(self.counters), tuple(self.events)
        )

    def handle(self, pkt: Packet6) -> bytes | None:
        """The answer to one client datagram, or None to stay silent."""
        self.counters["received"] += 1
        if not self.limiter.allow(pkt.src_mac or str(pkt.src)):
            self.counters["rate_limited"] += 1
            return None
        try:
            msg = decode(pkt.payload)
        except MalformedPacket as err:
            self.counters["malformed"] += 1
            log.debug("dropped malformed DHCPv6 from %s: %s", pkt.src, err)
            return None
        answer = self._respond(msg, pkt)
        if answer is None:
            return None
        kind = "advertises" if answer.msg_type == MsgType.ADVERTISE else "replies"
        self.counters[kind] += 1
        return encode(answer)

    def _event(self, kind: str, mac: str | None, duid: bytes, addr: object = None) -> None:
        self.events.append(
            Event6(time.time(), kind, mac, duid.hex(), None if addr is None else str(addr))
        )

    def match(self, msg: Message, pkt: Packet6) -> tuple[Lease6 | None, str | None]:
        """The client's lease and the MAC it was matched by (see the module docstring)."""
        duid = msg.get(Opt.CLIENTID) or b""
        for lease in self.config.leases:
            if lease.duid is not None and lease.duid == duid:
                return lease, duid_mac(duid)
        lla = msg.get(Opt.CLIENT_LINKLAYER_ADDR)
        candidates = (
            linklayer_mac(lla) if lla is not None else None,
            duid_mac(duid),
            pkt.src_mac,
        )
        for mac in candidates:
            if mac is None:
                continue
            for lease in self.config.leases:
                if lease.mac == mac:
                    return lease, mac
        return None, pkt.src_mac

    def _respond(self, msg: Message, pkt: Packet6) -> Message | None:
        t = msg.msg_type
        counter = _COUNTED.get(t)  # type: ignore[call-overload]
        if counter is None:
            self.counters["ignored"] += 1
            return None
        self.counters[counter] += 1
        client_id = msg.get(Opt.CLIENTID)
        server_id = msg.get(Opt.SERVERID)
        if t in _NO_SERVER_ID and (server_id is not None or client_id is None):
            self.counters["ignored"] += 1
            return None
        if t in _TO_SERVER and (client_id is None or server_id != self.duid):
            self.counters["ignored"] += 1
            return None
        if t == MsgType.INFORMATION_REQUEST and (
            server_id not in (None, self.duid) or msg.get(Opt.IA_NA) is not None
        ):
            self.counters["ignored"] += 1
            return None
        base: list[tuple[int, bytes]] = []
        if client_id is not None:
            base.append((Opt.CLIENTID, client_id))
        base.append((Opt.SERVERID, self.duid))
        if not pkt.dst.is_multicast:
            if t in _TO_SERVER:
                return Message(
                    MsgType.REPLY, msg.xid, (*base, _status(Status.USE_MULTICAST, "use ff02::1:2"))
                )
            self.counters["ignored"] += 1
            return None
        lease, mac = self.match(msg, pkt)
        duid = client_id or b""
        if t == MsgType.INFORMATION_REQUEST:
            return Message(MsgType.REPLY, msg.xid, (*base, *self._dns_opts))
        if t == MsgType.SOLICIT:
            return self._solicit(msg, base, lease, mac, duid)
        if t == MsgType.REQUEST:
            ias = self._assign(msg.ia_nas(), lease, missing=Status.NO_ADDRS_AVAIL)
            self._event("bound" if lease else "no-addrs", mac, duid, _addr(lease))
            return Message(MsgType.REPLY, msg.xid, (*base, *ias, *self._dns_opts))
        if t in (MsgType.RENEW, MsgType.REBIND):
            ias = self._assign(msg.ia_nas(), lease, missing=Status.NO_BINDING)
            self._event("renewed" if lease else "no-binding", mac, duid, _addr(lease))
            return Message(MsgType.REPLY, msg.xid, (*base, *ias, *self._dns_opts))
        if t == MsgType.CONFIRM:
            addrs = [a.address for ia in msg.ia_nas() for a in ia.addresses]
            if not addrs:
                return None
            # RFC 8415 18.3.3: "appropriate for the link". This link carries one guest and
            # its one address: for a known guest anything else is NotOnLink, so a guest
            # holding its address from before a pod address change solicits again (link
            # refresh, docs/network.md) instead of keeping it until its T1.
            if lease is not None:
                on_link = all(a == lease.address.ip for a in addrs)
            else:
                nets = [le.address.network for le in self.config.leases]
                on_link = all(any(a in n for n in nets) for a in addrs)
            code = Status.SUCCESS if on_link else Status.NOT_ON_LINK
            self._event("confirmed" if on_link else "not-on-link", mac, duid, addrs[0])
            return Message(MsgType.REPLY, msg.xid, (*base, _status(code, code.name)))
        if t == MsgType.RELEASE:
            out = self._released(msg.ia_nas(), lease)
            self._event("released", mac, duid, _addr(lease))
            return Message(MsgType.REPLY, msg.xid, (*base, *out, _status(Status.SUCCESS)))
        # DECLINE: the guest found the address in use; record it, acknowledge it.
        for ia in msg.ia_nas():
            for a in ia.addresses:
                self._event("declined", mac, duid, a.address)
                log.warning("guest %s declined %s on %s", mac, a.address, self.config.interface)
        return Message(MsgType.REPLY, msg.xid, (*base, _status(Status.SUCCESS)))

    def _solicit(
        self,
        msg: Message,
        base: list[tuple[int, bytes]],
        lease: Lease6 | None,
        mac: str | None,
        duid: bytes,
    ) -> Message:
        ias = msg.ia_nas()
        if lease is None or not ias:
            self._event("no-addrs", mac, duid)
            return Message(
                MsgType.ADVERTISE,
                msg.xid,
                (*base, _status(Status.NO_ADDRS_AVAIL, "no address for this client")),
            )
        out = self._assign(ias, lease, missing=Status.NO_ADDRS_AVAIL)
        rapid = self.config.rapid_commit and msg.get(Opt.RAPID_COMMIT) is not None
        if rapid:
            self._event("bound", mac, duid, lease.address.ip)
            return Message(
                MsgType.REPLY, msg.xid, (*base, (Opt.RAPID_COMMIT, b""), *out, *self._dns_opts)
            )
        self._event("advertised", mac, duid, lease.address.ip)
        return Message(
            MsgType.ADVERTISE,
            msg.xid,
            (*base, (Opt.PREFERENCE, b"\xff"), *out, *self._dns_opts),
        )

    def _assign(
        self, ias: list[IANA], lease: Lease6 | None, *, missing: Status
    ) -> list[tuple[int, bytes]]:
        cfg = self.config
        out: list[tuple[int, bytes]] = []
        for n, ia in enumerate(ias):
            if lease is None or n > 0:
                reply = IANA(ia.iaid, 0, 0, (), (missing, missing.name))
            else:
                addrs = [IAAddr(lease.address.ip, cfg.preferred_lifetime, cfg.valid_lifetime)]
                # Addresses the client holds that are not its lease: lifetimes 0.
                addrs += [
                    IAAddr(a.address, 0, 0) for a in ia.addresses if a.address != lease.address.ip
                ]
                reply = IANA(ia.iaid, cfg.t1, cfg.t2, tuple(addrs))
            out.append(_raw(encode_ia_na(reply)))
        return out

    def _released(self, ias: list[IANA], lease: Lease6 | None) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for ia in ias:
            ours = lease is not None and any(a.address == lease.address.ip for a in ia.addresses)
            if not ours:
                no = IANA(ia.iaid, 0, 0, (), (Status.NO_BINDING, "NO_BINDING"))
                out.append(_raw(encode_ia_na(no)))
        return out

    # ------------------------------------------------------------------ socket I/O

    async def open(self) -> None:
        """Bind the sockets on the configured interface (idempotent)."""
        if self._tx is not None:
            return
        ifname = self.config.interface
        try:
            self._index = socket.if_nametoindex(ifname)
            iface_mac = _iface_mac(ifname)
        except OSError as err:
            raise ServerError(f"interface {ifname!r} does not exist") from err
        if not self.duid:
            self.mac = iface_mac
            self.duid = server_duid(iface_mac, self.duid_file)
        tx: socket.socket | None = None
        try:
            # Bound to [::]:547 on the interface (SO_REUSEADDR, SO_BINDTODEVICE) by the opener.
            tx = await self.opener(SocketRequest("udp6", ifname, SERVER_PORT))
            tx.setblocking(False)
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._index)
            mreq = socket.inet_pton(socket.AF_INET6, ALL_SERVERS) + struct.pack("@I", self._index)
            tx.setsockopt(socket.IPPROTO_IPV6, _IPV6_JOIN_GROUP, mreq)
        except OSError as err:
            if tx is not None:
                tx.close()
            raise ServerError(f"cannot bind DHCPv6 on [::]:547%{ifname}: {err}") from err
        self._tx = tx
        try:
            self._rx = _packet_socket(ifname, await self.opener(SocketRequest("packet")))
            # The UDP socket only sends now: a filter that accepts nothing keeps the
            # kernel from queueing a second copy of every client message for it.
            _attach_filter(tx, ((0x06, 0, 0, 0),))
        except PermissionError:
            log.warning("no CAP_NET_RAW: DHCPv6 on %s matches guests by DUID only", ifname)
            self._rx = None
        log.info("DHCPv6 on %s, server DUID %s", ifname, self.duid.hex())

    async def serve(self) -> None:
        """Answer clients until cancelled."""
        if self._tx is None:
            raise ServerError(f"DHCPv6 server on {self.config.interface!r} is not open")
        loop = asyncio.get_running_loop()
        if self._rx is None:
            await self._serve_udp(loop)
            return
        await self._serve_packet(loop)

    async def _serve_packet(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read every queued frame each time the socket is readable (fewer wakeups)."""
        rx = self._rx
        assert rx is not None
        fd = rx.fileno()
        failed: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                for _ in range(64):
                    data, addr = rx.recvfrom(4096)
                    if addr[2] != _PACKET_OUTGOING:
                        self._frame_guarded(data, addr[4])
            except BlockingIOError:
                return
            except OSError as err:
                if not failed.done():
                    failed.set_exception(
                        ServerError(f"DHCPv6 socket on {self.config.interface} failed: {err}")
                    )

        loop.add_reader(fd, readable)
        try:
            await failed
        finally:
            loop.remove_reader(fd)

    def _frame_guarded(self, data: bytes, lladdr: bytes) -> None:
        try:
            self._frame(data, lladdr)
        except Exception:
            # A bug in handling one packet must not stop the server for the guest.
            self.counters["errors"] += 1
            log.exception("DHCPv6 packet on %s could not be handled", self.config.interface)

    def _frame(self, data: bytes, lladdr: bytes) -> None:
        try:
            pkt = parse_ipv6_udp(data)
        except MalformedPacket as err:
            self.counters["malformed"] += 1
            log.debug("dropped frame: %s", err)
            return
        mac = ":".join(f"{b:02x}" for b in lladdr[:6])
        self._answer(Packet6(pkt.src, pkt.dst, pkt.sport, pkt.payload, mac))

    async def _serve_udp(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._tx is not None
        while True:
            data, addr = await loop.sock_recvfrom(self._tx, 4096)
            src = ipaddress.IPv6Address(addr[0].split("%")[0])
            self._answer(Packet6(src, ipaddress.IPv6Address(ALL_SERVERS), addr[1], data))

    def _answer(self, pkt: Packet6) -> None:
        assert self._tx is not None
        log.debug("<-- DHCPv6 %d bytes from %s (%s)", len(pkt.payload), pkt.src, pkt.src_mac)
        reply = self.handle(pkt)
        if reply is None:
            return
        try:
            self._tx.sendto(reply, (str(pkt.src), pkt.sport, 0, self._index))
        except OSError as err:
            self.counters["send_errors"] += 1
            log.warning("DHCPv6 answer to %s failed: %s", pkt.src, err)
            return
        log.debug("--> DHCPv6 %d bytes to %s", len(reply), pkt.src)

    async def close(self) -> None:
        """Close the sockets (idempotent)."""
        for s in (self._rx, self._tx):
            if s is not None:
                s.close()
        self._rx = self._tx = None


def _iface_mac(ifname: str) -> str:
    with open(f"/sys/class/net/{ifname}/address", encoding="ascii") as f:
        return f.read().strip()


def _attach_filter(sock: socket.socket, insns: tuple[tuple[int, int, int, int], ...]) -> None:
    """SO_ATTACH_FILTER with a classic BPF program (struct sock_fprog)."""
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    prog = struct.pack("HL", len(insns), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)


def _packet_socket(ifname: str, sock: socket.socket) -> socket.socket:
    """``sock`` (a fresh AF_PACKET socket) filtered and bound to ``ifname``'s IPv6 frames."""
    try:
        _attach_filter(sock, _BPF)
        sock.bind((ifname, _ETH_P_IPV6))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _status(code: Status, message: str = "") -> tuple[int, bytes]:
    return Opt.STATUS_CODE, struct.pack("!H", code) + message.encode()


def _raw(option: bytes) -> tuple[int, bytes]:
    (code,) = struct.unpack_from("!H", option)
    return code, option[4:]


def _addr(lease: Lease6 | None) -> ipaddress.IPv6Address | None:
    return None if lease is None else lease.address.ip
