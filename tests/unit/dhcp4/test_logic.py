"""DHCPv4 server decisions (no sockets): states, NAKs, destinations, option selection."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from dhcp.common import decode_search_list
from dhcp.v4 import options as o
from dhcp.v4.codec import FLAG_BROADCAST, Message, parse
from dhcp.v4.config import Dhcp4Config, Lease4, Pool4
from dhcp.v4.logic import DestKind, Responder

MAC = bytes.fromhex("02d400000002")
SERVER = IPv4Address("169.254.75.1")
ADDR = IPv4Address("10.244.1.5")
DATA = Path(__file__).resolve().parents[2] / "data" / "dhcp4"


def config(**kw: object) -> Dhcp4Config:
    base: dict[str, object] = {
        "interface": "d4s0",
        "server_address": SERVER,
        "leases": (Lease4("02:D4:00:00:00:02", IPv4Interface("10.244.1.5/24"), "guest1"),),
        "router": IPv4Address("10.244.1.1"),
        "dns": (IPv4Address("10.96.0.10"), IPv4Address("10.96.0.11")),
        "search": ("ns1.svc.cluster.local", "cluster.local"),
        "domain": "cluster.local",
        "mtu": 1400,
    }
    base.update(kw)
    return Dhcp4Config(**base)  # type: ignore[arg-type]


def req(kind: int, *opts: tuple[int, bytes], **fields: object) -> Message:
    msg = Message(op=1, xid=0x1234, chaddr=MAC, options=((o.MESSAGE_TYPE, bytes((kind,))), *opts))
    return replace(msg, **fields)  # type: ignore[arg-type]


SID = (o.SERVER_ID, SERVER.packed)


def want(addr: str) -> tuple[int, bytes]:
    return (o.REQUESTED_ADDRESS, IPv4Address(addr).packed)


def test_discover_gets_offer_unicast_to_chaddr() -> None:
    d = Responder(config()).decide(req(o.DISCOVER))
    assert d.event == "offer" and d.reply is not None and d.destination is not None
    assert d.reply.op == 2 and d.reply.xid == 0x1234 and d.reply.yiaddr == ADDR
    assert d.reply.message_type == o.OFFER
    assert d.reply.option(o.SERVER_ID) == SERVER.packed
    assert d.destination.kind is DestKind.CHADDR
    assert (d.destination.address, d.destination.mac, d.destination.port) == (ADDR, MAC, 68)


def test_broadcast_flag_gets_broadcast() -> None:
    d = Responder(config()).decide(req(o.DISCOVER, flags=FLAG_BROADCAST))
    assert d.destination is not None and d.destination.kind is DestKind.BROADCAST
    assert d.destination.address == IPv4Address("255.255.255.255")
    assert d.reply is not None and d.reply.flags == FLAG_BROADCAST


@pytest.mark.parametrize(
    ("opts", "fields", "event"),
    [
        ((SID, want("10.244.1.5")), {}, "ack"),  # selecting
        ((SID, want("10.244.1.9")), {}, "nak"),
        ((want("10.244.1.5"),), {}, "ack"),  # init-reboot
        ((want("192.168.0.7"),), {}, "nak"),  # stale address from another pod
        ((), {"ciaddr": ADDR}, "ack"),  # renewing / rebinding
        ((), {"ciaddr": IPv4Address("10.244.1.6")}, "nak"),
        ((), {}, "ignored"),  # names no address
        (((o.SERVER_ID, bytes((10, 0, 0, 1))), want("10.244.1.5")), {}, "ignored"),
    ],
)
def test_request_states(
    opts: tuple[tuple[int, bytes], ...], fields: dict[str, object], event: str
) -> None:
    d = Responder(config()).decide(req(o.REQUEST, *opts, **fields))
    assert d.event == event, d.reason
    if event == "nak":
        assert d.reply is not None and d.reply.message_type == o.NAK
        assert d.reply.yiaddr == IPv4Address(0)
        assert d.reply.option(o.LEASE_TIME) is None
        assert d.destination is not None and d.destination.kind is DestKind.BROADCAST
    if event == "ack":
        assert d.reply is not None and d.reply.yiaddr == ADDR
        assert d.reply.option(o.LEASE_TIME) == (86400).to_bytes(4, "big")


def test_renewal_ack_is_unicast_to_ciaddr() -> None:
    d = Responder(config()).decide(req(o.REQUEST, ciaddr=ADDR))
    assert d.destination is not None and d.destination.kind is DestKind.CIADDR
    assert d.destination.address == ADDR
    assert d.reply is not None and d.reply.ciaddr == ADDR


def test_inform_acks_without_lease_times() -> None:
    d = Responder(config()).decide(req(o.INFORM, ciaddr=ADDR))
    assert d.event == "inform" and d.reply is not None
    assert d.reply.message_type == o.ACK and d.reply.yiaddr == IPv4Address(0)
    for code in (o.LEASE_TIME, o.RENEWAL_TIME, o.REBINDING_TIME):
        assert d.reply.option(code) is None
    assert d.reply.option(o.DNS) is not None
    assert d.destination is not None and d.destination.kind is DestKind.CIADDR


def test_decline_and_release_are_recorded_without_reply() -> None:
    r = Responder(config())
    d = r.decide(req(o.DECLINE, SID, want("10.244.1.5")))
    assert (d.event, d.reply, d.address) == ("decline", None, ADDR)
    d = r.decide(req(o.RELEASE, SID, ciaddr=ADDR))
    assert (d.event, d.reply, d.address) == ("release", None, ADDR)


def test_unknown_mac_bootp_and_relay_are_ignored() -> None:
    r = Responder(config())
    assert r.decide(req(o.DISCOVER, chaddr=bytes(6))).event == "ignored"
    plain = Message(op=1, xid=1, chaddr=MAC)
    assert r.decide(plain).event == "ignored"
    relayed = req(o.DISCOVER, giaddr=IPv4Address("10.0.0.1"))
    d = r.decide(relayed)
    assert d.event == "ignored" and "relay" in d.reason
    assert r.decide(req(o.OFFER)).event == "ignored"
    assert r.decide(replace(req(o.DISCOVER), op=2)).event == "ignored"


def test_relay_allowed_replies_to_giaddr_port_67() -> None:
    r = Responder(config(allow_relay=True))
    gi = IPv4Address("10.0.0.1")
    d = r.decide(req(o.DISCOVER, giaddr=gi))
    assert d.destination is not None and d.destination.kind is DestKind.RELAY
    assert (d.destination.address, d.destination.port) == (gi, 67)
    assert d.reply is not None and d.reply.giaddr == gi
    nak = r.decide(req(o.REQUEST, want("1.2.3.4"), giaddr=gi))
    assert nak.reply is not None and nak.reply.flags & FLAG_BROADCAST
    assert nak.destination is not None and nak.destination.kind is DestKind.RELAY


def test_client_identifier_is_echoed_lease_stays_on_chaddr() -> None:
    cid = (o.CLIENT_ID, b"\xff\x00\x01\x02\x03")
    d = Responder(config()).decide(req(o.DISCOVER, cid))
    assert d.reply is not None and d.reply.option(o.CLIENT_ID) == cid[1]
    assert d.reply.yiaddr == ADDR
    nak = Responder(config()).decide(req(o.REQUEST, cid, want("1.1.1.1")))
    assert nak.reply is not None and nak.reply.option(o.CLIENT_ID) == cid[1]


def test_all_options_without_request_list_at_exact_sizes() -> None:
    d = Responder(config(ntp=(IPv4Address("10.0.0.5"),))).decide(req(o.DISCOVER))
    assert d.reply is not None
    opts = dict(d.reply.options)
    sizes = {1: 4, 3: 4, 6: 8, 26: 2, 28: 4, 42: 4, 51: 4, 54: 4, 58: 4, 59: 4, 53: 1}
    assert {c: len(opts[c]) for c in sizes} == sizes
    assert opts[o.SUBNET_MASK] == IPv4Address("255.255.255.0").packed
    assert opts[o.BROADCAST] == IPv4Address("10.244.1.255").packed
    assert opts[o.HOSTNAME] == b"guest1" and opts[o.DOMAIN_NAME] == b"cluster.local"
    assert int.from_bytes(opts[o.RENEWAL_TIME], "big") == 43200
    assert int.from_bytes(opts[o.REBINDING_TIME], "big") == 75600
    assert decode_search_list(opts[o.DOMAIN_SEARCH]) == ["ns1.svc.cluster.local", "cluster.local"]
    # the router is inside the subnet and there is no other route: option 3 says it all
    assert o.CLASSLESS_ROUTES not in opts


def test_an_extra_route_brings_option_121_with_the_default_route_last() -> None:
    extra = (IPv4Network("10.96.0.0/12"), IPv4Address("10.244.1.254"))
    d = Responder(config(routes=(extra,))).decide(req(o.DISCOVER))
    assert d.reply is not None
    assert o.decode_classless_routes(d.reply.option(o.CLASSLESS_ROUTES) or b"") == [
        extra,
        (IPv4Network("0.0.0.0/0"), IPv4Address("10.244.1.1")),
    ]


def test_classless_routes_is_the_one_rule() -> None:
    from dhcp.v4.config import classless_routes

    on_link, default = IPv4Address("0.0.0.0"), IPv4Network("0.0.0.0/0")
    addr24, addr32 = IPv4Interface("10.244.1.5/24"), IPv4Interface("10.244.1.5/32")
    gw, calico = IPv4Address("10.244.1.1"), IPv4Address("169.254.1.1")
    assert classless_routes(addr24, gw) == ()
    # the subnet route the mask implies and default routes are never repeated
    assert classless_routes(addr24, gw, [(addr24.network, on_link), (default, gw)]) == ()
    host = (IPv4Network("169.254.1.1/32"), on_link)
    assert classless_routes(addr32, calico) == (host, (default, calico))
    # a host route already among the extras is sent once, first
    svc = (IPv4Network("10.96.0.0/12"), calico)
    assert classless_routes(addr32, calico, [svc, host]) == (host, svc, (default, calico))
    assert classless_routes(addr24, None, [svc]) == (svc,)


def test_request_list_limits_options_to_requested_plus_mandatory() -> None:
    prl = (o.PARAMETER_LIST, bytes([o.INTERFACE_MTU, o.DNS, 200]))
    d = Responder(config()).decide(req(o.DISCOVER, prl))
    assert d.reply is not None
    codes = [c for c, _ in d.reply.options]
    assert codes == [53, 54, 51, 58, 59, 1, 3, 26, 6]


def test_real_udhcpc_request_list_answered() -> None:
    msg = parse(bytes.fromhex((DATA / "udhcpc-discover.hex").read_text().strip()))
    d = Responder(config()).decide(msg)
    assert d.reply is not None
    codes = {c for c, _ in d.reply.options}
    # udhcpc asks for 1 3 6 12 15 28 42; 42 is not configured, 119/121/26 not asked.
    assert codes == {53, 54, 51, 58, 59, 1, 3, 6, 12, 15, 28, 61}


def test_maximum_message_size_drops_optional_options() -> None:
    many = tuple((c, bytes(200)) for c in range(224, 234))
    cfg = config(private_options=many)
    small = Responder(cfg).decide(req(o.DISCOVER, (o.MAX_SIZE, (576).to_bytes(2, "big"))))
    big = Responder(cfg).decide(req(o.DISCOVER, (o.MAX_SIZE, (4000).to_bytes(2, "big"))))
    assert small.reply is not None and big.reply is not None
    assert len(small.reply.build()) + 28 <= 576
    assert len(big.reply.build()) > 2000
    assert {53, 54, 51, 1, 3} <= {c for c, _ in small.reply.options}


def test_slash32_gets_on_link_host_route_then_default() -> None:
    cfg = config(
        leases=(Lease4("02:d4:00:00:00:02", IPv4Interface("10.244.1.5/32")),),
        router=IPv4Address("169.254.1.1"),
        routes=((IPv4Network("10.96.0.0/12"), IPv4Address("169.254.1.1")),),
    )
    d = Responder(cfg).decide(req(o.DISCOVER))
    assert d.reply is not None
    routes = o.decode_classless_routes(d.reply.option(o.CLASSLESS_ROUTES) or b"")
    assert routes == [
        (IPv4Network("169.254.1.1/32"), IPv4Address(0)),
        (IPv4Network("10.96.0.0/12"), IPv4Address("169.254.1.1")),
        (IPv4Network("0.0.0.0/0"), IPv4Address("169.254.1.1")),
    ]
    assert d.reply.option(o.ROUTER) == IPv4Address("169.254.1.1").packed
    assert d.reply.option(o.SUBNET_MASK) == bytes((255, 255, 255, 255))
    assert d.reply.option(o.BROADCAST) is None


def test_kubevirt_extras_and_private_options() -> None:
    cfg = config(
        ntp=(IPv4Address("10.0.0.5"), IPv4Address("10.0.0.6")),
        tftp_server="tftp.example",
        boot_file="pxelinux.0",
        private_options=((240, b"private"),),
    )
    prl = (o.PARAMETER_LIST, bytes([42, 66, 67, 240]))
    d = Responder(cfg).decide(req(o.DISCOVER, prl))
    assert d.reply is not None
    assert d.reply.option(o.NTP_SERVERS) == bytes([10, 0, 0, 5, 10, 0, 0, 6])
    assert d.reply.option(o.TFTP_SERVER) == b"tftp.example"
    assert d.reply.option(o.BOOT_FILE) == b"pxelinux.0"
    assert d.reply.option(240) == b"private"
    assert d.reply.file == b"pxelinux.0" and d.reply.sname == b"tftp.example"


def test_pool_allocates_distinct_addresses_until_full() -> None:
    r = Responder(
        config(leases=(), pool=Pool4(IPv4Address("10.9.0.10"), IPv4Address("10.9.0.11"), 24))
    )
    got = []
    for i in range(3):
        d = r.decide(req(o.DISCOVER, chaddr=bytes((2, 0, 0, 0, 0, i))))
        got.append(d.reply.yiaddr if d.reply else None)
    assert got == [IPv4Address("10.9.0.10"), IPv4Address("10.9.0.11"), None]
    again = r.decide(req(o.REQUEST, SID, want("10.9.0.11"), chaddr=bytes((2, 0, 0, 0, 0, 1))))
    assert again.event == "ack"


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"lease_time": 10}, "lease time 10"),
        ({"mtu": 40}, "MTU 40"),
        ({"search": ("bad domain",)}, "bad domain"),
        ({"private_options": ((100, b"x"),)}, "private option code 100"),
        ({"interface": "x" * 16}, "over 15"),
        ({"hostname": "gäst"}, "gäst"),
        ({"server_address": ADDR}, "equals the server address"),
    ],
)
def test_config_validation_names_the_value(kw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        config(**kw)


def test_lease_mac_validation() -> None:
    with pytest.raises(ValueError, match="zz"):
        Lease4("zz:00:00:00:00:00", IPv4Interface("10.0.0.1/24"))
    with pytest.raises(ValueError, match="is not a DNS name"):
        Lease4("02:00:00:00:00:01", IPv4Interface("10.0.0.1/24"), "vm 1")
    with pytest.raises(ValueError, match="more than one lease"):
        config(leases=(Lease4("02:00:00:00:00:01", IPv4Interface("10.0.0.1/24")),) * 2)
