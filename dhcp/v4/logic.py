"""The DHCPv4 server's decisions, without sockets: what to answer and where to send it.

:class:`Responder` takes a parsed request and returns a :class:`Decision` — the reply
message (or none), the event to record, and the :class:`Destination` (RFC 2131 section
4.1). ``dhcp.v4.server`` calls it for every datagram; the unit tests call it directly.

Answers: DISCOVER → OFFER; REQUEST → ACK or NAK in the selecting (54 + 50), init-reboot
(50 only), renewing and rebinding (ciaddr only) states — NAK for any address that is not
the client's lease, so a guest that kept a stale address is corrected; a REQUEST naming
another server identifier is ignored (the client chose that server). INFORM → ACK
without lease times. DECLINE and RELEASE are recorded. Unknown MACs, plain BOOTP,
non-Ethernet hardware and (unless allowed) relayed messages get no answer. The client
identifier (61) is echoed, but leases stay keyed on chaddr.

Options: 53, 54, 51, 58, 59, 1, 3 and an echoed 61 always; everything else the client
asked for in its parameter request list (55), in the client's order; every configured
option when there is no list (as dnsmasq and ISC dhcpd do). When the reply would exceed
the client's maximum message size (57, at least 576 bytes for the IP datagram),
optional options are dropped from the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from dhcp.errors import MalformedPacket
from dhcp.v4 import options as o
from dhcp.v4.codec import BOOTREPLY, BOOTREQUEST, FLAG_BROADCAST, Message, encoded_size
from dhcp.v4.config import Dhcp4Config, Lease4, classless_routes

__all__ = [
    "Responder",
    "Decision",
    "Destination",
    "DestKind",
    "MANDATORY",
    "NO_LEASE",
    "lease_options",
]

MANDATORY = (
    o.MESSAGE_TYPE,
    o.SERVER_ID,
    o.LEASE_TIME,
    o.RENEWAL_TIME,
    o.REBINDING_TIME,
    o.SUBNET_MASK,
    o.ROUTER,
    o.CLIENT_ID,
)
_ZERO = IPv4Address(0)
#: The start of an ``ignored`` decision's reason for a client MAC no lease is for.
NO_LEASE = "no lease for MAC"
_BROADCAST = IPv4Address("255.255.255.255")
_HEADER_SIZE = 240  # fixed fields + magic cookie
_IP_UDP = 28
_MIN_MAX_SIZE = 576


class DestKind(enum.Enum):
    """Where a reply goes (RFC 2131 section 4.1)."""

    RELAY = "relay"  # giaddr, port 67
    CIADDR = "ciaddr"  # unicast to the client's configured address at chaddr, port 68
    BROADCAST = "broadcast"  # 255.255.255.255, port 68
    CHADDR = "chaddr"  # unicast to yiaddr at chaddr, no ARP possible


@dataclass(frozen=True, slots=True)
class Destination:
    """Reply destination: kind, IP address, UDP port and (CHADDR, CIADDR) the client's MAC."""

    kind: DestKind
    address: IPv4Address
    port: int
    mac: bytes = b""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: ``event`` names what is recorded, ``reason`` why."""

    event: str  # offer ack nak inform decline release ignored
    reason: str
    reply: Message | None = None
    destination: Destination | None = None
    address: IPv4Address | None = None


class Responder:
    """Decides the answer to each request for one interface's configuration.

    Holds the only mutable state of the logic: pool allocations (benchmarking mode).
    """

    def __init__(self, config: Dhcp4Config) -> None:
        self.config = config
        self._static: dict[bytes, Lease4] = {lease.mac_bytes: lease for lease in config.leases}
        self._dynamic: dict[bytes, int] = {}
        self._next = 0
        self._sid = o.enc_ip(config.server_address)
        # Options depend on the lease's network and hostname, never on the address itself,
        # so one entry per (network, hostname, kind) serves every lease of a pool.
        self._cache: dict[tuple[IPv4Network, str | None, int, bool], list[tuple[int, bytes]]] = {}

    def lease_for(self, mac: bytes, allocate: bool) -> Lease4 | None:
        """The static lease of ``mac``, else its pool address (allocated on DISCOVER).

        Pool allocations are kept as plain ``bytes → int`` (a dict the garbage collector
        does not track), so a benchmark's 100,000 clients do not slow down collections.
        """
        lease = self._static.get(mac)
        pool = self.config.pool
        if lease is not None or pool is None:
            return lease
        address = self._dynamic.get(mac)
        if address is None:
            if not allocate or self._next >= pool.size:
                return None
            address = self._dynamic[mac] = int(pool.start) + self._next
            self._next += 1
        return Lease4(mac=mac.hex(":"), address=IPv4Interface((address, pool.prefix)))

    def decide(self, msg: Message) -> Decision:
        """The decision for one parsed request (never raises for client input)."""
        if msg.op != BOOTREQUEST:
            return Decision("ignored", "not a BOOTREQUEST")
        if msg.htype != 1 or len(msg.chaddr) != 6:
            return Decision(
                "ignored", f"hardware type {msg.htype}/{len(msg.chaddr)} is not Ethernet"
            )
        kind = msg.message_type
        if kind is None:
            return Decision("ignored", "plain BOOTP (no option 53)")
        if msg.giaddr != _ZERO and not self.config.allow_relay:
            return Decision("ignored", f"relayed through {msg.giaddr} and relaying is off")
        lease = self.lease_for(msg.chaddr, allocate=kind == o.DISCOVER)
        if lease is None:
            return Decision("ignored", f"{NO_LEASE} {msg.chaddr.hex(':')}")
        try:
            sid = msg.option(o.SERVER_ID)
            requested = msg.option(o.REQUESTED_ADDRESS)
            req_ip = (
                IPv4Address(requested) if requested is not None and len(requested) == 4 else None
            )
            ours = lease.address.ip
            if kind == o.DISCOVER:
                return self._reply(msg, lease, o.OFFER, "offer")
            if kind == o.REQUEST:
                if sid is not None:
                    if sid != self._sid:
                        return Decision("ignored", f"REQUEST selects server {sid.hex()}")
                    if req_ip == ours:
                        return self._reply(msg, lease, o.ACK, "selecting")
                    return self._nak(msg, f"selecting requested {req_ip}, lease is {ours}")
                if req_ip is not None:
                    if req_ip == ours:
                        return self._reply(msg, lease, o.ACK, "init-reboot")
                    return self._nak(msg, f"init-reboot requested {req_ip}, lease is {ours}")
                if msg.ciaddr != _ZERO:
                    if msg.ciaddr == ours:
                        return self._reply(msg, lease, o.ACK, "renewing/rebinding")
                    return self._nak(msg, f"renewing {msg.ciaddr}, lease is {ours}")
                return Decision("ignored", "REQUEST names no address")
            if kind == o.INFORM:
                return self._reply(msg, lease, o.ACK, "inform", inform=True)
            if kind == o.DECLINE:
                if sid is not None and sid != self._sid:
                    return Decision("ignored", f"DECLINE for server {sid.hex()}")
                return Decision("decline", f"client declined {req_ip}", address=req_ip)
            if kind == o.RELEASE:
                return Decision("release", f"client released {msg.ciaddr}", address=msg.ciaddr)
        except MalformedPacket as err:
            return Decision("ignored", str(err))
        return Decision("ignored", f"message type {kind} is not one a server answers")

    # ----------------------------------------------------------------- replies

    def _nak(self, msg: Message, reason: str) -> Decision:
        opts: list[tuple[int, bytes]] = [
            (o.MESSAGE_TYPE, bytes((o.NAK,))),
            (o.SERVER_ID, self._sid),
            (o.MESSAGE, reason.encode("ascii", "replace")[:255]),
        ]
        cid = msg.option(o.CLIENT_ID)
        if cid is not None:
            opts.append((o.CLIENT_ID, cid))
        flags = msg.flags
        if msg.giaddr != _ZERO:
            flags |= FLAG_BROADCAST  # RFC 2131 4.3.2: relay must broadcast the NAK
        reply = Message(
            op=BOOTREPLY,
            xid=msg.xid,
            chaddr=msg.chaddr,
            flags=flags,
            giaddr=msg.giaddr,
            options=tuple(opts),
        )
        if msg.giaddr != _ZERO:
            dest = Destination(DestKind.RELAY, msg.giaddr, 67)
        else:
            dest = Destination(DestKind.BROADCAST, _BROADCAST, 68)
        return Decision("nak", reason, reply, dest)

    def _reply(
        self, msg: Message, lease: Lease4, kind: int, reason: str, inform: bool = False
    ) -> Decision:
        available = self._options(lease, kind, inform, msg.option(o.CLIENT_ID))
        prl = msg.option(o.PARAMETER_LIST)
        chosen = _select(available, prl)
        chosen = _fit(chosen, _max_size(msg))
        cfg = self.config
        reply = Message(
            op=BOOTREPLY,
            xid=msg.xid,
            chaddr=msg.chaddr,
            flags=msg.flags,
            ciaddr=msg.ciaddr if kind == o.ACK else _ZERO,
            yiaddr=_ZERO if inform else lease.address.ip,
            giaddr=msg.giaddr,
            sname=(cfg.tftp_server or "").encode("ascii")
            if cfg.tftp_server and len(cfg.tftp_server) < 64
            else b"",
            file=(cfg.boot_file or "").encode("ascii")
            if cfg.boot_file and len(cfg.boot_file) < 128
            else b"",
            options=tuple(chosen),
        )
        event = "inform" if inform else ("offer" if kind == o.OFFER else "ack")
        return Decision(
            event, reason, reply, _destination(msg, reply), None if inform else lease.address.ip
        )

    def _options(
        self, lease: Lease4, kind: int, inform: bool, client_id: bytes | None
    ) -> list[tuple[int, bytes]]:
        """Every option this lease can carry, in the order sent without a request list."""
        key = (lease.address.network, lease.hostname, kind, inform)
        opts = self._cache.get(key)
        if opts is None:
            if len(self._cache) >= 1024:
                self._cache.clear()
            opts = self._cache[key] = self._compute_options(lease, kind, inform)
        if client_id is not None:
            return [*opts, (o.CLIENT_ID, client_id)]
        return opts

    def _compute_options(self, lease: Lease4, kind: int, inform: bool) -> list[tuple[int, bytes]]:
        cfg = self.config
        addr = lease.address
        opts: list[tuple[int, bytes]] = [
            (o.MESSAGE_TYPE, bytes((kind,))),
            (o.SERVER_ID, self._sid),
        ]
        if not inform:
            opts += [
                (o.LEASE_TIME, o.enc_u32(cfg.lease_time)),
                (o.RENEWAL_TIME, o.enc_u32(cfg.lease_time // 2)),
                (o.REBINDING_TIME, o.enc_u32(cfg.lease_time * 7 // 8)),
            ]
        opts.append((o.SUBNET_MASK, o.enc_ip(addr.netmask)))
        if addr.network.prefixlen <= 30:
            opts.append((o.BROADCAST, o.enc_ip(addr.network.broadcast_address)))
        if cfg.router is not None:
            opts.append((o.ROUTER, o.enc_ip(cfg.router)))
        if cfg.dns:
            opts.append((o.DNS, o.enc_ips(cfg.dns)))
        hostname = lease.hostname or cfg.hostname
        if hostname:
            opts.append((o.HOSTNAME, o.enc_text(hostname)))
        if cfg.domain:
            opts.append((o.DOMAIN_NAME, o.enc_text(cfg.domain)))
        if cfg.mtu is not None:
            opts.append((o.INTERFACE_MTU, o.enc_u16(cfg.mtu)))
        if cfg.search:
            opts.append((o.DOMAIN_SEARCH, o.enc_search(cfg.search)))
        routes = self.routes_for(lease)
        if routes:
            opts.append((o.CLASSLESS_ROUTES, o.classless_routes(routes)))
        if cfg.ntp:
            opts.append((o.NTP_SERVERS, o.enc_ips(cfg.ntp)))
        if cfg.tftp_server:
            opts.append((o.TFTP_SERVER, o.enc_text(cfg.tftp_server)))
        if cfg.boot_file:
            opts.append((o.BOOT_FILE, o.enc_text(cfg.boot_file)))
        opts += list(cfg.private_options)
        return opts

    def routes_for(self, lease: Lease4) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
        """Option 121 for ``lease``: :func:`dhcp.v4.config.classless_routes`, the one rule."""
        return classless_routes(lease.address, self.config.router, self.config.routes)


def lease_options(config: Dhcp4Config, lease: Lease4) -> list[tuple[int, bytes]]:
    """Every option an ACK for ``lease`` carries when the client sends no request list,
    in order (a request list picks from these, plus the mandatory ones): exactly what the
    server puts on the wire, computed by the server's own code."""
    return Responder(config)._options(lease, o.ACK, False, None)


def _select(available: list[tuple[int, bytes]], prl: bytes | None) -> list[tuple[int, bytes]]:
    if prl is None:
        return available
    by_code = dict(available)
    chosen = [(c, v) for c, v in available if c in MANDATORY]
    have = {c for c, _ in chosen}
    for code in prl:
        if code in by_code and code not in have:
            chosen.append((code, by_code[code]))
            have.add(code)
    return chosen


def _max_size(msg: Message) -> int:
    raw = msg.option(o.MAX_SIZE)
    if raw is None or len(raw) != 2:
        return _MIN_MAX_SIZE
    return max(_MIN_MAX_SIZE, int.from_bytes(raw, "big"))


def _fit(options: list[tuple[int, bytes]], max_size: int) -> list[tuple[int, bytes]]:
    budget = max_size - _IP_UDP - _HEADER_SIZE - 1  # end option
    used = sum(encoded_size(c, v) for c, v in options)
    if used <= budget:
        return options
    kept = list(options)
    for i in range(len(kept) - 1, -1, -1):
        if used <= budget:
            break
        if kept[i][0] not in MANDATORY:
            used -= encoded_size(*kept[i])
            del kept[i]
    return kept


def _destination(msg: Message, reply: Message) -> Destination:
    if msg.giaddr != _ZERO:
        return Destination(DestKind.RELAY, msg.giaddr, 67)
    if msg.ciaddr != _ZERO:
        return Destination(DestKind.CIADDR, msg.ciaddr, 68, msg.chaddr)
    if msg.flags & FLAG_BROADCAST or reply.yiaddr == _ZERO:
        return Destination(DestKind.BROADCAST, _BROADCAST, 68)
    return Destination(DestKind.CHADDR, reply.yiaddr, 68, msg.chaddr)
