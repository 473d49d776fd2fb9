"""managedtap / l2bridge binding (KubeVirt ``binding: {name: managedtap}``): spec rules
with exact path + message, and a plan with bridge + tap but no server of ours."""

from __future__ import annotations

from typing import Any

import pytest

from launcher.network import plan
from launcher.spec.model import BindingKind, ManagedTap
from tests.unit.network.helpers import POD_MAC, pod_state, vm_spec
from tests.unit.spec.helpers import DEV, kubevirt_vm, ok, problems, vmi_of


def doc_with(binding: dict[str, Any]) -> dict[str, Any]:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"] = [{"name": "default", "binding": binding}]
    return doc


@pytest.mark.parametrize("name", ["managedtap", "l2bridge"])
def test_both_names_are_read(name: str) -> None:
    binding = ok(doc_with({"name": name})).interfaces[0].binding
    assert binding == ManagedTap(name=name)
    assert binding.kind is BindingKind.MANAGEDTAP


def test_other_plugins_are_refused() -> None:
    assert problems(doc_with({"name": "passt"})) == [
        f'{DEV}.interfaces[0].binding.name: "passt" is not one of managedtap, l2bridge'
    ]
    assert problems(doc_with({})) == [f"{DEV}.interfaces[0].binding.name: is required"]


def test_plan_has_bridge_and_tap_but_no_server() -> None:
    (nic,) = plan(vm_spec(ManagedTap()), pod_state()).nics
    assert nic.binding is BindingKind.MANAGEDTAP
    assert nic.bridge is not None and nic.bridge.addresses == ()  # no server address
    assert (nic.dhcp4, nic.dhcp6, nic.ra) == (None, None, None)
    assert nic.device.mac == POD_MAC  # the guest takes the pod MAC
    assert nic.pod_port is not None and nic.pod_port.new_mac not in (None, POD_MAC)
    assert [str(a) for a in nic.pod_port.remove_addresses] == [
        "10.244.1.5/24",
        "fd00:10:244:1::5/64",
    ]
    # MAC-only anti-spoofing, and nothing keeps DHCP/RA from crossing the pod port
    assert all("ether" in rule and "ip " not in rule for rule in nic.nft.bridge_prerouting)
    assert nic.nft.bridge_postrouting == ()
    assert nic.routes == ()
