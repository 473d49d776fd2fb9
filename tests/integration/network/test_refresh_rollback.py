"""A link refresh whose re-apply fails part-way, in a real netns (root): the running NIC
keeps its network.

The bridge binding is applied (the guest stand-in with its first lease, 10.77.0.5,
reaches the peer), then the "CNI" puts a new address on eth0 and the NIC is re-planned
with it, as the link refresh does. The re-apply of the running NIC is failed before each
of its steps in turn (``testbed.faults``: the transaction record, the address moved off
eth0, the nftables load, the digest, the interface record, the commit). After every
failure the pod is exactly as it was just before the attempt: the bridge, the tap and
eth0's membership of the bridge are there (never deleted: they existed before the
transaction), eth0 has the CNI's new address again, the launcher's nftables ruleset and
the interface record are as before, no transaction record is left, and the guest still
reaches the peer with its old address. Then the same re-apply without a fault succeeds.
A kill -9 of the re-apply (a forked child) is rolled back the same way by ``recover``.
The first apply's rollback (the pod as the CNI made it) is test_transaction.py's.
"""

from __future__ import annotations

import ipaddress
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.errors import NetworkError
from launcher.network import NetworkPlan, NicPlan, PlanOptions, apply, discover, plan, recover
from launcher.network.nftables import render
from launcher.network.plan import plan_interface
from launcher.network.state import TXN_FILE, read_record
from testbed.faults import Faults, armed
from testbed.netns import Topology, nsrun, ping, sh
from testbed.runner import build_spec

from .test_transaction import configured_dump, settle

OLD = "10.77.0.5/24"
NEW = "10.77.0.7/24"


def ruleset(topo: Topology) -> str:
    return nsrun(topo.pod, "nft", "list", "ruleset").stdout


def files(state: Path) -> dict[str, bytes]:
    """The state dir's files but the nft digest (only a cache: a rollback drops it, so
    the next apply loads the ruleset again)."""
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.name != "nft.sha256"}


def replanned(topo: Topology, state: Path, nic: NicPlan) -> NetworkPlan:
    """``nic`` re-planned with the pod's new address (what Manager._readdress plans),
    as the plan Nics.replan hands to apply."""
    spec = build_spec("bridge", 1, "")
    pod = discover(topo.pod, state, hostname="pod-host")  # the recorded original
    link = replace(pod.link("eth0"), addresses4=(ipaddress.IPv4Interface(NEW),))
    pod = replace(pod, links=tuple(link if lk.name == "eth0" else lk for lk in pod.links))
    new = plan_interface(spec, pod, PlanOptions(stand_in_netns=topo.guest), nic.name, at=nic.index)
    assert isinstance(new, NicPlan) and new.guest_ipv4 is not None
    assert str(new.guest_ipv4) == NEW
    return NetworkPlan(nics=(new,), sysctls=new.sysctls, nftables=render([new.nft]))


class KillBefore(Faults):
    """kill -9 of this process before the first step named ``what``."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def step(self, what: str) -> None:
        if what == self.what:
            os.kill(os.getpid(), signal.SIGKILL)
        super().step(what)


def test_a_failed_reapply_of_a_running_nic_keeps_its_links_and_puts_the_pod_back(
    topo: Topology, tmp_path: Path
) -> None:
    topo.create()
    state = tmp_path / "state"
    spec = build_spec("bridge", 1, "")
    first = plan(
        spec, discover(topo.pod, state, hostname="pod-host"), PlanOptions(stand_in_netns=topo.guest)
    )
    apply(first, state, netns=topo.pod)
    (nic,) = first.nics
    sh("ip", "-n", topo.guest, "addr", "add", OLD, "dev", "vlg0")
    assert ping(topo.guest, "10.77.0.1", count=3)  # the guest with its first lease

    sh("ip", "-n", topo.pod, "addr", "add", NEW, "dev", "eth0")  # the CNI re-addresses
    before = configured_dump(topo)
    assert f"inet {NEW}" in before and "master vlbr0" in before
    rules, records = ruleset(topo), files(state)
    assert "10.77.0.5" in rules and "10.77.0.7" not in rules
    again = replanned(topo, state, nic)

    def failed_and_put_back(faults: Faults) -> str:
        with armed(faults), pytest.raises(NetworkError, match="injected failure") as info:
            apply(again, state, netns=topo.pod)
        what = str(info.value)
        assert settle(topo, before) == before, f"links/addresses not put back: {what}"
        assert ruleset(topo) == rules, f"nftables not put back: {what}"
        assert files(state) == records, f"records not put back: {what}"
        assert not (state / TXN_FILE).exists()
        assert ping(topo.guest, "10.77.0.1"), f"the guest lost its network: {what}"
        return what

    # the late steps the link refresh can fail at, by name (the nft load is in a thread)
    for name in ("nftables.apply_ruleset", "Netlink.del_address", "state.remove_txn"):
        assert f"({name})" in failed_and_put_back(Faults(fail_on=name))
    # and a failure before every step in turn, until the re-apply gets past the last one
    for k in range(1, 30):
        faults = Faults(fail_at=k)
        try:
            failed_and_put_back(faults)
        except pytest.fail.Exception:  # no failure injected: it ran to the end
            break
    else:
        pytest.fail("the re-apply never completed")
    assert k == len(faults.steps) + 1 and "nftables.apply_ruleset" in faults.steps

    # ... and the re-apply that succeeded did what the refresh wants
    assert "inet 10.77.0.7" not in nsrun(topo.pod, "ip", "addr", "show", "dev", "eth0").stdout
    assert not ping(topo.guest, "10.77.0.1")  # the old address is spoofing now
    sh("ip", "-n", topo.guest, "addr", "flush", "dev", "vlg0")
    sh("ip", "-n", topo.guest, "addr", "add", NEW, "dev", "vlg0")
    assert ping(topo.guest, "10.77.0.1", count=3)
    record = read_record(state, "eth0")
    assert record is not None and record.original["addresses4"] == [NEW]


def test_a_reapply_killed_half_way_is_rolled_back_to_the_running_nic(
    topo: Topology, tmp_path: Path
) -> None:
    """kill -9 just before the commit point (the address off eth0, the new ruleset
    loaded, the new interface record written): ``recover`` (what the launcher's runner
    does after its netlink child died, or the next start) keeps the running NIC and puts
    the previous record back."""
    topo.create()
    state = tmp_path / "state"
    spec = build_spec("bridge", 1, "")
    first = plan(
        spec, discover(topo.pod, state, hostname="pod-host"), PlanOptions(stand_in_netns=topo.guest)
    )
    apply(first, state, netns=topo.pod)
    sh("ip", "-n", topo.guest, "addr", "add", OLD, "dev", "vlg0")
    sh("ip", "-n", topo.pod, "addr", "add", NEW, "dev", "eth0")
    before = configured_dump(topo)
    rules, records = ruleset(topo), files(state)
    again = replanned(topo, state, first.nics[0])

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        try:
            with armed(KillBefore("state.remove_txn")):
                apply(again, state, netns=topo.pod)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (state / TXN_FILE).exists() and files(state)["net-eth0.json"] != records["net-eth0.json"]
    assert "inet 10.77.0.7" not in nsrun(topo.pod, "ip", "addr", "show", "dev", "eth0").stdout
    assert "10.77.0.7" in ruleset(topo)

    assert recover(state, netns=topo.pod) is True
    assert settle(topo, before) == before
    assert ruleset(topo) == rules and files(state) == records
    assert ping(topo.guest, "10.77.0.1")
