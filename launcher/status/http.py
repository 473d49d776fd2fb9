"""A small HTTP/1.1 server for the status endpoint: GET and HEAD of a fixed set of paths.

Used by :class:`launcher.status.server.StatusServer` only. The endpoint answers a handful
of GETs on loopback (an exec probe, ``virt-launcher status``, a person with curl), so this
serves exactly that on asyncio streams: keep-alive, ``Connection: close``, HEAD without
a body, 404 for an unknown path, 405 (with ``Allow``) for any other method, 400 for a
request that does not parse, 431 for a request head over ``MAX_HEAD_BYTES``. A request
body is never read: a request announcing one is answered and the connection closed.
Every wait is bounded: a connection idle for ``idle_timeout_s`` between requests, or
slower than that to send its request head, is closed. At most ``limit`` connections are
held (:mod:`launcher.status.conncap`): when one more is accepted, the oldest are closed
and a warning is logged (``status-connections-capped``).

Why not aiohttp (which the house style names for HTTP): measured on the 2-core dev VM,
``import aiohttp, aiohttp.web`` adds 8-13 MiB of RSS (depending on what is imported
before it) to a launcher that is 28 MiB without the endpoint; with a VM running and the
endpoint used once, bench/idle.py measured the launcher at 47.6 MiB RSS with aiohttp and
38.7 MiB with this module (issue 17: ≤ 40 MiB; bench/README.md, *Idle*). A launcher per VM
pod, hundreds per node, multiplies that. aiohttp stays the cloud-hypervisor REST client
and the tests' client.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["Response", "Handler", "HttpServer", "MAX_HEAD_BYTES", "DEFAULT_LIMIT"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # request line + headers
IDLE_TIMEOUT_S = 75.0  # as aiohttp's keep-alive default would allow a client
CLOSE_TIMEOUT_S = 5.0
DEFAULT_LIMIT = 1024  # connections held at once (the status server passes conncap's)


@dataclass(frozen=True, slots=True)
class Response:
    """One answer: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


#: A route's handler: no arguments (no route reads the request), returns the Response.
Handler = Callable[[], Awaitable[Response]]


class _BadRequest(Exception):
    """The request head does not parse."""


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
        line, *rest = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError as err:
        raise _BadRequest("malformed request line") from err
    if not version.startswith("HTTP/1.") or not method.isalpha():
        raise _BadRequest(f"unsupported request line {line!r}")
    headers: dict[str, str] = {}
    for field in rest:
        if not field:
            continue
        name, sep, value = field.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(f"malformed header {field!r}")
        headers[name.lower()] = value.strip()
    if target.startswith(("http://", "https://")):  # absolute form: keep the path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return method, target.partition("?")[0].partition("#")[0], version, headers


def _keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _encode(response: Response, *, head_only: bool, keep_alive: bool) -> bytes:
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def _plain(status: int, **headers: str) -> Response:
    text = f"{status}: {HTTPStatus(status).phrase}".encode()
    return Response(status, text, "text/plain; charset=utf-8", tuple(headers.items()))


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, counted by its server from creation to connection loss."""

    def __init__(self, server: HttpServer) -> None:
        super().__init__(asyncio.StreamReader(limit=MAX_HEAD_BYTES), server._connection)
        self.owner = server
        self.transport: asyncio.Transport | None = None
        self.evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream socket's
        self.transport = transport
        if self.evicted:  # closed at the cap before it was even connected
            transport.abort()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._open.pop(self, None)
        super().connection_lost(exc)


class HttpServer:
    """Serves ``routes`` (path → handler) on an already bound listening socket."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.routes = dict(routes)
        self.idle_timeout_s = idle_timeout_s
        self.limit = limit
        self.evicted = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._open: dict[_Protocol, None] = {}  # oldest first (insertion order)

    async def start(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (TCP or unix, listening); OSError if it cannot."""
        self._server = await asyncio.get_running_loop().create_server(self._protocol, sock=sock)

    def _protocol(self) -> _Protocol:
        """A new connection's protocol, after making room for it under the cap."""
        excess = len(self._open) - self.limit + 1
        if excess > 0:
            for old in list(self._open)[:excess]:
                self._open.pop(old, None)
                old.evicted = True
                if old.transport is not None:
                    old.transport.abort()
            self.evicted += excess
            log.warning(
                "status endpoint: %d connections open (the cap); closed the oldest",
                self.limit,
                extra={"event": "status-connections-capped", "evicted_total": self.evicted},
            )
        proto = _Protocol(self)
        self._open[proto] = None
        return proto

    async def close(self) -> None:
        """Stop accepting, end open connections (bounded); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=CLOSE_TIMEOUT_S)
        for proto in list(self._open):
            if proto.transport is not None:
                proto.transport.abort()
        self._open.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; True to keep the connection for another."""
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(_encode(_plain(431), head_only=False, keep_alive=False))
            await writer.drain()
            return False
        except asyncio.IncompleteReadError as err:
            if err.partial.strip():
                writer.write(_encode(_plain(400), head_only=False, keep_alive=False))
                await writer.drain()
            return False
        try:
            method, path, version, headers = _parse_head(head)
        except _BadRequest as err:
            log.debug("status: bad request: %s", err)
            writer.write(_encode(_plain(400), head_only=False, keep_alive=False))
            await writer.drain()
            return False
        has_body = headers.get("content-length", "0") not in ("", "0")
        has_body = has_body or "transfer-encoding" in headers
        keep = _keep_alive(version, headers) and not has_body
        handler = self.routes.get(path)
        if handler is None:
            response = _plain(404)
        elif method not in ("GET", "HEAD"):
            response = _plain(405, Allow="GET,HEAD")
        else:
            try:
                response = await handler()
            except Exception as err:  # one failed request, not the endpoint
                log.warning("status: %s %s failed: %s", method, path, err)
                log.debug("traceback", exc_info=err)
                response, keep = _plain(500), False
        writer.write(_encode(response, head_only=method == "HEAD", keep_alive=keep))
        await writer.drain()
        return keep
