"""The hot-plug diff: the running spec vs the new spec + network-status, parsed for real."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.hotplug.diff import NeedsRestart, diff
from launcher.podinfo import PodInfo, parse_network_status
from launcher.spec import load, parse
from launcher.spec.model import BindingKind, Masquerade

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def base_doc() -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "kubevirt-hotplug.yaml").read_text())
    assert isinstance(doc, dict)
    template = doc["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"] = [{"name": "defaultnetwork", "bridge": {}}]
    template["networks"] = [{"name": "defaultnetwork", "pod": {}}]
    return doc


def with_secondary(doc: dict[str, Any], binding: str = "bridge", **extra: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    template = out["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].append({"name": "sec", binding: {}, **extra})
    template["networks"].append({"name": "sec", "multus": {"networkName": "blue"}})
    return out


def status(*entries: str) -> PodInfo:
    return PodInfo(network_status=parse_network_status("[" + ",".join(entries) + "]"))


POD = '{"name": "cni", "interface": "eth0", "default": true}'
BLUE = '{"name": "default/blue", "interface": "pod16477688c0e"}'


def test_unchanged_spec_is_an_empty_diff() -> None:
    running = parse(with_secondary(base_doc()))
    assert diff(running, parse(with_secondary(base_doc())), status(POD, BLUE)).empty


def test_added_bridge_interface_with_its_pod_interface_is_plugged() -> None:
    running = parse(base_doc())
    new = parse(with_secondary(base_doc()))
    d = diff(running, new, status(POD, BLUE), ["eth0", "pod16477688c0e"])
    assert [(p.interface.name, p.pod_interface) for p in d.plug] == [("sec", "pod16477688c0e")]
    assert d.plug[0].interface.binding.kind is BindingKind.BRIDGE
    assert not d.unplug and not d.needs_restart and not d.pending


def test_added_interface_whose_pod_interface_is_missing_is_pending() -> None:
    running = parse(base_doc())
    new = parse(with_secondary(base_doc()))
    d = diff(running, new, status(POD, BLUE), ["eth0"])
    assert not d.plug
    assert [p.interface for p in d.pending] == ["sec"]
    assert "'pod16477688c0e'" in d.pending[0].reason


def test_added_interface_missing_from_network_status_is_pending_with_the_reason() -> None:
    d = diff(parse(base_doc()), parse(with_secondary(base_doc())), status(POD), ["eth0"])
    assert [p.interface for p in d.pending] == ["sec"]
    assert "default/blue" in d.pending[0].reason


def test_absent_interface_is_unplugged() -> None:
    running = parse(with_secondary(base_doc()))
    new = parse(with_secondary(base_doc(), state="absent"))
    d = diff(running, new, status(POD), ["eth0", "pod16477688c0e"])
    assert [(u.interface.name, u.reason) for u in d.unplug] == [("sec", "state: absent")]
    assert not d.plug and not d.needs_restart


def test_removed_interface_is_unplugged() -> None:
    d = diff(parse(with_secondary(base_doc())), parse(base_doc()), status(POD))
    assert [(u.interface.name, u.reason) for u in d.unplug] == [("sec", "removed from the spec")]


def test_kubevirt_examples_plug_then_unplug() -> None:
    plugged = load(EXAMPLES / "kubevirt-hotplug.yaml")
    absent = load(EXAMPLES / "kubevirt-hotplug-absent.yaml")
    d = diff(plugged, absent, status(POD))
    assert [u.interface.name for u in d.unplug] == ["secondary-nic"]
    back = diff(
        absent,
        plugged,
        status(POD, '{"name": "default/bridge-conf", "interface": "n1"}'),
        ["eth0", "n1"],
    )
    assert [(p.interface.name, p.pod_interface) for p in back.plug] == [("secondary-nic", "n1")]


def test_sriov_is_plugged_without_a_pod_link() -> None:
    new = parse(with_secondary(base_doc(), binding="sriov"))
    d = diff(parse(base_doc()), new, status(POD, BLUE), ["eth0"])
    assert [p.interface.binding.kind for p in d.plug] == [BindingKind.SRIOV]


@pytest.mark.parametrize(
    ("path", "value", "what"),
    [
        (("domain", "memory", "guest"), "2Gi", "memory"),
        (("domain", "cpu"), {"cores": 4}, "cpu"),
    ],
)
def test_cpu_and_memory_need_a_restart(path: tuple[str, ...], value: Any, what: str) -> None:
    new_doc = base_doc()
    node = new_doc["spec"]["template"]["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    d = diff(parse(base_doc()), parse(new_doc), status(POD))
    assert [n.what for n in d.needs_restart] == [what]
    assert not d.actions


def test_disk_change_needs_a_restart() -> None:
    new_doc = base_doc()
    new_doc["spec"]["template"]["spec"]["domain"]["devices"]["disks"].pop()
    new_doc["spec"]["template"]["spec"]["volumes"].pop()
    d = diff(parse(base_doc()), parse(new_doc), status(POD))
    assert {n.what for n in d.needs_restart} == {"disks", "volumes"}


def test_binding_change_of_a_running_interface_needs_a_restart_and_plugs_nothing() -> None:
    running = parse(with_secondary(base_doc()))
    new = parse(with_secondary(base_doc(), binding="sriov"))
    d = diff(running, new, status(POD, BLUE), ["eth0", "pod16477688c0e"])
    assert d.needs_restart == (
        NeedsRestart("interface 'sec'", "binding changed from bridge to sriov"),
    )
    assert not d.actions


def test_mac_change_needs_a_restart() -> None:
    running = parse(with_secondary(base_doc(), macAddress="02:00:00:00:00:01"))
    new = parse(with_secondary(base_doc(), macAddress="02:00:00:00:00:02"))
    d = diff(running, new, status(POD, BLUE), ["eth0", "pod16477688c0e"])
    assert [n.reason for n in d.needs_restart] == [
        "macAddress changed from '02:00:00:00:00:01' to '02:00:00:00:00:02'"
    ]


def test_pod_network_interface_cannot_be_unplugged() -> None:
    # validation refuses state: absent on the pod network; removing it reaches the diff
    doc = with_secondary(base_doc())
    template = doc["spec"]["template"]["spec"]
    template["domain"]["devices"]["interfaces"].pop(0)
    template["networks"].pop(0)
    d = diff(parse(with_secondary(base_doc())), parse(doc), status(POD, BLUE))
    assert not d.unplug
    assert [n.what for n in d.needs_restart] == ["interface 'defaultnetwork'"]
    assert "the pod network cannot be unplugged live" in d.needs_restart[0].reason


def test_masquerade_secondary_cannot_be_plugged() -> None:
    parsed = parse(with_secondary(base_doc()))
    sec = replace(parsed.interfaces[1], binding=Masquerade())
    new = replace(parsed, interfaces=(parsed.interfaces[0], sec))
    d = diff(parse(base_doc()), new, status(POD, BLUE), ["eth0", "pod16477688c0e"])
    assert not d.plug
    assert [n.reason for n in d.needs_restart] == ["a masquerade interface cannot be plugged live"]
