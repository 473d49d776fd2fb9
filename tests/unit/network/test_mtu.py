"""MTU override per interface (``mtu: N``): spec rules with exact path + message, and the
plan carrying it to the tap, the bridge, DHCP option 26, the RA and the hypervisor NIC."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hypervisor.machine import MachineConfig
from hypervisor.qemu.argv import QemuRuntime, build_argv
from launcher.errors import SpecError
from launcher.machine import net_device
from launcher.network import plan
from launcher.spec.model import Bridge, Masquerade, VmSpec
from tests.unit.network.helpers import pod_link, pod_state, vm_spec
from tests.unit.spec.helpers import DEV, INST, kubevirt_vm, ok, problems, virtink, vmi_of


def with_mtu(binding: Bridge | Masquerade, mtu: int | None) -> VmSpec:
    base = vm_spec(binding)
    return replace(base, interfaces=(replace(base.interfaces[0], mtu=mtu),))


# --------------------------------------------------------------------------- spec


def kv_iface(**extra: object) -> dict[str, object]:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0].update(extra)
    return doc


def test_mtu_is_read_from_both_shapes() -> None:
    assert ok(kv_iface(mtu=1400)).interfaces[0].mtu == 1400
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0]["mtu"] = 9000
    assert ok(doc).interfaces[0].mtu == 9000
    assert ok(kubevirt_vm()).interfaces[0].mtu is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (575, "575 is below 576, the smallest MTU every IPv4 host must accept"),
        (65536, "65536 is above 65535, the largest MTU of a bridge, tap or virtio NIC"),
        ("1400", 'expected an integer, got a string "1400"'),
    ],
)
def test_mtu_bounds(value: object, message: str) -> None:
    assert problems(kv_iface(mtu=value)) == [f"{DEV}.interfaces[0].mtu: {message}"]


def test_mtu_on_sriov_is_refused() -> None:
    doc = virtink()
    iface = doc["spec"]["instance"]["interfaces"][0]
    del iface["bridge"]
    iface.update(sriov={}, mtu=1500)
    doc["spec"]["networks"][0] = {"name": "pod", "multus": {"networkName": "sriov-net"}}
    want = (
        f"{INST}.interfaces[0].mtu: an MTU is set for bridge, masquerade and managedtap "
        "interfaces, not sriov (the device's MTU is the CNI's)"
    )
    assert want in problems(doc)


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize("binding", [Bridge(), Masquerade()], ids=["bridge", "masquerade"])
def test_override_reaches_every_place(binding: Bridge | Masquerade) -> None:
    (nic,) = plan(with_mtu(binding, 1400), pod_state()).nics  # pod link MTU 1450
    assert nic.bridge is not None and nic.tap is not None
    assert (nic.bridge.mtu, nic.tap.mtu, nic.device.mtu) == (1400, 1400, 1400)
    assert nic.dhcp4 is not None and nic.dhcp4.mtu == 1400
    assert nic.ra is not None and nic.ra.mtu == 1400
    argv = build_argv(
        MachineConfig(name="vm", vcpus=1, memory_bytes=1 << 28, nets=(net_device(nic.device),)),
        QemuRuntime(qmp_socket="/q"),
    )
    assert any("host_mtu=1400" in a for a in argv)
    if isinstance(binding, Bridge):  # the pod port keeps the CNI's MTU
        assert nic.pod_port is not None


@pytest.mark.parametrize("binding", [Bridge(), Masquerade()], ids=["bridge", "masquerade"])
def test_without_override_the_pod_mtu(binding: Bridge | Masquerade) -> None:
    (nic,) = plan(with_mtu(binding, None), pod_state()).nics
    assert nic.device.mtu == 1450
    assert nic.dhcp4 is not None and nic.dhcp4.mtu == 1450


def test_equal_to_pod_mtu_is_fine() -> None:
    (nic,) = plan(with_mtu(Bridge(), 1450), pod_state()).nics
    assert nic.device.mtu == 1450


@pytest.mark.parametrize("binding", [Bridge(), Masquerade()], ids=["bridge", "masquerade"])
def test_above_pod_mtu_is_refused(binding: Bridge | Masquerade) -> None:
    with pytest.raises(SpecError) as info:
        plan(with_mtu(binding, 9000), pod_state())
    assert info.value.exit_code == 2
    assert info.value.lines() == [
        f"{INST}.interfaces[0].mtu: 9000 is above the MTU 1450 of pod interface 'eth0': the "
        "launcher does not raise the pod link's MTU (the CNI sets it for the path beyond "
        "the pod)"
    ]


@pytest.mark.parametrize("binding", [Bridge(), Masquerade()], ids=["bridge", "masquerade"])
def test_below_1280_refused_only_with_ipv6(binding: Bridge | Masquerade) -> None:
    with pytest.raises(SpecError) as info:
        plan(with_mtu(binding, 1000), pod_state())
    assert info.value.lines() == [
        f"{INST}.interfaces[0].mtu: 1000 is below 1280, the minimum IPv6 MTU, and this "
        "interface carries IPv6"
    ]
    v4_only = pod_state(pod_link(v6=None, gw6=None))
    (nic,) = plan(with_mtu(binding, 1000), v4_only).nics
    assert nic.device.mtu == 1000 and nic.ra is None
    assert nic.dhcp4 is not None and nic.dhcp4.mtu == 1000
