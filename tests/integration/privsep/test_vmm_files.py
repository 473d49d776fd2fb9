"""What the VMM user is handed (real files, real chown: needs root).

Also the contract with ``launcher.privileges`` (what the manifest adds and ``run``
checks): the files ``hand_over`` chowns, for a spec with every kind of disk resolved and
made as ``run`` does, are exactly the disks :func:`~launcher.privileges.handed_over_disks`
names; and a process without CAP_CHOWN hands over a diskless VM's files (nothing to
chown), while a writable disk is then refused naming it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hypervisor.errors import HypervisorError
from hypervisor.machine import DiskImage, KernelBoot, MachineConfig
from launcher.machine import build_machine
from launcher.manifest import plan_for_manifest
from launcher.privileges import block_volumes, handed_over_disks
from launcher.privsep.vmm import VmmUser, hand_over
from launcher.spec import parse
from launcher.volumes import VolumeLayout, prepare, require_present, resolve

REPO = Path(__file__).resolve().parents[3]


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


EVERY_DISK = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: p, namespace: t}}
spec:
  domain:
    memory: {{guest: 1Gi}}
    devices:
      interfaces: [{{name: pod, bridge: {{}}}}]
      disks:
        - {{name: root, disk: {{}}}}
        - {{name: iso, cdrom: {{}}}}
        - {{name: ro, disk: {{readonly: true}}}}
        - {{name: data, disk: {{}}}}
        - {{name: dv, disk: {{}}}}
        - {{name: host, disk: {{}}}}
        - {{name: scratch, disk: {{}}}}
        - {{name: seed, disk: {{}}}}
  networks: [{{name: pod, pod: {{}}}}]
  volumes:
    - {{name: root, containerDisk: {{image: example.com/os:1}}}}
    - {{name: iso, containerDisk: {{image: example.com/iso:1}}}}
    - {{name: ro, persistentVolumeClaim: {{claimName: shared}}}}
    - {{name: data, persistentVolumeClaim: {{claimName: data-pvc}}}}
    - {{name: dv, dataVolume: {{name: my-dv}}}}
    - {{name: host, hostDisk: {{path: {host}, type: DiskOrCreate, capacity: 1Mi}}}}
    - {{name: scratch, emptyDisk: {{capacity: 1Mi}}}}
    - {{name: seed, cloudInitNoCloud: {{userData: x}}}}
"""


def test_what_is_chowned_is_what_chown_is_asked_for(reachable: Path) -> None:
    """Every kind of disk, resolved and made as ``run`` does (``dv`` a block device node):
    the files that become 107's are the disks ``handed_over_disks`` names, no more."""
    spec = parse(yaml.safe_load(EVERY_DISK.format(host=reachable / "host" / "h.img")))
    layout = VolumeLayout(volumes_dir=reachable / "volumes", scratch_dir=reachable / "state")
    for name in ("root", "iso", "ro", "data"):
        (layout.volumes_dir / name).mkdir(parents=True)
        image = layout.volumes_dir / name / "disk.img"
        image.write_bytes(bytes(4096))
        image.chmod(0o644 if name != "data" else 0o600)
    os.mknod(layout.volumes_dir / "dv", 0o600 | stat.S_IFBLK, os.makedev(7, 250))
    (layout.volumes_dir / "dv").chmod(0o666)  # a block volume must already be usable by 107
    volumes = resolve(spec, layout)
    require_present(volumes)
    volumes = prepare(volumes)
    seed = next(d.file for d in volumes.disks if d.name == "seed")
    Path(seed.path).parent.mkdir(parents=True)
    Path(seed.path).write_bytes(b"iso")  # cloudinit.build_seeds' file, only read
    Path(seed.path).chmod(0o644)
    machine = build_machine(spec, plan_for_manifest(spec), volumes)
    hand_over(VmmUser(107, 107), machine, layout.scratch_dir / "qemu")
    given = {d.name for d in volumes.disks if Path(d.file.path).stat().st_uid == 107}
    asked = {d.disk for d in handed_over_disks(spec, block=block_volumes(volumes))}
    assert given == asked == {"root", "data", "host", "scratch"}
    backing = next(d.file.backing for d in volumes.disks if d.name == "root")
    assert backing is not None and Path(backing.path).stat().st_uid == 0  # only read


HAND_OVER = """\
import sys
from pathlib import Path
from hypervisor.machine import DiskImage, KernelBoot, MachineConfig
from launcher.privsep.vmm import VmmUser, hand_over
tmp = Path(sys.argv[1])
disks = tuple(DiskImage(f"d{i}", p) for i, p in enumerate(sys.argv[2:]))
kernel = KernelBoot(str(tmp / "vmlinuz"))
config = MachineConfig("vm", 1, 1 << 28, kernel=kernel, disks=disks)
hand_over(VmmUser(107, 107), config, tmp / "run")
print("handed over")
"""


def test_without_chown_a_diskless_vm_is_handed_over_a_writable_disk_is_named(
    reachable: Path,
) -> None:
    """In a root process whose bounding set lacks CHOWN (a container the manifest gave no
    CHOWN): nothing is chowned for a VM without a writable disk, so it works."""
    _machine(reachable)
    argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-chown", "--",
            sys.executable, "-c", HAND_OVER, str(reachable)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert (done.returncode, done.stdout) == (0, "handed over\n"), done.stderr
    assert (reachable / "run").stat().st_uid == 0
    disk = str(reachable / "disk.img")
    done = subprocess.run(
        [*argv, disk], capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )
    assert done.returncode != 0
    assert f"cannot give disk d0 {disk} to the VMM user 107:107" in done.stderr, done.stderr
    assert (reachable / "disk.img").stat().st_uid == 0
