"""The link refresh's pod side in a real netns (root): the bridge binding is applied, then
the "CNI" puts a new address on eth0. Checked: an unprivileged process with no
capability (as the launcher is after its drop) is told by rtnetlink and reads eth0's
addresses; the decision is a refresh; the re-plan applied through the NIC's owner moves
the new address off eth0, loads anti-spoofing rules that admit the guest's new address
(a guest stand-in with it reaches the peer, one with the old address does not) and
records the new original; exit cleanup gives eth0 the new address, not the old one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from launcher.hotplug.refresh import RefreshAction, decide
from launcher.network import NicPlan, PlanOptions, apply, discover, plan
from launcher.network.addrwatch import LinkAddresses
from launcher.network.plan import plan_interface
from launcher.network.state import read_record
from launcher.nics import LocalRunner, Nics
from testbed.harness import sh
from testbed.netns import Topology, ping
from testbed.runner import build_spec

REPO = Path(__file__).resolve().parents[3]
NEW = "10.77.0.7/24"

WATCH = """
import json, select, socket, sys
from launcher.network.addrwatch import AddressMonitor, link_addresses
monitor = AddressMonitor()
print("ready", flush=True)
ready, _, _ = select.select([monitor.fileno()], [], [], 10)
events = monitor.read() if ready else []
now = link_addresses(socket.if_nametoindex("eth0"))
with open("/proc/self/status") as f:
    caps = [ln.split()[1] for ln in f if ln.startswith("CapEff")]
print(json.dumps({
    "events": [[e.kind, e.index, str(e.address)] for e in events or []],
    "eth0": socket.if_nametoindex("eth0"),
    "now4": [str(a) for a in now.addresses4], "now6": [str(a) for a in now.addresses6],
    "caps": caps[0], "uid": __import__("os").getuid(),
}), flush=True)
"""


def addresses(topo: Topology) -> list[str]:
    out = json.loads(sh("ip", "-n", topo.pod, "-j", "addr", "show", "dev", "eth0").stdout)
    return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a["scope"] == "global"]


def test_a_new_pod_address_is_seen_unprivileged_moved_off_admitted_and_given_back(
    topo: Topology, tmp_path: Path
) -> None:
    topo.create()
    spec = build_spec("bridge", 1, "")
    options = PlanOptions(stand_in_netns=topo.guest)
    first = plan(spec, discover(topo.pod, tmp_path, hostname="pod-host"), options)
    apply(first, tmp_path, netns=topo.pod)
    (nic,) = first.nics
    assert addresses(topo) == []  # the bridge binding moved them to the guest

    watcher = subprocess.Popen(
        ["ip", "netns", "exec", topo.pod, "setpriv", "--reuid", "65534", "--regid", "65534",
         "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", WATCH],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready"
        sh("ip", "-n", topo.pod, "addr", "add", NEW, "dev", "eth0")
        seen = json.loads(watcher.stdout.readline())
    finally:
        watcher.kill()
        watcher.wait(10)
    assert (seen["uid"], seen["caps"]) == (65534, "0000000000000000")
    assert [20, seen["eth0"], NEW] in seen["events"]
    assert seen["now4"] == [NEW] and seen["now6"] == []

    now = LinkAddresses(tuple(map(ipaddress.IPv4Interface, seen["now4"])))
    decision = decide(nic, now)
    assert decision.action is RefreshAction.REFRESH
    pod = discover(topo.pod, tmp_path, hostname="pod-host")  # the recorded original
    link = replace(pod.link("eth0"), addresses4=decision.addresses4)
    pod = replace(pod, links=tuple(link if lk.name == "eth0" else lk for lk in pod.links))
    new = plan_interface(spec, pod, options, nic.name, at=nic.index)
    assert isinstance(new, NicPlan)

    async def wire() -> None:
        async with Nics(LocalRunner(tmp_path, topo.pod), state_dir=tmp_path) as nics:
            await nics.add(nic, serve=False)  # the running NIC (apply: no change)
            await asyncio.to_thread(check_old)
            await nics.replan(nic.name, new)
            await asyncio.to_thread(check_new)

    def check_old() -> None:
        sh("ip", "-n", topo.guest, "addr", "add", "10.77.0.5/24", "dev", "vlg0")
        assert ping(topo.guest, "10.77.0.1")  # the guest with its first lease

    def check_new() -> None:
        assert addresses(topo) == []  # moved off eth0 again
        assert not ping(topo.guest, "10.77.0.1")  # the old address is spoofing now
        sh("ip", "-n", topo.guest, "addr", "flush", "dev", "vlg0")
        sh("ip", "-n", topo.guest, "addr", "add", NEW, "dev", "vlg0")
        assert ping(topo.guest, "10.77.0.1", count=3)
        record = read_record(tmp_path, "eth0")
        assert record is not None and record.original["addresses4"] == [NEW]
        assert record.snapshot is not None
        v4 = [str(a.address) for a in record.snapshot.addresses if a.address.version == 4]
        assert v4 == [NEW]
        again = plan(spec, discover(topo.pod, tmp_path, hostname="pod-host"), options)
        assert again.nics[0] == new  # a restarted launcher plans the new address

    asyncio.run(wire())
    assert addresses(topo)[:1] == [NEW] and "10.77.0.5/24" not in addresses(topo)
    routes = sh("ip", "-n", topo.pod, "route", "show", "default").stdout
    assert "via 10.77.0.1 dev eth0" in routes
