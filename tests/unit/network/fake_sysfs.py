"""A fake host root (sysfs + /dev) in a temp dir, laid out like the kernel's, for SR-IOV/vDPA tests.

Used by tests/unit/network/test_sysfs*.py and test_multus*.py. The ``bus/pci/devices``
and ``driver`` links were checked against this machine's /sys (one bridge level deeper
here, as for a NIC behind a root port); ``physfn``/``virtfn*`` and ``iommu_group`` follow
the kernel's sysfs ABI (Documentation/ABI/testing/sysfs-bus-pci, sysfs-kernel-iommu_groups)::

    sys/devices/pci0000:00/0000:00:03.0/<addr>/
    sys/bus/pci/devices/<addr> -> ../../../devices/pci0000:00/0000:00:03.0/<addr>
    .../<addr>/driver -> ../../../../bus/pci/drivers/<driver>
    .../<addr>/iommu_group -> ../../../../kernel/iommu_groups/<n>
    .../<vf>/physfn -> ../<pf>, .../<pf>/virtfn<k> -> ../<vf>
    sys/kernel/iommu_groups/<n>/devices/<addr> -> ../../../../devices/pci0000:00/0000:00:03.0/<addr>
    dev/vfio/vfio, dev/vfio/<n>, dev/vhost-vdpa-<k>
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from launcher.network.sysfs import HostPaths

BRIDGE = "devices/pci0000:00/0000:00:03.0"


@dataclass
class FakeHost:
    """Builder for the fake tree; ``paths`` is what the code under test gets."""

    root: Path

    @property
    def paths(self) -> HostPaths:
        return HostPaths(self.root)

    def device_dir(self, addr: str) -> Path:
        return self.root / "sys" / BRIDGE / addr

    def add_device(self, addr: str, driver: str | None, group: str | None) -> Path:
        dev = self.device_dir(addr)
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x8086\n")
        bus = self.root / "sys/bus/pci/devices"
        bus.mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../../{BRIDGE}/{addr}", bus / addr)
        if driver is not None:
            self.bind(addr, driver)
        if group is not None:
            groups = self.root / "sys/kernel/iommu_groups" / group / "devices"
            groups.mkdir(parents=True, exist_ok=True)
            os.symlink(f"../../../../{BRIDGE}/{addr}", groups / addr)
            os.symlink(f"../../../../kernel/iommu_groups/{group}", dev / "iommu_group")
        return dev

    def bind(self, addr: str, driver: str | None) -> None:
        dev = self.device_dir(addr)
        link = dev / "driver"
        if link.is_symlink():
            link.unlink()
        if driver is not None:
            (self.root / "sys/bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
            os.symlink(f"../../../../bus/pci/drivers/{driver}", link)

    def add_pf(self, addr: str = "0000:3b:00.0", driver: str = "ice", group: str = "30") -> Path:
        return self.add_device(addr, driver, group)

    def add_vf(
        self,
        addr: str,
        pf: str = "0000:3b:00.0",
        *,
        driver: str | None = "vfio-pci",
        group: str | None = "42",
        dev_node: bool = True,
    ) -> Path:
        dev = self.add_device(addr, driver, group)
        os.symlink(f"../{pf}", dev / "physfn")
        pf_dir = self.device_dir(pf)
        k = len(list(pf_dir.glob("virtfn*")))
        os.symlink(f"../{addr}", pf_dir / f"virtfn{k}")
        vfio = self.root / "dev/vfio"
        vfio.mkdir(parents=True, exist_ok=True)
        (vfio / "vfio").touch()
        if dev_node and group is not None:
            (vfio / group).touch()
        return dev

    def add_vdpa(self, index: int) -> Path:
        node = self.root / "dev" / f"vhost-vdpa-{index}"
        node.parent.mkdir(parents=True, exist_ok=True)
        node.touch()
        return node
