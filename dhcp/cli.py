"""``python -m dhcp serve``: run the embedded DHCP servers in the foreground (debugging).

Called by ``dhcp/__main__.py``. Argument parsing is split so other servers can plug in
additively: each ``add_*_arguments`` function adds its options to the ``serve``
parser (listed in ``ARGUMENT_ADDERS``), each ``build_*_servers`` function turns the
parsed arguments into zero or more servers (listed in ``SERVER_BUILDERS``), and
:func:`serve` runs every server in one ``asyncio.TaskGroup`` until SIGINT or SIGTERM,
then stops them all and returns (exit 0). DHCPv6 and router advertisements add their
``--lease6/--dns6/--ra`` options by appending to both lists.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import json
import logging
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from dhcp.errors import DhcpError
from dhcp.lifecycle import Server
from dhcp.v4 import options as o
from dhcp.v4.config import DEFAULT_LEASE_TIME, Dhcp4Config, Lease4, Pool4
from dhcp.v4.server import Dhcp4Server
from dhcp.v6.cli import add_v6_arguments, build_v6_servers

__all__ = [
    "main",
    "build_parser",
    "serve",
    "Server",
    "ARGUMENT_ADDERS",
    "SERVER_BUILDERS",
    "add_v4_arguments",
    "build_v4_servers",
]

log = logging.getLogger(__name__)
_SIOCGIFADDR = 0x8915


# --------------------------------------------------------------------- DHCPv4


def _lease(text: str) -> Lease4:
    mac, sep, rest = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"lease {text!r} is not MAC=ADDR/PREFIX[,HOSTNAME]")
    addr, _, hostname = rest.partition(",")
    try:
        if "/" not in addr:
            raise ValueError(f"lease address {addr!r} has no /PREFIX")
        return Lease4(mac=mac, address=IPv4Interface(addr), hostname=hostname or None)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _route(text: str) -> tuple[IPv4Network, IPv4Address]:
    cidr, sep, gateway = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"route {text!r} is not CIDR=GATEWAY")
        return IPv4Network(cidr), IPv4Address(gateway)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _pool(text: str) -> Pool4:
    span, _, prefix = text.partition("/")
    start, sep, end = span.partition("-")
    try:
        if not sep or not prefix:
            raise ValueError(f"pool {text!r} is not START-END/PREFIX")
        return Pool4(IPv4Address(start), IPv4Address(end), int(prefix))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _private(text: str) -> tuple[int, bytes]:
    code, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"option {text!r} is not CODE=HEX")
        num = int(code)
        if not o.PRIVATE_FIRST <= num <= o.PRIVATE_LAST:
            raise ValueError(f"option code {num} is not a private option (224-254)")
        return num, bytes.fromhex(value.replace(":", ""))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_v4_arguments(parser: argparse.ArgumentParser) -> None:
    """The DHCPv4 options of ``serve``."""
    g = parser.add_argument_group("DHCPv4")
    g.add_argument(
        "--lease",
        type=_lease,
        action="append",
        default=[],
        metavar="MAC=ADDR/PREFIX[,HOSTNAME]",
        help="static lease (repeatable)",
    )
    g.add_argument("--router", type=IPv4Address, help="default gateway (options 3 and 121)")
    g.add_argument(
        "--dns",
        type=IPv4Address,
        nargs="+",
        action="extend",
        default=[],
        help="DNS servers (option 6)",
    )
    g.add_argument(
        "--search", nargs="+", action="extend", default=[], help="search domains (option 119)"
    )
    g.add_argument("--domain", help="domain name (option 15)")
    g.add_argument("--hostname", help="hostname for every lease without its own (option 12)")
    g.add_argument("--mtu", type=int, help="interface MTU (option 26)")
    g.add_argument(
        "--route",
        type=_route,
        nargs="+",
        action="extend",
        default=[],
        metavar="CIDR=GW",
        help="extra classless static routes (option 121)",
    )
    g.add_argument(
        "--lease-time",
        type=int,
        default=DEFAULT_LEASE_TIME,
        help=f"lease time in seconds (default {DEFAULT_LEASE_TIME})",
    )
    g.add_argument(
        "--server-address",
        type=IPv4Address,
        help="server identifier and source address (default: the interface's "
        "primary IPv4 address, which should be link-local 169.254.x.y)",
    )
    g.add_argument(
        "--ntp",
        type=IPv4Address,
        nargs="+",
        action="extend",
        default=[],
        help="NTP servers (option 42)",
    )
    g.add_argument("--tftp-server", help="TFTP server name (option 66)")
    g.add_argument("--boot-file", help="boot file name (option 67)")
    g.add_argument(
        "--option",
        type=_private,
        action="append",
        default=[],
        metavar="CODE=HEX",
        help="private option 224-254 (repeatable)",
    )
    g.add_argument(
        "--pool",
        type=_pool,
        metavar="START-END/PREFIX",
        help="hand any MAC an address from this range (benchmarking)",
    )
    g.add_argument(
        "--allow-relay",
        action="store_true",
        help="answer relayed requests (giaddr set), e.g. from perfdhcp",
    )
    g.add_argument(
        "--rate-limit",
        type=float,
        default=20.0,
        metavar="PER_SECOND",
        help="requests per second per client MAC (burst twice that)",
    )


def _interface_address(interface: str) -> IPv4Address:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            req = struct.pack("256s", interface.encode()[:15])
            res = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)
        except OSError as err:
            raise DhcpError(
                f"interface {interface!r} has no IPv4 address; pass --server-address"
            ) from err
    return IPv4Address(res[20:24])


def build_v4_servers(args: argparse.Namespace) -> list[Server]:
    """A DHCPv4 server when any lease or pool was given."""
    if not args.lease and args.pool is None:
        return []
    server_address = args.server_address or _interface_address(args.interface)
    if not server_address.is_link_local:
        log.warning(
            "server address is not link-local 169.254.x.y",
            extra={"server_address": str(server_address)},
        )
    try:
        config = Dhcp4Config(
            interface=args.interface,
            server_address=server_address,
            leases=tuple(args.lease),
            router=args.router,
            dns=tuple(args.dns),
            search=tuple(args.search),
            domain=args.domain,
            hostname=args.hostname,
            mtu=args.mtu,
            routes=tuple(args.route),
            lease_time=args.lease_time,
            ntp=tuple(args.ntp),
            tftp_server=args.tftp_server,
            boot_file=args.boot_file,
            private_options=tuple(args.option),
            pool=args.pool,
            allow_relay=args.allow_relay,
            rate=args.rate_limit,
            burst=max(1, int(args.rate_limit * 2)),
        )
    except ValueError as err:
        raise DhcpError(str(err)) from err
    return [Dhcp4Server(config)]


# --------------------------------------------------------------------- common

ARGUMENT_ADDERS: list[Callable[[argparse.ArgumentParser], None]] = [add_v4_arguments]
SERVER_BUILDERS: list[Callable[[argparse.Namespace], list[Server]]] = [build_v4_servers]
ARGUMENT_ADDERS.append(add_v6_arguments)  # --lease6, --dns6, --ra... (dhcp.v6.cli)
SERVER_BUILDERS.append(build_v6_servers)


def build_parser() -> argparse.ArgumentParser:
    """``python -m dhcp`` with its ``serve`` subcommand and every registered option group."""
    parser = argparse.ArgumentParser(prog="python -m dhcp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run DHCP servers on one interface in the foreground")
    serve_p.add_argument("--interface", "-i", required=True, help="interface to serve")
    serve_p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    for add in ARGUMENT_ADDERS:
        add(serve_p)
    return parser


async def serve(servers: Sequence[Server]) -> None:
    """Run ``servers`` in one TaskGroup until SIGINT/SIGTERM; a failing server stops all."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_run(server), name=f"server-{i}-{type(server).__name__}")
                for i, server in enumerate(servers)
            ]
            await _first_of(stop, tasks)
            for task in tasks:
                task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run(server: Server) -> None:
    async with server:
        await server.serve()


async def _first_of(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class _JsonLines(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields.

    The same line shape as the launcher's (``launcher.logs``), written again here on
    purpose: ``dhcp`` stands alone and imports nothing from ``launcher``; inside the
    launcher the servers' records go through the launcher's own configuration.
    """

    _standard = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message",
        "asctime",
        "taskName",
    }

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in self._standard)
        return json.dumps(out, default=str, separators=(",", ":"))


def _configure_logging(level: str) -> None:
    """JSON lines on stderr at ``level`` (see :class:`_JsonLines`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dhcp``; returns the exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    failed = False
    try:
        servers: list[Server] = []
        for build in SERVER_BUILDERS:
            servers += build(args)
        if not servers:
            log.error("nothing to serve: give --lease or --pool")
            return 2
        gc.freeze()  # start-up objects out of the collector's way: steadier reply latency
        asyncio.run(serve(servers))
    except* DhcpError as group:
        for err in group.exceptions:
            log.error(str(err))
        failed = True
    if failed:
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
