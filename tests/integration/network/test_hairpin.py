"""Masquerade hairpin in real namespaces: the (stand-in) guest reaches its own forwarded
port through the pod IP, IPv4 and IPv6, and sees the gateway as the client; a port that
is not forwarded, and the pod's own reserved ports, are not turned back to it.

Where br_netfilter is loaded (most Kubernetes nodes, and this machine) the pod sets
``net.bridge.bridge-nf-call-iptables=0`` and ``…ip6tables=0`` as pod sysctls, as
docs/network.md "Hairpin" asks; the test does the same in its pod netns.
"""

from __future__ import annotations

from pathlib import Path

from testbed.netns import Server, Topology, connect, nsrun, ping, wait_for
from tests.integration.network.test_masquerade import _apply, _reaches_guest, configure_guest


def pod_sysctls(topo: Topology) -> None:
    """What the pod manifest declares where br_netfilter is loaded (see the docstring)."""
    for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        if Path(f"/proc/sys/net/bridge/{key}").exists():
            nsrun(topo.pod, "sysctl", "-qw", f"net.bridge.{key}=0")


def test_guest_reaches_itself_through_the_pod_ip(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    pod_sysctls(topo)
    p = _apply(topo, tmp_path, "80")
    configure_guest(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    assert _reaches_guest(topo, topo.guest, "10.77.0.5", 80) == "10.0.2.1"
    assert _reaches_guest(topo, topo.guest, "fd77::5", 80) == "fd10:0:2::1"
    assert _reaches_guest(topo, topo.guest, "10.77.0.5", 81) is None  # not forwarded


def test_reserved_ports_stay_the_pods_on_hairpin(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    pod_sysctls(topo)
    p = _apply(topo, tmp_path, "")  # every port forwarded
    configure_guest(topo, p)
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    assert _reaches_guest(topo, topo.guest, "10.77.0.5", 5555) == "10.0.2.1"
    own = Server(topo.pod, "0.0.0.0", 49152, timeout=3)
    try:
        assert connect(topo.guest, "10.77.0.5", 49152)
        assert own.result() == "10.0.2.2"  # the pod's own listener, not the guest
    finally:
        own.stop()
