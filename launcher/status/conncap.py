"""A cap on the status endpoint's open connections, below the process's fd limit.

Used by :class:`launcher.status.server.StatusServer` (``CappedSockSite`` instead of
aiohttp's ``web.SockSite``). Without a cap, clients that open connections and hold them
(20,000 of them, in issue 16) use up the launcher's file descriptors: every accept then
fails with EMFILE, ``/healthz`` cannot be reached, and anything else that needs an fd
(the VMM's hot plug, the netlink helper) fails too.

With it, the endpoint never holds more than :func:`connection_limit` connections: when a
new one is accepted at the cap, the oldest open ones are closed (the longest-held are the
likeliest to be idle; a probe's connection lives milliseconds), so a fresh request —
kubelet's probe — is always served. Each time the cap is hit a warning is logged (the
JSON log rate-limits repeats, :mod:`launcher.logs`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from typing import Any

from launcher.startup import without_ssl

with without_ssl():
    from aiohttp import web

__all__ = ["CappedSockSite", "connection_limit", "MAX_CONNECTIONS", "FD_RESERVE"]

log = logging.getLogger(__name__)

#: The most connections the endpoint holds, however high the fd limit.
MAX_CONNECTIONS = 1024
#: File descriptors kept for the rest of the launcher (taps, DHCP sockets, the VMM's
#: pipes, helpers: 128) and for the connections accepted before the oldest are closed
#: (asyncio accepts up to the backlog, 128, per wake-up, makes each connection's protocol
#: in a later task, and a closed transport frees its fd one loop turn later: 3 bursts).
FD_RESERVE = 512


def connection_limit(nofile: int | None = None) -> int:
    """The cap for a soft ``RLIMIT_NOFILE`` of ``nofile`` (default: this process's)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if nofile is None else nofile
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - FD_RESERVE, soft // 2))


class CappedSockSite(web.SockSite):
    """``web.SockSite`` whose connection count never exceeds ``limit`` (oldest closed)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, limit: int) -> None:
        super().__init__(runner, sock)
        self.limit = limit
        self.evicted = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site (SockSite.start without its server)
        server = self._runner.server
        assert isinstance(server, web.Server)

        def factory() -> Any:
            self._make_room(server)
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            factory, sock=self._sock, backlog=self._backlog
        )

    def _make_room(self, server: web.Server) -> None:
        open_now = server.connections  # oldest first (insertion order)
        excess = len(open_now) - self.limit + 1
        if excess <= 0:
            return
        for handler in open_now[:excess]:
            handler.force_close()
        self.evicted += excess
        log.warning(
            "status endpoint: %d connections open (the cap); closed the oldest",
            self.limit,
            extra={"event": "status-connections-capped", "evicted_total": self.evicted},
        )
