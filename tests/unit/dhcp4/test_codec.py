"""DHCPv4 codec against real captured client packets, round trips, exact sizes, fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhcp.common import decode_search_list, encode_search_list
from dhcp.errors import MalformedPacket
from dhcp.v4 import options as o
from dhcp.v4.codec import MAGIC_COOKIE, Message, encode_options, parse

DATA = Path(__file__).resolve().parents[2] / "data" / "dhcp4"
CLIENT_MAC = bytes.fromhex("02d400000002")


def captured(name: str) -> bytes:
    return bytes.fromhex((DATA / f"{name}.hex").read_text().strip())


ALL = sorted(p.stem for p in DATA.glob("*.hex"))


def test_every_client_was_captured() -> None:
    assert {n.split("-")[0] for n in ALL} >= {"dhclient", "dhcpcd", "udhcpc", "networkd"}
    assert len(ALL) >= 6


@pytest.mark.parametrize("name", ALL)
def test_captured_packets_parse(name: str) -> None:
    msg = parse(captured(name))
    assert msg.op == 1
    assert msg.htype == 1
    assert msg.chaddr == CLIENT_MAC
    assert msg.giaddr == IPv4Address(0)
    kinds = {"discover": o.DISCOVER, "request": o.REQUEST, "release": o.RELEASE}
    assert msg.message_type == kinds[name.rsplit("-", 1)[1]]


def test_dhclient_discover_fields() -> None:
    msg = parse(captured("dhclient-discover"))
    assert msg.option(o.PARAMETER_LIST) == bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])
    assert msg.option(o.HOSTNAME) is not None
    assert msg.option(o.CLIENT_ID) is None
    assert msg.flags == 0


def test_dhclient_selecting_and_init_reboot_requests() -> None:
    selecting = parse(captured("dhclient-request"))
    assert selecting.option(o.SERVER_ID) == IPv4Address("169.254.75.1").packed
    assert selecting.option(o.REQUESTED_ADDRESS) == IPv4Address("169.254.75.19").packed
    assert selecting.xid == parse(captured("dhclient-discover")).xid
    reboot = parse(captured("dhclient-reboot-request"))
    assert reboot.option(o.SERVER_ID) is None  # init-reboot: no server identifier
    assert reboot.option(o.REQUESTED_ADDRESS) == IPv4Address("169.254.75.19").packed
    assert reboot.ciaddr == IPv4Address(0)


def test_networkd_fields() -> None:
    discover = parse(captured("networkd-discover"))
    cid = discover.option(o.CLIENT_ID)
    assert cid is not None and cid[0] == 0xFF  # RFC 4361: IAID + DUID by default
    assert discover.option(o.MAX_SIZE) is not None
    prl = discover.option(o.PARAMETER_LIST)
    assert prl is not None and {1, 3, 6, 121} <= set(prl)
    release = parse(captured("networkd-release"))
    assert release.ciaddr == IPv4Address("169.254.75.20")
    assert release.option(o.CLIENT_ID) == cid  # its RELEASE carries no server identifier


def test_dhcpcd_fields() -> None:
    msg = parse(captured("dhcpcd-discover"))
    assert msg.option(o.MAX_SIZE) == (1472).to_bytes(2, "big")
    vendor = msg.option(60)
    assert vendor is not None and vendor.startswith(b"dhcpcd-9.4.1")
    assert msg.option(o.PARAMETER_LIST) == bytes([1, 3, 28, 33, 51, 58, 59])


def test_udhcpc_fields() -> None:
    msg = parse(captured("udhcpc-request"))
    assert msg.option(o.CLIENT_ID) == b"\x01" + CLIENT_MAC
    assert msg.option(o.HOSTNAME) == b"guest1"
    assert msg.option(o.MAX_SIZE) == (576).to_bytes(2, "big")
    assert msg.option(60) == b"udhcp 1.35.0"


@pytest.mark.parametrize("name", ALL)
def test_captured_packets_rebuild_byte_exact(name: str) -> None:
    raw = captured(name)
    rebuilt = parse(raw).build()
    # Clients pad differently after the end option; up to and including it, bytes match.
    assert rebuilt.rstrip(b"\0") == raw.rstrip(b"\0")
    assert parse(rebuilt) == parse(raw)


def test_build_pads_to_bootp_minimum_and_ends() -> None:
    msg = Message(op=2, xid=7, chaddr=CLIENT_MAC, options=((o.MESSAGE_TYPE, b"\x02"),))
    raw = msg.build()
    assert len(raw) == 300
    assert raw[236:240] == MAGIC_COOKIE
    assert raw[240:244] == bytes((53, 1, 2, 255))


def test_long_option_split_and_concatenated() -> None:
    value = bytes(range(256)) * 2  # 512 bytes → 255 + 255 + 2
    enc = encode_options([(o.DOMAIN_SEARCH, value)])
    assert enc[0:2] == bytes((119, 255)) and enc[257:259] == bytes((119, 255))
    assert enc[514:516] == bytes((119, 2))
    msg = Message(op=2, xid=1, chaddr=CLIENT_MAC, options=((o.DOMAIN_SEARCH, value),))
    assert parse(msg.build()).option(o.DOMAIN_SEARCH) == value


def _raw(options: bytes, sname: bytes = b"", file: bytes = b"", hlen: int = 6) -> bytes:
    head = bytearray(236)
    head[0], head[1], head[2] = 1, 1, hlen
    head[28:34] = CLIENT_MAC
    head[44 : 44 + len(sname)] = sname
    head[108 : 108 + len(file)] = file
    return bytes(head) + MAGIC_COOKIE + options


def test_option_overload_reads_file_then_sname() -> None:
    raw = _raw(
        bytes((53, 1, 1, 52, 1, 3, 255)),
        sname=bytes((12, 2)) + b"hn" + b"\xff",
        file=bytes((0, 0, 50, 4, 10, 0, 0, 9, 255)),
    )
    msg = parse(raw)
    assert msg.message_type == o.DISCOVER
    assert msg.option(o.REQUESTED_ADDRESS) == bytes((10, 0, 0, 9))
    assert msg.option(o.HOSTNAME) == b"hn"
    assert msg.option(o.OVERLOAD) is None
    assert msg.sname == b"" and msg.file == b""
    assert [c for c, _ in msg.options] == [53, 50, 12]


def test_pad_options_are_skipped() -> None:
    msg = parse(_raw(bytes((0, 0, 53, 1, 3, 0, 255))))
    assert msg.options == ((53, b"\x03"),)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\x01" * 239, "240-byte minimum"),
        (_raw(b"")[:236] + b"\x63\x82\x53\x64", "magic cookie"),
        (_raw(bytes((53, 4, 1))), "claims 4 bytes"),
        (_raw(bytes((53,))), "no length byte"),
        (_raw(b"\xff", hlen=17), "hlen 17"),
        (_raw(bytes((52, 1, 4, 255))), "overload"),
        (b"\x05" + _raw(b"\xff")[1:], "op 5"),
    ],
)
def test_malformed_input_names_the_problem(raw: bytes, fragment: str) -> None:
    with pytest.raises(MalformedPacket, match=fragment):
        parse(raw)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=700))
def test_any_bytes_give_message_or_malformed(data: bytes) -> None:
    try:
        msg = parse(data)
    except MalformedPacket:
        return
    assert isinstance(msg, Message)


@settings(max_examples=600, deadline=None)
@given(
    st.sampled_from(ALL),
    st.lists(st.tuples(st.integers(0, 599), st.integers(0, 255)), max_size=8),
    st.integers(240, 620),
)
def test_mutated_real_packets_give_message_or_malformed(
    name: str, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(captured(name))
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    try:
        msg = parse(bytes(data[:cut]))
    except MalformedPacket:
        return
    assert parse(msg.build()) == msg


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 254).filter(lambda c: c not in (o.OVERLOAD,)),
            st.binary(min_size=0, max_size=300),
        ),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    st.integers(0, 2**32 - 1),
)
def test_build_parse_round_trip(opts: list[tuple[int, bytes]], xid: int) -> None:
    msg = Message(op=2, xid=xid, chaddr=CLIENT_MAC, flags=0x8000, options=tuple(opts))
    assert parse(msg.build()) == msg


def test_search_list_wire_format() -> None:
    wire = encode_search_list(["eng.apple.com", "marketing.apple.com"])
    # RFC 3397 section 3's example: the second name points at "apple.com" in the first.
    assert wire == b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    assert decode_search_list(wire) == ["eng.apple.com", "marketing.apple.com"]
    flat = encode_search_list(["a.example", "b.example"], compress=False)
    assert b"\xc0" not in flat and decode_search_list(flat) == ["a.example", "b.example"]
    with pytest.raises(ValueError, match="bad domain"):
        encode_search_list(["bad domain"])


def test_classless_routes_rfc3442_encoding() -> None:
    routes = [
        (IPv4Network("169.254.1.1/32"), IPv4Address("0.0.0.0")),
        (IPv4Network("10.0.0.0/8"), IPv4Address("10.244.1.1")),
        (IPv4Network("0.0.0.0/0"), IPv4Address("169.254.1.1")),
    ]
    wire = o.classless_routes(routes)
    assert wire == bytes([32, 169, 254, 1, 1, 0, 0, 0, 0, 8, 10, 10, 244, 1, 1, 0, 169, 254, 1, 1])
    assert o.decode_classless_routes(wire) == routes


def test_fixed_size_encoders() -> None:
    assert len(o.enc_ip(IPv4Address("10.0.0.1"))) == 4
    assert len(o.enc_u32(86400)) == 4
    assert len(o.enc_u16(1400)) == 2
    assert len(o.enc_ips([IPv4Address("1.1.1.1"), IPv4Address("8.8.8.8")])) == 8
