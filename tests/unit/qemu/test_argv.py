"""Unit tests for hypervisor.qemu.argv: exact argvs for many machine configs."""

from __future__ import annotations

import json

import pytest

from hypervisor.errors import HypervisorError
from hypervisor.machine import (
    DiskImage,
    KernelBoot,
    MachineConfig,
    NetDevice,
    VdpaDevice,
    VfioDevice,
)
from hypervisor.qemu.argv import QemuRuntime, build_argv

RT = QemuRuntime(qmp_socket="/run/vl/qmp.sock")
MAC = "52:54:00:12:34:56"

BASE = [
    "qemu-system-x86_64",
    "-name",
    "guest=vm1,debug-threads=on",
    "-no-user-config",
    "-nodefaults",
    "-nographic",
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-smp",
    "2",
    "-m",
    "512M",
    "-qmp",
    "unix:/run/vl/qmp.sock,server=on,wait=off",
    "-chardev",
    "stdio,id=serial0,signal=off",
    "-serial",
    "chardev:serial0",
    "-device",
    "pvpanic",
]


def machine(**kw: object) -> MachineConfig:
    fields: dict[str, object] = {
        "name": "vm1",
        "vcpus": 2,
        "memory_bytes": 512 << 20,
        "hotplug_ports": 0,
    }
    fields.update(kw)
    return MachineConfig(**fields)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[str]:
    """Every value that follows ``flag`` in argv, in order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def devs(argv: list[str]) -> list[str]:
    """The ``-device`` values after the fixed pvpanic device every machine has."""
    values = pairs(argv, "-device")
    assert values[0] == "pvpanic"
    return values[1:]


def port(rp_id: str, slot: int, chassis: int) -> str:
    return (
        f"pcie-root-port,id={rp_id},bus=pcie.0,addr=0x{slot:02x}.0x0,"
        f"chassis={chassis},port=0x{0x10 + chassis:x}"
    )


def test_bare_machine_is_exactly_the_base_argv() -> None:
    assert build_argv(machine(), RT) == BASE


def test_kvm_uses_host_cpu_and_pidfile_and_binary() -> None:
    rt = QemuRuntime(
        qmp_socket="/q.sock", accel="kvm", binary="/usr/bin/qemu-kvm", pidfile="/run/q.pid"
    )
    argv = build_argv(machine(vcpus=4, memory_bytes=2 << 30), rt)
    assert argv[0] == "/usr/bin/qemu-kvm"
    assert pairs(argv, "-accel") == ["kvm"]
    assert pairs(argv, "-cpu") == ["host"]
    assert pairs(argv, "-smp") == ["4"]
    assert pairs(argv, "-m") == ["2048M"]
    assert argv[-2:] == ["-pidfile", "/run/q.pid"]


def test_direct_kernel_boot() -> None:
    cfg = machine(kernel=KernelBoot("/g/vmlinuz", "/g/initrd.img", "console=ttyS0 quiet"))
    assert build_argv(cfg, RT) == [
        *BASE,
        "-kernel",
        "/g/vmlinuz",
        "-initrd",
        "/g/initrd.img",
        "-append",
        "console=ttyS0 quiet",
    ]


def test_kernel_without_initrd_or_cmdline() -> None:
    assert build_argv(machine(kernel=KernelBoot("/k")), RT) == [*BASE, "-kernel", "/k"]


def test_firmware_whole_image_is_bios() -> None:
    argv = build_argv(machine(firmware="/usr/share/qemu/OVMF.fd"), RT)
    assert argv == [*BASE, "-bios", "/usr/share/qemu/OVMF.fd"]


def test_firmware_code_image_is_readonly_pflash_with_escaped_commas() -> None:
    argv = build_argv(machine(firmware="/fw,x/OVMF_CODE_4M.fd"), RT)
    assert argv == [
        *BASE,
        "-drive",
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw,,x/OVMF_CODE_4M.fd",
    ]


def test_kernel_and_firmware_together_is_an_error() -> None:
    with pytest.raises(HypervisorError, match="both a kernel and firmware"):
        build_argv(machine(kernel=KernelBoot("/k"), firmware="/fw.fd"), RT)


def test_single_queue_tap_by_name() -> None:
    cfg = machine(nets=(NetDevice("net0", "tap0", MAC, 1450),))
    assert build_argv(cfg, RT) == [
        *BASE,
        "-device",
        port("rp-net0", 0x02, 1),
        "-netdev",
        "tap,id=hn-net0,ifname=tap0,script=no,downscript=no",
        "-device",
        f"virtio-net-pci,id=net0,netdev=hn-net0,mac={MAC},host_mtu=1450,bus=rp-net0",
    ]


def test_multiqueue_tap_by_name_has_queues_mq_and_vectors() -> None:
    cfg = machine(nets=(NetDevice("net0", "tap0", MAC, 9000, queues=4, boot_order=2),))
    argv = build_argv(cfg, RT)
    assert pairs(argv, "-netdev") == ["tap,id=hn-net0,ifname=tap0,script=no,downscript=no,queues=4"]
    assert devs(argv)[-1] == (
        f"virtio-net-pci,id=net0,netdev=hn-net0,mac={MAC},host_mtu=9000,"
        "mq=on,vectors=10,bootindex=2,bus=rp-net0"
    )


def test_taps_by_fd_single_and_multi() -> None:
    rt = QemuRuntime(qmp_socket="/q", tap_fds={"net0": (7,), "net1": (8, 9)})
    cfg = machine(
        nets=(
            NetDevice("net0", "tap0", MAC, 1500),
            NetDevice("net1", "tap1", "52:54:00:00:00:02", 1500, queues=2),
        )
    )
    argv = build_argv(cfg, rt)
    assert pairs(argv, "-netdev") == ["tap,id=hn-net0,fd=7", "tap,id=hn-net1,fds=8:9"]
    assert "mq=on,vectors=6" in devs(argv)[-1]


def test_fd_count_must_match_queue_pairs() -> None:
    rt = QemuRuntime(qmp_socket="/q", tap_fds={"net0": (7,)})
    cfg = machine(nets=(NetDevice("net0", "tap0", MAC, 1500, queues=2),))
    with pytest.raises(HypervisorError, match="net0 has 1 tap fds but 2 queue pairs"):
        build_argv(cfg, rt)


def test_vhost_only_when_vhost_net_exists() -> None:
    cfg = machine(nets=(NetDevice("net0", "tap0", MAC, 1500),))
    assert pairs(build_argv(cfg, RT), "-netdev")[0].endswith("downscript=no")
    rt = QemuRuntime(qmp_socket="/run/vl/qmp.sock", vhost_net=True)
    assert pairs(build_argv(cfg, rt), "-netdev")[0].endswith("downscript=no,vhost=on")


@pytest.mark.parametrize(
    ("model", "driver"),
    [
        ("e1000", "e1000"),
        ("e1000e", "e1000e"),
        ("igb", "igb"),
        ("rtl8139", "rtl8139"),
        ("ne2k_pci", "ne2k_pci"),
        ("pcnet", "pcnet"),
    ],
)
def test_emulated_models_have_no_host_mtu(model: str, driver: str) -> None:
    cfg = machine(nets=(NetDevice("net0", "tap0", MAC, 1500, model=model),))
    assert devs(build_argv(cfg, RT))[-1] == f"{driver},id=net0,netdev=hn-net0,mac={MAC},bus=rp-net0"


def test_unknown_model() -> None:
    bad = machine(nets=(NetDevice("net0", "tap0", MAC, 1500, model="vmxnet3"),))
    with pytest.raises(
        HypervisorError,
        match="NIC model 'vmxnet3' of net0 is not one of e1000, e1000e, igb, ne2k_pci, pcnet, "
        "rtl8139, virtio",
    ):
        build_argv(bad, RT)


def test_pinned_pci_address_goes_on_root_bus_and_skips_that_slot() -> None:
    cfg = machine(
        nets=(
            NetDevice("net0", "tap0", MAC, 1500, pci_address="0000:00:02.0"),
            NetDevice("net1", "tap1", "52:54:00:00:00:02", 1500),
        ),
        hotplug_ports=1,
    )
    argv = build_argv(cfg, RT)
    assert devs(argv) == [
        port("rp-net1", 0x03, 1),
        port("hp0", 0x04, 2),
        f"virtio-net-pci,id=net0,netdev=hn-net0,mac={MAC},host_mtu=1500,bus=pcie.0,addr=0x02.0x0",
        "virtio-net-pci,id=net1,netdev=hn-net1,mac=52:54:00:00:00:02,host_mtu=1500,bus=rp-net1",
    ]


def test_two_functions_of_one_slot_turn_on_multifunction() -> None:
    cfg = machine(
        nets=(NetDevice("net0", "tap0", MAC, 1500, pci_address="00:07.0"),),
        vfio=(VfioDevice("sriov1", "/sys/bus/pci/devices/0000:58:01.2", "0000:00:07.1"),),
    )
    devices = devs(build_argv(cfg, RT))
    assert devices == [
        f"virtio-net-pci,id=net0,netdev=hn-net0,mac={MAC},host_mtu=1500,"
        "bus=pcie.0,addr=0x07.0x0,multifunction=on",
        "vfio-pci,id=sriov1,host=0000:58:01.2,bus=pcie.0,addr=0x07.0x1",
    ]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("0000:01:02.0", "is on bus 01 but not at slot 00 function 0"),
        ("0000:07:00.1", "is on bus 07 but not at slot 00 function 0"),
        ("0001:00:02.0", "not in PCI domain 0000"),
        ("00:1f.0", "outside the free range"),
        ("00:00.0", "outside the free range"),
        ("zz:00.0", "is not DDDD:BB:SS.F"),
        ("0000:00:05.1", "nothing is pinned to function 0"),
    ],
)
def test_bad_pinned_addresses(address: str, message: str) -> None:
    cfg = machine(nets=(NetDevice("net0", "tap0", MAC, 1500, pci_address=address),))
    with pytest.raises(HypervisorError, match=message) as info:
        build_argv(cfg, RT)
    assert address in str(info.value) or "function" in str(info.value)


def test_same_pinned_address_twice() -> None:
    cfg = machine(
        nets=(
            NetDevice("net0", "tap0", MAC, 1500, pci_address="00:05.0"),
            NetDevice("net1", "tap1", MAC, 1500, pci_address="0000:00:05.0"),
        )
    )
    with pytest.raises(HypervisorError, match="also used by net0"):
        build_argv(cfg, RT)


def test_pinned_bus_gets_the_root_port_at_that_position_with_fillers() -> None:
    # KubeVirt's 0000:07:00.0: the firmware gives the N-th root port (slot order) bus N,
    # so rp-vf0 must be the 7th port; net1 and hp0/hp1 come first, fillers close the gap.
    cfg = machine(
        nets=(NetDevice("net1", "tap1", MAC, 1500),),
        vfio=(VfioDevice("vf0", "/sys/bus/pci/devices/0000:3b:02.3", "0000:07:00.0"),),
        hotplug_ports=2,
    )
    assert devs(build_argv(cfg, RT)) == [
        port("rp-net1", 0x02, 1),
        port("hp0", 0x03, 2),
        port("hp1", 0x04, 3),
        port("rp_fill4", 0x05, 4),
        port("rp_fill5", 0x06, 5),
        port("rp_fill6", 0x07, 6),
        port("rp-vf0", 0x08, 7),
        f"virtio-net-pci,id=net1,netdev=hn-net1,mac={MAC},host_mtu=1500,bus=rp-net1",
        "vfio-pci,id=vf0,host=0000:3b:02.3,bus=rp-vf0,addr=0x00.0x0",
    ]


def test_pinned_buses_root_pins_and_unpinned_ports_interleave() -> None:
    cfg = machine(
        nets=(
            NetDevice("a", "t1", MAC, 1500, pci_address="0000:03:00.0"),
            NetDevice("b", "t2", MAC, 1500, pci_address="0000:00:03.0"),
            NetDevice("c", "t3", MAC, 1500),
            NetDevice("d", "t4", MAC, 1500, pci_address="01:00.0"),
        ),
        disks=(DiskImage("root", "/r.img"),),
        hotplug_ports=2,
    )
    devices = devs(build_argv(cfg, RT))
    # slot 0x03 is b's, so root ports take 02, 04, 05, …; buses 1 and 3 are pinned.
    assert devices[:6] == [
        port("rp-d", 0x02, 1),
        port("rp-c", 0x04, 2),
        port("rp-a", 0x05, 3),
        port("rp-root", 0x06, 4),
        port("hp0", 0x07, 5),
        port("hp1", 0x08, 6),
    ]
    tails = [d.rsplit("host_mtu=1500,", 1)[-1] for d in devices[6:10]]
    assert tails == [
        "bus=rp-a,addr=0x00.0x0",
        "bus=pcie.0,addr=0x03.0x0",
        "bus=rp-c",
        "bus=rp-d,addr=0x00.0x0",
    ]


def test_highest_pinned_bus_is_limited_by_free_slots() -> None:
    ok = machine(nets=(NetDevice("n", "t", MAC, 1500, pci_address="0000:1d:00.0"),))
    assert devs(build_argv(ok, RT))[28] == port("rp-n", 0x1E, 29)
    bad = machine(
        nets=(
            NetDevice("n", "t", MAC, 1500, pci_address="0000:1d:00.0"),
            NetDevice("m", "t2", MAC, 1500, pci_address="0000:00:02.0"),
        )
    )
    with pytest.raises(
        HypervisorError,
        match=r"'0000:1d:00\.0' of n needs 29 root ports before it but pcie\.0 has only 28",
    ):
        build_argv(bad, RT)
    crowded = machine(
        nets=(NetDevice("n", "t", MAC, 1500, pci_address="0000:05:00.0"),), hotplug_ports=29
    )
    with pytest.raises(HypervisorError, match=r"no free pcie\.0 slot left for root port hp28"):
        build_argv(crowded, RT)


def test_same_pinned_bus_twice() -> None:
    cfg = machine(
        nets=(NetDevice("net0", "tap0", MAC, 1500, pci_address="0000:07:00.0"),),
        vfio=(VfioDevice("vf0", "/sys/bus/pci/devices/0000:3b:02.3", "07:00.0"),),
    )
    with pytest.raises(HypervisorError, match=r"'07:00\.0' of vf0 is also used by net0"):
        build_argv(cfg, RT)


def test_vfio_behind_its_own_root_port() -> None:
    cfg = machine(vfio=(VfioDevice("sriov0", "/sys/bus/pci/devices/0000:3b:02.1/"),))
    assert build_argv(cfg, RT)[len(BASE) :] == [
        "-device",
        port("rp-sriov0", 0x02, 1),
        "-device",
        "vfio-pci,id=sriov0,host=0000:3b:02.1,bus=rp-sriov0",
    ]


def test_vfio_path_must_end_in_pci_address() -> None:
    cfg = machine(vfio=(VfioDevice("sriov0", "/dev/vfio/12"),))
    with pytest.raises(HypervisorError, match="'/dev/vfio/12'"):
        build_argv(cfg, RT)


def test_vdpa_single_and_multiqueue_with_iommu() -> None:
    cfg = machine(
        vdpa=(
            VdpaDevice("vdpa0", "/dev/vhost-vdpa-0"),
            VdpaDevice("vdpa1", "/dev/vhost-vdpa-1", num_queues=8, iommu=True),
        )
    )
    argv = build_argv(cfg, RT)
    assert pairs(argv, "-netdev") == [
        "vhost-vdpa,id=hn-vdpa0,vhostdev=/dev/vhost-vdpa-0",
        "vhost-vdpa,id=hn-vdpa1,vhostdev=/dev/vhost-vdpa-1,queues=4",
    ]
    assert devs(argv)[2:] == [
        "virtio-net-pci,id=vdpa0,netdev=hn-vdpa0,bus=rp-vdpa0",
        "virtio-net-pci,id=vdpa1,netdev=hn-vdpa1,mq=on,vectors=10,iommu_platform=on,bus=rp-vdpa1",
    ]


def test_disks_raw_qcow2_readonly_bootindex_and_block_device() -> None:
    cfg = machine(
        disks=(
            DiskImage("root", "/var/vm/root,1.qcow2", "qcow2", boot_order=1),
            DiskImage("data", "/dev/sdb", read_only=True),
        )
    )
    argv = build_argv(cfg, RT)
    nodes = [json.loads(v) for v in pairs(argv, "-blockdev")]
    assert nodes == [
        {
            "driver": "qcow2",
            "node-name": "drive-root",
            "read-only": False,
            "file": {"driver": "file", "filename": "/var/vm/root,1.qcow2", "read-only": False},
        },
        {
            "driver": "raw",
            "node-name": "drive-data",
            "read-only": True,
            "file": {"driver": "host_device", "filename": "/dev/sdb", "read-only": True},
        },
    ]
    assert devs(argv) == [
        port("rp-root", 0x02, 1),
        port("rp-data", 0x03, 2),
        "virtio-blk-pci,id=root,drive=drive-root,bootindex=1,bus=rp-root",
        "virtio-blk-pci,id=data,drive=drive-data,bus=rp-data",
    ]


def test_cdrom_is_readonly_scsi_cd_on_one_virtio_scsi_controller() -> None:
    cfg = machine(
        disks=(
            DiskImage("cd0", "/iso/a.iso", cdrom=True, boot_order=1),
            DiskImage("cd1", "/iso/b.iso", cdrom=True),
        )
    )
    argv = build_argv(cfg, RT)
    assert [json.loads(v)["read-only"] for v in pairs(argv, "-blockdev")] == [True, True]
    assert devs(argv) == [
        port("rp-scsi0", 0x02, 1),
        "virtio-scsi-pci,id=scsi0,bus=rp-scsi0",
        "scsi-cd,id=cd0,drive=drive-cd0,bus=scsi0.0,bootindex=1",
        "scsi-cd,id=cd1,drive=drive-cd1,bus=scsi0.0",
    ]


def test_overlay_names_its_image_read_only() -> None:
    """A containerDisk: the guest writes the qcow2 overlay, the image is opened read-only."""
    overlay = DiskImage(
        "root", "/state/overlay/root.qcow2", "qcow2", backing="/vol/root/disk.img",
        backing_format="raw",
    )  # fmt: skip
    (node,) = [json.loads(v) for v in pairs(build_argv(machine(disks=(overlay,)), RT), "-blockdev")]
    assert node == {
        "driver": "qcow2",
        "node-name": "drive-root",
        "read-only": False,
        "file": {"driver": "file", "filename": "/state/overlay/root.qcow2", "read-only": False},
        "backing": {
            "driver": "raw",
            "read-only": True,
            "file": {"driver": "file", "filename": "/vol/root/disk.img", "read-only": True},
        },
    }
    for bad in (
        DiskImage("r", "/o.img", "raw", backing="/i", backing_format="raw"),
        DiskImage("r", "/o.qcow2", "qcow2", backing="/i", backing_format="vmdk"),
    ):
        with pytest.raises(HypervisorError, match="overlay must be qcow2 over a raw or qcow2"):
            build_argv(machine(disks=(bad,)), RT)


def test_unknown_disk_format() -> None:
    with pytest.raises(HypervisorError, match="'vmdk'"):
        build_argv(machine(disks=(DiskImage("d", "/d.vmdk", "vmdk"),)), RT)


def test_hotplug_ports_default_four_after_device_ports() -> None:
    cfg = MachineConfig(
        name="vm1", vcpus=2, memory_bytes=512 << 20, nets=(NetDevice("net0", "t", MAC, 1500),)
    )
    devices = devs(build_argv(cfg, RT))
    assert devices[:5] == [
        port("rp-net0", 0x02, 1),
        port("hp0", 0x03, 2),
        port("hp1", 0x04, 3),
        port("hp2", 0x05, 4),
        port("hp3", 0x06, 5),
    ]
    # every root port precedes the devices that plug into it
    assert all(d.startswith("pcie-root-port") for d in devices[:5])
    assert not any(d.startswith("pcie-root-port") for d in devices[5:])


def test_too_many_root_ports() -> None:
    with pytest.raises(HypervisorError, match=r"no free pcie\.0 slot left for root port hp29"):
        build_argv(machine(hotplug_ports=30), RT)
    assert len(devs(build_argv(machine(hotplug_ports=29), RT))) == 29


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"memory_bytes": (512 << 20) + 1}, "536870913 bytes"),
        ({"memory_bytes": 0}, "memory size 0"),
        ({"vcpus": 0}, "vCPU count 0"),
        ({"hotplug_ports": -1}, "hot-plug port count -1"),
    ],
)
def test_bad_sizes(kw: dict[str, object], message: str) -> None:
    with pytest.raises(HypervisorError, match=message):
        build_argv(machine(**kw), RT)


def test_bad_accelerator() -> None:
    with pytest.raises(HypervisorError, match="'hvf'"):
        build_argv(machine(), QemuRuntime(qmp_socket="/q", accel="hvf"))


@pytest.mark.parametrize("bad_id", ["0net", "net 0", "net,0", "", "x" * 40])
def test_invalid_device_ids(bad_id: str) -> None:
    with pytest.raises(HypervisorError, match="not a valid QEMU id"):
        build_argv(machine(nets=(NetDevice(bad_id, "tap0", MAC, 1500),)), RT)


def test_duplicate_ids_across_device_kinds() -> None:
    cfg = machine(
        nets=(NetDevice("dev0", "tap0", MAC, 1500),),
        disks=(DiskImage("dev0", "/d.img"),),
    )
    with pytest.raises(HypervisorError, match="'dev0' is used twice"):
        build_argv(cfg, RT)


def test_commas_in_name_and_socket_path_are_escaped() -> None:
    cfg = machine(name="ns,vm")
    argv = build_argv(cfg, QemuRuntime(qmp_socket="/run/a,b/qmp.sock"))
    assert pairs(argv, "-name") == ["guest=ns,,vm,debug-threads=on"]
    assert pairs(argv, "-qmp") == ["unix:/run/a,,b/qmp.sock,server=on,wait=off"]


def test_everything_together_keeps_a_stable_order() -> None:
    cfg = machine(
        kernel=KernelBoot("/k"),
        nets=(NetDevice("net0", "tap0", MAC, 1500),),
        vfio=(VfioDevice("vf0", "/sys/bus/pci/devices/0000:58:01.2"),),
        vdpa=(VdpaDevice("vd0", "/dev/vhost-vdpa-0"),),
        disks=(DiskImage("root", "/r.img"), DiskImage("cd", "/c.iso", cdrom=True)),
        hotplug_ports=2,
    )
    argv = build_argv(cfg, RT)
    ports = [d.split(",")[1] for d in devs(argv) if d.startswith("pcie-root-port")]
    assert ports == [
        "id=rp-net0",
        "id=rp-vf0",
        "id=rp-vd0",
        "id=rp-scsi0",
        "id=rp-root",
        "id=hp0",
        "id=hp1",
    ]
    assert build_argv(cfg, RT) == argv  # pure: same input, same argv
