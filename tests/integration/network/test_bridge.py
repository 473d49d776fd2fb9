"""Bridge binding in real namespaces: pod address moves to the guest side, peer reaches it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dhcp.v4.config import classless_routes
from launcher.errors import NetworkError
from launcher.network import PlanOptions, apply, cleanup, discover, plan
from launcher.network.plan import NetworkPlan, link_local_from_mac
from testbed.netns import POD_MAC, POD_MTU, Server, Topology, connect, nsrun, ping, sh, wait_for
from testbed.runner import build_spec


def _apply(topo: Topology, state: Path, **kw: object) -> NetworkPlan:
    spec = build_spec("bridge", int(kw.pop("nics", 1)), "")  # type: ignore[call-overload]
    pod = discover(netns=topo.pod, state_dir=state, hostname="pod-host")
    p = plan(spec, pod, PlanOptions(stand_in_netns=topo.guest))
    apply(p, state, netns=topo.pod)
    return p


def configure_guest_statically(topo: Topology, p: NetworkPlan) -> None:
    """Give the guest side what the plan's DHCPv4/DHCPv6/RA would hand out."""
    nic = p.nics[0]
    dev = nic.tap.stand_in_peer
    assert dev is not None
    if nic.dhcp4 is not None:
        address = nic.dhcp4.leases[0].address
        sh("ip", "-n", topo.guest, "addr", "add", str(address), "dev", dev)
        routes121 = classless_routes(address, nic.dhcp4.router, nic.dhcp4.routes)
        for dst, hop in routes121:
            if str(hop) == "0.0.0.0":
                sh("ip", "-n", topo.guest, "route", "replace", str(dst), "dev", dev)
            else:
                sh("ip", "-n", topo.guest, "route", "replace", str(dst), "via", str(hop))
        if nic.dhcp4.router and not routes121:
            sh("ip", "-n", topo.guest, "route", "add", "default", "via", str(nic.dhcp4.router))
    if nic.dhcp6 is not None and nic.ra is not None:
        sh(
            "ip",
            "-n",
            topo.guest,
            "addr",
            "add",
            str(nic.dhcp6.leases[0].address),
            "dev",
            dev,
            "nodad",
        )
        if nic.ra.router_lifetime:
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
                dev,
            )


def test_bridge_hands_pod_addresses_to_guest_side(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path)
    nic = p.nics[0]
    assert str(nic.dhcp4.leases[0].address) == "10.77.0.5/24" if nic.dhcp4 else False
    assert nic.dhcp4 is not None and str(nic.dhcp4.router) == "10.77.0.1"
    assert nic.dhcp4.server_address.is_link_local and nic.dhcp4.mtu == POD_MTU
    assert nic.dhcp6 is not None and str(nic.dhcp6.leases[0].address.ip) == "fd77::5"
    assert nic.device.mac == POD_MAC and nic.device.mtu == POD_MTU

    links = nsrun(topo.pod, "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert POD_MAC not in links and "master vlbr0" in links and "learning off" in links
    addrs = nsrun(topo.pod, "ip", "-o", "addr").stdout
    assert "10.77.0.5" not in addrs and "fd77::5" not in addrs
    assert "169.254.75.10/32" in addrs
    tap = nsrun(topo.pod, "ip", "-d", "-o", "link", "show", "vltap0").stdout
    assert f"mtu {POD_MTU}" in tap and "master vlbr0" in tap
    arp_ignore = nsrun(topo.pod, "sysctl", "-n", "net.ipv4.conf.vlbr0.arp_ignore").stdout
    assert arp_ignore.strip() == "1"
    # nobody in the pod answers for the guest's address before the guest has it
    assert not ping(topo.peer, "10.77.0.5", count=1, wait=1)

    configure_guest_statically(topo, p)
    guest_link = nsrun(topo.guest, "ip", "-o", "link", "show", "vlg0").stdout
    assert POD_MAC in guest_link
    assert wait_for(lambda: ping(topo.peer, "10.77.0.5"), timeout=10)
    assert wait_for(lambda: ping(topo.peer, "fd77::5"), timeout=10)
    for host, peer_addr in (("0.0.0.0", "10.77.0.1"), ("::", "fd77::1")):
        srv = Server(topo.guest, host, 8080)
        try:
            assert connect(topo.peer, "10.77.0.5" if host == "0.0.0.0" else "fd77::5", 8080)
            assert srv.result() == peer_addr
        finally:
            srv.stop()


def test_second_apply_changes_nothing(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path)
    before = topo.settled_dump()
    again = plan(
        build_spec("bridge", 1, ""),
        discover(topo.pod, tmp_path, hostname="pod-host"),
        PlanOptions(stand_in_netns=topo.guest),
    )
    assert again == p
    result = apply(again, tmp_path, netns=topo.pod)
    assert result.changes == 0
    assert topo.settled_dump() == before
    assert before.count("vlbr0:") == 1 and before.count("table bridge virt_launcher") == 1


def test_spoofed_frames_from_guest_are_dropped(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path)
    configure_guest_statically(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.77.0.1"), timeout=10)
    # another source IP on the same NIC
    sh("ip", "-n", topo.guest, "addr", "add", "10.77.0.99/24", "dev", "vlg0")
    assert not ping(topo.guest, "10.77.0.1", count=2, wait=1, source="10.77.0.99")
    assert ping(topo.guest, "10.77.0.1", source="10.77.0.5")
    # another source MAC
    sh("ip", "-n", topo.guest, "link", "set", "vlg0", "address", "02:00:00:00:66:66")
    sh("ip", "-n", topo.peer, "neigh", "flush", "dev", "peer0")
    assert not ping(topo.guest, "10.77.0.1", count=2, wait=1)
    sh("ip", "-n", topo.guest, "link", "set", "vlg0", "address", POD_MAC)
    assert wait_for(lambda: ping(topo.guest, "10.77.0.1"), timeout=10)


def _udhcpc(ns: str, dev: str) -> bool:
    done = nsrun(
        ns,
        "udhcpc",
        "-i",
        dev,
        "-n",
        "-q",
        "-f",
        "-t",
        "3",
        "-T",
        "1",
        "-A",
        "1",
        "-s",
        "/bin/true",
        check=False,
        timeout=30,
    )
    return done.returncode == 0


def _dnsmasq(ns: str, dev: str, lease_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            f"--interface={dev}",
            "--bind-interfaces",
            "--port=0",
            "--no-ping",
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            f"--dhcp-leasefile={lease_dir}/leases",
            "--pid-file=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_dhcp_never_crosses_the_pod_port(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    p = _apply(topo, tmp_path / "state")
    configure_guest_statically(topo, p)
    # a DHCP server outside the pod must not answer the guest…
    outside = _dnsmasq(topo.peer, "peer0", tmp_path)
    try:
        assert not _udhcpc(topo.guest, "vlg0")
    finally:
        outside.kill()
        outside.wait(timeout=5)
    # …and a DHCP server inside the pod must not answer the peer
    inside = _dnsmasq(topo.guest, "vlg0", tmp_path)
    try:
        assert not _udhcpc(topo.peer, "peer0")
        # control: without the launcher's bridge table the same request is answered
        nsrun(topo.pod, "nft", "delete", "table", "bridge", "virt_launcher")
        assert _udhcpc(topo.peer, "peer0")
    finally:
        inside.kill()
        inside.wait(timeout=5)


def test_real_tap_multiqueue_and_cleanup(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    spec = build_spec("bridge", 1, "")
    from dataclasses import replace

    from launcher.spec.model import Cpu

    spec = replace(spec, cpu=Cpu(sockets=1, cores=4), network_interface_multiqueue=True)
    pod = discover(netns=topo.pod, state_dir=tmp_path)
    p = plan(spec, pod)
    assert p.devices[0].queues == 4 and p.nics[0].tap.multi_queue
    apply(p, tmp_path, netns=topo.pod)
    tap = nsrun(topo.pod, "ip", "-d", "-o", "link", "show", "vltap0").stdout
    assert "tap" in tap and "multi_queue" in tap and "vnet_hdr on" in tap and "pi off" in tap
    assert (tmp_path / "net-eth0.json").exists()
    cleanup(p, tmp_path, netns=topo.pod)
    links = nsrun(topo.pod, "ip", "-o", "link").stdout
    assert "vlbr0" not in links and "vltap0" not in links and POD_MAC in links
    addrs = nsrun(topo.pod, "ip", "-o", "addr", "show", "eth0").stdout
    assert "10.77.0.5/24" in addrs and "fd77::5/64" in addrs
    assert "default via 10.77.0.1" in nsrun(topo.pod, "ip", "route").stdout
    assert nsrun(topo.pod, "nft", "list", "tables").stdout.strip() == ""
    assert not (tmp_path / "net-eth0.json").exists()


def test_ipv6_only_pod(topo: Topology, tmp_path: Path) -> None:
    topo.create(ipv4=False)
    p = _apply(topo, tmp_path)
    assert p.nics[0].dhcp4 is None and p.nics[0].dhcp6 is not None
    configure_guest_statically(topo, p)
    assert wait_for(lambda: ping(topo.peer, "fd77::5"), timeout=10)


def test_no_default_route_plans_no_router(topo: Topology, tmp_path: Path) -> None:
    topo.create(default_route=False)
    p = _apply(topo, tmp_path)
    nic = p.nics[0]
    assert nic.dhcp4 is not None and nic.dhcp4.router is None and nic.dhcp4.routes == ()
    assert nic.ra is not None and nic.ra.router_lifetime == 0
    configure_guest_statically(topo, p)
    assert wait_for(lambda: ping(topo.peer, "10.77.0.5"), timeout=10)


def test_calico_style_slash32(topo: Topology, tmp_path: Path) -> None:
    topo.create(ipv6=False, calico32=True)
    p = _apply(topo, tmp_path)
    nic = p.nics[0]
    assert nic.dhcp4 is not None and str(nic.dhcp4.leases[0].address) == "10.77.0.5/32"
    served = classless_routes(nic.dhcp4.leases[0].address, nic.dhcp4.router, nic.dhcp4.routes)
    assert [(str(d), str(h)) for d, h in served] == [
        ("169.254.1.1/32", "0.0.0.0"),
        ("0.0.0.0/0", "169.254.1.1"),
    ]
    configure_guest_statically(topo, p)
    assert wait_for(lambda: ping(topo.peer, "10.77.0.5"), timeout=10)


def test_renamed_pod_interface_is_a_clear_error(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    sh("ip", "-n", topo.pod, "link", "set", "eth0", "down")
    sh("ip", "-n", topo.pod, "link", "set", "eth0", "name", "eth9")
    pod = discover(netns=topo.pod, state_dir=tmp_path)
    with pytest.raises(NetworkError, match=r"'eth0' not found \(interfaces: eth9\)"):
        plan(build_spec("bridge", 1, ""), pod)


def test_sixteen_nics(topo: Topology, tmp_path: Path) -> None:
    topo.pod_ifaces = 4
    topo.create()
    p = _apply(topo, tmp_path, nics=4)
    assert [n.pod_interface for n in p.nics] == ["eth0", "net1", "net2", "net3"]
    links = nsrun(topo.pod, "ip", "-o", "link").stdout
    for i in range(4):
        assert f"vlbr{i}:" in links and f"vltap{i}@" in links
    assert apply(p, tmp_path, netns=topo.pod).changes == 0


def test_ipv6_default_route_via_link_local_gateway(topo: Topology, tmp_path: Path) -> None:
    """The RA makes the bridge the guest's IPv6 router; the pod netns forwards to the
    pod's real gateway (a link-local next hop, as most CNIs use)."""
    topo.create(default_route=False)
    peer_ll = nsrun(topo.peer, "ip", "-6", "-o", "addr", "show", "dev", "peer0", "scope", "link")
    gw = peer_ll.stdout.split("inet6 ")[1].split("/")[0]
    sh("ip", "-n", topo.pod, "-6", "route", "add", "default", "via", gw, "dev", "eth0")
    # an off-link destination behind the gateway
    sh("ip", "-n", topo.peer, "addr", "add", "fd99::1/128", "dev", "lo")
    p = _apply(topo, tmp_path)
    nic = p.nics[0]
    assert nic.ra is not None and nic.ra.router_lifetime > 0
    routes = nsrun(topo.pod, "ip", "-6", "route", "show", "default").stdout
    assert f"via {gw} dev vlbr0" in routes
    configure_guest_statically(topo, p)
    assert wait_for(lambda: ping(topo.guest, "fd99::1"), timeout=10)
