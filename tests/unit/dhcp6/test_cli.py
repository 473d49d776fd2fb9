"""``python -m dhcp serve`` v6 flags → servers (no sockets opened)."""

from __future__ import annotations

import ipaddress

import pytest

from dhcp.cli import build_parser
from dhcp.errors import DhcpError
from dhcp.ra import RaServer
from dhcp.v6.cli import build_v6_servers
from dhcp.v6.server import Dhcp6Server


def _build(*argv: str) -> list[object]:
    args = build_parser().parse_args(["serve", "-i", "d6x", *argv])
    return list(build_v6_servers(args))


def test_full_flag_set() -> None:
    dhcp6, ra = _build(
        "--lease6", "52:54:00:12:34:56=fd10:0:2::2/120", "--dns6", "fd00::53", "fd00::54",
        "--search", "svc.cluster.local", "cluster.local", "--ra", "--mtu", "1450",
        "--ra-interval", "60", "--ra-lifetime", "600", "--rate-limit", "5",
    )  # fmt: skip
    assert isinstance(dhcp6, Dhcp6Server) and isinstance(ra, RaServer)
    assert dhcp6.config.leases[0].mac == "52:54:00:12:34:56"
    assert [str(a) for a in dhcp6.config.dns] == ["fd00::53", "fd00::54"]
    assert dhcp6.config.search == ("svc.cluster.local", "cluster.local")
    assert dhcp6.limiter.rate == 5.0
    cfg = ra.config
    assert cfg.prefixes == (ipaddress.IPv6Network("fd10:0:2::/120"),)
    assert (cfg.managed, cfg.other, cfg.autonomous) == (True, True, False)
    assert (cfg.mtu, cfg.interval, cfg.router_lifetime) == (1450, 60.0, 600)
    assert cfg.dnssl == ("svc.cluster.local", "cluster.local")


def test_slaac_mode_and_no_v6_flags() -> None:
    [ra] = _build("--ra", "--ra-slaac", "--ra-prefix", "fd00:1::/64")
    assert isinstance(ra, RaServer)
    assert (ra.config.managed, ra.config.other, ra.config.autonomous) == (False, False, True)
    assert _build("--lease", "52:54:00:12:34:56=10.0.2.2/24") == []


@pytest.mark.parametrize(
    "argv",
    [
        ("--lease6", "52:54:00:12:34:56=10.0.0.1/24"),
        ("--dns6", "10.0.0.1"),
        ("--ra", "--ra-lifetime", "99999"),
    ],
)
def test_bad_values_are_dhcp_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(DhcpError):
        _build(*argv)
