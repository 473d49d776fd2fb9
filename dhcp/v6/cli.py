"""Command-line pieces for DHCPv6 and router advertisements.

``dhcp.cli`` (``python -m dhcp serve``) calls :func:`add_arguments` to add the v6
flags to its ``serve`` parser and :func:`build` to turn parsed arguments into
servers it runs in its one TaskGroup. ``python -m dhcp.v6 serve`` (:func:`main`) runs
only the v6 half with the same flags, for tests and debugging.

Flags: ``--lease6 MAC_OR_DUID=ADDR/PREFIX`` (repeatable), ``--dns6 ADDR``,
``--search NAME`` (shared with v4), ``--ra`` with ``--ra-prefix``,
``--ra-interval``, ``--ra-lifetime``, ``--ra-slaac`` and ``--mtu`` (shared),
``--server-duid-file PATH``, ``--no-rapid-commit``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dhcp.errors import DhcpError
from dhcp.ra import RaConfig, RaServer
from dhcp.v6.lease import Config6, parse_lease6
from dhcp.v6.server import Dhcp6Server

__all__ = ["add_arguments", "build", "V6Servers", "main"]

log = logging.getLogger(__name__)


def _add(group: argparse._ActionsContainer, flag: str, **kwargs: object) -> None:
    """Add ``flag`` unless the parser already has it (shared v4/v6 flags)."""
    parser_flags = getattr(group, "_option_string_actions", {})
    if flag in parser_flags:
        return
    group.add_argument(flag, **kwargs)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the DHCPv6 and RA flags to a ``serve`` parser (idempotent for shared flags)."""
    _add(parser, "--interface", help="interface to serve on")
    _add(
        parser,
        "--lease6",
        action="append",
        default=[],
        metavar="MAC_OR_DUID=ADDR/PREFIX",
        help="static DHCPv6 lease (repeatable)",
    )
    _add(
        parser,
        "--dns6",
        action="append",
        default=[],
        metavar="ADDR",
        help="IPv6 DNS server for DHCPv6 option 23 and RDNSS (repeatable)",
    )
    _add(
        parser,
        "--search",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="DNS search domain (repeatable)",
    )
    _add(parser, "--mtu", type=int, default=None, help="link MTU to announce")
    _add(parser, "--ra", action="store_true", help="send router advertisements")
    _add(
        parser,
        "--ra-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="on-link prefix to advertise (default: the --lease6 prefixes)",
    )
    _add(
        parser,
        "--ra-interval",
        type=float,
        default=200.0,
        help="seconds between unsolicited RAs after the first fast ones",
    )
    _add(parser, "--ra-lifetime", type=int, default=1800, help="router lifetime in seconds")
    _add(
        parser,
        "--ra-slaac",
        action="store_true",
        help="let the guest autoconfigure (A=1, M=0) instead of DHCPv6 addresses",
    )
    _add(
        parser,
        "--server-duid-file",
        type=Path,
        default=None,
        help="keep a DUID-UUID here instead of deriving DUID-LL from the interface MAC",
    )
    _add(
        parser,
        "--no-rapid-commit",
        action="store_true",
        help="always answer SOLICIT with ADVERTISE",
    )


@dataclass(frozen=True, slots=True)
class V6Servers:
    """The v6 servers built from arguments (either may be absent)."""

    dhcp6: Dhcp6Server | None
    ra: RaServer | None

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Open the sockets and start the serving tasks in ``tg``."""
        if self.dhcp6 is not None:
            await self.dhcp6.open()
            tg.create_task(self.dhcp6.serve(), name=f"dhcp6-{self.dhcp6.config.interface}")
        if self.ra is not None:
            await self.ra.open()
            tg.create_task(self.ra.serve(), name=f"ra-{self.ra.config.interface}")

    def close(self) -> None:
        """Send the final RA (router lifetime 0) and close every socket."""
        if self.ra is not None:
            self.ra.close(final=True)
        if self.dhcp6 is not None:
            self.dhcp6.close()


def build(args: argparse.Namespace) -> V6Servers:
    """Servers for the parsed flags; raises ValueError naming a bad flag value."""
    if not args.interface:
        raise ValueError("--interface is required")
    leases = tuple(parse_lease6(text) for text in args.lease6)
    dns = tuple(ipaddress.IPv6Address(a) for a in args.dns6)
    search = tuple(args.search)
    dhcp6 = None
    if leases or dns or search:
        dhcp6 = Dhcp6Server(
            Config6(
                interface=args.interface,
                leases=leases,
                dns=dns,
                search=search,
                rapid_commit=not args.no_rapid_commit,
                state_file=args.server_duid_file,
            )
        )
    ra = None
    if args.ra:
        prefixes = tuple(ipaddress.IPv6Network(p, strict=False) for p in args.ra_prefix) or tuple(
            dict.fromkeys(le.address.network for le in leases if le.address.network.prefixlen < 128)
        )
        ra = RaServer(
            RaConfig(
                interface=args.interface,
                prefixes=prefixes,
                managed=not args.ra_slaac and bool(leases),
                other=bool(dns or search),
                autonomous=args.ra_slaac,
                router_lifetime=args.ra_lifetime,
                interval=args.ra_interval,
                initial_interval=min(4.0, args.ra_interval),
                mtu=args.mtu,
                rdnss=dns,
                dnssl=search,
            )
        )
    return V6Servers(dhcp6, ra)


async def _serve(servers: V6Servers) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            await servers.run(tg)
            waiter = tg.create_task(stop.wait(), name="dhcp6-stop")
            await waiter
            raise _Stop
    except* _Stop:
        pass
    finally:
        servers.close()


class _Stop(Exception):
    """Internal: unwinds the TaskGroup on SIGTERM/SIGINT."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dhcp.v6 serve ...``: serve DHCPv6 and/or RAs until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m dhcp.v6")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve DHCPv6/RA on one interface")
    serve.add_argument("--log-level", default="info")
    add_arguments(serve)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        servers = build(args)
    except ValueError as err:
        parser.error(str(err))
    rc = 0
    try:
        asyncio.run(_serve(servers))
    except* DhcpError as group:
        for exc in group.exceptions:
            log.error("%s", exc)
        rc = 1
    return rc
