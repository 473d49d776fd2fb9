"""Command-line pieces for DHCPv6 and router advertisements.

``dhcp.cli`` (``python -m dhcp serve``) lists :func:`add_v6_arguments` in its
``ARGUMENT_ADDERS`` and :func:`build_v6_servers` in its ``SERVER_BUILDERS``, so the v4
and v6 servers run side by side in its one TaskGroup.

Flags: ``--lease6 MAC_OR_DUID=ADDR/PREFIX`` (repeatable), ``--dns6 ADDR...``,
``--search NAME...`` (shared with v4), ``--ra`` with ``--ra-prefix``,
``--ra-interval``, ``--ra-lifetime``, ``--ra-slaac`` and ``--mtu`` (shared),
``--server-duid-file PATH``, ``--no-rapid-commit``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from dhcp.errors import DhcpError
from dhcp.lifecycle import Server
from dhcp.ra import RaConfig, RaServer
from dhcp.ratelimit import RateLimiter
from dhcp.v6.lease import Config6, parse_lease6
from dhcp.v6.server import Dhcp6Server

__all__ = ["add_v6_arguments", "build_v6_servers", "Server"]

log = logging.getLogger(__name__)


def _add(
    parser: argparse.ArgumentParser,
    group: argparse._ArgumentGroup,
    flag: str,
    **kwargs: object,
) -> None:
    """Add ``flag`` unless the parser already has it (``--search``/``--mtu`` are shared)."""
    if flag in parser._option_string_actions:
        return
    group.add_argument(flag, **kwargs)  # type: ignore[arg-type]


def add_v6_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the DHCPv6 and RA flags to a ``serve`` parser (skips shared flags already there)."""
    group = parser.add_argument_group("DHCPv6 and router advertisements")
    _add(
        parser,
        group,
        "--lease6",
        action="append",
        default=[],
        metavar="MAC_OR_DUID=ADDR/PREFIX",
        help="static DHCPv6 lease (repeatable)",
    )
    _add(
        parser,
        group,
        "--dns6",
        nargs="+",
        action="extend",
        default=[],
        metavar="ADDR",
        help="IPv6 DNS server for DHCPv6 option 23 and RDNSS (repeatable)",
    )
    _add(
        parser,
        group,
        "--search",
        nargs="+",
        action="extend",
        default=[],
        metavar="DOMAIN",
        help="DNS search domain (repeatable)",
    )
    _add(parser, group, "--mtu", type=int, default=None, help="link MTU to announce")
    _add(parser, group, "--ra", action="store_true", help="send router advertisements")
    _add(
        parser,
        group,
        "--ra-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="on-link prefix to advertise (default: the --lease6 prefixes)",
    )
    _add(
        parser,
        group,
        "--ra-interval",
        type=float,
        default=200.0,
        help="seconds between unsolicited RAs after the first fast ones",
    )
    _add(parser, group, "--ra-lifetime", type=int, default=1800, help="router lifetime in seconds")
    _add(
        parser,
        group,
        "--ra-slaac",
        action="store_true",
        help="let the guest autoconfigure (A=1, M=0) instead of DHCPv6 addresses",
    )
    _add(
        parser,
        group,
        "--server-duid-file",
        type=Path,
        default=None,
        help="keep a DUID-UUID here instead of deriving DUID-LL from the interface MAC",
    )
    _add(
        parser,
        group,
        "--no-rapid-commit",
        action="store_true",
        help="always answer SOLICIT with ADVERTISE",
    )


def build_v6_servers(args: argparse.Namespace) -> list[Server]:
    """A DHCPv6 server (leases, DNS or search given) and an RA sender (``--ra``)."""
    try:
        return _build(args)
    except ValueError as err:
        raise DhcpError(str(err)) from err


def _build(args: argparse.Namespace) -> list[Server]:
    leases = tuple(parse_lease6(text) for text in args.lease6)
    dns = tuple(ipaddress.IPv6Address(a) for a in args.dns6)
    search = tuple(args.search)
    rate = float(getattr(args, "rate_limit", 10.0))  # dhcp.cli's shared --rate-limit
    dhcp6: Dhcp6Server | None = None
    if leases or dns:
        dhcp6 = Dhcp6Server(
            Config6(
                interface=args.interface,
                leases=leases,
                dns=dns,
                search=search,
                rapid_commit=not args.no_rapid_commit,
            ),
            duid_file=args.server_duid_file,
            limiter=RateLimiter(rate=rate, burst=max(1, int(rate * 2))),
        )
    ra: RaServer | None = None
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
    out: list[Server] = []
    if dhcp6 is not None:
        out.append(dhcp6)
    if ra is not None:
        out.append(ra)
    return out
