"""Masquerade port ranges in real namespaces: the interval set is accepted by the kernel
in the one nftables transaction; a port inside a range reaches the guest, one outside
does not, and a single listed port in the same set still does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from launcher.network import PlanOptions, apply, discover, plan
from launcher.spec.model import Masquerade, Port, PortRange
from testbed.netns import Topology, nsrun, ping, wait_for
from testbed.runner import build_spec
from tests.integration.network.test_masquerade import _reaches_guest, configure_guest


def test_inside_a_range_reaches_the_guest_outside_does_not(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    base = build_spec("masquerade", 1, "")
    binding = Masquerade(ports=(Port(80),), port_ranges=(PortRange(8000, 8100),))
    spec = replace(base, interfaces=(replace(base.interfaces[0], binding=binding),))
    pod = discover(netns=topo.pod, state_dir=tmp_path, hostname="pod-host")
    p = plan(spec, pod, PlanOptions(stand_in_netns=topo.guest))
    apply(p, tmp_path, netns=topo.pod)
    configure_guest(topo, p)
    ruleset = nsrun(topo.pod, "nft", "list", "set", "inet", "virt_launcher", "tcp0").stdout
    assert "flags interval" in ruleset and "8000-8100" in ruleset, ruleset
    assert wait_for(lambda: ping(topo.guest, "10.0.2.1"), timeout=10)
    for port in (8000, 8050, 8100, 80):
        assert _reaches_guest(topo, topo.peer, "10.77.0.5", port) == "10.77.0.1", port
    assert _reaches_guest(topo, topo.peer, "fd77::5", 8100) == "fd77::1"
    for port in (7999, 8101):
        assert _reaches_guest(topo, topo.peer, "10.77.0.5", port) is None, port
    assert _reaches_guest(topo, topo.peer, "fd77::5", 8101) is None
