"""Every body hypervisor.cloud_hypervisor.config builds is valid against the OpenAPI schemas."""

from __future__ import annotations

import pytest

from hypervisor.cloud_hypervisor.config import (
    device_config,
    net_config,
    pci_placement,
    vdpa_config,
    vm_config,
)
from hypervisor.errors import HypervisorError
from hypervisor.machine import (
    DiskImage,
    KernelBoot,
    MachineConfig,
    NetDevice,
    VdpaDevice,
    VfioDevice,
)
from tests.component.cloud_hypervisor import openapi

GiB = 1 << 30
NIC = NetDevice(id="net0", tap="tap0", mac="52:54:00:12:34:56", mtu=1450)

CONFIGS = {
    "kernel-minimal": MachineConfig(
        name="a", vcpus=1, memory_bytes=GiB, kernel=KernelBoot(kernel="/k")
    ),
    "kernel-initrd-cmdline": MachineConfig(
        name="b",
        vcpus=4,
        memory_bytes=2 * GiB,
        kernel=KernelBoot(kernel="/k", initrd="/i", cmdline="console=ttyS0 quiet"),
        nets=(NIC,),
    ),
    "firmware-disks": MachineConfig(
        name="c",
        vcpus=2,
        memory_bytes=GiB,
        firmware="/usr/share/cloud-hypervisor/hypervisor-fw",
        disks=(
            DiskImage(id="root", path="/disk.qcow2", format="qcow2", boot_order=1),
            DiskImage(id="cidata", path="/cloud-init.iso", cdrom=True),
            DiskImage(id="data", path="/dev/vdb", read_only=True),
            DiskImage(
                id="container",
                path="/state/overlay/container.qcow2",
                format="qcow2",
                backing="/volumes/container/disk.img",
                backing_format="raw",
            ),
        ),
    ),
    "passthrough": MachineConfig(
        name="d",
        vcpus=2,
        memory_bytes=GiB,
        kernel=KernelBoot(kernel="/k"),
        vfio=(VfioDevice(id="sriov0", sysfs_path="/sys/bus/pci/devices/0000:58:01.2"),),
        vdpa=(VdpaDevice(id="vdpa0", path="/dev/vhost-vdpa-0", num_queues=4, iommu=True),),
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vm_config_matches_schema(name: str) -> None:
    body = vm_config(CONFIGS[name])
    assert openapi.errors("VmConfig", body) == []


def test_vm_config_fields() -> None:
    body = vm_config(CONFIGS["kernel-initrd-cmdline"])
    assert body["cpus"] == {"boot_vcpus": 4, "max_vcpus": 4}
    assert body["memory"] == {"size": 2 * GiB}
    assert body["payload"] == {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0 quiet"}
    assert body["serial"] == {"mode": "Tty"}
    assert "net" not in body  # NICs go with vm.add-net and their fds


def test_disks_map_format_and_cdrom_to_readonly() -> None:
    disks = vm_config(CONFIGS["firmware-disks"])["disks"]
    assert [d["image_type"] for d in disks] == ["Qcow2", "Raw", "Raw", "Qcow2"]
    assert [d["readonly"] for d in disks] == [False, True, True, False]


def test_container_disk_overlay_enables_backing_files_only_for_itself() -> None:
    """cloud-hypervisor opens a qcow2 backing file only with backing_files (default off);
    only the launcher's own overlay gets it, never a user's qcow2 image."""
    disks = vm_config(CONFIGS["firmware-disks"])["disks"]
    assert [d.get("backing_files", False) for d in disks] == [False, False, False, True]
    assert disks[3] == {
        "id": "container",
        "path": "/state/overlay/container.qcow2",
        "readonly": False,
        "image_type": "Qcow2",
        "backing_files": True,
    }
    assert openapi.errors("DiskConfig", disks[3]) == []
    with pytest.raises(HypervisorError, match="overlay must be qcow2 over a raw or qcow2"):
        vm_config(
            MachineConfig(
                name="e",
                vcpus=1,
                memory_bytes=GiB,
                kernel=KernelBoot(kernel="/k"),
                disks=(DiskImage(id="d", path="/o", format="raw", backing="/i"),),
            )
        )


def test_passthrough_devices() -> None:
    body = vm_config(CONFIGS["passthrough"])
    assert body["devices"] == [{"id": "sriov0", "path": "/sys/bus/pci/devices/0000:58:01.2"}]
    assert body["vdpa"] == [
        {"id": "vdpa0", "path": "/dev/vhost-vdpa-0", "num_queues": 4, "iommu": True}
    ]


@pytest.mark.parametrize(
    ("dev", "fds", "expected"),
    [
        (NIC, 1, {"id": "net0", "mac": NIC.mac, "mtu": 1450, "num_queues": 2}),
        (
            NetDevice(id="n1", tap="t1", mac="02:00:00:00:00:01", mtu=9000, queues=4),
            4,
            {"id": "n1", "mac": "02:00:00:00:00:01", "mtu": 9000, "num_queues": 8},
        ),
        (NIC, 0, {"id": "net0", "mac": NIC.mac, "mtu": 1450, "num_queues": 2, "tap": "tap0"}),
        (
            NetDevice(
                id="n2", tap="t2", mac="02:00:00:00:00:02", mtu=1500, pci_address="0000:00:07.0"
            ),
            1,
            {
                "id": "n2",
                "mac": "02:00:00:00:00:02",
                "mtu": 1500,
                "num_queues": 2,
                "pci_segment": 0,
                "pci_device_id": 7,
            },
        ),
    ],
)
def test_net_config(dev: NetDevice, fds: int, expected: dict[str, object]) -> None:
    body = net_config(dev, fds)
    assert body == expected
    assert openapi.errors("NetConfig", body) == []


def test_net_config_refuses_fd_count_not_matching_queues() -> None:
    with pytest.raises(HypervisorError, match="2 queue pairs but 1 tap fds"):
        net_config(NetDevice(id="n", tap="t", mac="02:00:00:00:00:03", mtu=1500, queues=2), 1)


def test_net_config_refuses_non_virtio_model() -> None:
    with pytest.raises(HypervisorError, match="e1000"):
        net_config(NetDevice(id="n", tap="t", mac="02:00:00:00:00:03", mtu=1500, model="e1000"), 1)


def test_device_and_vdpa_bodies_match_schema() -> None:
    vfio = device_config(
        VfioDevice(
            id="v", sysfs_path="/sys/bus/pci/devices/0000:01:00.1", guest_pci_address="0001:00:1f.0"
        )
    )
    assert vfio["pci_segment"] == 1 and vfio["pci_device_id"] == 31
    assert openapi.errors("DeviceConfig", vfio) == []
    vdpa = vdpa_config(VdpaDevice(id="d", path="/dev/vhost-vdpa-1"))
    assert vdpa["num_queues"] == 1
    assert openapi.errors("VdpaConfig", vdpa) == []


@pytest.mark.parametrize("address", ["0000:01:02.0", "0000:00:02.1", "00:20.0", "zz", "0000:00:02"])
def test_pci_placement_refuses_unusable_addresses(address: str) -> None:
    with pytest.raises(HypervisorError, match=address):
        pci_placement(address)


def test_pci_placement_short_form() -> None:
    assert pci_placement("00:05.0") == {"pci_segment": 0, "pci_device_id": 5}
    assert pci_placement(None) == {}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (MachineConfig(name="x", vcpus=1, memory_bytes=GiB), "neither a kernel nor a firmware"),
        (MachineConfig(name="x", vcpus=0, memory_bytes=GiB, firmware="/f"), "0 vCPUs"),
        (
            MachineConfig(
                name="x",
                vcpus=1,
                memory_bytes=GiB,
                firmware="/f",
                disks=(DiskImage(id="d", path="/d", format="vmdk"),),
            ),
            "vmdk",
        ),
    ],
)
def test_vm_config_refusals(config: MachineConfig, message: str) -> None:
    with pytest.raises(HypervisorError, match=message):
        vm_config(config)


def test_strict_schema_catches_a_misspelt_field() -> None:
    """The validator really checks: a typo and a wrong type are reported."""
    body = vm_config(CONFIGS["kernel-minimal"])
    body["cpus"]["boot_vcpu"] = 1
    body["memory"]["size"] = "1G"
    problems = openapi.errors("VmConfig", body)
    assert any("boot_vcpu" in p for p in problems)
    assert any("memory/size" in p for p in problems)
