"""Masquerade binding in real namespaces: DNAT of listed ports, masquerade out, port-forward."""

from __future__ import annotations

from pathlib import Path

from launcher.network import PlanOptions, apply, discover, plan
from launcher.network.plan import NetworkPlan, link_local_from_mac
from testbed.netns import Server, Topology, connect, nsrun, ping, sh, wait_for
from testbed.runner import build_spec


def _apply(topo: Topology, state: Path, ports: str, istio: bool = False) -> NetworkPlan:
    spec = build_spec("masquerade", 1, ports, istio=istio)
    # a new netns inherits the node's ip_forward: start from 0 so every traffic test
    # proves the launcher's per-interface forwarding (netlink) is enough
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    pod = discover(netns=topo.pod, state_dir=state, hostname="pod-host")
    p = plan(spec, pod, PlanOptions(stand_in_netns=topo.guest))
    apply(p, state, netns=topo.pod)
    return p


def configure_guest(topo: Topology, p: NetworkPlan) -> None:
    """Give the guest side what the plan's DHCPv4/DHCPv6/RA hand out."""
    nic = p.nics[0]
    assert nic.dhcp4 is not None and nic.dhcp6 is not None and nic.ra is not None
    sh("ip", "-n", topo.guest, "addr", "add", str(nic.dhcp4.leases[0].address), "dev", "vlg0")
    sh("ip", "-n", topo.guest, "route", "add", "default", "via", str(nic.dhcp4.router))
    address6 = str(nic.dhcp6.leases[0].address)
    sh("ip", "-n", topo.guest, "addr", "add", address6, "dev", "vlg0", "nodad")
    sh(
        "ip",
        "-n",
        topo.guest,
        "-6",
        "route",
        "add",
        "default",
        "via",
        str(link_local_from_mac(nic.bridge.mac)),  # the RA's source: the bridge
        "dev",
        "vlg0",
    )


def _reaches_guest(topo: Topology, client_ns: str, host: str, port: int) -> str | None:
    srv = Server(topo.guest, "::" if ":" in host else "0.0.0.0", port, timeout=3)
    try:
        ok = connect(client_ns, host, port)
        got = srv.result()
        return got if ok else None
    finally:
        srv.stop()


def test_masquerade_layout(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "80,53/udp")
    nic = p.nics[0]
    assert str(nic.guest_ipv4) == "10.0.2.2/30" and str(nic.guest_ipv6) == "fd10:0:2::2/120"
    assert nic.dhcp4 is not None and str(nic.dhcp4.server_address) == "10.0.2.1"
    addrs = nsrun(topo.pod, "ip", "-o", "addr").stdout
    assert "10.77.0.5/24" in addrs and "10.0.2.1/30" in addrs and "fd10:0:2::1/120" in addrs
    ruleset = nsrun(topo.pod, "nft", "list", "table", "inet", "virt_launcher").stdout
    assert "set tcp0" in ruleset and "set udp0" in ruleset and "set reserved0" in ruleset
    # IPv4 forwarding per interface through netlink, not the pod-wide switch
    assert nsrun(topo.pod, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    for key in (
        "net.ipv4.conf.eth0.forwarding",
        "net.ipv4.conf.vlbr0.forwarding",
        "net.ipv4.conf.vlbr0.route_localnet",
        "net.ipv6.conf.all.forwarding",
    ):
        assert nsrun(topo.pod, "sysctl", "-n", key).stdout.strip() == "1", key
    assert nsrun(topo.pod, "sysctl", "-n", "net.ipv4.conf.vltap0.forwarding").stdout.strip() == "0"


def test_listed_ports_reach_guest_and_others_do_not(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "80")
    configure_guest(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    assert _reaches_guest(topo, topo.peer, "10.77.0.5", 80) == "10.77.0.1"
    assert _reaches_guest(topo, topo.peer, "fd77::5", 80) == "fd77::1"
    assert _reaches_guest(topo, topo.peer, "10.77.0.5", 81) is None
    assert _reaches_guest(topo, topo.peer, "fd77::5", 81) is None


def test_guest_reaches_peer_as_pod_ip(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "80")
    configure_guest(topo, p)
    for peer_host, bind, pod_ip in (
        ("10.77.0.1", "0.0.0.0", "10.77.0.5"),
        ("fd77::1", "::", "fd77::5"),
    ):
        srv = Server(topo.peer, bind, 9000)
        try:
            assert wait_for(lambda h=peer_host: ping(topo.guest, h), timeout=10)
            assert connect(topo.guest, peer_host, 9000)
            assert srv.result() == pod_ip
        finally:
            srv.stop()


def test_port_forward_from_loopback(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "80")
    configure_guest(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    # kubectl port-forward connects to localhost inside the pod netns
    assert _reaches_guest(topo, topo.pod, "127.0.0.1", 80) == "10.0.2.1"
    assert _reaches_guest(topo, topo.pod, "10.77.0.5", 80) is not None
    assert _reaches_guest(topo, topo.pod, "fd77::5", 80) == "fd10:0:2::1"


def test_all_ports_except_the_pods_own(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "", istio=True)
    configure_guest(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    assert _reaches_guest(topo, topo.peer, "10.77.0.5", 5555) == "10.77.0.1"
    assert _reaches_guest(topo, topo.peer, "fd77::5", 5555) == "fd77::1"
    # the launcher's status port and Istio's ports stay with the pod itself
    for port in (8186, 15001, 49152):
        own = Server(topo.pod, "0.0.0.0", port, timeout=3)
        try:
            assert connect(topo.peer, "10.77.0.5", port)
            assert own.result() == "10.77.0.1"
        finally:
            own.stop()
    # ping of the pod IP is answered by the guest (echo DNATed)
    assert ping(topo.peer, "10.77.0.5")


def test_second_apply_changes_nothing(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "80,443")
    before = topo.settled_dump()
    again = plan(
        build_spec("masquerade", 1, "80,443"),
        discover(topo.pod, tmp_path, hostname="pod-host"),
        PlanOptions(stand_in_netns=topo.guest),
    )
    assert again == p
    assert apply(again, tmp_path, netns=topo.pod).changes == 0
    assert topo.settled_dump() == before


def test_spoofed_source_from_guest_is_dropped(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path, "80")
    configure_guest(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.77.0.1"), timeout=10)
    sh("ip", "-n", topo.guest, "addr", "add", "10.0.2.3/30", "dev", "vlg0")
    assert not ping(topo.guest, "10.77.0.1", count=2, wait=1, source="10.0.2.3")


def test_thousand_ports_are_one_set(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    ports = ",".join(str(p) for p in range(20000, 21000))
    p = _apply(topo, tmp_path, ports)
    configure_guest(topo, p)
    ruleset = nsrun(topo.pod, "nft", "list", "chain", "inet", "virt_launcher", "prerouting").stdout
    # one IPv4 and one IPv6 rule for all 1,000 ports, from the pod and hairpin from the guest
    assert ruleset.count("dnat") == 4
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    assert _reaches_guest(topo, topo.peer, "10.77.0.5", 20999) == "10.77.0.1"
    assert _reaches_guest(topo, topo.peer, "10.77.0.5", 21000) is None


def test_cleanup_removes_everything(topo: Topology, tmp_path: Path) -> None:
    from launcher.network import cleanup

    topo.create()
    before = topo.settled_dump()
    p = _apply(topo, tmp_path, "80")
    assert "vlbr0" in nsrun(topo.pod, "ip", "-o", "link").stdout
    cleanup(p, tmp_path, netns=topo.pod)
    links = nsrun(topo.pod, "ip", "-o", "link").stdout
    assert "vlbr0" not in links and "vltap0" not in links
    assert nsrun(topo.pod, "nft", "list", "tables").stdout.strip() == ""
    assert "10.77.0.5/24" in nsrun(topo.pod, "ip", "-o", "addr", "show", "eth0").stdout
    assert list(tmp_path.iterdir()) == []
    assert "10.77.0.5" in before
