"""The asyncio DHCPv4 server for one guest-facing interface: sockets, counters, events.

:class:`Dhcp4Server` is created by the launcher (one per guest-facing interface, from
the network plan) and by ``python -m dhcp serve``. Use ``async with``, or ``start()`` /
``close()``, or ``run()`` as a task in a ``TaskGroup``; ``snapshot()`` returns typed
counters and the recent events for the status endpoint. Decisions live in
``dhcp.v4.logic``; this module only moves bytes.

Sockets:

* one UDP socket on ``0.0.0.0:67`` with ``SO_BINDTODEVICE`` (so only the guest's
  interface is served — a request arriving on any other interface never reaches it),
  ``SO_BROADCAST`` and ``SO_REUSEADDR`` (several servers, one per interface). Replies to
  the broadcast address and to a relay go out through it with ``IP_PKTINFO``
  naming the server address as the source, so the source is the link-local server
  address even when the interface carries others.
* one ``AF_PACKET``/``SOCK_DGRAM`` socket for the RFC 2131 4.1 case "no ciaddr, no
  broadcast flag: unicast to yiaddr at chaddr". The client has no address yet and
  cannot answer ARP, so the reply is sent as an IPv4/UDP datagram built here and
  addressed to the link-layer chaddr directly. This was chosen over adding a neighbour
  entry for yiaddr: it needs no netlink write, leaves no state behind in the pod's
  neighbour table, and cannot race with the kernel's own ARP resolution. Replies to
  ciaddr (renewals, INFORM) go the same way, to ciaddr at chaddr: the pod namespace
  has no route to the guest's address (it was moved to the guest), so a routed UDP
  send would fail with "network unreachable".

A client flooding requests is limited per chaddr (``dhcp.ratelimit``) before parsing;
malformed datagrams are counted and dropped; nothing a client sends raises out of the
server.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address

from dhcp.errors import MalformedPacket, ServerError
from dhcp.lifecycle import Server
from dhcp.ratelimit import RateLimiter
from dhcp.sockets import SocketOpener, SocketRequest, open_local
from dhcp.v4.codec import parse
from dhcp.v4.config import Dhcp4Config
from dhcp.v4.logic import NO_LEASE, Decision, Destination, DestKind, Responder

__all__ = ["Dhcp4Server", "Dhcp4Snapshot", "Dhcp4Counters", "Dhcp4Event"]

log = logging.getLogger(__name__)

_ETH_P_IP = 0x0800
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; typeshed lacks it
_RCVBUF = 1 << 20  # absorbs bursts (a subnet of guests booting at once) without drops
_BATCH = 64  # datagrams read per wake-up before yielding to the loop


@dataclass(frozen=True, slots=True)
class Dhcp4Event:
    """One recorded exchange: wall-clock time, kind, client MAC, address, transaction id."""

    time: float
    kind: str  # offer ack nak inform decline release
    mac: str
    address: str | None
    xid: int
    reason: str


@dataclass(frozen=True, slots=True)
class Dhcp4Counters:
    """Monotonic per-server counters since start."""

    received: int = 0
    malformed: int = 0
    rate_limited: int = 0
    ignored: int = 0
    offers: int = 0
    acks: int = 0
    naks: int = 0
    informs: int = 0
    declines: int = 0
    releases: int = 0
    send_errors: int = 0


@dataclass(frozen=True, slots=True)
class Dhcp4Snapshot:
    """What the status endpoint reports for one interface's DHCPv4 server."""

    interface: str
    server_address: str
    running: bool
    counters: Dhcp4Counters
    events: tuple[Dhcp4Event, ...]
    #: Client MACs that asked although no lease is for them (the guest uses another MAC
    #: than planned?), as (mac, requests, wall time of the last), at most ``_STRANGERS``.
    strangers: tuple[tuple[str, int, float], ...] = ()


_STRANGERS = 8
_LEVELS = {"offer": logging.DEBUG, "inform": logging.DEBUG, "decline": logging.WARNING}
_EVENT_COUNTER = {
    "offer": "offers",
    "ack": "acks",
    "nak": "naks",
    "inform": "informs",
    "decline": "declines",
    "release": "releases",
    "ignored": "ignored",
}


class Dhcp4Server(Server):
    """DHCPv4 server bound to ``config.interface``; see the module docstring."""

    def __init__(self, config: Dhcp4Config, *, opener: SocketOpener = open_local) -> None:
        self.config = config
        self._opener = opener  # makes the privileged sockets (dhcp.sockets)
        self.responder = Responder(config)
        self._limiter = RateLimiter(rate=config.rate, burst=config.burst)
        self._counts: dict[str, int] = {f.name: 0 for f in dataclasses.fields(Dhcp4Counters)}
        self._events: collections.deque[Dhcp4Event] = collections.deque(maxlen=config.max_events)
        self._strangers: dict[str, tuple[int, float]] = {}
        self._udp: socket.socket | None = None
        self._raw: socket.socket | None = None
        self._ifindex = 0
        self._pktinfo = b""
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Open and bind the sockets; ServerError if the interface cannot be served."""
        if self._udp is not None:
            return
        iface = self.config.interface
        try:
            self._ifindex = socket.if_nametoindex(iface)
        except OSError as err:
            raise ServerError(f"interface {iface!r} does not exist") from err
        udp: socket.socket | None = None
        try:
            # Bound to the port on the interface (SO_REUSEADDR, SO_BINDTODEVICE) by the opener.
            udp = await self._opener(SocketRequest("udp4", iface, self.config.port))
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            udp.setblocking(False)
            # Protocol 0: the packet socket only sends (the protocol is named per sendto),
            # so the kernel never clones incoming frames into it.
            raw = await self._opener(SocketRequest("packet"))
            raw.setblocking(False)
        except OSError as err:
            if udp is not None:
                udp.close()
            raise ServerError(
                f"cannot bind DHCPv4 on {iface!r} port {self.config.port}: {err.strerror}"
            ) from err
        self._udp, self._raw = udp, raw
        # struct in_pktinfo: ifindex, source address to use, (unused) destination.
        self._pktinfo = struct.pack(
            "@I4s4s", self._ifindex, self.config.server_address.packed, bytes(4)
        )
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(udp.fileno(), self._on_readable)
        log.info(
            "DHCPv4 server listening",
            extra={
                "iface": iface,
                "server_address": str(self.config.server_address),
                "leases": len(self.config.leases),
            },
        )

    async def close(self) -> None:
        """Stop serving and close the sockets (idempotent)."""
        if self._udp is not None and self._loop is not None:
            self._loop.remove_reader(self._udp.fileno())
        for sock in (self._udp, self._raw):
            if sock is not None:
                sock.close()
        if self._udp is not None:
            log.info("DHCPv4 server stopped", extra={"iface": self.config.interface})
        self._udp = self._raw = None

    async def serve(self) -> None:
        """Answer clients until cancelled (the socket's reader callback does the work)."""
        if self._udp is None:
            raise ServerError(f"DHCPv4 server on {self.config.interface!r} is not open")
        await asyncio.get_running_loop().create_future()

    def snapshot(self) -> Dhcp4Snapshot:
        """Counters and the most recent events (at most ``config.max_events``)."""
        return Dhcp4Snapshot(
            interface=self.config.interface,
            server_address=str(self.config.server_address),
            running=self._udp is not None,
            counters=Dhcp4Counters(**self._counts),
            events=tuple(self._events),
            strangers=tuple((mac, n, t) for mac, (n, t) in self._strangers.items()),
        )

    # ------------------------------------------------------------- datagrams

    def _on_readable(self) -> None:
        udp = self._udp
        if udp is None:
            return
        for _ in range(_BATCH):
            try:
                data, _peer = udp.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.warning("DHCPv4 receive failed", extra={"error": str(err)})
                return
            self.handle(data)

    def handle(self, data: bytes) -> Decision | None:
        """Process one datagram: rate-limit, parse, decide, send, record."""
        counts = self._counts
        counts["received"] += 1
        if len(data) < 34:
            counts["malformed"] += 1
            return None
        if not self._limiter.allow(data[28:34]):
            counts["rate_limited"] += 1
            return None
        try:
            msg = parse(data)
        except MalformedPacket as err:
            counts["malformed"] += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dropped malformed DHCPv4 packet", extra={"error": str(err)})
            return None
        decision = self.responder.decide(msg)
        counts[_EVENT_COUNTER[decision.event]] += 1
        if decision.reply is not None and decision.destination is not None:
            self._send(decision.reply.build(), decision.destination)  # reply first, then record
        mac = msg.chaddr.hex(":")
        if decision.event == "ignored":
            if decision.reason.startswith(NO_LEASE):
                self._stranger(mac)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("<-- ignored", extra={"mac": mac, "reason": decision.reason})
            return decision
        self._events.append(
            Dhcp4Event(
                time=time.time(),
                kind=decision.event,
                mac=mac,
                address=str(decision.address) if decision.address is not None else None,
                xid=msg.xid,
                reason=decision.reason,
            )
        )
        # A DECLINE means something answered ARP for the guest's address (check arp_ignore
        # on the pod side): worth a warning. Offers and informs are routine traffic.
        level = _LEVELS.get(decision.event, logging.INFO)
        if log.isEnabledFor(level):
            log.log(
                level,
                f"--> {decision.event}",
                extra={
                    "mac": mac,
                    "address": None if decision.address is None else str(decision.address),
                    "reason": decision.reason,
                },
            )
        return decision

    def _stranger(self, mac: str) -> None:
        """Count a request from ``mac``, which no lease is for (bounded: the newest
        ``_STRANGERS`` MACs are kept, a flood of random MACs costs nothing more)."""
        count, _ = self._strangers.pop(mac, (0, 0.0))
        self._strangers[mac] = (count + 1, time.time())
        while len(self._strangers) > _STRANGERS:
            del self._strangers[next(iter(self._strangers))]

    def _send(self, payload: bytes, dest: Destination) -> None:
        try:
            if dest.kind in (DestKind.CHADDR, DestKind.CIADDR):
                assert self._raw is not None
                frame = _ipv4_udp(self.config.server_address, dest.address, 67, dest.port, payload)
                self._raw.sendto(frame, (self.config.interface, _ETH_P_IP, 0, 0, dest.mac))
            else:
                assert self._udp is not None
                self._udp.sendmsg(
                    [payload],
                    [(socket.IPPROTO_IP, _IP_PKTINFO, self._pktinfo)],
                    0,
                    (str(dest.address), dest.port),
                )
        except OSError as err:
            self._counts["send_errors"] += 1
            log.warning(
                "DHCPv4 reply could not be sent",
                extra={"destination": str(dest.address), "error": str(err)},
            )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_udp(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 header + UDP header (both with checksums) + payload."""
    udp_len = 8 + len(payload)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp_head = struct.pack("!HHHH", sport, dport, udp_len, 0)
    csum = _checksum(pseudo + udp_head + payload) or 0xFFFF
    udp_head = struct.pack("!HHHH", sport, dport, udp_len, csum)
    ip_head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0x10,  # low-delay TOS, as ISC dhcpd and dnsmasq send
        20 + udp_len,
        0,
        0x4000,  # don't fragment
        64,
        socket.IPPROTO_UDP,
        0,
        src.packed,
        dst.packed,
    )
    ip_head = ip_head[:10] + struct.pack("!H", _checksum(ip_head)) + ip_head[12:]
    return ip_head + udp_head + payload
