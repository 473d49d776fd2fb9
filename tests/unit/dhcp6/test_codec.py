"""DHCPv6 codec, DUIDs, leases and the RA/RS codec: round trips, known bytes, and
hypothesis properties that only MalformedPacket ever escapes the parsers."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhcp.errors import MalformedPacket
from dhcp.ra import (
    PrefixInfo,
    RouterAdvert,
    encode_ra,
    parse_ra,
    parse_rs,
)
from dhcp.v6 import codec
from dhcp.v6.codec import IANA, IAAddr, Message, MsgType, Opt, Status
from dhcp.v6.lease import parse_lease6, server_duid
from dhcp.v6.server import parse_ipv6_udp

A = ipaddress.IPv6Address


def test_message_round_trip_keeps_options_in_order() -> None:
    ia = IANA(7, 100, 160, (IAAddr(A("fd00::10"), 200, 300),), None)
    msg = Message(
        MsgType.REPLY,
        0xABCDEF,
        (
            (Opt.CLIENTID, codec.duid_ll("52:54:00:12:34:56")),
            (Opt.SERVERID, b"\x00\x03\x00\x01" + bytes(6)),
            (Opt.IA_NA, codec.encode_ia_na(ia)[4:]),
            (Opt.DNS_SERVERS, A("fd00::53").packed),
        ),
    )
    raw = codec.encode(msg)
    assert raw[:4] == b"\x07\xab\xcd\xef"
    back = codec.decode(raw)
    assert back == msg
    assert back.ia_nas() == [ia]


def test_ia_na_with_status_decodes() -> None:
    ia = IANA(1, 0, 0, (), (Status.NO_ADDRS_AVAIL, "none"))
    assert codec.parse_ia_na(codec.encode_ia_na(ia)[4:]) == ia


@pytest.mark.parametrize(
    ("duid", "mac"),
    [
        (bytes.fromhex("00030001525400123456"), "52:54:00:12:34:56"),
        (bytes.fromhex("0001000132975a18525400123456"), "52:54:00:12:34:56"),
        (bytes.fromhex("000200007ed901020304"), None),  # DUID-EN
        (b"\x00\x04" + bytes(range(16)), None),  # DUID-UUID
        (bytes.fromhex("00030006525400123456"), None),  # not Ethernet
        (b"\x00", None),
    ],
)
def test_duid_mac(duid: bytes, mac: str | None) -> None:
    assert codec.duid_mac(duid) == mac


def test_linklayer_option() -> None:
    assert codec.linklayer_mac(b"\x00\x01" + bytes.fromhex("525400aabbcc")) == "52:54:00:aa:bb:cc"
    assert codec.linklayer_mac(b"\x00\x06" + bytes(6)) is None


def test_domain_list_is_uncompressed_dns_wire_format() -> None:
    raw = codec.encode_domain_list(["svc.cluster.local", "cluster.local"])
    assert raw == b"\x03svc\x07cluster\x05local\x00\x07cluster\x05local\x00"
    assert codec.decode_domain_list(raw) == ("svc.cluster.local", "cluster.local")
    with pytest.raises(ValueError, match="not valid"):
        codec.encode_domain_list(["a" * 64 + ".com"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x00", "shorter than 4"),
        (b"\x01\x00\x00\x01\x00\x01\x00\x10\x00", "runs past the end"),
        (b"\x01\x00\x00\x01\x00\x01\x00\x01\x00", "invalid length 1"),
        (b"\x0c\x00\x00\x01", "relay"),
        (b"\x01\x00\x00\x01\x00\x03\x00\x04\x00\x00\x00\x01", "IA_NA"),
        (b"\x01\x00\x00\x01\x00\x06\x00\x01\x00", "odd"),
        (b"\x01\x00\x00\x01\x00\x08\x00\x01\x00", "elapsed"),
    ],
)
def test_malformed_messages_name_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        codec.decode(raw)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_decode_raises_only_malformed_packet(raw: bytes) -> None:
    try:
        msg = codec.decode(raw)
    except MalformedPacket:
        return
    msg.ia_nas()
    msg.oro()
    assert codec.encode(msg) == raw


_opt = st.tuples(
    st.sampled_from([1, 2, 3, 5, 6, 8, 13, 14, 23, 24, 79, 999]), st.binary(max_size=60)
)


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 11), st.integers(0, 2**24 - 1), st.lists(_opt, max_size=6))
def test_structured_fuzz_raises_only_malformed_packet(
    t: int, xid: int, opts: list[tuple[int, bytes]]
) -> None:
    raw = codec.encode(Message(t, xid, tuple(opts)))
    with contextlib.suppress(MalformedPacket):
        codec.decode(raw)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_ra_and_rs_parsers_raise_only_malformed_packet(raw: bytes) -> None:
    for parse in (parse_ra, parse_rs, parse_ipv6_udp):
        with contextlib.suppress(MalformedPacket):
            parse(raw)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_ra_options_fuzz(body: bytes) -> None:
    raw = b"\x86\x00\x00\x00\x40\xc0\x07\x08" + bytes(8) + body
    with contextlib.suppress(MalformedPacket):
        parse_ra(raw)
    with contextlib.suppress(MalformedPacket):
        parse_rs(b"\x85\x00\x00\x00" + bytes(4) + body)


def test_ra_round_trip() -> None:
    ra = RouterAdvert(
        managed=True,
        other=True,
        router_lifetime=1800,
        source_mac="52:54:00:aa:bb:cc",
        mtu=1400,
        prefixes=(PrefixInfo(ipaddress.IPv6Network("fd00:6::/64"), True, False, 86400, 14400),),
        rdnss=(A("fd00:6::53"), A("fd00:6::54")),
        rdnss_lifetime=600,
        dnssl=("svc.cluster.local", "cluster.local"),
        dnssl_lifetime=600,
    )
    raw = encode_ra(ra)
    assert len(raw) % 8 == 0
    assert raw[0] == 134 and raw[5] == 0xC0
    assert parse_ra(raw) == ra


def test_rs_with_source_link_layer_address() -> None:
    raw = b"\x85\x00\x00\x00" + bytes(4) + b"\x01\x01" + bytes.fromhex("525400123456")
    assert parse_rs(raw).source_mac == "52:54:00:12:34:56"
    with pytest.raises(MalformedPacket, match="length 0"):
        parse_rs(b"\x85\x00\x00\x00" + bytes(4) + b"\x01\x00" + bytes(6))


def test_parse_ipv6_udp() -> None:
    payload = b"\x01\x00\x00\x01"
    hdr = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 1,
                      A("fe80::1").packed, A("ff02::1:2").packed)  # fmt: skip
    pkt = parse_ipv6_udp(hdr + struct.pack("!HHHH", 546, 547, 8 + len(payload), 0) + payload)
    assert (pkt.src, pkt.dst, pkt.sport, pkt.payload) == (
        A("fe80::1"),
        A("ff02::1:2"),
        546,
        payload,
    )


@pytest.mark.parametrize(
    ("text", "mac", "duid", "addr"),
    [
        ("52:54:00:12:34:56=fd00::10/64", "52:54:00:12:34:56", None, "fd00::10/64"),
        ("52-54-00-12-34-56=fd00::10", "52:54:00:12:34:56", None, "fd00::10/128"),
        ("00:02:00:00:7e:d9:01:02=fd00::11/64", None,
         bytes.fromhex("000200007ed90102"), "fd00::11/64"),
        ("000400112233445566778899aabbccddeeff=fd00::12/64", None,
         bytes.fromhex("000400112233445566778899aabbccddeeff"), "fd00::12/64"),
    ],
)  # fmt: skip
def test_parse_lease6(text: str, mac: str | None, duid: bytes | None, addr: str) -> None:
    lease = parse_lease6(text)
    assert (lease.mac, lease.duid, str(lease.address)) == (mac, duid, addr)


@pytest.mark.parametrize("text", ["nope", "52:54:00:12:34:56=10.0.0.1/24", "zz=fd00::1/64"])
def test_parse_lease6_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"lease|DUID|MAC"):
        parse_lease6(text)


def test_server_duid_is_stable(tmp_path: Path) -> None:
    assert server_duid("52:54:00:12:34:56") == bytes.fromhex("00030001525400123456")
    state = tmp_path / "duid"
    first = server_duid("52:54:00:12:34:56", state)
    assert first[:2] == b"\x00\x04" and len(first) == 18
    assert server_duid("02:00:00:00:00:01", state) == first


@pytest.mark.parametrize("junk", [b"garbage", b"\xff\xfe\x00", b""])
def test_a_server_duid_file_we_did_not_write_is_regenerated_with_a_warning(
    tmp_path: Path, junk: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "dhcp6-duid-eth0"
    state.write_bytes(junk)
    with caplog.at_level("WARNING", logger="dhcp.v6.lease"):
        duid = server_duid("52:54:00:12:34:56", state)
    assert duid[:2] == b"\x00\x04" and len(duid) == 18
    assert server_duid("52:54:00:12:34:56", state) == duid  # kept from now on
    assert any("holds no UUID" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dhcp6-duid-eth0"]


def test_a_server_duid_that_cannot_be_kept_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-dir" / "dhcp6-duid-eth0"
    with caplog.at_level("WARNING", logger="dhcp.v6.lease"):
        duid = server_duid("52:54:00:12:34:56", missing)
    assert duid[:2] == b"\x00\x04"
    assert any("cannot keep the server DUID" in r.getMessage() for r in caplog.records)
