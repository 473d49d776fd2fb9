"""``python -m dhcp serve`` argument handling and failure exit codes (no network needed)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from dhcp.cli import build_parser, build_v4_servers, main
from dhcp.v4.server import Dhcp4Server


def test_arguments_build_one_v4_server_with_everything() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--interface",
            "lo",
            "--server-address",
            "169.254.75.1",
            "--lease",
            "02:D4:00:00:00:02=10.244.1.5/24,vm1",
            "--lease",
            "02:d4:00:00:00:03=10.244.1.6/24",
            "--router",
            "10.244.1.1",
            "--dns",
            "10.96.0.10",
            "10.96.0.11",
            "--search",
            "a.example",
            "b.example",
            "--domain",
            "example",
            "--hostname",
            "guest",
            "--mtu",
            "1400",
            "--route",
            "10.96.0.0/12=10.244.1.1",
            "--lease-time",
            "3600",
            "--ntp",
            "10.0.0.5",
            "--tftp-server",
            "tftp",
            "--boot-file",
            "pxelinux.0",
            "--option",
            "240=0a0b",
            "--allow-relay",
        ]
    )
    (server,) = build_v4_servers(args)
    assert isinstance(server, Dhcp4Server)
    cfg = server.config
    assert cfg.leases[0].mac == "02:d4:00:00:00:02" and cfg.leases[0].hostname == "vm1"
    assert cfg.leases[1].address == IPv4Interface("10.244.1.6/24")
    assert cfg.dns == (IPv4Address("10.96.0.10"), IPv4Address("10.96.0.11"))
    assert cfg.search == ("a.example", "b.example")
    assert cfg.routes == ((IPv4Network("10.96.0.0/12"), IPv4Address("10.244.1.1")),)
    assert (cfg.mtu, cfg.lease_time, cfg.allow_relay) == (1400, 3600, True)
    assert cfg.private_options == ((240, b"\x0a\x0b"),)


@pytest.mark.parametrize(
    "bad",
    [
        ["--lease", "02:d4:00:00:00:02=10.244.1.5"],  # no prefix
        ["--lease", "nonsense"],
        ["--route", "10.0.0.0/8"],
        ["--pool", "10.0.0.9-10.0.0.1/24"],
        ["--option", "100=00"],
    ],
)
def test_bad_arguments_exit_2(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--interface", "lo", *bad])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_nothing_to_serve_exits_2() -> None:
    assert main(["serve", "--interface", "lo", "--log-level", "error"]) == 2


def test_missing_interface_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "serve",
            "--interface",
            "d4-nope",
            "--server-address",
            "169.254.75.1",
            "--lease",
            "02:d4:00:00:00:02=10.244.1.5/24",
        ]
    )
    assert code == 1
    assert "d4-nope" in capsys.readouterr().err
