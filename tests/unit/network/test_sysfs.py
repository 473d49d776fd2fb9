"""SR-IOV VF and vDPA checks against a fake sysfs//dev tree: the good case and every failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.errors import NetworkError
from launcher.network.sysfs import HostPaths, check_vdpa, check_vf

from .fake_sysfs import FakeHost

VF = "0000:3b:02.2"


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    h = FakeHost(tmp_path)
    h.add_pf()
    return h


def test_tree_layout_is_the_kernels(host: FakeHost) -> None:
    host.add_vf(VF)
    bus = host.root / "sys/bus/pci/devices" / VF
    assert os.readlink(bus) == f"../../../devices/pci0000:00/0000:00:03.0/{VF}"
    assert bus.resolve() == host.device_dir(VF).resolve()
    assert (bus / "physfn").resolve().name == "0000:3b:00.0"
    assert (host.device_dir("0000:3b:00.0") / "virtfn0").resolve().name == VF
    assert (bus / "driver").resolve() == (host.root / "sys/bus/pci/drivers/vfio-pci").resolve()
    group = (bus / "iommu_group").resolve()
    assert group == (host.root / "sys/kernel/iommu_groups/42").resolve()
    assert (group / "devices" / VF).resolve() == host.device_dir(VF).resolve()


def test_good_vf(host: FakeHost) -> None:
    host.add_vf(VF)
    vf = check_vf(VF, "sriov", host.paths)
    assert vf.sysfs_path == str(host.root / "sys/bus/pci/devices" / VF)
    assert (vf.physfn, vf.iommu_group, vf.group_devices) == ("0000:3b:00.0", "42", (VF,))


def test_real_root_paths() -> None:
    assert str(HostPaths().pci_devices / VF) == f"/sys/bus/pci/devices/{VF}"
    assert str(HostPaths().dev("/dev/vfio/7")) == "/dev/vfio/7"


def test_missing_device(host: FakeHost) -> None:
    with pytest.raises(NetworkError, match=rf"network 'sriov': PCI device {VF} does not exist"):
        check_vf(VF, "sriov", host.paths)


def test_pf_is_not_a_vf(host: FakeHost) -> None:
    with pytest.raises(NetworkError, match=r"0000:3b:00.0 is not an SR-IOV virtual function"):
        check_vf("0000:3b:00.0", "sriov", host.paths)


@pytest.mark.parametrize(
    ("driver", "text"),
    [("iavf", "is bound to iavf, not vfio-pci"), (None, "is not bound to any driver, not vfio")],
)
def test_wrong_driver(host: FakeHost, driver: str | None, text: str) -> None:
    host.add_vf(VF, driver=driver)
    with pytest.raises(NetworkError, match=text) as info:
        check_vf(VF, "sriov", host.paths)
    assert "deviceType: vfio-pci" in str(info.value)


def test_no_iommu_group(host: FakeHost) -> None:
    host.add_vf(VF, group=None)
    with pytest.raises(NetworkError, match=r"has no IOMMU group .*intel_iommu=on"):
        check_vf(VF, "sriov", host.paths)


def test_dev_vfio_group_missing(host: FakeHost) -> None:
    host.add_vf(VF, dev_node=False)
    with pytest.raises(NetworkError, match=r"IOMMU group 42 but .*/dev/vfio/42 is missing"):
        check_vf(VF, "sriov", host.paths)


def test_dev_vfio_container_missing(host: FakeHost) -> None:
    host.add_vf(VF)
    (host.root / "dev/vfio/vfio").unlink()
    with pytest.raises(NetworkError, match=r"/dev/vfio/vfio is missing in the pod"):
        check_vf(VF, "sriov", host.paths)


def test_group_shared_with_a_host_driver(host: FakeHost) -> None:
    host.add_vf(VF)
    host.add_device("0000:3b:02.3", "e1000e", "42")
    with pytest.raises(
        NetworkError, match=r"shares IOMMU group 42 with 0000:3b:02.3, which is bound to e1000e"
    ):
        check_vf(VF, "sriov", host.paths)


def test_group_shared_with_vfio_stub_bridge_or_unbound_is_fine(host: FakeHost) -> None:
    host.add_vf(VF)
    host.add_device("0000:3b:02.3", "vfio-pci", "42")
    host.add_device("0000:3b:02.4", "pci-stub", "42")
    host.add_device("0000:3a:00.0", "pcieport", "42")
    host.add_device("0000:3b:02.5", None, "42")
    assert len(check_vf(VF, "sriov", host.paths).group_devices) == 5


def test_vdpa_good_and_failures(host: FakeHost) -> None:
    host.add_vdpa(1)
    assert check_vdpa("/dev/vhost-vdpa-1", "v", host.paths).path == str(
        host.root / "dev/vhost-vdpa-1"
    )
    with pytest.raises(NetworkError, match=r"vDPA device /dev/vhost-vdpa-2 is missing in the pod"):
        check_vdpa("/dev/vhost-vdpa-2", "v", host.paths)
    with pytest.raises(NetworkError, match=r"not a /dev/vhost-vdpa-N path"):
        check_vdpa("/dev/virtio-vdpa-0", "v", host.paths)
    (host.root / "dev/vhost-vdpa-3").mkdir()
    with pytest.raises(NetworkError, match=r"is a directory"):
        check_vdpa("/dev/vhost-vdpa-3", "v", host.paths)
