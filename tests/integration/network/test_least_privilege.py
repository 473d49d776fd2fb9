"""The pod network set up as an unprivileged container does it: /proc/sys read-only (as
every CRI runtime mounts it) and only NET_ADMIN, NET_RAW and NET_BIND_SERVICE.

discover → plan → apply run in ``python -m testbed.runner`` inside the pod netns, in a
private mount namespace whose /proc/sys is a read-only bind mount, with every other
capability dropped from the bounding set (``setpriv``), so it cannot remount it. The test
itself plays the container runtime: it presets the pod-level sysctls (the Pod's
``spec.securityContext.sysctls``) as root from outside, or does not.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.network.plan import link_local_from_mac
from testbed.netns import Topology, nsrun

REPO = Path(__file__).resolve().parents[3]
CAPS = ("net_admin", "net_raw", "net_bind_service")
CAP_MASK = (1 << 10) | (1 << 12) | (1 << 13)  # NET_BIND_SERVICE, NET_ADMIN, NET_RAW


def confined(ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in netns ``ns`` with /proc/sys read-only and only CAPS."""
    bounding = ",".join(["-all", *(f"+{c}" for c in CAPS)])
    script = (
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "
        f"setpriv --inh-caps=-all --bounding-set={bounding} {shlex.join(argv)}"
    )
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def runner(topo: Topology, state: Path, binding: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "testbed.runner", "--state-dir", str(state)]
    return confined(topo.pod, *argv, "--binding", binding)


def sysctl(ns: str, key: str) -> str:
    return nsrun(ns, "sysctl", "-n", key).stdout.strip()


def addresses6(ns: str, dev: str) -> list[str]:
    return nsrun(ns, "ip", "-6", "-o", "addr", "show", "dev", dev).stdout.splitlines()


def test_the_confinement_is_real(topo: Topology) -> None:
    """The conditions the other tests rely on: effective capabilities are exactly the
    three, /proc/sys cannot be written and cannot be remounted writable."""
    topo.create()
    status = confined(topo.pod, "grep", "^CapEff:", "/proc/self/status")
    assert int(status.stdout.split()[1], 16) == CAP_MASK, status
    write = confined(topo.pod, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    remount = confined(topo.pod, "mount", "-o", "remount,bind,rw", "/proc/sys")
    assert remount.returncode != 0
    # reading works: the launcher checks the values it needs
    assert confined(topo.pod, "cat", "/proc/sys/net/ipv4/ip_forward").returncode == 0


def test_bridge_applies_with_the_pod_level_sysctl_preset(topo: Topology, tmp_path: Path) -> None:
    topo.create()
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")  # "the runtime"
    done = runner(topo, tmp_path / "state", "bridge")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["changes"] > 0
    assert [s["key"] for s in out["plan"]["sysctls"]] == ["net.ipv6.conf.all.forwarding"]
    # per-interface settings are in effect although /proc/sys was read-only
    assert sysctl(topo.pod, "net.ipv4.conf.vlbr0.arp_ignore") == "1"
    assert sysctl(topo.pod, "net.ipv4.conf.eth0.arp_ignore") == "1"
    assert sysctl(topo.pod, "net.ipv6.conf.vlbr0.addr_gen_mode") == "1"
    assert sysctl(topo.pod, "net.ipv6.conf.vltap0.addr_gen_mode") == "1"
    # the bridge has exactly the link-local the plan serves DHCPv6/RA from, never tentative;
    # the tap has no IPv6 address at all (no DAD, no router solicitations towards the guest)
    source = link_local_from_mac(out["plan"]["nics"][0]["bridge"]["mac"])
    bridge6 = addresses6(topo.pod, "vlbr0")
    assert len(bridge6) == 1 and f"{source}/64" in bridge6[0], bridge6
    assert "tentative" not in bridge6[0] and "dadfailed" not in bridge6[0]
    assert addresses6(topo.pod, "vltap0") == []


def test_masquerade_applies_with_the_pod_level_sysctl_preset(
    topo: Topology, tmp_path: Path
) -> None:
    topo.create()
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    done = runner(topo, tmp_path / "state", "masquerade")
    assert done.returncode == 0, done.stdout + done.stderr
    for key in ("eth0.forwarding", "vlbr0.forwarding", "vlbr0.route_localnet"):
        assert sysctl(topo.pod, f"net.ipv4.conf.{key}") == "1", key
    assert sysctl(topo.pod, "net.ipv4.ip_forward") == "0"
    bridge6 = addresses6(topo.pod, "vlbr0")
    assert any("fd10:0:2::1/120" in line for line in bridge6) and len(bridge6) == 2
    assert not any("tentative" in line for line in bridge6), bridge6


def test_ipv4_masquerade_needs_no_pod_level_sysctl(topo: Topology, tmp_path: Path) -> None:
    topo.create(ipv6=False)
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    done = runner(topo, tmp_path / "state", "masquerade")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["plan"]["sysctls"] == []
    assert sysctl(topo.pod, "net.ipv4.conf.eth0.forwarding") == "1"


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_a_missing_pod_level_sysctl_is_exit_3_naming_it_and_the_pod_field(
    topo: Topology, tmp_path: Path, binding: str
) -> None:
    topo.create()
    nsrun(topo.pod, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    before = topo.settled_dump()
    state = tmp_path / "state"
    done = runner(topo, state, binding)
    assert done.returncode == 3, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["error"] == "NetworkError"
    message = out["message"]
    assert "\n" not in message
    assert "net.ipv6.conf.all.forwarding must be 1 (it is 0)" in message
    assert "/proc/sys is read-only" in message
    assert "spec.securityContext.sysctls" in message
    # nothing in the pod changed, and no state was recorded
    assert topo.settled_dump() == before
    assert not state.exists() or list(state.iterdir()) == []
    assert sysctl(topo.pod, "net.ipv6.conf.all.forwarding") == "0"
