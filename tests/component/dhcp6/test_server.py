"""The DHCPv6 server's protocol core (``Dhcp6Server.handle``): every message type,
every status code, guest matching by each DUID type, counters, events, rate limiting.

The boundary faked here is only the socket: packets are :class:`Packet6` values as the
AF_PACKET receive path produces them (the real path is covered in
tests/integration/dhcp6)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from dhcp.ratelimit import RateLimiter
from dhcp.v6 import codec
from dhcp.v6.codec import IANA, IAAddr, Message, MsgType, Opt, Status
from dhcp.v6.lease import Config6, Lease6
from dhcp.v6.server import Dhcp6Server, Packet6

A = ipaddress.IPv6Address
GUEST_MAC = "52:54:00:12:34:56"
GUEST = A("fd00:6::10")
SERVER_DUID = codec.duid_ll("02:00:00:00:00:01")
DUID_LLT = bytes.fromhex("0001000132975a18") + codec.mac_bytes(GUEST_MAC)
DUID_EN = bytes.fromhex("000200007ed901020304")
DUID_UUID = b"\x00\x04" + bytes(range(16))
MCAST = A("ff02::1:2")
_xid = itertools.count(1)


def server(**kw: object) -> Dhcp6Server:
    cfg = Config6(
        interface="d6test",
        leases=(Lease6(ipaddress.IPv6Interface(f"{GUEST}/64"), mac=GUEST_MAC),),
        dns=(A("fd00:6::53"),),
        search=("svc.cluster.local", "cluster.local"),
        server_duid=SERVER_DUID,
        **kw,  # type: ignore[arg-type]
    )
    return Dhcp6Server(cfg)


def ask(
    srv: Dhcp6Server,
    t: MsgType,
    *opts: tuple[int, bytes],
    duid: bytes | None = DUID_LLT,
    sid: bytes | None = None,
    mac: str | None = "0e:00:00:00:00:99",
    dst: ipaddress.IPv6Address = MCAST,
) -> Message | None:
    options: list[tuple[int, bytes]] = []
    if duid is not None:
        options.append((Opt.CLIENTID, duid))
    if sid is not None:
        options.append((Opt.SERVERID, sid))
    options += opts
    raw = codec.encode(Message(t, next(_xid), tuple(options)))
    out = srv.handle(Packet6(A("fe80::99"), dst, 546, raw, mac))
    return None if out is None else codec.decode(out)


def ia(*addrs: str, iaid: int = 1) -> tuple[int, bytes]:
    body = IANA(iaid, 0, 0, tuple(IAAddr(A(a), 0, 0) for a in addrs))
    return Opt.IA_NA, codec.encode_ia_na(body)[4:]


def status(msg: Message) -> int | None:
    raw = msg.get(Opt.STATUS_CODE)
    return None if raw is None else codec.parse_status(raw)[0]


def test_solicit_gets_advertise_with_address_dns_search_and_preference() -> None:
    srv = server()
    ans = ask(srv, MsgType.SOLICIT, ia())
    assert ans is not None and ans.msg_type == MsgType.ADVERTISE
    assert ans.get(Opt.SERVERID) == SERVER_DUID and ans.get(Opt.CLIENTID) == DUID_LLT
    [got] = ans.ia_nas()
    assert got.iaid == 1 and (got.t1, got.t2) == (1800, 2880)
    assert got.addresses == (IAAddr(GUEST, 3600, 7200),)
    assert ans.get(Opt.PREFERENCE) == b"\xff"
    assert ans.get(Opt.DNS_SERVERS) == A("fd00:6::53").packed
    assert codec.decode_domain_list(ans.get(Opt.DOMAIN_LIST) or b"") == (
        "svc.cluster.local",
        "cluster.local",
    )
    assert srv.snapshot().counters["advertises"] == 1


def test_rapid_commit_answers_solicit_with_reply() -> None:
    ans = ask(server(), MsgType.SOLICIT, ia(), (Opt.RAPID_COMMIT, b""))
    assert ans is not None and ans.msg_type == MsgType.REPLY
    assert ans.get(Opt.RAPID_COMMIT) == b""
    assert ans.ia_nas()[0].addresses[0].address == GUEST
    off = ask(server(rapid_commit=False), MsgType.SOLICIT, ia(), (Opt.RAPID_COMMIT, b""))
    assert off is not None and off.msg_type == MsgType.ADVERTISE


@pytest.mark.parametrize(
    ("duid", "extra", "mac"),
    [
        (codec.duid_ll(GUEST_MAC), (), None),  # DUID-LL carries the MAC
        (DUID_LLT, (), None),  # DUID-LLT carries the MAC
        (DUID_EN, (), GUEST_MAC),  # no MAC inside: frame source
        (DUID_UUID, (), GUEST_MAC),
        (DUID_EN, ((Opt.CLIENT_LINKLAYER_ADDR, b"\x00\x01" + codec.mac_bytes(GUEST_MAC)),), None),
    ],
)
def test_guest_is_matched_whatever_duid_it_sends(
    duid: bytes, extra: tuple[tuple[int, bytes], ...], mac: str | None
) -> None:
    ans = ask(server(), MsgType.SOLICIT, ia(), *extra, duid=duid, mac=mac)
    assert ans is not None and ans.ia_nas()[0].addresses[0].address == GUEST


def test_duid_keyed_lease() -> None:
    cfg = Config6("d6test", (Lease6(ipaddress.IPv6Interface("fd00:6::20/64"), duid=DUID_EN),),
                  server_duid=SERVER_DUID)  # fmt: skip
    ans = ask(Dhcp6Server(cfg), MsgType.SOLICIT, ia(), duid=DUID_EN)
    assert ans is not None and ans.ia_nas()[0].addresses[0].address == A("fd00:6::20")


def test_unknown_client_gets_no_addrs_avail() -> None:
    srv = server()
    ans = ask(srv, MsgType.SOLICIT, ia(), duid=DUID_EN, mac="0e:00:00:00:00:01")
    assert ans is not None and ans.msg_type == MsgType.ADVERTISE
    assert status(ans) == Status.NO_ADDRS_AVAIL and not ans.ia_nas()
    req = ask(srv, MsgType.REQUEST, ia(), duid=DUID_EN, sid=SERVER_DUID, mac=None)
    assert req is not None and req.ia_nas()[0].status is not None
    assert req.ia_nas()[0].status[0] == Status.NO_ADDRS_AVAIL
    assert [e.kind for e in srv.snapshot().events] == ["no-addrs", "no-addrs"]


def test_request_binds_and_second_ia_gets_no_address() -> None:
    srv = server()
    ans = ask(srv, MsgType.REQUEST, ia(), ia(iaid=2), sid=SERVER_DUID)
    assert ans is not None and ans.msg_type == MsgType.REPLY
    first, second = ans.ia_nas()
    assert first.addresses[0].address == GUEST
    assert second.status is not None and second.status[0] == Status.NO_ADDRS_AVAIL
    assert srv.snapshot().events[-1].kind == "bound"
    assert srv.snapshot().events[-1].address == str(GUEST)


@pytest.mark.parametrize("sid", [None, codec.duid_ll("02:00:00:00:00:02")])
def test_request_renew_release_decline_for_another_server_are_ignored(sid: bytes | None) -> None:
    srv = server()
    for t in (MsgType.REQUEST, MsgType.RENEW, MsgType.RELEASE, MsgType.DECLINE):
        assert ask(srv, t, ia(str(GUEST)), sid=sid) is None
    assert srv.snapshot().counters["ignored"] == 4


def test_solicit_rebind_confirm_with_server_id_or_without_client_id_are_ignored() -> None:
    srv = server()
    for t in (MsgType.SOLICIT, MsgType.REBIND, MsgType.CONFIRM):
        assert ask(srv, t, ia(str(GUEST)), sid=SERVER_DUID) is None
        assert ask(srv, t, ia(str(GUEST)), duid=None) is None


def test_renew_and_rebind() -> None:
    srv = server()
    ans = ask(srv, MsgType.RENEW, ia(str(GUEST), "fd00:6::99"), sid=SERVER_DUID)
    assert ans is not None
    addrs = ans.ia_nas()[0].addresses
    assert addrs == (IAAddr(GUEST, 3600, 7200), IAAddr(A("fd00:6::99"), 0, 0))
    reb = ask(srv, MsgType.REBIND, ia(str(GUEST)))
    assert reb is not None and reb.ia_nas()[0].addresses[0].valid == 7200
    stranger = ask(srv, MsgType.RENEW, ia("fd00:6::10"), duid=DUID_EN, sid=SERVER_DUID, mac=None)
    assert stranger is not None
    st = stranger.ia_nas()[0].status
    assert st is not None and st[0] == Status.NO_BINDING


def test_confirm_on_link_and_not_on_link() -> None:
    srv = server()
    ok = ask(srv, MsgType.CONFIRM, ia(str(GUEST)))
    assert ok is not None and status(ok) == Status.SUCCESS
    bad = ask(srv, MsgType.CONFIRM, ia("2001:db8::1"))
    assert bad is not None and status(bad) == Status.NOT_ON_LINK
    assert ask(srv, MsgType.CONFIRM, ia()) is None


def test_a_guest_confirming_its_address_from_before_a_pod_address_change_is_not_on_link() -> None:
    """The link refresh: the guest's old address is in the same prefix as its new lease,
    yet only the lease is appropriate for it (RFC 8415 18.3.3), so it solicits again."""
    srv = server()
    old = ask(srv, MsgType.CONFIRM, ia("fd00:6::5"), mac=GUEST_MAC)
    assert old is not None and status(old) == Status.NOT_ON_LINK
    mixed = ask(srv, MsgType.CONFIRM, ia(str(GUEST), "fd00:6::5"), mac=GUEST_MAC)
    assert mixed is not None and status(mixed) == Status.NOT_ON_LINK
    own = ask(srv, MsgType.CONFIRM, ia(str(GUEST)), mac=GUEST_MAC)
    assert own is not None and status(own) == Status.SUCCESS
    # an unknown client still gets the plain on-link test
    other = ask(srv, MsgType.CONFIRM, ia("fd00:6::5"), duid=DUID_EN, mac=None)
    assert other is not None and status(other) == Status.SUCCESS


@pytest.mark.parametrize("kind", [MsgType.RENEW, MsgType.REBIND])
def test_renew_or_rebind_of_an_address_from_before_a_pod_address_change(kind: MsgType) -> None:
    """RFC 8415 18.3.4/18.3.5: the reply carries the lease and the old address with
    lifetimes 0, so the guest drops it at once."""
    srv = server()
    ans = ask(
        srv,
        kind,
        ia("fd00:6::5"),
        mac=GUEST_MAC,
        sid=SERVER_DUID if kind == MsgType.RENEW else None,
    )
    assert ans is not None
    addrs = ans.ia_nas()[0].addresses
    assert addrs == (IAAddr(GUEST, 3600, 7200), IAAddr(A("fd00:6::5"), 0, 0))


def test_release_and_decline_are_acknowledged_and_recorded() -> None:
    srv = server()
    rel = ask(srv, MsgType.RELEASE, ia(str(GUEST)), sid=SERVER_DUID)
    assert rel is not None and status(rel) == Status.SUCCESS and not rel.ia_nas()
    rel2 = ask(srv, MsgType.RELEASE, ia("fd00:6::77"), sid=SERVER_DUID)
    assert rel2 is not None and rel2.ia_nas()[0].status is not None
    assert rel2.ia_nas()[0].status[0] == Status.NO_BINDING
    dec = ask(srv, MsgType.DECLINE, ia(str(GUEST)), sid=SERVER_DUID)
    assert dec is not None and status(dec) == Status.SUCCESS
    snap = srv.snapshot()
    assert snap.counters["releases"] == 2 and snap.counters["declines"] == 1
    assert snap.events[-1].kind == "declined" and snap.events[-1].address == str(GUEST)


def test_information_request_gets_dns_only() -> None:
    ans = ask(server(), MsgType.INFORMATION_REQUEST, duid=None)
    assert ans is not None and ans.msg_type == MsgType.REPLY
    assert ans.get(Opt.DNS_SERVERS) is not None and not ans.ia_nas()
    assert ans.get(Opt.CLIENTID) is None
    # RFC 8415 16.12: an Information-request with an IA option is discarded.
    assert ask(server(), MsgType.INFORMATION_REQUEST, ia(), duid=None) is None


def test_unicast_gets_use_multicast_or_is_dropped() -> None:
    srv = server()
    uni = A("fe80::1")
    ans = ask(srv, MsgType.REQUEST, ia(), sid=SERVER_DUID, dst=uni)
    assert ans is not None and status(ans) == Status.USE_MULTICAST and not ans.ia_nas()
    assert ask(srv, MsgType.SOLICIT, ia(), dst=uni) is None


def test_malformed_and_flooding_clients_are_dropped_and_counted() -> None:
    srv = server()
    assert srv.handle(Packet6(A("fe80::99"), MCAST, 546, b"\x01\x00", GUEST_MAC)) is None
    assert srv.snapshot().counters["malformed"] == 1
    srv.limiter = RateLimiter(rate=0.001, burst=3)
    answers = [ask(srv, MsgType.SOLICIT, ia(), mac=GUEST_MAC) for _ in range(6)]
    assert sum(a is not None for a in answers) == 3
    assert srv.snapshot().counters["rate_limited"] == 3


def test_events_are_bounded() -> None:
    srv = Dhcp6Server(server().config, max_events=5)
    for _ in range(20):
        ask(srv, MsgType.SOLICIT, ia())
    assert len(srv.snapshot().events) == 5
