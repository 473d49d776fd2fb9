"""The link refresh's decisions (pure): which pod address changes re-plan a NIC and
refresh its link and which do not; the re-plan itself (real plans from
``launcher.network``); the rtnetlink decoder; the snapshot that exit restores."""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import replace

import pytest

from launcher.hotplug.refresh import RefreshAction, decide, not_followed, relevant
from launcher.network import NicPlan, PlanOptions, plan
from launcher.network.addrwatch import (
    RTM_DELADDR,
    RTM_NEWADDR,
    AddressEvent,
    LinkAddresses,
    decode,
)
from launcher.network.netlink import Address
from launcher.network.plan import plan_interface
from launcher.network.state import LinkSnapshot
from launcher.network.transaction import follow_original
from launcher.spec.model import Bridge, ManagedTap, Masquerade
from tests.unit.network.helpers import pod_link, pod_state, vm_spec

V4 = ipaddress.IPv4Interface
V6 = ipaddress.IPv6Interface
OLD4, NEW4 = V4("10.244.1.5/24"), V4("10.244.1.7/24")
OLD6, NEW6 = V6("fd00:10:244:1::5/64"), V6("fd00:10:244:1::7/64")


def bridge_nic(**link: object) -> NicPlan:
    (nic,) = plan(vm_spec(Bridge()), pod_state(pod_link(**link))).nics  # type: ignore[arg-type]
    return nic


def now(*addresses: V4 | V6) -> LinkAddresses:
    return LinkAddresses(
        tuple(a for a in addresses if isinstance(a, V4)),
        tuple(a for a in addresses if isinstance(a, V6)),
    )


def test_a_new_ipv4_address_refreshes_and_keeps_the_ipv6_one() -> None:
    nic = bridge_nic()
    d = decide(nic, now(NEW4))
    assert d.action is RefreshAction.REFRESH
    assert d.old == (OLD4, OLD6) and d.new == (NEW4, OLD6)
    assert d.addresses4 == (NEW4,) and d.addresses6 == (OLD6,)
    assert d.reason == "10.244.1.7/24 appeared on pod interface eth0"


def test_a_new_ipv6_address_alone_refreshes() -> None:
    d = decide(bridge_nic(), now(NEW6))
    assert d.action is RefreshAction.REFRESH and d.new == (OLD4, NEW6)


def test_a_new_prefix_length_is_a_change() -> None:
    d = decide(bridge_nic(), now(V4("10.244.1.5/16")))
    assert d.action is RefreshAction.REFRESH and d.new[0] == V4("10.244.1.5/16")


def test_the_same_address_put_back_is_only_moved_off() -> None:
    d = decide(bridge_nic(), now(OLD4))
    assert d.action is RefreshAction.MOVE and d.old == d.new == (OLD4, OLD6)
    assert "the guest already has it" in d.reason


def test_a_second_address_after_the_guest_s_own_is_moved_without_refresh() -> None:
    d = decide(bridge_nic(), now(OLD4, NEW4))
    assert d.action is RefreshAction.MOVE and d.addresses4 == (OLD4, NEW4)


def test_no_address_on_the_pod_interface_is_nothing() -> None:
    assert decide(bridge_nic(), now()).action is RefreshAction.NONE


def test_a_family_the_pod_did_not_have_is_served_from_now_on() -> None:
    nic = bridge_nic(v6=None, gw6=None)
    assert nic.dhcp6 is None
    d = decide(nic, now(NEW6))
    assert d.action is RefreshAction.REFRESH and d.old == (OLD4,) and d.new == (OLD4, NEW6)


@pytest.mark.parametrize(
    ("binding", "why"),
    [
        (Masquerade(), "the pod keeps its addresses"),
        (ManagedTap(), "the CNI's own DHCP server"),
    ],
)
def test_other_bindings_never_follow(binding: Masquerade | ManagedTap, why: str) -> None:
    (nic,) = plan(vm_spec(binding), pod_state()).nics
    d = decide(nic, now(NEW4))
    assert d.action is RefreshAction.NONE and why in d.reason
    assert not_followed(nic) == d.reason


def test_a_bridge_without_ipam_serves_nothing_and_never_follows() -> None:
    # a Multus network without IPAM: plain L2, nothing served (bindings/bridge.py)
    nic = replace(bridge_nic(), dhcp4=None, dhcp6=None, ra=None)
    assert decide(nic, now(NEW4)).action is RefreshAction.NONE
    assert not_followed(nic) == "no DHCP is served on this interface"


def test_the_replanned_nic_serves_and_admits_the_new_address_under_the_same_names() -> None:
    spec = vm_spec(Bridge())
    nic = bridge_nic()
    d = decide(nic, now(NEW4))
    pod = pod_state(pod_link(v4=str(NEW4)))
    new = plan_interface(spec, pod, PlanOptions(), nic.name, at=nic.index)
    assert isinstance(new, NicPlan)
    assert (new.index, new.bridge, new.tap, new.device) == (
        nic.index,
        nic.bridge,
        nic.tap,
        nic.device,
    )
    assert new.dhcp4 is not None and new.dhcp4.leases[0].address == NEW4
    assert new.guest_ipv4 == NEW4 and new.original.addresses4 == d.addresses4
    assert new.pod_port is not None and NEW4 in new.pod_port.remove_addresses
    rules = "\n".join(new.nft.bridge_prerouting)
    assert "10.244.1.7" in rules and "10.244.1.5" not in rules
    assert decide(new, now(NEW4)).action is RefreshAction.MOVE  # followed: now the same


def test_planning_at_another_index_renames_the_links() -> None:
    nic = bridge_nic()
    moved = plan_interface(vm_spec(Bridge()), pod_state(), PlanOptions(), nic.name, at=3)
    assert isinstance(moved, NicPlan) and moved.index == 3 and moved.tap.name == "vltap3"


# ---- which notifications matter ------------------------------------------------------


def ev(
    kind: int = RTM_NEWADDR, index: int = 7, address: str = "10.0.0.5/24", scope: int = 0
) -> AddressEvent:
    addr = ipaddress.ip_interface(address)
    return AddressEvent(kind, index, addr, scope, 0)


def test_only_an_added_global_address_on_a_watched_link_is_relevant() -> None:
    watched = frozenset({7})
    assert relevant([ev()], watched)
    assert relevant(None, watched)  # events were lost: look
    assert not relevant([], watched)
    assert not relevant([ev(RTM_DELADDR)], watched)  # our own move, a removal
    assert not relevant([ev(index=8)], watched)  # another link (the bridge)
    assert not relevant([ev(address="fe80::1/64", scope=253)], watched)
    assert not relevant([ev(scope=254)], watched)  # host scope


# ---- the rtnetlink decoder ------------------------------------------------------------


def _rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_decode_reads_addresses_flags_and_the_end_of_a_dump() -> None:
    v4 = _msg(
        RTM_NEWADDR,
        struct.pack("=BBBBI", socket.AF_INET, 24, 0x80, 0, 3)
        + _rta(1, bytes([10, 0, 0, 1]))
        + _rta(2, bytes([10, 0, 0, 5]))
        + _rta(8, struct.pack("=I", 0x280)),
    )
    v6 = _msg(
        RTM_DELADDR,
        struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 3)
        + _rta(1, ipaddress.IPv6Address("fd00::5").packed),
    )
    other = _msg(16, b"\0" * 16)  # RTM_NEWLINK: skipped
    done = _msg(3, struct.pack("=i", 0))
    events, finished = decode(v4 + other + v6 + done)
    assert finished
    assert events == [
        AddressEvent(RTM_NEWADDR, 3, V4("10.0.0.5/24"), 0, 0x280),  # IFA_LOCAL, IFA_FLAGS
        AddressEvent(RTM_DELADDR, 3, V6("fd00::5/64"), 0, 0),
    ]
    truncated, finished = decode(v4[:-6])
    assert truncated == [] and not finished


def test_decode_raises_the_error_a_dump_request_got() -> None:
    with pytest.raises(OSError, match="rtnetlink"):
        decode(_msg(2, struct.pack("=i", -1) + b"\0" * 16))


# ---- what exit gives back -------------------------------------------------------------


def snapshot(*addresses: Address) -> LinkSnapshot:
    return LinkSnapshot("eth0", "0a:58:0a:f4:01:05", 1450, True, None, addresses, ())


def test_exit_restores_the_cni_s_new_address_and_keeps_the_rest() -> None:
    kept4 = Address(OLD4, flags=0x80, broadcast=ipaddress.ip_address("10.244.1.255"))
    kept6 = Address(OLD6, flags=0x80)
    snap = snapshot(kept4, kept6)
    same = follow_original(snap, pod_link())
    assert same is snap  # a restart with the same addresses changes nothing
    moved = follow_original(snap, pod_link(v4=str(NEW4)))
    assert moved.addresses == (Address(NEW4), kept6)
    both = follow_original(snap, pod_link(v4=str(NEW4), v6=str(NEW6)))
    assert both.addresses == (Address(NEW4), Address(NEW6, flags=0x02))
    assert (both.mac, both.routes, both.up) == (snap.mac, snap.routes, snap.up)
