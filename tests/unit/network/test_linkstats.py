"""The status reader's rtnetlink decoding (launcher.network.linkstats) on hand-made messages:
the odd ones a kernel could send decode to something sensible or to None, never raise.
The real kernel's answers are checked against iproute2 in
tests/integration/network/test_linkstats.py."""

from __future__ import annotations

import socket
import struct

from launcher.network.linkstats import decode_link, decode_neighbour


def rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def link(index: int, *attrs: bytes) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, 0, 0) + b"".join(attrs)


def neigh(index: int, state: int, *attrs: bytes) -> bytes:
    return struct.pack("=BxxxiHBB", socket.AF_INET, index, state, 0, 1) + b"".join(attrs)


def test_a_link_with_its_counters() -> None:
    stats = struct.pack("=8Q", 1, 2, 300, 400, 5, 6, 7, 8) + b"\0" * 8 * 16
    body = link(
        4,
        rta(3, b"eth0\0"),
        rta(4, struct.pack("=I", 1450)),
        rta(1, bytes.fromhex("0a580a4d0005")),
        rta(16, b"\x06"),
        rta(23, stats),
    )
    index, got = decode_link(body) or (0, None)
    assert index == 4 and got is not None
    assert (got.name, got.oper_state, got.mtu, got.mac) == ("eth0", "up", 1450, "0a:58:0a:4d:00:05")
    assert (got.rx_packets, got.tx_packets, got.rx_bytes, got.tx_bytes) == (1, 2, 300, 400)
    assert (got.rx_errors, got.tx_errors, got.rx_dropped, got.tx_dropped) == (5, 6, 7, 8)


def test_odd_links_decode_without_raising() -> None:
    assert decode_link(b"\0" * 8) is None  # shorter than its header
    assert decode_link(link(1)) is None  # no name
    got = decode_link(link(2, rta(3, b"tap0\0"), rta(16, b""), rta(4, b"\x01")))
    assert got is not None
    assert (got[1].oper_state, got[1].mtu, got[1].rx_bytes) == ("unknown", 0, 0)
    assert decode_link(link(3, rta(3, b"x\0"), rta(16, b"\x63")))[1].oper_state == "unknown"  # type: ignore[index]
    old = decode_link(link(5, rta(3, b"v\0"), rta(7, struct.pack("=8I", 1, 2, 3, 4, 0, 0, 0, 0))))
    assert old is not None and (old[1].rx_packets, old[1].tx_bytes) == (1, 4)  # 32-bit stats
    cut = link(6, rta(3, b"w\0"))[:-3]  # a truncated attribute ends the list
    assert decode_link(cut) is None


def test_neighbours_only_resolved_on_the_named_links() -> None:
    names = {7: "vlbr0"}
    ok = neigh(7, 0x02, rta(1, bytes([10, 0, 0, 5])), rta(2, bytes.fromhex("020000000901")))
    assert decode_neighbour(ok, names) is not None
    got = decode_neighbour(ok, names)
    assert got is not None and (got.interface, got.address, got.mac) == (
        "vlbr0",
        "10.0.0.5",
        "02:00:00:00:09:01",
    )
    assert decode_neighbour(ok, {8: "eth0"}) is None  # another link
    failed = neigh(7, 0x20, rta(1, bytes([10, 0, 0, 6])), rta(2, b"\x02" * 6))
    assert decode_neighbour(failed, names) is None
    assert decode_neighbour(neigh(7, 0x02, rta(1, bytes([10, 0, 0, 7]))), names) is None  # no MAC
    assert decode_neighbour(neigh(7, 0x02, rta(1, b"\x01\x02"), rta(2, b"\x02" * 6)), names) is None
    assert decode_neighbour(b"\0" * 4, names) is None
