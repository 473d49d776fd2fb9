"""RaServer's solicitation handling and advert building; the socket send is the faked
boundary (recorded), the real socket path is covered by tests/integration/dhcp6."""

from __future__ import annotations

import ipaddress

import pytest

from dhcp.ra import RaConfig, RaServer, build_advert, encode_ra, parse_ra
from dhcp.ratelimit import RateLimiter

RS_SLLA = b"\x85\x00\x00\x00" + bytes(4) + b"\x01\x01" + bytes.fromhex("525400123456")
RS_BARE = b"\x85\x00\x00\x00" + bytes(4)


class RecordingRa(RaServer):
    """RaServer whose sends are recorded instead of written to a socket."""

    def _send(self, dest: str, *, final: bool = False) -> None:
        self.sent.append((dest, final))


@pytest.fixture
def ra() -> tuple[RaServer, list[tuple[str, bool]]]:
    server = RecordingRa(RaConfig("d6x", prefixes=(ipaddress.IPv6Network("fd00:6::/64"),)))
    server.sent = []  # type: ignore[attr-defined]
    return server, server.sent  # type: ignore[attr-defined]


def test_only_hop_limit_255_is_answered(ra: tuple[RaServer, list[tuple[str, bool]]]) -> None:
    server, sent = ra
    server.solicitation(RS_SLLA, "fe80::99", 64)
    assert sent == [] and server.snapshot().ignored == 1
    server.solicitation(RS_SLLA, "fe80::99", 255)
    assert sent == [("fe80::99", False)] and server.snapshot().solicits == 1


def test_unspecified_source_gets_rate_limited_multicast(
    ra: tuple[RaServer, list[tuple[str, bool]]],
) -> None:
    server, sent = ra
    server.solicitation(RS_BARE, "::", 255)
    server.solicitation(RS_BARE, "::", 255)
    assert sent == [("ff02::1", False)]
    server.solicitation(RS_SLLA, "::", 255)  # RFC 4861: SLLA must not come from ::
    assert server.snapshot().malformed == 1


def test_flood_and_garbage(ra: tuple[RaServer, list[tuple[str, bool]]]) -> None:
    server, sent = ra
    server.limiter = RateLimiter(rate=0.001, burst=2)
    for _ in range(5):
        server.solicitation(RS_SLLA, "fe80::99", 255)
    server.solicitation(b"\x85\x00", "fe80::99", 255)
    snap = server.snapshot()
    assert (len(sent), snap.rate_limited, snap.malformed) == (2, 3, 1)


def test_final_advert_withdraws_route_and_dns() -> None:
    cfg = RaConfig(
        "d6x",
        prefixes=(ipaddress.IPv6Network("fd00:6::/64"),),
        rdnss=(ipaddress.IPv6Address("fd00:6::53"),),
        dnssl=("cluster.local",),
        mtu=1450,
    )
    normal = parse_ra(encode_ra(build_advert(cfg, "02:00:00:00:00:01")))
    final = parse_ra(encode_ra(build_advert(cfg, "02:00:00:00:00:01", final=True)))
    assert (normal.router_lifetime, normal.rdnss_lifetime) == (1800, 600)
    assert (final.router_lifetime, final.rdnss_lifetime, final.dnssl_lifetime) == (0, 0, 0)
    assert normal.managed and normal.other and not normal.prefixes[0].autonomous


@pytest.mark.parametrize("kwargs", [{"router_lifetime": 9001}, {"interval": 0.0}, {"mtu": 1000}])
def test_config_rejects_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="outside"):
        RaConfig("d6x", **kwargs)  # type: ignore[arg-type]
