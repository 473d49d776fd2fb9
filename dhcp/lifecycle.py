"""The one lifecycle every server of this package has: DHCPv4, DHCPv6 and RA alike.

Used by :class:`dhcp.v4.server.Dhcp4Server`, :class:`dhcp.v6.server.Dhcp6Server` and
:class:`dhcp.ra.RaServer`, and by their callers (the launcher's per-NIC owner,
``python -m dhcp``), which therefore never need to know which kind they hold::

    async with server:          # open(): sockets bound; ServerError if it cannot serve
        await server.serve()    # answer clients until cancelled (ServerError if a socket fails)
    # close(): async and idempotent; the RA server sends its final advert
    # (router lifetime 0) here, so guests drop the default route at once

``snapshot()`` gives the counters and recent events for the status endpoint at any time.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Server"]


class Server:
    """Base of the three servers: ``async with`` opens and closes, ``serve()`` serves."""

    __slots__ = ()

    async def open(self) -> None:
        """Bind the sockets on the configured interface (idempotent)."""
        raise NotImplementedError

    async def serve(self) -> None:
        """Answer clients until cancelled; the server must be open."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop serving and release the sockets (idempotent)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
