"""The status endpoint's small HTTP/1.1 server on a real socket, byte for byte."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from launcher.status.http import MAX_HEAD_BYTES, HttpServer, Response


async def ok() -> Response:
    return Response(200, b'{"a":1}', "application/json", (("Cache-Control", "no-store"),))


async def broken() -> Response:
    raise RuntimeError("boom")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = HttpServer({"/a": ok, "/broken": broken}, idle_timeout_s=2)
    await server.start(sock)
    try:
        yield sock.getsockname()[1]
    finally:
        await server.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes the connection (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    async with asyncio.timeout(10):
        out = await reader.read()
    writer.close()
    return out


async def test_get_head_and_keep_alive(port: int) -> None:
    got = await exchange(
        port,
        b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"HEAD /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    first, _, second = got.partition(b'{"a":1}')
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 7\r\n" in first and b"Connection: keep-alive" in first
    assert b"Cache-Control: no-store" in first and b"Content-Type: application/json" in first
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\n")
    assert b"Content-Length: 7\r\n" in second and b"Connection: close" in second


async def test_http10_closes_unless_asked(port: int) -> None:
    got = await exchange(port, b"GET /a HTTP/1.0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in got


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /a HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b"405"),
        (b"garbage\r\n\r\n", b"400"),
        (b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /a HTTP/1.1\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n", b"431"),
        (b"GET /broken HTTP/1.1\r\n\r\n", b"500"),
    ],
)
async def test_errors(port: int, request_bytes: bytes, status: bytes) -> None:
    got = await exchange(port, request_bytes + b"GET /a HTTP/1.1\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 " + status), got[:80]
    if status == b"405":
        assert b"Allow: GET,HEAD" in got
    if status != b"404":  # the connection is closed after the error
        assert got.count(b"HTTP/1.1 ") == 1


async def test_a_request_with_a_body_is_answered_then_closed(port: int) -> None:
    got = await exchange(port, b"GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert got.startswith(b"HTTP/1.1 200") and b"Connection: close" in got


async def test_an_idle_connection_is_closed_after_the_timeout(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # closed by the server after 2 s
    writer.close()
