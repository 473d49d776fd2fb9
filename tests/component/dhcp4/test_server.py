"""Dhcp4Server lifecycle, counters, events and rate limiting (sockets real, sends captured)."""

from __future__ import annotations

import asyncio
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhcp.errors import ServerError
from dhcp.v4 import options as o
from dhcp.v4.codec import Message
from dhcp.v4.config import Dhcp4Config, Lease4
from dhcp.v4.logic import Destination, DestKind
from dhcp.v4.server import Dhcp4Server, _checksum, _ipv4_udp

MAC = bytes.fromhex("02d400000002")
SERVER = IPv4Address("169.254.75.1")


def make(**kw: object) -> tuple[Dhcp4Server, list[tuple[bytes, Destination]]]:
    cfg = Dhcp4Config(
        interface="lo",
        server_address=SERVER,
        leases=(Lease4("02:d4:00:00:00:02", IPv4Interface("10.244.1.5/24")),),
        port=0,
        **kw,  # type: ignore[arg-type]
    )
    server = Dhcp4Server(cfg)
    sent: list[tuple[bytes, Destination]] = []
    server._send = lambda payload, dest: sent.append((payload, dest))  # type: ignore[method-assign]
    return server, sent


def packet(kind: int, chaddr: bytes = MAC, *opts: tuple[int, bytes]) -> bytes:
    return Message(
        op=1, xid=9, chaddr=chaddr, options=((o.MESSAGE_TYPE, bytes((kind,))), *opts)
    ).build()


def test_counters_and_events_snapshot() -> None:
    server, sent = make()
    server.handle(packet(o.DISCOVER))
    server.handle(packet(o.REQUEST, MAC, (o.REQUESTED_ADDRESS, bytes((10, 244, 1, 5)))))
    server.handle(packet(o.REQUEST, MAC, (o.REQUESTED_ADDRESS, bytes((10, 244, 1, 6)))))
    server.handle(packet(o.DECLINE, MAC, (o.REQUESTED_ADDRESS, bytes((10, 244, 1, 5)))))
    server.handle(packet(o.RELEASE))
    server.handle(packet(o.INFORM))
    server.handle(packet(o.DISCOVER, bytes(6)))  # unknown MAC
    server.handle(b"\x01" * 100)  # malformed
    snap = server.snapshot()
    c = snap.counters
    assert (c.received, c.offers, c.acks, c.naks, c.declines, c.releases, c.informs) == (
        8,
        1,
        1,
        1,
        1,
        1,
        1,
    )
    assert (c.ignored, c.malformed, c.rate_limited) == (1, 1, 0)
    assert [e.kind for e in snap.events] == ["offer", "ack", "nak", "decline", "release", "inform"]
    assert snap.events[0].mac == "02:d4:00:00:00:02" and snap.events[0].address == "10.244.1.5"
    assert all(e.time > 1.7e9 for e in snap.events)
    assert len(sent) == 4  # offer, ack, nak, inform
    assert [d.kind for _, d in sent] == [
        DestKind.CHADDR,
        DestKind.CHADDR,
        DestKind.BROADCAST,
        DestKind.BROADCAST,  # INFORM without ciaddr: nowhere to unicast
    ]
    assert snap.interface == "lo" and snap.server_address == str(SERVER)
    assert snap.running is False


def test_flooding_client_is_rate_limited_others_are_not() -> None:
    server, sent = make(rate=5.0, burst=10)
    for _ in range(200):
        server.handle(packet(o.DISCOVER))
    other = bytes.fromhex("02d4000000ff")
    server.handle(packet(o.DISCOVER, other))
    c = server.snapshot().counters
    assert c.offers == 10
    assert c.rate_limited == 190
    assert c.ignored == 1  # the other MAC was parsed (unknown lease), not rate limited
    assert len(sent) == 10


def test_events_are_bounded() -> None:
    server, _ = make(max_events=5, rate=1000.0, burst=1000)
    for _ in range(20):
        server.handle(packet(o.DISCOVER))
    snap = server.snapshot()
    assert len(snap.events) == 5 and snap.counters.offers == 20


async def test_open_close_and_serve_in_taskgroup() -> None:
    server, _ = make()
    async with server:
        assert server.snapshot().running
    assert not server.snapshot().running
    async with server, asyncio.TaskGroup() as group:
        task = group.create_task(server.serve(), name="dhcp4-lo")
        await asyncio.sleep(0.05)
        assert server.snapshot().running and not task.done()
        task.cancel()
    assert not server.snapshot().running
    with pytest.raises(ServerError, match="not open"):
        await server.serve()


async def test_datagrams_reach_handle_through_the_socket() -> None:
    server, sent = make()
    await server.open()
    try:
        assert server._udp is not None
        port = server._udp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(packet(o.DISCOVER), ("127.0.0.1", port))
        for _ in range(200):
            if sent:
                break
            await asyncio.sleep(0.01)
        assert server.snapshot().counters.offers == 1
    finally:
        await server.close()


async def test_missing_interface_raises_server_error() -> None:
    cfg = Dhcp4Config(interface="d4-nothere", server_address=SERVER, port=0)
    with pytest.raises(ServerError, match="d4-nothere"):
        await Dhcp4Server(cfg).open()


def test_raw_reply_frame_has_valid_checksums() -> None:
    payload = packet(o.OFFER)
    frame = _ipv4_udp(SERVER, IPv4Address("10.244.1.5"), 67, 68, payload)
    assert _checksum(frame[:20]) == 0
    assert frame[9] == socket.IPPROTO_UDP and frame[12:16] == SERVER.packed
    udp = frame[20:]
    pseudo = frame[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert _checksum(pseudo + udp) == 0
    assert struct.unpack("!HH", udp[:4]) == (67, 68) and udp[8:] == payload


_fuzz_server, _fuzz_sent = make(rate=1e9, burst=10**9, allow_relay=True)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=20)), max_size=8),
    st.integers(0, 0xFFFF),
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.sampled_from([MAC, bytes(6), b"\x01\x02"]),
)
def test_handle_never_raises_for_any_request(
    kind: int,
    opts: list[tuple[int, bytes]],
    flags: int,
    addrs: tuple[bytes, bytes],
    chaddr: bytes,
) -> None:
    """Whatever option values a client sends, handle() answers, ignores or counts it."""
    raw = bytearray(
        Message(
            op=1,
            xid=1,
            chaddr=chaddr,
            flags=flags,
            options=((o.MESSAGE_TYPE, bytes((kind,))), *opts),
        ).build()
    )
    raw[12:16], raw[24:28] = addrs  # ciaddr, giaddr
    before = _fuzz_server.snapshot().counters.received
    _fuzz_server.handle(bytes(raw))
    after = _fuzz_server.snapshot().counters
    assert after.received == before + 1
    handled = (
        after.malformed
        + after.ignored
        + after.offers
        + after.acks
        + after.naks
        + after.informs
        + after.declines
        + after.releases
    )
    assert handled == after.received
