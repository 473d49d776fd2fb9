"""The three servers of ``dhcp`` share one lifecycle (dhcp/lifecycle.py): ``async with``
opens and closes, ``serve()`` serves an open server until cancelled, ``close()`` is
async and idempotent. A caller never needs to know which kind it holds."""

from __future__ import annotations

import inspect
from ipaddress import IPv4Address, IPv6Network

import pytest

from dhcp.errors import ServerError
from dhcp.lifecycle import Server
from dhcp.ra import RaConfig, RaServer
from dhcp.v4.config import Dhcp4Config
from dhcp.v4.server import Dhcp4Server
from dhcp.v6.lease import Config6
from dhcp.v6.server import Dhcp6Server

SERVERS = [
    lambda: Dhcp4Server(
        Dhcp4Config(interface="lc-none", server_address=IPv4Address("169.254.0.1"))
    ),
    lambda: Dhcp6Server(Config6(interface="lc-none", leases=(), server_duid=b"\0\3x")),
    lambda: RaServer(RaConfig(interface="lc-none", prefixes=(IPv6Network("fd00::/64"),))),
]


@pytest.mark.parametrize("make", SERVERS, ids=["dhcp4", "dhcp6", "ra"])
async def test_one_shape(make: object) -> None:
    server = make()  # type: ignore[operator]
    assert isinstance(server, Server)
    for name in ("open", "serve", "close", "__aenter__", "__aexit__"):
        assert inspect.iscoroutinefunction(getattr(server, name)), name
    with pytest.raises(ServerError, match="not open"):
        await server.serve()
    await server.close()  # closing a server that never opened is fine
    await server.close()
    with pytest.raises(ServerError, match="lc-none"):
        async with server:
            pass
