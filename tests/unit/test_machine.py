"""launcher.machine: hypervisor choice and VmSpec + NetworkPlan + volumes → MachineConfig,
checked through the real QEMU argv and cloud-hypervisor config builders.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hypervisor.cloud_hypervisor.config import vm_config
from hypervisor.machine import VdpaDevice, VfioDevice
from hypervisor.qemu.argv import QemuRuntime, build_argv
from launcher.errors import UsageError, VolumeError
from launcher.machine import build_machine, choose_hypervisor, net_device
from launcher.network import plan
from launcher.network.devices import GuestVdpa, GuestVfio
from launcher.network.multus import InterfaceMapping, MappingRule, PassthroughNic
from launcher.spec.model import (
    BindingKind,
    CloudInitNoCloud,
    ContainerDisk,
    Cpu,
    Disk,
    KernelBoot,
    SourceShape,
    Volume,
)
from launcher.volumes import QCOW2_MAGIC, VolumeLayout, resolve
from tests.unit.network.helpers import POD_MAC, pod_state, vm_spec

MIB = 1 << 20


@pytest.mark.parametrize(
    ("shape", "override", "expected"),
    [
        (SourceShape.VIRTINK, None, "cloud-hypervisor"),
        (SourceShape.KUBEVIRT_VM, None, "qemu"),
        (SourceShape.KUBEVIRT_VMI, None, "qemu"),
        (SourceShape.VIRTINK, "qemu", "qemu"),
        (SourceShape.KUBEVIRT_VMI, "cloud-hypervisor", "cloud-hypervisor"),
    ],
)
def test_choose_hypervisor(shape: SourceShape, override: str | None, expected: str) -> None:
    assert choose_hypervisor(replace(vm_spec(), shape=shape), override) == expected


def test_choose_hypervisor_refuses_unknown_names() -> None:
    with pytest.raises(UsageError, match="hypervisor 'firecracker' is not one of"):
        choose_hypervisor(vm_spec(), "firecracker")


def test_machine_from_spec_plan_and_volumes(tmp_path: Path) -> None:
    layout = VolumeLayout(volumes_dir=tmp_path / "v", scratch_dir=tmp_path / "s")
    for rel, data in [("kernel/boot/vmlinuz", b"k"), ("kernel/boot/initrd.img", b"i")]:
        (layout.volumes_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (layout.volumes_dir / rel).write_bytes(data)
    (layout.volumes_dir / "root").mkdir()
    (layout.volumes_dir / "root/disk.img").write_bytes(QCOW2_MAGIC + b"\0" * 60)
    spec = replace(
        vm_spec(),
        shape=SourceShape.KUBEVIRT_VMI,
        cpu=Cpu(cores=2),
        memory_bytes=300 * MIB + 1,
        kernel=KernelBoot(
            image="k",
            kernel_path="/boot/vmlinuz",
            initrd_path="/boot/initrd.img",
            cmdline="console=ttyS0",
        ),
        disks=(Disk(name="root", boot_order=1), Disk(name="cidata", cdrom=True)),
        volumes=(
            Volume(name="root", source=ContainerDisk(image="r")),
            Volume(name="cidata", source=CloudInitNoCloud(user_data="#cloud-config\n")),
        ),
    )
    net = plan(spec, pod_state())
    machine = build_machine(spec, net, resolve(spec, layout))
    assert machine.name == "vm1" and machine.vcpus == 2
    assert machine.memory_bytes == 301 * MIB  # rounded up to whole MiB
    assert machine.kernel is not None
    assert machine.kernel.kernel == str(layout.volumes_dir / "kernel/boot/vmlinuz")
    assert machine.kernel.initrd == str(layout.volumes_dir / "kernel/boot/initrd.img")
    assert machine.kernel.cmdline == "console=ttyS0" and machine.firmware is None
    assert machine.nets == tuple(net_device(d) for d in net.devices)
    assert machine.nets[0].mac == POD_MAC and machine.hotplug_ports == 4
    # the cloud-init ISO is attached at its planned path (run builds it before the VMM)
    assert [(d.id, d.format, d.boot_order, d.cdrom, d.read_only) for d in machine.disks] == [
        ("disk0", "qcow2", 1, False, False),
        ("disk1", "raw", None, True, True),
    ]
    assert machine.disks[1].path == str(layout.scratch_dir / "cloud-init/cidata.iso")

    argv = build_argv(machine, QemuRuntime(qmp_socket=str(tmp_path / "qmp")))
    assert argv[argv.index("-kernel") + 1] == machine.kernel.kernel
    assert argv[argv.index("-append") + 1] == "console=ttyS0"
    assert argv[argv.index("-m") + 1] == "301M"
    assert any(f"mac={POD_MAC}" in a for a in argv)
    body = vm_config(machine)
    assert body["payload"]["initramfs"] == machine.kernel.initrd
    # the containerDisk: the guest gets an overlay in the state dir over the image
    overlay = str(layout.scratch_dir / "overlay/root.qcow2")
    image = str(layout.volumes_dir / "root/disk.img")
    assert (machine.disks[0].path, machine.disks[0].backing) == (overlay, image)
    assert machine.disks[0].backing_format == "qcow2"
    assert body["disks"][0]["path"] == overlay and body["disks"][0]["backing_files"] is True


def test_firmware_only_without_kernel(tmp_path: Path) -> None:
    spec = vm_spec()
    layout = VolumeLayout(volumes_dir=tmp_path, scratch_dir=tmp_path)
    machine = build_machine(
        spec, plan(spec, pod_state()), resolve(spec, layout), firmware="/fw/hypervisor-fw"
    )
    assert machine.kernel is None and machine.firmware == "/fw/hypervisor-fw"
    assert vm_config(machine)["payload"] == {"firmware": "/fw/hypervisor-fw"}


def test_initrd_without_kernel_is_refused(tmp_path: Path) -> None:
    spec = replace(
        vm_spec(),
        shape=SourceShape.KUBEVIRT_VMI,
        kernel=KernelBoot(image="k", initrd_path="/initrd"),
    )
    layout = VolumeLayout(volumes_dir=tmp_path, scratch_dir=tmp_path)
    with pytest.raises(VolumeError, match="is given without a kernel"):
        build_machine(spec, plan(spec, pod_state()), resolve(spec, layout))


def test_passthrough_devices_come_from_the_plan(tmp_path: Path) -> None:
    spec = vm_spec()
    net = plan(spec, pod_state())
    vf = GuestVfio(id="sriov0", sysfs_path="/sys/bus/pci/devices/0000:58:01.2")
    vdpa = GuestVdpa(id="vdpa0", path="/dev/vhost-vdpa-0", num_queues=4)
    passthrough = tuple(
        PassthroughNic(
            name=dev.id,
            binding=kind,
            network=dev.id,
            mapping=InterfaceMapping(dev.id, dev.id, None, None, next(iter(MappingRule))),
            device=dev,
            device_source="test",
        )
        for dev, kind in ((vf, BindingKind.SRIOV), (vdpa, BindingKind.VDPA))
    )
    layout = VolumeLayout(volumes_dir=tmp_path, scratch_dir=tmp_path)
    machine = build_machine(spec, replace(net, passthrough=passthrough), resolve(spec, layout))
    assert machine.vfio == (
        VfioDevice(id="sriov0", sysfs_path="/sys/bus/pci/devices/0000:58:01.2"),
    )
    assert machine.vdpa == (VdpaDevice(id="vdpa0", path="/dev/vhost-vdpa-0", num_queues=4),)
    assert [(n.id, n.tap, n.mac, n.mtu) for n in machine.nets] == [
        (d.id, d.tap, d.mac, d.mtu) for d in net.devices
    ]


def test_the_plans_guest_devices_map_field_for_field_to_the_hypervisors() -> None:
    """launcher.network.devices mirrors hypervisor.machine's device types on purpose (the
    network package does not import the hypervisor package); no field may drift."""
    import dataclasses

    from hypervisor.machine import NetDevice
    from launcher.machine import passthrough_device
    from launcher.network.devices import GuestNic

    pairs = ((GuestNic, NetDevice), (GuestVfio, VfioDevice), (GuestVdpa, VdpaDevice))
    for ours, theirs in pairs:
        assert [f.name for f in dataclasses.fields(ours)] == [
            f.name for f in dataclasses.fields(theirs)
        ]
    nic = GuestNic("net3", "vltap3", "02:00:00:00:00:03", 1400, 2, "0000:01:00.0", 3, "e1000")
    assert dataclasses.astuple(net_device(nic)) == dataclasses.astuple(nic)
    vf = GuestVfio("hostdev1", "/sys/bus/pci/devices/0000:3b:02.2", "0000:07:00.0")
    vdpa = GuestVdpa("vdpa1", "/dev/vhost-vdpa-1", 4, True)
    assert dataclasses.astuple(passthrough_device(vf)) == dataclasses.astuple(vf)
    assert dataclasses.astuple(passthrough_device(vdpa)) == dataclasses.astuple(vdpa)
