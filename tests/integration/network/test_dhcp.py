"""The plan's DHCP configuration served by the project's own ``python -m dhcp serve``.

The guest side (stand-in veth peer in the guest netns) runs real ISC dhclient for
DHCPv4 and DHCPv6 and must obtain exactly the addresses the plan promises: the pod's
own addresses for the bridge binding, 10.0.2.2 / fd10:0:2::2 for masquerade. The
mapping from plan dataclasses to the server's command line (``serve_argv``) is what the
composition root will do in-process.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.network import PlanOptions, apply, discover, plan
from launcher.network.plan import NicPlan
from testbed.netns import Topology, nsrun, ping, sh, wait_for
from testbed.runner import build_spec


def serve_argv(nic: NicPlan) -> list[str]:
    """``python -m dhcp serve`` arguments for one planned NIC."""
    argv = [sys.executable, "-m", "dhcp", "serve", "-i", nic.bridge.name, "--log-level", "debug"]
    d4 = nic.dhcp4
    if d4 is not None:
        lease = d4.leases[0]
        argv += [
            "--lease",
            f"{lease.mac}={lease.address}",
            "--server-address",
            str(d4.server_address),
            "--lease-time",
            str(d4.lease_time),
        ]
        if d4.router:
            argv += ["--router", str(d4.router)]
        if d4.mtu:
            argv += ["--mtu", str(d4.mtu)]
        if d4.hostname:
            argv += ["--hostname", d4.hostname]
        if d4.dns:
            argv += ["--dns", *map(str, d4.dns)]
        extra = [f"{dst}={hop}" for dst, hop in d4.routes]
        if extra:
            argv += ["--route", *extra]
    d6, ra = nic.dhcp6, nic.ra
    if d6 is not None and ra is not None:
        lease6 = d6.leases[0]
        argv += [
            "--lease6",
            f"{lease6.mac}={lease6.address}",
            "--ra",
            "--ra-lifetime",
            str(ra.router_lifetime),
        ]
        for prefix in ra.prefixes:
            argv += ["--ra-prefix", str(prefix)]
        if d6.dns:
            argv += ["--dns6", *map(str, d6.dns)]
    return argv


def _offers(log: Path) -> int:
    return log.read_text().count('"msg":"--> offer"')


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
        "4",
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


def _dhclient(ns: str, dev: str, family: str, workdir: Path) -> str:
    lease = workdir / f"lease{family}"
    lease.unlink(missing_ok=True)
    nsrun(
        ns,
        "dhclient",
        f"-{family}",
        "-1",
        "-v",
        "-lf",
        str(lease),
        "-pf",
        str(workdir / f"pid{family}"),
        "-sf",
        "/bin/true",
        dev,
        check=False,
        timeout=40,
    )
    nsrun(ns, "dhclient", f"-{family}", "-x", "-pf", str(workdir / f"pid{family}"), check=False)
    return lease.read_text() if lease.exists() else ""


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_guest_side_gets_planned_addresses_by_dhcp(
    topo: Topology, tmp_path: Path, binding: str
) -> None:
    topo.create()
    state = tmp_path / "state"
    spec = build_spec(binding, 1, "80")
    p = plan(
        spec, discover(topo.pod, state, hostname="pod-host"), PlanOptions(stand_in_netns=topo.guest)
    )
    apply(p, state, netns=topo.pod)
    nic = p.nics[0]
    assert nic.dhcp4 is not None and nic.dhcp6 is not None
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.pod, *serve_argv(nic)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115
        cwd=str(Path(__file__).resolve().parents[3]),
    )
    try:
        assert wait_for(
            lambda: "tentative" not in nsrun(topo.guest, "ip", "-6", "addr", "show", "vlg0").stdout,
            timeout=10,
        )
        lease4 = _dhclient(topo.guest, "vlg0", "4", tmp_path)
        lease6 = _dhclient(topo.guest, "vlg0", "6", tmp_path)
        # the peer, even wearing the guest's MAC, gets no answer: its DISCOVERs never
        # reach the pod's server (no new offer is logged)
        offers = _offers(tmp_path / "server.log")
        peer_mac = nsrun(topo.peer, "cat", "/sys/class/net/peer0/address").stdout.strip()
        sh("ip", "-n", topo.peer, "link", "set", "peer0", "address", nic.dhcp4.leases[0].mac)
        assert not _udhcpc(topo.peer, "peer0")
        assert _offers(tmp_path / "server.log") == offers
        if binding == "bridge":
            # control: without the containment rules the server does answer them (the
            # offer then goes to the guest port, where the bridge learned that MAC)
            nsrun(topo.pod, "nft", "delete", "table", "bridge", "virt_launcher")
            _udhcpc(topo.peer, "peer0")
            assert _offers(tmp_path / "server.log") > offers
        sh("ip", "-n", topo.peer, "link", "set", "peer0", "address", peer_mac)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    log = (tmp_path / "server.log").read_text()
    want4 = "10.77.0.5" if binding == "bridge" else "10.0.2.2"
    want6 = "fd77::5" if binding == "bridge" else "fd10:0:2::2"
    assert re.search(rf"fixed-address {re.escape(want4)};", lease4), (lease4, log[-2000:])
    assert f"option interface-mtu {nic.dhcp4.mtu};" in lease4
    if nic.dhcp4.router:
        assert f"option routers {nic.dhcp4.router};" in lease4
    assert re.search(rf"iaaddr {re.escape(want6)} ", lease6), (lease6, log[-2000:])
    # the leased addresses, put on the guest side, are reachable from the peer
    if binding == "bridge":
        plen = re.search(r"option subnet-mask ([\d.]+);", lease4)
        assert plen is not None
        mask = ipaddress.IPv4Network(f"0.0.0.0/{plen.group(1)}").prefixlen
        sh("ip", "-n", topo.guest, "addr", "add", f"{want4}/{mask}", "dev", "vlg0")
        sh("ip", "-n", topo.guest, "addr", "add", f"{want6}/64", "dev", "vlg0", "nodad")
        assert wait_for(lambda: ping(topo.peer, want4), timeout=10)
        assert wait_for(lambda: ping(topo.peer, want6), timeout=10)


DHCPCD_CONF = """\
option domain_name_servers, domain_name, domain_search, host_name
option classless_static_routes, interface_mtu
nohook resolv.conf, hostname, ntp.conf, timesyncd.conf, yp.conf
noipv6rs
ipv4only
"""


@pytest.mark.parametrize("pod_answers_arp", [False, True])
def test_dhcpcd_probes_the_pod_address_and_keeps_it(
    topo: Topology, tmp_path: Path, pod_answers_arp: bool
) -> None:
    """dhcpcd ARP-probes its lease: it only keeps it if nothing in the pod answers ARP.

    The control case keeps the pod IP on lo with arp_ignore=0 on the bridge (what a
    launcher without arp_ignore and with the IP "kept on a dummy" would do).
    """
    topo.create()
    state = tmp_path / "state"
    spec = build_spec("bridge", 1, "")
    p = plan(spec, discover(topo.pod, state), PlanOptions(stand_in_netns=topo.guest))
    apply(p, state, netns=topo.pod)
    if pod_answers_arp:
        sh("ip", "-n", topo.pod, "addr", "add", "10.77.0.5/32", "dev", "lo")
        nsrun(topo.pod, "sysctl", "-w", "net.ipv4.conf.vlbr0.arp_ignore=0")
    nic = p.nics[0]
    assert nic.dhcp4 is not None
    conf = tmp_path / "dhcpcd.conf"
    conf.write_text(DHCPCD_CONF)
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.pod, *serve_argv(nic)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115
        cwd=str(Path(__file__).resolve().parents[3]),
    )
    try:
        done = nsrun(
            topo.guest,
            "unshare",
            "-u",
            "dhcpcd",
            "-f",
            str(conf),
            "-4",
            "-w",
            "-t",
            "15" if pod_answers_arp else "40",
            "vlg0",
            check=False,
            timeout=90,
        )
        addrs = nsrun(topo.guest, "ip", "-o", "-4", "addr", "show", "vlg0").stdout
        mtu = nsrun(topo.guest, "cat", "/sys/class/net/vlg0/mtu").stdout.strip()
        routes = nsrun(topo.guest, "ip", "route").stdout
    finally:
        nsrun(topo.guest, "dhcpcd", "-f", str(conf), "-x", "vlg0", check=False, timeout=20)
        for path in Path("/var/lib/dhcpcd").glob("vlg0*"):
            path.unlink()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    text = log.read_text()
    if pod_answers_arp:
        assert "inet 10.77.0.5/24" not in addrs, addrs
        assert '"msg":"--> decline"' in text
        return
    assert done.returncode == 0, done.stdout + done.stderr + text[-2000:]
    assert "inet 10.77.0.5/24" in addrs, addrs
    assert "decline" not in text.lower()
    assert mtu == str(nic.dhcp4.mtu) and "default via 10.77.0.1" in routes
