"""The NIC owners' real pod plumbing in a real pod netns (one NIC at a time), as hot plug
uses it: ``launcher.machine.plan_nic`` + ``launcher.nics.Nics.add/remove``.

A running masquerade NIC on eth0 (with its nftables rules) stays untouched while a
secondary bridge NIC is planned against the pod as it is now, added (bridge, tap,
addresses moved off the Multus interface) and removed again (pod interface restored);
leaving the set removes the boot NIC too. Through the in-process runner and through the
netlink child (the launcher's way).
Namespaces are ``hp-*`` with a random token and always deleted.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from launcher.agent import AgentRunner
from launcher.machine import plan_nic
from launcher.network import NicPlan, PlanOptions, plan
from launcher.network.multus import kubevirt_hashed_name
from launcher.network.names import bridge_name, device_id, tap_name
from launcher.nics import LocalRunner, Nics, PodRunner
from launcher.options import RunOptions
from launcher.podinfo import PodInfo, parse_network_status
from launcher.spec import parse
from launcher.spec.model import Bridge, Interface, MultusNetwork, Network

SEC_LINK = "podadd93534eeb"  # KubeVirt's hashed pod interface name for network "sec"


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def pod() -> Iterator[str]:
    token = secrets.token_hex(3)
    pod, peer = f"hp-pod-{token}", f"hp-peer-{token}"
    try:
        for ns in (pod, peer):
            sh("ip", "netns", "add", ns)
        for i, (name, addr) in enumerate((("eth0", "10.79.0.5/24"), (SEC_LINK, "10.79.1.5/24"))):
            sh(
                "ip",
                "-n",
                pod,
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                f"hpp{i}",
                "netns",
                peer,
            )
            sh("ip", "-n", pod, "addr", "add", addr, "dev", name)
            sh("ip", "-n", pod, "link", "set", name, "up")
            sh("ip", "-n", peer, "link", "set", f"hpp{i}", "up")
        sh("ip", "-n", pod, "route", "add", "default", "via", "10.79.0.1")
        yield pod
    finally:
        for ns in (pod, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def doc(sec: bool) -> dict[str, Any]:
    interfaces: list[dict[str, Any]] = [{"name": "default", "masquerade": {}}]
    networks: list[dict[str, Any]] = [{"name": "default", "pod": {}}]
    if sec:
        interfaces.append({"name": "sec", "bridge": {}})
        networks.append({"name": "sec", "multus": {"networkName": "blue"}})
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns"},
        "spec": {
            "domain": {"devices": {"interfaces": interfaces}, "memory": {"guest": "1Gi"}},
            "networks": networks,
        },
    }


def links(ns: str) -> dict[str, dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(sh("ip", "-n", ns, "-j", "addr", "show"))
    return {link["ifname"]: link for link in out}


def v4(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def runner_for(isolated: bool, state: Path, pod: str) -> PodRunner:
    if isolated:
        return AgentRunner(state, netns=pod)  # each call in a fresh netlink child
    return LocalRunner(state, pod)


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "netlink-child"])
async def test_plan_add_remove_one_nic_next_to_a_running_masquerade(
    pod: str, tmp_path: Path, isolated: bool
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    options = RunOptions(spec_path=tmp_path / "vm.yaml", state_dir=state)
    runner = runner_for(isolated, state, pod)
    async with Nics(runner, state_dir=state) as nics:
        running = plan(parse(doc(False)), await runner.discover(), PlanOptions())
        for boot_nic in running.nics:
            await nics.add(boot_nic, serve=False, critical=True)
        rules_before = sh("ip", "netns", "exec", pod, "nft", "list", "ruleset")
        assert "masquerade" in rules_before

        info = PodInfo(
            network_status=parse_network_status(
                json.dumps([{"name": "ns/blue", "interface": SEC_LINK, "ips": ["10.79.1.5"]}])
            )
        )
        now_pod = await runner.discover()
        assert SEC_LINK in [link.name for link in now_pod.links]
        taken = {o.plan.index for o in nics}
        nic = plan_nic(parse(doc(True)), now_pod, options, info, "sec", avoid=taken)
        assert isinstance(nic, NicPlan)
        others = list(running.nics)
        assert {nic.tap.name, nic.bridge.name}.isdisjoint(
            {others[0].tap.name, others[0].bridge.name}
        )
        await nics.add(nic, serve=False)
        now = links(pod)
        assert nic.tap.name in now and nic.bridge.name in now
        assert v4(now[SEC_LINK]) == []  # the guest takes the address over DHCP
        assert now[nic.tap.name].get("master") == nic.bridge.name
        rules = sh("ip", "netns", "exec", pod, "nft", "list", "ruleset")
        assert set(rules_before.splitlines()) <= set(rules.splitlines())  # running NIC kept
        assert f'iifname "{nic.tap.name}"' in rules  # the new NIC's anti-spoofing rules added

        await nics.remove("sec")
        after = links(pod)
        assert nic.tap.name not in after and nic.bridge.name not in after
        assert v4(after[SEC_LINK]) == ["10.79.1.5/24"]
        assert others[0].tap.name in after  # the running NIC is untouched
        assert sh("ip", "netns", "exec", pod, "nft", "list", "ruleset") == rules_before
    # leaving the set removed every NIC: the pod is as the CNI left it
    final = links(pod)
    assert others[0].tap.name not in final and others[0].bridge.name not in final
    assert "virt_launcher" not in sh("ip", "netns", "exec", pod, "nft", "list", "tables")


async def test_a_taken_index_is_replanned_at_the_lowest_free_one(pod: str, tmp_path: Path) -> None:
    # running [default(0), sec(1), x(2)]; sec unplugged; the new spec [default, x, y]
    # would give y index 2 by position, which x still uses
    y_link = kubevirt_hashed_name("y")
    sh("ip", "-n", pod, "link", "add", y_link, "type", "veth", "peer", "name", "hpy0")
    sh("ip", "-n", pod, "link", "set", y_link, "up")
    new = parse(doc(False))
    iface_y = Interface(name="y", binding=Bridge())
    x = Interface(name="x", binding=Bridge())
    new = replace(
        new,
        interfaces=(*new.interfaces, x, iface_y),
        networks=(
            *new.networks,
            Network("x", MultusNetwork("red")),
            Network("y", MultusNetwork("green")),
        ),
    )
    info = PodInfo(
        network_status=parse_network_status(
            json.dumps(
                [
                    {"name": "ns/red", "interface": SEC_LINK},
                    {"name": "ns/green", "interface": y_link},
                ]
            )
        )
    )
    options = RunOptions(spec_path=tmp_path / "vm.yaml", state_dir=tmp_path)
    now_pod = await LocalRunner(tmp_path, pod).discover()
    by_position = plan_nic(new, now_pod, options, info, "y")
    assert isinstance(by_position, NicPlan) and by_position.index == 2
    nic = plan_nic(new, now_pod, options, info, "y", avoid={0, 2})
    assert isinstance(nic, NicPlan) and nic.index == 1
    assert (nic.tap.name, nic.bridge.name, nic.device.id) == (
        tap_name(1),
        bridge_name(1),
        device_id(1),
    )
    assert nic.pod_interface == y_link
