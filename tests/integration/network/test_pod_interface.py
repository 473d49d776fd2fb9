"""A pod network interface the CNI did not call eth0 (``run --pod-interface``): the plan
finds it only when told, and apply/cleanup work on it like on eth0."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import NetworkError
from launcher.network import PlanOptions, apply, cleanup, discover, plan
from testbed.netns import PEER4, POD4, Topology, nsrun, sh
from testbed.runner import build_spec


def test_bridge_binding_on_a_pod_interface_named_ens5(topo: Topology, tmp_path: Path) -> None:
    topo.create(ipv6=False)
    sh("ip", "-n", topo.pod, "link", "set", "eth0", "down")
    sh("ip", "-n", topo.pod, "link", "set", "eth0", "name", "ens5")
    sh("ip", "-n", topo.pod, "link", "set", "ens5", "up")
    gateway = PEER4.split("/")[0]
    sh("ip", "-n", topo.pod, "route", "replace", "default", "via", gateway, "dev", "ens5")
    pod = discover(topo.pod, tmp_path, hostname="pod-host")
    spec = build_spec("bridge", 1, "")
    with pytest.raises(NetworkError, match="eth0"):
        plan(spec, pod, PlanOptions(stand_in_netns=topo.guest))
    planned = plan(spec, pod, PlanOptions(stand_in_netns=topo.guest, pod_interface="ens5"))
    nic = planned.nics[0]
    assert nic.pod_interface == "ens5"
    assert nic.dhcp4 is not None and str(nic.dhcp4.leases[0].address) == POD4
    assert [str(r.gateway) for r in nic.original.routes] == [gateway]
    apply(planned, tmp_path, netns=topo.pod)
    port = nsrun(topo.pod, "ip", "-o", "link", "show", "ens5").stdout
    assert "master vlbr0" in port
    assert POD4 not in nsrun(topo.pod, "ip", "-o", "addr", "show", "ens5").stdout
    cleanup(planned, tmp_path, netns=topo.pod)
    assert POD4 in nsrun(topo.pod, "ip", "-o", "addr", "show", "ens5").stdout
    assert f"default via {gateway} dev ens5" in nsrun(topo.pod, "ip", "route").stdout
