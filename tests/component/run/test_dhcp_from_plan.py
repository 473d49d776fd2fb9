"""A NIC owner's servers serve the plan's DHCP/RA configuration as is (``launcher.nics``).

Plans come from the real planner (example specs against the documented synthetic pod of
``virt-launcher plan --offline``); the DHCPv4 answer is decided by the server's real
responder and the DHCPv6 lease by the real server core, so a mapping mistake (wrong MAC,
address, router or prefix) shows up as a wrong answer, not just a wrong field.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from dhcp.v4 import options as o
from dhcp.v4.codec import Message, parse
from launcher.network import PlanOptions, plan
from launcher.network.plan import NicPlan
from launcher.nics import _make_servers
from launcher.plandoc import synthetic_pod
from launcher.spec import load

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def nic_of(example: str) -> NicPlan:
    spec = load(EXAMPLES / example)
    return plan(spec, synthetic_pod(spec), PlanOptions()).nics[0]


def dhcp_servers(nic: NicPlan, state_dir: Path) -> tuple[Any, Any, Any]:
    made = dict(_make_servers(nic, state_dir))
    return made.get("dhcp4"), made.get("dhcp6"), made.get("ra")


def discover(mac: str) -> Message:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    request = Message(
        op=1,
        xid=0x1234,
        chaddr=chaddr,
        options=((o.MESSAGE_TYPE, bytes([o.DISCOVER])),),
    )
    return parse(request.build())


@pytest.mark.parametrize(
    ("example", "guest4"),
    [("demo-vm.yaml", "10.244.1.5/24"), ("kubevirt-masquerade-dual-stack.yaml", "10.0.2.2/24")],
)
def test_dhcp4_offers_the_planned_address_to_the_guest_mac(
    example: str, guest4: str, tmp_path: Path
) -> None:
    nic = nic_of(example)
    d4, _, _ = dhcp_servers(nic, tmp_path)
    assert d4 is not None and nic.dhcp4 is not None
    assert d4.config is nic.dhcp4  # consumed as planned, not rebuilt
    assert d4.config.interface == nic.bridge.name
    decision = d4.responder.decide(discover(nic.device.mac))
    assert decision.event == "offer"
    assert decision.reply is not None
    assert str(ipaddress.IPv4Interface(f"{decision.reply.yiaddr}/{guest4.split('/')[1]}")) == guest4
    assert nic.dhcp4.router is not None
    assert decision.reply.option(o.ROUTER) == nic.dhcp4.router.packed
    mtu = decision.reply.option(o.INTERFACE_MTU)
    assert mtu is not None and int.from_bytes(mtu, "big") == nic.dhcp4.mtu
    stranger = d4.responder.decide(discover("02:00:00:00:99:99"))
    assert stranger.event != "offer"


def test_dhcp6_and_ra_follow_the_plan(tmp_path: Path) -> None:
    nic = nic_of("demo-vm.yaml")
    _, d6, ra = dhcp_servers(nic, tmp_path)
    assert d6 is not None and ra is not None and nic.dhcp6 is not None and nic.ra is not None
    assert d6.config is nic.dhcp6 and ra.config is nic.ra
    (lease,) = d6.config.leases
    assert lease.mac == nic.device.mac
    assert lease.address == ipaddress.IPv6Interface("fd00:10:244:1::5/64")
    assert d6.duid_file == tmp_path / f"dhcp6-duid-{nic.pod_interface}"
    assert ra.config.interface == nic.bridge.name
    assert ra.config.prefixes == (ipaddress.IPv6Network("fd00:10:244:1::/64"),)
    assert ra.config.router_lifetime > 0
    assert ra.config.managed and not ra.config.autonomous


def test_plan_without_ipv6_has_no_dhcp6_or_ra(tmp_path: Path) -> None:
    nic = nic_of("virtink-pod-masquerade.yaml")
    d4, d6, ra = dhcp_servers(nic, tmp_path)
    assert d4 is not None
    assert (d6 is None) == (nic.dhcp6 is None) and (ra is None) == (nic.ra is None)
