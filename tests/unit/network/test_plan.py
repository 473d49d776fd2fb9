"""plan() is pure: bridge and masquerade plans from hand-built PodState values."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import pytest

from launcher.errors import NetworkError, SpecError
from launcher.network import PlanOptions, plan
from launcher.network.discover import PodLink
from launcher.network.netlink import Route
from launcher.network.plan import ISTIO_PORTS, link_local_from_mac, served_options
from launcher.spec.model import (
    Bridge,
    Cpu,
    DhcpOptions,
    DhcpPrivateOption,
    Interface,
    InterfaceState,
    Masquerade,
    MultusNetwork,
    Network,
    Port,
    Protocol,
    Sriov,
    Vdpa,
)

from .helpers import POD_MAC, pod_link, pod_state, vm_spec


def test_bridge_guest_takes_pod_mac_and_addresses() -> None:
    p = plan(vm_spec(), pod_state())
    nic = p.nics[0]
    assert nic.device.mac == POD_MAC and nic.device.mtu == 1450 and nic.device.tap == "vltap0"
    assert nic.pod_port is not None and nic.pod_port.new_mac not in (None, POD_MAC)
    new_mac = nic.pod_port.new_mac
    assert new_mac is not None and int(new_mac[:2], 16) & 0x03 == 0x02  # local, unicast
    assert nic.pod_port.learning is False
    assert nic.dhcp4 is not None and str(nic.dhcp4.leases[0].address) == "10.244.1.5/24"
    assert nic.dhcp4.leases[0].mac == POD_MAC
    assert str(nic.dhcp4.server_address) == "169.254.75.10"
    assert [str(a) for a in nic.dhcp4.dns] == ["10.96.0.10"]
    assert nic.dhcp4.search[0] == "ns.svc.cluster.local" and nic.dhcp4.mtu == 1450
    assert nic.dhcp4.hostname == "vm-pod"
    assert nic.dhcp6 is not None and str(nic.dhcp6.leases[0].address) == "fd00:10:244:1::5/64"
    assert nic.dhcp6.leases[0].mac == POD_MAC
    assert nic.ra is not None and nic.ra.mtu == 1450 and nic.ra.router_lifetime > 0
    assert [str(x) for x in nic.ra.prefixes] == ["fd00:10:244:1::/64"]
    assert [str(a) for a in nic.ra.rdnss] == ["fd00:10:96::a"]
    assert nic.bridge.mac not in (POD_MAC, new_mac)


def test_bridge_spec_mac_keeps_pod_mac() -> None:
    spec = vm_spec(Bridge())
    spec = replace(spec, interfaces=(replace(spec.interfaces[0], mac="02:aa:bb:cc:dd:ee"),))
    nic = plan(spec, pod_state()).nics[0]
    assert nic.device.mac == "02:aa:bb:cc:dd:ee"
    assert nic.pod_port is not None and nic.pod_port.new_mac is None
    assert "ether saddr != 02:aa:bb:cc:dd:ee drop" in " ".join(nic.nft.bridge_prerouting)


def test_bridge_nft_blocks_dhcp_and_spoofing() -> None:
    p = plan(vm_spec(), pod_state())
    text = p.nftables
    assert text.startswith("table bridge virt_launcher\ndelete table bridge virt_launcher\n")
    assert 'iifname "vltap0" ether type ip ip saddr != { 10.244.1.5, 0.0.0.0 } drop' in text
    assert "ip6 saddr != { fd00:10:244:1::5, fe80::/10, :: } drop" in text
    assert 'oifname "eth0" ether type ip udp dport { 67, 68, 546, 547 } drop' in text
    assert 'oifname "eth0" icmpv6 type { nd-router-solicit, nd-router-advert } drop' in text
    assert "table inet" not in text  # no NAT for the bridge binding


def served(link: PodLink, code: int) -> object:
    """Option ``code`` as the plan says the NIC's server sends it (None: not sent)."""
    view = served_options(plan(vm_spec(), pod_state(link)).nics[0])
    assert isinstance(view, dict) and isinstance(view["dhcp4"], list)
    found = [o for o in view["dhcp4"] if isinstance(o, dict) and o["code"] == code]
    return found[0]["value"] if found else None


def test_calico_slash32_routes() -> None:
    onlink = Route(ipaddress.ip_network("169.254.1.1/32"), None, "eth0")
    link = pod_link(v4="10.244.1.5/32", gw4="169.254.1.1", extra_routes=(onlink,))
    assert served(link, 3) == ["169.254.1.1"]
    assert served(link, 121) == ["169.254.1.1/32 via 0.0.0.0", "0.0.0.0/0 via 169.254.1.1"]
    # without the explicit on-link route the host route is still added first
    link = pod_link(v4="10.244.1.5/32", gw4="169.254.1.1")
    assert served(link, 121) == ["169.254.1.1/32 via 0.0.0.0", "0.0.0.0/0 via 169.254.1.1"]


def test_plain_subnet_needs_no_classless_routes() -> None:
    link = pod_link()
    assert served(link, 3) == ["10.244.1.1"] and served(link, 121) is None


def test_extra_route_brings_default_into_option_121() -> None:
    extra = Route(
        ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_address("10.244.1.254"), "eth0"
    )
    link = pod_link(extra_routes=(extra,))
    assert served(link, 121) == ["10.96.0.0/12 via 10.244.1.254", "0.0.0.0/0 via 10.244.1.1"]


def test_ipv6_only_and_ipv4_only() -> None:
    nic = plan(vm_spec(), pod_state(pod_link(v4=None, gw4=None))).nics[0]
    assert nic.dhcp4 is None and nic.dhcp6 is not None
    nic = plan(vm_spec(), pod_state(pod_link(v6=None, gw6=None))).nics[0]
    assert nic.dhcp6 is None and nic.ra is None and nic.dhcp4 is not None


def test_no_address_is_an_error() -> None:
    with pytest.raises(NetworkError, match="'eth0' has no IPv4 or global IPv6 address"):
        plan(vm_spec(), pod_state(pod_link(v4=None, v6=None, gw4=None, gw6=None)))


def test_missing_pod_interface_names_what_exists() -> None:
    with pytest.raises(NetworkError, match=r"'eth0' not found \(interfaces: eth9\)"):
        plan(vm_spec(), pod_state(pod_link(name="eth9")))


def test_masquerade_defaults() -> None:
    nic = plan(vm_spec(Masquerade()), pod_state()).nics[0]
    assert str(nic.guest_ipv4) == "10.0.2.2/30" and str(nic.guest_ipv6) == "fd10:0:2::2/120"
    assert [str(a) for a in nic.bridge.addresses] == [
        "10.0.2.1/30",
        "fd10:0:2::1/120",
        f"{link_local_from_mac(nic.bridge.mac)}/64",
    ]
    assert nic.dhcp4 is not None and str(nic.dhcp4.router) == "10.0.2.1"
    assert nic.pod_port is None
    assert int(nic.device.mac[:2], 16) & 0x03 == 0x02  # derived, locally administered


def test_masquerade_custom_cidr_and_too_small() -> None:
    m = Masquerade(cidr4=ipaddress.IPv4Network("192.168.77.0/24"))
    nic = plan(vm_spec(m), pod_state()).nics[0]
    assert str(nic.guest_ipv4) == "192.168.77.2/24"
    with pytest.raises(NetworkError, match=r"192\.168\.77\.0/31 is too small"):
        plan(vm_spec(Masquerade(cidr4=ipaddress.IPv4Network("192.168.77.0/31"))), pod_state())


def test_masquerade_ports_are_sets_not_rules() -> None:
    ports = tuple(Port(p) for p in range(20000, 21000))
    p1000 = plan(vm_spec(Masquerade(ports=ports)), pod_state())
    p1 = plan(vm_spec(Masquerade(ports=ports[:1])), pod_state())
    lines = lambda p: [ln for ln in p.nftables.splitlines() if "dnat" in ln]  # noqa: E731
    # v4/v6 × (prerouting from the pod, hairpin from the guest, output)
    assert len(lines(p1000)) == len(lines(p1)) == 6
    assert "tcp dport @tcp0" in p1000.nftables and "20999" in p1000.nftables


def test_masquerade_reserved_ports() -> None:
    nic = plan(vm_spec(Masquerade()), pod_state(), PlanOptions(status_port=9999)).nics[0]
    reserved = next(s for s in nic.nft.inet_sets if s.startswith("set reserved0"))
    assert "9999" in reserved and "49152" in reserved and "15001" not in reserved
    spec = vm_spec(Masquerade(), annotations=(("sidecar.istio.io/inject", "true"),))
    nic = plan(spec, pod_state()).nics[0]
    reserved = next(s for s in nic.nft.inet_sets if s.startswith("set reserved0"))
    assert all(str(p) in reserved for p in ISTIO_PORTS)
    with pytest.raises(SpecError, match=r"ports\[0\]\.port: 8186 is a port the pod itself"):
        plan(vm_spec(Masquerade(ports=(Port(8186),))), pod_state())


def test_masquerade_udp_ports() -> None:
    m = Masquerade(ports=(Port(53, Protocol.UDP), Port(80)))
    text = plan(vm_spec(m), pod_state()).nftables
    assert "set udp0 { type inet_service; elements = { 53 } }" in text
    assert "set tcp0 { type inet_service; elements = { 80 } }" in text


def test_multiqueue_uses_vcpus() -> None:
    spec = vm_spec(cpu=Cpu(sockets=2, cores=2), network_interface_multiqueue=True)
    nic = plan(spec, pod_state()).nics[0]
    assert nic.device.queues == 4 and nic.tap.multi_queue
    assert plan(vm_spec(cpu=Cpu(cores=4)), pod_state()).nics[0].device.queues == 1


@pytest.mark.parametrize("binding", [Sriov(), Vdpa()])
def test_sriov_and_vdpa_need_a_multus_network(binding: Sriov | Vdpa) -> None:
    # the SR-IOV/vDPA paths themselves: tests/unit/network/test_sysfs*.py, test_multus*.py
    with pytest.raises(NetworkError, match=r"binding on the pod network: .* Multus network"):
        plan(vm_spec(binding), pod_state())


def test_absent_interface_skipped_and_multus_naming() -> None:
    spec = vm_spec()
    spec = replace(
        spec,
        interfaces=(
            spec.interfaces[0],
            Interface(name="gone", binding=Bridge(), state=InterfaceState.ABSENT),
            Interface(name="sec", binding=Bridge(), pci_address="0000:07:00.0", boot_order=2),
        ),
        networks=(
            spec.networks[0],
            Network(name="gone", source=MultusNetwork("ns/a")),
            Network(name="sec", source=MultusNetwork("ns/b")),
        ),
    )
    state = pod_state(pod_link(), pod_link(name="net2", mac="0a:58:00:00:00:02"))
    p = plan(spec, state)
    assert [n.pod_interface for n in p.nics] == ["eth0", "net2"]
    assert [d.id for d in p.devices] == ["net0", "net1"]
    assert p.devices[1].pci_address == "0000:07:00.0" and p.devices[1].boot_order == 2
    assert p.nics[1].bridge.name == "vlbr1" and p.nics[1].dhcp4 is not None
    assert str(p.nics[1].dhcp4.server_address) == "169.254.75.11"


def test_dhcp_options_from_spec() -> None:
    opts = DhcpOptions(
        boot_file_name="pxelinux.0",
        tftp_server_name="tftp.local",
        ntp_servers=(ipaddress.IPv4Address("10.0.0.123"),),
        private_options=(DhcpPrivateOption(240, "extra"),),
    )
    spec = vm_spec()
    spec = replace(spec, interfaces=(replace(spec.interfaces[0], dhcp_options=opts),))
    d4 = plan(spec, pod_state()).nics[0].dhcp4
    assert d4 is not None and d4.boot_file == "pxelinux.0"
    assert d4.tftp_server == "tftp.local" and d4.private_options == ((240, b"extra"),)
    assert [str(a) for a in d4.ntp] == ["10.0.0.123"]


def test_plan_is_pure_and_json_serialisable() -> None:
    spec, state = vm_spec(Masquerade(ports=(Port(80),))), pod_state()
    a, b = plan(spec, state), plan(spec, state)
    assert a == b
    data = json.loads(a.to_json())
    nic = data["nics"][0]
    assert nic["binding"] == "masquerade"
    assert nic["dhcp4"]["leases"][0]["address"] == "10.0.2.2/30"
    served_codes = [o["code"] for o in nic["served"]["dhcp4"]]
    assert served_codes[:2] == [53, 54] and 1 in served_codes and 121 not in served_codes
    assert nic["device"]["tap"] == "vltap0" and data["nftables"] == a.nftables
    assert json.loads(plan(vm_spec(), state).to_json())["nics"][0]["pod_port"]["learning"] is False


def test_link_local_from_mac() -> None:
    assert str(link_local_from_mac("52:54:00:12:34:56")) == "fe80::5054:ff:fe12:3456"


def test_bridge_ipv6_slash128_gets_host_route_and_no_prefix() -> None:
    nic = plan(vm_spec(), pod_state(pod_link(v6="fd00:10:244:1::5/128"))).nics[0]
    assert nic.ra is not None and nic.ra.prefixes == ()
    first = nic.routes[0]
    assert (str(first.dst), first.ifname) == ("fd00:10:244:1::5/128", "vlbr0")


# ---- the sysctl contract: NetworkPlan.sysctls is exactly what the pod must declare ----


def _sysctls(p: object) -> dict[str, str]:
    return {s.key: s.value for s in p.sysctls}  # type: ignore[attr-defined]


def test_bridge_pod_level_sysctls_only_ipv6_forwarding() -> None:
    assert _sysctls(plan(vm_spec(), pod_state())) == {"net.ipv6.conf.all.forwarding": "1"}
    # no IPv6 default route: the bridge routes nothing, nothing to declare
    assert _sysctls(plan(vm_spec(), pod_state(pod_link(gw6=None)))) == {}
    assert _sysctls(plan(vm_spec(), pod_state(pod_link(v6=None, gw6=None)))) == {}


def test_bridge_per_interface_settings_go_through_netlink() -> None:
    nic = plan(vm_spec(), pod_state()).nics[0]
    settings = {s.name: s for s in nic.link_settings}
    assert settings["vlbr0"].ipv4 == (("arp_ignore", 1),) and settings["vlbr0"].no_link_local
    assert settings["vltap0"].ipv4 == () and settings["vltap0"].no_link_local
    assert settings["eth0"].ipv4 == (("arp_ignore", 1),) and not settings["eth0"].no_link_local
    # the bridge's link-local (the DHCPv6/RA source) is the launcher's own address
    assert nic.ra is not None
    assert f"{link_local_from_mac(nic.bridge.mac)}/64" in [str(a) for a in nic.bridge.addresses]
    v4only = plan(vm_spec(), pod_state(pod_link(v6=None, gw6=None))).nics[0]
    assert not any(a.version == 6 for a in v4only.bridge.addresses)


def test_masquerade_pod_level_sysctls() -> None:
    assert _sysctls(plan(vm_spec(Masquerade()), pod_state())) == {
        "net.ipv6.conf.all.forwarding": "1"
    }
    # IPv4 forwarding and route_localnet are per interface: nothing at pod level
    v4only = plan(vm_spec(Masquerade()), pod_state(pod_link(v6=None, gw6=None)))
    assert _sysctls(v4only) == {}
    settings = {s.name: s.ipv4 for s in v4only.nics[0].link_settings}
    assert settings == {
        "vlbr0": (("forwarding", 1), ("route_localnet", 1)),
        "vltap0": (),
        "eth0": (("forwarding", 1),),
    }


def test_masquerade_accept_ra_only_when_the_pod_learns_routes_from_ra() -> None:
    ra_route = Route(
        ipaddress.ip_network("fd00:99::/64"), ipaddress.ip_address("fe80::1"), "eth0", proto=9
    )
    p = plan(vm_spec(Masquerade()), pod_state(pod_link(extra_routes=(ra_route,))))
    assert _sysctls(p) == {
        "net.ipv6.conf.all.forwarding": "1",
        "net.ipv6.conf.eth0.accept_ra": "2",
    }


@pytest.mark.parametrize("binding", [Bridge(), Masquerade()])
def test_plan_sysctls_are_namespaced_and_never_per_link_netlink_knobs(binding: object) -> None:
    p = plan(vm_spec(binding), pod_state())  # type: ignore[arg-type]
    for s in p.sysctls:
        assert s.key.startswith("net.")
        assert ".ipv4.conf." not in s.key  # every net.ipv4.conf knob has a netlink path
        assert not s.key.endswith((".accept_dad", ".arp_ignore", ".route_localnet"))
    assert p.sysctls == tuple({s.key: s for n in p.nics for s in n.sysctls}.values())


def test_bridge_with_several_pod_addresses_keeps_the_others_on_the_pod_side(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DHCP hands the guest one address per family: the first (the CNI's); the others
    stay on the NIC's bridge, IPv4 ones with the pod's IPv4 routes (on-link), never lost."""
    link = replace(
        pod_link(),
        addresses4=(
            ipaddress.IPv4Interface("10.244.1.5/24"),
            ipaddress.IPv4Interface("10.244.1.6/24"),
            ipaddress.IPv4Interface("10.88.0.5/24"),
        ),
        addresses6=(
            ipaddress.IPv6Interface("fd00:10:244:1::5/64"),
            ipaddress.IPv6Interface("fd00:99::5/64"),
        ),
    )
    with caplog.at_level("INFO", logger="launcher.network.bindings.bridge"):
        nic = plan(vm_spec(), pod_state(link)).nics[0]
    assert str(nic.guest_ipv4) == "10.244.1.5/24" and str(nic.guest_ipv6) == "fd00:10:244:1::5/64"
    assert nic.dhcp4 is not None and [str(x.address) for x in nic.dhcp4.leases] == ["10.244.1.5/24"]
    on_bridge = [str(a) for a in nic.bridge.addresses]
    for kept in ("10.244.1.6/24", "10.88.0.5/24", "fd00:99::5/64"):
        assert kept in on_bridge
    assert "10.244.1.5/24" not in on_bridge
    assert nic.pod_port is not None and len(nic.pod_port.remove_addresses) == 5
    default4 = [r for r in nic.routes if str(r.dst) == "0.0.0.0/0"]
    assert len(default4) == 1 and default4[0].ifname == "vlbr0" and default4[0].onlink
    assert any(
        "10.88.0.5/24" in r.getMessage() and "vlbr0" in r.getMessage() for r in caplog.records
    )
    # one address per family: nothing kept, nothing logged
    caplog.clear()
    with caplog.at_level("INFO", logger="launcher.network.bindings.bridge"):
        single = plan(vm_spec(), pod_state()).nics[0]
    assert not any(r.dst.version == 4 for r in single.routes) and not caplog.records
