"""What the VMM user is handed (real files, real chown: needs root)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hypervisor.errors import HypervisorError
from hypervisor.machine import DiskImage, KernelBoot, MachineConfig
from launcher.privsep.vmm import VmmUser, hand_over


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory uid 107 can traverse (pytest's tmp_path is under a 0700 directory)."""
    if os.geteuid() != 0:
        pytest.fail("chown to another user needs root")
    path = Path(tempfile.mkdtemp(prefix="vl-vmm-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _machine(tmp: Path, disk_mode: int = 0o600) -> MachineConfig:
    kernel = tmp / "vmlinuz"
    kernel.write_bytes(b"k")
    kernel.chmod(0o644)
    disk = tmp / "disk.img"
    disk.write_bytes(b"d")
    disk.chmod(disk_mode)
    return MachineConfig(
        name="vm",
        vcpus=1,
        memory_bytes=1 << 28,
        kernel=KernelBoot(str(kernel)),
        disks=(DiskImage("d0", str(disk)), DiskImage("ro", str(kernel), read_only=True)),
    )


def test_writable_disks_are_handed_over_nothing_else(reachable: Path) -> None:
    config = _machine(reachable)
    run_as = hand_over(VmmUser(107, 108), config, reachable / "qemu")
    assert (run_as.uid, run_as.gid, run_as.groups) == (107, 108, ())
    run_dir = (reachable / "qemu").stat()  # the launcher's: the VMM gets its socket as an fd
    assert (run_dir.st_uid, run_dir.st_gid, run_dir.st_mode & 0o777) == (0, 0, 0o700)
    assert (reachable / "disk.img").stat().st_uid == 107
    assert (reachable / "vmlinuz").stat().st_uid == 0  # read-only: left alone, only checked


def test_a_path_the_user_cannot_reach_is_named_and_left_as_it_is(reachable: Path) -> None:
    closed = reachable / "closed"
    closed.mkdir(mode=0o700)
    config = _machine(closed)
    with pytest.raises(HypervisorError, match=f"cannot reach the kernel {closed}/vmlinuz"):
        hand_over(VmmUser(107, 107), replace(config, disks=()), reachable / "run")
    assert closed.stat().st_mode & 0o777 == 0o700
    with pytest.raises(HypervisorError, match=f"cannot search the directory of disk d0 {closed}"):
        hand_over(VmmUser(107, 107), config, reachable / "run")  # the writable disk first
    assert (closed / "disk.img").stat().st_uid == 0  # nothing changed owner
    assert not (reachable / "run").exists()


def test_a_symlink_into_an_unreachable_directory_is_refused(reachable: Path) -> None:
    closed = reachable / "closed"
    closed.mkdir(mode=0o700)
    (closed / "vmlinuz").write_bytes(b"k")
    (closed / "vmlinuz").chmod(0o644)
    (reachable / "vmlinuz").symlink_to(closed / "vmlinuz")
    config = MachineConfig("vm", 1, 1 << 28, kernel=KernelBoot(str(reachable / "vmlinuz")))
    with pytest.raises(HypervisorError, match=f"directory {closed} is not searchable"):
        hand_over(VmmUser(107, 107), config, reachable / "run")


def test_a_container_disk_overlay_is_handed_over_its_image_only_checked(reachable: Path) -> None:
    """A writable containerDisk is a qcow2 overlay in the state dir (the VMM user's) over
    the image, which the user must be able to read and which never changes owner."""
    config = _machine(reachable)
    image = reachable / "image.qcow2"
    image.write_bytes(b"i")
    image.chmod(0o644)
    overlay = replace(config.disks[0], backing=str(image), backing_format="qcow2")
    run_as = hand_over(VmmUser(107, 107), replace(config, disks=(overlay,)), reachable / "run")
    assert run_as.uid == 107
    assert (reachable / "disk.img").stat().st_uid == 107 and image.stat().st_uid == 0
    image.chmod(0o600)  # a root-only image: named, nothing changes owner
    os.chown(reachable / "disk.img", 0, 0)
    with pytest.raises(HypervisorError, match="the image behind disk d0"):
        hand_over(VmmUser(107, 107), replace(config, disks=(overlay,)), reachable / "run2")
    assert (reachable / "disk.img").stat().st_uid == 0
