"""Every NIC model the spec accepts runs, or ``validate``/``plan``/``run`` refuse it (exit 2)
naming the field, the model and the hypervisor (launcher.machine.nic_model_problems)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.errors import SpecError
from launcher.machine import QEMU_NIC_MODELS, check_for_hypervisor, nic_model_problems
from launcher.network import plan
from launcher.spec import parse
from launcher.spec.model import Cpu, VmSpec
from tests.unit.network.helpers import pod_state, vm_spec
from tests.unit.spec.helpers import DEV, Doc, kubevirt_vm, kubevirt_vmi, vmi_of

QEMU_7_2 = frozenset({"virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"})


def two_nics(first: str, second: str, *, doc: Doc | None = None) -> Doc:
    doc = doc or kubevirt_vm()
    inst = vmi_of(doc) if doc["kind"] == "VirtualMachine" else doc["spec"]
    inst["domain"]["devices"]["interfaces"] = [
        {"name": "default", "masquerade": {}, "model": first},
        {"name": "blue", "bridge": {}, "model": second},
    ]
    inst["networks"] = [
        {"name": "default", "pod": {}},
        {"name": "blue", "multus": {"networkName": "blue"}},
    ]
    return doc


def spec_of(doc: Doc) -> VmSpec:
    return parse(doc)


class Probe:
    """Counts how often the (expensive) QEMU probe is asked."""

    def __init__(self, models: Collection[str]) -> None:
        self.models, self.calls = models, 0

    def __call__(self) -> Collection[str]:
        self.calls += 1
        return self.models


def lines(spec: VmSpec, hypervisor: str, models: Collection[str] = QEMU_7_2) -> list[str]:
    return [str(p) for p in nic_model_problems(spec, hypervisor, Probe(models))]


@pytest.mark.parametrize("model", ["virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"])
def test_qemu_runs_every_model_it_has(model: str) -> None:
    assert lines(spec_of(two_nics(model, model)), "qemu") == []


def test_qemu_without_igb_refuses_it_naming_field_model_hypervisor() -> None:
    assert lines(spec_of(two_nics("virtio", "igb")), "qemu") == [
        f'{DEV}.interfaces[1].model: "igb" is not supported by qemu: the installed QEMU has '
        "no igb device (it emulates virtio, e1000, e1000e, rtl8139, ne2k_pci, pcnet)"
    ]
    assert lines(spec_of(two_nics("igb", "igb")), "qemu", {*QEMU_7_2, "igb"}) == []


def test_cloud_hypervisor_is_virtio_only() -> None:
    spec = spec_of(two_nics("e1000", "virtio"))
    assert lines(spec, "cloud-hypervisor") == [
        f'{DEV}.interfaces[0].model: "e1000" is not supported by cloud-hypervisor, which '
        "emulates virtio NICs only (use model virtio, or run QEMU)"
    ]
    assert lines(spec_of(two_nics("virtio", "virtio")), "cloud-hypervisor") == []


def test_vmi_path() -> None:
    spec = spec_of(two_nics("pcnet", "virtio", doc=kubevirt_vmi()))
    assert [p.path for p in nic_model_problems(spec, "cloud-hypervisor", Probe(()))] == [
        "spec.domain.devices.interfaces[0].model"
    ]


def test_probe_only_asked_for_non_virtio_models_once() -> None:
    probe = Probe(QEMU_7_2)
    nic_model_problems(spec_of(two_nics("virtio", "virtio")), "qemu", probe)
    assert probe.calls == 0
    nic_model_problems(spec_of(two_nics("e1000", "rtl8139")), "qemu", probe)
    assert probe.calls == 1


def test_absent_interfaces_are_not_checked() -> None:
    doc = two_nics("virtio", "igb")
    vmi_of(doc)["domain"]["devices"]["interfaces"][1]["state"] = "absent"
    assert lines(spec_of(doc), "qemu") == []


def test_check_raises_spec_error_exit_2() -> None:
    with pytest.raises(SpecError) as info:
        check_for_hypervisor(
            spec_of(two_nics("e1000e", "virtio")),
            "cloud-hypervisor",
            qemu_binary="/nonexistent",
            cache_dir=None,
        )
    assert info.value.exit_code == 2


def test_models_listed_match_the_spec_reader() -> None:
    from launcher.spec import kubevirt

    assert set(QEMU_NIC_MODELS) == set(kubevirt._MODELS)


def write(tmp_path: Path, doc: Doc) -> str:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_validate_with_the_real_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, two_nics("rtl8139", "ne2k_pci"))
    assert main(["validate", "--spec", spec]) == 0
    assert capsys.readouterr().out.startswith("ok: kubevirt-vm default/vm2")
    assert main(["validate", "--spec", spec, "--hypervisor", "cloud-hypervisor"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f'{DEV}.interfaces[0].model: "rtl8139" is not supported by cloud-hypervisor, which '
        "emulates virtio NICs only (use model virtio, or run QEMU)",
        f'{DEV}.interfaces[1].model: "ne2k_pci" is not supported by cloud-hypervisor, which '
        "emulates virtio NICs only (use model virtio, or run QEMU)",
    ]


def test_plan_refuses_exit_2_and_still_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, two_nics("pcnet", "virtio"))
    argv = ["plan", "--offline", "--spec", spec, "--hypervisor", "cloud-hypervisor"]
    code = main([*argv, "--state-dir", str(tmp_path / "s")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2
    assert doc["problems"][0] == {
        "stage": "spec",
        "message": f'{DEV}.interfaces[0].model: "pcnet" is not supported by cloud-hypervisor, '
        "which emulates virtio NICs only (use model virtio, or run QEMU)",
        "exit_code": 2,
    }
    assert doc["spec"]["interfaces"][0]["model"] == "pcnet"


@pytest.mark.parametrize(("model", "queues"), [("virtio", 4), ("e1000", 1), ("rtl8139", 1)])
def test_multiqueue_is_virtio_only(model: str, queues: int) -> None:
    base = vm_spec()
    iface = replace(base.interfaces[0], model=model)
    spec = replace(base, interfaces=(iface,), cpu=Cpu(sockets=4), network_interface_multiqueue=True)
    assert [d.queues for d in plan(spec, pod_state()).devices] == [queues]
