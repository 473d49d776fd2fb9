"""Packets captured from real clients (tests/data/dhcp6/*.hex, see pcap2hex.py) decode,
and each client's captured SOLICIT gets the MAC-keyed lease from the server core —
including systemd-networkd's DUID-EN and dhcpcd/dhcp6c DUID-LLTs made from another
MAC, which only the frame's source MAC identifies."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dhcp.ra import parse_rs
from dhcp.v6 import codec
from dhcp.v6.codec import MsgType, Opt
from dhcp.v6.lease import Config6, Lease6
from dhcp.v6.server import Dhcp6Server, Packet6

DATA = Path(__file__).resolve().parents[2] / "data" / "dhcp6"

EXPECTED = {
    "dhclient": ([MsgType.SOLICIT, MsgType.REQUEST], 1, False),
    "dhclient-duid-en": ([MsgType.SOLICIT, MsgType.REQUEST], 2, False),
    "dhcpcd": ([MsgType.SOLICIT], 1, True),
    "dhcp6c": ([MsgType.SOLICIT, MsgType.RELEASE], 1, True),
    "udhcpc6": ([MsgType.SOLICIT, MsgType.REQUEST], 3, False),
    "systemd-networkd": ([MsgType.SOLICIT], 2, True),
}


def _lines(name: str) -> list[tuple[str, str, bytes]]:
    out = []
    for line in (DATA / f"{name}.hex").read_text().splitlines():
        kind, mac, hexdata = line.split()
        out.append((kind, mac, bytes.fromhex(hexdata)))
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_client_messages(name: str) -> None:
    types, duid_type, rapid = EXPECTED[name]
    msgs = [(mac, codec.decode(raw)) for kind, mac, raw in _lines(name) if kind == "dhcp6"]
    assert [m.msg_type for _mac, m in msgs] == types
    mac, solicit = msgs[0]
    duid = solicit.get(Opt.CLIENTID)
    assert duid is not None and int.from_bytes(duid[:2], "big") == duid_type
    assert (solicit.get(Opt.RAPID_COMMIT) is not None) == rapid
    assert len(solicit.ia_nas()) == 1
    srv = Dhcp6Server(
        Config6(
            "d6cap",
            (Lease6(ipaddress.IPv6Interface("fd00:d6::10/64"), mac=mac),),
            server_duid=codec.duid_ll("02:00:00:00:00:01"),
        )
    )
    raw = srv.handle(
        Packet6(ipaddress.IPv6Address("fe80::1"), ipaddress.IPv6Address("ff02::1:2"), 546,
                codec.encode(solicit), mac)
    )  # fmt: skip
    assert raw is not None
    answer = codec.decode(raw)
    assert answer.ia_nas()[0].addresses[0].address == ipaddress.IPv6Address("fd00:d6::10")


@pytest.mark.parametrize("name", ["dhcpcd", "systemd-networkd", "rdisc6"])
def test_captured_router_solicitations(name: str) -> None:
    rs = [(mac, parse_rs(raw)) for kind, mac, raw in _lines(name) if kind == "rs"]
    assert rs
    for mac, sol in rs:
        assert sol.source_mac in (None, mac)
